"""--fusemount TYPE:PROGRAM [ARGS...] MOUNTPOINT: a FUSE file system of the user's choice,
mounted in the container (Apptainer's flag).

As Apptainer does, satchel opens /dev/fuse, mounts it at MOUNTPOINT in the container and runs
`PROGRAM ARGS... /dev/fd/N` (libfuse takes an open /dev/fuse as the mount point /dev/fd/N);
`host:` adds `-f` (the program stays in the foreground), `host-daemon:` lets it daemonize.
The program runs on the host, outside the container's mount namespace, exactly like the
image's own SquashFS server (runtime/fuse.py says why): it sees the host's files, and when the
container's last process exits the namespace dies, the kernel aborts the connection and the
program exits by itself. A foreground program is detached (new session) before the exec, so
the payload does not inherit it as a child.

`container:` and `container-daemon:` (the program taken from the image and run inside the
container) are refused: inside the container's mount namespace the program would keep that
namespace, and itself, alive after the container exits (shared/FACTS.md), and satchel keeps no
process behind the payload that could stop it.
"""

from __future__ import annotations

from satchel.errors import UsageError

HOST_KINDS = ("host", "host-daemon")
CONTAINER_KINDS = ("container", "container-daemon")


class FuseMount:
    """One parsed --fusemount: server name, program argv (ending in the /dev/fd/{fd}
    placeholder fuse.prepare fills in), container mount point, and whether it daemonizes."""

    __slots__ = ("name", "argv", "mountpoint", "daemon")

    def __init__(self, name: str, argv: tuple, mountpoint: str, daemon: bool):
        self.name = name
        self.argv = argv
        self.mountpoint = mountpoint
        self.daemon = daemon


def parse(values, environ) -> tuple:
    """The --fusemount values as FuseMounts; UsageError for anything satchel cannot do."""
    from satchel.runtime import fuse
    out = []
    seen = set()
    for spec in values or ():
        kind, sep, rest = spec.partition(":")
        words = rest.split()
        if not sep or kind not in HOST_KINDS + CONTAINER_KINDS or len(words) < 2:
            raise UsageError(f"--fusemount {spec!r}: expected host:PROGRAM [ARGS...] MOUNTPOINT "
                             "(or host-daemon:...)")
        if kind in CONTAINER_KINDS:
            raise UsageError(f"--fusemount {spec!r}: {kind}: is not supported: a FUSE program "
                             "inside the container would keep its mount namespace alive after "
                             "it exits; use host: (the program runs on the host)")
        mountpoint = words[-1]
        if not mountpoint.startswith("/") or mountpoint.rstrip("/") == "":
            raise UsageError(f"--fusemount {spec!r}: the mount point {mountpoint!r} must be an "
                             "absolute path below /")
        mountpoint = "/" + "/".join(p for p in mountpoint.split("/") if p)
        if mountpoint in seen:
            raise UsageError(f"--fusemount: {mountpoint} is given twice")
        seen.add(mountpoint)
        program = fuse.find_program(words[0], environ, required=False)
        if "/" not in program:
            raise UsageError(f"--fusemount {spec!r}: program {words[0]!r} not found on PATH")
        daemon = kind == "host-daemon"
        argv = (program, *words[1:-1], "/dev/fd/{fd}") + (() if daemon else ("-f",))
        out.append(FuseMount(f"fusemount {mountpoint}", argv, mountpoint, daemon))
    return tuple(out)
