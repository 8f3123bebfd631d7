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


# -- whose process is it? ---------------------------------------------------------------------
# Root acts on records a user wrote (`instance list|stop -u USER`): a record is a claim, never
# proof. A process is the user's instance only if it lives in a user namespace that the user
# created (every non-root instance does; the kernel gives its creator full power in it, so
# root signalling it does nothing the user could not do), and root signals it only through a
# pidfd opened before the checks, so a pid recycled meanwhile is never hit.

NS_GET_OWNER_UID = 0xB704  # ioctl on a /proc/PID/ns/user fd: uid of the namespace's creator
_PROC_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class NotOwned(InstanceError):
    """A record names a live process that is not its user's (forged, or a stale pid)."""


class Process:
    """A live process held by a pidfd and an open /proc/PID directory (same process)."""

    __slots__ = ("pid", "pidfd", "dirfd")

    def __init__(self, pid: int, pidfd: int, dirfd: int):
        self.pid = pid
        self.pidfd = pidfd
        self.dirfd = dirfd

    @classmethod
    def open(cls, pid: int) -> "Process | None":
        """The process `pid`, or None if there is none. The pidfd is opened first and checked
        after the directory: if it still names a process then, the two are the same one."""
        import signal

        try:
            pidfd = os.pidfd_open(pid)
        except (ProcessLookupError, ValueError, OverflowError):
            return None
        except OSError as err:
            raise InstanceError(f"opening process {pid}: {err.strerror}") from None
        try:
            dirfd = os.open(f"/proc/{pid}", _PROC_DIR)
        except OSError:
            os.close(pidfd)
            return None
        process = cls(pid, pidfd, dirfd)
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except OSError:
            process.close()
            return None
        return process

    def close(self) -> None:
        for fd in (self.pidfd, self.dirfd):
            if fd >= 0:
                os.close(fd)
        self.pidfd = self.dirfd = -1

    def start_time(self) -> int | None:
        """As process_start_time(), read through the held directory (None once it exited)."""
        try:
            fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dirfd)
        except OSError:
            return None
        try:
            raw = os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)
        fields = raw[raw.rindex(b")") + 2:].split()
        return None if fields[0] in (b"Z", b"X") else int(fields[19])

    def alive(self) -> bool:
        return self.start_time() is not None

    def uid(self) -> int | None:
        """Owner of /proc/PID: the process's effective uid (root's if it is not dumpable)."""
        try:
            return os.fstat(self.dirfd).st_uid
        except OSError:
            return None

    def namespace(self, name: str) -> int | None:
        """Inode of the process's namespace `name` (mnt, user, pid...), None if unreadable."""
        try:
            return os.stat(f"ns/{name}", dir_fd=self.dirfd).st_ino
        except OSError:
            return None

    def userns_owner(self) -> int | None:
        """The uid that created the process's user namespace; None for the host's own
        namespace (created by nobody) or when it cannot be read."""
        import fcntl
        import sys

        try:
            fd = os.open("ns/user", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dirfd)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_ino == os.stat("/proc/self/ns/user").st_ino:
                return None  # only root runs satchel for another user: this is the host's
            raw = fcntl.ioctl(fd, NS_GET_OWNER_UID, bytes(4))
        except OSError:
            return None
        finally:
            os.close(fd)
        return int.from_bytes(raw, sys.byteorder)

    def belongs_to(self, uid: int) -> bool:
        """Could user `uid` signal this process by itself? True if the process runs as `uid`
        or in a user namespace `uid` created (where the creator holds every capability)."""
        return self.uid() == uid or self.userns_owner() == uid

    def signal(self, signum: int) -> bool:
        """Send `signum` to this very process; False if it is gone."""
        import signal

        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            return False
        return True


def claim(record: Record, owner: Owner) -> Process | None:
    """The live process a record names, verified; None if it is gone (the record is stale).

    Raises NotOwned if a process with the recorded pid and start time lives but is not an
    instance of `owner`: when root acts for another user, that user's instance lives in a user
    namespace the user created. A caller's own records are its own claims: the kernel checks
    whatever it does with them.
    """
    if not isinstance(record.pid, int) or isinstance(record.pid, bool) or record.pid <= 0:
        return None
    process = Process.open(record.pid)
    if process is None:
        return None
    if process.start_time() != record.starttime:
        process.close()  # a recycled pid: the recorded process is gone
        return None
    if os.getuid() != owner.uid and process.userns_owner() != owner.uid:
        process.close()
        raise NotOwned(f"instance {record.name} of {owner.name}: process {record.pid} is not "
                       f"in a user namespace of {owner.name}: not touched")
    return process


# -- files under the owner's home ---------------------------------------------------------------
# Every directory below the home is opened one component at a time with O_NOFOLLOW and must be
# a directory of the owner; records and logs are opened relative to it (dir_fd), with
# O_NOFOLLOW|O_NONBLOCK, and used only if they are regular files of the owner. So root serving
# `-u USER` never follows the user's symlinks, never hangs on a FIFO, and unlinks only entries
# of the verified state directory.

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_RECORD = 1 << 16
_RECORD_SUFFIX = ".json"


class Registry:
    """The records and logs of one owner on this host."""

    def __init__(self, owner: Owner, host: str | None = None):
        self.owner = owner
        self.host = host or os.uname().nodename
        self._state_parts = (".satchel", "instances", self.host, owner.name)
        self._log_parts = (".apptainer", "instances", "logs", self.host, owner.name)
        self._twin_parts = (".singularity", "instances", "logs", self.host, owner.name)
        self.state_dir = os.path.join(owner.home, *self._state_parts)
        self.log_dir = os.path.join(owner.home, *self._log_parts)
        self.twin_log_dir = os.path.join(owner.home, *self._twin_parts)

    # -- paths -------------------------------------------------------------------------------
    def record_path(self, name: str) -> str:
        return os.path.join(self.state_dir, name + _RECORD_SUFFIX)

    def log_paths(self, name: str) -> tuple[str, str]:
        return (os.path.join(self.log_dir, name + ".out"),
                os.path.join(self.log_dir, name + ".err"))

    def _open_dir(self, parts: tuple, create: bool = False) -> int | None:
        """HOME/parts..., opened without following a symlink below the home, each step a
        directory owned by the owner; None if a step is missing (and not `create`).
        Directories made here are 0700, and a leaf found wider is narrowed to 0700 when the
        caller is the owner (instance logs are private: issue 10, point 9)."""
        path = self.owner.home
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                return None
            raise InstanceError(f"home directory {path} of {self.owner.name} does not "
                                "exist") from None
        except OSError as err:
            raise InstanceError(f"opening {path}: {err.strerror}") from None
        try:
            for part in parts:
                path = os.path.join(path, part)
                child = self._open_step(fd, part, path, create)
                os.close(fd)
                fd = child
                if fd < 0:
                    return None
            if create and os.getuid() == self.owner.uid:
                mode = os.fstat(fd).st_mode
                if mode & 0o077:
                    os.fchmod(fd, 0o700)
            result, fd = fd, -1
            return result
        except OSError as err:
            raise InstanceError(f"opening {path}: {err.strerror}") from None
        finally:
            if fd >= 0:
                os.close(fd)

    def _open_step(self, parent: int, part: str, path: str, create: bool) -> int:
        import errno
        import stat

        try:
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return -1
            try:
                os.mkdir(part, 0o700, dir_fd=parent)
            except FileExistsError:
                pass
            return self._open_step(parent, part, path, False)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise InstanceError(f"{path} is not a directory (a symlink?): not followed") \
                    from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != self.owner.uid:
            os.close(fd)
            raise InstanceError(f"{path} belongs to uid {info.st_uid}, not to "
                                f"{self.owner.name}: not used")
        return fd

    # -- locking: one writer at a time decides whether a name is free --------------------------
    def lock(self) -> "_Lock":
        return _Lock(self)

    # -- records -----------------------------------------------------------------------------
    def load(self, name: str) -> Record | None:
        dfd = self._open_dir(self._state_parts)
        if dfd is None:
            return None
        try:
            return self._load_at(dfd, name)
        finally:
            os.close(dfd)

    def _load_at(self, dfd: int, name: str) -> Record | None:
        """The record NAME.json in the open state directory; None if absent or unusable."""
        import stat

        from satchel import log

        entry = name + _RECORD_SUFFIX
        path = self.record_path(name)
        try:
            fd = os.open(entry, _FILE_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as err:  # ELOOP: a symlink; never followed, left alone
            log.warning(f"skipping instance record {path}: {err.strerror}")
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                log.warning(f"skipping instance record {path}: not a regular file")
                return None
            if info.st_uid != self.owner.uid:
                log.warning(f"skipping instance record {path}: owned by uid {info.st_uid}, "
                            f"not by {self.owner.name}")
                return None
            raw = os.read(fd, MAX_RECORD + 1)
        except OSError as err:
            self._discard(dfd, name, f"unreadable instance record {path}: {err.strerror}")
            return None
        finally:
            os.close(fd)
        try:
            data = json.loads(raw) if len(raw) <= MAX_RECORD else None
        except ValueError as err:
            # a record cut short (disk full, killed writer) is as good as stale
            self._discard(dfd, name, f"unreadable instance record {path}: {err}")
            return None
        if not isinstance(data, dict):
            self._discard(dfd, name, f"malformed instance record {path}")
            return None
        return Record(**{k: v for k, v in data.items() if k in Record.FIELDS})

    def save(self, record: Record) -> None:
        """Write a record atomically (a reader sees the old or the new one, never half)."""
        path = self.record_path(record.name)
        dfd = self._open_dir(self._state_parts, create=True)
        entry = record.name + _RECORD_SUFFIX
        tmp = f"{entry}.tmp{os.getpid()}"
        try:
            text = json.dumps(record.to_dict(), indent=1) + "\n"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            os.replace(tmp, entry, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as err:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise InstanceError(f"writing instance record {path}: {err.strerror}") from None
        finally:
            os.close(dfd)

    def remove(self, name: str) -> None:
        dfd = self._open_dir(self._state_parts)
        if dfd is None:
            return
        try:
            os.unlink(name + _RECORD_SUFFIX, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise InstanceError(f"removing instance record {self.record_path(name)}: "
                                f"{err.strerror}") from None
        finally:
            os.close(dfd)

    def _discard(self, dfd: int, name: str, why: str) -> None:
        from satchel import log
        log.verbose(f"{why}: removed")
        try:
            os.unlink(name + _RECORD_SUFFIX, dir_fd=dfd)
        except OSError:
            pass

    @staticmethod
    def _names_at(dfd: int, path: str) -> list[str]:
        try:
            entries = os.listdir(dfd)
        except OSError as err:
            raise InstanceError(f"reading {path}: {err.strerror}") from None
        return sorted(e[:-len(_RECORD_SUFFIX)] for e in entries
                      if e.endswith(_RECORD_SUFFIX) and not e.startswith("."))

    def names(self) -> list[str]:
        dfd = self._open_dir(self._state_parts)
        if dfd is None:
            return []
        try:
            return self._names_at(dfd, self.state_dir)
        finally:
            os.close(dfd)

    def running(self, pattern: str = "*") -> list[Record]:
        """Live instances whose name matches the glob `pattern`; stale records are removed,
        records naming a process that is not the owner's are skipped with a warning."""
        from satchel import log

        dfd = self._open_dir(self._state_parts)
        if dfd is None:
            return []
        found = []
        try:
            for name in self._names_at(dfd, self.state_dir):
                if not fnmatch.fnmatchcase(name, pattern):
                    continue
                record = self._load_at(dfd, name)
                if record is None:
                    continue
                try:
                    process = claim(record, self.owner)
                except NotOwned as err:
                    log.warning(f"skipping {err.message}")
                    continue
                if process is None:  # its process died: the instance is gone
                    self._discard(dfd, name, f"stale instance record {name}")
                    continue
                process.close()
                if record.status == "running":
                    found.append(record)
        finally:
            os.close(dfd)
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
        """Open (append) NAME.out and NAME.err, private to the owner (0600 in 0700
        directories), and make the ~/.singularity twins point at them."""
        log_fd = self._open_dir(self._log_parts, create=True)
        try:
            twin_fd = self._open_dir(self._twin_parts, create=True)
        except BaseException:
            os.close(log_fd)
            raise
        fds = []
        try:
            for path in self.log_paths(name):
                fds.append(self._open_log(log_fd, path))
                self._link_twin(twin_fd, path)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        finally:
            os.close(log_fd)
            os.close(twin_fd)
        return fds[0], fds[1]

    def _open_log(self, dfd: int, path: str) -> int:
        import stat

        try:
            fd = os.open(os.path.basename(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND
                         | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600, dir_fd=dfd)
        except OSError as err:
            raise InstanceError(f"opening instance log {path}: {err.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise InstanceError(f"opening instance log {path}: not a regular file")
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o600)  # a log made 0644 by an older satchel
        os.set_blocking(fd, True)
        return fd

    @staticmethod
    def _link_twin(twin_fd: int, path: str) -> None:
        name = os.path.basename(path)
        try:
            if os.readlink(name, dir_fd=twin_fd) == path:
                return
        except OSError:
            pass
        try:
            try:
                os.unlink(name, dir_fd=twin_fd)
            except FileNotFoundError:
                pass
            os.symlink(path, name, dir_fd=twin_fd)
        except OSError as err:
            from satchel import log
            log.warning(f"could not link {name} in the ~/.singularity log directory to "
                        f"{path}: {err.strerror}")


class _Lock:
    """flock() on a file in the state directory, held for a `with` block."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.fd = -1

    def __enter__(self) -> "_Lock":
        import fcntl

        path = os.path.join(self.registry.state_dir, ".lock")
        dfd = self.registry._open_dir(self.registry._state_parts, create=True)
        try:
            self.fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                              | os.O_NONBLOCK, 0o600, dir_fd=dfd)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as err:
            raise InstanceError(f"locking {path}: {err.strerror}") from None
        finally:
            os.close(dfd)
        return self

    def __exit__(self, *_exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
