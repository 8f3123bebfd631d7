"""Every flag of Apptainer's other commands (build, pull, push, inspect, instance list/stop,
cache, key, sign, verify, overlay create, registry, config) parses in satchel: never
"unknown flag".
Each flag is implemented, or refused by one FATAL line naming it (test_..._refused below and
tests/integration/test_command_flags.py run them).

The table is Apptainer 1.3.6's (cmd/internal/cli/*.go: each cmdline.Flag's Name and
ShortHand with the commands RegisterFlagForCmd gives it, which is what its generated CLI
reference lists), hidden and deprecated flags included: scripts still pass them. The action
commands and instance start/run have their own table (test_apptainer_flags.py).
"""

import pytest

from satchel.cli import options as o
from satchel.cli.commands import (build, cache, config, inspect, instance, key, overlay, pull,
                                  push, registry, sign, verify)

B, V = "bool", "value"
# command -> [(long name, shorthand, kind)]
APPTAINER_FLAGS = {
    "build": [
        ("bind", "B", V), ("build-arg", "", V), ("build-arg-file", "", V),
        ("disable-cache", "", B), ("docker-host", "", V), ("docker-login", "", B),
        ("docker-password", "", V), ("docker-username", "", V), ("encrypt", "e", B),
        ("fakeroot", "f", B), ("fix-perms", "", B), ("force", "F", B),
        ("ignore-fakeroot-command", "", B), ("ignore-subuid", "", B), ("ignore-userns", "", B),
        ("json", "", B), ("library", "", V), ("mount", "", V), ("no-cleanup", "", B),
        ("no-https", "", B), ("nohttps", "", B), ("notest", "T", B), ("nv", "", B),
        ("nvccli", "", B), ("passphrase", "", B), ("pem-path", "", V), ("remote", "", B),
        ("rocm", "", B), ("sandbox", "s", B), ("section", "", V), ("tmpdir", "", V),
        ("update", "u", B), ("userns", "", B), ("warn-unused-build-args", "", B),
        ("writable-tmpfs", "", B),
    ],
    "pull": [
        ("allow-unauthenticated", "", B), ("allow-unsigned", "U", B), ("arch", "", V),
        ("arch-variant", "", V), ("dir", "", V), ("disable-cache", "", B),
        ("docker-host", "", V), ("docker-login", "", B), ("docker-password", "", V),
        ("docker-username", "", V), ("force", "F", B), ("library", "", V), ("name", "", V),
        ("no-cleanup", "", B), ("no-https", "", B), ("tmpdir", "", V),
    ],
    "push": [
        ("allow-unsigned", "U", B), ("description", "D", V), ("docker-host", "", V),
        ("docker-password", "", V), ("docker-username", "", V), ("library", "", V),
        ("no-https", "", B),
    ],
    "inspect": [
        ("all", "", B), ("app", "", V), ("deffile", "d", B), ("environment", "e", B),
        ("helpfile", "H", B), ("json", "j", B), ("labels", "l", B), ("list-apps", "", B),
        ("runscript", "r", B), ("startscript", "s", B), ("test", "t", B),
    ],
    "instance list": [("all", "a", B), ("json", "j", B), ("logs", "l", B), ("user", "u", V)],
    "instance stop": [("all", "a", B), ("force", "F", B), ("signal", "s", V),
                      ("timeout", "t", V), ("user", "u", V)],
    "cache list": [("type", "T", V), ("verbose", "v", B)],
    "cache clean": [("days", "D", V), ("dry-run", "n", B), ("force", "f", B), ("type", "T", V)],
    "key newpair": [("bit-length", "b", V), ("comment", "C", V), ("email", "E", V),
                    ("name", "N", V), ("password", "P", V), ("push", "U", B),
                    ("keysdir", "d", V)],
    "key list": [("secret", "s", B), ("global", "g", B), ("keysdir", "d", V)],
    "key import": [("new-password", "", B), ("global", "g", B), ("keysdir", "d", V)],
    "key export": [("armor", "a", B), ("secret", "s", B), ("global", "g", B),
                   ("keysdir", "d", V)],
    "key remove": [("both", "b", B), ("public", "p", B), ("secret", "s", B),
                   ("global", "g", B), ("keysdir", "d", V)],
    "key search": [("long-list", "l", B), ("url", "u", V)],
    "key push": [("url", "u", V), ("global", "g", B), ("keysdir", "d", V)],
    "key pull": [("url", "u", V), ("global", "g", B), ("keysdir", "d", V)],
    "sign": [("all", "a", B), ("group-id", "g", V), ("groupid", "", V), ("id", "", V),
             ("key", "", V), ("keyidx", "k", V), ("sif-id", "i", V)],
    "verify": [("all", "a", B), ("certificate", "", V), ("certificate-intermediates", "", V),
               ("certificate-roots", "", V), ("group-id", "g", V), ("groupid", "", V),
               ("id", "", V), ("json", "j", B), ("key", "", V), ("legacy-insecure", "", B),
               ("local", "l", B), ("ocsp-verify", "", B), ("sif-id", "i", V), ("url", "u", V)],
    "registry login": [("username", "u", V), ("password", "p", V), ("password-stdin", "", B),
                       ("config", "c", V)],
    "registry logout": [("config", "c", V)],
    "registry list": [("config", "c", V)],
    "overlay create": [("create-dir", "", V), ("fakeroot", "f", B), ("size", "s", V),
                       ("sparse", "S", B)],
    "config fakeroot": [("add", "a", B), ("remove", "r", B), ("enable", "e", B),
                        ("disable", "d", B)],
    "config global": [("dry-run", "d", B), ("get", "g", B), ("reset", "r", B), ("set", "s", B),
                      ("unset", "u", B)],
}
SAMPLE = {"days": "3", "timeout": "5", "signal": "TERM", "keyidx": "0", "bit-length": "4096",
          "group-id": "1", "groupid": "1", "sif-id": "1", "id": "1", "type": "all", "size": "64"}


def spec_for(command: str) -> o.Spec:
    words = command.split()
    if words[0] == "instance":
        return instance._sub_specs()[words[1]]
    if words[0] == "key":
        return key._SUBS[words[1]]
    if words[0] == "config":
        return config.SUBCOMMANDS[words[1]]
    module = {"build": build, "pull": pull, "push": push, "inspect": inspect, "cache": cache,
              "sign": sign, "verify": verify, "registry": registry,
              "overlay": overlay}[words[0]]
    return module.SPECS[words[0]]


CASES = [(cmd, flag) for cmd, flags in APPTAINER_FLAGS.items() for flag in flags]


@pytest.mark.parametrize("cmd,flag", CASES, ids=[f"{c}--{f[0]}" for c, f in CASES])
def test_flag_parses(cmd, flag):
    """Long form and shorthand parse (before the command's positional arguments)."""
    name, short, kind = flag
    spec = spec_for(cmd)
    positional = [f"arg{i}" for i in range(spec.min_args)]
    for opt in [f"--{name}"] + ([f"-{short}"] if short else []):
        argv = [opt] + ([] if kind == B else [SAMPLE.get(name, "x")]) + positional
        parsed = o.parse(spec, argv, environ_defaults=False)
        assert parsed.args == positional, (cmd, opt)
        assert len(parsed.explicit) == 1, (cmd, opt)


# flags satchel refuses, with the command line that reaches the refusal (run by
# tests/integration/test_command_flags.py as the unprivileged user)
REFUSED = {
    "build": ["bind", "mount", "docker-host", "encrypt", "passphrase", "pem-path", "json",
              "library", "remote", "no-cleanup", "nv", "rocm", "nvccli", "writable-tmpfs"],
    "pull": ["docker-host", "library", "no-cleanup"],
    "push": ["docker-host", "library", "description"],
    "verify": ["certificate", "certificate-intermediates", "certificate-roots", "ocsp-verify"],
}


@pytest.mark.parametrize("cmd", sorted(REFUSED))
def test_refused_flags_are_in_the_table(cmd):
    """Every refusal is one of Apptainer's flags of that command, and hidden from --help."""
    names = {f[0] for f in APPTAINER_FLAGS[cmd]}
    assert set(REFUSED[cmd]) <= names
    text = o.format_help(spec_for(cmd))
    for name in REFUSED[cmd]:
        assert f"--{name} " not in text
