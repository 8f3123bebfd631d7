"""Manifests and indexes (OCI image spec, Docker v2 schema 2 and manifest lists): parsing,
validation and platform selection.

Every descriptor is validated here (digest syntax, size, media type) so later code can build
cache paths from digests and trust sizes as upper bounds.
"""

from __future__ import annotations

import json
import os

from satchel.errors import OCIError
from satchel.oci import digest as digests

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_V1_MANIFESTS = ("application/vnd.docker.distribution.manifest.v1+json",
                       "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# what we ask registries for, most preferred first
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

# layer media type -> compression ("gzip", "zstd", "" for none)
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}

# uname -m -> OCI architecture, variant
_MACHINE_ARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"), "i386": ("386", ""), "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    "mips64": ("mips64le", ""), "loongarch64": ("loong64", ""),
}
# --arch values (Apptainer's names plus OCI's) -> architecture, variant
ARCH_NAMES = {
    "amd64": ("amd64", ""), "x86_64": ("amd64", ""), "386": ("386", ""), "i386": ("386", ""),
    "arm64": ("arm64", "v8"), "arm64v8": ("arm64", "v8"), "aarch64": ("arm64", "v8"),
    "arm": ("arm", "v7"), "arm32v7": ("arm", "v7"), "arm32v6": ("arm", "v6"),
    "arm32v5": ("arm", "v5"), "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""), "mips64le": ("mips64le", ""), "loong64": ("loong64", ""),
}


class Descriptor:
    """A validated content descriptor."""

    __slots__ = ("media_type", "digest", "size", "platform", "annotations", "urls")

    def __init__(self, media_type: str, digest: digests.Digest, size: int,
                 platform: dict | None = None, annotations: dict | None = None,
                 urls: list | None = None):
        self.media_type = media_type
        self.digest = digest
        self.size = size
        self.platform = platform or {}
        self.annotations = annotations or {}
        self.urls = urls or []

    @property
    def compression(self) -> str:
        return LAYER_TYPES.get(self.media_type, "")

    def platform_name(self) -> str:
        p = self.platform
        name = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
        return name + (f"/{p['variant']}" if p.get("variant") else "")

    def __repr__(self) -> str:
        return f"Descriptor({self.media_type!r}, {str(self.digest)!r}, {self.size})"


class Manifest:
    """An image manifest: config descriptor plus ordered layer descriptors."""

    __slots__ = ("media_type", "config", "layers", "digest", "raw")

    def __init__(self, media_type, config, layers, digest, raw):
        self.media_type = media_type
        self.config = config
        self.layers = layers
        self.digest = digest
        self.raw = raw


class Index:
    """An image index or Docker manifest list."""

    __slots__ = ("media_type", "manifests", "digest", "raw")

    def __init__(self, media_type, manifests, digest, raw):
        self.media_type = media_type
        self.manifests = manifests
        self.digest = digest
        self.raw = raw


def load_json(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise OCIError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise OCIError(f"{what} is not a JSON object")
    return doc


def descriptor(obj: object, what: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise OCIError(f"{what}: descriptor is not an object")
    media_type = obj.get("mediaType", "")
    size = obj.get("size")
    if not isinstance(media_type, str):
        raise OCIError(f"{what}: bad mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise OCIError(f"{what}: bad size {size!r}")
    dig = digests.parse(obj.get("digest"), f"{what} digest")
    platform = obj.get("platform")
    annotations = obj.get("annotations")
    urls = obj.get("urls")
    return Descriptor(media_type, dig, size,
                      platform if isinstance(platform, dict) else None,
                      annotations if isinstance(annotations, dict) else None,
                      urls if isinstance(urls, list) else None)


def parse(data: bytes, media_type: str | None, dig: digests.Digest, what: str = "manifest"
          ) -> Manifest | Index:
    """Parse a manifest or index. The document's own mediaType wins; without one, the type the
    registry sent (Content-Type) or, failing that, the shape of the document decides."""
    doc = load_json(data, what)
    kind = doc.get("mediaType")
    if not isinstance(kind, str) or not kind:
        known = INDEX_TYPES + MANIFEST_TYPES + DOCKER_V1_MANIFESTS
        kind = media_type if media_type in known else ""
    if kind in DOCKER_V1_MANIFESTS or doc.get("schemaVersion") == 1:
        raise OCIError(f"{what}: Docker image manifest schema 1 is not supported",
                       hint="this image is too old; push it again with a current Docker")
    if doc.get("schemaVersion") != 2:
        raise OCIError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    if not kind:  # OCI allows an absent mediaType: tell index from manifest by content
        kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if kind in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise OCIError(f"{what}: index without a manifests list")
        return Index(kind, [descriptor(m, f"{what} entry {i}") for i, m in enumerate(entries)],
                     dig, data)
    if kind in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise OCIError(f"{what}: manifest without a layers list")
        config = descriptor(doc.get("config"), f"{what} config")
        return Manifest(kind, config, [descriptor(l, f"{what} layer {i}")
                                       for i, l in enumerate(layers)], dig, data)
    raise OCIError(f"{what}: unsupported media type {kind!r}")


def host_platform() -> tuple[str, str]:
    machine = os.uname().machine
    return _MACHINE_ARCH.get(machine, (machine, ""))


def parse_arch(value: str | None) -> tuple[str, str]:
    """--arch VALUE -> (architecture, variant); None -> the host's."""
    if not value:
        return host_platform()
    text = value.strip().lower()
    if text.startswith("linux/"):
        text = text[len("linux/"):]
    if "/" in text:
        arch, _, variant = text.partition("/")
        return ARCH_NAMES.get(arch, (arch, ""))[0], variant
    if text in ARCH_NAMES:
        return ARCH_NAMES[text]
    raise OCIError(f"unknown architecture {value!r}",
                   hint="one of " + ", ".join(sorted(ARCH_NAMES)))


def select_platform(index: Index, arch: str, variant: str, what: str) -> Descriptor:
    """The linux/ARCH[/VARIANT] manifest of an index. An unspecified variant in the index
    matches (arm64 images rarely say v8); an exact variant match is preferred."""
    candidates = []
    for entry in index.manifests:
        if entry.media_type and entry.media_type not in MANIFEST_TYPES:
            continue  # attestations, nested indexes: not images we can run
        p = entry.platform
        if p.get("os", "linux") != "linux" or p.get("architecture") != arch:
            continue
        entry_variant = p.get("variant", "")
        if variant and entry_variant and entry_variant != variant:
            continue
        candidates.append((entry_variant == variant, entry))
    if not candidates:
        available = ", ".join(sorted({e.platform_name() for e in index.manifests
                                      if e.platform})) or "none"
        want = f"linux/{arch}" + (f"/{variant}" if variant else "")
        raise OCIError(f"{what}: no image for {want} (available: {available})",
                       hint="choose another architecture with --arch")
    candidates.sort(key=lambda c: not c[0])
    return candidates[0][1]
