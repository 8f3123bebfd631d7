"""One image mount for the concurrent containers of one user (rootless; issue 14).

An MPI job starts 64 ranks of one image on a node at once. Without sharing, each starts its own
FUSE server, which decompresses the same pages into its own empty cache. With it, the first
launch mounts the image as always; the launches that come while it runs attach a clone of that
very mount (same superblock, so the same kernel page cache, dentries and server), each in its
own user and mount namespaces, with its own binds, working directory and environment.

How a launch finds a live mount, and why nothing outlives the containers:
- The FUSE connection lives as long as some mount of its superblock does; the server exits when
  the kernel aborts the connection (fuse.py). So the kernel does the reference counting: no
  process holds the mount on behalf of the containers, and SIGKILL of any of them (or of the
  first) changes nothing for the others; the last container's namespace dies, the server exits.
- The containers of one image are recorded in a per-user directory ($XDG_RUNTIME_DIR/satchel, else
  /tmp/satchel-UID; created 0700, opened O_NOFOLLOW, used only if it is the caller's and
  private; every file in it opened by that directory's descriptor with O_NOFOLLOW): KEY.members
  lists "PID STARTTIME DEV OFFSET" per container whose root is the shared mount (DEV: its
  device number; OFFSET: the partition's), KEY.lock serializes the launches of one image. KEY
  names the image file's identity (device, inode, size, mtime: an image rewritten in place is
  another image) and the launch's scope (its cgroups and batch job step, scope_key: a step's
  end kills the server it started, so other steps must not depend on it).
- A launch tries the recorded containers (latest first; no lock needed): a helper process
  joins one's user and mount namespaces through a pidfd (opened, then checked against the
  start time: a reused PID is never joined) and clones the root mount of that namespace
  (open_tree(OPEN_TREE_CLONE), not recursive: the container's binds stay its own); the clone
  is used only if its device is the recorded one. The launcher takes the clone's descriptor
  from the helper (pidfd_getfd) and later attaches it on its own session directory
  (move_mount). A clone holds the superblock: the server cannot be exiting. A container that
  is gone, or going, simply fails these steps and the next one is tried.
- No live container: under the lock, checked again, this launch is the first; it keeps the
  lock through its setup, so the launches that come meanwhile wait for its mount instead of
  starting servers of their own (bounded: after WAIT_S they go on without sharing). The
  probable first takes the lock at its very start (likely_joined, before it plans): the
  ranks of a job start within milliseconds of each other, and the others, seeing it held,
  fork no early server that they would cancel (each a fork, the libraries' loading and ~7 MiB:
  at N=16 ~40 ms of CPU in all, and up to ~100 MiB at once).
- After pivot_root each container whose root is the shared FUSE mount records itself: the
  first rewrites the file without dead records and lets the waiting launches go; the others
  append their line (O_APPEND, one write) without taking the lock.
"""

from __future__ import annotations

import os

from satchel.errors import ContainerError
# runtime/linux is imported where used: likely_joined() runs before the early server's
# fork (cli/commands/action.py), which should not wait for linux.py and the C bindings

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_OPEN = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MEMBERS_MAX = 64 * 1024
MAX_TRIED = 8                # recorded containers tried before starting a new mount
SETTLE_S = 0.5  # prune_records: how long an exiting container may take to be gone
WAIT_S = 30.0                # the longest a launch waits for the first one's mount


def _runtime_paths(uid: int, environ) -> list[str]:
    paths = []
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/"):
        paths.append(xdg.rstrip("/") + "/satchel")
    paths.append(f"/tmp/satchel-{uid}")
    return paths


def runtime_dir(uid: int, environ, create: bool = True) -> int | None:
    """A descriptor of the caller's private sharing directory, or None (no sharing).
    create=False: only one that exists (prune_records has nothing to do without one)."""
    for path in _runtime_paths(uid, environ):
        try:
            if create:
                os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            continue
        try:
            fd = os.open(path, _DIR_OPEN)
        except OSError:
            continue
        st = os.fstat(fd)
        if st.st_uid == uid and not st.st_mode & 0o077:
            return fd
        os.close(fd)  # someone else's, or readable by others: do not share through it
    return None


# a batch system's job step: containers of different steps never share (see scope_key)
SCOPE_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURMD_NODENAME", "PBS_JOBID",
                   "LSB_JOBID", "FLUX_JOB_ID")


def image_key(path: str, environ) -> str:
    """The sharing key: the image file's identity and the launch's scope (scope_key)."""
    st = os.stat(path)
    return (f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}-"
            f"{scope_key(environ)}")


def scope_key(environ) -> str:
    """Who may share a mount: launches in the same cgroups and the same batch job step.

    The FUSE server belongs to the first launch's job step. A batch system ends a step by
    killing everything the step started (Slurm: the step's cgroup, proctrack/cgroup), the
    server included, so a container of another step sharing that mount would lose its image
    when the first step ends ("Transport endpoint is not connected": seen with srun over two
    slurmd on one machine, tests/integration/test_slurm.py). The ranks of one step on a node
    share. Outside a batch system the cgroup is the login session's, which logind may end the
    same way. A hash of /proc/self/cgroup and the job variables: the bytes as one number
    modulo the prime 2^61 - 1 (int.from_bytes, in C: a byte loop in Python, FNV-1a, took
    ~0.15 ms a call, twice a rootless launch; no hashlib on the launch path)."""
    try:
        fd = os.open("/proc/self/cgroup", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
    except OSError:
        data = b""
    for name in SCOPE_VARIABLES:
        data += f"{name}={environ.get(name, '')}\n".encode("utf-8", "surrogateescape")
    return f"{int.from_bytes(data, 'little') % ((1 << 61) - 1):016x}"


def start_time(pid: int, running: bool = False) -> str | None:
    """The start time of a process (field 22 of /proc/PID/stat), None if it is gone.
    running: None for a zombie too (it has exited, its parent has not reaped it yet: its
    mount namespace is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    if len(fields) <= 19 or (running and fields[0] in (b"Z", b"X")):
        return None
    return fields[19].decode()


class Claim:
    """This launch's part in the sharing of one image's mount.

    Joined: mount_fd is a detached clone of a live container's image mount (attach() puts it
    on the session directory). First: the lock is held until register(), so the launches that
    come meanwhile wait for this one's mount.
    """

    __slots__ = ("dir_fd", "key", "offset", "lock_fd", "mount_fd", "dev", "pid", "start",
                 "helpers")

    def __init__(self, dir_fd: int, key: str, offset: int, lock_fd: int):
        self.dir_fd = dir_fd
        self.key = key
        self.offset = offset
        self.lock_fd = lock_fd
        self.mount_fd = -1
        self.dev = None
        self.pid = os.getpid()  # the launcher: the payload itself, or the --pid supervisor
        self.start = start_time(self.pid)
        self.helpers: list[int] = []  # exited helpers, reaped by release() (no wait on the
        #                               critical path)

    @property
    def joined(self) -> bool:
        return self.mount_fd >= 0

    def attach(self, target_fd: int) -> None:
        """Attach the shared mount on target_fd (the container's root directory to be)."""
        from satchel.runtime import linux

        try:
            linux.move_mount(self.mount_fd, target_fd, "attaching the shared image mount")
        finally:
            os.close(self.mount_fd)
            self.mount_fd = -1

    def register(self, dev: int | None) -> None:
        """After pivot_root: record this container if its root is the shared mount (other
        launches then join through it), and let the waiting launches go.

        dev: the st_dev of the container's root if it is the image mount itself, None if an
        underlay copy covers it (the executor knows: executor.op_pivot_root)."""
        try:
            if dev is None or (self.dev is not None and dev != self.dev):
                return  # the root is not the image mount itself (an underlay copy of it)
            record = (str(self.pid), self.start, str(dev), str(self.offset))
            if self.lock_fd < 0:  # joined: one appended line (atomic), no lock to queue on
                _append_member(self.dir_fd, self.key, record)
                return
            members = [m for m in _read_members(self.dir_fd, self.key)  # the first: prune
                       if start_time(int(m[0])) == m[1] and m[0] != str(self.pid)]
            _write_members(self.dir_fd, self.key, members + [record])
        except (OSError, ValueError, ContainerError):
            pass  # sharing is an optimization: this container runs regardless
        finally:
            self.release()

    def record_namespaces(self, flags: int) -> None:
        """--sharens, the first container: after pivot_root, record its namespaces (CLONE_*
        flags) for the later launches of the same parent, and let them go."""
        try:
            members = [m for m in _read_members(self.dir_fd, self.key)
                       if start_time(int(m[0])) == m[1]]
            _write_members(self.dir_fd, self.key, members + [
                (str(self.pid), self.start, str(flags), str(self.offset))])
        except (OSError, ValueError):
            pass
        finally:
            self.release()

    def release(self) -> None:
        """Unlock and close everything (the payload inherits none of it)."""
        if self.lock_fd >= 0:
            _unlock(self.lock_fd)  # forked processes (a --pid supervisor) hold copies
            os.close(self.lock_fd)
            self.lock_fd = -1
        if self.mount_fd >= 0:
            os.close(self.mount_fd)
            self.mount_fd = -1
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
        for pid in self.helpers:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # under --pid this is the namespace's init: the helper is its parent's
        self.helpers = []


def claim(image: str, offset: int, uid: int, environ) -> Claim | None:
    """Join a live mount of image[offset:] or become its first container; None: no sharing
    (no private directory, or the first launch kept the lock longer than WAIT_S).

    The lock only decides who is first: a launch that finds live records clones without it,
    so that joining launches do not queue behind each other."""
    dir_fd = runtime_dir(uid, environ)
    if dir_fd is None:
        return None
    result = None
    early = -1
    try:
        key = image_key(image, environ)
        early = _adopt_early_lock(key)
        result = Claim(dir_fd, key, offset, -1)
        if _join(result):
            return result
        for _ in range(3):
            if early >= 0:  # taken at the launch's start (likely_joined): already the first
                result.lock_fd, early = early, -1
            else:
                result.lock_fd = _open_lock(dir_fd, key)
                _lock(result.lock_fd, WAIT_S)
            if not _live_members(result):
                return result  # the first: the lock stays held until register()
            _unlock(result.lock_fd)  # a first one has registered meanwhile: join it
            os.close(result.lock_fd)
            result.lock_fd = -1
            if _join(result):
                return result
        result.release()
        return None
    except (OSError, ValueError, ContainerError):
        if result is not None:
            result.release()  # and reaps its helpers: no zombie may pass to the payload
        else:
            os.close(dir_fd)
        return None
    finally:
        _drop_lock(early)  # joined after all: the launches waiting for the lock may go


def _live_members(claim: Claim) -> list:
    """The records of this image and partition whose process is still the one recorded,
    latest first."""
    return [m for m in reversed(_read_members(claim.dir_fd, claim.key))
            if m[3] == str(claim.offset) and start_time(int(m[0])) == m[1]]


def _join(claim: Claim) -> bool:
    """Clone the mount of a live recorded container into claim.mount_fd; False if none."""
    for pid, start, dev, _ in _live_members(claim)[:MAX_TRIED]:
        fd = _clone_root_of(int(pid), start, int(dev), claim.helpers)
        if fd is not None:
            claim.mount_fd, claim.dev = fd, int(dev)
            return True
    return False


# --sharens: the claim of this launch if it is the first of its parent (one launch per process;
# the executor's RECORD_NAMESPACES operation records it after pivot_root)
_first_sharens: list = []


def sharens(image: str, offset: int, parent: int, uid: int, environ):
    """--sharens (Apptainer: share the namespaces of the containers started by one parent):
    (pid, CLONE_* flags) of the live first container of this parent and image to join, or
    None: this launch is the first (then its namespaces are recorded after pivot_root, the
    launches of the same parent waiting meanwhile), or sharing is not possible here."""
    dir_fd = runtime_dir(uid, environ)
    if dir_fd is None:
        return None
    started = start_time(parent)
    result = Claim(dir_fd, f"ns-{parent}-{started}-{image_key(image, environ)}", offset, -1)
    try:
        live = _live_members(result)
        if not live:
            result.lock_fd = _open_lock(dir_fd, result.key)
            _lock(result.lock_fd, WAIT_S)
            live = _live_members(result)
        if live:
            result.release()
            return int(live[0][0]), int(live[0][2])
        _first_sharens.append(result)
        return None
    except (OSError, ValueError):
        result.release()
        return None


def record_sharens(names) -> None:
    """RECORD_NAMESPACES: this first --sharens container's namespaces, by name."""
    from satchel.runtime import linux

    flags = 0
    for name in names:
        flags |= linux.NAMESPACE_FLAGS[name]
    while _first_sharens:
        _first_sharens.pop().record_namespaces(flags)


def namespace_names(flags: int) -> tuple[str, ...]:
    """The namespace names of a recorded CLONE_* mask, the user namespace first."""
    from satchel.runtime import linux

    return tuple(name for name in ("user", "mount", "ipc", "uts", "net", "pid")
                 if flags & linux.NAMESPACE_FLAGS[name])


def likely_joined(image: str, uid: int, environ) -> bool:
    """Whether this launch will likely join a live mount of the image: then the launcher forks
    no early server (fuse.fork_builtin), which it would cancel.

    True if the last recorded container runs, or another launch holds the image's lock (a
    first one setting its mount up: it will be joined; if it fails, a server is forked
    then). Else this launch is the probable first: it takes the lock now, before it plans,
    so that the launches starting at the same moment find it held, and keeps it until its
    container runs (claim() adopts it; release_early() if the launch shares nothing)."""
    dir_fd = runtime_dir(uid, environ)
    if dir_fd is None:
        return False
    try:
        key = image_key(image, environ)
        members = _read_members(dir_fd, key)
        if members and start_time(int(members[-1][0])) == members[-1][1]:
            return True
        fd = _open_lock(dir_fd, key)
        if not _try_lock(fd):
            os.close(fd)
            return True
        _early_lock.append((key, fd))
        return False
    except (OSError, ValueError):
        return False
    finally:
        os.close(dir_fd)


# the image's lock taken by likely_joined(): (key, descriptor), adopted by claim()
_early_lock: list = []


def _adopt_early_lock(key: str) -> int:
    """The descriptor of the lock likely_joined() took for this key (-1: none); a lock of
    another key (the image changed meanwhile) is dropped."""
    fd = -1
    while _early_lock:
        held_key, held = _early_lock.pop()
        if held_key == key and fd < 0:
            fd = held
        else:
            _drop_lock(held)
    return fd


def release_early() -> None:
    """The launch shares no image mount after all (its plan needs none, or its own): let the
    launches waiting for the lock likely_joined() took go now, not at its exit."""
    while _early_lock:
        _drop_lock(_early_lock.pop()[1])


def _drop_lock(fd: int) -> None:
    if fd >= 0:
        _unlock(fd)  # forked processes (the early server, before it closes them) hold copies
        os.close(fd)


def _try_lock(fd: int) -> bool:
    """flock(LOCK_EX) if free now; False if another launch holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def prune_records(uid: int, environ, own_image: str | None = None) -> None:
    """Remove the records of images no container of this user runs any more.

    The built-in server calls this when its mount is gone (sqfs_server.run_daemon): without
    it, two files per image and scope (and the scope changes with every batch job) would pile
    up in the user's directory. A record is removed only if none of its containers runs and
    no launch holds its lock (one setting a mount up, or about to); a launch that opened the
    lock just before it went makes its own mount, never a wrong one. own_image: the server's
    image, whose last container is exiting right now (its mount namespace went first): its
    record gets a moment (SETTLE_S) for those processes to finish."""
    own_key = None
    if own_image is not None:
        try:
            own_key = image_key(own_image, environ)
        except OSError:
            pass
    dir_fd = runtime_dir(uid, environ, create=False)
    if dir_fd is None:
        return
    try:
        for name in os.listdir(dir_fd):
            if name.endswith(".members"):
                key = name[:-len(".members")]
                _prune(dir_fd, key, SETTLE_S if key == own_key else 0.0)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _prune(dir_fd: int, key: str, settle_s: float) -> None:
    """Remove key's record if none of its containers runs. settle_s: first wait that long at
    most for them to finish exiting, without the lock (a launch of the image meanwhile must
    not wait for this)."""
    try:
        if settle_s:
            import time
            deadline = time.monotonic() + settle_s
            while _any_running(dir_fd, key) and time.monotonic() < deadline:
                time.sleep(0.005)
        lock = os.open(key + ".lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                       dir_fd=dir_fd)
    except FileNotFoundError:
        lock = -1
    except (OSError, ValueError):
        return
    try:
        if lock >= 0 and not _try_lock(lock):
            return  # a launch is setting this image's mount up
        if _any_running(dir_fd, key):
            return  # read again under the lock: a launch may have joined meanwhile
        os.unlink(key + ".members", dir_fd=dir_fd)
        if lock >= 0:
            os.unlink(key + ".lock", dir_fd=dir_fd)
    except (OSError, ValueError):
        pass
    finally:
        if lock >= 0:
            _drop_lock(lock)


def _any_running(dir_fd: int, key: str) -> bool:
    return any(start_time(int(m[0]), running=True) == m[1] for m in _read_members(dir_fd, key))


def _open_lock(dir_fd: int, key: str) -> int:
    fd = os.open(key + ".lock", _FILE_OPEN, 0o600, dir_fd=dir_fd)
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or (st.st_mode & 0o170000) != 0o100000:
        os.close(fd)
        raise OSError("not a private file")
    return fd


def _lock(fd: int, wait_s: float) -> None:
    """flock(LOCK_EX), waiting at most wait_s (a first launch stuck in its setup must not hold
    the others forever: they go on without sharing)."""
    import time

    deadline = time.monotonic() + wait_s
    pause = 0.001
    while not _try_lock(fd):
        if time.monotonic() > deadline:
            raise OSError("the image's first launch holds the lock too long")
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def _unlock(fd: int) -> None:
    import fcntl
    fcntl.flock(fd, fcntl.LOCK_UN)


def _read_members(dir_fd: int, key: str) -> list[tuple[str, str, str, str]]:
    try:
        fd = os.open(key + ".members", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC |
                     os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    try:
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            return []
        data = os.read(fd, _MEMBERS_MAX)
    finally:
        os.close(fd)
    members = []
    for line in data.decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0].isdigit() and fields[2].isdigit():
            members.append((fields[0], fields[1], fields[2], fields[3]))
    return members


def _write_members(dir_fd: int, key: str, members) -> None:
    fd = os.open(key + ".members", _FILE_OPEN, 0o600, dir_fd=dir_fd)
    try:
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            return
        data = "".join(" ".join(member) + "\n" for member in members[-256:]).encode()
        # written, then cut to its length: a truncation to 0 before rewriting makes ext4
        # (auto_da_alloc) write the file out on close, ~0.7 ms on the launch's critical path.
        # A joiner reading meanwhile may see an old tail: its lines are checked like any.
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _append_member(dir_fd: int, key: str, record) -> None:
    fd = os.open(key + ".members", _FILE_OPEN | os.O_APPEND, 0o600, dir_fd=dir_fd)
    try:
        if (os.fstat(fd).st_mode & 0o170000) == 0o100000:
            os.write(fd, (" ".join(record) + "\n").encode())
    finally:
        os.close(fd)


def _clone_root_of(pid: int, start: str, dev: int, helpers: list) -> int | None:
    """A detached clone of the root mount of process pid's mount namespace, if pid is the
    recorded process (start time) and that mount is the recorded one (dev); else None."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if start_time(pid) != start:  # the pid was reused: not the container recorded
            return None
        return _clone_through_helper(pidfd, dev, helpers)
    finally:
        os.close(pidfd)


def _clone_through_helper(pidfd: int, dev: int, helpers: list) -> int | None:
    """Joining a user namespace is for good, so a forked helper joins the container's user and
    mount namespaces, clones the root mount and waits until the launcher took the clone's
    descriptor (pidfd_getfd: the helper is the launcher's child, which Yama allows). The
    helper then exits; its pid goes to `helpers`, reaped later (Claim.release)."""
    from satchel.runtime import linux

    answer_r, answer_w = os.pipe()
    hold_r, hold_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(answer_r)
            os.close(hold_w)
            linux.setns_pidfd(pidfd, ("user", "mount"), "joining the container")
            root = os.open("/", os.O_PATH | os.O_CLOEXEC)  # the namespace's root, after setns
            tree = linux.open_tree_clone(root, False, "cloning the container's root mount")
            if os.fstat(tree).st_dev == dev:
                os.write(answer_w, b"%d" % tree)
                os.read(hold_r, 1)  # end of file: the launcher has it (or died)
        except BaseException:
            pass
        os._exit(0)
    os.close(answer_w)
    os.close(hold_r)
    try:
        answer = os.read(answer_r, 32)
        if not answer:
            return None
        helper = os.pidfd_open(child)
        try:
            return linux.pidfd_getfd(helper, int(answer), "taking the shared mount")
        finally:
            os.close(helper)
    except (OSError, ValueError, ContainerError):
        return None
    finally:
        os.close(answer_r)
        os.close(hold_w)  # the helper's end of file: it exits
        helpers.append(child)


class SharedMount:
    """The image "server" of a launch that joined a live mount (executor's view, like
    fuse.BuiltinServer): nothing to start, read ahead or wait for; _mount_fuse attaches."""

    __slots__ = ("name", "share", "fd", "mountpoint", "image")

    def __init__(self, name: str, share: Claim, image: str):
        self.name = name
        self.share = share
        self.fd = -1
        self.mountpoint = None
        self.image = image

    def attach(self, target_fd: int) -> None:
        self.share.attach(target_fd)

    def died_error(self, wait_ms: int = 0):
        return None  # the server is the first container's: its death shows as ENOTCONN

    def open_device(self) -> None:
        pass

    def before_mount(self) -> None:
        pass

    def start(self) -> None:
        pass

    def wait_ready(self) -> None:
        pass

    @staticmethod
    def read_ahead(paths, look_up) -> None:
        pass  # the pages are in the kernel's cache already, or on their way

    def store_read_ahead(self, look_up) -> None:
        pass

    def cancel(self) -> None:
        self.share.release()

    def close(self) -> None:
        pass
