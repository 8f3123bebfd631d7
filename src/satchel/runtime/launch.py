"""From the parsed command line to the ContainerPlan: the one call the CLI makes down.

exec/run/shell/test (cli/commands/action.py) call plan_launch(command, parsed) and get the
plan back; instance start|run (instance/lifecycle.py) open their image and build their
RunOptions with the same functions (open_image_arg, run_options), so that every option means
the same in both. Nothing here calls back up into cli/: the parsed options come down once, the
plan goes back once.

What belongs here, and not in the plan: what reads the world outside HostInfo (the admin
config, the image file, a pulled URI, --env-file, the GPU driver, cgroup layout, instance
records) and the options satchel refuses. What belongs in the plan: every decision about the
container (plan.py).

On the exec path: only os and satchel's lean modules at load time; the OCI code, instance
records, GPU discovery and cgroups are imported only when asked for.
"""

from __future__ import annotations

import os

from satchel.errors import UsageError

# option dest -> why it is refused (each becomes one FATAL line)
REFUSED = {
    "keep_privs": "--keep-privs is not supported: satchel never keeps privileges",
    "add_caps": "--add-caps is not supported: satchel never grants capabilities",
    "app": "--app (SCIF apps) is not supported yet",
    "nvccli": "--nvccli is not supported: satchel binds the driver itself with --nv "
              "(nvidia-container-cli is not used)",
    "pem_path": "--pem-path is not supported: satchel cannot run encrypted images",
    "passphrase": "--passphrase is not supported: satchel cannot run encrypted images",
    "containlibs": "--containlibs is not supported: bind the libraries with -B",
    "netns_path": "--netns-path is not supported: satchel provides --net --network none only",
    "boot": "--boot is not supported: satchel does not run a system init in instances",
}
_LIMIT_DESTS = ("apply_cgroups", "blkio_weight", "blkio_weight_device", "cpu_shares", "cpus",
                "cpuset_cpus", "cpuset_mems", "memory", "memory_reservation", "memory_swap",
                "oom_kill_disable", "pids_limit")
# image URIs (satchel.oci.runimage resolves them; kept here so that deciding costs no import)
URI_PREFIXES = ("docker://", "oci-archive:", "docker-archive:", "oci:", "oras://", "library://",
                "shub://", "docker-daemon:", "http://", "https://", "ipfs://")
JOIN_PREFIX = "instance://"
ECL_FILE = "ecl.toml"  # beside satchel.conf (trust/ecl.py: ecl_path)


def plan_launch(command: str, parsed, early=None):
    """exec|run|shell|test: the parsed command line -> the ContainerPlan to apply.

    early: the server action.py forked (fuse.fork_builtin). Once the image and the options
    are known, it is told the image the plan will name (plan.server_start), before the host
    is gathered and the plan built: opening the image and reading ahead is the server's
    part of the critical path, which this starts ~1 ms sooner. start_server() checks it
    against the plan.

    Temporary images (a URI without cache, --unsquash) are removed here if planning fails;
    after that they are the plan's (REAPER; discard() if the launch fails before it runs).
    """
    from satchel.runtime.config import load_config
    from satchel.runtime.host import HostInfo
    from satchel.runtime.plan import build_plan, server_start

    config = load_config()
    target = parsed.args[0]
    temporary: list[str] = []
    try:
        if target.startswith(JOIN_PREFIX):
            image, join = None, join_target(target)
        else:
            image, join = open_image_arg(target, parsed, config, temporary), None
            if getattr(parsed, "sharens", False):
                join = sharens_target(image)
        opts = run_options(command, parsed, config, cleanup=temporary, join=join)
        opts.sharens = bool(getattr(parsed, "sharens", False)) and join is None
        if early is not None and image is not None:
            wanted = server_start(config, image, os.getuid(), opts)
            if wanted is not None:
                _tell(early, wanted)
        return build_plan(opts, config, image, HostInfo.gather())
    except BaseException:
        _remove(temporary)  # the reaper did not start
        raise


def open_image_arg(target: str, parsed, config, temporary: list):
    """The ImageRef of an image argument: a URI pulled (temporary paths appended to
    `temporary`), checked against an activated ECL, extracted under --unsquash."""
    from satchel.image.formats import open_image

    path, made = resolve_image(target, parsed)
    temporary.extend(made)
    image = open_image(path)
    check_ecl(image, config.path)
    if getattr(parsed, "unsquash", False):
        image, made = unsquash(image, parsed)
        temporary.extend(made)
    return image


def check_ecl(image, config_path: str) -> None:
    """An activated ECL may refuse the image (trust/ecl.py). Most hosts have no ecl.toml:
    one failed stat decides that, and trust/ecl.py (14 KB of bytecode) is loaded only when
    the file is there (a stat failing otherwise than ENOENT is left to its reading error)."""
    try:
        os.stat(os.path.join(os.path.dirname(os.path.abspath(config_path)), ECL_FILE))
    except FileNotFoundError:
        return
    except OSError:
        pass
    from satchel.trust.ecl import enforce
    enforce(image, config_path)


def run_options(command: str, parsed, config, args=None, cleanup=(), join=None,
                instance: bool = False):
    """plan.RunOptions from the parsed options (reads --env-file, finds --nv/--rocm files).

    args: the payload's arguments (default: those after the image); instance: the options of
    an instance, which always has its own PID namespace. Derived values (--compat's
    implications) are computed here; `parsed` is not changed.
    """
    from satchel.runtime import binds
    from satchel.runtime.plan import RunOptions

    for dest, why in REFUSED.items():
        value = getattr(parsed, dest, None)
        if value and not (dest == "app" and value == ""):
            raise UsageError(why)
    _check_flags(parsed)
    compat = parsed.compat  # Apptainer: "Infers --containall, --no-init, --no-umask,
    # --no-eval, --writable-tmpfs" (no-init and no-umask are how satchel runs anyway)
    no_pid = parsed.no_pid
    if instance and no_pid:
        from satchel import log
        log.warning("--no-pid is ignored: an instance always has its own PID namespace, so "
                    "that nothing of it outlives its init")
        no_pid = False
    opts = RunOptions(
        command, parsed.args[1:] if args is None else args,
        binds=binds.from_options(parsed.bind, parsed.mount), contain=parsed.contain,
        containall=parsed.containall or compat, cleanenv=parsed.cleanenv, env=parsed.env,
        home=parsed.home, no_home=parsed.no_home, no_mount=parsed.no_mount, pwd=parsed.pwd,
        workdir=parsed.workdir, writable_tmpfs=parsed.writable_tmpfs or compat,
        overlay=parsed.overlay, pid=parsed.pid or instance, ipc=parsed.ipc, uts=parsed.uts,
        hostname=parsed.hostname, net=parsed.net, network=parsed.network,
        network_args=parsed.network_args, no_eval=parsed.no_eval or compat,
        shell=getattr(parsed, "shell", None), prog=getattr(parsed, "prog", "satchel"),
        scratch=parsed.scratch, dns=parsed.dns, no_pid=no_pid, cleanup=tuple(cleanup),
        join=join)
    opts.writable, opts.fakeroot = bool(parsed.writable), bool(parsed.fakeroot)
    opts.share = not getattr(parsed, "no_share", False)
    opts.ignore_subuid = bool(getattr(parsed, "ignore_subuid", False))
    if any(getattr(parsed, name, None) not in (None, [], False, "") for name in _LIMIT_DESTS):
        from satchel.runtime import cgroups  # resource limits: only when asked for
        opts.cgroup = cgroups.request_for_options(parsed)
    if parsed.env_file:
        opts.env_file_pairs = _env_file_pairs(parsed.env_file)
    if parsed.fusemount and join is None:
        from satchel.runtime import fusemount
        opts.fusemounts = fusemount.parse(parsed.fusemount, os.environ)
    for item in parsed.security or ():  # seccomp: only --security loads json and libseccomp
        if join is not None:
            raise UsageError("--security cannot change the processes of a running instance")
        from satchel.runtime import seccomp
        opts.seccomp = seccomp.compile_profile(item.partition(":")[2].strip())
    if join is None:
        opts.gpu = gpu_binds(parsed, config)
    return opts


def start_server(plan, early=None):
    """Start the built-in SquashFS server the plan names (ContainerPlan.server) and return
    it, for executor.apply() to adopt; None if the plan uses none.

    early: the server action.py forked before anything was known (fuse.fork_builtin), so that
    it loads its libraries meanwhile: told which image to open, or cancelled.

    A shared mount (ServerStart.share, runtime/share.py): if a container of this user runs
    the same image, a share.SharedMount attaches a clone of its mount instead (the early
    server is cancelled); else the new server's mount is shared once this container runs.
    """
    wanted = plan.server
    if early is not None and not getattr(wanted, "share", False):
        from satchel.runtime import share
        share.release_early()  # the image lock share.likely_joined took: nothing to share
    if wanted is None:
        if early is not None:
            early.cancel()  # root, a sandbox, or the squashfuse_ll program
        return None
    from satchel.runtime import fuse

    claim = None
    if getattr(wanted, "share", False):
        from satchel.runtime import share
        claim = share.claim(wanted.image, wanted.offset, os.getuid(), os.environ)
        if claim is not None and claim.joined:
            if early is not None:
                early.cancel()
            return share.SharedMount("image", claim, wanted.image)
    server = early
    if server is not None and server.told not in (None, _request(wanted)):
        server.cancel()  # told otherwise than the plan says (plan_launch): never, but if so
        server = None
    if server is None:
        server = fuse.fork_builtin("image")
    server.share = claim
    if server.told is None:
        _tell(server, wanted)
    return server


def _request(wanted) -> tuple:
    """What a server told `wanted` (plan.ServerStart) was told (fuse.BuiltinServer.told)."""
    return (wanted.image, wanted.offset, wanted.fallback_argv, wanted.reads)


def _tell(server, wanted) -> None:
    # the fallback program (squashfuse_ll) is looked up on PATH by the server, if it runs it
    server.serve_image(wanted.image, wanted.offset, wanted.fallback_argv, wanted.reads)


def discard(plan) -> None:
    """The launch failed before its reaper ran: remove the plan's temporary images."""
    for op in plan.ops_of("reaper"):
        _remove(op.data[0])


def _remove(paths) -> None:
    if paths:
        from satchel.runtime import reaper
        for path in paths:
            reaper.remove_tree(path)


def _check_flags(parsed) -> None:
    """Apptainer's flags whose meaning depends on the caller or the host.

    Accepted with no effect (README "Apptainer flags"): --drop-caps (every capability is
    dropped anyway), --underlay (missing mount points always come from satchel's underlay),
    --ignore-subuid/--ignore-userns/--ignore-fakeroot-command, --no-rocm, --runscript-timeout.
    """
    if parsed.allow_setuid:
        if os.getuid() != 0:
            raise UsageError("--allow-setuid is for root only (setuid programs never run "
                             "setuid in a container of a non-root user)")
        raise UsageError("--allow-setuid is not supported: satchel mounts every image nosuid "
                         "and sets no_new_privs, also for root")
    seccomps = 0
    for item in parsed.security or ():
        kind, _, value = item.partition(":")
        if kind.strip().lower() != "seccomp" or not value.strip():
            raise UsageError(_security_refusal(item))
        seccomps += 1
    if seccomps > 1:
        raise UsageError("--security seccomp: give one profile")
    if parsed.fusemount and parsed.args and parsed.args[0].startswith("instance://"):
        raise UsageError("--fusemount cannot add a mount to a running instance")


def _security_refusal(item: str) -> str:
    """Why --security ITEM is refused: the host lacks the LSM, or satchel does not apply it."""
    kind = item.partition(":")[0].strip().lower()
    present = {"apparmor": "/sys/kernel/security/apparmor", "selinux": "/sys/fs/selinux"}
    if kind in present and not os.path.exists(present[kind]):
        return f"--security {item}: this host has no {kind} (no {present[kind]})"
    if kind == "seccomp":
        return f"--security {item}: expected seccomp:PROFILE.json (an OCI seccomp profile)"
    if kind in ("apparmor", "selinux"):
        return (f"--security {item}: {kind} profiles are not supported by satchel "
                "(every capability is dropped and no_new_privs is set)")
    if kind in ("uid", "gid"):
        return f"--security {item}: changing uid/gid in the container is not supported"
    return f"--security {item}: unknown; expected seccomp:, apparmor:, selinux:, uid: or gid:"


def _env_file_pairs(path: str) -> list:
    """--env-file: its (name, value) pairs; UTF-8 without NUL bytes (no variable can hold
    one), else a UsageError naming the line."""
    from satchel import fsutil
    from satchel.runtime.environment import parse_env_file

    return parse_env_file(fsutil.read_user_text(path, "--env-file", UsageError), path)


def gpu_binds(parsed, config) -> list:
    """--nv/--rocm (not --no-nv): the host driver's files (hpc/gpu.py), one GpuBinds each."""
    kinds = [k for k in ("nv", "rocm") if getattr(parsed, k, False)]
    if getattr(parsed, "no_nv", False) and "nv" in kinds:
        kinds.remove("nv")
    if not kinds:
        return []
    try:
        from satchel.hpc import gpu
    except ImportError:
        from satchel.errors import ContainerError
        raise ContainerError(f"--{kinds[0]} support is not installed") from None
    return [gpu.gpu_binds(kind, config) for kind in kinds]


def sharens_target(image):
    """--sharens: the namespaces of the first container this launch's parent started from
    the same image (a JoinTarget), or None when this one is the first (runtime/share.py)."""
    from satchel.runtime import share
    from satchel.runtime.plan import JoinTarget

    found = share.sharens(image.path, image.fs_offset or 0, os.getppid(), os.getuid(),
                          os.environ)
    if found is None:
        return None
    pid, flags = found
    return JoinTarget(f"--sharens {pid}", pid, share.namespace_names(flags), image.path)


def join_target(uri: str):
    """The running instance named by instance://NAME (state records live outside the exec
    path's lean modules, so they are imported only here)."""
    from satchel.instance import state
    from satchel.runtime.plan import JoinTarget

    registry = state.Registry(state.Owner.current())
    record = registry.find(state.name_from_uri(uri))
    return JoinTarget(record.name, record.pid, record.namespaces or (), record.image or "")


def is_uri(target: str) -> bool:
    return target.startswith(URI_PREFIXES)


def resolve_image(target: str, parsed) -> tuple[str, tuple[str, ...]]:
    """An image argument -> (local path, temporary paths to remove after the container):
    URIs are pulled (satchel.oci.runimage, imported only for them); paths pass through."""
    if not is_uri(target):
        return target, ()
    from satchel.oci import runimage
    return runimage.resolve(target, parsed)


def unsquash(image, parsed) -> tuple[object, tuple[str, ...]]:
    """--unsquash: the image extracted to a temporary sandbox (under --tmpdir, else $TMPDIR
    or /tmp), which the reaper removes when the container ends."""
    if image.kind == "sandbox":
        return image, ()
    from satchel.image import squashfs
    from satchel.image.formats import open_image
    from satchel.runtime import reaper

    def extract(top: str) -> None:
        squashfs.extract(image.path, top + "/root", image.fs_offset)

    top = reaper.temp_dir("satchel-unsquash-", parsed, "--unsquash", extract)
    return open_image(top + "/root"), (top,)
