"""Container records under --root: ROOT/ID/state.json and ROOT/ID/exec.fifo, as runc keeps them.

The record outlives the runtime process (create exits; start, kill, state and delete are
later processes, often of another program such as containerd's shim). Every name below ROOT
is opened by descriptor with O_NOFOLLOW, files O_NONBLOCK and checked regular, records written
to a temporary name and renamed, so a symlink or FIFO planted in a shared --root can neither
redirect a write nor hang a reader (the discipline of instance/state.py).

The init's status comes from the kernel, not from the record: the process (pid + its start
time, so a recycled pid is not taken for it) alive with exec.fifo present is "created",
alive without it "running", gone "stopped".
"""

from __future__ import annotations

import os

from satchel.errors import ContainerError, UsageError
from satchel.ocirt import jsonlite

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
STATE_FILE = "state.json"
FIFO = "exec.fifo"
MAX_STATE = 1 << 20


def default_root() -> str:
    if os.getuid() == 0:
        return "/run/satchel-runc"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/satchel-runc-{os.getuid()}"
    return runtime.rstrip("/") + "/satchel-runc"


def check_id(cid: str) -> None:
    if not cid or cid in (".", "..") or len(cid) > 1024 or not set(cid) <= _ID_CHARS:
        raise UsageError(f"invalid container id {cid!r}: use letters, digits, _ + - .")


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the parenthesised name), or None if gone/zombie."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw = os.read(fd, 4096).decode()
        finally:
            os.close(fd)
    except (OSError, UnicodeDecodeError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class Store:
    """The --root directory of one runtime invocation."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def _root_fd(self, create: bool) -> int | None:
        if create:
            try:
                os.makedirs(self.root, 0o700, exist_ok=True)
            except OSError as err:
                raise ContainerError(f"creating the state root {self.root}: "
                                     f"{err.strerror}") from None
        try:
            fd = os.open(self.root, _DIR)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ContainerError(f"opening the state root {self.root}: {err.strerror}") from None
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            os.close(fd)
            raise ContainerError(f"state root {self.root} is not private to uid {os.getuid()}")
        return fd

    def container_dir(self, cid: str, create: bool = False) -> int | None:
        """O_PATH-free directory fd of ROOT/ID (made 0711 when `create`), or None if absent."""
        check_id(cid)
        root = self._root_fd(create)
        if root is None:
            return None
        try:
            if create:
                try:
                    os.mkdir(cid, 0o711, dir_fd=root)
                except FileExistsError:
                    raise ContainerError(f"container {cid} already exists") from None
            try:
                return os.open(cid, _DIR, dir_fd=root)
            except FileNotFoundError:
                return None
            except OSError as err:
                raise ContainerError(f"opening the state of {cid}: {err.strerror}") from None
        finally:
            os.close(root)

    def exists(self, cid: str) -> bool:
        """Whether ROOT/ID is there (a record, or one being made or removed)."""
        dfd = self.container_dir(cid)
        if dfd is None:
            return False
        os.close(dfd)
        return True

    def path(self, cid: str, name: str = "") -> str:
        return os.path.join(self.root, cid, name) if name else os.path.join(self.root, cid)

    def save(self, cid: str, record: dict) -> None:
        dfd = self.container_dir(cid)
        if dfd is None:
            raise ContainerError(f"container {cid} does not exist")
        data = jsonlite.dumps(record).encode()
        tmp = f".{STATE_FILE}.{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.rename(tmp, STATE_FILE, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as err:
            raise ContainerError(f"writing the state of {cid}: {err.strerror}") from None
        finally:
            os.close(dfd)

    def load(self, cid: str) -> dict:
        dfd = self.container_dir(cid)
        if dfd is None:
            raise ContainerError(f"container {cid} does not exist")
        try:
            fd = os.open(STATE_FILE, _FILE, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if (st.st_mode & 0o170000) != 0o100000 or st.st_size > MAX_STATE:
                    raise ContainerError(f"state of {cid} is not a regular file")
                raw = os.read(fd, MAX_STATE)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise ContainerError(f"container {cid} does not exist") from None
        except OSError as err:
            raise ContainerError(f"reading the state of {cid}: {err.strerror}") from None
        finally:
            os.close(dfd)
        try:
            record = jsonlite.loads(raw)
        except ValueError:
            raise ContainerError(f"state of {cid} is not valid JSON") from None
        if not isinstance(record, dict) or record.get("id") != cid:
            raise ContainerError(f"state of {cid} does not describe it")
        return record

    def has_fifo(self, cid: str) -> bool:
        dfd = self.container_dir(cid)
        if dfd is None:
            return False
        try:
            os.stat(FIFO, dir_fd=dfd, follow_symlinks=False)
            return True
        except OSError:
            return False
        finally:
            os.close(dfd)

    def remove(self, cid: str) -> None:
        """Remove ROOT/ID and the files the runtime made in it (never following links)."""
        root = self._root_fd(False)
        if root is None:
            return
        try:
            try:
                dfd = os.open(cid, _DIR, dir_fd=root)
            except FileNotFoundError:
                return
            try:
                for name in os.listdir(dfd):
                    os.unlink(name, dir_fd=dfd)
            finally:
                os.close(dfd)
            os.rmdir(cid, dir_fd=root)
        except OSError as err:
            raise ContainerError(f"removing the state of {cid}: {err.strerror}") from None
        finally:
            os.close(root)

    def ids(self) -> list[str]:
        root = self._root_fd(False)
        if root is None:
            return []
        try:
            return sorted(n for n in os.listdir(root) if not n.startswith("."))
        finally:
            os.close(root)


def status(record: dict, store: Store) -> str:
    """created | running | stopped (creating while create has not saved the init's pid)."""
    pid = record.get("pid") or 0
    if pid <= 0:
        return "creating" if record.get("status") == "creating" else "stopped"
    if start_time(pid) != record.get("start_time"):
        return "stopped"
    return "created" if store.has_fifo(record["id"]) else "running"


def public_state(record: dict, store: Store) -> dict:
    """The runtime spec's state object (what `state ID` prints and hooks read on stdin)."""
    current = status(record, store)
    return {"ociVersion": record.get("ociVersion", "1.0.2"), "id": record["id"],
            "status": current, "pid": record.get("pid", 0) if current != "stopped" else 0,
            "bundle": record.get("bundle", ""), "rootfs": record.get("rootfs", ""),
            "created": record.get("created", ""), "owner": record.get("owner", ""),
            "annotations": record.get("annotations") or {}}
