"""ext3 overlay images: `satchel overlay create`, and recognising ext3 file systems.

The layout is Apptainer's (internal/app/apptainer/overlay_create.go), so overlay images move
between the two tools: an ext3 file system (mkfs.ext3 -d, default options, at least 64 MiB)
whose top holds `upper/` (the overlay's upper layer, with --create-dir directories below it)
and `work/` (overlayfs' work directory), mode 0755 (0777 when the caller's uid or gid does not
fit 16 bits), owned by the caller, or by root with --fakeroot (mkfs runs in a root-mapped user
namespace, so it records the caller's files as uid 0: what a --fakeroot container sees as its
own). Either a standalone file (mode 0600), or, when IMAGE is a SIF, an object added to it:
a partition, file system Ext3, partition type Overlay, the image's architecture. A signed SIF,
an encrypted one or one that already has an ext3 overlay is refused, as Apptainer does.

Not on the exec path (only --overlay with a file imports it): ext3_superblock() reads 1 KiB.
"""

from __future__ import annotations

import os
import struct

from satchel.errors import ImageError

MIN_SIZE_MIB = 64
DEFAULT_SIZE_MIB = 64
_SUPERBLOCK_OFFSET = 1024
_MAGIC = 0xEF53
# ext2/3 feature bits Apptainer accepts as "ext3" (pkg/image/ext3.go): a journal is required,
# anything beyond these incompat/ro_compat features (extents, 64bit: ext4) is refused
_COMPAT_HAS_JOURNAL = 0x4
_INCOMPAT_OK = 0x2 | 0x4 | 0x10          # filetype, recover, meta_bg
_ROCOMPAT_OK = 0x1 | 0x2 | 0x4           # sparse_super, large_file, btree_dir
_SEARCH = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def ext3_reason(fd: int, offset: int = 0) -> str | None:
    """Why the file system at `offset` of fd is not an ext3 overlay Apptainer would take, or
    None when it is one."""
    raw = os.pread(fd, 1024, offset + _SUPERBLOCK_OFFSET)
    if len(raw) < 104:
        return "too short for an ext3 file system"
    magic, = struct.unpack_from("<H", raw, 56)
    if magic != _MAGIC:
        return "not an ext3 file system (no ext2/3/4 superblock)"
    compat, incompat, rocompat = struct.unpack_from("<III", raw, 92)
    if not compat & _COMPAT_HAS_JOURNAL:
        return "an ext2 file system without a journal, not ext3"
    if incompat & ~_INCOMPAT_OK or rocompat & ~_ROCOMPAT_OK:
        return "an ext4 file system (features ext3 lacks), not ext3"
    return None


def find_tool(name: str) -> str:
    """Absolute path of an e2fsprogs tool (users' PATH often lacks /sbin)."""
    for directory in os.environ.get("PATH", "").split(":") + list(_SEARCH):
        candidate = os.path.join(directory or ".", name)
        if directory and os.access(candidate, os.X_OK):
            return candidate
    raise ImageError(f"{name} not found", hint="install e2fsprogs (Debian: apt install e2fsprogs)")


def create(path: str, size_mib: int = DEFAULT_SIZE_MIB, sparse: bool = False,
           dirs=(), fakeroot: bool = False) -> str:
    """Make the overlay (see the module docstring); returns "image" or "sif" (what was made)."""
    if size_mib < MIN_SIZE_MIB:
        raise ImageError(f"image size must be equal or greater than {MIN_SIZE_MIB} MiB")
    mkfs = find_tool("mkfs.ext3")
    sif_image = _check_target(path)
    tops = _checked_dirs(dirs)
    import tempfile
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_file = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".ext3",
                                    dir=directory)
    try:
        _allocate(fd, size_mib << 20, sparse, tmp_file)
        os.close(fd)
        fd = -1
        with tempfile.TemporaryDirectory(prefix="overlay-") as tree:
            _make_layout(tree, tops)
            _mkfs(mkfs, tree, tmp_file, fakeroot and os.getuid() != 0, sparse)
        if sif_image:
            _add_to_sif(path, tmp_file)
        else:
            os.rename(tmp_file, path)
            tmp_file = None
    except OSError as err:
        raise ImageError(f"while creating the overlay {path}: {err.strerror or err}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp_file is not None:
            try:
                os.unlink(tmp_file)
            except OSError:
                pass
    return "sif" if sif_image else "image"


def _check_target(path: str) -> bool:
    """True when path is an existing SIF to add the overlay to; False for a new image file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise ImageError(f"while opening image file {path}: {err.strerror}") from None
    try:
        import stat
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(f"{path} exists and is not a SIF image")
        head = os.pread(fd, 64, 0)
        if head[32:42] != b"SIF_MAGIC\0":
            if ext3_reason(fd) is None:
                raise ImageError(f"EXT3 overlay image {path} already exists")
            raise ImageError(f"{path} exists: destination image must be a SIF image")
    finally:
        os.close(fd)
    if not os.access(path, os.W_OK):
        raise ImageError(f"SIF image {path} is not writable by you")
    from satchel.image import sif
    with sif.SIFFile.open(path) as image:
        primary = image.primary_partition()
        if primary is not None and primary.fs_type == sif.FS_ENCRYPTEDSQUASHFS:
            raise ImageError(f"encrypted root FS partition in {path}: could not add writable "
                             "overlay")
        if image.find(sif.DATA_SIGNATURE):
            raise ImageError(f"SIF image {path} is signed: could not add writable overlay")
        for d in image.find(sif.DATA_PARTITION):
            if d.part_type == sif.PART_OVERLAY and d.fs_type == sif.FS_EXT3:
                raise ImageError(f"a writable overlay partition already exists in {path} "
                                 f"(ID: {d.id}), delete it first with "
                                 f"'satchel sif del {d.id} {path}'")
    return True


def _checked_dirs(dirs) -> list[str]:
    """--create-dir paths, relative to upper/; one that leaves it is refused."""
    out = []
    for given in dirs:
        rel = os.path.normpath(given.lstrip("/"))
        if rel == ".." or rel.startswith("../"):
            raise ImageError(f"overlay directory {given} created outside of overlay layout")
        if rel != ".":
            out.append(rel)
    return out


def _allocate(fd: int, size: int, sparse: bool, shown: str) -> None:
    """The image's bytes: a hole (--sparse, as `truncate`), else allocated blocks (as `dd
    if=/dev/zero`, without writing them: fallocate leaves unwritten extents that read as 0)."""
    os.fchmod(fd, 0o600)
    if sparse:
        os.ftruncate(fd, size)
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        import errno
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        block = bytes(1 << 20)
        for offset in range(0, size, len(block)):
            os.pwrite(fd, block, offset)


def _make_layout(tree: str, dirs) -> None:
    mode = 0o777 if os.getuid() > 65535 or os.getgid() > 65535 else 0o755
    old = os.umask(0)
    try:
        upper = os.path.join(tree, "upper")
        os.mkdir(upper, mode)
        os.mkdir(os.path.join(tree, "work"), mode)
        for rel in dirs:  # each component with the layout's mode (makedirs gives 0777)
            path = upper
            for part in rel.split("/"):
                path = os.path.join(path, part)
                if not os.path.isdir(path):
                    os.mkdir(path, mode)
    finally:
        os.umask(old)


def _mkfs(mkfs: str, tree: str, image: str, fakeroot: bool, sparse: bool) -> None:
    """mkfs.ext3 -d TREE; --fakeroot runs it as root of a root-mapped user namespace (as
    Apptainer), where the caller's files read as uid 0. A non-sparse image keeps its blocks
    (mke2fs would discard them: the file would turn sparse and could meet ENOSPC on the host
    file system later, a full disk instead of a full overlay)."""
    argv = [mkfs, "-q", "-F"] + ([] if sparse else ["-E", "nodiscard"]) + ["-d", tree, image]
    if fakeroot:
        argv = ["unshare", "--user", "--map-root-user"] + argv
    _run(argv)


def _run(argv) -> None:
    import subprocess
    from satchel import log
    log.verbose(f"running {' '.join(argv)}")
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        text = proc.stdout.decode(errors="replace").strip().splitlines()
        raise ImageError(f"while creating the ext3 file system in {argv[-1]}: "
                         f"{text[-1] if text else 'status ' + str(proc.returncode)}")


def _add_to_sif(path: str, ext3: str) -> None:
    from satchel.image import sif
    with sif.SIFFile.open(path) as image:
        arch = image.header.arch or sif.host_arch()
    sif.add_object(path, sif.NewObject(datatype=sif.DATA_PARTITION, path=ext3,
                                       fs_type=sif.FS_EXT3, part_type=sif.PART_OVERLAY,
                                       arch=arch))


def sif_overlay(image) -> tuple[int, int] | None:
    """(offset, size) of the ext3 overlay partition of an open SIFFile, or None."""
    from satchel.image import sif
    for d in image.find(sif.DATA_PARTITION):
        if d.part_type == sif.PART_OVERLAY and d.fs_type == sif.FS_EXT3:
            return d.offset, d.size
    return None
