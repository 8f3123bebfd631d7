"""A small command-line parser with pflag/cobra semantics, cheap to import.

argparse costs ~15 ms to import on the machines we target; `satchel exec` cannot afford it.
Semantics follow Apptainer's CLI:
- long options `--name value` or `--name=value`; short options `-B value`, `-Bvalue`, and
  bundled boolean shorts `-ce`;
- for commands with `interspersed=False` (exec, run, shell...) option parsing stops at the first
  positional argument, so `satchel exec img.sif ls -l` passes `-l` to `ls`;
- `--` ends option parsing;
- an option may take its default from environment variables (APPTAINER_X / SINGULARITY_X).
"""

from __future__ import annotations

import os

from satchel.errors import UsageError

FLAG, VALUE, LIST, COUNT = "flag", "value", "list", "count"
_TRUE = ("1", "true", "yes", "on", "y", "t")


class HelpRequested(Exception):
    """-h/--help among a command's options (when the command defines no such option itself)."""


class Opt:
    """One option: its names, where its value goes, how it is parsed."""

    __slots__ = ("names", "dest", "kind", "help", "metavar", "default", "env", "hidden")

    def __init__(self, names, dest, kind=FLAG, help="", metavar="", default=None, env=(),
                 hidden=False):
        self.names = tuple(names.split()) if isinstance(names, str) else tuple(names)
        self.dest = dest
        self.kind = kind
        self.help = help
        self.metavar = metavar or ("string" if kind in (VALUE, LIST) else "")
        self.default = default
        self.env = tuple(env)
        self.hidden = hidden

    def initial(self):
        if self.kind == LIST:
            return list(self.default or ())
        if self.kind == COUNT:
            return self.default or 0
        if self.kind == FLAG:
            return bool(self.default)
        return self.default


class Spec:
    """One command: name, usage text, options, positional arity."""

    __slots__ = ("name", "usage", "summary", "description", "examples", "options",
                 "min_args", "max_args", "interspersed", "aliases")

    def __init__(self, name, usage, summary, options=(), min_args=0, max_args=None,
                 interspersed=True, description="", examples="", aliases=()):
        self.name = name
        self.usage = usage
        self.summary = summary
        self.description = description
        self.examples = examples
        self.options = tuple(options)
        self.min_args = min_args
        self.max_args = max_args
        self.interspersed = interspersed
        self.aliases = tuple(aliases)


class Parsed:
    """Parsed option values as attributes, plus the positional arguments in `args`."""

    def __init__(self):
        self.args: list[str] = []
        self.explicit: set[str] = set()

    def __repr__(self) -> str:
        return f"Parsed({vars(self)!r})"


def env_value(names, environ=None) -> str | None:
    """The first non-empty value among the variables `names` (environ: a plain dict copy of
    os.environ, for many lookups: os.environ encodes every key it is asked for)."""
    environ = os.environ if environ is None else environ
    for name in names:
        value = environ.get(name)
        if value is not None and value != "":
            return value
    return None


def parse(spec: Spec, argv: list[str], environ_defaults: bool = True) -> Parsed:
    """Parse argv (not including the command name) against spec; raise UsageError on bad input."""
    by_name: dict[str, Opt] = {}
    for opt in spec.options:
        for name in opt.names:
            by_name[name] = opt
    out = Parsed()
    for opt in spec.options:
        setattr(out, opt.dest, opt.initial())

    def store(opt: Opt, value: str | None, shown: str) -> None:
        out.explicit.add(opt.dest)
        if opt.kind == FLAG:
            if value is None:
                setattr(out, opt.dest, True)
            elif value.lower() in _TRUE:
                setattr(out, opt.dest, True)
            elif value.lower() in ("0", "false", "no", "off", "n", "f"):
                setattr(out, opt.dest, False)
            else:
                raise UsageError(f"invalid argument {value!r} for {shown!r} flag: expected a boolean")
        elif opt.kind == COUNT:
            setattr(out, opt.dest, getattr(out, opt.dest) + 1)
        elif opt.kind == LIST:
            getattr(out, opt.dest).append(value)
        else:
            setattr(out, opt.dest, value)

    i = 0
    n = len(argv)
    while i < n:
        arg = argv[i]
        if arg == "--":
            out.args.extend(argv[i + 1:])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, eq, inline = arg.partition("=")
            opt = by_name.get(name)
            if opt is None and name == "--help":
                raise HelpRequested()
            if opt is None:
                raise UsageError(f"unknown flag: {name}")
            if opt.kind in (FLAG, COUNT):
                store(opt, inline if eq else None, name)
            elif eq:
                store(opt, inline, name)
            else:
                if i + 1 >= n:
                    raise UsageError(f"flag needs an argument: {name}")
                i += 1
                store(opt, argv[i], name)
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                short = "-" + arg[j]
                opt = by_name.get(short)
                if opt is None and short == "-h":
                    raise HelpRequested()
                if opt is None:
                    raise UsageError(f"unknown shorthand flag: {arg[j]!r} in {arg}")
                if opt.kind in (FLAG, COUNT):
                    if j + 1 < len(arg) and arg[j + 1] == "=":
                        store(opt, arg[j + 2:], short)
                        break
                    store(opt, None, short)
                    j += 1
                    continue
                rest = arg[j + 1:]
                if rest.startswith("="):
                    rest = rest[1:]
                if rest:
                    store(opt, rest, short)
                else:
                    if i + 1 >= n:
                        raise UsageError(f"flag needs an argument: {short!r} in {arg}")
                    i += 1
                    store(opt, argv[i], short)
                break
        else:
            out.args.append(arg)
            if not spec.interspersed:
                out.args.extend(argv[i + 1:])
                break
        i += 1

    if environ_defaults:
        environ = dict(os.environ)  # ~60 options look 2-4 names up each
        for opt in spec.options:
            if opt.dest in out.explicit or not opt.env:
                continue
            value = env_value(opt.env, environ)
            if value is None:
                continue
            if opt.kind == FLAG:
                setattr(out, opt.dest, value.lower() in _TRUE)
            elif opt.kind == LIST:
                setattr(out, opt.dest, [value])
            elif opt.kind == VALUE:
                setattr(out, opt.dest, value)

    if len(out.args) < spec.min_args or (spec.max_args is not None and len(out.args) > spec.max_args):
        if spec.min_args == spec.max_args:
            want = f"{spec.min_args} arg(s)"
        elif spec.max_args is None:
            want = f"at least {spec.min_args} arg(s)"
        else:
            want = f"between {spec.min_args} and {spec.max_args} arg(s)"
        raise UsageError(f"invalid args: requires {want}, received {len(out.args)}",
                         hint=f"run 'satchel help {spec.name}' for usage")
    return out


def refused(names: str, dest: str, why: str, kind: str = FLAG) -> tuple[Opt, str, str]:
    """An Apptainer flag satchel parses but does not support: (hidden Opt, dest, reason)."""
    return Opt(names, dest, kind, help=why, hidden=True), dest, why


def check_refused(parsed: Parsed, table) -> None:
    """One UsageError for the first refused flag given ('--flag: why'), so a script stops
    on the reason, never on "unknown flag"."""
    for opt, dest, why in table:
        if dest in parsed.explicit and getattr(parsed, dest, None) not in (None, False, [], ""):
            name = [n for n in opt.names if n.startswith("--")][0]
            raise UsageError(f"{name} is not supported: {why}")


def format_help(spec: Spec, prog: str = "satchel") -> str:
    lines = ["Usage:", f"  {prog} {spec.usage}", ""]
    if spec.description or spec.summary:
        lines += [(spec.description or spec.summary).rstrip(), ""]
    visible = [o for o in spec.options if not o.hidden]
    if visible:
        lines.append("Options:")
        rows = []
        for opt in visible:
            shorts = [n for n in opt.names if not n.startswith("--")]
            longs = [n for n in opt.names if n.startswith("--")]
            left = ", ".join(shorts + longs)
            if not shorts:
                left = "    " + left
            if opt.kind in (VALUE, LIST):
                left += f" {opt.metavar}"
            rows.append((left, opt.help))
        width = max(len(r[0]) for r in rows) + 3
        for left, text in rows:
            lines.append(f"  {left.ljust(width)}{text}".rstrip())
        lines.append("")
    if spec.examples:
        lines += ["Examples:", spec.examples.rstrip(), ""]
    return "\n".join(lines)
