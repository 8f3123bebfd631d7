"""apply(plan): perform a ContainerPlan's operations in order. Decides nothing.

One method per operation kind, each a few checked calls; every failure is a ContainerError
naming the operation, the path and the errno text. The plan has already chosen everything
(which namespaces, which mounts, in which order, the environment, argv); this file only knows
*how* to do each step. On success the last operation execve()s the payload, so apply() does not
return; on failure the launcher exits and the kernel tears the half-built namespace down (its
mounts, the FUSE connection, an autoclear loop device) with it.
"""

from __future__ import annotations

import os

from satchel import fsutil, log
from satchel.errors import ContainerError
from satchel.runtime import linux, underlay
from satchel.runtime.linux import (MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE,
                                   MS_RDONLY, MS_REC, MS_UNBINDABLE)

_FLAG_BITS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def _mount_flags(op) -> int:
    flags = 0
    for name in op.flags:
        flags |= _FLAG_BITS.get(name, 0)
    return flags


class Executor:
    __slots__ = ("plan", "root", "underlays", "fuse", "in_init", "early", "ensured")

    def __init__(self, plan, early=None):
        self.plan = plan
        self.early = early  # a BuiltinServer started before the plan existed, or None
        self.root = plan.root
        self.underlays = underlay.Underlays(plan.session, self._bind_for_underlay,
                                            self._readonly_for_underlay)
        self.fuse = {}
        self.in_init = False
        self.ensured = None  # (container path, host path) ENSURE_MOUNTPOINT just resolved

    # -- helpers -----------------------------------------------------------------------------
    def target(self, op) -> str:
        """Host path of an op's destination (container paths resolve inside the staged root)."""
        if "root" not in op.flags:
            return op.destination
        if self.ensured is not None and self.ensured[0] == op.destination:
            return self.ensured[1]  # the operation before resolved it; nothing mounted since
        return underlay.resolve_existing(self.root, op.destination)

    def _bind_for_underlay(self, source: str, target: str, recursive: bool, what: str) -> None:
        linux.mount(source, target, None, MS_BIND | (MS_REC if recursive else 0), None, what)

    @staticmethod
    def _readonly_for_underlay(path: str, what: str) -> None:
        linux.mount_setattr(path, linux.MOUNT_ATTR_RDONLY, 0, False, what)

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
            getattr(self, "op_" + op.kind)(op)
            if op.kind != "ensure_mountpoint":
                self.ensured = None

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
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
            except OSError as err:
                raise ContainerError(f"writing {path} ({text!r}): {err.strerror}") from None

    def op_join_namespaces(self, op) -> None:
        """Enter a running instance's namespaces (user first: it grants the rest)."""
        pid, names = op.data
        if "pid" in names:  # FORK_INIT follows, after the host's files are out of reach
            from satchel.runtime import supervisor  # noqa: F401
        files = {"mount": "mnt", "pid": "pid_for_children"}
        fds = []
        try:
            for name in names:  # all opened first: /proc/PID/ns is checked against our ids
                path = f"/proc/{pid}/ns/{files.get(name, name)}"
                try:
                    fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                except OSError as err:
                    raise ContainerError(f"opening {path} of the instance: {err.strerror}",
                                         hint="the instance may have stopped") from None
            for name, fd in zip(names, fds):
                linux.setns(fd, name, f"joining the instance's {name} namespace")
        finally:
            for fd in fds:
                os.close(fd)

    def op_sethostname(self, op) -> None:
        linux.sethostname(op.data)

    def op_net_loopback(self, op) -> None:
        linux.interface_up(op.source)

    # -- FUSE ------------------------------------------------------------------------------------
    def op_fuse_prepare(self, op) -> None:
        from satchel.runtime import fuse

        argv = list(op.data)
        builtin = "builtin" in op.flags  # the program is only its fallback then
        argv[0] = fuse.find_program(argv[0], os.environ, required=not builtin)
        if builtin:
            image = self.plan.image
            server = self.early
            if server is None or (server.image, server.offset) != (image.path, image.fs_offset):
                if server is not None:
                    server.cancel()
                reads = self.plan.ops_of("prefetch")
                server = fuse.start_builtin(op.source, image.path, image.fs_offset, argv,
                                            reads[0].data if reads else ())
            self.early = None
            server.open_device()
            self.fuse[op.source] = server
        else:
            self.fuse[op.source] = fuse.prepare(op.source, argv)

    def op_fuse_snapshot(self, op) -> None:
        self.fuse[op.source].snapshot_namespace()

    def op_mount_squashfs_fuse(self, op) -> None:
        self._mount_fuse(op, self.plan.image.path, "fuse.squashfuse", "mounting the image")

    def op_mount_overlay_fuse(self, op) -> None:
        self._mount_fuse(op, "fuse-overlayfs", "fuse.fuse-overlayfs", "mounting the overlay")

    def _mount_fuse(self, op, source: str, fstype: str, what: str) -> None:
        from satchel.runtime import fuse

        server = self.fuse[op.source]
        uid, gid = op.data
        options = fuse.mount_options(server.fd, uid, gid)
        server.mountpoint = self.target(op)
        server.before_mount()
        linux.mount(source, server.mountpoint, fstype, _mount_flags(op), options,
                    f"{what} with FUSE")
        server.start()

    def op_prefetch(self, op) -> None:
        self.fuse[op.source].read_ahead(op.data, self._existing)

    def op_prefetch_store(self, op) -> None:
        self.fuse[op.source].store_read_ahead(self._existing)

    def _existing(self, path: str) -> str | None:
        """Host path of an existing container path (looked up: the kernel knows it), or None."""
        try:
            host, missing = underlay.resolve(self.root, path)
        except ContainerError:
            return None
        return None if missing else host

    def op_fuse_wait(self, op) -> None:
        server = self.fuse[op.source]
        server.wait_ready()
        if "writable" in op.flags:  # an overlay: mount points may be created in it directly
            self.underlays.own_devices.add(os.stat(server.mountpoint).st_dev)

    # -- mounts ------------------------------------------------------------------------------------
    def op_make_private(self, op) -> None:
        linux.mount(None, op.destination, None, MS_REC | MS_PRIVATE, None,
                    "making mounts private")

    def op_tmpfs(self, op) -> None:
        target = self.target(op)
        linux.mount("tmpfs", target, "tmpfs", _mount_flags(op), op.data, "mounting a tmpfs")
        self.underlays.own_devices.add(os.stat(target).st_dev)

    def op_mkdir(self, op) -> None:
        try:
            os.makedirs(op.destination, 0o755, exist_ok=True)
        except OSError as err:
            raise ContainerError(f"creating directory {op.destination}: {err.strerror}") from None

    def op_mount_squashfs_loop(self, op) -> None:
        from satchel.runtime import loopdev

        offset, size = op.data
        loop_fd, device = loopdev.attach(op.source, offset, size)
        try:
            linux.mount(device, self.target(op), "squashfs", _mount_flags(op), None,
                        f"mounting {op.source} ({device})")
        finally:
            os.close(loop_fd)  # autoclear frees the device when the mount goes away

    def op_bind_image_dir(self, op) -> None:
        target = self.target(op)
        linux.mount(op.source, target, None, MS_BIND | MS_REC, None, "binding the sandbox image")
        attrs = 0
        for flag, attr in (("ro", linux.MOUNT_ATTR_RDONLY), ("nosuid", linux.MOUNT_ATTR_NOSUID),
                           ("nodev", linux.MOUNT_ATTR_NODEV)):
            if flag in op.flags:
                attrs |= attr
        if attrs:
            linux.mount_setattr(target, attrs, 0, True,
                                "making the sandbox image " + ",".join(op.flags))

    def op_mount_overlay(self, op) -> None:
        lower, upper, work = op.data
        linux.mount("overlay", self.target(op), "overlay", _mount_flags(op),
                    f"lowerdir={lower},upperdir={upper},workdir={work}", "mounting the overlay")
        self.underlays.own_devices.add(os.stat(self.target(op)).st_dev)

    def op_ensure_mountpoint(self, op) -> None:
        self.ensured = (op.destination,
                        self.underlays.ensure(self.root, op.destination, op.data))

    def op_bind(self, op) -> None:
        flags = MS_BIND | (MS_REC if "rec" in op.flags else 0)
        linux.mount(op.source, self.target(op), None, flags, None,
                    f"binding {op.source} to {op.destination}")

    def op_bind_dev_node(self, op) -> None:
        linux.mount(op.source, self.target(op), None, MS_BIND, None,
                    f"binding device {op.source}")

    def op_mount_devpts(self, op) -> None:
        linux.mount("devpts", self.target(op), "devpts", _mount_flags(op), op.data,
                    "mounting a devpts instance")

    def op_symlink(self, op) -> None:
        parent, _, name = op.destination.rpartition("/")
        host = underlay.resolve_existing(self.root, parent or "/") + "/" + name
        try:
            os.symlink(op.source, host)
        except FileExistsError:
            pass
        except OSError as err:
            raise ContainerError(f"creating symlink {op.destination}: {err.strerror}") from None

    def op_mount_proc(self, op) -> None:
        linux.mount("proc", self.target(op), "proc", _mount_flags(op), None,
                    "mounting /proc for the new PID namespace")

    def op_readonly_path(self, op) -> None:
        """A kernel path (/proc/sys...) bound on itself, that bind and those below read-only."""
        target = self.target(op)  # outside the try: a resolution error is never tolerated
        try:
            linux.mount(target, target, None, MS_BIND | MS_REC, None,
                        f"binding {op.destination} on itself")
            linux.mount_setattr(target, linux.MOUNT_ATTR_RDONLY, 0, True,
                                f"making {op.destination} read-only")
        except ContainerError as error:
            self._tolerate(op, error)

    def op_mask_path(self, op) -> None:
        """An empty read-only tmpfs over a kernel directory, /dev/null over a kernel file."""
        target = self.target(op)
        try:
            if op.data == "dir":
                linux.mount("tmpfs", target, "tmpfs", _mount_flags(op), "mode=0555",
                            f"masking {op.destination}")
            else:  # a bind keeps /dev/null's own flags: no device bit, but no nosuid either
                linux.mount("/dev/null", target, None, MS_BIND, None,
                            f"masking {op.destination}")
                linux.mount_setattr(target, linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID,
                                    0, False, f"making the mask of {op.destination} read-only")
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
        linux.mount_setattr(self.target(op), linux.MOUNT_ATTR_RDONLY, 0, "rec" in op.flags,
                            f"making {op.destination} read-only")

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

    def _image_text(self, path: str) -> str:
        """A small file of the image as text ("" if unreadable or not a regular file: a FIFO
        at /etc/passwd must not hang the launch). os-level reads: open() would add an isatty()
        ioctl, one more FUSE request, and the text layer."""
        host, missing = underlay.resolve(self.root, path)
        if missing:
            return ""
        try:
            data = fsutil.read_regular(host)
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
        self.in_init = True

    def op_pivot_root(self, op) -> None:
        linux.pivot_root(op.destination)

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
        linux.drop_all_capabilities()

    def op_check_shell(self, op) -> None:
        if not os.access(op.destination, os.X_OK) or os.path.isdir(op.destination):
            raise ContainerError(f"No valid {op.destination} in container")

    def op_exec(self, op) -> None:
        try:
            os.execve(op.source, self.plan.argv, self.plan.environ)
        except OSError as err:
            raise ContainerError(f"executing {op.source} in the container: "
                                 f"{err.strerror}") from None

    def op_instance_init(self, op) -> None:
        from satchel.instance import init  # already imported by the caller: no files needed

        init.run(self.plan.argv, self.plan.environ, op.data)

    def op_exec_child(self, op) -> None:
        from satchel.runtime import supervisor

        supervisor.run_init(self.plan.argv, self.plan.environ)


def apply(plan, early=None) -> None:
    """Build the container and exec its first process (does not return on success).

    early: a fuse.BuiltinServer started ahead of the plan (fuse.fork_builtin), adopted by
    the plan's FUSE_PREPARE for the same image.
    """
    executor = Executor(plan, early)
    try:
        executor.run()
    except (ContainerError, OSError) as err:
        if not executor.fuse:
            raise
        from satchel.runtime import fuse
        cause = fuse.explain_failure(executor.fuse.values(), err)  # a dead server comes first
        if cause is err:
            raise
        raise cause from None
    def op_write_file(self, op) -> None:
        self._write(op.destination, op.data)

