"""`registry login|logout|list`: Apptainer's store of OCI registry credentials.

Where Apptainer 1.3 keeps them (pkg/syfs, internal/pkg/remote/credential):
- the secret goes into a Docker-style config, `~/.apptainer/docker-config.json`
  ($APPTAINER_CONFIGDIR replaces ~/.apptainer), or the file --authfile names:
  `"auths": {"HOST[/PATH]": {"auth": base64("user:password")}}`, Docker Hub under
  `https://index.docker.io/v1/`; the file is private (0600) and replaced atomically;
- `remote.yaml` beside it lists what was logged in to (`Credentials: [{URI, Insecure}]`),
  which is what `registry list` prints. Only that block of remote.yaml is rewritten; the rest
  of the file (library remotes written by Apptainer) is kept line for line.
pull, push, build and actions on image URIs read the same file (oci/auth.py).

Login first checks the credentials against the registry, as Apptainer does: GET /v2/, then
the challenge's Basic retry or Bearer token request with them. Nothing is stored when the
registry refuses them.
"""

from __future__ import annotations

import base64
import json
import os

from satchel import fsutil, log
from satchel.errors import OCIError, UsageError
from satchel.oci import auth, transport
from satchel.oci.reference import DOCKER_HUB_API, DOCKER_HUB_AUTH_KEY, _HUB_ALIASES, _HOST

SCHEMES = ("docker", "oras")
DOCKER_CONF = "docker-config.json"
REMOTE_CONF = "remote.yaml"


class RegistryURI:
    """docker://HOST[:PORT][/PATH] or oras://...: the key credentials are stored under."""

    __slots__ = ("uri", "host", "key", "api_host")

    def __init__(self, uri: str):
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme not in SCHEMES:
            raise UsageError(f"registry {uri!r}: expected docker://HOST or oras://HOST",
                             hint="for example: registry login -u USER docker://registry.example.org")
        rest = rest.rstrip("/")
        host, _, path = rest.partition("/")
        if not host or not _HOST.match(host):
            raise UsageError(f"registry {uri!r}: {host!r} is not a registry host name")
        self.uri = uri.rstrip("/")
        self.host = host
        # Apptainer's key is host + path; Docker Hub's historical key is its v1 URL
        self.key = DOCKER_HUB_AUTH_KEY if host in _HUB_ALIASES and not path else (
            f"{host}/{path}" if path else host)
        self.api_host = DOCKER_HUB_API if host in _HUB_ALIASES else host


def config_dir(environ=None) -> str:
    """Apptainer's per-user directory: $APPTAINER_CONFIGDIR, else $HOME/.apptainer."""
    environ = os.environ if environ is None else environ
    for name in ("APPTAINER_CONFIGDIR", "SINGULARITY_CONFIGDIR"):
        if environ.get(name):
            return environ[name]
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".apptainer")


def docker_conf_path(environ=None) -> str:
    return os.path.join(config_dir(environ), DOCKER_CONF)


def remote_conf_path(environ=None) -> str:
    return os.path.join(config_dir(environ), REMOTE_CONF)


# ---- checking credentials against the registry
def check_login(reg: RegistryURI, creds: auth.Credentials, plain_http: bool = False) -> bool:
    """Raise OCIError unless the registry accepts `creds` (its /v2/ ping and auth flow);
    True when it was reached over plain HTTP (remote.yaml's Insecure)."""
    pool = transport.Pool()
    url = f"{'http' if plain_http else 'https'}://{reg.api_host}/v2/"
    try:
        try:
            resp = transport.request(pool, "GET", url, auth_for_host=reg.api_host)
        except OCIError as err:
            # Apptainer (go-containerregistry) falls back to plain HTTP for a registry on
            # loopback that does not speak TLS; pulls from it then need --nohttps
            if plain_http or not _loopback(reg.host) or "does not speak TLS" not in str(err):
                raise
            url = f"http://{reg.api_host}/v2/"
            resp = transport.request(pool, "GET", url, auth_for_host=reg.api_host)
        challenge, status = resp.header("WWW-Authenticate"), resp.status
        resp.read(1 << 20)
        if status == 200:
            log.info(f"{reg.host} answers without credentials; they were not checked")
            return url.startswith("http:")
        if status != 401:
            raise OCIError(f"login to {reg.uri}: {url} answered {status}, not a registry?")
        schemes = dict(auth.parse_challenges(challenge))
        if "bearer" in schemes:
            _check_bearer(pool, reg, creds, schemes["bearer"])
        elif "basic" in schemes:
            headers = {"Authorization": creds.basic_header()}
            resp = transport.request(pool, "GET", url, headers, auth_for_host=reg.api_host)
            status = resp.status
            resp.read(1 << 20)
            if status in (401, 403):
                raise _refused(reg, creds)
            if status != 200:
                raise OCIError(f"login to {reg.uri}: {url} answered {status}")
        else:
            raise OCIError(f"login to {reg.uri}: unsupported authentication {challenge!r}")
        return url.startswith("http:")
    finally:
        pool.close()


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.partition("]")[0] + "]"
    return name in ("localhost", "[::1]") or name.startswith("127.")


def _check_bearer(pool, reg: RegistryURI, creds: auth.Credentials, params: dict) -> None:
    """A token request with the credentials and no scope (a registry-wide login)."""
    import urllib.parse
    realm = params.get("realm")
    if not realm:
        raise OCIError(f"login to {reg.uri}: Bearer challenge without a realm")
    query = urllib.parse.urlencode({"service": params["service"]}) if params.get("service") else ""
    url = realm + (("&" if "?" in realm else "?") + query if query else "")
    resp = transport.request(pool, "GET", url, {"Authorization": creds.basic_header()},
                             auth_for_host=urllib.parse.urlsplit(realm).netloc)
    status = resp.status
    resp.read(1 << 20)
    if status in (401, 403):
        raise _refused(reg, creds)
    if status != 200:
        raise OCIError(f"login to {reg.uri}: token server {realm} answered {status}")


def _refused(reg: RegistryURI, creds: auth.Credentials) -> OCIError:
    return OCIError(f"login to {reg.uri}: unauthorized: the registry refused the credentials "
                    f"of {creds.username!r}; nothing was stored")


# ---- the Docker-style credentials file
def _load_json(path: str) -> dict:
    try:
        data = fsutil.read_regular(path, follow=True)
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise OCIError(f"reading registry credentials {path}: {err.strerror or err}") from None
    try:
        doc = json.loads(data) if data.strip() else {}
    except ValueError as err:
        raise OCIError(f"reading registry credentials {path}: not JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        raise OCIError(f"reading registry credentials {path}: not a Docker config "
                       "(expected an object with \"auths\")")
    return doc


def _save_json(path: str, doc: dict) -> None:
    """Private and atomic: readers see the old file or the new one, never a secret at 0644."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fsutil.atomic_write(path, json.dumps(doc, indent="\t") + "\n", mode=0o600, fsync=True)
    except OSError as err:
        raise OCIError(f"writing registry credentials {path}: {err.strerror or err}") from None


# ---- remote.yaml's Credentials block (no YAML library: only this block is ours)
def _split_remote_yaml(text: str) -> tuple[list[str], list[tuple[str, bool]]]:
    """(the lines outside the top-level Credentials block, the block's URI/Insecure pairs)."""
    kept: list[str] = []
    entries: list[tuple[str, bool]] = []
    inside = False
    for line in text.splitlines():
        if inside and (line[:1] in (" ", "\t", "-") or not line.strip()):
            item = line.strip().lstrip("- ").strip()
            name, _, value = item.partition(":")
            value = value.strip().strip("'\"")
            if name == "URI":
                entries.append((value, False))
            elif name == "Insecure" and entries:
                entries[-1] = (entries[-1][0], value.lower() == "true")
            continue
        inside = line.startswith("Credentials:")
        if not inside:
            kept.append(line)
    return kept, entries


def read_remote_credentials(path: str) -> list[tuple[str, bool]]:
    try:
        text = fsutil.read_regular(path, follow=True).decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    except OSError as err:
        raise OCIError(f"reading {path}: {err.strerror or err}") from None
    return _split_remote_yaml(text)[1]


def _update_remote_yaml(path: str, uri: str, add: bool, insecure: bool = False) -> None:
    try:
        text = fsutil.read_regular(path, follow=True).decode("utf-8", "replace")
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise OCIError(f"reading {path}: {err.strerror or err}") from None
    kept, entries = _split_remote_yaml(text)
    entries = [e for e in entries if e[0].rstrip("/") != uri]
    if add:
        entries.append((uri, insecure))
    while kept and not kept[-1].strip():
        kept.pop()
    if entries:
        kept.append("Credentials:")
        for entry_uri, entry_insecure in entries:
            kept += [f"    - URI: {entry_uri}",
                     f"      Insecure: {'true' if entry_insecure else 'false'}"]
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        fsutil.atomic_write(path, "\n".join(kept) + "\n" if kept else "", mode=0o600)
    except OSError as err:
        raise OCIError(f"writing {path}: {err.strerror or err}") from None


# ---- the commands' logic
def login(uri: str, username: str, password: str, authfile: str | None = None,
          remote_conf: str | None = None, plain_http: bool = False) -> str:
    """Check the credentials, then store them; returns the file they went to."""
    reg = RegistryURI(uri)
    if not username:
        raise UsageError(f"login to {uri}: a Docker/OCI registry needs a username (-u USER)")
    if not password:
        raise UsageError(f"login to {uri}: a password is needed (-p, --password-stdin or the "
                         "prompt)")
    creds = auth.Credentials(username, password, "", "registry login")
    path = authfile or docker_conf_path()
    doc = _load_json(path)  # a broken file fails before the registry is asked
    insecure = check_login(reg, creds, plain_http)
    raw = f"{username}:{password}".encode()
    doc.setdefault("auths", {})[reg.key] = {"auth": base64.b64encode(raw).decode()}
    _save_json(path, doc)
    _update_remote_yaml(remote_conf or remote_conf_path(), reg.uri, add=True,
                        insecure=insecure)
    return path


def logout(uri: str, authfile: str | None = None, remote_conf: str | None = None) -> str:
    reg = RegistryURI(uri)
    path = authfile or docker_conf_path()
    doc = _load_json(path)
    auths = doc.get("auths", {})
    if reg.key not in auths:
        raise OCIError(f"logout from {uri}: {reg.key!r} is not logged in (in {path})")
    del auths[reg.key]
    _save_json(path, doc)
    _update_remote_yaml(remote_conf or remote_conf_path(), reg.uri, add=False)
    return path
