"""exec, run, shell, test: parse the options, open the image, plan the container, apply the plan.

Wiring only: the decisions live in satchel.runtime.plan, the system calls in
satchel.runtime.executor. On the exec path, so only lean modules are imported at load time.

The option table is data (ACTION_OPTIONS): each Opt names its Apptainer flags and the
APPTAINER_/SINGULARITY_ variables that give its default; runtime/launch.py maps parsed values
onto plan.RunOptions (and refuses what satchel does not support). run() makes one call down,
launch.plan_launch(), and applies the plan it gets back.
"""

from __future__ import annotations

from satchel.cli import options as o


def _env(*names: str) -> tuple[str, ...]:
    return tuple(f"{prefix}_{n}" for n in names for prefix in ("APPTAINER", "SINGULARITY"))


ACTION_OPTIONS = [
    o.Opt("-B --bind", "bind", o.LIST, metavar="spec",
          help="a user-bind path specification: src[:dest[:ro|rw]] (comma-separated list)"),
    o.Opt("--mount", "mount", o.LIST, metavar="spec",
          help="a mount specification: type=bind,source=/opt,destination=/hostopt[,ro]",
          env=_env("MOUNT")),
    o.Opt("-c --contain", "contain", env=_env("CONTAIN"),
          help="use minimal /dev and empty other directories (e.g. /tmp and $HOME) instead of "
               "sharing filesystems from your host"),
    o.Opt("-C --containall", "containall", env=_env("CONTAINALL"),
          help="contain not only file systems, but also PID, IPC, and environment"),
    o.Opt("-e --cleanenv", "cleanenv", env=_env("CLEANENV"),
          help="clean environment before running container"),
    o.Opt("--env", "env", o.LIST, metavar="stringToString",
          help="pass environment variable to contained process (KEY=VALUE,...)"),
    o.Opt("--env-file", "env_file", o.VALUE, env=_env("ENV_FILE"),
          help="pass environment variables from file"),
    o.Opt("-H --home", "home", o.VALUE, env=_env("HOME"),
          help="a home directory specification: src[:dest]"),
    o.Opt("--no-home", "no_home", env=_env("NO_HOME"),
          help="do NOT mount users home directory if /home is not the current working "
               "directory"),
    o.Opt("--no-mount", "no_mount", o.LIST, env=_env("NO_MOUNT"),
          help="disable one or more 'mount xxx' options set in satchel.conf and/or specify "
               "absolute destination path to disable a bind path entry, or 'bind-paths' to "
               "disable all bind path entries"),
    o.Opt("--cwd --pwd", "pwd", o.VALUE, env=_env("CWD", "PWD", "TARGET_PWD"),
          help="initial working directory for payload process inside the container"),
    o.Opt("-W --workdir", "workdir", o.VALUE, env=_env("WORKDIR"),
          help="working directory to be used for /tmp, /var/tmp and $HOME (if -c/--contain "
               "was also used)"),
    o.Opt("--writable-tmpfs", "writable_tmpfs", env=_env("WRITABLE_TMPFS"),
          help="makes the file system accessible as read-write with non persistent data"),
    o.Opt("-o --overlay", "overlay", o.LIST, env=_env("OVERLAY"),
          help="use an overlayFS directory for persistent data"),
    o.Opt("-p --pid", "pid", env=_env("PID", "UNSHARE_PID"), help="run container in a new PID "
          "namespace"),
    o.Opt("-i --ipc", "ipc", env=_env("IPC", "UNSHARE_IPC"),
          help="run container in a new IPC namespace"),
    o.Opt("--uts", "uts", env=_env("UTS", "UNSHARE_UTS"), help="run container in a new UTS "
          "namespace"),
    o.Opt("--hostname", "hostname", o.VALUE, env=_env("HOSTNAME"),
          help="set container hostname (implies --uts)"),
    o.Opt("-n --net", "net", env=_env("NET", "UNSHARE_NET"),
          help="run container in a new network namespace (with --network none: loopback "
               "only; the only network satchel provides)"),
    o.Opt("--network", "network", o.VALUE, env=_env("NETWORK"),
          help="specify desired network type separated by commas, each network will bring "
               "up a dedicated interface inside container (satchel: none)"),
    o.Opt("--network-args", "network_args", o.LIST, env=_env("NETWORK_ARGS"),
          help="specify network arguments to pass to CNI plugins (no effect with none)"),
    o.Opt("-u --userns", "userns", env=_env("USERNS", "UNSHARE_USERNS"),
          help="run container in a new user namespace (the default for non-root users)"),
    o.Opt("--no-eval", "no_eval", env=_env("NO_EVAL"),
          help="do not shell evaluate env vars or OCI container CMD/ENTRYPOINT/ARGS"),
    o.Opt("--nv", "nv", env=_env("NV"), help="enable Nvidia support"),
    o.Opt("--rocm", "rocm", env=_env("ROCM"), help="enable experimental Rocm support"),
    o.Opt("-S --scratch", "scratch", o.LIST, env=_env("SCRATCH"),
          help="include a scratch directory within the container that is linked to a "
               "temporary dir (use -W to force location)"),
    o.Opt("--compat", "compat", env=_env("COMPAT"),
          help="apply settings for increased OCI/Docker compatibility. Infers --containall, "
               "--no-init, --no-umask, --no-eval, --writable-tmpfs."),
    o.Opt("--dns", "dns", o.VALUE, env=_env("DNS"),
          help="list of DNS server separated by commas to add in resolv.conf"),
    o.Opt("--no-pid", "no_pid", env=_env("NO_PID"),
          help="do not run container in a new PID namespace (overrides --containall)"),
    o.Opt("--no-share", "no_share", env=("SATCHEL_NO_SHARE",),
          help="do not share the image mount with your other containers of the same image"),
    o.Opt("--tmpdir", "tmpdir", o.VALUE, env=_env("TMPDIR"),
          help="specify a temporary directory to use for build and --unsquash"),
    o.Opt("--unsquash", "unsquash", env=_env("UNSQUASH"),
          help="convert SIF file to temporary sandbox before running"),
    o.Opt("--fusemount", "fusemount", o.LIST, env=_env("FUSESPEC"),
          help="a FUSE filesystem mount specification of the form '<type>:<fuse command> "
               "<mountpoint>' - where <type> is 'host' or 'container'"),
    o.Opt("--security", "security", o.LIST, env=_env("SECURITY"),
          help="enable security features (seccomp:profile.json; SELinux, AppArmor where "
               "the host has them)"),
    o.Opt("--disable-cache", "disable_cache", env=_env("DISABLE_CACHE"),
          help="do not use or create cache (images given as URIs: a temporary SIF)"),
    o.Opt("--no-https --nohttps", "nohttps", env=_env("NOHTTPS", "NO_HTTPS"),
          help="use http instead of https for docker:// registries"),
    o.Opt("--docker-login", "docker_login", env=_env("DOCKER_LOGIN"),
          help="login to a Docker Repository interactively"),
    o.Opt("--docker-username", "docker_username", o.VALUE, env=_env("DOCKER_USERNAME"),
          hidden=True, help="specify a username for docker authentication"),
    o.Opt("--docker-password", "docker_password", o.VALUE, env=_env("DOCKER_PASSWORD"),
          hidden=True, help="specify a password for docker authentication"),
    o.Opt("--docker-host", "docker_host", o.VALUE, env=_env("DOCKER_HOST"), hidden=True,
          help="specify a custom Docker daemon host (docker-daemon: sources are not supported)"),
    o.Opt("--authfile", "authfile", o.VALUE, env=_env("AUTH_FILE"),
          help="Docker-style authentication file to use for reading OCI registry credentials"),
    # resource limits (cgroups): satchel.runtime.cgroups
    o.Opt("--apply-cgroups", "apply_cgroups", o.VALUE, env=_env("APPLY_CGROUPS"),
          help="apply cgroups from file for container processes (root, or cgroup v2 with a "
               "delegated subtree)"),
    o.Opt("--blkio-weight", "blkio_weight", o.VALUE, env=_env("BLKIO_WEIGHT"),
          help="Block IO relative weight in range 10-1000, 0 to disable"),
    o.Opt("--blkio-weight-device", "blkio_weight_device", o.LIST,
          env=_env("BLKIO_WEIGHT_DEVICE"), help="Device specific block IO relative weight"),
    o.Opt("--cpu-shares", "cpu_shares", o.VALUE, env=_env("CPU_SHARES"),
          help="CPU shares for container (default -1)"),
    o.Opt("--cpus", "cpus", o.VALUE, env=_env("CPUS"),
          help="Number of CPUs available to container"),
    o.Opt("--cpuset-cpus", "cpuset_cpus", o.VALUE, env=_env("CPUSET_CPUS"),
          help="List of host CPUs available to container"),
    o.Opt("--cpuset-mems", "cpuset_mems", o.VALUE, env=_env("CPUSET_MEMS"),
          help="List of host memory nodes available to container"),
    o.Opt("--memory", "memory", o.VALUE, env=_env("MEMORY"),
          help="Memory limit in bytes"),
    o.Opt("--memory-reservation", "memory_reservation", o.VALUE,
          env=_env("MEMORY_RESERVATION"), help="Memory soft limit in bytes"),
    o.Opt("--memory-swap", "memory_swap", o.VALUE, env=_env("MEMORY_SWAP"),
          help="Swap limit, use -1 for unlimited swap"),
    o.Opt("--oom-kill-disable", "oom_kill_disable", env=_env("OOM_KILL_DISABLE"),
          help="Disable OOM killer"),
    o.Opt("--pids-limit", "pids_limit", o.VALUE, env=_env("PIDS_LIMIT"),
          help="Limit number of container PIDs, use -1 for unlimited"),
    # accepted because they are harmless here
    o.Opt("--no-init --noinit", "no_init", env=_env("NOINIT"), hidden=True,
          help="do not start a shim process with --pid (init here is already minimal)"),
    o.Opt("--no-privs", "no_privs", hidden=True,
          help="drop all privileges from root user in container (always done)"),
    o.Opt("--no-umask", "no_umask", hidden=True, help="do not propagate umask (it is kept)"),
    o.Opt("--no-nv", "no_nv", hidden=True, help="do not enable Nvidia support"),
    o.Opt("--no-rocm", "no_rocm", hidden=True, help="do not enable ROCm support"),
    o.Opt("--drop-caps", "drop_caps", o.VALUE, env=_env("DROP_CAPS"), hidden=True,
          help="a comma separated capability list to drop (satchel drops them all anyway)"),
    o.Opt("--underlay", "underlay", env=_env("UNDERLAY"), hidden=True,
          help="use underlay (satchel makes missing mount points with its own underlay)"),
    o.Opt("--ignore-subuid", "ignore_subuid", hidden=True,
          help="--fakeroot maps root alone, ignoring /etc/subuid and /etc/subgid"),
    o.Opt("--ignore-userns", "ignore_userns", hidden=True,
          help="ignore user namespaces (no effect: satchel needs none as root)"),
    o.Opt("--ignore-fakeroot-command", "ignore_fakeroot_command", hidden=True,
          help="ignore fakeroot command (no effect: --fakeroot is refused)"),
    o.Opt("--runscript-timeout", "runscript_timeout", o.VALUE, hidden=True,
          help="timeout for the runscript of OCI images (no effect here)"),
    # refused with a clear message rather than silently ignored
    o.Opt("-f --fakeroot", "fakeroot", env=_env("FAKEROOT"),
          help="run as uid 0 of a user namespace mapped from /etc/subuid and /etc/subgid"),
    o.Opt("-w --writable", "writable", env=_env("WRITABLE"),
          help="write into a sandbox directory, or into a SIF's overlay partition"),
    o.Opt("--keep-privs", "keep_privs", hidden=True, help="not supported"),
    o.Opt("--add-caps", "add_caps", o.VALUE, hidden=True, help="not supported"),
    o.Opt("--app", "app", o.VALUE, hidden=True, help="not supported yet"),
    o.Opt("--allow-setuid", "allow_setuid", env=_env("ALLOW_SETUID"), hidden=True,
          help="root only; refused"),
    o.Opt("--nvccli", "nvccli", env=_env("NVCCLI"), hidden=True, help="not supported"),
    o.Opt("--pem-path", "pem_path", o.VALUE, env=_env("PEM_PATH"), hidden=True,
          help="not supported (encrypted images)"),
    o.Opt("--passphrase", "passphrase", hidden=True, help="not supported (encrypted images)"),
    o.Opt("--sharens", "sharens", env=_env("SHARENS"),
          help="share the namespaces of the first container the same parent process started "
               "from the same image"),
    o.Opt("--containlibs", "containlibs", o.LIST, env=_env("CONTAINLIBS"), hidden=True,
          help="not supported"),
    o.Opt("--netns-path", "netns_path", o.VALUE, env=_env("NETNS_PATH"), hidden=True,
          help="not supported"),
    o.Opt("--boot", "boot", hidden=True, help="not supported"),
]
SHELL_OPTIONS = [o.Opt("-s --shell", "shell", o.VALUE, env=_env("SHELL"),
                       help="path to program to use for interactive shell")]
_USAGE = {
    "exec": ("exec [exec options...] <container> <command>",
             "Run a command within a container", 2),
    "run": ("run [run options...] <container> [args...]",
            "Run the user-defined default command within a container", 1),
    "shell": ("shell [shell options...] <container>",
              "Run a shell within a container", 1),
    "test": ("test [exec options...] <image path>",
             "Run the user-defined tests within a container", 1),
}


def _spec(name: str) -> o.Spec:
    usage, summary, min_args = _USAGE[name]
    opts = ACTION_OPTIONS + (SHELL_OPTIONS if name == "shell" else [])
    return o.Spec(name, usage, summary, options=opts, min_args=min_args, interspersed=False)


SPECS = {name: _spec(name) for name in _USAGE}


def _regular_file(path: str) -> bool:
    import os
    import stat

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def run(name: str, parsed) -> int:
    """One call down (launch.plan_launch: the parsed options in, the plan out), then start
    the FUSE server the plan names and apply the plan."""
    import os

    from satchel.runtime import launch

    target = parsed.args[0]
    early = None
    if (os.getuid() != 0 and not target.startswith(launch.JOIN_PREFIX) and not parsed.unsquash
            and not launch.is_uri(target) and _regular_file(target)):
        # an image file, run without privilege: a FUSE server will likely serve it. Forked
        # now, it loads its libraries while we import and plan (launch.plan_launch then
        # tells it the image, launch.start_server checks that or cancels it). Not when this user's container of the image
        # runs: its mount is joined (runtime/share.py) and the server would be cancelled.
        from satchel.runtime import fuse, share
        if parsed.no_share or not share.likely_joined(target, os.getuid(), os.environ):
            early = fuse.fork_builtin("image")
    from satchel import log

    try:
        plan = launch.plan_launch(name, parsed, early)
    except BaseException:
        if early is not None:
            early.cancel()
        raise
    for warning in plan.warnings:
        log.warning(warning)
    if log.debug_enabled():
        import json
        log.debug("container plan: " + json.dumps(plan.to_dict(), indent=1))
    try:
        server = launch.start_server(plan, early)
        from satchel.runtime import executor
        executor.apply(plan, server)
    except BaseException:
        launch.discard(plan)  # the reaper did not start: remove the temporary image here
        raise
    return 255  # not reached: apply() execs the payload or raises
