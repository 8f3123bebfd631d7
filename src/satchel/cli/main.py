"""Entry point: global options, command lookup, and the one place errors become FATAL lines.

Commands are named by module path and imported only when run (pip's pattern), so that
`satchel exec` loads nothing but the standard library modules it needs.
"""

from __future__ import annotations

import gc
import os
import sys

# The collector's default first threshold (700 new container objects) is tuned for long
# programs that make cyclic garbage; a launch makes almost none, but loading its modules and
# option tables allocates ~4,500 objects that live until the execve, so the default ran 4 young
# and 1 middle collection on the way, ~1.2 ms of a root launch. With 50,000 no
# launch collects; the long-lived helpers forked on the way (FUSE server, reaper, init) and
# the other commands still do, only less often (at most ~50,000 garbage objects, a few MB).
gc.set_threshold(50_000, 10, 10)

from satchel import log
from satchel.errors import SatchelError, UsageError

# command name -> module implementing it (module has SPECS: dict[str, Spec] and run(name, parsed))
COMMANDS: dict[str, str] = {
    "build": "satchel.cli.commands.build",
    "cache": "satchel.cli.commands.cache",
    "completion": "satchel.cli.commands.completion",
    "config": "satchel.cli.commands.config",
    "delete": "satchel.cli.commands.library",
    "dropin": "satchel.cli.commands.dropin",
    "exec": "satchel.cli.commands.action",
    "inspect": "satchel.cli.commands.inspect",
    "instance": "satchel.cli.commands.instance",
    # Singularity 2.x spellings, still sent by spython to releases it does not recognise
    "instance.list": "satchel.cli.commands.instance",
    "instance.start": "satchel.cli.commands.instance",
    "instance.stop": "satchel.cli.commands.instance",
    "key": "satchel.cli.commands.key",
    "keyserver": "satchel.cli.commands.library",
    "oci": "satchel.cli.commands.oci",
    "overlay": "satchel.cli.commands.overlay",
    "pull": "satchel.cli.commands.pull",
    "push": "satchel.cli.commands.push",
    "registry": "satchel.cli.commands.registry",
    "remote": "satchel.cli.commands.library",
    "run": "satchel.cli.commands.action",
    "run-help": "satchel.cli.commands.run_help",
    "search": "satchel.cli.commands.library",
    "shell": "satchel.cli.commands.action",
    "sif": "satchel.cli.commands.sif",
    "sign": "satchel.cli.commands.sign",
    "test": "satchel.cli.commands.action",
    "verify": "satchel.cli.commands.verify",
    "version": "satchel.cli.commands.version",
}

OCI_NAMES = ("satchel-runc",)  # drop-in names that are `satchel oci`


def global_spec():
    """satchel's global options (cli/options.py is loaded here, not by the satchel-runc
    drop-in, which never parses them)."""
    from satchel.cli import options as o
    return o.Spec(
        "",
        "[global options...] <command>",
        "satchel: run HPC containers from single-file SIF images, unprivileged.",
        options=(
            o.Opt("-d --debug", "debug",
                  help="print debugging information (highest verbosity)"),
            o.Opt("-v --verbose", "verbose", help="print additional information"),
            o.Opt("-q --quiet", "quiet", help="suppress normal output"),
            o.Opt("-s --silent", "silent", help="only print errors"),
            o.Opt("--version", "version", help="print the version and exit"),
            o.Opt("-h --help", "help", help="help for satchel"),
            o.Opt("-c --config", "config", o.VALUE, help="specify a configuration file",
                  hidden=True),
            o.Opt("--nocolor", "nocolor", help="print without color output", hidden=True),
        ),
        interspersed=False,
    )


def program_name(argv0: str) -> str:
    """The name we were called by: satchel, or a drop-in name such as apptainer/singularity."""
    base = os.path.basename(argv0 or "satchel")
    if base in ("apptainer", "singularity", "run-singularity"):
        return "singularity" if base == "run-singularity" else base
    return "satchel"


def version_line(prog: str) -> str:
    from satchel import __version__
    from satchel.compat import upstream_version
    return f"{prog} version {upstream_version(prog, __version__)}"


def load_command(name: str):
    module_path = COMMANDS.get(name)
    if module_path is None:
        raise UsageError(f"unknown command {name!r} for satchel",
                         hint="run 'satchel help' for the list of commands")
    __import__(module_path)  # importlib itself costs ~0.5 ms on the exec path
    return sys.modules[module_path]


def general_help(prog: str) -> str:
    from satchel.cli import options as o
    lines = [o.format_help(global_spec(), prog).rstrip(), "", "Available Commands:"]
    for name in sorted(COMMANDS):
        if "." in name:  # legacy spellings work but are not advertised
            continue
        try:
            spec = load_command(name).SPECS[name]
            summary = spec.summary
        except Exception:  # a broken command must not break `help`
            summary = ""
        lines.append(f"  {name.ljust(12)}{summary}")
    lines += ["", f"Run '{prog} help <command>' for more about a command.", ""]
    return "\n".join(lines)


def command_help(prog: str, name: str) -> str:
    from satchel.cli import options as o
    module = load_command(name)
    return o.format_help(module.SPECS[name], prog)


def dispatch(prog: str, argv: list[str]) -> int:
    from satchel.cli import options as o
    glob = o.parse(global_spec(), argv, environ_defaults=False)
    if glob.debug:
        log.set_level(log.DEBUG)
    elif glob.verbose:
        log.set_level(log.VERBOSE)
    elif glob.silent:
        log.set_level(log.SILENT)
    elif glob.quiet:
        log.set_level(log.QUIET)
    if glob.version:
        print(version_line(prog))
        return 0
    if not glob.args:
        sys.stdout.write(general_help(prog))
        return 0 if glob.help else 1
    name, rest = glob.args[0], glob.args[1:]
    if glob.help:
        sys.stdout.write(command_help(prog, name))
        return 0
    if name == "help":
        sys.stdout.write(command_help(prog, rest[0]) if rest else general_help(prog))
        return 0
    module = load_command(name)
    if hasattr(module, "run_argv"):  # oci: runc's own flag syntax, parsed by the command
        return module.run_argv(rest)
    spec = module.SPECS[name]
    if rest and rest[0] in ("-h", "--help"):
        sys.stdout.write(o.format_help(spec, prog))
        return 0
    try:
        parsed = o.parse(spec, rest)
    except o.HelpRequested:  # `satchel cache list --help`: help wherever the flag stands
        sys.stdout.write(o.format_help(spec, prog))
        return 0
    parsed.prog = prog
    return module.run(name, parsed)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv
    prog = program_name(argv[0] if argv else "satchel")
    args = list(argv[1:])
    if argv and os.path.basename(argv[0]) == "run-singularity":
        # `#!/usr/bin/env run-singularity` heads SIF and .simg files: ./image.sif ARGS
        # means `singularity run ./image.sif ARGS`
        args = ["run"] + args
    elif argv and os.path.basename(argv[0]) in OCI_NAMES:
        # the satchel-runc drop-in: runc's command line, straight to `satchel oci` (no global
        # options of ours: containerd's shim starts it four times per container)
        return guarded(lambda: load_command("oci").run_argv(args))
    return guarded(lambda: dispatch(prog, args))


def guarded(call) -> int:
    """call()'s exit status; errors become one FATAL line (the only place they do)."""
    try:
        return call()
    except SatchelError as err:
        if log.debug_enabled():
            import traceback
            traceback.print_exc()
        log.fatal_line(err.message)
        if err.hint and log.level() >= log.QUIET:
            sys.stderr.write(f"         hint: {err.hint}\n")
        return 255
    except KeyboardInterrupt:
        log.fatal_line("interrupted")
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = None  # silence the flush at exit
        except Exception:
            pass
        return 141
    except Exception as err:  # a bug: one line, traceback only under --debug
        if log.debug_enabled():
            import traceback
            traceback.print_exc()
        log.fatal_line(f"unexpected error (this is a bug in satchel): {type(err).__name__}: {err}")
        return 255


if __name__ == "__main__":
    raise SystemExit(main())
