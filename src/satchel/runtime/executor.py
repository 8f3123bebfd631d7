"""apply(plan): perform a ContainerPlan's operations in order. Decides nothing.

One method per operation kind, each a few checked calls; every failure is a ContainerError
naming the operation, the path and the errno text. The plan has already chosen everything
(which namespaces, which mounts, in which order, the environment, argv); this file only knows
*how* to do each step. On success the last operation execve()s the payload, so apply() does not
return; on failure the launcher exits and the kernel tears the half-built namespace down (its
mounts, the FUSE connection, an autoclear loop device) with it.

The operations of options most launches do not use (overlay layers, --fakeroot's mapping,
joining namespaces) are functions of executor_extra.py, imported only by a plan that has one.
"""

from __future__ import annotations

import os

from satchel import log, pathwalk
from satchel.errors import ContainerError, PathError
from satchel.runtime import linux, underlay
from satchel.runtime.linux import (MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE,
                                   MS_RDONLY, MS_REC, MS_UNBINDABLE)

_FLAG_BITS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
_ATTR_BITS = {"ro": linux.MOUNT_ATTR_RDONLY, "nosuid": linux.MOUNT_ATTR_NOSUID,
              "nodev": linux.MOUNT_ATTR_NODEV, "noexec": linux.MOUNT_ATTR_NOEXEC}
_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def mount_flags(op) -> int:
    """The MS_* bits of an op's flags (executor_extra.py's overlay mounts use it too)."""
    flags = 0
    for name in op.flags:
        flags |= _FLAG_BITS.get(name, 0)
    return flags


def _mount_attrs(op) -> int:
    attrs = 0
    for name in op.flags:
        attrs |= _ATTR_BITS.get(name, 0)
    return attrs


class Executor:
    __slots__ = ("plan", "root", "underlays", "fuse", "early", "ensured", "root_fd",
                 "held", "mounted", "skip")

    def __init__(self, plan, early=None):
        self.plan = plan
        self.early = early  # the plan's BuiltinServer, started by launch.start_server
        self.root = plan.root
        self.underlays = underlay.Underlays(plan.session)
        self.fuse = {}
        # Container paths are mounted onto through O_PATH descriptors (see underlay.py): a
        # user who owns the image may rename its entries while we stage it.
        self.ensured = None  # (container path, fd) ENSURE_MOUNTPOINT just resolved
        self.root_fd = None  # the staged root, opened once the image is mounted there
        self.held: list[int] = []  # descriptors opened for the current operation
        self.mounted = None  # (container path, fd of the mount) the last BIND attached
        self.skip = None     # container path whose operations are skipped (see ensure)

    # -- helpers -----------------------------------------------------------------------------
    def target(self, op) -> str:
        """Host path of an op's destination (container paths resolve inside the staged root)."""
        if "root" not in op.flags:
            return op.destination
        if self.ensured is not None and self.ensured[0] == op.destination:
            return linux.fd_path(self.ensured[1])  # resolved just before; nothing mounted since
        host, missing = pathwalk.resolve_path(self.root, op.destination)
        if missing:
            raise ContainerError(f"path {op.destination} does not exist in the container")
        return host

    def target_fd(self, op) -> int:
        """O_PATH descriptor of a "root" op's destination, resolved below the staged root
        through descriptors (pathwalk.resolve_at: nothing renamed meanwhile can redirect it;
        a mount at the destination is entered). Closed after the operation."""
        if self.ensured is not None and self.ensured[0] == op.destination:
            return self.ensured[1]
        found = pathwalk.resolve_at(self._root_fd(), op.destination)
        self.held.append(found.fd)
        if found.missing:
            raise ContainerError(f"path {op.destination} does not exist in the container")
        return found.fd

    def mount_target(self, op) -> str:
        """The path mount(2) gets for an op's destination: /proc/self/fd/N for container paths
        (the kernel follows that magic link to the very object resolved), else the host path."""
        return linux.fd_path(self.target_fd(op)) if "root" in op.flags else op.destination

    def _root_fd(self) -> int:
        if self.root_fd is None:
            try:
                self.root_fd = os.open(self.root, _PATH_DIR)
            except OSError as err:
                raise ContainerError(f"opening the container root {self.root}: "
                                     f"{err.strerror}") from None
        return self.root_fd

    def _after(self, op) -> None:
        """Close what an operation opened; forget what only the next one may use."""
        for fd in self.held:
            os.close(fd)
        self.held.clear()
        if op.kind != "ensure_mountpoint" and self.ensured is not None:
            os.close(self.ensured[1])
            self.ensured = None
        if op.kind != "bind" and self.mounted is not None:
            os.close(self.mounted[1])
            self.mounted = None
        if (self.root_fd is not None and "root" not in op.flags and op.destination
                and (self.root + "/").startswith(op.destination.rstrip("/") + "/")):
            os.close(self.root_fd)  # something was mounted on the root or above it
            self.root_fd = None

    def run(self) -> None:
        debug = log.debug_enabled()
        if debug:  # each operation with the time since apply() began, for profiling launches
            import time
            clock, started = time.perf_counter, time.perf_counter()
        for op in self.plan.ops:
            if debug:
                log.debug(f"[+{(clock() - started) * 1000:6.2f} ms] {op.kind}: "
                          f"{op.source or ''} -> {op.destination or ''} {','.join(op.flags)} "
                          f"{op.data if op.kind not in ('exec', 'exec_child') else ''}")
            if self.skip is not None:
                if op.destination == self.skip and "root" in op.flags:
                    continue
                self.skip = None
            method = getattr(self, "op_" + op.kind, None)
            if method is not None:
                method(op)
            else:  # an operation of a rarely used option: executor_extra.py, loaded now
                from satchel.runtime import executor_extra
                getattr(executor_extra, "op_" + op.kind)(self, op)
            self._after(op)

    # -- clean-up and resource limits -----------------------------------------------------------
    @staticmethod
    def op_reaper(op) -> None:
        from satchel.runtime import reaper

        reaper.start(*op.data)

    @staticmethod
    def op_cgroup(op) -> None:
        from satchel.runtime import cgroups

        cgroups.enter(op.data)

    # -- namespaces --------------------------------------------------------------------------
    def op_unshare(self, op) -> None:
        linux.unshare(op.data)

    def op_id_map(self, op) -> None:
        uid_map, gid_map = op.data
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", uid_map),
                           ("/proc/self/gid_map", gid_map)):
            pathwalk.write_kernel_file(path, text, "mapping the user namespace", ContainerError)

    def op_sethostname(self, op) -> None:
        linux.sethostname(op.data)

    def op_net_loopback(self, op) -> None:
        linux.interface_up(op.source)

    # -- FUSE ------------------------------------------------------------------------------------
    def op_fuse_prepare(self, op) -> None:
        from satchel.runtime import fuse

        if "builtin" in op.flags:  # the plan's server, started by the launcher: adopted
            server = self.early
            if server is None:
                raise ContainerError("the built-in SquashFS server was not started "
                                     "(launch.start_server before executor.apply)")
            self.early = None
            server.open_device()
            self.fuse[op.source] = server
            return
        argv = list(op.data)
        argv[0] = fuse.find_program(argv[0], os.environ)
        self.fuse[op.source] = fuse.prepare(op.source, argv, detach="detach" in op.flags)

    def op_fuse_snapshot(self, op) -> None:
        self.fuse[op.source].snapshot_namespace()

    def op_mount_squashfs_fuse(self, op) -> None:
        self._mount_fuse(op, self.plan.image.path, "fuse.squashfuse", "mounting the image")

    def op_mount_overlay_fuse(self, op) -> None:
        self._mount_fuse(op, "fuse-overlayfs", "fuse.fuse-overlayfs", "mounting the overlay")

    def op_mount_fuse(self, op) -> None:
        program = os.path.basename(self.fuse[op.source].argv[0])
        self._mount_fuse(op, program, "fuse." + program, f"--fusemount at {op.destination}")

    def _mount_fuse(self, op, source: str, fstype: str, what: str) -> None:
        from satchel.runtime import fuse

        server = self.fuse[op.source]
        if getattr(server, "attach", None) is not None:  # share.SharedMount: a live mount's
            server.mountpoint = self.target(op)         # clone, attached here (the session's)
            target = os.open(server.mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW |
                             os.O_CLOEXEC)
            try:
                server.attach(target)
            finally:
                os.close(target)
            return
        uid, gid = op.data
        options = fuse.mount_options(server.fd, uid, gid,
                                     "allow_other" if "allow_other" in op.flags else "")
        server.mountpoint = self.target(op)
        server.before_mount()
        linux.mount(source, server.mountpoint, fstype, mount_flags(op), options,
                    f"{what} with FUSE")
        server.start()

    def op_prefetch(self, op) -> None:
        self.fuse[op.source].read_ahead(op.data, self._existing)

    def op_prefetch_store(self, op) -> None:
        self.fuse[op.source].store_read_ahead(self._look_up)

    def _look_up(self, path: str) -> None:
        """Have the kernel look up an image path the built-in server listed (FUSE_NOTIFY_STORE
        takes pages only for inodes the kernel knows): one stat below the root descriptor.
        The server lists paths with no symbolic link in them, of a read-only image; a stat
        reads nothing and, rootless (the only case with a built-in server), can reach no file
        the caller could not stat anyway."""
        try:
            os.stat(path.lstrip("/") or ".", dir_fd=self._root_fd(), follow_symlinks=False)
        except OSError:
            pass

    def _existing(self, path: str) -> str | None:
        """Host path of an existing container path (looked up: the kernel knows it), or None."""
        try:
            host, missing = pathwalk.resolve_path(self.root, path)
        except PathError:
            return None
        return None if missing else host

    def op_fuse_wait(self, op) -> None:
        server = self.fuse[op.source]
        server.wait_ready()
        if "check" in op.flags:  # a --fusemount program: its first answer, or why it died
            try:  # by name: the stat must cross into the new mount (a held fd would not)
                host, _ = pathwalk.resolve_path(self.root, op.destination)
                os.stat(host)
            except OSError as err:
                raise server.died_error(1000) or ContainerError(
                    f"the FUSE server for the {op.source} does not answer "
                    f"({err.strerror}): {' '.join(server.argv)}") from None
        if "writable" in op.flags:  # an overlay: mount points may be created in it directly
            self.underlays.own_devices.add(os.stat(server.mountpoint).st_dev)

    # -- mounts ------------------------------------------------------------------------------------
    def op_make_private(self, op) -> None:
        linux.mount(None, op.destination, None, MS_REC | MS_PRIVATE, None,
                    "making mounts private")

    def op_propagation(self, op) -> None:
        linux.mount(None, op.destination, None, linux.PROPAGATION[op.data], None,
                    f"making {op.destination} {op.data}")

    def op_tmpfs(self, op) -> None:
        if "root" not in op.flags:  # the session directory: a path of the installation
            linux.mount("tmpfs", op.destination, "tmpfs", mount_flags(op), op.data,
                        "mounting a tmpfs")
            self.underlays.own_devices.add(os.stat(op.destination).st_dev)
            return
        # made detached, then attached onto the resolved descriptor: its fd says which
        # file system is ours to write mount points in (no name looked up again)
        mnt = linux.new_mount("tmpfs", op.data, _mount_attrs(op), "mounting a tmpfs")
        try:
            linux.move_mount(mnt, self.target_fd(op), f"mounting a tmpfs on {op.destination}")
            self.underlays.own_devices.add(os.fstat(mnt).st_dev)
        finally:
            os.close(mnt)

    def op_mkdir(self, op) -> None:
        if "owned" in op.flags or "layer" in op.flags:  # an overlay's upper/work directory
            from satchel.runtime import executor_extra
            os.close(executor_extra.owned_dir(op.destination, self.plan.uid)
                     if "owned" in op.flags else executor_extra.layer_dir(op.destination))
            return
        try:
            os.makedirs(op.destination, 0o755, exist_ok=True)
        except OSError as err:
            raise ContainerError(f"creating directory {op.destination}: {err.strerror}") from None

    def op_mount_squashfs_loop(self, op) -> None:
        from satchel.runtime import loopdev

        offset, size = op.data
        loop_fd, device = loopdev.attach(op.source, offset, size)
        try:
            linux.mount(device, self.target(op), "squashfs", mount_flags(op), None,
                        f"mounting {op.source} ({device})")
        finally:
            os.close(loop_fd)  # autoclear frees the device when the mount goes away

    def op_bind_image_dir(self, op) -> None:
        target = self.target(op)
        try:  # checked a directory and bound through one descriptor: the same directory
            source = os.open(op.source, _PATH_DIR)
        except OSError as err:
            raise ContainerError(f"opening the sandbox image {op.source}: "
                                 f"{err.strerror}") from None
        self.held.append(source)
        linux.mount(linux.fd_path(source), target, None, MS_BIND | MS_REC, None,
                    f"binding the sandbox image {op.source}")
        attrs = 0
        for flag, attr in (("ro", linux.MOUNT_ATTR_RDONLY), ("nosuid", linux.MOUNT_ATTR_NOSUID),
                           ("nodev", linux.MOUNT_ATTR_NODEV)):
            if flag in op.flags:
                attrs |= attr
        if attrs:
            linux.mount_setattr(target, attrs, 0, True,
                                "making the sandbox image " + ",".join(op.flags))
        if "owned" in op.flags:  # an OCI bundle's root: mount points are made in it directly
            self.underlays.own_devices.add(os.stat(target).st_dev)

    def op_ensure_mountpoint(self, op) -> None:
        """Resolve (and make) a mount point; a destination that resolves to the container's
        root itself (an image symlink `/var/tmp -> /`) is refused: for a user bind (flag
        "user") with an error, for the runtime's own binds (home, /tmp, /var/tmp, cwd, /proc,
        ...) with a warning, and the operations on that destination that follow are skipped.
        Apptainer does the same for its own binds ("Skipping impossible home directory mount
        to '/'", its issue 5228) and refuses a user's bind onto /. Nothing can resolve above
        the root: resolution is clamped to it (pathwalk.resolve_at).
        """
        try:
            fd = self.underlays.ensure(self._root_fd(), op.destination, op.data)
        except underlay.IsContainerRoot:
            if "user" in op.flags:
                raise ContainerError(f"invalid bind to {op.destination}: it resolves to the "
                                     "container's root directory / through the image's "
                                     "symbolic links") from None
            log.warning(f"not mounting {op.destination}: it resolves to the container's "
                        "root directory / through the image's symbolic links")
            self.skip = op.destination
            return
        if self.underlays.root_covered:  # resolve later paths through the copy on top
            self.underlays.root_covered = False
            os.close(self.root_fd)
            self.root_fd = None
        if self.ensured is not None:
            os.close(self.ensured[1])
        self.ensured = (op.destination, fd)

    def op_bind(self, op) -> None:
        """A host path onto a container path: cloned (open_tree) and attached (move_mount)
        onto the resolved descriptor; the clone's fd stays for a REMOUNT_RO that follows, so
        it makes this very mount read-only even if a user renamed its mount point since."""
        what = f"binding {op.source} to {op.destination}"
        if "root" not in op.flags:
            flags = MS_BIND | (MS_REC if "rec" in op.flags else 0)
            linux.mount(op.source, op.destination, None, flags, None, what)
            if "writable" in op.flags:  # the build's rootfs: mount points are made in it
                self.underlays.own_devices.add(os.stat(op.destination).st_dev)
            return
        target = self.target_fd(op)
        try:
            source = os.open(op.source, os.O_PATH | os.O_CLOEXEC)
        except OSError as err:
            raise ContainerError(f"{what}: {err.strerror}") from None
        try:
            tree = linux.bind_onto(source, target, "rec" in op.flags, what)
        finally:
            os.close(source)
        self.mounted = (op.destination, tree)

    def op_bind_dev_node(self, op) -> None:
        linux.mount(op.source, self.mount_target(op), None, MS_BIND, None,
                    f"binding device {op.source}")

    def op_mount_devpts(self, op) -> None:
        linux.mount("devpts", self.mount_target(op), "devpts", mount_flags(op), op.data,
                    "mounting a devpts instance")

    def op_symlink(self, op) -> None:
        parent, _, name = op.destination.rpartition("/")
        found = pathwalk.resolve_at(self._root_fd(), parent or "/")
        self.held.append(found.fd)
        if found.missing:
            raise ContainerError(f"creating symlink {op.destination}: {parent} does not exist "
                                 "in the container")
        try:
            os.symlink(op.source, name, dir_fd=found.fd)
        except FileExistsError:
            pass
        except OSError as err:
            raise ContainerError(f"creating symlink {op.destination}: {err.strerror}") from None

    def op_mount_proc(self, op) -> None:
        """A fresh procfs; with "host_fallback" (planned only in a user namespace: the build
        sandbox under --fakeroot) the host's /proc bound instead if the kernel refuses one
        (a procfs with paths masked by a container runtime is "too revealing" to mount anew
        there); the host's still shows the namespace's processes."""
        target = self.mount_target(op)
        try:
            linux.mount("proc", target, "proc", mount_flags(op), None,
                        "mounting /proc for the new PID namespace")
        except ContainerError:
            if "host_fallback" not in op.flags or linux.get_errno() not in (1, 13):
                raise
            linux.mount("/proc", target, None, MS_BIND | MS_REC, None, "binding the host's /proc")

    def _hidden(self, op) -> bool:
        """An "if_exists" path (OCI maskedPaths/readonlyPaths) absent when its turn comes: an
        earlier mask can hide it (/a masked, then /a/b). runc skips those, and so do we."""
        if "if_exists" not in op.flags:
            return False
        found = pathwalk.resolve_at(self._root_fd(), op.destination)
        self.held.append(found.fd)
        return bool(found.missing)

    def op_readonly_path(self, op) -> None:
        """A kernel path (/proc/sys...) bound on itself, that bind and those below read-only.

        Through descriptors, as op_bind: the path is resolved once (a user who owns a sandbox
        could otherwise rename the /proc mount point away and leave a decoy at its name), the
        clone is attached onto that object and the clone itself is made read-only."""
        if self._hidden(op):
            return
        target = self.target_fd(op)  # outside the try: a resolution error is never tolerated
        what = f"binding {op.destination} on itself"
        try:
            tree = linux.open_tree_clone(target, True, what)
            try:
                linux.move_mount(tree, target, what)
                linux.mount_setattr("", linux.MOUNT_ATTR_RDONLY, 0, True,
                                    f"making {op.destination} read-only", dirfd=tree)
            finally:
                os.close(tree)
        except ContainerError as error:
            self._tolerate(op, error)

    def op_mask_path(self, op) -> None:
        """An empty read-only tmpfs over a kernel directory, /dev/null over a kernel file;
        attached onto the resolved descriptor (see op_readonly_path)."""
        if self._hidden(op):
            return
        target = self.target_fd(op)
        what = f"masking {op.destination}"
        try:
            if op.data == "dir":
                mask = linux.new_mount("tmpfs", "mode=0555", _mount_attrs(op), what)
            else:  # a bind keeps /dev/null's own flags: no device bit, but no nosuid either
                null = os.open("/dev/null", os.O_PATH | os.O_CLOEXEC)
                try:
                    mask = linux.open_tree_clone(null, False, what)
                finally:
                    os.close(null)
            try:
                linux.move_mount(mask, target, what)
                if op.data != "dir":
                    linux.mount_setattr("", linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID,
                                        0, False, f"making the mask of {op.destination} "
                                        "read-only", dirfd=mask)
            finally:
                os.close(mask)
        except ContainerError as error:
            self._tolerate(op, error)

    @staticmethod
    def _tolerate(op, error: ContainerError) -> None:
        """Raise a mount error unless the plan marked the op "optional" and the kernel
        refused it (EPERM, EACCES): see plan._protect_kernel."""
        err = linux.get_errno()  # of the failed call: nothing called libc since
        if "optional" not in op.flags or err not in (1, 13):
            raise error
        log.verbose(f"{op.kind} {op.destination}: {os.strerror(err)} (rootless: skipped)")

    def op_unbindable(self, op) -> None:
        linux.mount(op.destination, op.destination, None, MS_BIND, None,
                    "binding the session directory on itself")
        linux.mount(None, op.destination, None, MS_UNBINDABLE, None,
                    "making the session directory unbindable")

    def op_remount_ro(self, op) -> None:
        what = f"making {op.destination} read-only"
        rec = "rec" in op.flags
        if self.mounted is not None and self.mounted[0] == op.destination:
            linux.mount_setattr("", linux.MOUNT_ATTR_RDONLY, 0, rec, what, dirfd=self.mounted[1])
        elif "root" in op.flags:
            linux.mount_setattr("", linux.MOUNT_ATTR_RDONLY, 0, rec, what,
                                dirfd=self.target_fd(op))
        else:
            linux.mount_setattr(op.destination, linux.MOUNT_ATTR_RDONLY, 0, rec, what)

    def op_nosuid_tree(self, op) -> None:
        linux.mount_setattr(op.destination, linux.MOUNT_ATTR_NOSUID, 0, True,
                            "setting nosuid on the container's mounts")

    # -- generated files ---------------------------------------------------------------------
    def op_gen_passwd(self, op) -> None:
        from satchel.runtime import etcfiles

        line, uid, name = op.data
        text = etcfiles.merge_passwd(self._image_text(op.source), line, uid, name)
        self._write(op.destination, text)

    def op_gen_group(self, op) -> None:
        from satchel.runtime import etcfiles

        groups, user = op.data
        text = etcfiles.merge_group(self._image_text(op.source), groups, user)
        self._write(op.destination, text)

    def op_write_file(self, op) -> None:
        self._write(op.destination, op.data)

    def _image_text(self, path: str) -> str:
        """A small file of the image as text ("" if unreadable or not a regular file: a FIFO
        at /etc/passwd must not hang the launch). os-level reads: open() would add an isatty()
        ioctl, one more FUSE request, and the text layer."""
        host, missing = pathwalk.resolve_path(self.root, path)
        if missing:
            return ""
        try:
            data = pathwalk.read_regular(host)
        except OSError:
            return ""
        return data.decode("utf-8", "surrogateescape")

    @staticmethod
    def _write(path: str, text: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                # surrogateescape: a home directory or an image's passwd line that is not
                # UTF-8 is written back as the very bytes it came from
                os.write(fd, text.encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        except OSError as err:
            raise ContainerError(f"writing {path}: {err.strerror}") from None

    # -- switching to the container ------------------------------------------------------------
    def op_fork_init(self, op) -> None:
        from satchel.runtime import supervisor

        supervisor.fork_init()  # returns only in the child, pid 1 of the new namespace

    def op_pivot_root(self, op) -> None:
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None
        linux.pivot_root(op.destination)
        for server in self.fuse.values():
            claim = getattr(server, "share", None)
            if claim is not None:  # the image mount is the root now: others may join it
                claim.register(self._root_dev())

    def _root_dev(self) -> int | None:
        """st_dev of the new root if it is the image's own mount (what a shared mount's
        record names), None if an underlay copy was bound over it (underlay.py)."""
        if self.underlays.root_copied:
            return None
        try:
            return os.stat("/").st_dev
        except OSError:
            return None

    @staticmethod
    def op_record_namespaces(op) -> None:
        from satchel.runtime import share
        share.record_sharens(op.data)

    def op_chdir(self, op) -> None:
        candidates = list(op.data)
        for i, path in enumerate(candidates):
            try:
                os.chdir(path)
            except OSError as err:
                if "strict" in op.flags:
                    raise ContainerError(f"could not set working directory {path}: "
                                         f"{err.strerror}") from None
                continue
            if i > 0 and i == 1 and self.plan.cwd and candidates[0] != path:
                log.verbose(f"working directory {candidates[0]} not available in the "
                            f"container: using {path}")
            return
        raise ContainerError("no usable working directory in the container")

    def op_drop_caps(self, op) -> None:
        if "fakeroot" in op.flags:  # root of its own user namespace keeps its capabilities
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")
            return
        linux.drop_all_capabilities()

    def op_seccomp(self, op) -> None:
        from satchel.runtime import seccomp
        seccomp.load(op.data)

    def op_check_shell(self, op) -> None:
        if not os.access(op.destination, os.X_OK) or os.path.isdir(op.destination):
            try:  # why: a dying FUSE server answers ENOTCONN/EIO, which apply() explains
                os.stat(op.destination)
            except OSError as err:
                raise ContainerError(f"No valid {op.destination} in container: "
                                     f"{err.strerror}") from None
            raise ContainerError(f"No valid {op.destination} in container")

    def op_exec(self, op) -> None:
        path, environ = op.source, self.plan.environ
        if "lookup" in op.flags:  # OCI: args[0] on the process's PATH, HOME from its passwd
            from satchel.ocirt import ops
            path = ops.find_program(op.source, environ)
            if "HOME" not in environ:
                environ = dict(environ, HOME=ops.home_of(os.getuid()))
        try:
            os.execve(path, self.plan.argv, environ)
        except OSError as err:
            raise ContainerError(f"executing {op.source} in the container: "
                                 f"{err.strerror}") from None

    def op_instance_init(self, op) -> None:
        from satchel.instance import init  # already imported by the caller: no files needed

        init.run(self.plan.argv, self.plan.environ, op.data)

    def op_exec_child(self, op) -> None:
        from satchel.runtime import supervisor

        supervisor.run_init(self.plan.argv, self.plan.environ)

    # -- OCI containers (satchel oci): the operations live in ocirt/ops.py, loaded by the
    # create process before the fork (lifecycle._fork_setup), as instance/init.py is above
    def op_oci_sync(self, op) -> None:
        from satchel.ocirt import ops
        ops.sync(self, op)

    def op_oci_setns(self, op) -> None:
        from satchel.ocirt import ops
        ops.setns_path(self, op)

    def op_oci_fork(self, op) -> None:
        from satchel.ocirt import ops
        ops.fork(self, op)

    def op_oci_mount(self, op) -> None:
        from satchel.ocirt import ops
        ops.mount(self, op)

    def op_oci_device(self, op) -> None:
        from satchel.ocirt import ops
        ops.device(self, op)

    def op_oci_console(self, op) -> None:
        from satchel.ocirt import ops
        ops.console(self, op)

    def op_oci_wait_start(self, op) -> None:
        from satchel.ocirt import ops
        ops.wait_start(self, op)

    def op_oci_process(self, op) -> None:
        from satchel.ocirt import ops
        ops.process(self, op)

    def op_oci_seccomp(self, op) -> None:
        from satchel.ocirt import ops
        ops.seccomp_late(self, op)


def apply(plan, early=None) -> None:
    """Build the container and exec its first process (does not return on success).

    early: the built-in server the plan names (ContainerPlan.server), started by the launcher
    (launch.start_server) and adopted by the plan's FUSE_PREPARE "builtin".
    """
    executor = Executor(plan, early)
    try:
        executor.run()
    except (ContainerError, PathError, OSError) as err:
        if not executor.fuse:
            raise
        from satchel.runtime import fuse
        cause = fuse.explain_failure(executor.fuse.values(), err)  # a dead server comes first
        if cause is err:
            raise
        raise cause from None
