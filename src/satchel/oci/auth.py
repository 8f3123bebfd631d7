"""Registry credentials and WWW-Authenticate challenges.

Where credentials come from, first match wins (as Apptainer does):
1. --docker-username / --docker-password on the command line;
2. APPTAINER_DOCKER_USERNAME / APPTAINER_DOCKER_PASSWORD (or the SINGULARITY_ twins);
3. an entry for the registry in the --authfile file, ~/.apptainer/docker-config.json (where
   `registry login` stores them; $APPTAINER_CONFIGDIR moves it), $DOCKER_CONFIG/config.json or
   ~/.docker/config.json ("auth": base64 "user:password", "username"/"password", or an
   "identitytoken" used as an OAuth2 refresh token).
Credential helpers (credsStore/credHelpers) are not run.
"""

from __future__ import annotations

import base64
import json
import os

from satchel import log
from satchel.errors import OCIError

USERNAME_ENV = ("APPTAINER_DOCKER_USERNAME", "SINGULARITY_DOCKER_USERNAME")
PASSWORD_ENV = ("APPTAINER_DOCKER_PASSWORD", "SINGULARITY_DOCKER_PASSWORD")


class Credentials:
    __slots__ = ("username", "password", "identity_token", "origin")

    def __init__(self, username: str, password: str, identity_token: str = "", origin: str = ""):
        self.username = username
        self.password = password
        self.identity_token = identity_token
        self.origin = origin  # where they came from, for messages (never the secret)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:
        return f"Credentials({self.username!r}, <hidden>, origin={self.origin!r})"


def _first_env(names, environ) -> str | None:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


def docker_config_paths(environ, home: str | None) -> list[str]:
    """Docker-style credential files, first match wins: Apptainer's own (written by
    `registry login`: $APPTAINER_CONFIGDIR or ~/.apptainer, docker-config.json), then
    $DOCKER_CONFIG/config.json and ~/.docker/config.json (written by `docker login`)."""
    home = home or environ.get("HOME") or os.path.expanduser("~")
    configdir = environ.get("APPTAINER_CONFIGDIR") or environ.get("SINGULARITY_CONFIGDIR") or (
        os.path.join(home, ".apptainer") if home else "")
    paths = [os.path.join(configdir, "docker-config.json")] if configdir else []
    if environ.get("DOCKER_CONFIG"):
        paths.append(os.path.join(environ["DOCKER_CONFIG"], "config.json"))
    if home:
        paths.append(os.path.join(home, ".docker", "config.json"))
    return paths


def from_docker_config(path: str, keys: tuple[str, ...]) -> Credentials | None:
    """Credentials for the first of `keys` found in a Docker config.json (None if absent)."""
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise OCIError(f"reading docker credentials {path}: {err}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    normalised = {k.rstrip("/"): v for k, v in auths.items() if isinstance(v, dict)}
    for key in keys:
        entry = normalised.get(key.rstrip("/"))
        if entry is None:
            continue
        if entry.get("identitytoken"):
            return Credentials("<token>", "", entry["identitytoken"], path)
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise OCIError(f"{path}: the 'auth' entry for {key} is not base64 'user:password'"
                               ) from None
            if sep:
                return Credentials(user, password, "", path)
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"], "", path)
    return None


def prompt_login(username: str | None = None) -> tuple[str, str]:
    """--docker-login: ask on the terminal (the password without echo)."""
    import getpass
    import sys
    try:
        if not username:
            sys.stderr.write("Enter Docker Username: ")
            sys.stderr.flush()
            username = sys.stdin.readline().strip()
        password = getpass.getpass("Enter Docker Password: ")
    except (EOFError, OSError) as err:
        raise OCIError(f"--docker-login: cannot read credentials ({err})") from None
    if not username or not password:
        raise OCIError("--docker-login: a username and a password are needed")
    return username, password


def find_credentials(auth_keys: tuple[str, ...], username: str | None = None,
                     password: str | None = None, environ=None,
                     home: str | None = None, authfile: str | None = None
                     ) -> Credentials | None:
    environ = os.environ if environ is None else environ
    if username or password:
        origin = "command line"
    else:
        username = _first_env(USERNAME_ENV, environ)
        password = _first_env(PASSWORD_ENV, environ)
        origin = "environment"
    if username or password:
        if not (username and password):
            raise OCIError("docker credentials need both a username and a password",
                           hint="set --docker-username and --docker-password (or "
                                "APPTAINER_DOCKER_USERNAME and APPTAINER_DOCKER_PASSWORD)")
        return Credentials(username, password, "", origin)
    paths = docker_config_paths(environ, home)
    if authfile:
        if not os.path.isfile(authfile):
            raise OCIError(f"--authfile {authfile}: no such file")
        paths.insert(0, authfile)
    for path in paths:
        creds = from_docker_config(path, auth_keys)
        if creds is not None:
            log.verbose(f"using registry credentials from {path}")
            return creds
    return None


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """'Bearer realm="x",service="y", Basic realm="z"' -> [("bearer", {...}), ("basic", {...})].

    RFC 7235 syntax: a scheme token, then comma-separated name=value pairs whose values may be
    quoted strings with backslash escapes. A new scheme starts where a token has no '='."""
    out: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(header)

    def skip_space(j):
        while j < n and header[j] in " \t,":
            j += 1
        return j

    while True:
        i = skip_space(i)
        if i >= n:
            break
        start = i
        while i < n and header[i] not in " \t,=":
            i += 1
        token = header[start:i]
        j = i
        while j < n and header[j] in " \t":
            j += 1
        if j < n and header[j] == "=" and out:
            i = j + 1
            while i < n and header[i] in " \t":
                i += 1
            if i < n and header[i] == '"':
                i += 1
                chars = []
                while i < n and header[i] != '"':
                    if header[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(header[i])
                    i += 1
                i += 1
                value = "".join(chars)
            else:
                vstart = i
                while i < n and header[i] not in ",":
                    i += 1
                value = header[vstart:i].strip()
            out[-1][1][token.lower()] = value
        else:
            out.append((token.lower(), {}))
    return out
