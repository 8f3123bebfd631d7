"""Read-only access to the files of an image stored locally: a directory (OCI layout) or a tar
archive (oci-archive, docker-archive) read in place, without unpacking it first.

Names come from JSON inside the image, so they are looked up, never joined onto host paths
unchecked: a tar archive is an index of member names, and a directory store accepts only
relative names without '..'.
"""

from __future__ import annotations

import os
import posixpath
import tarfile

from satchel import fsutil
from satchel.errors import OCIError

JSON_LIMIT = 16 << 20


class DirStore:
    def __init__(self, root: str, what: str):
        if not os.path.isdir(root):
            raise OCIError(f"{what}: {root} is not a directory", in_context=True)
        self.root = root
        self.what = what

    def _path(self, name: str) -> str:
        clean = posixpath.normpath(name)
        if clean.startswith("/") or clean == ".." or clean.startswith("../"):
            raise OCIError(f"{self.what}: refusing path {name!r} outside the image",
                           in_context=True)
        return os.path.join(self.root, clean)

    def open(self, name: str):
        try:
            # regular files only: a FIFO in the layout must not hang the pull
            return os.fdopen(fsutil.open_regular(self._path(name), follow=True), "rb")
        except FileNotFoundError:
            raise OCIError(f"{self.what}: {name} is missing", in_context=True) from None
        except OSError as err:
            raise OCIError(f"{self.what}: reading {name}: {err.strerror}",
                           in_context=True) from None

    def size(self, name: str) -> int | None:
        try:
            return os.path.getsize(self._path(name))
        except OSError:
            return None

    def close(self) -> None:
        pass


class TarStore:
    def __init__(self, path: str, what: str):
        self.what = what
        try:
            # opened here, regular files only: tarfile's own open() waits forever on a FIFO
            self._raw = os.fdopen(fsutil.open_regular(path, follow=True), "rb")
        except FileNotFoundError:
            raise OCIError(f"{what}: {path} does not exist", in_context=True) from None
        except IsADirectoryError:
            raise OCIError(f"{what}: {path} is a directory, not an archive",
                           in_context=True) from None
        except OSError as err:
            raise OCIError(f"{what}: {path}: {err.strerror}", in_context=True) from None
        try:
            self._index(path)
        except BaseException:
            self._raw.close()
            raise

    def _index(self, path: str) -> None:
        what = self.what
        try:
            self.tar = tarfile.open(path, "r:*", fileobj=self._raw)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise OCIError(f"{what}: {path} is not a tar archive ({err})",
                           in_context=True) from None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            for member in self.tar.getmembers():
                if member.isreg() or member.islnk():
                    self.members[posixpath.normpath(member.name.lstrip("/"))] = member
        except (tarfile.TarError, OSError, EOFError) as err:
            raise OCIError(f"{what}: {path} is a damaged tar archive ({err})",
                           in_context=True) from None

    def open(self, name: str):
        member = self.members.get(posixpath.normpath(name.lstrip("/")))
        if member is None:
            raise OCIError(f"{self.what}: {name} is missing from the archive", in_context=True)
        try:
            return self.tar.extractfile(member)
        except (tarfile.TarError, KeyError) as err:
            raise OCIError(f"{self.what}: cannot read {name} ({err})", in_context=True) from None

    def size(self, name: str) -> int | None:
        member = self.members.get(posixpath.normpath(name.lstrip("/")))
        return member.size if member is not None and member.isreg() else None

    def close(self) -> None:
        self.tar.close()
        self._raw.close()  # tarfile leaves a file object it was given open


def read(store, name: str, limit: int = JSON_LIMIT) -> bytes:
    with store.open(name) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OCIError(f"{store.what}: {name} is larger than {limit} bytes")
    return data
