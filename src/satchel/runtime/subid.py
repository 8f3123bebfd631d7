"""`config fakeroot`: the administrator's edits of /etc/subuid and /etc/subgid.

Apptainer's semantics (internal/pkg/fakeroot in 1.3):
- --add USER gives the user a range of 65536 subordinate ids in both files, written
  `UID:START:65536`; the range is the highest free one, searched downwards from
  4294967296 - 131072 in steps of 65536 (far above the ranges useradd hands out from
  100000, so the two never collide). A user who has a range already is left alone.
- --remove USER deletes the user's entry; --disable USER comments it out with a leading
  `!` (newuidmap and satchel then ignore it); --enable USER removes the `!`.
- An entry belongs to the user if its first field is the user's name or uid; the one used
  is the entry of exactly 65536 ids, else the largest above that.
Other lines (comments, other users, malformed lines) are kept as they are. Each file is
replaced atomically (a temporary file in the same directory with the old file's mode and
owner, fsync, rename) while an flock on the old file keeps concurrent edits out.
SATCHEL_SUBUID and SATCHEL_SUBGID name other files to edit (for tests, and for admins who
prepare the files elsewhere); newuidmap itself always reads /etc/subuid and /etc/subgid.
"""

from __future__ import annotations

import os

from satchel import fsutil
from satchel.errors import ConfigError

SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
RANGE = 65536
START_MAX = 4294967296 - 131072
START_MIN = 65536
OPERATIONS = ("add", "remove", "enable", "disable")


def subid_paths(environ=None) -> tuple[str, str]:
    environ = os.environ if environ is None else environ
    return environ.get("SATCHEL_SUBUID") or SUBUID, environ.get("SATCHEL_SUBGID") or SUBGID


class Entry:
    """One line of a subid file, parsed; `line` is written back unchanged unless edited."""

    __slots__ = ("line", "owner", "start", "count", "disabled")

    def __init__(self, line: str):
        self.line = line
        self.owner = ""
        self.start = self.count = -1  # -1: not a range (comment, blank, malformed)
        self.disabled = False
        fields = line.split(":")
        if len(fields) < 3 or not fields[0] or line.lstrip().startswith("#"):
            return
        owner = fields[0]
        if owner.startswith("!"):
            owner, self.disabled = owner[1:], True
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            return
        if start >= 0 and count > 0:
            self.owner, self.start, self.count = owner, start, count

    @property
    def valid(self) -> bool:
        return self.count > 0


def user_entry(entries: list[Entry], name: str, uid: int, path: str) -> Entry | None:
    """The user's entry (exactly RANGE ids, else the largest above); None if there is none."""
    mine = [e for e in entries if e.valid and e.owner in (name, str(uid))]
    exact = [e for e in mine if e.count == RANGE]
    if exact:
        return exact[0]
    large = [e for e in mine if e.count > RANGE]
    if large:
        return max(large, key=lambda e: e.count)
    if mine:
        raise ConfigError(f"{path}: the entries of {name} all have fewer than {RANGE} ids")
    return None


def free_start(entries: list[Entry], path: str) -> int:
    """The highest start, a multiple of RANGE below START_MAX, whose range overlaps none."""
    taken = sorted((e.start, e.start + e.count) for e in entries if e.valid)
    start = START_MAX
    while start >= START_MIN:
        end = start + RANGE
        if not any(lo < end and start < hi for lo, hi in taken):
            return start
        start -= RANGE
    raise ConfigError(f"{path}: no free range of {RANGE} subordinate ids is left")


def edit(text: str, op: str, name: str, uid: int, path: str) -> str | None:
    """The new content of a subid file after `op` for the user; None when nothing changes."""
    entries = [Entry(line) for line in text.splitlines()]
    entry = user_entry(entries, name, uid, path)
    if op == "add":
        if entry is not None:
            return None
        entries.append(Entry(f"{uid}:{free_start(entries, path)}:{RANGE}"))
    elif entry is None:
        raise ConfigError(f"{path}: no mapping entry for {name}",
                          hint=f"add one with 'config fakeroot --add {name}'")
    elif op == "remove":
        entries.remove(entry)
    elif op == "disable":
        if entry.disabled:
            return None
        entry.line = "!" + entry.line
    elif op == "enable":
        if not entry.disabled:
            return None
        entry.line = entry.line[1:]
    else:
        raise ConfigError(f"unknown fakeroot operation {op!r}")
    return "".join(e.line + "\n" for e in entries)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""
    except OSError as err:
        raise ConfigError(f"reading {path}: {err.strerror or err}") from None


def replace_keeping_owner(path: str, data: bytes | str, default_mode: int = 0o644) -> None:
    """atomic_write for an administrator's file (/etc/subuid, satchel.conf): the new file
    gets the old one's mode and owner (a new one: the caller's, `default_mode`) before the rename,
    and is synced first, so a crash leaves the old file or the whole new one."""
    try:
        st = os.stat(path)
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = default_mode, (os.geteuid(), os.getegid())
    fsutil.atomic_write(path, data, mode, fsync=True, owner=owner)


def configure(op: str, username: str, environ=None) -> list[str]:
    """Apply `op` for `username` to both files; returns the files that changed.

    Both new contents are computed before either file is written, so a refusal (no entry,
    no free range) changes nothing."""
    import fcntl
    import pwd
    if op not in OPERATIONS:
        raise ConfigError(f"unknown fakeroot operation {op!r}")
    try:
        uid = pwd.getpwnam(username).pw_uid
    except KeyError:
        raise ConfigError(f"config fakeroot: no user named {username!r}") from None
    locks = []
    try:
        plans = []
        for path in subid_paths(environ):
            if os.path.exists(path):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                locks.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
            plans.append((path, edit(_read(path), op, username, uid, path)))
        changed = []
        for path, text in plans:
            if text is not None:
                try:
                    replace_keeping_owner(path, text)
                except OSError as err:
                    raise ConfigError(f"writing {path}: {err.strerror or err}") from None
                changed.append(path)
        return changed
    finally:
        for fd in locks:
            os.close(fd)
