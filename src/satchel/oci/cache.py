"""The image cache: verified blobs and converted SIFs, addressed by digest, safe under
concurrency and crashes.

Location: $APPTAINER_CACHEDIR, else $SINGULARITY_CACHEDIR, else ~/.satchel/cache.

    blob/sha256/<hex>     blobs (layers, configs, manifests); present = verified
    oci-tmp/<hex>.sif     SIFs converted from the image manifest <hex> (Apptainer's name)
    tmp/                  partial downloads (<hex>.partial, resumable) and files being written
    lock/                 one lock file per digest (fcntl.flock)

Rules that make it safe:
- Nothing enters blob/ or oci-tmp/ except by rename(2) from tmp/ after verification, so a reader
  sees a whole verified file or nothing; a process killed with SIGKILL leaves at worst a partial
  file in tmp/, which the next pull re-hashes before resuming and only trusts once the digest
  of the whole blob matches.
- A writer holds the flock of the digest; others wait on it, then find the finished file.
  flock locks die with their process, so a crash never leaves a stale lock.
- Files are not fsync'ed: the cache survives a killed process, not a power cut (a torn file
  after a power cut fails its size check or its digest check on the next download).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from satchel.errors import CacheError, os_error
from satchel.oci import digest as digests

CACHE_ENV = ("APPTAINER_CACHEDIR", "SINGULARITY_CACHEDIR")
KINDS = ("blob", "oci")  # what `satchel cache list/clean --type` knows


def default_root(environ=None) -> str:
    environ = os.environ if environ is None else environ
    for name in CACHE_ENV:
        value = environ.get(name)
        if value:
            return os.path.abspath(value)
    home = environ.get("HOME") or os.path.expanduser("~")
    if not home:
        raise CacheError("cannot find a cache directory: HOME is not set",
                         hint="set APPTAINER_CACHEDIR, or use --disable-cache")
    return os.path.join(home, ".satchel", "cache")


class Entry:
    """One cached file, for list/clean."""

    __slots__ = ("kind", "name", "path", "size", "mtime")

    def __init__(self, kind, name, path, size, mtime):
        self.kind, self.name, self.path, self.size, self.mtime = kind, name, path, size, mtime


class Cache:
    def __init__(self, root: str):
        self.root = root
        self.blob_dir = os.path.join(root, "blob", "sha256")
        self.sif_dir = os.path.join(root, "oci-tmp")
        self.tmp_dir = os.path.join(root, "tmp")
        self.lock_dir = os.path.join(root, "lock")

    @classmethod
    def default(cls) -> "Cache":
        return cls(default_root())

    def ensure(self) -> "Cache":
        for path in (self.blob_dir, self.sif_dir, self.tmp_dir, self.lock_dir):
            try:
                os.makedirs(path, mode=0o700, exist_ok=True)
            except OSError as err:
                raise os_error(f"creating cache directory {path}", err, CacheError) from None
        return self

    # ---- paths (digests are validated: they come from the network)
    def blob_path(self, dig: digests.Digest) -> str:
        return os.path.join(self.root, "blob", dig.algorithm, dig.hex)

    def partial_path(self, dig: digests.Digest) -> str:
        return os.path.join(self.tmp_dir, f"{dig.algorithm}-{dig.hex}.partial")

    def sif_path(self, manifest_digest: digests.Digest) -> str:
        return os.path.join(self.sif_dir, f"{manifest_digest.hex}.sif")

    def temp_path(self, stem: str) -> str:
        """A fresh name in tmp/ for a file this process writes and then renames into place."""
        return os.path.join(self.tmp_dir, f"{stem}.{os.getpid()}.{time.monotonic_ns()}.tmp")

    # ---- locks
    @contextlib.contextmanager
    def lock(self, name: str):
        """Exclusive lock `name` (a digest-derived word) across processes and threads."""
        path = os.path.join(self.lock_dir, name + ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise os_error(f"opening cache lock {path}", err, CacheError) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def try_lock(self, name: str) -> int | None:
        """Non-blocking variant for `clean`: a held lock means a pull is using that digest."""
        path = os.path.join(self.lock_dir, name + ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    # ---- blobs
    def has_blob(self, dig: digests.Digest, size: int | None = None) -> str | None:
        """Path of the cached blob, or None. A file of the wrong size (a torn write after a
        power cut, a tampered cache) is removed rather than trusted."""
        path = self.blob_path(dig)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise os_error(f"checking cached blob {path}", err, CacheError) from None
        if size is not None and st.st_size != size:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return path

    def put_blob(self, dig: digests.Digest, data: bytes) -> str:
        """Store a small verified blob (a manifest, a config) atomically."""
        actual = digests.of_bytes(data, dig.algorithm)
        if actual != dig:
            raise CacheError(f"refusing to cache {dig}: content has digest {actual}")
        path = self.blob_path(dig)
        if os.path.exists(path):
            return path
        self.ensure()
        tmp = self.temp_path(dig.hex)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.rename(tmp, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise os_error(f"writing cache file {path}", err, CacheError) from None
        return path

    def read_blob(self, dig: digests.Digest) -> bytes | None:
        path = self.has_blob(dig)
        if path is None:
            return None
        with open(path, "rb") as fh:
            data = fh.read()
        if digests.of_bytes(data, dig.algorithm) != dig:  # small: always re-verified
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return data

    # ---- list and clean
    def entries(self, kinds=KINDS) -> list[Entry]:
        out = []
        sources = []
        if "blob" in kinds:
            sources += [("blob", os.path.join(self.root, "blob", alg)) for alg in ("sha256", "sha512")]
        if "oci" in kinds:
            sources.append(("oci", self.sif_dir))
        for kind, directory in sources:
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise os_error(f"reading cache directory {directory}", err, CacheError) from None
            for name in sorted(names):
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                out.append(Entry(kind, name, path, st.st_size, st.st_mtime))
        return out

    def clean(self, kinds=KINDS, older_than_days: float | None = None,
              dry_run: bool = False) -> list[Entry]:
        """Remove cached entries (and stale partial downloads); returns what was (or would be)
        removed. Entries whose digest lock is held by a running pull are skipped."""
        now = time.time()
        removed = []
        for entry in self.entries(kinds):
            if older_than_days is not None and now - entry.mtime < older_than_days * 86400:
                continue
            stem = entry.name.split(".")[0]
            lock_name = ("sif-" if entry.kind == "oci" else "blob-") + stem
            fd = None if dry_run else self.try_lock(lock_name)
            if not dry_run and fd is None:
                continue
            try:
                if not dry_run:
                    os.unlink(entry.path)
                removed.append(entry)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise os_error(f"removing {entry.path}", err, CacheError) from None
            finally:
                if fd is not None:
                    os.close(fd)
        if not dry_run and older_than_days is None and set(kinds) >= set(KINDS):
            self._clean_tmp()
        return removed

    def _clean_tmp(self) -> None:
        """Remove partial downloads and temp files nobody is writing (their lock is free)."""
        try:
            names = os.listdir(self.tmp_dir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.tmp_dir, name)
            if name.endswith(".partial"):
                stem = name[:-len(".partial")].split("-", 1)[-1]
                fd = self.try_lock("blob-" + stem)
                if fd is None:
                    continue
                try:
                    os.unlink(path)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            else:
                # temp_path() names carry the writer's pid (".PID.NS.tmp"), also inside the
                # names of build directories made for them: keep those of live processes
                import re
                found = re.search(r"\.(\d+)\.\d+\.tmp", name)
                if found and _alive(int(found.group(1))):
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    from satchel import fsutil
                    with contextlib.suppress(OSError):
                        fsutil.remove_tree(path)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    return True
