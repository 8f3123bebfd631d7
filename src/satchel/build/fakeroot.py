"""--fakeroot: run a whole build as uid 0 of a user namespace, for a user without privilege.

The build process forks; the child unshares a user namespace and waits; the parent maps it:

- with a range in /etc/subuid and /etc/subgid (the normal case), through the setuid helpers
  newuidmap/newgidmap (Debian's uidmap): 0 -> the user, 1..N -> the subordinate range, so
  %post may chown files to other ids (apt creates _apt, dpkg sets owners);
- without one, a "root-mapped" namespace with the user alone mapped to 0 (what Apptainer >= 1.1
  falls back to): enough for busybox-style builds, but chown to other ids fails.

The child then becomes uid/gid 0 there and runs the build function itself. Everything it
creates belongs to the user on the host and to 0 inside, so mksquashfs run in that namespace
records root ownership, and files %post gave to uid N are N in the image.

Signals: SIGINT/SIGTERM reaching the parent are forwarded to the child, which cleans up its
temporary files itself (only it may remove files owned by subordinate ids) and exits; an error
in the child comes back to the parent as a message and is raised there as a BuildError.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import sys

from satchel import log
from satchel.build import ns
from satchel.errors import BuildError, ContainerError, SatchelError
from satchel.runtime import linux

SUBID_FILES = ("/etc/subuid", "/etc/subgid")


def subid_range(path: str, name: str, ident: int) -> tuple[int, int] | None:
    """(start, count) of the first range for user `name` (or numeric `ident`) in `path`."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (name, str(ident)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count > 0:
            return start, count
    return None


class Mapping:
    """How the namespace will be mapped: via subordinate ranges, or root-mapped (one id)."""

    def __init__(self, use_subids: bool = True):
        self.uid = os.getuid()
        self.gid = os.getgid()
        try:
            self.name = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            self.name = str(self.uid)
        self.subuid = subid_range(SUBID_FILES[0], self.name, self.uid) if use_subids else None
        self.subgid = subid_range(SUBID_FILES[1], self.name, self.uid) if use_subids else None

    @property
    def full(self) -> bool:
        return self.subuid is not None and self.subgid is not None

    def describe(self) -> str:
        if self.full:
            return (f"uid 0 -> {self.uid}, 1-{self.subuid[1]} -> {self.subuid[0]}-"
                    f"{self.subuid[0] + self.subuid[1] - 1}")
        return f"uid 0 -> {self.uid} only (root-mapped namespace)"

    def apply(self, pid: int) -> None:
        from satchel.build import process
        if self.full:
            process.run(["newuidmap", str(pid), "0", str(self.uid), "1",
                         "1", str(self.subuid[0]), str(self.subuid[1])],
                        "while mapping user ids for --fakeroot", quiet=True)
            process.run(["newgidmap", str(pid), "0", str(self.gid), "1",
                         "1", str(self.subgid[0]), str(self.subgid[1])],
                        "while mapping group ids for --fakeroot", quiet=True)
            return
        try:
            ns.write_proc(f"/proc/{pid}/setgroups", "deny")
            ns.write_proc(f"/proc/{pid}/uid_map", f"0 {self.uid} 1\n")
            ns.write_proc(f"/proc/{pid}/gid_map", f"0 {self.gid} 1\n")
        except OSError as err:
            raise BuildError(f"while mapping ids for --fakeroot: {err.strerror}") from None


def run_as_fakeroot(function, announce: str | None = None, use_subids: bool = True) -> None:
    """Run `function()` as uid 0 of a new user namespace; re-raise its errors here.

    use_subids=False (--ignore-subuid) maps the user alone, even where a range exists.
    """
    mapping = Mapping(use_subids)
    if announce:
        log.info(announce)
    if not mapping.full:
        reason = (f"no /etc/subuid and /etc/subgid range for {mapping.name}" if use_subids
                  else "--ignore-subuid")
        log.info(f"{reason}: using a root-mapped user namespace (files can only be owned by "
                 "root in the image)")
    log.verbose(f"fakeroot mapping: {mapping.describe()}")
    log.flush_outputs()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        os.close(err_r)
        _child(function, ready_w, go_r, err_w)  # never returns
    os.close(ready_w)
    os.close(go_r)
    os.close(err_w)
    forwarded = []

    def forward(signum, _frame):
        forwarded.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        state = os.read(ready_r, 1)
        if state == b"r":
            try:
                mapping.apply(pid)
            except BaseException:
                os.write(go_w, b"x")
                raise
            os.write(go_w, b"g")
        message = ns.read_to_eof(err_r)
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pid:
            ns.kill_and_reap(pid)
        for fd in (ready_r, go_w, err_r):
            try:
                os.close(fd)
            except OSError:
                pass
    code = os.waitstatus_to_exitcode(status)
    if message:
        report = json.loads(message)
        if report.get("interrupted"):
            raise KeyboardInterrupt
        raise BuildError(report["message"], report.get("hint"))
    if code != 0:
        if forwarded or code in (130, -signal.SIGINT):
            raise KeyboardInterrupt
        raise BuildError(f"the --fakeroot build process failed (status {code})")


def _child(function, ready_w: int, go_r: int, err_w: int) -> None:
    code = 0
    report = None
    try:
        try:
            linux.unshare(("user",))
        except ContainerError as err:
            os.write(ready_w, b"f")
            raise BuildError(
                f"cannot create a user namespace for --fakeroot ({err})",
                hint="unprivileged user namespaces must be enabled "
                     "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces>0)") from None
        os.write(ready_w, b"r")
        if os.read(go_r, 1) != b"g":
            os._exit(1)
        os.setresgid(0, 0, 0)
        try:
            os.setgroups([0])
        except OSError:
            pass  # root-mapped namespace: setgroups is denied
        os.setresuid(0, 0, 0)
        # if the parent dies, clean up like for Ctrl-C (set after the id changes, which reset it)
        linux.set_parent_death_signal(signal.SIGINT)
        os.environ["HOME"] = os.environ.get("HOME", "/root")
        function()
    except KeyboardInterrupt:
        code = 130
        report = {"interrupted": True}
    except SatchelError as err:
        code = 255
        report = {"message": err.message, "hint": err.hint}
    except BaseException as err:  # a bug: keep the traceback under --debug
        if log.debug_enabled():
            import traceback
            traceback.print_exc()
        code = 255
        report = {"message": f"unexpected error (this is a bug in satchel): "
                             f"{type(err).__name__}: {err}"}
    finally:
        try:
            if report is not None:
                os.write(err_w, json.dumps(report).encode())
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)
