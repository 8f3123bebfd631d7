"""What kind of image a path names, and where its SquashFS file system lies in the file.

open_image(path) -> ImageRef answers for the runtime (which only needs the kind and the byte
range to hand to squashfuse or a loop device):
  sif       a SIF file; its primary system partition must be SquashFS
  sandbox   a directory tree
  squashfs  a bare SquashFS file (.sqsh, .squashfs, .sqfs...)
  simg      Singularity 2.x: a "#!/usr/bin/env run-singularity" line, then SquashFS
Anything else is an ImageError with a one-line reason. Only the first bytes and the SquashFS
superblock are read, so this is cheap on every launch. On the exec path: os/stat/struct only.
Only a directory or a regular file is opened for reading: a FIFO must not hang the launch.
"""

from __future__ import annotations

import os
import stat
import struct

from satchel import pathwalk
from satchel.errors import ImageError, SatchelError

SQUASHFS_MAGIC = b"hsqs"
SIF_MAGIC = b"SIF_MAGIC\0"
SIF_MAGIC_OFFSET = 32
SIMG_LAUNCH = b"#!/usr/bin/env run-singularity"
# superblock: magic, inodes, mkfs_time, block_size, fragments (5 x u32), compression, block_log,
# flags, no_ids, major, minor (6 x u16), root_inode, bytes_used, then the starts of the id,
# xattr id, inode, directory, fragment and export tables (8 x u64; absent tables are all ones)
_SUPER = struct.Struct("<4sIIIIHHHHHHQQQQQQQQ")
_TABLES = ("id", "xattr id", "inode", "directory", "fragment", "export")
_ABSENT = 0xFFFFFFFFFFFFFFFF
_COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
_FS_NAMES = {2: "ext3", 3: "archive", 4: "raw", 5: "encrypted squashfs"}


class ImageRef:
    """An opened image: absolute path, kind, and the SquashFS byte range (0, 0 for sandboxes)."""

    __slots__ = ("path", "kind", "fs_offset", "fs_size", "fs_type", "overlay_part")

    def __init__(self, path: str, kind: str, fs_offset: int = 0, fs_size: int = 0,
                 fs_type: str = "", overlay_part=None):
        self.path = path
        self.kind = kind
        self.fs_offset = fs_offset
        self.fs_size = fs_size
        self.fs_type = fs_type
        self.overlay_part = overlay_part  # (offset, size) of a SIF's Ext3/Overlay partition

    def __repr__(self) -> str:
        return (f"ImageRef({self.path!r}, {self.kind!r}, offset={self.fs_offset}, "
                f"size={self.fs_size}, fs={self.fs_type!r})")


def open_image(path: str) -> ImageRef:
    """Identify the image at `path` (see the module docstring); ImageError if it is not one."""
    if not path:
        raise ImageError("no image given")
    full = os.path.abspath(path)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        raise ImageError(f"image {path} not found: no such file or directory") from None
    except OSError as err:
        raise ImageError(f"image {path}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        if not os.access(full, os.R_OK | os.X_OK):
            raise ImageError(f"sandbox image {path}: permission denied")
        return ImageRef(full, "sandbox", fs_type="dir")
    # a FIFO would block the open (and a device's open may act): only regular files are read
    try:
        fd = pathwalk.open_regular(full, follow=True)
    except pathwalk.NotRegularFileError as err:
        raise ImageError(f"image {path} is {pathwalk.file_kind(err.mode)}, not an image file or "
                         "a sandbox directory") from None
    except OSError as err:
        raise ImageError(f"image {path}: {err.strerror}") from None
    try:
        return _identify(fd, full, path, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _identify(fd: int, full: str, path: str, file_size: int) -> ImageRef:
    """The ImageRef of the regular file open on `fd`, from its first bytes."""
    head = _pread(fd, 64, 0, path)
    if head[SIF_MAGIC_OFFSET:SIF_MAGIC_OFFSET + len(SIF_MAGIC)] == SIF_MAGIC:
        return _open_sif(fd, full, path, file_size)
    if head.startswith(SQUASHFS_MAGIC):
        offset, size = 0, _squashfs_size(fd, path, 0, file_size)
        return ImageRef(full, "squashfs", offset, size, "squashfs")
    if head.startswith(SIMG_LAUNCH):
        newline = head.find(b"\n")
        if newline > 0 and head[newline + 1:newline + 5] == SQUASHFS_MAGIC:
            offset = newline + 1
            size = _squashfs_size(fd, path, offset, file_size - offset)
            return ImageRef(full, "simg", offset, size, "squashfs")
        raise ImageError(f"image {path}: legacy Singularity image without SquashFS "
                         "(ext3 .img images are not supported)")
    raise ImageError(f"image {path} is not a valid image: not a SIF, SquashFS or sandbox "
                     "directory")


def _pread(fd: int, size: int, offset: int, shown: str) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as err:
        raise ImageError(f"image {shown}: {err.strerror}") from None


def _open_sif(fd: int, full: str, shown: str, file_size: int) -> ImageRef:
    from satchel.image import sif

    try:
        image = sif.SIFFile.open(full)
    except SatchelError as err:
        raise ImageError(f"corrupt SIF image {shown}: {err.message}") from None
    except OSError as err:
        raise ImageError(f"SIF image {shown}: {err.strerror or err}") from None
    try:
        part = image.primary_partition()
        overlay_part = None
        for d in image.descriptors:  # `satchel overlay create IMAGE.sif` adds one
            if d.datatype == sif.DATA_PARTITION and d.part_type == sif.PART_OVERLAY and \
                    d.fs_type == sif.FS_EXT3:
                overlay_part = (d.offset, d.size)
    finally:
        image.close()
    if part is None:
        raise ImageError(f"SIF image {shown} has no primary system partition to run",
                         hint="it may hold only data or signatures; build it with satchel build")
    if part.fs_type != sif.FS_SQUASH:
        kind = _FS_NAMES.get(part.fs_type, f"file system type {part.fs_type}")
        raise ImageError(f"SIF image {shown}: primary partition is {kind}, only SquashFS is "
                         "supported")
    if part.offset + part.size > file_size:
        raise ImageError(f"corrupt SIF image {shown}: partition extends past the end of the file")
    size = _squashfs_size(fd, shown, part.offset, part.size)
    return ImageRef(full, "sif", part.offset, size, "squashfs", overlay_part)


def _squashfs_size(fd: int, shown: str, offset: int, available: int) -> int:
    """Check the SquashFS superblock at `offset`; return the bytes the file system uses."""
    raw = _pread(fd, _SUPER.size, offset, shown)
    if len(raw) < _SUPER.size or raw[:4] != SQUASHFS_MAGIC:
        raise ImageError(f"corrupt image {shown}: no SquashFS superblock at offset {offset}")
    fields = _SUPER.unpack(raw)
    compression, major, bytes_used = fields[5], fields[9], fields[12]
    if major != 4:
        raise ImageError(f"image {shown}: SquashFS version {major} is not supported (need 4)")
    if compression not in _COMPRESSORS:
        raise ImageError(f"corrupt image {shown}: unknown SquashFS compressor {compression}")
    if bytes_used > available:
        raise ImageError(f"corrupt image {shown}: SquashFS needs {bytes_used} bytes, the "
                         f"file holds {available} (truncated?)")
    block_size, block_log = fields[3], fields[6]
    if block_size != 1 << block_log or not 4096 <= block_size <= 1 << 20:
        raise ImageError(f"corrupt image {shown}: SquashFS block size {block_size}")
    for name, start in zip(_TABLES, fields[13:]):
        if start != _ABSENT and start >= bytes_used and not (name == "xattr id" and start == 0):
            raise ImageError(f"corrupt image {shown}: SquashFS {name} table at {start} lies "
                             f"past the file system's end ({bytes_used})")
    if fields[15] == _ABSENT or fields[16] == _ABSENT or fields[15] > fields[16]:
        raise ImageError(f"corrupt image {shown}: SquashFS inode and directory tables are "
                         "out of order")
    return available
