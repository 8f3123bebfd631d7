"""docker-archive: the `docker save` tarball (manifest.json listing Config and Layers per
image, RepoTags naming them), read in place.

Layers in such archives are usually uncompressed tars named by path, not digest; they are
verified against the config's rootfs.diff_ids (the sha256 of each uncompressed layer) as they
stream through extraction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re

from satchel.errors import OCIError
from satchel.oci import config as imgconfig, manifest as mt, stream
from satchel.oci.source import Image, Layer, warn_arch
from satchel.oci.store import TarStore, read

_HEX64 = re.compile(r"([a-f0-9]{64})(?:\.json)?\Z")


def _normal_tag(tag: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if tag.startswith(prefix):
            return tag[len(prefix):]
    return tag


def _choose(entries: list, selector: str | None, what: str) -> dict:
    tags = [t for e in entries for t in (e.get("RepoTags") or [])]
    if selector is None:
        if len(entries) == 1:
            return entries[0]
        raise OCIError(f"{what}: the archive holds {len(entries)} images; choose one with "
                       f":REPO:TAG or :@N (tags: {', '.join(tags) or 'none'})", in_context=True)
    if selector.startswith("@") and selector[1:].isdigit():
        n = int(selector[1:])
        if n >= len(entries):
            raise OCIError(f"{what}: no image @{n}: the archive holds {len(entries)}",
                           in_context=True)
        return entries[n]
    want = _normal_tag(selector if ":" in selector else selector + ":latest")
    for entry in entries:
        if want in [_normal_tag(t) for t in (entry.get("RepoTags") or [])]:
            return entry
    raise OCIError(f"{what}: no image tagged {selector!r} (tags: {', '.join(tags) or 'none'})",
                   in_context=True)


def open_docker_archive(path: str, selector: str | None, arch: str | None = None) -> Image:
    what = f"docker-archive:{path}"
    store = TarStore(path, what)
    try:
        try:
            entries = json.loads(read(store, "manifest.json"))
        except ValueError:
            raise OCIError(f"{what}: manifest.json is not valid JSON", in_context=True) from None
        if not isinstance(entries, list) or not entries or \
                not all(isinstance(e, dict) for e in entries):
            raise OCIError(f"{what}: manifest.json does not list any image", in_context=True)
        entry = _choose(entries, selector, what)
        config_name = entry.get("Config")
        layer_names = entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list) or \
                not all(isinstance(n, str) for n in layer_names):
            raise OCIError(f"{what}: manifest.json entry lacks Config or Layers", in_context=True)
        config_data = read(store, config_name)
        named = _HEX64.search(config_name)
        if named and hashlib.sha256(config_data).hexdigest() != named.group(1):
            raise OCIError(f"{what}: image config {config_name} is corrupt (digest mismatch)",
                           in_context=True)
        config_doc = mt.load_json(config_data, f"{what}: image config")
        if arch:
            warn_arch(what, config_doc, arch)
        diff_ids = imgconfig.diff_ids(config_doc)
        if len(diff_ids) != len(layer_names):
            raise OCIError(f"{what}: the config lists {len(diff_ids)} layers, manifest.json "
                           f"{len(layer_names)}", in_context=True)
        layers = [Layer(name.split("/")[0][:12] or name, store.size(name) or 0,
                        _opener(store, name, diff_id, what))
                  for name, diff_id in zip(layer_names, diff_ids)]
        return Image(what, None, config_doc, layers, [store.close])
    except BaseException:
        store.close()
        raise


def _opener(store, name: str, diff_id: str, what: str):
    algorithm, _, expected = diff_id.partition(":")
    if algorithm not in ("sha256", "sha512") or not expected:
        raise OCIError(f"{what}: bad diff_id {diff_id!r}", in_context=True)

    @contextlib.contextmanager
    def open_layer(progress_cb=None):
        with store.open(name) as raw:
            tap = stream.TapReader(raw, None, progress_cb)
            hashed = stream.TapReader(stream.decoder(tap), hashlib.new(algorithm))

            def check():
                hashed.drain()
                if hashed.hasher.hexdigest() != expected:
                    raise OCIError(f"{what}: layer {name} is corrupt (its content does not "
                                   f"match diff_id {diff_id})", in_context=True)
            yield stream.CheckedReader(hashed, check)
    return open_layer
