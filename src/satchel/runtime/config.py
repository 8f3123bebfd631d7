"""The administrator's configuration: satchel.conf, in apptainer.conf's "key = value" format.

Which file: $SATCHEL_CONFIG, else /etc/satchel/satchel.conf if present, else the default shipped
in satchel/data/satchel.conf. Unprivileged satchel guards no privilege (everything it does the
caller could do with unshare(1) and squashfuse), so a user-chosen file is acceptable.

A key may repeat ("bind path = /etc/hosts" twice): values accumulate in order; get() answers
the last one, get_list() all of them. Parsing is a loop over lines, cheap enough for every
launch.
"""

from __future__ import annotations

import os

from satchel.errors import ConfigError

SYSTEM_CONFIG = "/etc/satchel/satchel.conf"
_TRUE = ("yes", "true", "1", "on", "y")
_FALSE = ("no", "false", "0", "off", "n")


def default_config_path() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, "data", "satchel.conf")


def config_path(environ=None) -> str:
    environ = os.environ if environ is None else environ
    chosen = environ.get("SATCHEL_CONFIG")
    if chosen:
        return chosen
    if os.path.isfile(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return default_config_path()


class Config:
    """Parsed settings: lowercase key -> list of string values, in file order."""

    __slots__ = ("path", "values")

    def __init__(self, values: dict[str, list[str]] | None = None, path: str = "<memory>"):
        self.path = path
        self.values = values or {}

    @classmethod
    def parse(cls, text: str, path: str = "<memory>") -> "Config":
        values: dict[str, list[str]] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, eq, value = line.partition("=")
            key = " ".join(key.split()).lower()
            if not eq or not key:
                raise ConfigError(f"{path}:{number}: expected 'key = value', got {raw.strip()!r}")
            values.setdefault(key, []).append(value.strip())
        return cls(values, path)

    def get(self, key: str, default=None):
        found = self.values.get(key)
        return found[-1] if found else default

    def get_list(self, key: str) -> list[str]:
        return list(self.values.get(key, ()))

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None or value == "":
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{self.path}: {key} = {value!r}: expected yes or no")

    def get_int(self, key: str, default: int) -> int:
        value = self.get(key)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{self.path}: {key} = {value!r}: expected a number") from None


def load_config(path: str | None = None) -> Config:
    """Read and parse the configuration file (see the module docstring for which one)."""
    path = path or config_path()
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise ConfigError(f"reading configuration {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"reading configuration {path}: not UTF-8 text") from None
    return Config.parse(text, path)
