"""`Bootstrap: oras` (From: REGISTRY/REPO:TAG, with or without oras://): a SIF stored in a
registry as an ORAS artifact is the base image, as with `localimage`.

The SIF is pulled through the cache (satchel.oci.oras: digest-verified, checked to be a SIF;
a private cache under the build's work directory with --disable-cache), then its root file
system is unpacked into the build's rootfs. Its /.singularity.d is kept; the definition's
sections are added on top.
"""

from __future__ import annotations

import os

from satchel.build.agents import AgentContext, FetchResult, warn_unused_headers
from satchel.errors import BuildError


def source_uri(header: dict) -> str:
    ref = (header.get("from") or "").strip()
    if not ref:
        raise BuildError("Bootstrap: oras needs a From: header naming the SIF "
                         "(REGISTRY/REPO:TAG)")
    return ref if ref.startswith("oras://") else "oras://" + ref.lstrip("/")


def fetch(ctx: AgentContext) -> FetchResult:
    from satchel import log
    from satchel.image import squashfs
    from satchel.image.formats import open_image
    from satchel.oci import oras, source
    from satchel.oci.cache import Cache
    warn_unused_headers(ctx, used=("from",))
    uri = source_uri(ctx.header)
    opts = source.fetch_options(ctx.options)
    cache = opts.cache() or Cache(os.path.join(ctx.workdir, "oras-cache"))
    log.info(f"Fetching {uri}")
    path = oras.fetch(uri, opts, cache)
    ref = open_image(path)
    squashfs.extract(ref.path, ctx.rootfs, ref.fs_offset)
    return FetchResult(keep_layout=True)  # the SIF's runscript, environment, labels stay
