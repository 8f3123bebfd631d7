"""OCI image layouts (`oci:DIR[:TAG]`) and OCI archives (`oci-archive:FILE[:TAG]`, a tar of a
layout): choose the image by its `org.opencontainers.image.ref.name`, descend indexes to the
linux/ARCH manifest, and open blobs with their digests checked.

Manifests and configs are checked when read; a layer's digest is checked as it streams through
extraction, and `verify()` fails the build before anything is written if it does not match.
"""

from __future__ import annotations

import contextlib
import json

from satchel.errors import OCIError
from satchel.oci import digest as digests, manifest as mt, stream
from satchel.oci.source import Image, Layer, warn_arch
from satchel.oci.store import DirStore, TarStore, read

REF_NAME = "org.opencontainers.image.ref.name"
MAX_DEPTH = 4  # nested indexes


def open_layout_dir(path: str, selector: str | None, arch: str, variant: str) -> Image:
    what = f"oci:{path}"
    return open_layout(DirStore(path, what), selector, arch, variant, what)


def open_layout_archive(path: str, selector: str | None, arch: str, variant: str) -> Image:
    what = f"oci-archive:{path}"
    store = TarStore(path, what)
    try:
        return open_layout(store, selector, arch, variant, what)
    except BaseException:
        store.close()
        raise


def _blob_name(dig: digests.Digest) -> str:
    return f"blobs/{dig.algorithm}/{dig.hex}"


def read_blob(store, desc: mt.Descriptor, what: str) -> bytes:
    data = read(store, _blob_name(desc.digest))
    actual = digests.of_bytes(data, desc.digest.algorithm)
    if actual != desc.digest:
        raise OCIError(f"{what}: blob {desc.digest} is corrupt (content has digest {actual})",
                       in_context=True)
    if len(data) != desc.size:
        raise OCIError(f"{what}: blob {desc.digest} has {len(data)} bytes, descriptor says "
                       f"{desc.size}", in_context=True)
    return data


def _choose(index: mt.Index, selector: str | None, arch: str, variant: str, what: str
            ) -> mt.Descriptor:
    entries = index.manifests
    if not entries:
        raise OCIError(f"{what}: the layout holds no images", in_context=True)
    tags = [e.annotations.get(REF_NAME) for e in entries if e.annotations.get(REF_NAME)]
    if selector:
        found = [e for e in entries if e.annotations.get(REF_NAME) == selector
                 or str(e.digest) == selector]
        if not found:
            raise OCIError(f"{what}: no image tagged {selector!r} (tags: "
                           f"{', '.join(tags) or 'none'})", in_context=True)
        if len(found) > 1:
            return mt.select_platform(mt.Index(index.media_type, found, None, b""), arch,
                                      variant, what)
        return found[0]
    if len(entries) == 1:
        return entries[0]
    if not tags and all(e.platform for e in entries):  # the top index is itself multi-arch
        return mt.select_platform(index, arch, variant, what)
    raise OCIError(f"{what}: the layout holds {len(entries)} images; choose one with :TAG "
                   f"(tags: {', '.join(tags) or 'none'})", in_context=True)


def open_layout(store, selector, arch, variant, what) -> Image:
    try:
        marker = json.loads(read(store, "oci-layout", 1 << 16))
    except ValueError:
        raise OCIError(f"{what}: oci-layout is not valid JSON", in_context=True) from None
    if not isinstance(marker, dict) or not isinstance(marker.get("imageLayoutVersion"), str):
        raise OCIError(f"{what}: not an OCI image layout (bad oci-layout file)", in_context=True)
    data = read(store, "index.json")
    index = mt.parse(data, mt.OCI_INDEX, digests.of_bytes(data), f"{what}: index.json")
    if not isinstance(index, mt.Index):
        raise OCIError(f"{what}: index.json is not an image index", in_context=True)
    entry = _choose(index, selector, arch, variant, what)
    for _ in range(MAX_DEPTH):
        doc = mt.parse(read_blob(store, entry, what), entry.media_type or None, entry.digest,
                       f"{what}: manifest {entry.digest.short()}")
        if isinstance(doc, mt.Manifest):
            break
        entry = mt.select_platform(doc, arch, variant, what)
    else:
        raise OCIError(f"{what}: indexes nested too deeply", in_context=True)
    config_doc = mt.load_json(read_blob(store, doc.config, what), f"{what}: image config")
    warn_arch(what, config_doc, arch)
    layers = []
    for i, desc in enumerate(doc.layers):
        if desc.media_type not in mt.LAYER_TYPES:
            raise OCIError(f"{what}: layer {i + 1} has unsupported media type "
                           f"{desc.media_type!r}", in_context=True)
        layers.append(Layer(desc.digest.short(), desc.size, _opener(store, desc, what)))
    return Image(what, doc.digest, config_doc, layers, [store.close])


def _opener(store, desc: mt.Descriptor, what: str):
    @contextlib.contextmanager
    def open_layer(progress_cb=None):
        with store.open(_blob_name(desc.digest)) as raw:
            tap = stream.TapReader(raw, desc.digest.hasher(), progress_cb)
            decoded = stream.decoder(tap, desc.compression)

            def check():
                while decoded.read(stream.CHUNK):
                    pass
                tap.drain()
                if tap.count != desc.size or tap.hasher.hexdigest() != desc.digest.hex:
                    raise OCIError(f"{what}: layer {desc.digest} is corrupt (digest or size "
                                   "mismatch)", in_context=True)
            yield stream.CheckedReader(decoded, check)
    return open_layer
