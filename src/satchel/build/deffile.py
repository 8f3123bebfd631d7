"""Definition files (Apptainer's format) -> a list of Definition objects, one per build stage.

The grammar follows Apptainer's documentation and parser:
- a file holds one or more stages; each stage starts at a line `Bootstrap: <agent>`;
- a stage's header is `Key: value` lines (keys case-insensitive, `#` comments, a trailing `\\`
  continues the value on the next line) up to the first line whose first word starts with `%`;
- then sections, each introduced by `%name [args]` on its own line: %setup %files [from STAGE]
  %post %environment %runscript %startscript %test %labels %help %arguments %pre, and the SCIF
  app sections %app{install,labels,files,env,test,help,run,start} NAME;
- a section given twice is concatenated (Apptainer does the same); %files blocks with the same
  arguments are merged;
- `{{ name }}` build-time arguments (Apptainer 1.3) are replaced before a stage is parsed, from
  --build-arg/--build-arg-file values or the defaults in the stage's %arguments section.

Unknown header keys and unknown sections are errors (as in Apptainer), so a typo is never
silently ignored.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from satchel import fsutil
from satchel.errors import DefinitionError

# Header keys Apptainer accepts; `otherurl<N>` is numbered.
VALID_HEADERS = frozenset((
    "bootstrap", "from", "includecmd", "mirrorurl", "updateurl", "osversion", "include", "library",
    "registry", "namespace", "stage", "product", "user", "regcode", "productpgp", "registerurl",
    "modules", "fingerprints", "confurl", "setopt", "target", "frontend", "filename", "buildargs",
))
NUMBERED_HEADERS = ("otherurl",)

SECTIONS = frozenset((
    "help", "setup", "files", "labels", "environment", "pre", "post", "runscript", "test",
    "startscript", "arguments",
))
APP_SECTIONS = frozenset((
    "appinstall", "applabels", "appfiles", "appenv", "apptest", "apphelp", "apprun", "appstart",
))

_BOOTSTRAP_LINE = re.compile(r"(?mi)^bootstrap\s*:")
_BUILD_ARG = re.compile(r"{{\s*(\w+)\s*}}")


@dataclass
class Section:
    """One script-like section: its argument string (e.g. `-c /bin/bash`) and its body."""

    name: str
    args: str = ""
    body: str = ""


@dataclass
class FilesBlock:
    """A %files section: `stage` is the STAGE of `%files from STAGE`, else None (the host)."""

    stage: str | None
    transfers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Definition:
    """One stage of a definition file."""

    header: dict[str, str] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)
    files: list[FilesBlock] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    apps: dict[str, dict[str, Section]] = field(default_factory=dict)
    raw: str = ""           # this stage's text, build arguments substituted
    full_raw: str = ""      # the whole (substituted) file: what goes into the image
    path: str | None = None  # the definition file on the host (for %files sources)

    @property
    def bootstrap(self) -> str:
        return self.header.get("bootstrap", "").strip().lower()

    @property
    def stage(self) -> str:
        return self.header.get("stage", "").strip()

    def section(self, name: str) -> Section | None:
        return self.sections.get(name)

    def script(self, name: str) -> str:
        sec = self.sections.get(name)
        return sec.body if sec else ""


def parse_file(path: str, build_args: dict[str, str] | None = None) -> tuple[list[Definition], list[str]]:
    """Read and parse a definition file. Returns (stages, unused build argument names)."""
    text = fsutil.read_user_text(path, "definition file", DefinitionError)
    try:
        stages, unused = parse(text, build_args)
    except DefinitionError as err:
        raise err.context(f"while parsing definition file {path}") from None
    import os
    for stage in stages:
        stage.path = os.path.abspath(path)
    return stages, unused


def parse(text: str, build_args: dict[str, str] | None = None) -> tuple[list[Definition], list[str]]:
    """Parse definition text into stages, substituting `{{ name }}` build arguments."""
    text = text.replace("\r\n", "\n")
    build_args = dict(build_args or {})
    consumed: set[str] = set()
    stages: list[Definition] = []
    for chunk in split_stages(text):
        # a first pass reads the %arguments defaults; the second parses the substituted text
        first = parse_stage(chunk)
        defaults = parse_arguments(first.script("arguments"))
        substituted = substitute_args(chunk, build_args, defaults, consumed)
        stages.append(parse_stage(substituted))
    if not stages:
        raise DefinitionError("empty definition file")
    names = [s.stage for s in stages if s.stage]
    if len(names) != len(set(names)):
        raise DefinitionError("two stages have the same name: " + ", ".join(sorted(
            {n for n in names if names.count(n) > 1})))
    if len(stages) > 1:
        for i, stage in enumerate(stages):
            if not stage.bootstrap:
                raise DefinitionError(f"stage {i + 1} has no Bootstrap header")
    full_raw = "".join(s.raw for s in stages)
    for stage in stages:
        stage.full_raw = full_raw
    unused = sorted(set(build_args) - consumed)
    return stages, unused


def split_stages(text: str) -> list[str]:
    """Cut the text before each `Bootstrap:` line; leading comments join the first stage."""
    starts = [m.start() for m in _BOOTSTRAP_LINE.finditer(text)]
    if not starts:
        return [text] if text.strip() else []
    chunks = []
    prefix = text[:starts[0]]
    if prefix.strip() and not _only_comments(prefix):
        raise DefinitionError("content before the first Bootstrap header: "
                              + _first_content_line(prefix))
    bounds = starts + [len(text)]
    for i in range(len(starts)):
        chunk = text[bounds[i]:bounds[i + 1]]
        if i == 0:
            chunk = prefix + chunk
        chunks.append(chunk)
    return chunks


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("#") for line in text.splitlines())


def _first_content_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return repr(line.strip())
    return ""


def _is_section_line(line: str) -> bool:
    words = line.split()
    return bool(words) and words[0].startswith("%")


def parse_stage(text: str) -> Definition:
    """Parse one stage (header + sections)."""
    definition = Definition(raw=text)
    lines = text.splitlines(keepends=True)
    i = 0
    header_lines: list[str] = []
    while i < len(lines) and not _is_section_line(lines[i]):
        header_lines.append(lines[i].rstrip("\n"))
        i += 1
    definition.header = parse_header(header_lines)
    invalid: list[str] = []
    while i < len(lines):
        head = lines[i].strip()
        i += 1
        body_lines = []
        while i < len(lines) and not _is_section_line(lines[i]):
            body_lines.append(lines[i])
            i += 1
        body = "".join(body_lines)
        words = head[1:].split(None, 1)
        if not words:
            raise DefinitionError(f"section line {head!r} has no name")
        name = words[0].lower()
        args = words[1] if len(words) > 1 else ""
        if name == "files":
            add_files(definition, args, body)
        elif name in APP_SECTIONS:
            app_words = args.split(None, 1)
            if not app_words:
                raise DefinitionError(f"%{name} needs an app name")
            app = definition.apps.setdefault(app_words[0], {})
            section = app.setdefault(name, Section(name))
            section.args = app_words[1] if len(app_words) > 1 else section.args
            section.body += body
        elif name in SECTIONS:
            section = definition.sections.setdefault(name, Section(name))
            if args:
                section.args = args
            section.body += body
        else:
            invalid.append(name)
    if invalid:
        raise DefinitionError("invalid section(s) specified: " + ", ".join("%" + n for n in invalid),
                              hint="valid sections: " + " ".join("%" + s for s in sorted(SECTIONS)))
    definition.labels = parse_labels(definition.script("labels"))
    if not definition.header and not definition.sections and not definition.files and not definition.apps:
        raise DefinitionError("empty definition file")
    return definition


def parse_header(lines: list[str]) -> dict[str, str]:
    header: dict[str, str] = {}
    cont_key, cont_val = "", None
    for raw_line in lines:
        line = raw_line.strip()
        if not line or line.startswith("#"):
            if cont_val is not None:
                header[cont_key] = cont_val
                cont_key, cont_val = "", None
            continue
        content = line.split("#", 1)[0].strip()
        if cont_val is None:
            key, sep, value = content.partition(":")
            if not sep:
                raise DefinitionError(f"header line {line!r} is not 'Key: value'")
            key, value = key.strip().lower(), value.strip()
        else:
            key, value = cont_key, cont_val + content
            cont_key, cont_val = "", None
        if value.endswith("\\"):
            cont_key, cont_val = key, value[:-1]
            continue
        check_header_key(key)
        header[key] = value
    if cont_val is not None:
        check_header_key(cont_key)
        header[cont_key] = cont_val
    return header


def check_header_key(key: str) -> None:
    if key in VALID_HEADERS:
        return
    base = key.rstrip("0123456789")
    if base != key and base in NUMBERED_HEADERS:
        return
    if not key or " " in key:
        raise DefinitionError(f"invalid header line: {key!r}")
    raise DefinitionError(f"invalid header keyword found: {key}",
                          hint="valid keys: " + ", ".join(sorted(VALID_HEADERS)))


def add_files(definition: Definition, args: str, body: str) -> None:
    args = args.split("#", 1)[0].strip()
    stage = None
    if args:
        words = args.split()
        if len(words) != 2 or words[0].lower() != "from":
            raise DefinitionError(f"%files takes no arguments or 'from STAGE', got {args!r}")
        stage = words[1]
    block = next((b for b in definition.files if b.stage == stage), None)
    if block is None:
        block = FilesBlock(stage)
        definition.files.append(block)
    for line in body.split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise DefinitionError(f"%files line {line!r}: {err}") from None
        if not words:
            continue
        if len(words) > 2:
            raise DefinitionError(f"%files line {line!r}: expected 'source [destination]'")
        block.transfers.append((words[0], words[1] if len(words) == 2 else ""))


def parse_labels(body: str) -> dict[str, str]:
    """`%labels` lines are `KEY VALUE` (the value is the rest of the line)."""
    labels: dict[str, str] = {}
    for line in body.split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        labels[key.strip()] = value.strip()
    return labels


def parse_arguments(body: str) -> dict[str, str]:
    """`%arguments` lines are `name=default`."""
    defaults: dict[str, str] = {}
    for line in body.split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise DefinitionError(f"%arguments line {line!r} is not 'name=value'")
        defaults[key.strip()] = value.strip()
    return defaults


def parse_build_args(pairs: list[str], arg_file: str | None = None) -> dict[str, str]:
    """--build-arg KEY=VALUE options and the lines of --build-arg-file, the options winning."""
    values: dict[str, str] = {}
    if arg_file:
        try:
            with open(arg_file, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DefinitionError(f"while reading build argument file {arg_file}: "
                                  f"{getattr(err, 'strerror', None) or err}") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise DefinitionError(f"build argument file {arg_file}: {line!r} is not KEY=VALUE")
            values[key.strip()] = value.strip()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DefinitionError(f"--build-arg {pair!r} is not KEY=VALUE")
        values[key.strip()] = value.strip()
    return values


def substitute_args(text: str, build_args: dict[str, str], defaults: dict[str, str],
                    consumed: set[str]) -> str:
    """Replace `{{ name }}` outside comment lines; an undefined name is an error."""
    out_lines = []
    for line in text.split("\n"):
        if line.lstrip().startswith("#") and not line.lstrip().startswith("#!"):
            out_lines.append(line)
            continue

        def value_of(match: re.Match) -> str:
            name = match.group(1)
            if name in build_args:
                value = build_args[name]
            elif name in defaults:
                value = defaults[name]
            else:
                raise DefinitionError(
                    f"build argument {name!r} is not defined",
                    hint="define it with --build-arg/--build-arg-file or in the %arguments section")
            consumed.add(name)
            # a default may refer to another argument: one level, like Apptainer
            return _BUILD_ARG.sub(lambda m: build_args.get(m.group(1), defaults.get(m.group(1), m.group(0))),
                                  value)

        out_lines.append(_BUILD_ARG.sub(value_of, line))
    return "\n".join(out_lines)


def from_uri(source: str) -> Definition:
    """`docker://x`, `localimage://path`... as a one-stage definition (Bootstrap + From)."""
    scheme, sep, rest = source.partition("://")
    if not sep or not scheme:
        raise DefinitionError(f"{source!r} is not a URI")
    agent = scheme.lower()
    raw = f"bootstrap: {agent}\nfrom: {rest}\n"
    return Definition(header={"bootstrap": agent, "from": rest}, raw=raw, full_raw=raw)
