"""Bind requests: -B/--bind, --mount and APPTAINER_BIND/SINGULARITY_BIND, parsed into BindSpec.

Syntax follows Apptainer:
  -B SPEC[,SPEC...]   SPEC = SRC[:DST[:OPTS]]; DST defaults to SRC; OPTS "ro" or "rw"
                      (a lone "SRC:ro" means SRC read-only, not a destination named "ro")
  --mount CSV         type=bind,source=SRC,destination=DST[,ro|readonly[=true]] with CSV quoting,
                      so a path holding a comma is written "source=/a,b" in double quotes;
                      src/target/dst are accepted for source/destination
Parsing is pure: whether SRC exists is the plan's question (it asks HostInfo).
"""

from __future__ import annotations

from satchel.errors import UsageError


class BindSpec:
    """One requested bind, from its parse to its mount: host source, container destination,
    read-only or not; once checked by the plan (checked()), also the resolved host path and
    what it is ("dir" or "file"). Never reshaped into tuples or strings on the way."""

    __slots__ = ("source", "destination", "readonly", "origin", "host_path", "kind")

    def __init__(self, source: str, destination: str, readonly: bool = False, origin: str = "",
                 host_path: str | None = None, kind: str | None = None):
        self.source = source
        self.destination = destination
        self.readonly = readonly
        self.origin = origin  # the text it came from, for error messages
        self.host_path = host_path  # the source resolved on the host (checked specs)
        self.kind = kind            # "dir" | "file" (checked specs)

    def checked(self, host_path: str, destination: str, kind: str) -> "BindSpec":
        """This request as the plan checked it: the source resolved, the destination clean."""
        return BindSpec(self.source, destination, self.readonly, self.origin, host_path, kind)

    def text(self) -> str:
        """SRC:DST[:ro], as APPTAINER_BIND lists it inside the container."""
        return f"{self.source}:{self.destination}" + (":ro" if self.readonly else "")

    def __eq__(self, other):
        return (isinstance(other, BindSpec) and self.source == other.source
                and self.destination == other.destination and self.readonly == other.readonly)

    def __repr__(self) -> str:
        return f"BindSpec({self.source!r}, {self.destination!r}, readonly={self.readonly})"


_OPTIONS = ("ro", "rw")


def parse_bind(value: str) -> list[BindSpec]:
    """Parse one -B value (a comma-separated list of SRC[:DST[:OPTS]])."""
    specs = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        specs.append(_parse_one_bind(item))
    return specs


def _parse_one_bind(item: str) -> BindSpec:
    parts = item.split(":")
    readonly = False
    if len(parts) >= 2 and parts[-1] in _OPTIONS:
        readonly = parts[-1] == "ro"
        parts = parts[:-1]
    if len(parts) == 1:
        source = destination = parts[0]
    elif len(parts) == 2:
        source, destination = parts
    else:
        raise UsageError(f"invalid bind specification {item!r}: expected SRC[:DST[:ro|rw]]",
                         hint=f"unknown option {parts[-1]!r}; options are ro and rw"
                         if len(parts) == 3 else None)
    if not source:
        raise UsageError(f"invalid bind specification {item!r}: empty source")
    if not destination:
        destination = source
    return BindSpec(source, destination, readonly, item)


def split_csv(line: str) -> list[str]:
    """Split one CSV record (RFC 4180 quoting: "a,b" and "" inside quotes); csv costs an import."""
    fields, current, quoted, i, n = [], [], False, 0, len(line)
    while i < n:
        ch = line[i]
        if quoted:
            if ch == '"':
                if i + 1 < n and line[i + 1] == '"':
                    current.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise UsageError(f"invalid --mount value {line!r}: unterminated quote")
    fields.append("".join(current))
    return fields


def parse_mount(value: str) -> BindSpec:
    """Parse one --mount value (Docker-style CSV key=value list)."""
    kind = "bind"
    source = destination = None
    readonly = False
    for field in split_csv(value):
        field = field.strip()
        if not field:
            continue
        key, eq, val = field.partition("=")
        key = key.strip().lower()
        if key == "type":
            kind = val
        elif key in ("source", "src"):
            source = val
        elif key in ("destination", "dst", "target"):
            destination = val
        elif key in ("ro", "readonly"):
            if not eq or val.lower() in ("1", "true", "yes"):
                readonly = True
            elif val.lower() in ("0", "false", "no"):
                readonly = False
            else:
                raise UsageError(f"invalid --mount value {value!r}: {key}={val!r} is not a boolean")
        elif key == "rw":
            readonly = False
        elif key in ("bind-propagation", "consistency"):
            pass  # accepted for Docker compatibility; every bind here is private
        else:
            raise UsageError(f"invalid --mount value {value!r}: unsupported key {key!r}")
    if kind != "bind":
        raise UsageError(f"invalid --mount value {value!r}: only type=bind is supported")
    if not source:
        raise UsageError(f"invalid --mount value {value!r}: missing source=")
    if not destination:
        raise UsageError(f"invalid --mount value {value!r}: missing destination=")
    return BindSpec(source, destination, readonly, value)


_ENV_NAMES = ("APPTAINER_BIND", "APPTAINER_BINDPATH", "SINGULARITY_BIND",
              "SINGULARITY_BINDPATH")


def from_environ(environ) -> tuple[BindSpec, ...]:
    """APPTAINER_BIND (or its SINGULARITY_/BINDPATH twins: the first set wins)."""
    for name in _ENV_NAMES:
        if environ.get(name):
            return tuple(parse_bind(environ[name]))
    return ()


def from_options(bind_values, mount_values) -> tuple[BindSpec, ...]:
    """-B values, then --mount values (one per line), in the order given."""
    specs: list[BindSpec] = []
    for value in bind_values or ():
        specs.extend(parse_bind(value))
    for value in mount_values or ():
        for line in value.splitlines():
            if line.strip():
                specs.append(parse_mount(line))
    return tuple(specs)


def collect(bind_values, mount_values, environ) -> list[BindSpec]:
    """All user binds in Apptainer's order: APPTAINER_BIND (or SINGULARITY_BIND), -B, --mount."""
    return list(from_environ(environ) + from_options(bind_values, mount_values))
