"""satchel: an HPC container platform compatible with Apptainer/Singularity.

Importing the package installs the launch bundle's finder, if the installation has a bundle
(satchel/launcher.py writes it with the entry scripts). A launch imports ~35 of satchel's
modules, and each import through the path finder costs ~0.1 ms on its own (directory scans,
a stat of the source, the .pyc opened, read and checked), ~3 ms in all on a 25 ms `exec`. The
bundle is one file, `__pycache__/launch.<cache tag>.bundle`: the compiled code of the modules a
launch uses, read with one call. A module is served from it only while its source has the
size and modification time recorded at build (the check the .pyc files get); any other module,
an edited one, a bundle of another Python or one that cannot be read is imported as usual. The
bundle is trusted as the .pyc files beside it are: it lies in the same directory.
"""

__version__ = "0.1.0"

BUNDLE_MAGIC = b"satchel-launch-bundle-1\n"


class _LaunchBundle:
    """Finder and loader of sys.meta_path for the modules of the launch bundle.

    index: module name -> (source path relative to the package directory, its st_mtime_ns,
    its st_size, whether it is a package, offset and length of its marshalled code in the
    bundle). The bundle stays open (close-on-exec) and each module's code is read when it is
    imported: reading all of it at once (~1 MB) cost ~1 ms of page faults in a fresh process.
    A process that closed the descriptor (a forked helper closing what it does not know), or
    reused its number, is told apart by the file's identity, checked before each read.
    """

    def __init__(self, here: str, index: dict, fd: int, identity: tuple):
        self.here = here
        self.index = index
        self.fd = fd
        self.identity = identity

    def find_spec(self, name, path=None, target=None):
        entry = self.index.get(name)
        if entry is None:
            return None
        import os

        relative, mtime_ns, size, package, offset, length = entry
        origin = os.path.join(self.here, relative)
        try:
            st = os.stat(origin)
            if st.st_mtime_ns != mtime_ns or st.st_size != size:
                return None  # edited since the bundle was written: the path finder's
            bundle = os.fstat(self.fd)
            if (bundle.st_dev, bundle.st_ino, bundle.st_size) != self.identity:
                return None  # not the bundle any more
            code = os.pread(self.fd, length, offset)
        except OSError:
            return None
        if len(code) != length:
            return None
        spec = type(__spec__)(name, self, origin=origin, is_package=package)
        spec.has_location = True  # __file__ is the source, as with the path finder
        spec.loader_state = code
        if package:
            spec.submodule_search_locations = [os.path.dirname(origin)]
        return spec

    @staticmethod
    def create_module(spec):
        return None  # the default module object

    @staticmethod
    def exec_module(module) -> None:
        import marshal

        spec = module.__spec__
        try:
            code = marshal.loads(spec.loader_state)
        except (EOFError, ValueError, TypeError):  # a damaged entry: compile the source
            with open(spec.origin, "rb") as source:
                code = compile(source.read(), spec.origin, "exec", dont_inherit=True)
        spec.loader_state = None
        exec(code, module.__dict__)


def _use_launch_bundle() -> None:
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "__pycache__", f"launch.{sys.implementation.cache_tag}.bundle")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        import marshal

        st = os.fstat(fd)
        head = os.pread(fd, len(BUNDLE_MAGIC) + 8, 0)
        if not head.startswith(BUNDLE_MAGIC):
            raise ValueError("not a launch bundle")
        start = len(head)
        index_length = int.from_bytes(head[len(BUNDLE_MAGIC):], "little")
        table = os.pread(fd, index_length, start)
        index = marshal.loads(table)
        base = start + index_length
        index = {name: entry[:4] + (base + entry[4], entry[5]) for name, entry in index.items()}
        if len(table) != index_length or \
                any(entry[4] + entry[5] > st.st_size for entry in index.values()):
            raise ValueError("truncated")
    except Exception:  # noqa: BLE001 - a damaged bundle only means the usual imports
        os.close(fd)
        return
    sys.meta_path.insert(0, _LaunchBundle(here, index, fd, (st.st_dev, st.st_ino, st.st_size)))


_use_launch_bundle()
