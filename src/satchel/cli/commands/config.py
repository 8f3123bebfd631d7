"""satchel config fakeroot|global: the administrator's settings (Apptainer's `config`).

The two subcommands give the same short flags different meanings (-r is --remove for
fakeroot, --reset for global; -d --disable or --dry-run), as Apptainer's do, so `config`
takes its subcommand first and the rest is parsed against that subcommand's own spec."""

from __future__ import annotations

import sys

from satchel.cli import options as o

FAKEROOT = o.Spec(
    "config fakeroot", "config fakeroot <option> <user>",
    "Manage fakeroot user mappings entries (/etc/subuid and /etc/subgid, as root)",
    description=("Add, remove, enable or disable a user's range of subordinate ids in\n"
                 "/etc/subuid and /etc/subgid (SATCHEL_SUBUID / SATCHEL_SUBGID name other\n"
                 "files). --add gives a new range of 65536 ids; --disable comments the\n"
                 "entries out with '!', --enable restores them."),
    options=(
        o.Opt("-a --add", "add", help="add a fakeroot mapping entry for a user"),
        o.Opt("-r --remove", "remove", help="remove the user's fakeroot mapping entry"),
        o.Opt("-e --enable", "enable", help="enable the user's fakeroot mapping entry"),
        o.Opt("-d --disable", "disable", help="disable the user's fakeroot mapping entry"),
    ),
    min_args=1, max_args=1,
    examples="  satchel config fakeroot --add alice\n  satchel config fakeroot --disable alice",
)
GLOBAL = o.Spec(
    "config global", "config global <option> <directive> [value,...]",
    "Edit satchel.conf ($SATCHEL_CONFIG, else /etc/satchel/satchel.conf)",
    description=("Get, set, unset or reset a satchel.conf directive, keeping the file's\n"
                 "comments and order. --reset restores the packaged default. Changing the\n"
                 "system file needs root."),
    options=(
        o.Opt("-g --get", "get", help="get value of the configuration directive"),
        o.Opt("-s --set", "set", help="set value of the configuration directive (for "
                                      "multi-value directives, it adds it)"),
        o.Opt("-u --unset", "unset", help="unset value of the configuration directive (for "
                                          "multi-value directives, the matching values)"),
        o.Opt("-r --reset", "reset", help="reset the directive to its default value"),
        o.Opt("-d --dry-run", "dry_run", help="print the resulting configuration instead of "
                                              "writing it"),
    ),
    min_args=1, max_args=2,
    examples=("  satchel config global --get 'mount home'\n"
              "  satchel config global --set 'bind path' /scratch\n"
              "  satchel config global --reset 'mount home'"),
)
SUBCOMMANDS = {"fakeroot": FAKEROOT, "global": GLOBAL}

SPECS = {
    "config": o.Spec(
        "config", "config <fakeroot|global> [options...]",
        "Manage various satchel configuration (root user only)",
        description=("  fakeroot   manage /etc/subuid and /etc/subgid entries\n"
                     "  global     get, set, unset or reset satchel.conf directives"),
        min_args=1, interspersed=False,
    ),
}


def _one_operation(parsed, names: tuple[str, ...], what: str) -> str:
    from satchel.errors import UsageError
    chosen = [n for n in names if getattr(parsed, n)]
    if len(chosen) != 1:
        raise UsageError(f"{what}: give exactly one of "
                         + ", ".join(f"--{n}" for n in names))
    return chosen[0]


def run(name: str, parsed) -> int:
    from satchel.errors import UsageError
    sub, rest = parsed.args[0], parsed.args[1:]
    spec = SUBCOMMANDS.get(sub)
    if spec is None:
        raise UsageError(f"config: unknown subcommand {sub!r} (fakeroot or global)")
    try:
        args = o.parse(spec, rest)
    except o.HelpRequested:
        sys.stdout.write(o.format_help(spec, getattr(parsed, "prog", "satchel")))
        return 0
    if sub == "fakeroot":
        return _fakeroot(args)
    return _global(args)


def _fakeroot(args) -> int:
    import os
    from satchel import log
    from satchel.errors import ConfigError
    from satchel.runtime import subid
    op = _one_operation(args, subid.OPERATIONS, "config fakeroot")
    if os.geteuid() != 0:
        raise ConfigError("config fakeroot: only root can change /etc/subuid and /etc/subgid")
    changed = subid.configure(op, args.args[0])
    if not changed:
        log.info(f"config fakeroot --{op} {args.args[0]}: nothing to change")
    return 0


def _global(args) -> int:
    from satchel.errors import UsageError
    from satchel.runtime import config_edit
    op = _one_operation(args, config_edit.OPERATIONS, "config global")
    key = args.args[0]
    value = args.args[1] if len(args.args) > 1 else ""
    if value and op in ("get", "reset"):
        raise UsageError(f"config global --{op} takes a directive and no value")
    out = config_edit.global_config(op, key, value, dry_run=args.dry_run)
    if out is not None:
        print(out)
    return 0
