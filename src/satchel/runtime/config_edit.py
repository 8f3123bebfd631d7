"""`config global`: read and change satchel.conf the way `apptainer config global` changes
apptainer.conf, but as an edit of the file's lines: comments, order and every other key
stay as the administrator wrote them.

- --get KEY prints the key's values from the file, joined with commas (nothing if unset);
- --set KEY VALUE replaces the value of a single-valued key; for a key that may repeat
  (`bind path`) each comma-separated value not present yet is added after the last one;
- --unset KEY VALUE removes the matching values (an error if none matches);
- --reset KEY puts back the lines the packaged default (satchel/data/satchel.conf) has for
  the key, where the key stood, or removes the key when the default has none (the built-in
  default applies);
- --dry-run prints the resulting file instead of writing it.
Which file: $SATCHEL_CONFIG, else /etc/satchel/satchel.conf (created from the packaged
default on the first change). Changing the system file needs root. Unknown keys and values
of the wrong kind are refused before anything is written; the result must parse.
"""

from __future__ import annotations

import os

from satchel import fsutil
from satchel.errors import ConfigError
from satchel.runtime.config import SYSTEM_CONFIG, Config, default_config_path
from satchel.runtime.subid import replace_keeping_owner

# keys satchel reads (beside those the packaged default names) and what their values are
BOOL = "bool"
KINDS = {
    "mount proc": BOOL, "mount sys": BOOL, "mount devpts": BOOL, "mount home": BOOL,
    "mount tmp": BOOL, "mount cwd": BOOL, "mount hostfs": BOOL, "config resolv_conf": BOOL,
    "config passwd": BOOL, "config group": BOOL, "user bind control": BOOL,
    "enable underlay": BOOL, "enable overlay": BOOL, "prefetch": BOOL,
    "mount dev": ("yes", "no", "minimal"),
    "squashfuse mode": ("builtin", "program"),
    "sessiondir max size": int,
    "bind path": str, "squashfuse path": str, "fuse-overlayfs path": str,
    "ld cache path": str, "gpu device dir": str, "nvliblist path": str,
    "rocmliblist path": str, "gpu binary path": str,
}
MULTI = ("bind path",)
OPERATIONS = ("get", "set", "unset", "reset")


def normalise_key(key: str) -> str:
    return " ".join(key.split()).lower()


def _line_key(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or "=" not in stripped:
        return None
    return normalise_key(stripped.partition("=")[0])


def _line_value(line: str) -> str:
    return line.partition("=")[2].strip()


def file_values(text: str, key: str) -> list[str]:
    return [_line_value(line) for line in text.splitlines() if _line_key(line) == key]


def split_values(value: str) -> list[str]:
    """Apptainer's rule: comma-separated, trimmed, empty and repeated values dropped."""
    out: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


def check_value(key: str, value: str) -> None:
    kind = KINDS[key]
    if kind == BOOL and value.lower() not in ("yes", "no", "true", "false", "1", "0", "on",
                                              "off", "y", "n"):
        raise ConfigError(f"config global: {key} = {value!r}: expected yes or no")
    if isinstance(kind, tuple) and value.lower() not in kind:
        raise ConfigError(f"config global: {key} = {value!r}: expected one of "
                          + ", ".join(kind))
    if kind is int:
        try:
            int(value)
        except ValueError:
            raise ConfigError(f"config global: {key} = {value!r}: expected a number") from None


def known_key(key: str) -> str:
    key = normalise_key(key)
    if key not in KINDS:
        raise ConfigError(f"config global: {key!r} is not a satchel.conf directive",
                          hint="the directives are listed in satchel/data/satchel.conf and "
                               "README.md")
    return key


def edit(text: str, op: str, key: str, value: str, default_text: str) -> str:
    """The new text of the file after `op` (set, unset, reset) on `key`."""
    lines = text.splitlines()
    at = [i for i, line in enumerate(lines) if _line_key(line) == key]
    values = split_values(value)
    if op == "set":
        if not values:
            raise ConfigError(f"config global --set: a value is needed for {key!r}")
        for item in values:
            check_value(key, item)
        if key in MULTI:
            present = [_line_value(lines[i]) for i in at]
            new = [f"{key} = {v}" for v in values if v not in present]
            where = at[-1] + 1 if at else len(lines)
            lines[where:where] = new
        else:
            if len(values) > 1:
                raise ConfigError(f"config global --set: {key!r} takes one value, not "
                                  f"{len(values)}")
            new_line = f"{key} = {values[0]}"
            if at:
                lines[at[0]] = new_line
                for i in reversed(at[1:]):
                    del lines[i]
            else:
                lines.append(new_line)
    elif op == "unset":
        gone = [i for i in at if _line_value(lines[i]) in values]
        if not values or not gone:
            raise ConfigError(f"config global --unset: value {value!r} not found for {key!r}")
        for i in reversed(gone):
            del lines[i]
    elif op == "reset":
        defaults = [line.strip() for line in default_text.splitlines()
                    if _line_key(line) == key]
        where = at[0] if at else len(lines)
        for i in reversed(at):
            del lines[i]
        lines[where:where] = defaults
    else:
        raise ConfigError(f"config global: unknown operation {op!r}")
    result = "\n".join(lines) + "\n"
    Config.parse(result, "the new configuration")  # never write what the runtime can't read
    return result


def target_path(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("SATCHEL_CONFIG") or SYSTEM_CONFIG


def _read(path: str) -> str:
    try:
        return fsutil.read_regular(path, follow=True).decode("utf-8")
    except OSError as err:
        raise ConfigError(f"reading configuration {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"reading configuration {path}: not UTF-8 text") from None


def global_config(op: str, key: str, value: str = "", dry_run: bool = False,
                  environ=None) -> str | None:
    """Run one `config global` operation; returns what to print (get, dry run) or None."""
    key = known_key(key)
    path = target_path(environ)
    default_text = _read(default_config_path())
    exists = os.path.exists(path)
    if op == "get":
        text = _read(path) if exists else default_text
        found = file_values(text, key)
        return ",".join(found) if found else None
    if op in ("set", "unset") and not value:
        raise ConfigError(f"config global --{op}: a value is needed for {key!r}")
    if not dry_run and path == SYSTEM_CONFIG and os.geteuid() != 0:
        raise ConfigError(f"config global --{op}: changing {path} needs root",
                          hint="run it as root, or point SATCHEL_CONFIG at your own copy")
    text = edit(_read(path) if exists else default_text, op, key, value, default_text)
    if dry_run:
        return text.rstrip("\n")
    try:
        if not exists and path == SYSTEM_CONFIG:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        replace_keeping_owner(path, text)
    except OSError as err:
        raise ConfigError(f"writing configuration {path}: {err.strerror or err}") from None
    return None
