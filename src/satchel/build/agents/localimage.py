"""`Bootstrap: localimage` (From: a SIF, a SquashFS image or a sandbox directory).

Also what `satchel build new.sif old.sif` and `satchel build new.sif sandbox/` use. The image's
own /.singularity.d (labels, environment, runscript...) is kept; the new definition's sections
are added on top (its old definition moves to /.singularity.d/bootstrap_history).
"""

from __future__ import annotations

import os

from satchel import log
from satchel.build import process
from satchel.build.agents import AgentContext, FetchResult, warn_unused_headers
from satchel.errors import BuildError, SatchelError


def source_path(ctx: AgentContext) -> str:
    source = ctx.header.get("from", "").strip()
    if not source:
        raise BuildError("Bootstrap: localimage needs a 'From:' image path")
    if not os.path.isabs(source) and ctx.definition.path:
        candidate = os.path.join(os.path.dirname(ctx.definition.path), source)
        if os.path.exists(candidate) and not os.path.exists(source):
            source = candidate
    return os.path.abspath(source)


def fetch(ctx: AgentContext) -> FetchResult:
    if "fingerprints" in ctx.header:
        log.warning("header key 'fingerprints' is ignored: satchel does not verify signatures yet")
    warn_unused_headers(ctx, used=("from", "fingerprints"))
    source = source_path(ctx)
    from satchel.image.formats import open_image
    try:
        ref = open_image(source)
    except SatchelError as err:
        raise BuildError(f"localimage source: {err.message}") from None
    if ref.kind == "sandbox":
        if os.path.abspath(source) == os.path.abspath(ctx.rootfs):
            raise BuildError("localimage source is the build's own root filesystem")
        if not overlay(ref.path, ctx):
            # cp -a keeps owners, modes, links, devices, hard links and xattrs
            process.run(["cp", "-a", "--", ref.path.rstrip("/") + "/.", ctx.rootfs],
                        f"while copying sandbox {source}", quiet=True)
        return FetchResult(keep_layout=True)  # the base image's own files stay
    # SIF (its primary SquashFS partition), a bare SquashFS file or a legacy .simg
    from satchel.image import squashfs
    # as uid 0 of a user namespace mknod is refused: leave device nodes out (the runtime
    # gives every container its own /dev anyway)
    skipped = squashfs.extract(ref.path, ctx.rootfs, ref.fs_offset, skip_devices=ctx.fakeroot)
    if skipped:
        log.info(f"left out {skipped} device node{'s' if skipped > 1 else ''} of {source}: "
                 "a non-root build cannot create them")
    return FetchResult(keep_layout=True)


def overlay(source: str, ctx: AgentContext) -> bool:
    """Mount an overlay (lower: the sandbox, upper: the work directory) on ctx.rootfs.

    Copying a 200 MB sandbox costs seconds of I/O and more to delete afterwards; an overlay
    costs a mount. Every change (layout, %files, %post) lands in the upper directory, the
    source sandbox is never modified, and mksquashfs reads the merged view. The mount lives in
    the build's private mount namespace and is detached before the work directory is removed.
    Returns False (copy instead) where overlayfs is unusable: odd characters in the path, a
    file system that refuses it, no privilege.
    """
    from satchel.build import ns
    from satchel.errors import ContainerError
    from satchel.runtime import linux
    if os.environ.get("SATCHEL_BUILD_NO_OVERLAY") or any(c in source for c in ",:\\"):
        return False
    upper = os.path.join(ctx.workdir, "overlay-upper-" + os.path.basename(ctx.rootfs))
    work = os.path.join(ctx.workdir, "overlay-work-" + os.path.basename(ctx.rootfs))
    # volatile: no syncs of the throw-away upper directory (unmounting would otherwise sync the
    # whole file system, hundreds of ms with a fresh image on it)
    base = f"lowerdir={source},upperdir={upper},workdir={work}"
    options = [base + ",volatile", base]
    if ctx.fakeroot:
        options = [o + ",userxattr" for o in options] + options
    try:
        ns.private_mount_namespace()
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
    except (OSError, ContainerError) as err:
        log.verbose(f"overlay not available ({err}); copying the sandbox")
        return False
    for option in options:
        try:
            linux.mount("overlay", ctx.rootfs, "overlay", 0, option, "mounting the overlay")
            log.verbose(f"sandbox {source} mounted as an overlay on {ctx.rootfs}")
            return True
        except ContainerError as err:
            log.verbose(f"overlay mount with {option} failed: {err}")
    return False
