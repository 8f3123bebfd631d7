"""build_sandbox_plan(): the %post/%test sandbox of `satchel build`, as a ContainerPlan.

The build's scriptlets run in the same engine as `exec`: this module decides, executor.apply()
acts, with plan.py's operation kinds and helpers (the minimal /dev, the read-only and masked
kernel paths). PURE, like build_plan(): the host's kernel paths come through `host.path_kind`,
so unit tests (tests/unit/test_plan_build.py) pass a fake.

What the sandbox gets, in order:
  namespaces      mount + PID (build/scriptlet.py forks the helper that applies the plan; a
                  --fakeroot build is already uid 0 of a user namespace, build/fakeroot.py);
                  FORK_INIT first, so pid 1 of the new namespace makes every mount
  the root        the rootfs bound on itself, writable (no image mount: %post installs into it;
                  mount points missing in it are created there, never in an underlay copy)
  /proc           a fresh procfs; inside a user namespace only, the host's /proc bound instead
                  when the kernel refuses a fresh one (host /proc paths masked by a container
                  runtime): real root never gets the host's /proc, whose /proc/1/root is the
                  host's root
  /sys            the host's, read-only
  /dev            plan._minimal_dev (DEV_NODES, a new devpts, a private /dev/shm)
  /tmp            a private tmpfs
  /etc files      staged copies of the host's resolv.conf and hosts (name resolution for
                  package managers; a copy, so %post cannot change the host's)
  kernel paths    runc's read-only and masked paths (plan._protect_kernel), as `exec` and as
                  `docker build` (runc's defaults) have them: package scripts run sysctl, and a
                  root %post would otherwise set the host's kernel parameters. apt, dpkg and
                  debootstrap only read /proc/sys. Not a wall against a root %post, which keeps
                  every capability (package managers need them) and could remount them: a
                  guard against accidents, fatal if it fails as real root, tolerated (EPERM)
                  in a user namespace as for rootless `exec`
  switch          pivot_root (never a chroot: root walks out of one), chdir /
  process         execve(argv, environ) as pid 1: no capability dropped (root builds install
                  setuid programs, chown, mknod)

Every mount failure ends the scriptlet with the executor's error naming the operation.
"""

from __future__ import annotations

from satchel.runtime import plan as planmod
from satchel.runtime.plan import (BIND, CHDIR, EXEC, FORK_INIT, MAKE_PRIVATE, MOUNT_PROC,
                                  PIVOT_ROOT, REMOUNT_RO, UNSHARE, ContainerPlan)

STAGED_FILES = ("/etc/resolv.conf", "/etc/hosts")


class _SandboxPlan(planmod._Plan):
    """plan._Plan's accumulator (add, ensure, bind, tmpfs) with what its shared helpers read
    (host, rootless, mounts), without build_plan()'s options: the build sandbox has no
    command line of its own."""

    def __init__(self, root: str, host, user_namespace: bool):
        self.root = root
        self.host = host
        self.rootless = user_namespace  # mount refusals tolerated as for rootless exec
        self.ops = []
        self.warnings = []
        self.binds_done = []

    def mounts(self, key: str) -> bool:
        return True  # /proc and /sys are always mounted in the build sandbox


class BuildImage:
    """What ContainerPlan.image says of a build sandbox: the rootfs directory (no image file)."""

    __slots__ = ("path", "kind", "fs_offset", "fs_size")

    def __init__(self, path: str):
        self.path = path
        self.kind = "rootfs"
        self.fs_offset = self.fs_size = 0


def build_sandbox_plan(rootfs: str, argv, environ: dict, staged: dict, host,
                       user_namespace: bool, workdir: str | None = None) -> ContainerPlan:
    """The plan of one %post or %test run (see the module docstring).

    rootfs: absolute host path of the root filesystem; argv, environ: the process; staged:
    {container path: host file} of STAGED_FILES copies; host: anything with path_kind(path);
    user_namespace: the build runs as uid 0 of a user namespace (--fakeroot, non-root);
    workdir: a host directory of the build's for the executor's scratch files.
    """
    p = _SandboxPlan(rootfs, host, user_namespace)
    p.add(UNSHARE, data=("mount", "pid"))
    p.add(FORK_INIT)
    p.add(MAKE_PRIVATE, destination="/", flags=("rec",))
    # "writable": the executor creates missing mount points in this tree directly
    p.add(BIND, rootfs, rootfs, ("rec", "writable"))
    p.ensure("/proc", "dir")
    proc_flags = ("root", "nosuid", "nodev", "noexec")
    p.add(MOUNT_PROC, "proc", "/proc", proc_flags + (("host_fallback",) if user_namespace
                                                     else ()))
    p.bind("/sys", "/sys", "dir")
    p.add(REMOUNT_RO, None, "/sys", ("root", "rec"))
    planmod._minimal_dev(p, devpts=True, terminal=False, contain=True)
    p.tmpfs("/tmp", "mode=1777")
    for path in STAGED_FILES:
        if path in staged:
            p.bind(staged[path], path, "file", rec=False)
    planmod._protect_kernel(p)
    p.add(PIVOT_ROOT, None, rootfs)
    p.add(CHDIR, data=("/",), flags=("strict",))
    p.add(EXEC, argv[0])
    return ContainerPlan(
        rootless=user_namespace, namespaces=("mount", "pid"), uid=0, gid=0, session=workdir,
        root=rootfs, ops=tuple(p.ops), environ=dict(environ), argv=list(argv), cwd=("/",),
        hostname=None, image=BuildImage(rootfs), warnings=[], server=None)
