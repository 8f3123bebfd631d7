"""Bootstrap agents docker, docker-archive, oci, oci-archive (and a clear refusal for
docker-daemon): fill the build's rootfs from an OCI image and report its runtime config.

    Bootstrap: docker             From: alpine:3.19      (also Registry:/Namespace: headers)
    Bootstrap: docker-archive     From: image.tar[:repo:tag]
    Bootstrap: oci                From: layout-dir[:tag]
    Bootstrap: oci-archive        From: image-oci.tar[:tag]

Registry blobs go through the cache (a temporary one under the build's workdir with
--disable-cache), so a build after a pull of the same image downloads nothing.
"""

from __future__ import annotations

import os

from satchel import log
from satchel.build.agents import AgentContext, FetchResult
from satchel.errors import BuildError, OCIError
from satchel.oci import progress, source
from satchel.oci.cache import Cache

USED_HEADERS = ("from", "registry", "namespace")


def source_uri(header: dict) -> str:
    """The image URI a definition header names (Apptainer's Registry/Namespace rules)."""
    bootstrap = (header.get("bootstrap") or "").strip().lower()
    ref = (header.get("from") or "").strip()
    if not ref:
        raise BuildError(f"Bootstrap: {bootstrap} needs a From: header naming the image")
    if bootstrap in ("docker", "docker-daemon"):
        if ref.startswith("docker://"):
            ref = ref[len("docker://"):]
        namespace = (header.get("namespace") or "").strip().strip("/")
        registry = (header.get("registry") or "").strip().strip("/")
        if namespace:
            ref = f"{namespace}/{ref}"
        if registry:
            ref = f"{registry}/{ref}"
        return f"{bootstrap}://{ref}"
    prefix = f"{bootstrap}:"
    return ref if ref.startswith(prefix) else prefix + ref


def fetch(ctx: AgentContext) -> FetchResult:
    from satchel.build.agents import warn_unused_headers
    warn_unused_headers(ctx, USED_HEADERS)
    uri = source_uri(ctx.header)
    opts = source.fetch_options(ctx.options)
    result = fetch_into(uri, ctx.rootfs, opts, temp_root=ctx.workdir)
    if exported_from_sif(result, ctx.rootfs):
        # Its /.singularity.d is complete (runscript, %environment, labels) and must stay:
        # a runscript rewritten from the image's Entrypoint, which execs that very runscript,
        # would run itself forever.
        log.verbose(f"{uri} was exported from a SIF: keeping its /.singularity.d")
        return FetchResult(keep_layout=True)
    return result


def exported_from_sif(result: FetchResult, rootfs: str) -> bool:
    """An image made by `satchel push --oci`: its Entrypoint, and a runscript to run."""
    from satchel.oci.export import ENTRYPOINT, RUNSCRIPT
    if result.entrypoint != ENTRYPOINT or result.cmd:
        return False
    return os.path.isfile(os.path.join(rootfs, RUNSCRIPT.lstrip("/")))


def fetch_into(uri: str, rootfs: str, opts: source.FetchOptions, temp_root: str) -> FetchResult:
    """Fetch `uri` and apply its layers to `rootfs`; returns the image's runtime config."""
    cache = opts.cache()
    if cache is None:
        cache = Cache(os.path.join(temp_root, "oci-cache"))
    log.info(f"Fetching {uri}")
    bar = progress.Bar("Fetching", 0)
    try:
        image = source.open_image(uri, opts, cache, bar)
    except OCIError as err:
        raise err.in_context_of(f"while fetching {uri}") from None
    try:
        bar.total = image.progress_total()
        stats = source.unpack(image, rootfs, bar)
    except OCIError as err:
        raise err.in_context_of(f"while unpacking {uri}") from None
    finally:
        bar.close()
        image.close()
    log.verbose(f"{uri}: {stats.layers} layer(s), {stats.entries} entries, "
                f"{stats.bytes} bytes of file data")
    config = image.runtime_config()
    return FetchResult(env=config.env, entrypoint=config.entrypoint, cmd=config.cmd,
                       workdir=config.workdir, labels=config.labels)
