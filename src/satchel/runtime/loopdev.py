"""Loop devices for the root runtime: the SquashFS partition of an image as a block device.

One LOOP_CONFIGURE ioctl (Linux 5.8+) attaches the backing file with the partition's offset and
size limit, read-only and with LO_FLAGS_AUTOCLEAR: the kernel detaches the device when its last
user goes away, i.e. when the container's mount namespace dies and the SquashFS mount with it.
The launcher closes its own descriptors before exec, so nothing else holds the device.
"""

from __future__ import annotations

import errno
import os
import struct

from satchel.errors import ContainerError

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
_LO_NAME_SIZE = 64
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# struct loop_info64 { u64 device, inode, rdevice, offset, sizelimit;
#                      u32 number, encrypt_type, encrypt_key_size, flags;
#                      u8 file_name[64], crypt_name[64], encrypt_key[32]; u64 init[2]; }
_LOOP_CONFIG = struct.Struct("=II QQQQQ IIII 64s64s32s QQ 64x")
_ATTEMPTS = 16


def attach(image_path: str, offset: int, size: int) -> tuple[int, str]:
    """Attach image_path[offset:offset+size] read-only; return (loop fd, device path)."""
    import fcntl

    try:
        backing = os.open(image_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise ContainerError(f"opening {image_path} for a loop device: {err.strerror}") from None
    try:
        try:
            control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise ContainerError(f"opening {LOOP_CONTROL}: {err.strerror}") from None
        try:
            name = os.fsencode(image_path)[-(_LO_NAME_SIZE - 1):]
            config = _LOOP_CONFIG.pack(backing, 0, 0, 0, 0, offset, size, 0, 0, 0,
                                       LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                                       name, b"", b"", 0, 0)
            for _ in range(_ATTEMPTS):
                try:
                    number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                except OSError as err:
                    raise ContainerError(f"finding a free loop device: {err.strerror}") from None
                device = f"/dev/loop{number}"
                try:
                    loop_fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
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
