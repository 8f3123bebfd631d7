"""HostInfo: every fact about the caller and the host that the plan depends on.

build_plan() is pure because it reads the world only through this object; unit tests pass a
FakeHost (tests/unit) with invented users and paths. `HostInfo.gather()` collects the real facts:
ids from the kernel, the passwd/group entries through NSS (so LDAP/SSSD users work), the
environment as given (it may be empty: `env - PATH=$PATH satchel exec ...`), the working
directory (which may have been deleted under us).
"""

from __future__ import annotations

import os


class HostInfo:
    """Facts about the caller. Path questions (path_kind, realpath) go to the real file system."""

    __slots__ = ("uid", "gid", "groups", "user", "home", "shell", "gecos", "cwd", "environ",
                 "hostname", "group_names", "terminal")

    def __init__(self, uid: int, gid: int, groups, user: str, home: str, shell: str,
                 gecos: str, cwd: str | None, environ: dict, hostname: str,
                 group_names: dict | None = None, terminal: bool = False):
        self.uid = uid
        self.gid = gid
        self.groups = tuple(groups)
        self.user = user
        self.home = home
        self.shell = shell
        self.gecos = gecos
        self.cwd = cwd
        self.environ = dict(environ)
        self.hostname = hostname
        self.group_names = dict(group_names or {})  # gid -> name, for the caller's groups
        self.terminal = terminal  # stdin, stdout or stderr is a terminal

    @classmethod
    def gather(cls) -> "HostInfo":
        import pwd

        uid, gid = os.getuid(), os.getgid()
        groups = [gid] + [g for g in os.getgroups() if g != gid]
        try:
            entry = pwd.getpwuid(uid)
            user, home, shell, gecos = entry.pw_name, entry.pw_dir, entry.pw_shell, entry.pw_gecos
        except KeyError:  # an id without a passwd entry (some batch systems, containers)
            user = os.environ.get("USER") or str(uid)
            home = os.environ.get("HOME") or "/"
            shell, gecos = "/bin/sh", ""
        try:
            cwd = os.getcwd()
        except OSError:  # the directory was removed under us
            cwd = None
        return cls(uid, gid, groups, user, home or "/", shell or "/bin/sh", gecos, cwd,
                   os.environ, os.uname().nodename, _group_names(groups),
                   any(os.isatty(fd) for fd in (0, 1, 2)))

    # -- questions about host paths; FakeHost answers them from a table --------------------
    def path_kind(self, path: str) -> str | None:
        """'dir', 'file' (anything else that can be bound onto a file) or None if missing.

        A path the caller may not search counts as existing: the mount then fails with the
        kernel's own answer (EACCES), which is the truth about the caller's rights.
        """
        import stat

        try:
            st = os.stat(path)
        except PermissionError:
            return "file"
        except OSError:
            return None
        return "dir" if stat.S_ISDIR(st.st_mode) else "file"

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def is_writable_dir(self, path: str) -> bool:
        return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _group_names(gids) -> dict:
    import grp

    names = {}
    for gid in gids:
        try:
            names[gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            pass
    return names
