"""satchel registry login|logout|list: credentials for OCI registries, where Apptainer keeps
them (~/.apptainer/docker-config.json and remote.yaml; see satchel.oci.login)."""

from __future__ import annotations

from satchel.cli import options as o

_LOGIN_ONLY = ("username", "password", "password_stdin")

SPECS = {
    "registry": o.Spec(
        "registry", "registry <login|logout|list> [options...] [docker://HOST | oras://HOST]",
        "Manage authentication to OCI/Docker registries",
        description=(
            "Log in to a registry (docker:// or oras://): the credentials are checked against\n"
            "it and stored in ~/.apptainer/docker-config.json (or --authfile), mode 0600;\n"
            "pull, push, build and actions on docker:// or oras:// images use them.\n"
            "Subcommands: login [-u USER] [-p PASS | --password-stdin] [--authfile F] URI,\n"
            "logout [--authfile F] URI, list."),
        options=(
            o.Opt("-c --config", "config", o.VALUE,
                  help="path to the file holding registry configurations (remote.yaml)"),
            o.Opt("-u --username", "username", o.VALUE,
                  env=("APPTAINER_LOGIN_USERNAME", "SINGULARITY_LOGIN_USERNAME"),
                  help="username to authenticate with (login; required for a registry)"),
            o.Opt("-p --password", "password", o.VALUE,
                  env=("APPTAINER_LOGIN_PASSWORD", "SINGULARITY_LOGIN_PASSWORD"),
                  help="password / token to authenticate with (login)"),
            o.Opt("--password-stdin", "password_stdin", help="take password from standard input"),
            o.Opt("--authfile", "authfile", o.VALUE,
                  help="Docker-style authentication file to write/read registry credentials"),
        ),
        min_args=1, max_args=2,
        examples=("  satchel registry login --username foo docker://registry.example.org\n"
                  "  echo \"$TOKEN\" | satchel registry login -u foo --password-stdin "
                  "oras://registry.example.org\n"
                  "  satchel registry list\n"
                  "  satchel registry logout docker://registry.example.org"),
    ),
}


def _password(parsed) -> str:
    """-p, else standard input with --password-stdin, else a prompt without echo."""
    import sys
    from satchel.errors import UsageError
    if parsed.password_stdin:
        if "password" in parsed.explicit:
            raise UsageError("--password and --password-stdin are mutually exclusive")
        data = sys.stdin.buffer.read(1 << 16)
        return data.decode("utf-8", "surrogateescape").rstrip("\r\n")
    if parsed.password:
        return parsed.password
    if not sys.stdin.isatty():
        return ""
    import getpass
    try:
        return getpass.getpass("Password / Token: ")
    except (EOFError, OSError):
        return ""


def run(name: str, parsed) -> int:
    from satchel import log
    from satchel.errors import UsageError
    from satchel.oci import login as store
    action, rest = parsed.args[0], parsed.args[1:]
    if action not in ("login", "logout", "list"):
        raise UsageError(f"registry: unknown subcommand {action!r} (login, logout or list)")
    if action != "login":
        given = [d for d in _LOGIN_ONLY if d in parsed.explicit]
        if given:
            raise UsageError(f"registry {action}: --{given[0].replace('_', '-')} is an option "
                             "of registry login")
    if action == "list":
        if rest:
            raise UsageError("registry list takes no arguments")
        if parsed.authfile:
            raise UsageError("registry list: --authfile is an option of login and logout")
        entries = store.read_remote_credentials(parsed.config or store.remote_conf_path())
        rows = [("URI", "SECURE?")] + [(uri, "✗!" if insecure else "✓")
                                       for uri, insecure in entries]
        width = max(len(r[0]) for r in rows) + 2
        print()
        for uri, secure in rows:
            print(f"{uri.ljust(width)}{secure}")
        return 0
    if len(rest) != 1:
        raise UsageError(f"registry {action} needs one registry URI (docker://HOST or oras://HOST)")
    if action == "login":
        path = store.login(rest[0], parsed.username or "", _password(parsed),
                           authfile=parsed.authfile, remote_conf=parsed.config)
        log.info(f"Token stored in {path}")
        return 0
    path = store.logout(rest[0], authfile=parsed.authfile, remote_conf=parsed.config)
    log.info(f"Token removed from {path}")
    log.info("Logout succeeded")
    return 0
