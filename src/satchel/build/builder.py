"""`satchel build`: fetch (agent) -> assemble (sections, layout) -> write (SIF or sandbox).

    build(target, source, options)
      ├─ load_source: definition file / URI / SIF / sandbox  -> stages (deffile.Definition)
      ├─ as a non-root user: the rest runs as uid 0 of a user namespace (fakeroot.py)
      └─ _build: a work directory next to the target holds every stage's rootfs, the SquashFS
         and the new SIF; per stage: %pre, agent fetch, layout.prepare, %files from STAGE,
         %setup, %files, %post, layout.finish, %test; then mksquashfs + SIF, renamed onto the
         target. Any failure or interruption (SIGINT/SIGTERM/SIGHUP) removes the work
         directory: no target and no temporary files are left behind.

SIF objects, in order: 1 Def.FILE, 2 JSON.Labels (labels.json), 3 JSON.Generic
"inspect-metadata.json" (the `inspect --all` data, so inspect needs no mount), 4 FS
Squashfs/*System/<host arch>. Apptainer 1.3 writes Def.FILE, its JSON.Generic objects and the
partition; the JSON.Labels object is what SingularityCE/Sylabs' tools read labels from.
"""

from __future__ import annotations

import os
import signal
import stat
import time

from satchel import fsutil, log
from satchel.build import deffile, layout
from satchel.errors import BuildError, ContainerError, SatchelError

SECTION_NAMES = ("all", "none", "pre", "setup", "files", "post", "environment", "runscript",
                 "startscript", "test", "labels", "help")


class BuildOptions:
    """Parsed `satchel build` options (also handed to agents as ctx.options)."""

    def __init__(self, sandbox=False, force=False, fakeroot=False, notest=False, sections=None,
                 update=False, build_args=None, build_arg_file=None, warn_unused_build_args=False,
                 mksquashfs_args="", tmpdir=None, fix_perms=False, ignore_subuid=False,
                 nohttps=False, disable_cache=False, authfile=None, docker_login=False,
                 arch=None, docker_username=None, docker_password=None):
        self.sandbox = sandbox
        self.force = force
        self.fakeroot = fakeroot
        self.notest = notest
        self.sections = list(sections or ["all"])
        self.update = update
        self.build_args = list(build_args or [])
        self.build_arg_file = build_arg_file
        self.warn_unused_build_args = warn_unused_build_args
        self.mksquashfs_args = mksquashfs_args or ""
        self.tmpdir = tmpdir
        self.fix_perms = fix_perms
        self.ignore_subuid = ignore_subuid
        self.nohttps = nohttps
        self.disable_cache = disable_cache
        self.authfile = authfile
        self.docker_login = docker_login
        self.arch = arch  # registry platform choice, read by the OCI agent
        self.docker_username = docker_username
        self.docker_password = docker_password
        self.fetch = None  # oci.source.FetchOptions of a pull; else made once by the agent
        self.announce = True  # the "Build complete: TARGET" line (pull turns it off)
        self.user_umask = 0o022  # the caller's umask, for the mode of the new SIF

    def run_section(self, name: str) -> bool:
        if "none" in self.sections:
            return False
        return "all" in self.sections or name in self.sections


class Step:
    """Logs a build step when it starts and how long it took (INFO lines; -q hides them)."""

    def __init__(self, what: str):
        self.what = what
        self.start = 0.0

    def __enter__(self):
        log.info(self.what)
        self.start = time.monotonic()
        return self

    def __exit__(self, exc_type, _exc, _tb):
        if exc_type is None:
            log.info(f"  done in {time.monotonic() - self.start:.2f} s")
        return False


def _looks_like_image(path: str) -> bool:
    """A SIF, SquashFS or .simg file (else the source is read as a definition file).

    The head is read through fsutil.open_regular: a source swapped for a FIFO after
    load_source looked at it must not block the build waiting for a writer.
    """
    from satchel.image.formats import open_image
    try:
        fd = fsutil.open_regular(path, follow=True)
    except fsutil.NotRegularFileError as err:
        raise BuildError(f"build source {path} {err.strerror}") from None
    except OSError:
        return False
    try:
        head = os.read(fd, 64)
    except OSError:
        return False
    finally:
        os.close(fd)
    if head[32:41] != b"SIF_MAGIC" and not head.startswith(b"hsqs") and not head.startswith(b"#!"):
        return False
    try:
        open_image(path)
    except SatchelError:
        return head[32:41] == b"SIF_MAGIC"  # a broken SIF: let the agent report why
    return True


_SINGLE_COLON_TRANSPORTS = ("docker-archive", "oci-archive", "oci", "docker-daemon")


def load_source(source: str, options: BuildOptions) -> list[deffile.Definition]:
    """SOURCE -> stages: a definition file, a URI (docker://x), a SIF/SquashFS or a sandbox."""
    try:
        mode = os.stat(source).st_mode
    except (OSError, ValueError):
        mode = 0  # not a file: a URI, or a name nothing answers to
    if stat.S_ISDIR(mode):
        return [deffile.from_uri("localimage://" + os.path.abspath(source))]
    if mode and not stat.S_ISREG(mode):
        raise BuildError(f"build source {source} is {fsutil.file_kind(mode)}, not a definition "
                         "file, image or sandbox directory")
    if mode:
        if _looks_like_image(source):
            return [deffile.from_uri("localimage://" + os.path.abspath(source))]
        build_args = deffile.parse_build_args(options.build_args, options.build_arg_file)
        stages, unused = deffile.parse_file(source, build_args)
        if unused:
            message = "unused build arguments: " + ", ".join(unused)
            if options.warn_unused_build_args:
                log.warning(message)
            else:
                raise BuildError(message, hint="remove them, or pass --warn-unused-build-args")
        return stages
    if "://" in source:
        return [deffile.from_uri(source)]
    transport, sep, rest = source.partition(":")
    if sep and transport in _SINGLE_COLON_TRANSPORTS and rest:
        # Apptainer's spelling for local OCI sources: docker-archive:FILE, oci-archive:FILE, oci:DIR
        return [deffile.from_uri(f"{transport}://{rest}")]
    raise BuildError(f"build source {source} not found: not a definition file, image, "
                     "sandbox directory or URI")


def check_target(target: str, options: BuildOptions) -> None:
    if not target:
        raise BuildError("no build target given")
    parent = os.path.dirname(os.path.abspath(target)) or "/"
    try:
        if not os.path.isdir(parent) and os.stat(parent):
            raise BuildError(f"cannot build {target}: {parent} is not a directory")
    except FileNotFoundError:
        raise BuildError(f"cannot build {target}: directory {parent} does not exist") from None
    except OSError as err:
        raise BuildError(f"cannot build {target}: {parent}: {err.strerror}") from None
    if os.path.lexists(target):
        if options.update:
            if not (options.sandbox and os.path.isdir(target)):
                raise BuildError("--update works only with --sandbox on an existing sandbox")
            return
        if not options.force:
            raise BuildError(f"build target {target} already exists",
                             hint="use --force to replace it")
        if os.path.isdir(target) and not os.path.islink(target) and not options.sandbox:
            raise BuildError(f"build target {target} is a directory; build a SIF elsewhere, "
                             "or use --sandbox to replace a sandbox")


def build(target: str, source: str, options: BuildOptions) -> None:
    target = os.path.abspath(target)
    check_target(target, options)
    stages = load_source(source, options)
    for stage in stages:
        if stage.apps:
            raise BuildError("SCIF apps (%app* sections) are not supported by satchel: "
                             + ", ".join(sorted(stage.apps)),
                             hint="install the apps in %post and use %runscript instead")
    if os.geteuid() == 0:
        if options.fakeroot:
            log.info("already root: --fakeroot is not needed and is ignored")
        _build(target, stages, options, fakeroot=False)
        return
    from satchel.build import fakeroot as fr
    announce = None
    if not options.fakeroot:
        # Apptainer >= 1.1 does the same for an unprivileged build
        announce = "building as a non-root user: using --fakeroot (a user namespace maps you to root)"
    fr.run_as_fakeroot(lambda: _build(target, stages, options, fakeroot=True), announce,
                       use_subids=not options.ignore_subuid)


class _Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum, _frame):
    raise _Interrupted(f"signal {signum}")


def _build(target: str, stages: list, options: BuildOptions, fakeroot: bool) -> None:
    started = time.monotonic()
    log.info("Starting build...")
    parent = options.tmpdir or os.path.dirname(target)
    import tempfile
    try:
        workdir = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.build-", dir=parent)
    except OSError as err:
        raise BuildError(f"cannot create a work directory in {parent}: {err.strerror}") from None
    # also SIGINT: a shell starts background jobs with SIGINT ignored, and a build must still
    # clean up when it is interrupted
    old_handlers = {s: signal.signal(s, _raise_interrupt)
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    old_umask = os.umask(0o022)
    options.user_umask = old_umask
    try:
        rootfs_of: dict[str, str] = {}
        final_rootfs = ""
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            if last and options.update:
                rootfs = target
            else:
                rootfs = os.path.join(workdir, f"rootfs-{index}")
                os.mkdir(rootfs, 0o755)
            name = stage.stage or str(index + 1)
            if len(stages) > 1:
                log.info(f"Stage {index + 1}/{len(stages)}: {name}")
            build_stage(stage, rootfs, workdir, options, rootfs_of, fakeroot,
                        skip_bootstrap=last and options.update)
            rootfs_of[name] = rootfs
            final_rootfs = rootfs
        if options.sandbox:
            if not options.update:
                install_sandbox(final_rootfs, target, workdir, options)
        else:
            write_sif(final_rootfs, target, workdir, stages[-1], options)
        done = f"Build complete: {target} ({time.monotonic() - started:.2f} s)"
        # a pull builds into a temporary name and announces the final file itself
        (log.info if options.announce else log.verbose)(done)
    except BaseException:
        # a second Ctrl-C (the terminal signals every process of the group) must not cut the
        # cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    finally:
        os.umask(old_umask)
        _unmount_all(workdir)
        try:
            fsutil.remove_tree(workdir)
        except OSError as err:
            log.warning(f"could not remove the work directory {workdir}: {err.strerror}")
        for s, handler in old_handlers.items():
            signal.signal(s, handler)


def _unmount_all(directory: str) -> None:
    """Detach mounts (overlays of sandbox sources) below the work directory before removal."""
    from satchel.build import ns
    if not ns._private_mounts:
        return
    for point in ns.mounts_under(directory):
        try:
            ns.umount(point)
        except ContainerError as err:
            log.warning(f"could not unmount {point}: {err}")


def build_stage(stage, rootfs: str, workdir: str, options: BuildOptions,
                rootfs_of: dict[str, str], fakeroot: bool, skip_bootstrap: bool = False) -> None:
    from satchel.build import agents, files, scriptlet
    host_env = {"APPTAINER_ROOTFS": rootfs, "SINGULARITY_ROOTFS": rootfs,
                "APPTAINER_ENVIRONMENT": layout.POST_ENVIRONMENT,
                "SINGULARITY_ENVIRONMENT": layout.POST_ENVIRONMENT}
    def_dir = os.path.dirname(stage.path) if stage.path else os.getcwd()

    pre = stage.section("pre")
    if pre and pre.body.strip() and options.run_section("pre"):
        with Step("Running %pre scriptlet on the host"):
            scriptlet.run_on_host(pre.body, pre, workdir, host_env, def_dir, "%pre")

    if not skip_bootstrap:
        agent = agents.get_agent(stage.bootstrap)
        ctx = agents.AgentContext(stage, rootfs, workdir, fakeroot=fakeroot, options=options)
        with Step(f"Bootstrapping the root filesystem with the {stage.bootstrap} agent"):
            result = agent.fetch(ctx)
        layout.prepare(rootfs, result)
    else:
        layout.prepare(rootfs, None, overwrite=False)

    # the build tree (every stage's rootfs, the new image) is never a %files source
    skip = files.directory_keys(workdir, rootfs)
    if options.run_section("files"):
        for block in stage.files:
            if block.stage is None:
                continue
            source_root = rootfs_of.get(block.stage)
            if source_root is None:
                raise BuildError(f"%files from {block.stage}: no earlier stage named {block.stage!r}")
            with Step(f"Copying files from stage {block.stage}"):
                for src, dst in block.transfers:
                    for host, container in files.expand_stage_sources(src, source_root):
                        written = files.copy_in(host, rootfs, dst, container, skip)
                        log.verbose(f"copied {block.stage}:{container} to {written}")

    setup = stage.section("setup")
    if setup and setup.body.strip() and options.run_section("setup"):
        with Step("Running %setup scriptlet on the host"):
            scriptlet.run_on_host(setup.body, setup, workdir, host_env, def_dir, "%setup")

    if options.run_section("files"):
        host_blocks = [b for b in stage.files if b.stage is None and b.transfers]
        if host_blocks:
            with Step("Copying files from the host"):
                for block in host_blocks:
                    for src, dst in block.transfers:
                        for host, written_as in files.expand_host_sources(src, def_dir):
                            written = files.copy_in(host, rootfs, dst, written_as, skip)
                            log.verbose(f"copied {host} to {written}")

    staged = None
    post = stage.section("post")
    if post and post.body.strip() and options.run_section("post"):
        staged = scriptlet.Staged(workdir)
        run_post(rootfs, post, staged)

    layout.finish(rootfs, stage, force=options.force, run_section=options.run_section)

    test = stage.section("test")
    if (test and test.body.strip() and not options.notest and options.run_section("test")):
        with Step("Running %test scriptlet"):
            staged = staged or scriptlet.Staged(workdir)
            env, argv = scriptlet.test_command(rootfs)
            scriptlet.run_in_rootfs(rootfs, argv, env, "%test", staged)
    if options.fix_perms:
        fix_permissions(rootfs)


def run_post(rootfs: str, post, staged) -> None:
    from satchel.build import scriptlet
    script_path = "/.post.script"
    env_file = layout.POST_ENVIRONMENT
    created_env = layout.write_file(rootfs, env_file, layout.ENV_91_ENVIRONMENT, 0o755,
                                    overwrite=False)
    layout.write_file(rootfs, script_path, post.body, 0o755)
    env = scriptlet.container_env({
        "APPTAINER_ROOTFS": "/", "SINGULARITY_ROOTFS": "/",
        "APPTAINER_ENVIRONMENT": env_file, "SINGULARITY_ENVIRONMENT": env_file,
        "APPTAINER_LABELS": layout.BUILD_LABELS, "SINGULARITY_LABELS": layout.BUILD_LABELS,
    })
    argv = [layout.SD + "/actions/exec"] + scriptlet.section_argv("post", script_path, post.args)
    try:
        with Step("Running %post scriptlet"):
            scriptlet.run_in_rootfs(rootfs, argv, env, "%post", staged)
    finally:
        layout.remove_file(rootfs, script_path)
    if created_env and layout.read_file(rootfs, env_file) == layout.ENV_91_ENVIRONMENT:
        layout.remove_file(rootfs, env_file)  # %post added nothing: keep the layout Apptainer's


def fix_permissions(rootfs: str) -> None:
    """--fix-perms: owner rwX everywhere, so a non-root user can later modify/remove the tree."""
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    continue
                extra = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
                os.chmod(path, stat.S_IMODE(st.st_mode) | extra)
            except OSError:
                pass


def install_sandbox(rootfs: str, target: str, workdir: str, options: BuildOptions) -> None:
    from satchel.build import process
    with Step(f"Creating sandbox directory {target}"):
        if os.path.ismount(rootfs):
            # an overlay over the source sandbox: materialise the merged tree (same fs: rename)
            copy = os.path.join(workdir, "sandbox-copy")
            process.run(["cp", "-a", "--", rootfs, copy], f"while copying the sandbox to {target}",
                        quiet=True)
            rootfs = copy
        old = None
        if os.path.lexists(target):
            old = os.path.join(workdir, "replaced-target")
            os.rename(target, old)
        try:
            os.rename(rootfs, target)
        except OSError as err:
            if old:
                os.rename(old, target)
            if err.errno == 18:  # EXDEV: --tmpdir on another file system
                process.run(["cp", "-a", "--", rootfs, target], f"while copying the sandbox to {target}",
                            quiet=True)
                return
            raise BuildError(f"while moving the sandbox to {target}: {err.strerror}") from None


def sif_objects(rootfs: str, definition, squashfs_path: str):
    """The SIF objects satchel writes, in order (see the module doc); the partition, last, is
    read from squashfs_path (or already in place: sif.complete_in_place)."""
    from satchel.image import metadata, sif
    labels_text = layout.read_file(rootfs, layout.SD + "/labels.json") or "{}"
    attributes = metadata.collect(metadata.SandboxReader(rootfs), metadata.ALL)
    inspect_json = metadata.to_json(attributes, indent=None)
    return [
        sif.NewObject(datatype=sif.DATA_DEFFILE, data=definition.full_raw.encode()),
        sif.NewObject(datatype=sif.DATA_LABELS, data=labels_text.encode()),
        sif.NewObject(datatype=sif.DATA_GENERICJSON, data=inspect_json.encode(),
                      name=metadata.INSPECT_OBJECT_NAME),
        sif.NewObject(datatype=sif.DATA_PARTITION, path=squashfs_path, fs_type=sif.FS_SQUASH,
                      part_type=sif.PART_PRIMSYS, arch=sif.host_arch()),
    ]


def write_sif(rootfs: str, target: str, workdir: str, definition, options: BuildOptions) -> None:
    import shlex
    from satchel.image import sif, squashfs
    extra = shlex.split(options.mksquashfs_args) if options.mksquashfs_args else []
    new_sif = os.path.join(workdir, "image.sif")
    # mksquashfs writes the partition straight to its place in the new SIF (-o OFFSET); the
    # header, descriptors and metadata objects are then written in front of it: no copy of a
    # partition that may be gigabytes
    objects = sif_objects(rootfs, definition, new_sif)
    offset = sif.last_object_offset(objects)
    with Step("Creating SquashFS file system"):
        squashfs.make(rootfs, new_sif, extra_args=extra + ["-o", str(offset)],
                      progress=log.progress_wanted())
    with Step(f"Writing SIF image {target}" if options.announce else "Writing SIF image"):
        try:
            sif.complete_in_place(new_sif, objects)
        except SatchelError as err:
            raise BuildError(f"while writing the SIF image: {err.message}") from None
        os.chmod(new_sif, 0o755 & ~options.user_umask)
        try:
            if os.path.isdir(target) and not os.path.islink(target):
                raise BuildError(f"build target {target} is a directory")
            os.rename(new_sif, target)
        except OSError as err:
            raise BuildError(f"while moving the new image to {target}: {err.strerror}") from None

