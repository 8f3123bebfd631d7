"""The Linux system calls the runtime needs and Python's os module lacks (through cfunc.py,
a sliver of ctypes on _ctypes: `import ctypes` alone would cost ~7 ms per launch).

Every wrapper checks its result and raises ContainerError naming the operation, the path and
the errno text ("mount tmpfs on /x: Operation not permitted"), so the executor can stay a flat
list of calls. This module is imported only when a container is actually being set up (never
by `-h`, option parsing or the plan).

Nothing here may start a thread: unshare(CLONE_NEWUSER) fails with EINVAL in a multi-threaded
process.
"""

from __future__ import annotations

import os
import struct

from satchel.errors import ContainerError
from satchel.runtime.cfunc import (Library, c_char_p, c_int, c_long, c_size_t, c_uint, c_ulong,
                                   c_void_p, char_buffer, get_errno)

_lib = Library(None)

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = {
    "user": CLONE_NEWUSER, "mount": CLONE_NEWNS, "pid": CLONE_NEWPID,
    "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "net": CLONE_NEWNET,
}

# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
# mount(8)'s propagation names (OCI rootfsPropagation, mount options): the r- forms recurse
PROPAGATION = {"private": MS_PRIVATE, "slave": MS_SLAVE, "shared": MS_SHARED,
               "unbindable": MS_UNBINDABLE}
PROPAGATION.update({"r" + name: flag | MS_REC for name, flag in list(PROPAGATION.items())})
MNT_DETACH = 2

# mount_setattr(2): changes flags of a whole mount tree in one call and, unlike a remount,
# does not need the caller to restate flags the kernel locked in a user namespace.
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
SYS_mount_setattr = 442  # same number on every architecture (new syscall table)
# The new mount API (Linux 5.2): a mount made or cloned as a file descriptor, then attached
# through descriptors. Mounting through descriptors instead of paths is what keeps a user who
# renames entries of their own image from redirecting a root mount (issue 10, point 2): the
# object checked is the object mounted.
SYS_open_tree, SYS_move_mount, SYS_fsopen, SYS_fsconfig, SYS_fsmount = 428, 429, 430, 431, 432
SYS_pidfd_getfd = 438  # Linux 5.6+, the same number everywhere (unified syscall table)
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
# glibc has no pivot_root() wrapper; its number differs between architectures
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217,
                   "i686": 217, "armv7l": 218}

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_PTRACER = 0x59616d61
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_unshare = _lib.function("unshare", (c_int,))
_setns = _lib.function("setns", (c_int, c_int))
_mount = _lib.function("mount", (c_char_p, c_char_p, c_char_p, c_ulong, c_char_p))
_umount2 = _lib.function("umount2", (c_char_p, c_int))
_prctl = _lib.function("prctl", (c_int, c_ulong, c_ulong, c_ulong, c_ulong))
_sethostname = _lib.function("sethostname", (c_char_p, c_size_t))
_capset = _lib.function("capset", (c_char_p, c_char_p))
_socket = _lib.function("socket", (c_int, c_int, c_int))
_ioctl = _lib.function("ioctl", (c_int, c_ulong, c_void_p))
_syscall = _lib.function("syscall", None, c_long)  # variadic: arguments typed at each call
_poll = _lib.function("poll", (c_void_p, c_ulong, c_int))
_POLLFD = struct.Struct("@ihh")  # struct pollfd { int fd; short events, revents; }
# struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd; }
_MOUNT_ATTR = struct.Struct("=QQQQ")
# struct __user_cap_header_struct { u32 version; int pid; } and two
# struct __user_cap_data_struct { u32 effective, permitted, inheritable; }
_CAP_HEADER = struct.Struct("=Ii")
_CAP_DATA_ZERO = bytes(2 * 12)


def _fail(what: str) -> ContainerError:
    err = get_errno()
    return ContainerError(f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(names) -> None:
    flags = 0
    for name in names:
        flags |= NAMESPACE_FLAGS[name]
    if _unshare(flags) != 0:
        err = get_errno()
        hint = None
        if "user" in names and err in (1, 28):  # EPERM, ENOSPC
            hint = ("unprivileged user namespaces may be disabled: check "
                    "/proc/sys/user/max_user_namespaces and kernel.unprivileged_userns_clone")
        raise ContainerError(f"creating {'+'.join(names)} namespaces: {os.strerror(err)}",
                             hint=hint)


def setns(fd: int, nstype: str, what: str) -> None:
    if _setns(fd, NAMESPACE_FLAGS[nstype]) != 0:
        raise _fail(what)


def setns_pidfd(pidfd: int, names, what: str) -> None:
    """Join several namespaces of the process a pidfd names at once (Linux 5.8+)."""
    flags = 0
    for name in names:
        flags |= NAMESPACE_FLAGS[name]
    if _setns(pidfd, flags) != 0:
        raise _fail(what)


def pidfd_getfd(pidfd: int, fd: int, what: str) -> int:
    """A copy of descriptor `fd` of the process a pidfd names (Linux 5.6+; ptrace access)."""
    copy = _syscall(c_long(SYS_pidfd_getfd), c_int(pidfd), c_int(fd), c_uint(0))
    if copy < 0:
        raise _fail(what)
    return copy


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None, what: str) -> None:
    if _mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        raise _fail(f"{what} ({target})")


def umount_detach(target: str, what: str) -> None:
    if _umount2(_b(target), MNT_DETACH) != 0:
        raise _fail(f"{what} ({target})")


def mount_setattr(target: str, attr_set: int, attr_clr: int, recursive: bool, what: str,
                  dirfd: int | None = None) -> None:
    """Set/clear MOUNT_ATTR_* on the mount at target (and every mount below it if recursive).

    With dirfd (an O_PATH fd of a mount's root) and target "", the mount the fd names.
    """
    attr = _MOUNT_ATTR.pack(attr_set, attr_clr, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    if dirfd is not None:
        flags |= AT_EMPTY_PATH
    res = _syscall(c_long(SYS_mount_setattr), c_int(AT_FDCWD if dirfd is None else dirfd),
                   c_char_p(_b(target)), c_uint(flags), c_char_p(attr), c_size_t(len(attr)))
    if res != 0:
        raise _fail(f"{what} ({target})" if target else what)


def fd_path(fd: int) -> str:
    """A path naming exactly the object behind fd (for calls that take paths: mount(2) and
    overlayfs options follow this magic link to the checked object, never re-walk a name)."""
    return f"/proc/self/fd/{fd}"


def open_tree_clone(fd: int, recursive: bool, what: str) -> int:
    """A detached copy of the mount tree at fd (bind mount not yet attached): an fd."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | (AT_RECURSIVE if recursive
                                                                   else 0)
    tree = _syscall(c_long(SYS_open_tree), c_int(fd), c_char_p(b""), c_uint(flags))
    if tree < 0:
        raise _fail(what)
    return tree


def move_mount(tree: int, target_fd: int, what: str) -> None:
    """Attach the detached mount `tree` on the directory or file that target_fd names."""
    if _syscall(c_long(SYS_move_mount), c_int(tree), c_char_p(b""), c_int(target_fd),
                c_char_p(b""), c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)) != 0:
        raise _fail(what)


def bind_onto(source_fd: int, target_fd: int, recursive: bool, what: str) -> int:
    """Bind what source_fd names onto what target_fd names (a clone of its mount tree,
    attached through descriptors: nothing is looked up by name); the attached mount's fd,
    which the caller closes (mount_setattr on it changes this very mount)."""
    tree = open_tree_clone(source_fd, recursive, what)
    try:
        move_mount(tree, target_fd, what)
    except BaseException:
        os.close(tree)
        raise
    return tree


def new_mount(fstype: str, options: str | None, attrs: int, what: str) -> int:
    """A new detached mount of fstype (fsopen, fsconfig per comma-separated option, fsmount)
    with MOUNT_ATTR_* attrs: its fd, which fstat() answers for the new file system."""
    fs = _syscall(c_long(SYS_fsopen), c_char_p(_b(fstype)), c_uint(FSOPEN_CLOEXEC))
    if fs < 0:
        raise _fail(what)
    try:
        for option in (options or "").split(","):
            if not option:
                continue
            key, eq, value = option.partition("=")
            if _syscall(c_long(SYS_fsconfig), c_int(fs),
                        c_uint(FSCONFIG_SET_STRING if eq else FSCONFIG_SET_FLAG),
                        c_char_p(_b(key)), c_char_p(_b(value) if eq else None), c_int(0)) != 0:
                raise _fail(f"{what} (option {option})")
        if _syscall(c_long(SYS_fsconfig), c_int(fs), c_uint(FSCONFIG_CMD_CREATE),
                    c_char_p(None), c_char_p(None), c_int(0)) != 0:
            raise _fail(what)
        mnt = _syscall(c_long(SYS_fsmount), c_int(fs), c_uint(FSMOUNT_CLOEXEC), c_uint(attrs))
        if mnt < 0:
            raise _fail(what)
        return mnt
    finally:
        os.close(fs)


def pivot_root(new_root: str) -> None:
    """Make new_root the root: pivot_root(".", ".") then detach the old root stacked on it.

    Stacking the old root on the new one (runc's trick) needs no put_old directory inside the
    image, which is read-only.
    """
    os.chdir(new_root)
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise ContainerError(f"pivot_root: unknown system call number on {os.uname().machine}")
    if _syscall(c_long(number), c_char_p(b"."), c_char_p(b".")) != 0:
        raise _fail(f"pivot_root into {new_root}")
    if _umount2(b".", MNT_DETACH) != 0:
        raise _fail("detaching the host root after pivot_root")
    os.chdir("/")


def wait_readable(fd: int, timeout_ms: int) -> bool:
    """Whether fd has input (or end of file) within timeout_ms (poll(2); select costs an
    import)."""
    table = char_buffer(_POLLFD.size, _POLLFD.pack(fd, 1, 0))  # POLLIN
    return _poll(table, 1, timeout_ms) > 0


def prctl(option: int, arg: int, what: str) -> None:
    if _prctl(option, arg, 0, 0, 0) != 0:
        raise _fail(what)


def set_parent_death_signal(signum: int) -> None:
    prctl(PR_SET_PDEATHSIG, signum, "setting the parent death signal")


def allow_ptracer(pid: int) -> None:
    """Let process pid use pidfd_getfd on us under Yama ptrace_scope=1 (no Yama: no-op)."""
    _prctl(PR_SET_PTRACER, pid, 0, 0, 0)  # EINVAL without Yama: nothing to allow


def sethostname(name: str) -> None:
    # os.fsencode: a --hostname given as bytes that are not UTF-8 reaches us surrogate-escaped
    raw = os.fsencode(name)
    if _sethostname(raw, len(raw)) != 0:
        raise _fail(f"setting the hostname to {name!r}")


# <linux/sockios.h>, <net/if.h>: struct ifreq is a 16-byte name and a 24-byte union
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_AF_INET, _SOCK_DGRAM, _SOCK_CLOEXEC = 2, 2, 0o2000000


_IFREQ_FLAGS = struct.Struct("=16sh22x")  # struct ifreq: name, then ifr_flags in the union


def interface_up(name: str) -> None:
    """Set IFF_UP on a network interface of the current network namespace (ioctl on a socket).

    In a new network namespace only `lo` exists, down; bringing it up needs CAP_NET_ADMIN
    over the namespace, which its creator holds (inside its user namespace if non-root).
    The socket module is not imported for this: libc is already at hand.
    """
    sock = _socket(_AF_INET, _SOCK_DGRAM | _SOCK_CLOEXEC, 0)
    if sock < 0:
        raise _fail(f"opening a socket to configure {name}")
    try:
        req = char_buffer(_IFREQ_FLAGS.size)
        req.raw = _IFREQ_FLAGS.pack(name.encode(), 0)
        if _ioctl(sock, SIOCGIFFLAGS, req) != 0:
            raise _fail(f"reading the flags of network interface {name}")
        _, flags = _IFREQ_FLAGS.unpack(req.raw)
        req.raw = _IFREQ_FLAGS.pack(name.encode(), flags | IFF_UP)
        if _ioctl(sock, SIOCSIFFLAGS, req) != 0:
            raise _fail(f"bringing up network interface {name}")
    finally:
        os.close(sock)


def last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63


def drop_all_capabilities() -> None:
    """no_new_privs, empty bounding and ambient sets, zero effective/permitted/inheritable.

    After this nothing the payload executes can gain a privilege: setuid bits and file
    capabilities are ignored under no_new_privs, and root's execve() computes its permitted
    set from the (now empty) bounding set.
    """
    prctl(PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")
    for cap in range(last_capability() + 1):
        if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = get_errno()
            if err != 22:  # EINVAL: a capability this kernel does not know
                raise ContainerError(f"dropping capability {cap} from the bounding set: "
                                     f"{os.strerror(err)}")
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = get_errno()
        if err != 22:  # kernels before 4.3 have no ambient set
            raise ContainerError(f"clearing the ambient capabilities: {os.strerror(err)}")
    header = _CAP_HEADER.pack(_LINUX_CAPABILITY_VERSION_3, 0)
    if _capset(header, _CAP_DATA_ZERO) != 0:
        raise _fail("clearing capabilities (capset)")


PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT_RAISE = 2


def keep_capability_across_exec(cap: int) -> None:
    """Keep only capability `cap`, and keep it across execve (ambient set).

    For a FUSE server that mounts itself (fuse2fs on libfuse 2 has no /dev/fd/N): a process
    that is not uid 0 of its user namespace loses every capability at execve, and its mount(2)
    then fails with EPERM. Ambient needs the capability permitted and inheritable first.
    """
    bit = 1 << (cap % 32)
    words = [0, 0]
    words[cap // 32] = bit
    data = struct.pack("=6I", words[0], words[0], words[0], words[1], words[1], words[1])
    if _capset(_CAP_HEADER.pack(_LINUX_CAPABILITY_VERSION_3, 0), data) != 0:
        raise _fail(f"keeping capability {cap} (capset)")
    prctl_args(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, f"raising ambient capability {cap}")


def prctl_args(option: int, arg2: int, arg3: int, what: str) -> None:
    if _prctl(option, arg2, arg3, 0, 0) != 0:
        raise _fail(what)
