"""`Bootstrap: debootstrap`: a Debian (or Ubuntu) root filesystem from a mirror.

Header keys: OSVersion (suite, default bookworm), MirrorURL (default deb.debian.org), Include
(extra packages, comma or space separated). Runs the real debootstrap with --variant=minbase.

Under --fakeroot (uid 0 of a user namespace) debootstrap cannot create device nodes or mount
/proc; as Apptainer does, it then runs in a private mount namespace where `mknod` and `mount`
are bind-mounted over by `true` and /proc/filesystems looks empty, with the few device nodes it
needs bound from the host.
"""

from __future__ import annotations

import os
import shutil

from satchel import log
from satchel.build import process
from satchel.build.agents import BARE_RUNSCRIPT, AgentContext, FetchResult, warn_unused_headers
from satchel.errors import BuildError

DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEB_ARCH = {"amd64": "amd64", "arm64": "arm64", "386": "i386", "ppc64le": "ppc64el",
            "s390x": "s390x", "riscv64": "riscv64", "arm": "armhf"}


def debootstrap_argv(ctx: AgentContext) -> list[str]:
    from satchel.image.sif import host_arch
    binary = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(binary, os.X_OK):
        raise BuildError("debootstrap not found", hint="install Debian's debootstrap package")
    suite = ctx.header.get("osversion", "").strip() or DEFAULT_SUITE
    mirror = ctx.header.get("mirrorurl", "").strip() or DEFAULT_MIRROR
    # Apptainer's MirrorURL may contain %{OSVERSION}
    mirror = mirror.replace("%{OSVERSION}", suite)
    include = ",".join(p for p in ctx.header.get("include", "").replace(",", " ").split() if p)
    arch = DEB_ARCH.get(host_arch())
    argv = [binary, "--variant=minbase"]
    if arch:
        argv.append(f"--arch={arch}")
    if include:
        argv.append(f"--include={include}")
    return argv + [suite, ctx.rootfs, mirror]


def fetch(ctx: AgentContext) -> FetchResult:
    warn_unused_headers(ctx, used=("osversion", "mirrorurl", "include"))
    argv = debootstrap_argv(ctx)
    env = dict(os.environ)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["PATH"] = "/usr/sbin:/sbin:" + env["PATH"]
    env["DEBIAN_FRONTEND"] = "noninteractive"
    log.info(f"debootstrap {argv[-3]} from {argv[-1]}")
    if ctx.fakeroot:
        argv = [os.path.realpath(__import__("sys").executable), "-I", "-S", "-c",
                _FAKEROOT_WRAPPER, _src_dir(), ctx.rootfs] + argv
    process.run(argv, "while running debootstrap", env=env, quiet=not log.verbose_enabled())
    return FetchResult(runscript=BARE_RUNSCRIPT)


def _src_dir() -> str:
    import satchel
    return os.path.dirname(os.path.dirname(os.path.abspath(satchel.__file__)))


# Runs as its own process (so the mount namespace dies with it): private mounts that let
# debootstrap work as uid 0 of a user namespace, then exec debootstrap.
_FAKEROOT_WRAPPER = r"""
import os, shutil, sys
sys.path.insert(0, sys.argv[1])
from satchel.runtime import linux
from satchel.runtime.plan import DEV_NODES
rootfs, argv = sys.argv[2], sys.argv[3:]
linux.unshare(("mount",))
linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None, "making mounts private")
true = shutil.which("true")
for tool in ("mknod", "mount"):
    path = shutil.which(tool)
    if path:
        linux.mount(os.path.realpath(true), os.path.realpath(path), None, linux.MS_BIND, None,
                    "replacing " + tool)
linux.mount("/dev/null", "/proc/filesystems", None, linux.MS_BIND, None, "hiding filesystems")
os.makedirs(os.path.join(rootfs, "dev"), exist_ok=True)
for node in DEV_NODES:
    target = os.path.join(rootfs, "dev", node)
    open(target, "a").close()
    linux.mount("/dev/" + node, target, None, linux.MS_BIND, None, "binding /dev/" + node)
os.execv(argv[0], argv)
"""
