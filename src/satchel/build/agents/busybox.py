"""`Bootstrap: busybox`: a BusyBox root filesystem from the host's static busybox, no network.

Apptainer downloads a busybox binary from MirrorURL; satchel copies Debian's busybox-static
(/bin/busybox) instead, so the build works offline and is reproducible on the machine. The
binary must be statically linked: it is the only program in the image.
"""

from __future__ import annotations

import os
import shutil
import struct

from satchel import log
from satchel.build.agents import BARE_RUNSCRIPT, AgentContext, FetchResult, warn_unused_headers
from satchel.build import process
from satchel.errors import BuildError, os_error

HOST_BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")
PT_INTERP = 3

BASE_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}


def find_busybox() -> str:
    override = os.environ.get("SATCHEL_BUSYBOX")
    for path in ((override,) if override else HOST_BUSYBOX):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise BuildError("the busybox bootstrap agent needs a static busybox on the host",
                     hint="install Debian's busybox-static package")


def is_static_elf(path: str) -> bool:
    """True if the ELF file at `path` has no program interpreter (64- or 32-bit, either endian)."""
    with open(path, "rb") as fh:
        ident = fh.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        end = "<" if ident[5] == 1 else ">"
        if is64:
            phoff, = struct.unpack_from(end + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
        else:
            phoff, = struct.unpack_from(end + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", ident, 42)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    for i in range(phnum):
        p_type, = struct.unpack_from(end + "I", table, i * phentsize)
        if p_type == PT_INTERP:
            return False
    return True


def fetch(ctx: AgentContext) -> FetchResult:
    if "mirrorurl" in ctx.header:
        log.warning("header key 'mirrorurl' is ignored: the busybox agent copies the host's "
                    "static busybox instead of downloading one")
    warn_unused_headers(ctx, used=("mirrorurl",))
    source = find_busybox()
    if not is_static_elf(source):
        raise BuildError(f"{source} is dynamically linked; the busybox agent needs a static one",
                         hint="install Debian's busybox-static package")
    root = ctx.rootfs
    try:
        for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc"):
            os.makedirs(os.path.join(root, sub), 0o755, exist_ok=True)
        target = os.path.join(root, "bin/busybox")
        shutil.copyfile(source, target)
        os.chmod(target, 0o755)
        applets = process.run([source, "--list-full"], "listing busybox applets", capture=True)
        for applet in applets.split():
            applet = applet.strip("/")
            if "/" not in applet or ".." in applet.split("/") or applet == "bin/busybox":
                continue  # 'linuxrc' and anything odd
            link = os.path.join(root, applet)
            depth = applet.count("/")
            rel = "../" * depth + "bin/busybox" if depth > 1 or not applet.startswith("bin/") else "busybox"
            if not os.path.lexists(link):
                os.symlink(rel, link)
        for rel_path, content in BASE_FILES.items():
            with open(os.path.join(root, rel_path), "w") as fh:
                fh.write(content)
    except OSError as err:
        raise os_error(f"while installing busybox into {root}", err, BuildError) from None
    return FetchResult(runscript=BARE_RUNSCRIPT)
