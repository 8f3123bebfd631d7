"""Where instances are remembered, and whether what is remembered is still true.

There is no daemon to ask, so the truth is the process table: a record names the process
that holds the instance's namespaces (pid and its start time, so a recycled pid is never
mistaken for the instance), and a record whose process is gone is stale and is removed the
next time anyone lists. Per user, under the home directory from the password database (as
Apptainer and spython compute it, whatever $HOME says):

    ~/.satchel/instances/HOST/USER/NAME.json             the record (satchel's own format)
    ~/.apptainer/instances/logs/HOST/USER/NAME.{out,err}  the instance's stdout/stderr
    ~/.singularity/instances/logs/HOST/USER/NAME.{out,err}  symlinks to those: spython reads
                                                           this path whatever the tool's name

HOST is the node name, so a home shared over the network keeps each node's instances apart.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pwd

from satchel.errors import InstanceError, UsageError

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_NAME = 128
URI_PREFIX = "instance://"


def check_name(name: str) -> None:
    """Apptainer's rule (letters, digits, '.', '_', '-'), minus names that are paths."""
    if (not name or len(name) > MAX_NAME or not set(name) <= _NAME_CHARS
            or name in (".", "..") or name.startswith(".")):
        raise UsageError(f"{name!r} is not a valid instance name: use letters, digits, "
                         "'.', '_' and '-' (not first)")


def name_from_uri(uri: str) -> str:
    name = uri[len(URI_PREFIX):] if uri.startswith(URI_PREFIX) else uri
    check_name(name)
    return name


class Owner:
    """The user whose instances these are: name, ids and home from the password database."""

    __slots__ = ("name", "uid", "gid", "home")

    def __init__(self, name: str, uid: int, gid: int, home: str):
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = home

    @classmethod
    def from_entry(cls, entry) -> "Owner":
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")

    @classmethod
    def current(cls) -> "Owner":
        uid = os.getuid()
        try:
            return cls.from_entry(pwd.getpwuid(uid))
        except KeyError:
            raise InstanceError(f"user id {uid} has no password entry: instances need a "
                                "home directory to keep their records") from None

    @classmethod
    def select(cls, user: str | None) -> "Owner":
        """The caller, or (root only) the user named by -u."""
        me = cls.current()
        if not user or user == me.name:
            return me
        try:
            other = cls.from_entry(pwd.getpwnam(user))
        except KeyError:
            raise UsageError(f"unknown user {user!r}") from None
        if os.getuid() != 0 and other.uid != me.uid:
            raise InstanceError("only root can see or stop instances of other users (-u)")
        return other


class Record:
    """One instance as remembered: enough to list it, join it and stop it."""

    FIELDS = ("name", "pid", "starttime", "status", "image", "user", "uid", "host",
              "started", "rootless", "namespaces", "pid_namespace", "log_out", "log_err",
              "command", "args", "ip")
    __slots__ = FIELDS

    def __init__(self, **values):
        for key in self.FIELDS:
            setattr(self, key, values.get(key))

    def to_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.FIELDS}

    def listing(self) -> dict:
        """The entry of `instance list --json`, in Apptainer's key names (spython reads them)."""
        return {"instance": self.name, "pid": self.pid, "img": self.image,
                "ip": self.ip or "", "logErrPath": self.log_err, "logOutPath": self.log_out}


def process_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live process; None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22 of proc(5), counting from the state (field 3)


def is_alive(record: Record) -> bool:
    return (isinstance(record.pid, int) and record.pid > 0
            and process_start_time(record.pid) == record.starttime)


class Registry:
    """The records and logs of one owner on this host."""

    def __init__(self, owner: Owner, host: str | None = None):
        self.owner = owner
        self.host = host or os.uname().nodename
        tail = os.path.join(self.host, owner.name)
        self.state_dir = os.path.join(owner.home, ".satchel", "instances", tail)
        self.log_dir = os.path.join(owner.home, ".apptainer", "instances", "logs", tail)
        self.twin_log_dir = os.path.join(owner.home, ".singularity", "instances", "logs", tail)

    # -- paths -------------------------------------------------------------------------------
    def record_path(self, name: str) -> str:
        return os.path.join(self.state_dir, name + ".json")

    def log_paths(self, name: str) -> tuple[str, str]:
        return (os.path.join(self.log_dir, name + ".out"),
                os.path.join(self.log_dir, name + ".err"))

    def _makedirs(self, path: str) -> None:
        try:
            os.makedirs(path, 0o755, exist_ok=True)
        except OSError as err:
            raise InstanceError(f"creating {path}: {err.strerror}") from None

    # -- locking: one writer at a time decides whether a name is free --------------------------
    def lock(self) -> "_Lock":
        self._makedirs(self.state_dir)
        return _Lock(os.path.join(self.state_dir, ".lock"))

    # -- records -----------------------------------------------------------------------------
    def load(self, name: str) -> Record | None:
        path = self.record_path(name)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            # a record cut short (disk full, killed writer) is as good as stale
            self._discard(path, f"unreadable instance record {path}: {err}")
            return None
        if not isinstance(data, dict):
            self._discard(path, f"malformed instance record {path}")
            return None
        return Record(**{k: v for k, v in data.items() if k in Record.FIELDS})

    def save(self, record: Record) -> None:
        """Write a record atomically (a reader sees the old or the new one, never half)."""
        self._makedirs(self.state_dir)
        path = self.record_path(record.name)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(record.to_dict(), fh, indent=1)
                fh.write("\n")
            os.replace(tmp, path)
        except OSError as err:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise InstanceError(f"writing instance record {path}: {err.strerror}") from None

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.record_path(name))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise InstanceError(f"removing instance record {self.record_path(name)}: "
                                f"{err.strerror}") from None

    def _discard(self, path: str, why: str) -> None:
        from satchel import log
        log.verbose(f"{why}: removed")
        try:
            os.unlink(path)
        except OSError:
            pass

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.state_dir)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise InstanceError(f"reading {self.state_dir}: {err.strerror}") from None
        return sorted(e[:-5] for e in entries if e.endswith(".json") and not e.startswith("."))

    def running(self, pattern: str = "*") -> list[Record]:
        """Live instances whose name matches the glob `pattern`; stale records are removed."""
        found = []
        for name in self.names():
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            record = self.load(name)
            if record is None:
                continue
            if not is_alive(record):
                self.remove(name)  # its process died: the instance is gone
                continue
            if record.status == "running":
                found.append(record)
        return found

    def find(self, name: str) -> Record:
        """The live instance called `name`, or an InstanceError."""
        check_name(name)
        record = self.load(name)
        if record is None or record.status != "running":
            raise InstanceError(f"no instance found with name {name}")
        if not is_alive(record):
            self.remove(name)
            raise InstanceError(f"no instance found with name {name} (its process has "
                                "exited; the stale record was removed)")
        return record

    # -- logs --------------------------------------------------------------------------------
    def open_logs(self, name: str) -> tuple[int, int]:
        """Open (append) NAME.out and NAME.err, and make the ~/.singularity twins point at them."""
        self._makedirs(self.log_dir)
        self._makedirs(self.twin_log_dir)
        fds = []
        for path in self.log_paths(name):
            try:
                fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                                   | os.O_NOFOLLOW, 0o644))
            except OSError as err:
                for fd in fds:
                    os.close(fd)
                raise InstanceError(f"opening instance log {path}: {err.strerror}") from None
            twin = os.path.join(self.twin_log_dir, os.path.basename(path))
            if os.path.realpath(twin) != os.path.realpath(path):
                try:
                    if os.path.islink(twin) or os.path.isfile(twin):
                        os.unlink(twin)
                    os.symlink(path, twin)
                except OSError as err:
                    from satchel import log
                    log.warning(f"could not link {twin} to {path}: {err.strerror}")
        return fds[0], fds[1]


class _Lock:
    """flock() on a file in the state directory, held for a `with` block."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_Lock":
        import fcntl
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as err:
            raise InstanceError(f"locking {self.path}: {err.strerror}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
