"""satchel instance start|run|list|stop, and the legacy instance.start/.list/.stop forms.

Wiring only: satchel.instance.lifecycle starts and stops, satchel.instance.state lists.
Singularity 2.x spelled the subcommands `instance.start` etc.; spython still sends
`instance.stop --all` to releases it does not recognise, so those names are accepted too.
"""

from __future__ import annotations

from satchel.cli import options as o
from satchel.errors import UsageError

_START_EXTRA = [
    o.Opt("--pid-file", "pid_file", o.VALUE, metavar="path",
          help="write the instance's process id to this file"),
]


def _start_options():
    from satchel.cli.commands.action import ACTION_OPTIONS
    return ACTION_OPTIONS + _START_EXTRA


_LIST_OPTIONS = (
    o.Opt("-j --json", "json", help="print structured json instead of a table"),
    o.Opt("-l --logs", "logs", help="show the paths of the instances' stdout/stderr logs"),
    o.Opt("-u --user", "user", o.VALUE, help="if running as root, list instances of this user"),
    o.Opt("-a --all", "all", hidden=True, help="accepted: every instance is listed anyway"),
)
_STOP_OPTIONS = (
    o.Opt("-a --all", "all", help="stop all of the user's instances"),
    o.Opt("-F --force", "force", help="kill the instance at once (SIGKILL)"),
    o.Opt("-s --signal", "signal", o.VALUE,
          help="signal to send to the instance (15, TERM or SIGTERM; default SIGTERM)"),
    o.Opt("-t --timeout", "timeout", o.VALUE, metavar="seconds",
          help="kill an instance that has not stopped after this many seconds (default 10)"),
    o.Opt("-u --user", "user", o.VALUE, help="if running as root, stop instances of this user"),
)


def _sub_specs() -> dict:
    start_opts = _start_options()
    return {
        "start": o.Spec(
            "instance start", "instance start [start options...] <container path> "
            "<instance name> [startscript args...]",
            "Start a named instance of the given container image",
            description=("Starts the container in the background, running its %startscript\n"
                         "(if any) with the arguments given; the instance stays up until\n"
                         "'instance stop'. Join it with exec|run|shell instance://NAME."),
            options=start_opts, min_args=2, interspersed=False),
        "run": o.Spec(
            "instance run", "instance run [run options...] <container path> "
            "<instance name> [runscript args...]",
            "Run a named instance of the given container image (its runscript)",
            options=start_opts, min_args=2, interspersed=False),
        "list": o.Spec(
            "instance list", "instance list [list options...] [<instance name glob>]",
            "List all running and named instances", options=_LIST_OPTIONS, max_args=1),
        "stop": o.Spec(
            "instance stop", "instance stop [stop options...] [<instance name glob>]",
            "Stop a named instance of a given container image", options=_STOP_OPTIONS,
            max_args=1),
    }


def _group_spec() -> o.Spec:
    return o.Spec("instance", "instance <start|run|list|stop> [options...]",
                  "Manage containers running as services",
                  description=("Instances run containers in the background, as services.\n"
                               "Subcommands: start, run, list, stop (see 'instance <sub> "
                               "--help')."),
                  min_args=1, interspersed=False)


class _LazySpecs(dict):
    """SPECS without importing action.py's option table until a spec is asked for."""

    _NAMES = ("instance", "instance.start", "instance.list", "instance.stop")

    def __missing__(self, key):
        if key == "instance":
            spec = _group_spec()
        elif key in self._NAMES:
            spec = _sub_specs()[key.split(".", 1)[1]]
        else:
            raise KeyError(key)
        self[key] = spec
        return spec

    def __contains__(self, key):
        return key in self._NAMES


SPECS = _LazySpecs()


def run(name: str, parsed) -> int:
    prog = getattr(parsed, "prog", "satchel")
    if name == "instance":
        sub, rest = parsed.args[0], parsed.args[1:]
        specs = _sub_specs()
        if sub not in specs:
            raise UsageError(f"unknown instance subcommand {sub!r}: use start, run, list or "
                             "stop")
        spec = specs[sub]
        if rest and rest[0] in ("-h", "--help"):
            import sys
            sys.stdout.write(o.format_help(spec, prog))
            return 0
        parsed = o.parse(spec, rest)
        parsed.prog = prog
    else:  # legacy instance.start / instance.list / instance.stop
        sub = name.split(".", 1)[1]
    return _RUNNERS[sub](sub, parsed, prog)


def _start(sub: str, parsed, prog: str) -> int:
    from satchel import log
    from satchel.instance import lifecycle

    record = lifecycle.start("start" if sub == "start" else "run", parsed, prog)
    log.info(f"instance started successfully: {record.name} (PID={record.pid})")
    return 0


def _list(sub: str, parsed, prog: str) -> int:
    import sys

    from satchel.instance import state

    registry = state.Registry(state.Owner.select(parsed.user))
    pattern = parsed.args[0] if parsed.args else "*"
    records = registry.running(pattern)
    if parsed.json:
        import json
        sys.stdout.write(json.dumps({"instances": [r.listing() for r in records]}, indent=4)
                         + "\n")
        return 0
    if parsed.logs:
        # Apptainer's layout: the .err path on the instance's line, the .out path below it
        rows = [("INSTANCE NAME", "PID", "LOGS", "")]
        rows += [(r.name, str(r.pid), r.log_err or "", r.log_out or "") for r in records]
    else:
        rows = [("INSTANCE NAME", "PID", "IP", "IMAGE")]
        rows += [(r.name, str(r.pid), r.ip or "", r.image or "") for r in records]
    width = [max(len(row[i]) for row in rows) + 4 for i in range(3)]
    for row in rows:
        if parsed.logs:
            sys.stdout.write(f"{row[0]:<{width[0]}}{row[1]:<{width[1]}}{row[2]}\n")
            if row[3]:
                sys.stdout.write(" " * (width[0] + width[1]) + row[3] + "\n")
        else:
            sys.stdout.write("".join(f"{row[i]:<{width[i]}}" for i in range(3)) + row[3] + "\n")
    return 0


def _stop(sub: str, parsed, prog: str) -> int:
    from satchel import log
    from satchel.errors import InstanceError
    from satchel.instance import lifecycle, state

    if parsed.all and parsed.args:
        raise UsageError("give an instance name or --all, not both")
    if not parsed.all and not parsed.args:
        raise UsageError("instance stop needs an instance name (or --all)",
                         hint=f"run '{prog} instance stop --help' for usage")
    signum = lifecycle.parse_signal(parsed.signal) if parsed.signal else None
    timeout = float(lifecycle.DEFAULT_STOP_TIMEOUT)
    if parsed.timeout is not None:
        try:
            timeout = float(parsed.timeout)
        except ValueError:
            raise UsageError(f"invalid --timeout {parsed.timeout!r}: expected seconds") from None
        if timeout < 0:
            raise UsageError(f"invalid --timeout {parsed.timeout!r}: must not be negative")
    registry = state.Registry(state.Owner.select(parsed.user))
    pattern = "*" if parsed.all else parsed.args[0]
    if not parsed.all:
        state.check_name(pattern.replace("*", "x").replace("?", "x").replace("[", "x")
                         .replace("]", "x"))
    records = registry.running(pattern)
    if not records:
        if parsed.all:
            log.verbose("no instance to stop")
            return 0
        raise InstanceError(f"no instance found with name {pattern}")
    failed = []
    for record in records:
        log.info(f"Stopping {record.name} instance of {record.image} (PID={record.pid})")
        try:
            lifecycle.stop(registry, record, signum, timeout, parsed.force)
        except InstanceError as err:
            log.error(err.message)
            failed.append(record.name)
    if failed:
        raise InstanceError(f"could not stop instance(s): {', '.join(failed)}")
    return 0


_RUNNERS = {"start": _start, "run": _start, "list": _list, "stop": _stop}
