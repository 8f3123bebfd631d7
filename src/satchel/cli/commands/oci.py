"""satchel oci (and the `satchel-runc` drop-in): runc's command line over satchel's runtime.

The flags are runc's, as containerd's shim, conmon and CRI-O send them, parsed the way Go's
flag package reads them (`-x`, `--x`, `--x=v`, `-flag` for long names). Wiring only: the
lifecycle is ocirt/lifecycle.py, the record ocirt/state.py, the container ocirt/plan.py.
Errors go to stderr as one FATAL line and, with --log, to that file (JSON with --log-format
json: the shim reports the last "msg" of its log.json).
"""

from __future__ import annotations

import os
import sys

from satchel import log
from satchel.errors import SatchelError, UsageError


def __getattr__(name: str):
    """SPECS, built when `satchel help` asks: cli/options.py is not loaded by the runtime
    calls (containerd's shim starts satchel-runc four times per container)."""
    if name != "SPECS":
        raise AttributeError(name)
    from satchel.cli import options as o
    return {
        "oci": o.Spec(
            "oci", "oci [runc global options] <create|start|state|kill|delete|run|exec|ps|list|"
            "features> [options] <id>",
            "Run OCI bundles with runc's command line (containerd, Podman, Kubernetes)",
            description=(
                "A runc-compatible low-level runtime. Global options: --root DIR, --log FILE,\n"
                "--log-format text|json, --debug, --systemd-cgroup (accepted). `satchel dropin\n"
                "--name satchel-runc DIR` installs it as DIR/satchel-runc for\n"
                "`ctr run --runc-binary` and `podman --runtime`."),
            interspersed=False),
    }

GLOBAL_VALUES = ("root", "log", "log-format", "rootless", "criu")
GLOBAL_FLAGS = ("debug", "systemd-cgroup", "help", "version")
# command -> (value options, flag options, short aliases)
COMMAND_OPTIONS = {
    "create": (("bundle", "pid-file", "console-socket", "preserve-fds", "pidfd-socket"),
               ("no-pivot", "no-new-keyring"), {"b": "bundle"}),
    "run": (("bundle", "pid-file", "console-socket", "preserve-fds", "pidfd-socket"),
            ("no-pivot", "no-new-keyring", "detach", "keep", "no-subreaper"),
            {"b": "bundle", "d": "detach"}),
    "start": ((), (), {}),
    "state": ((), (), {}),
    "kill": ((), ("all",), {"a": "all"}),
    "delete": ((), ("force",), {"f": "force"}),
    "exec": (("process", "pid-file", "console-socket", "cwd", "env", "user", "preserve-fds",
              "cap", "process-label", "apparmor", "additional-gids", "pidfd-socket"),
             ("detach", "tty", "no-new-privs", "ignore-paused", "no-subreaper"),
             {"p": "process", "d": "detach", "t": "tty", "e": "env", "u": "user", "c": "cap",
              "g": "additional-gids"}),
    "ps": (("format",), (), {"f": "format"}),
    "list": (("format",), ("quiet",), {"f": "format", "q": "quiet"}),
    "features": ((), (), {}),
}
LISTS = ("env", "cap", "additional-gids")


def parse_flags(argv: list[str], values, flags, short: dict, stop_at_positional: bool):
    """Go flag semantics: -name/--name, -name=v, value in the next word. Returns
    (options dict, positional args)."""
    out: dict = {name: [] for name in LISTS if name in values}
    rest = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i + 1:]
            break
        if not arg.startswith("-") or arg == "-":
            if stop_at_positional:
                rest += argv[i:]
                break
            rest.append(arg)
            i += 1
            continue
        name, eq, inline = arg.lstrip("-").partition("=")
        name = short.get(name, name)
        if name in flags:
            out[name] = inline.lower() not in ("false", "0") if eq else True
        elif name in values:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: {arg}")
                inline = argv[i]
            if name in LISTS:
                out[name].append(inline)
            else:
                out[name] = inline
        else:
            raise UsageError(f"flag provided but not defined: {arg}")
        i += 1
    return out, rest


class _LogFile:
    """--log FILE: errors appended as runc writes them (logrus text or JSON)."""

    def __init__(self, path: str | None, fmt: str):
        self.path, self.fmt = path, fmt

    def error(self, message: str) -> None:
        if not self.path:
            return
        from satchel.ocirt.lifecycle import _now
        if self.fmt == "json":
            from satchel.ocirt import jsonlite
            line = jsonlite.dumps({"level": "error", "msg": message, "time": _now()})
        else:
            line = f'time="{_now()}" level=error msg="{message}"'
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass


def run_argv(argv: list[str]) -> int:
    """Entry of `satchel oci ARGS` and of the satchel-runc drop-in."""
    glob, rest = parse_flags(argv, GLOBAL_VALUES, GLOBAL_FLAGS, {"h": "help", "v": "version"},
                             True)
    logfile = _LogFile(glob.get("log"), glob.get("log-format", "text"))
    if glob.get("log-format", "text") not in ("text", "json"):
        raise UsageError(f"--log-format {glob['log-format']!r}: expected text or json")
    if glob.get("debug"):
        log.set_level(log.DEBUG)
    if glob.get("version"):
        from satchel import __version__
        print(f"satchel-runc version {__version__}\nspec: 1.2.0")
        return 0
    if not rest or glob.get("help"):
        from satchel.cli import options as o
        spec = __getattr__("SPECS")["oci"]
        sys.stdout.write(o.format_help(spec, "satchel") + "\nCommands: " +
                         ", ".join(COMMAND_OPTIONS) + "\n")
        return 0 if glob.get("help") else 1
    command, args = rest[0], rest[1:]
    if command not in COMMAND_OPTIONS:
        raise UsageError(f"unknown oci command {command!r}")
    try:
        return _run(command, args, glob)
    except SatchelError as err:
        logfile.error(err.message)
        raise


def _store(glob):
    from satchel.ocirt import state
    return state.Store(glob.get("root") or state.default_root())


def _one_id(args, command: str, most: int = 1) -> str:
    if not args or (most is not None and len(args) > most):
        raise UsageError(f"{command}: expected a container id")
    return args[0]


def _dumps(value, indent=None) -> str:
    """JSON for stdout: `features` indented for people (json is imported there only); what
    the shim and conmon parse (state, ps, list) through jsonlite, which costs no imports."""
    if indent:
        import json
        return json.dumps(value, indent=indent)
    from satchel.ocirt import jsonlite
    return jsonlite.dumps(value)


def _run(command: str, argv: list[str], glob) -> int:
    from satchel.ocirt import state

    values, flags, short = COMMAND_OPTIONS[command]
    opts, args = parse_flags(argv, values, flags, short, command == "exec")
    store = _store(glob)
    if command == "delete" and opts.get("force") and len(args) == 1 and \
            not store.exists(args[0]):
        return 0  # runc: delete --force of a missing container succeeds (the shim's last call)
    from satchel.ocirt import lifecycle
    if command == "features":
        print(_dumps(features(), indent=2))
        return 0
    if command == "list":
        return _list(store, opts)
    if command in ("create", "run"):
        cid = _one_id(args, command)
        bundle = os.path.abspath(opts.get("bundle") or ".")
        lifecycle.create(store, cid, bundle, opts.get("pid-file"), opts.get("console-socket"),
                         subreaper=command == "run" and not opts.get("detach"))
        if command == "create":
            return 0
        record = store.load(cid)
        lifecycle.start(store, cid)
        if opts.get("detach"):
            return 0
        status = lifecycle.wait_for(record["pid"])
        if not opts.get("keep"):
            lifecycle.delete(store, cid, True)
        return status
    cid = _one_id(args, command, most=None if command in ("kill", "exec") else 1)
    if command == "start":
        lifecycle.start(store, cid)
    elif command == "state":
        print(_dumps(state.public_state(store.load(cid), store)))
    elif command == "kill":
        if len(args) > 2:
            raise UsageError("kill: expected a container id and an optional signal")
        sig = lifecycle.parse_signal(args[1]) if len(args) > 1 else 15
        lifecycle.kill(store, cid, sig, bool(opts.get("all")))
    elif command == "delete":
        try:
            lifecycle.delete(store, cid, bool(opts.get("force")))
        except SatchelError as err:
            if opts.get("force") and "does not exist" in err.message:
                return 0  # runc: delete --force of a missing container succeeds
            raise
    elif command == "ps":
        record = store.load(cid)
        pids = lifecycle.pids(record)
        if opts.get("format", "table") == "json":
            print(_dumps(pids))
        else:
            print("PID")
            for pid in pids:
                print(pid)
    elif command == "exec":
        return _exec(store, cid, args[1:], opts)
    return 0


def _exec(store, cid: str, cmd: list[str], opts) -> int:
    from satchel.ocirt import lifecycle
    from satchel.ocirt import spec as specmod

    if opts.get("process"):
        from satchel import fsutil
        try:
            from satchel.ocirt import jsonlite
            data = jsonlite.loads(fsutil.read_regular(opts["process"], follow=True))
        except (OSError, ValueError) as err:
            raise UsageError(f"--process {opts['process']}: {err}") from None
        process = specmod.parse_process(data)
    else:
        if not cmd:
            raise UsageError("exec: give a command or --process FILE")
        process = lifecycle.exec_from_args(store.load(cid), cmd, opts.get("env", []),
                                           opts.get("cwd"), opts.get("user"),
                                           bool(opts.get("tty")))
    return lifecycle.exec_process(store, cid, process, opts.get("pid-file"),
                                  opts.get("console-socket"), bool(opts.get("detach")))


def _list(store, opts) -> int:
    from satchel.ocirt import state
    rows = []
    for cid in store.ids():
        try:
            rows.append(state.public_state(store.load(cid), store))
        except SatchelError:
            continue
    if opts.get("quiet"):
        for row in rows:
            print(row["id"])
    elif opts.get("format", "table") == "json":
        print(_dumps(rows))
    else:
        print(f"{'ID':<20}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}CREATED")
        for r in rows:
            print(f"{r['id']:<20}{r['pid']:<10}{r['status']:<10}{r['bundle']:<40}{r['created']}")
    return 0


def features() -> dict:
    """What `runc features` reports (runtime-spec features.md), for what satchel provides."""
    from satchel.ocirt import ops, spec
    from satchel.runtime import seccomp
    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": sorted(list(ops.MOUNT_OPTIONS) + list(ops.PROPAGATION)),
        "linux": {
            "namespaces": [n for n in spec.NAMESPACE_TYPES if n != "time"],
            "capabilities": list(ops.CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True, "actions": sorted(seccomp.ACTIONS),
                        "operators": sorted(seccomp.OPERATORS)},
            "apparmor": {"enabled": False}, "selinux": {"enabled": False},
        },
        "annotations": {"org.opencontainers.runc.version": "satchel"},
    }


def run(name: str, parsed) -> int:
    return run_argv(list(parsed.args))
