"""Reading the container's first files ahead, in a thread of the built-in SquashFS server.

A fresh FUSE mount has an empty page cache: the first exec of /bin/sh makes the kernel ask for
every page of the binary, and the single-threaded server decompresses them one request at a
time while the payload waits (~15 ms for a 2 MB static busybox here). This thread decompresses
those files from the server's start, long before the mount exists, with libsquashfuse's own
lookup and read functions (those its READ handler uses) on a second handle of the image (the
library's caches are not thread-safe), and stores the pages into the kernel's page cache with
FUSE_NOTIFY_STORE as soon as the kernel knows the files: the exec then finds them there.

The files: the paths the launcher asks for (/bin/sh, the command), the ELF interpreter and
libraries their first pages name (found through the image's ld.so.cache, elfdeps.py), and the
environment scripts the action script sources. The kernel accepts a store only for an inode it
has looked up, so the thread lists the files as soon as it knows them ("l" + NUL-separated
image paths without symbolic links); once the image is mounted, the launcher looks them up and
sends "s"; from then on every chunk read is stored. A store waits for pages that reads in
flight hold locked: those are the server main thread's to answer, so it never waits long, and
a READ of the same page returns the same bytes. Anything this code does not understand (a path,
an ELF header) is simply not read ahead.

The thread reads libsquashfuse's own structures: a sqfs_inode begins with SquashFS's base
inode (inode_type, mode, uid, guid: 16 bits each; mtime, inode_number: 32 bits), and the
handle sqfs_ll_open returns begins with its sqfs. start() checks that on the image's root
inode before anything else (check_layout) and refuses, loudly, a library that lays them out
otherwise: the server reports it and the launch fails with one line saying so, rather than
reading ahead from misread inodes. Errors of the thread itself are reported too: before the
listing as ERROR instead of LISTED (the launcher fails the launch); after it, the launcher
has gone on and the thread ends, leaving the server's main thread serving.
"""

from __future__ import annotations

import os
import struct

from satchel.pathwalk import MAX_SYMLINKS  # the kernel's limit, as every path walk's
from satchel.runtime import elfdeps
from satchel.runtime import fuse_protocol as proto
from satchel.runtime.cfunc import (Library, address_of, c_char, c_char_p, c_int, c_long,
                                   c_size_t, c_ulong, c_void_p, char_buffer)

CHUNK = 128 * 1024          # bytes per read (SquashFS's default block size)
LIMIT = 16 * 1024 * 1024    # read ahead at most this much in all
MAX_FILES = 24              # the first reads, their ELF interpreters and libraries...
LD_SO_CACHE = "/etc/ld.so.cache"
# ...and what the action script sources before anything else (environment.action_script)
ENVIRONMENT_SCRIPTS = "/.singularity.d/env/*.sh"
MAX_ENTRIES = 4096          # directory entries looked at for a pattern
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000
_FUSE_ROOT_ID = 1
# struct sqfs_inode { struct squashfs_base_inode base { u16 inode_type, mode, uid, guid;
# u32 mtime, inode_number; }; ... }: the fields this module reads, by offset
_INODE_TYPE_AT, _MODE_AT, _NUMBER_AT = 0, 2, 12
_DIR_TYPES = (1, 8)  # SQUASHFS_DIR_TYPE, SQUASHFS_LDIR_TYPE


class LayoutMismatch(OSError):
    """libsquashfuse lays its inodes out otherwise than this module reads them."""
# struct fuse_bufvec { size_t count, idx, off; struct fuse_buf { size_t size; int flags;
# void *mem; int fd; off_t pos; } buf[1]; } holding one memory buffer
_BUFVEC = struct.Struct("@QQQQiPiq")
_POLLFD = struct.Struct("@ihh")  # struct pollfd { int fd; short events, revents; }
_POLLIN = 0x1


def start(lib: Library, fuse: Library, image: str, offset: int, session: int, paths,
          go_fd: int, ack_fd: int):
    """Start reading `paths` ahead in a new thread; return the lock the server's main thread
    releases once go_fd is the thread's to read (after "x"), or None if it could not start."""
    import _thread

    open_image = lib.function("sqfs_ll_open", (c_char_p, c_size_t), c_void_p)
    handle = open_image(os.fsencode(image), offset)
    if not handle:
        return None
    check_layout(lib, handle)  # raises LayoutMismatch: the server reports it (ERROR)
    handover = _thread.allocate_lock()
    handover.acquire()
    ahead = ReadAhead(lib, fuse, handle, session, paths)
    _thread.start_new_thread(ahead.run, (go_fd, ack_fd, handover))
    return handover


def check_layout(lib: Library, handle: int) -> None:
    """Raise LayoutMismatch unless the image's root inode, read through libsquashfuse, reads
    as this module reads inodes: a directory type, a directory mode, an inode number."""
    root = lib.function("sqfs_inode_root", (c_void_p,), c_ulong)(handle)
    inode = char_buffer(512)
    if lib.function("sqfs_inode_get", (c_void_p, c_void_p, c_ulong))(handle, inode, root) != 0:
        raise LayoutMismatch("libsquashfuse_ll cannot read the image's root inode")
    kind, mode = struct.unpack_from("=HH", inode.raw, _INODE_TYPE_AT)[0], \
        struct.unpack_from("=H", inode.raw, _MODE_AT)[0]
    number = struct.unpack_from("=I", inode.raw, _NUMBER_AT)[0]
    if kind not in _DIR_TYPES or mode & _S_IFMT != _S_IFDIR or number == 0:
        raise LayoutMismatch(
            f"libsquashfuse_ll's inode layout is not the one satchel reads ahead with (root "
            f"inode: type {kind}, mode {mode:o}, number {number}); set 'prefetch = no' in "
            "satchel.conf, or 'squashfuse mode = program'")


class ReadAhead:
    """The files to read ahead, the pages read and not yet stored, for one image handle."""

    def __init__(self, lib: Library, fuse: Library, ll: int, session: int, paths):
        self.ll = ll
        self.session = session
        self._root = lib.function("sqfs_inode_root", (c_void_p,), c_ulong)
        self._inode_get = lib.function("sqfs_inode_get", (c_void_p, c_void_p, c_ulong))
        self._dentry_init = lib.function("sqfs_dentry_init", (c_void_p, c_void_p), None)
        self._dentry_inode = lib.function("sqfs_dentry_inode", (c_void_p,), c_ulong)
        self._dir_lookup = lib.function("sqfs_dir_lookup", (c_void_p, c_void_p, c_char_p,
                                                            c_size_t, c_void_p, c_void_p))
        self._readlink = lib.function("sqfs_readlink", (c_void_p, c_void_p, c_void_p, c_void_p))
        self._read_range = lib.function("sqfs_read_range", (c_void_p, c_void_p, c_long,
                                                            c_void_p, c_void_p))
        self._dir_open = lib.function("sqfs_dir_open", (c_void_p, c_void_p, c_void_p, c_long))
        # bool sqfs_dir_next(...): only the low byte of the return register is defined
        self._dir_next = lib.function("sqfs_dir_next", (c_void_p, c_void_p, c_void_p, c_void_p),
                                      c_char)
        self._name_size = lib.function("sqfs_dentry_name_size", (c_void_p,), c_size_t)
        self._store = fuse.function("fuse_lowlevel_notify_store", (c_void_p, c_ulong, c_long,
                                                                   c_void_p, c_int))
        self._poll = Library(None).function("poll", (c_void_p, c_ulong, c_int))
        self.paths = list(paths) + [ENVIRONMENT_SCRIPTS]
        self.files: list[_File] = []
        self.held = 0          # bytes read in all
        self.storing = False   # the launcher has looked the files up
        self.libraries: dict[str, str] | None = None  # ld.so.cache, read when first needed
        self.resolved: dict[str, _File | None] = {}   # path -> file, to resolve each once

    def run(self, go_fd: int, ack_fd: int, handover) -> None:
        """Thread body: list the files, read them; after "s", store (see the module doc)."""
        ours = False  # the main thread reads "x" from go_fd first, then hands the pipes over
        try:
            os.write(ack_fd, self._listing())
            while self._step():
                ours = ours or handover.acquire(False)
                if ours and self._readable(go_fd):
                    break
            if not ours:
                ours = handover.acquire()
            try:
                command = os.read(go_fd, 64)
            except OSError:  # the launcher's end is gone with it: nothing to store for
                return
            if command != proto.STORE:
                return  # the launcher went on without the pages, or is gone
            self.storing = True
            self._store_ready()
            while self._step():
                pass
        finally:
            self.files = []
            if not ours:
                handover.acquire()  # closing them earlier would pull them from the main thread
            os.close(go_fd)
            os.close(ack_fd)

    def _listing(self) -> bytes:
        """LISTED: the files found, first chunks read (they name the interpreters and
        libraries); or ERROR if finding them failed, which the launcher reports."""
        try:
            for path in self.paths:
                self._add(path, 0)
            while any(f.size == 0 and not f.complete and f.depth == 0 for f in self.files):
                self._step()
        except Exception as err:  # noqa: BLE001 - reported, not swallowed: the launch fails
            self.files = []
            return proto.error_message(f"reading ahead: {type(err).__name__}: {err}")
        listing = b""
        for file in self.files:
            entry = os.fsencode(file.path) + b"\0"
            if b"\n" not in entry and len(listing) + len(entry) < 4000:  # one atomic write
                listing += entry
        return proto.LISTED + listing + proto.END

    # -- reading -------------------------------------------------------------------------------
    def _step(self) -> bool:
        """Read the next chunk (and store it once allowed); False when nothing is left."""
        file = next((f for f in self.files if not f.complete and f.size == f.depth == 0),
                    None) or next((f for f in self.files if not f.complete), None)
        if file is None:
            return False
        if self.held >= LIMIT:
            for f in self.files:
                f.complete = True
            return False
        buffer = _Chunk()
        size = char_buffer(8, struct.pack("q", CHUNK))
        if self._read_range(self.ll, file.inode, file.size, size, buffer) != 0:
            file.complete = True
            return True
        count = struct.unpack("q", size.raw)[0]
        if count > 0:
            if file.size == 0 and file.depth == 0:
                self._add_dependencies(file, buffer.raw[:count])
            file.chunks.append((file.size, count, buffer))
            file.size += count
            self.held += count
        if count < CHUNK:
            file.complete = True
        if self.storing:
            self._store_ready()
        return True

    def _store_ready(self) -> None:
        """Store every chunk read so far; a file the kernel does not know is given up."""
        for file in self.files:
            while file.chunks:
                offset, count, buffer = file.chunks.pop(0)
                vec = char_buffer(_BUFVEC.size, _BUFVEC.pack(1, 0, 0, count, 0,
                                                             address_of(buffer), 0, 0))
                if self._store(self.session, file.nodeid, offset, vec, 0) != 0:
                    file.chunks = []   # -ENOENT: never looked up; -ENODEV: unmounted
                    file.complete = True

    def _readable(self, fd: int) -> bool:
        table = char_buffer(_POLLFD.size, _POLLFD.pack(fd, _POLLIN, 0))
        return self._poll(table, 1, 0) > 0

    def _read_at(self, file: _File, offset: int, size: int) -> bytes:
        buffer = char_buffer(size)
        count = char_buffer(8, struct.pack("q", size))
        if self._read_range(self.ll, file.inode, offset, count, buffer) != 0:
            return b""
        return buffer.raw[:struct.unpack("q", count.raw)[0]]

    # -- finding files in the image ------------------------------------------------------------
    def _add(self, path: str, depth: int) -> _File | None:
        if "*" in path:
            for match in self._glob(path):
                self._add(match, depth)
            return None
        if len(self.files) >= MAX_FILES:
            return None
        if path not in self.resolved:
            self.resolved[path] = self._resolve(path)
        file = self.resolved[path]
        if file is None:
            return None
        if all(f.nodeid != file.nodeid for f in self.files):
            file.depth = depth
            self.files.append(file)
        return file

    def _add_dependencies(self, file: _File, head: bytes) -> None:
        """The interpreter and libraries the loader opens for this program (elfdeps.py)."""
        program = elfdeps.program(head, lambda offset, size: self._read_at(file, offset, size))
        if program is None:
            return
        loader = self._add(program.interpreter, 1) if program.interpreter else None
        if not program.needed:
            return
        origin = file.path.rsplit("/", 1)[0] or "/"
        search = [elfdeps.expand_origin(d, origin) for d in program.search]
        if self.libraries is None:
            cache = self._add(LD_SO_CACHE, 1)  # the loader reads it too
            data = b""
            while cache is not None and len(data) < 1 << 20:  # usually 5-50 KiB
                more = self._read_at(cache, len(data), CHUNK)
                data += more
                if len(more) < CHUNK:
                    break
            self.libraries = elfdeps.cache_entries(data, os.uname().machine)
        defaults = ([loader.path.rsplit("/", 1)[0]] if loader is not None else []) + \
            list(elfdeps.DEFAULT_DIRS)
        for name in program.needed:
            candidates = [d.rstrip("/") + "/" + name for d in search]
            if name in self.libraries:
                candidates.append(self.libraries[name])
            candidates += [d + "/" + name for d in defaults]
            for candidate in candidates:
                if candidate.startswith("/") and self._add(candidate, 1) is not None:
                    break

    def _glob(self, pattern: str) -> list[str]:
        """Paths matching DIRECTORY/*SUFFIX in the image, sorted (sh sorts its globs too)."""
        directory, _, name_pattern = pattern.rpartition("/")
        suffix = os.fsencode(name_pattern[1:])
        if not name_pattern.startswith("*") or b"*" in suffix:
            return []
        walked = self._walk(directory)
        if walked is None or walked[1] != _S_IFDIR:
            return []
        inode = walked[2]
        state = char_buffer(256)       # sqfs_dir
        entry = char_buffer(256)       # sqfs_dir_entry
        name_buffer = char_buffer(512)
        error = char_buffer(8)
        if self._dir_open(self.ll, inode, state, 0) != 0:
            return []
        names = []
        self._dentry_init(entry, name_buffer)
        for _ in range(MAX_ENTRIES):  # a huge directory must not hold the list up
            if len(names) >= MAX_FILES or self._dir_next(self.ll, state, entry, error) == b"\0":
                break
            name = name_buffer.raw[:self._name_size(entry)]
            if name.endswith(suffix) and not name.startswith(b"."):
                names.append(os.fsdecode(name))
        return [f"{directory}/{name}" for name in sorted(names)]

    def _resolve(self, path: str):
        """The regular file at container `path`, symbolic links followed inside the image."""
        walked = self._walk(path)
        if walked is None or walked[1] != _S_IFREG:
            return None
        stack, _, inode = walked
        root, ident = stack[0][0], stack[-1][0]
        # libsquashfuse_ll's node ids under libfuse 3 (64-bit fuse_ino_t, ll_inode.c): the
        # inode id itself, except FUSE_ROOT_ID for the root and 2 for inode id 0
        nodeid = _FUSE_ROOT_ID if ident == root else (2 if ident == 0 else ident)
        return _File("/" + "/".join(name for _, name in stack[1:]), nodeid, inode)

    def _walk(self, path: str):
        """(stack of (inode id, name) from the root, file type, sqfs_inode) of container
        `path`, symbolic links followed inside the image; None if it is not there."""
        root = self._root(self.ll)
        pending = [c for c in path.split("/") if c and c != "."]
        stack = [(root, "")]  # (inode id, name) from the root down
        inode = char_buffer(512)        # sqfs_inode (~70 bytes in squashfuse 0.1-0.5)
        entry = char_buffer(256)        # sqfs_dir_entry
        name_buffer = char_buffer(512)  # sqfs_name: SQUASHFS_NAME_LEN + 1
        found = char_buffer(8)
        links = 0
        mode = _S_IFDIR
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            if self._inode_get(self.ll, inode, stack[-1][0]) != 0:
                return None
            raw = os.fsencode(name)
            self._dentry_init(entry, name_buffer)
            if self._dir_lookup(self.ll, inode, raw, len(raw), entry, found) != 0 \
                    or not found.raw[0]:
                return None
            ident = self._dentry_inode(entry)
            if self._inode_get(self.ll, inode, ident) != 0:
                return None
            mode = struct.unpack_from("=H", inode.raw, _MODE_AT)[0] & _S_IFMT
            if mode == _S_IFLNK:
                links += 1
                size = char_buffer(8, struct.pack("Q", 4096))
                target = char_buffer(4096)
                if links > MAX_SYMLINKS or self._readlink(self.ll, inode, target, size) != 0:
                    return None
                text = os.fsdecode(target.value)
                if text.startswith("/"):
                    stack = stack[:1]
                pending[:0] = [c for c in text.split("/") if c and c != "."]
                continue
            if pending and mode != _S_IFDIR:
                return None
            stack.append((ident, name))
        if len(stack) < 2:
            return None  # the root itself: never needed here
        if self._inode_get(self.ll, inode, stack[-1][0]) != 0:  # after a final ".."
            return None
        mode = struct.unpack_from("=H", inode.raw, _MODE_AT)[0] & _S_IFMT
        return stack, mode, inode


class _File:
    __slots__ = ("path", "nodeid", "inode", "size", "chunks", "complete", "depth")

    def __init__(self, path: str, nodeid: int, inode):
        self.path = path          # in the image, without symbolic links
        self.nodeid = nodeid
        self.inode = inode        # libsquashfuse's sqfs_inode, for sqfs_read_range
        self.size = 0             # bytes read so far
        self.chunks: list = []    # (offset, count, buffer) read and not stored yet
        self.complete = False
        self.depth = 0            # 0: asked for; 1: its interpreter or a library


_Chunk = type(char_buffer(CHUNK))  # noqa: E305

