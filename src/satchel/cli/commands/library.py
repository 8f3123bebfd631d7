"""remote, search, delete, keyserver: Apptainer's library and keyserver commands.

satchel talks to OCI registries (docker://, oras://) and keeps no library or keyserver
endpoint, so each of these says so in one line instead of "unknown command"; the options
Apptainer documents for them parse, so a script fails on the reason, not on a flag.
"""

from __future__ import annotations

from satchel.cli import options as o
from satchel.errors import UsageError

_WHY = ("no library endpoint is configured here: satchel uses OCI registries "
        "(docker:// and oras://, with pull and push)")
_KEYSERVER_WHY = ("no keyserver endpoint is configured here: exchange public keys with "
                  "'key export' and 'key import'")
_COMMON = (
    o.Opt("--library", "library", o.VALUE, hidden=True, help="library URI"),
    o.Opt("-A --arch", "arch", o.VALUE, hidden=True, help="architecture"),
    o.Opt("-F --force", "force", hidden=True, help="do not ask"),
    o.Opt("--url", "url", o.VALUE, hidden=True, help="keyserver URL"),
    o.Opt("--order", "order", o.VALUE, hidden=True, help="keyserver order"),
    o.Opt("--insecure", "insecure", hidden=True, help="allow insecure connections"),
    o.Opt("--no-login", "no_login", hidden=True, help="skip login"),
    o.Opt("--tokenfile", "tokenfile", o.VALUE, hidden=True, help="token file"),
    o.Opt("--global", "global_", hidden=True, help="system-wide"),
    o.Opt("--no-default", "no_default", hidden=True, help="not the default"),
    o.Opt("-u --username", "username", o.VALUE, hidden=True, help="user name"),
    o.Opt("-p --password", "password", o.VALUE, hidden=True, help="password"),
    o.Opt("--password-stdin", "password_stdin", hidden=True, help="password from stdin"),
    o.Opt("-c --check-all", "check_all", hidden=True, help="all entries"),
)
SPECS = {
    "remote": o.Spec("remote", "remote <add|remove|use|list|status|login|logout> ...",
                     "Manage library endpoints (none here: satchel uses OCI registries)",
                     options=_COMMON, interspersed=True),
    "search": o.Spec("search", "search [search options...] <search term>",
                     "Search a library (none is configured here)", options=_COMMON),
    "delete": o.Spec("delete", "delete [delete options...] <library://image>",
                     "Delete an image from a library (none is configured here)",
                     options=_COMMON),
    "keyserver": o.Spec("keyserver", "keyserver <add|remove|login|logout|list> ...",
                        "Manage keyservers (none is configured here)", options=_COMMON),
}


def run(name: str, parsed) -> int:
    if name == "keyserver":
        raise UsageError(f"keyserver: {_KEYSERVER_WHY}")
    raise UsageError(f"{name}: {_WHY}")
