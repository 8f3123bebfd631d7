"""Loop devices for the root runtime: the SquashFS partition of an image as a block device.

One LOOP_CONFIGURE ioctl (Linux 5.8+) attaches the backing file with the partition's offset and
size limit, read-only and with LO_FLAGS_AUTOCLEAR: the kernel detaches the device when its last
user goes away, i.e. when the container's mount namespace dies and the SquashFS mount with it.
The launcher closes its own descriptors before exec, so nothing else holds the device.

One device per image (Apptainer's "shared loop devices"): a launch first looks for a device
already backed by the same file (device and inode numbers, not the name), offset and size
limit, read-only and autoclear, and mounts that one, so concurrent containers of one image
share the kernel's SquashFS superblock and its caches. The candidates are read from
/sys/block/loopN/loop/ and confirmed with LOOP_GET_STATUS64 on an open descriptor: while the
launcher holds it the device cannot be cleared under it (autoclear waits for the last close);
one that was cleared meanwhile answers ENXIO and is passed over. The search and the
configuration of a new device run under an flock of /dev/loop-control (only root opens it), so
two launches of one image do not both make a device.
"""

from __future__ import annotations

import errno
import os
import struct

from satchel.errors import ContainerError

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_GET_STATUS64 = 0x4C05
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
_LO_NAME_SIZE = 64
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# struct loop_info64 { u64 device, inode, rdevice, offset, sizelimit;
#                      u32 number, encrypt_type, encrypt_key_size, flags;
#                      u8 file_name[64], crypt_name[64], encrypt_key[32]; u64 init[2]; }
_LOOP_CONFIG = struct.Struct("=II QQQQQ IIII 64s64s32s QQ 64x")
_LOOP_INFO64 = struct.Struct("=QQQQQ IIII 64s64s32s QQ")
_ATTEMPTS = 16
_SYS_BLOCK = "/sys/block"
_SHARED_FLAGS = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR


def attach(image_path: str, offset: int, size: int, writable: bool = False,
           backing: int | None = None) -> tuple[int, str]:
    """Attach image_path[offset:offset+size] read-only (writable: read-write, never shared,
    for an ext3 overlay; backing: the image already open); return (loop fd, device path)."""
    import fcntl

    try:
        if backing is not None:
            backing = os.dup(backing)
        else:
            backing = os.open(image_path, (os.O_RDWR if writable else os.O_RDONLY) |
                              os.O_CLOEXEC)
    except OSError as err:
        raise ContainerError(f"opening {image_path} for a loop device: {err.strerror}") from None
    try:
        try:
            control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise ContainerError(f"opening {LOOP_CONTROL}: {err.strerror}") from None
        try:
            fcntl.flock(control, fcntl.LOCK_EX)  # released by the close below
            shared = None if writable else find_attached(os.fstat(backing), offset, size)
            if shared is not None:
                return shared
            name = os.fsencode(image_path)[-(_LO_NAME_SIZE - 1):]
            config = _LOOP_CONFIG.pack(backing, 0, 0, 0, 0, offset, size, 0, 0, 0,
                                       (0 if writable else LO_FLAGS_READ_ONLY) |
                                       LO_FLAGS_AUTOCLEAR,
                                       name, b"", b"", 0, 0)
            for _ in range(_ATTEMPTS):
                try:
                    number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                except OSError as err:
                    raise ContainerError(f"finding a free loop device: {err.strerror}") from None
                device = f"/dev/loop{number}"
                try:
                    # the kernel makes the device read-only unless it is opened for writing
                    loop_fd = os.open(device, (os.O_RDWR if writable else os.O_RDONLY) |
                                      os.O_CLOEXEC)
                except OSError as err:
                    raise ContainerError(f"opening {device}: {err.strerror}") from None
                try:
                    fcntl.ioctl(loop_fd, LOOP_CONFIGURE, config)
                except OSError as err:
                    os.close(loop_fd)
                    if err.errno == errno.EBUSY:  # another process took it first: next one
                        continue
                    raise ContainerError(f"configuring {device} for {image_path}: "
                                         f"{err.strerror}") from None
                return loop_fd, device
            raise ContainerError(f"no free loop device after {_ATTEMPTS} attempts")
        finally:
            os.close(control)
    finally:
        os.close(backing)


def _read_sys(path: str) -> str:
    """A small sysfs attribute (os-level: open() builds a buffered file object, which doubled
    the ~0.2 ms a launch spends looking for a shared device among eight)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode(errors="replace").strip()
    finally:
        os.close(fd)


def find_attached(backing: os.stat_result, offset: int, size: int) -> tuple[int, str] | None:
    """(open fd, device path) of a loop device already serving backing[offset:offset+size]
    read-only with autoclear, or None. The fd keeps the device from being cleared."""
    import fcntl

    try:
        names = os.listdir(_SYS_BLOCK)
    except OSError:
        return None
    for name in names:
        if not name.startswith("loop"):
            continue
        base = f"{_SYS_BLOCK}/{name}/loop/"
        try:  # cheap checks first: only bound devices have loop/, most differ in offset
            if (int(_read_sys(base + "offset")) != offset
                    or int(_read_sys(base + "sizelimit")) != size
                    or _read_sys(base + "autoclear") != "1"
                    or _read_sys(f"{_SYS_BLOCK}/{name}/ro") != "1"):
                continue
        except (OSError, ValueError):
            continue
        device = f"/dev/{name}"
        try:
            loop_fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            info = _LOOP_INFO64.unpack(fcntl.ioctl(loop_fd, LOOP_GET_STATUS64,
                                                   bytes(_LOOP_INFO64.size)))
        except OSError:  # ENXIO: cleared since the sysfs read
            os.close(loop_fd)
            continue
        dev, ino, _rdev, lo_offset, lo_size, _number, _enc, _keysize, flags = info[:9]
        if (dev, ino, lo_offset, lo_size) == (backing.st_dev, backing.st_ino, offset, size) \
                and flags & _SHARED_FLAGS == _SHARED_FLAGS:
            return loop_fd, device
        os.close(loop_fd)
    return None
