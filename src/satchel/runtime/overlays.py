"""--overlay, --writable and --writable-tmpfs: which layers a container gets, decided once.

Imported by the plan only when one of them is asked for, or when a SIF carries an overlay
partition (formats.ImageRef.overlay_part). What each --overlay PATH[:ro] is:
  a directory       writable: PATH/upper and PATH/work; with :ro, PATH/upper (or PATH itself
                    when it has none) is a read-only lower layer
  an ext3 image     mounted (fuse2fs without privilege, a loop device as root); writable:
                    its upper/ and work/, with :ro its upper/ as a lower layer
  a SIF             its Ext3/Overlay partition, as an ext3 image
  a SquashFS file   always a read-only lower layer
At most one layer is writable (Apptainer's rule), and it is the upper layer, above all the
others wherever it was given. The read-only layers stack as Apptainer stacks them: its
engine (internal/pkg/runtime/engine/apptainer/container_linux.go, addOverlayMount) walks the
image, then each --overlay in the order given, and puts each read-only one on top of the
lower layers so far (layer/overlay.AddLowerDir prepends). So the LAST --overlay given is the
topmost lower layer, the first the lowest; a SIF's own overlay partition sits right above
the image, below them all: read-only, or the writable layer with --writable.
Bad input is one ContainerError: a file that is neither, an ext3 partition that is corrupt,
an image the caller cannot write (unless :ro), --writable where nothing can be written.
"""

from __future__ import annotations

import os
import posixpath

from satchel.errors import ConfigError, ContainerError, UsageError


class Layer:
    """An overlay image to mount before the overlay: name, file, byte range, file system."""

    __slots__ = ("name", "path", "offset", "size", "fs", "readonly", "mountpoint")

    def __init__(self, name, path, offset, size, fs, readonly, mountpoint):
        self.name, self.path, self.offset, self.size = name, path, offset, size
        self.fs, self.readonly, self.mountpoint = fs, readonly, mountpoint

    @property
    def lower(self) -> str:
        """The directory of this layer that a read-only use stacks."""
        return self.mountpoint + "/upper" if self.fs == "ext3" else self.mountpoint


class Layers:
    """What the overlay is made of. upper/work None: a read-only overlay (lower layers only)."""

    __slots__ = ("upper", "work", "tmpfs_upper", "lowers", "images", "sandbox_rw")

    def __init__(self):
        self.upper = self.work = None
        self.tmpfs_upper = False
        self.lowers: list[str] = []     # topmost first, the image not included
        self.images: list[Layer] = []   # mounted in this order, before the overlay
        self.sandbox_rw = False         # --writable on a sandbox: no overlay at all

    @property
    def overlaid(self) -> bool:
        return self.upper is not None or bool(self.lowers)


def wanted(opts, image) -> bool:
    """Whether request() has anything to decide (cheap: no import, no I/O)."""
    return bool(opts.overlay or opts.writable or opts.writable_tmpfs or
                getattr(image, "overlay_part", None))


def request(opts, config, host, image, session: str) -> Layers:
    """The layers for these options (see the module docstring)."""
    layers = Layers()
    if (opts.overlay or opts.writable_tmpfs) and not config.get_bool("enable overlay", True):
        raise ConfigError("overlay is disabled by the administrator (enable overlay = no)")
    given = []
    for value in opts.overlay:
        given.append(_classify(value, host, session, len(given)))
    embedded = getattr(image, "overlay_part", None)
    if opts.writable:
        if image.kind == "sandbox":
            if not host.is_writable_dir(image.path):
                raise ContainerError(f"--writable: sandbox {image.path} is not writable by you",
                                     hint="use --writable-tmpfs or an --overlay instead")
            layers.sandbox_rw = True
        elif embedded is None:
            raise ContainerError(f"--writable: {image.path} has no writable overlay partition",
                                 hint="add one with 'satchel overlay create IMAGE', or use "
                                      "--writable-tmpfs or --overlay")
    if embedded is not None:
        check_embedded(image)
        offset, size = embedded
        given.append((Layer("layer-sif", image.path, offset, size, "ext3", not opts.writable,
                            session + "/layers/sif"), None))
    writable = [g for g in given if (g[0] is not None and not g[0].readonly) or
                (g[0] is None and g[1][1])]
    if len(writable) > 1:
        raise UsageError("only one writable overlay is allowed: add :ro to the others")
    if embedded is not None:  # the image's own partition first: the lowest layer
        given.insert(0, given.pop())
    for layer, directory in given:  # each read-only layer goes on top of those before it
        if layer is not None:
            layers.images.append(layer)
            if layer.readonly:
                layers.lowers.insert(0, layer.lower)
            else:
                layers.upper, layers.work = layer.mountpoint + "/upper", layer.mountpoint + "/work"
        elif directory[1]:
            layers.upper, layers.work = directory[0] + "/upper", directory[0] + "/work"
        else:
            layers.lowers.insert(0, directory[0])
    if layers.upper is None and opts.writable_tmpfs and not layers.sandbox_rw:
        layers.upper = session + "/overlay/upper"
        layers.work = session + "/overlay/work"
        layers.tmpfs_upper = True
    return layers


def _classify(value: str, host, session: str, index: int):
    """(Layer, None) for an image file, (None, (dir, writable)) for a directory."""
    path, readonly = value, False
    for suffix, ro in ((":ro", True), (":rw", False)):
        if value.endswith(suffix):
            path, readonly = value[:-len(suffix)], ro
    if not path.startswith("/"):
        path = posixpath.join(host.cwd or "/", path)
    path = posixpath.normpath(path)
    kind = host.path_kind(path)
    if kind is None:
        raise ContainerError(f"overlay {value} does not exist")
    if kind == "dir":
        if readonly:
            upper = path + "/upper"
            return None, (upper if host.path_kind(upper) == "dir" else path, False)
        if not host.is_writable_dir(path):
            raise ContainerError(f"overlay directory {value} is not writable by you",
                                 hint="add :ro to use it read-only")
        return None, (path, True)
    mountpoint = f"{session}/layers/{index}"
    fs, offset, size = _identify(path, value)
    if fs == "squashfs":
        readonly = True  # SquashFS cannot be written: always a lower layer
    elif not readonly and not os.access(path, os.R_OK | os.W_OK):
        raise ContainerError(f"overlay image {value} is not writable by you",
                             hint="add :ro to use it read-only")
    return Layer(f"layer-{index}", path, offset, size, fs, readonly, mountpoint), None


def _identify(path: str, shown: str) -> tuple[str, int, int]:
    """(file system, offset, size) of an overlay image file; ContainerError if it is none."""
    from satchel import fsutil
    from satchel.image import overlay
    try:
        fd = fsutil.open_regular(path, follow=True)
    except fsutil.NotRegularFileError as err:
        raise ContainerError(f"overlay {shown} is {fsutil.file_kind(err.mode)}, not an "
                             "overlay image or directory") from None
    except OSError as err:
        raise ContainerError(f"overlay {shown}: {err.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 64, 0)
        if head[32:42] == b"SIF_MAGIC\0":
            return _sif_partition(path, shown)
        if head[:4] == b"hsqs":
            return "squashfs", 0, size
        reason = overlay.ext3_reason(fd)
        if reason is not None:
            raise ContainerError(f"overlay {shown} is {reason}",
                                 hint="make one with 'satchel overlay create'")
        return "ext3", 0, size
    finally:
        os.close(fd)


def _sif_partition(path: str, shown: str) -> tuple[str, int, int]:
    from satchel.errors import SatchelError
    from satchel.image import overlay, sif
    try:
        with sif.SIFFile.open(path) as image:
            part = overlay.sif_overlay(image)
            if part is None:
                raise ContainerError(f"overlay {shown}: the SIF image has no ext3 overlay "
                                     "partition", hint="add one with 'satchel overlay create'")
            reason = overlay.ext3_reason(image.fd, part[0])
    except ContainerError:
        raise
    except (SatchelError, OSError) as err:
        raise ContainerError(f"overlay {shown}: {err}") from None
    if reason is not None:
        raise ContainerError(f"the overlay partition of {shown} is corrupt: {reason}")
    return "ext3", part[0], part[1]


def check_embedded(image) -> None:
    """The SIF's own overlay partition must be ext3 (a corrupt one is refused, not mounted)."""
    offset, _ = image.overlay_part
    fd = os.open(image.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        from satchel.image import overlay
        reason = overlay.ext3_reason(fd, offset)
    finally:
        os.close(fd)
    if reason is not None:
        raise ContainerError(f"the overlay partition of {image.path} is corrupt: {reason}")


def fakeroot_maps(host, ignore_subuid: bool):
    """--fakeroot: ("subid", uidmap args, gidmap args) for newuidmap/newgidmap, or
    ("root", uid_map line, gid_map line) for a root-mapped namespace (one INFO line says why)."""
    from satchel import log
    from satchel.build.fakeroot import SUBID_FILES, subid_range
    subuid = subgid = None
    if not ignore_subuid:
        subuid = subid_range(SUBID_FILES[0], host.user, host.uid)
        subgid = subid_range(SUBID_FILES[1], host.user, host.uid)
    if subuid and subgid:
        return ("subid", ("0", str(host.uid), "1", "1", str(subuid[0]), str(subuid[1])),
                ("0", str(host.gid), "1", "1", str(subgid[0]), str(subgid[1])))
    reason = "--ignore-subuid" if ignore_subuid else \
        f"no /etc/subuid and /etc/subgid range for {host.user}"
    log.info(f"{reason}: using a root-mapped user namespace (only root's files can be changed)")
    return ("root", f"0 {host.uid} 1", f"0 {host.gid} 1")
