"""Image references: `docker://[REGISTRY/]REPO[:TAG|@DIGEST]`, `docker-archive:FILE[:SEL]`,
`oci-archive:FILE[:TAG]`, `oci:DIR[:TAG]`; parsing, Docker Hub normalisation, pull names.

Docker Hub rules follow the Docker CLI: the first path element is a registry only if it has a
'.' or ':' or is 'localhost'; otherwise the image lives on docker.io, where a one-element name
gets 'library/'. A registry written as `http://HOST` (satchel's extension) is spoken to over
plain HTTP, like --nohttps.
"""

from __future__ import annotations

import os
import re

from satchel.errors import OCIError
from satchel.oci import digest as digests

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# the key Docker writes for Docker Hub in ~/.docker/config.json
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*"
                   r"[A-Za-z0-9])?)*(?::[0-9]+)?\Z|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?\Z")

LOCAL_TRANSPORTS = ("docker-archive", "oci-archive", "oci")
TRANSPORTS = ("docker",) + LOCAL_TRANSPORTS + ("docker-daemon",)


class DockerRef:
    """A reference to an image in a registry."""

    __slots__ = ("registry", "repository", "tag", "digest", "scheme")
    transport = "docker"

    def __init__(self, registry: str, repository: str, tag: str | None, digest: str | None,
                 scheme: str | None = None):
        self.registry = registry        # as the user means it: "docker.io", "127.0.0.1:5000"
        self.repository = repository    # "library/alpine"
        self.tag = tag                  # None when only a digest was given
        self.digest = digest            # "sha256:..." or None
        self.scheme = scheme            # "http" when written as http://HOST, else None

    @property
    def api_host(self) -> str:
        """host[:port] of the registry API (Docker Hub's API lives on another name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def auth_keys(self) -> tuple[str, ...]:
        """Keys under which ~/.docker/config.json may hold credentials for this registry."""
        if self.registry == DOCKER_HUB:
            return (DOCKER_HUB_AUTH_KEY, "index.docker.io", "docker.io", DOCKER_HUB_API)
        return (self.registry, f"https://{self.registry}", f"http://{self.registry}",
                f"https://{self.registry}/v1/", f"https://{self.registry}/v2/")

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return "docker://" + name


class LocalRef:
    """An image in a local file: docker-archive, oci-archive tar, or an OCI layout directory."""

    __slots__ = ("transport", "path", "selector")

    def __init__(self, transport: str, path: str, selector: str | None):
        self.transport = transport
        self.path = path
        self.selector = selector  # a tag (oci/oci-archive), "repo:tag" or "@N" (docker-archive)

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.selector}" if self.selector else "")


def split_transport(uri: str) -> tuple[str, str]:
    """("docker", "//alpine") for docker://alpine; ("", uri) when there is no known transport."""
    transport, sep, rest = uri.partition(":")
    if sep and (transport in TRANSPORTS or rest.startswith("//")):
        return transport, rest
    return "", uri


def parse(uri: str) -> DockerRef | LocalRef:
    """Parse a source URI; OCIError for anything malformed or unsupported."""
    transport, rest = split_transport(uri)
    if transport == "docker":
        if not rest.startswith("//"):
            raise OCIError(f"invalid image reference {uri!r}: expected docker://NAME[:TAG]")
        return parse_docker(rest[2:], uri)
    if transport == "docker-daemon":
        raise OCIError(f"{uri}: docker-daemon sources are not supported (satchel talks to "
                       "registries and archives, not to a Docker daemon)",
                       hint="save the image with 'docker save -o FILE.tar IMAGE' and use "
                            "docker-archive:FILE.tar", in_context=True)
    if transport in LOCAL_TRANSPORTS:
        return parse_local(transport, rest, uri)
    raise OCIError(f"unsupported image source {uri!r}",
                   hint="use docker://, docker-archive:, oci-archive: or oci:")


def parse_docker(name: str, uri: str | None = None) -> DockerRef:
    """Parse `[http://][REGISTRY/]REPO[:TAG][@DIGEST]` (the part after docker://)."""
    shown = uri or name
    scheme = None
    for prefix in ("http://", "https://"):
        if name.startswith(prefix):
            scheme = prefix[:-3]
            name = name[len(prefix):]
    if scheme == "https":
        scheme = None
    digest = None
    if "@" in name:
        name, _, digest = name.partition("@")
        try:
            digests.parse(digest)
        except OCIError as err:
            raise OCIError(f"invalid image reference {shown!r}: {err.message}") from None
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.match(tag):
            raise OCIError(f"invalid image reference {shown!r}: bad tag {tag!r}")
    parts = name.split("/")
    registry = DOCKER_HUB
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                           or parts[0].startswith("[")):
        registry = parts.pop(0)
        if not _HOST.match(registry):
            raise OCIError(f"invalid image reference {shown!r}: bad registry {registry!r}")
        if registry in _HUB_ALIASES:
            registry = DOCKER_HUB
    elif scheme:
        raise OCIError(f"invalid image reference {shown!r}: http:// needs a registry host")
    if not parts or not all(_COMPONENT.match(p) for p in parts):
        raise OCIError(f"invalid image reference {shown!r}: repository names are lowercase "
                       "letters, digits and separators (. _ __ -)")
    if registry == DOCKER_HUB and len(parts) == 1:
        parts.insert(0, "library")
    if tag is None and digest is None:
        tag = "latest"
    return DockerRef(registry, "/".join(parts), tag, digest, scheme)


def parse_local(transport: str, rest: str, uri: str) -> LocalRef:
    """FILE[:SELECTOR]. Paths may hold ':' and docker-archive selectors do (repo:tag), so the
    longest prefix that exists is the path; if none exists, the split is at the last ':'."""
    if not rest:
        raise OCIError(f"invalid image source {uri!r}: missing path")
    if os.path.exists(rest) or ":" not in rest:
        return LocalRef(transport, rest, None)
    cut = len(rest)
    while True:
        cut = rest.rfind(":", 0, cut)
        if cut <= 0:
            break
        if os.path.exists(rest[:cut]):
            return LocalRef(transport, rest[:cut], rest[cut + 1:] or None)
    head, _, tail = rest.rpartition(":")
    if head and "/" not in tail:
        return LocalRef(transport, head, tail or None)
    return LocalRef(transport, rest, None)


def default_pull_name(uri: str) -> str:
    """Apptainer's rule: last path element, its tag (default 'latest'): alpine_latest.sif."""
    transport, ref = split_transport(uri)
    if not transport:
        return ""
    ref = ref.lstrip("/")
    container = ref.split("/")[-1]
    tag = "latest"
    if ":" in container:
        container, tag = container.split(":")[:2]
        tag = tag.split(",")[0]
    return f"{container}_{tag}.sif"
