"""Images given as URIs to exec/run/shell/test/inspect/instance start: a SIF file to run.

`satchel exec docker://alpine:3.19 cat /etc/os-release` runs what `satchel pull` would make,
straight from the cache: a registry image resolves to its platform manifest and runs from
oci-tmp/<manifest hex>.sif (pull.cached_sif, converted once, under that digest's lock); a
second run transfers the manifest and nothing else; an oras:// SIF artifact runs from its
verified blob in the cache (oci/oras.py). Sources with no digest to cache them by
(oci-archive:, docker-archive:, oci:) and any source under --disable-cache are converted to
a temporary SIF that the reaper removes when the container ends.

Imported only when the image is a URI: the exec path of an image file never loads the OCI
code (tests/unit/test_import_budget.py).
"""

from __future__ import annotations

import os

from satchel.errors import UsageError

REFUSED_SCHEMES = {
    "library://": "library:// images need a library, and no library endpoint is configured "
                  "here: pull the image elsewhere or use docker:// or oras://",
    "shub://": "shub:// (Singularity Hub) is retired: use docker:// or oras://",
    "docker-daemon:": "docker-daemon: sources are not supported: save the image with "
                      "'docker save' and use docker-archive:FILE",
    "http://": "images by http(s):// URL are not supported: download the file first",
    "https://": "images by http(s):// URL are not supported: download the file first",
    "ipfs://": "ipfs:// images are not supported",
}


def resolve(uri: str, parsed) -> tuple[str, tuple[str, ...]]:
    """(SIF path to run, temporary paths the reaper removes afterwards) for an image URI.

    parsed: the action's options (--disable-cache, --nohttps, --docker-*, --authfile,
    --tmpdir are read from it, as pull reads its own).
    """
    for scheme, why in REFUSED_SCHEMES.items():
        if uri.startswith(scheme):
            raise UsageError(f"{uri}: {why}")
    from satchel.build.builder import BuildOptions
    from satchel.oci import pull, reference as refs, source

    fetch = source.FetchOptions.from_options(parsed)
    tmpdir = getattr(parsed, "tmpdir", None) or None
    build_options = BuildOptions(force=True, tmpdir=tmpdir)
    cache = fetch.cache()
    oras = uri.startswith("oras://")
    if oras and cache is not None:  # a SIF artifact: the verified blob in the cache is it
        from satchel.oci import oras as orasmod
        return orasmod.fetch(uri, fetch, cache), ()
    ref = None if oras else refs.parse(uri)
    if isinstance(ref, refs.DockerRef) and cache is not None:
        return pull.cached_sif(ref, uri, fetch, cache, build_options), ()
    # no digest to cache by, or no cache wanted: a temporary SIF for this run only
    from satchel.runtime import reaper

    def fill(temp_dir: str) -> None:
        sif_path = os.path.join(temp_dir, "image.sif")
        if oras:
            from satchel.oci import oras as orasmod
            orasmod.pull(uri, sif_path, True, fetch)
        else:
            pull.pull(uri, sif_path, True, fetch, build_options)

    temp_dir = reaper.temp_dir("satchel-image-", parsed, uri, fill)
    return os.path.join(temp_dir, "image.sif"), (temp_dir,)
