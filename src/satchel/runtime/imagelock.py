"""One writer at a time: byte-range locks on an overlay image or a SIF's overlay partition.

Apptainer locks the section of the image a container uses (pkg/image/image.go lockSection):
an open-file-description byte-range lock (fcntl F_OFD_SETLK), a write lock for a writable
use, a read lock for a read-only one. The same lock here, so the two tools also keep out of
each other's way: a second writer is refused, readers share the image, a reader waits for no
one but a writer. An OFD lock belongs to the open file, not to a process: every process that
inherits the descriptor holds it, so the FUSE server (fuse2fs) that got the descriptor keeps
the image locked until it has written its last block, after the container is gone.

A writer that just exited may still be flushing (fuse2fs unmounts after its container's
mount namespace died): a busy lock is retried for LOCK_WAIT_MS before it is an error.
"""

from __future__ import annotations

import errno
import os
import struct

from satchel.errors import ContainerError

LOCK_WAIT_MS = 1000
_POLL_MS = 10
_F_RDLCK, _F_WRLCK = 0, 1
_F_OFD_SETLK = 37
# struct flock { short l_type, l_whence; off_t l_start, l_len; pid_t l_pid; } (native layout)
_FLOCK = struct.Struct("@hhqqi4x")


def try_lock(fd: int, offset: int, size: int, writable: bool) -> bool:
    """Take the lock on [offset, offset+size) of fd now; False when another holds it."""
    import fcntl
    request = _FLOCK.pack(_F_WRLCK if writable else _F_RDLCK, os.SEEK_SET, offset, size, 0)
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, request)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def lock(fd: int, offset: int, size: int, writable: bool, shown: str,
         wait_ms: int = LOCK_WAIT_MS) -> None:
    """Lock the section or raise ContainerError naming who is in the way."""
    from satchel.runtime import linux
    waited = 0
    while True:
        try:
            if try_lock(fd, offset, size, writable):
                return
        except OSError as err:
            raise ContainerError(f"while locking {shown}: {err.strerror}") from None
        if waited >= wait_ms:
            break
        linux.wait_readable(-1, _POLL_MS)  # poll(2) on nothing: a bounded pause
        waited += _POLL_MS
    if writable:
        raise ContainerError(f"{shown} is in use by another container: an overlay has one "
                             "writer at a time",
                             hint="add :ro to share it read-only, or wait for the other to exit")
    raise ContainerError(f"{shown} is being written by another container")
