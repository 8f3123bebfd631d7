"""The pipe protocol between the launcher and its FUSE server processes, in one place.

Two kinds of server process talk to the launcher (fuse.py) over a pair of pipes, "go"
(launcher -> server) and "ack" (server -> launcher):

The built-in SquashFS server (sqfs_server.py, fuse.BuiltinServer), forked at the launcher's
start. Messages from the server end with a newline; a message of another kind than the one
awaited is kept for later (fuse.BuiltinServer._message).

    launcher -> server                       server -> launcher
    IMAGE   "i" LEN payload  (encode_image)
                                             OPENED  "k" PID     the image is open (or
                                             ERROR   "e" REASON  why not; any time)
    (the launcher mounts /dev/fuse)
    MOUNTED "x PID FD\\n"    (mounted_message)
                                             SERVING "g"         took the fd (pidfd_getfd), serves
                                             SERVING + READING_AHEAD "gr": serves, and the pipes
                                                                 are the read-ahead thread's now
                                             LISTED  "l" PATHS   the files read ahead (NUL-
                                                                 separated; any time after "k")
    (the launcher looks each listed file up)
    STORE   "s"                              (nothing: the thread stores the pages, ends)

  End of file on "go" instead of IMAGE or MOUNTED: no server is needed (or the launcher died);
  the server exits. End of file on "ack": the server died (fuse.py then reads its life pipe).

The helper of a server program (fuse.prepare, fuse.FuseServer), which waits until the mount
exists and then execs squashfuse_ll or fuse-overlayfs; it answers nothing but SNAPSHOT.

    launcher -> helper                       helper -> launcher
    SNAPSHOT "n"  (enter a private copy of the launcher's mount namespace first)
                                             SNAPSHOT_DONE "k"   done, or the error's text
    EXEC     "x"  (exec the server now)
"""

from __future__ import annotations

import os
import sys

# built-in server: launcher -> server
IMAGE = b"i"
MOUNTED = b"x"
STORE = b"s"
# built-in server: server -> launcher (each message ends with END)
OPENED = b"k"
SERVING = b"g"
READING_AHEAD = b"r"   # after SERVING: "gr"
LISTED = b"l"
ERROR = b"e"
END = b"\n"
# program helper
SNAPSHOT = b"n"
SNAPSHOT_DONE = b"k"
EXEC = b"x"

_LENGTH = 4  # bytes of IMAGE's payload length, native byte order


def encode_image(image: str, offset: int, fallback_argv, read_ahead=()) -> bytes:
    """IMAGE: "i", the payload's length, then NUL-separated: offset, image, the fallback
    argv's length, the fallback argv ('{fd}' for the fd), the container paths to read ahead."""
    fields = [str(offset), image, str(len(fallback_argv))] + list(fallback_argv) + \
        list(read_ahead)
    payload = b"\0".join(os.fsencode(f) for f in fields)
    return IMAGE + len(payload).to_bytes(_LENGTH, sys.byteorder) + payload


def image_size(data: bytes) -> int | None:
    """The length of the IMAGE message at the start of `data`, None until that is known."""
    if len(data) < 1 + _LENGTH:
        return None
    return 1 + _LENGTH + int.from_bytes(data[1:1 + _LENGTH], sys.byteorder)


def decode_image(data: bytes):
    """(image, offset, fallback argv, read-ahead paths) from a whole IMAGE message, or None
    if it is not one."""
    if data[:1] != IMAGE:
        return None
    fields = [os.fsdecode(f) for f in data[1 + _LENGTH:].split(b"\0")]
    count = int(fields[2])
    return fields[1], int(fields[0]), fields[3:3 + count], fields[3 + count:]


def mounted_message(pid: int, fd: int) -> bytes:
    """MOUNTED: the launcher's pid and its /dev/fuse descriptor, for pidfd_getfd(2)."""
    return MOUNTED + f" {pid} {fd}".encode() + END


def parse_mounted(message: bytes) -> tuple[int, int]:
    """(pid, fd) of a MOUNTED message; ValueError if it is not one."""
    parts = message.split()
    if len(parts) != 3 or parts[0] != MOUNTED:
        raise ValueError("no mount")
    return int(parts[1]), int(parts[2])


def error_message(reason: str) -> bytes:
    """ERROR: one line, at most 400 bytes of reason."""
    return ERROR + reason.replace("\n", " ").encode(errors="replace")[:400] + END
