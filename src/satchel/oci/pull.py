"""`satchel pull`: an OCI image -> a SIF file, through the cache.

A registry image is first resolved to its platform manifest (index -> linux/ARCH), which
names the converted SIF in the cache: oci-tmp/<manifest hex>.sif. If that is there, the pull
copies it and transfers nothing but the manifest (nothing at all for a digest reference whose
manifest is cached). Otherwise, under the lock of that digest (20 concurrent pulls of one image
convert it once), the builder converts the image — the docker agent fetches the rootfs, the
layout, mksquashfs and the SIF writer do the rest, with no definition sections — from a
reference pinned to that manifest digest, so a tag moved meanwhile cannot put another image
under this name. The finished SIF is renamed into the cache, then copied to the destination.

Archives and layouts (and --disable-cache) are converted straight to the destination.
Every output is written to a temporary name next to it and renamed: an interrupted pull
leaves no partial image.
"""

from __future__ import annotations

import os
import shutil

from satchel import log
from satchel.errors import OCIError, SatchelError
from satchel.oci import reference as refs
from satchel.oci.cache import Cache
from satchel.oci.source import FetchOptions, resolve_registry

OCI_CONFIG_OBJECT = "oci-config.json"  # Apptainer's SIF object name for the OCI config


def destination(uri: str, output: str | None, directory: str | None) -> str:
    """Where the pull writes: OUTPUT, else Apptainer's NAME_TAG.sif; inside --dir if given."""
    name = output or refs.default_pull_name(uri)
    if not name:
        raise OCIError(f"cannot derive a file name from {uri!r}; give one")
    if directory:
        name = os.path.join(directory, name)
    return os.path.abspath(name)


def check_destination(dest: str, force: bool) -> None:
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise OCIError(f"cannot write {dest}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OCIError(f"cannot write {dest}: no permission to create files in {parent}")
    if os.path.lexists(dest):
        if not force:
            raise OCIError(f"image file already exists: {dest} - will not overwrite",
                           hint="use --force to replace it")
        if os.path.isdir(dest) and not os.path.islink(dest):
            raise OCIError(f"cannot replace {dest}: it is a directory")


def build_uri(uri: str) -> str:
    """The builder takes sources as SCHEME://REST; docker-archive:F becomes docker-archive://F
    (the agent turns it back)."""
    transport, rest = refs.split_transport(uri)
    if rest.startswith("//"):
        return uri
    return f"{transport}://{rest}"


def pinned_uri(ref: refs.DockerRef, digest: str) -> str:
    scheme = "http://" if ref.scheme == "http" else ""
    return f"docker://{scheme}{ref.registry}/{ref.repository}@{digest}"


def pull(uri: str, dest: str, force: bool, fetch: FetchOptions, build_options) -> str:
    """Pull `uri` into the SIF file `dest`; returns `dest`."""
    ref = refs.parse(uri)
    check_destination(dest, force)
    cache = fetch.cache()
    if isinstance(ref, refs.DockerRef) and cache is not None:
        install(cached_sif(ref, uri, fetch, cache, build_options), dest, force)
    else:
        if isinstance(ref, refs.LocalRef) and not os.path.exists(ref.path):
            raise OCIError(f"{uri}: {ref.path} does not exist", in_context=True)
        temp = _temp_name(dest)
        try:
            _build(build_uri(uri), temp, fetch, build_options, None, uri)
            _rename(temp, dest, force)
        finally:
            _unlink(temp)
    return dest


def cached_sif(ref, uri: str, fetch: FetchOptions, cache: Cache, build_options) -> str:
    """The cache's SIF for a registry image (oci-tmp/<manifest hex>.sif), converted first
    if it is not there yet; exec/run/shell/test on a docker:// URI run it from there."""
    cache.ensure()
    try:
        resolved = resolve_registry(ref, fetch, cache)
    except OCIError as err:
        raise err.context(f"while pulling {uri}") from None
    cached = cache.sif_path(resolved.digest)
    if usable_sif(cached):
        log.info(f"Using cached SIF image for {resolved.digest}")
        return cached
    with cache.lock(f"sif-{resolved.digest.hex}"):
        if usable_sif(cached):
            log.info(f"Using SIF image converted meanwhile for {resolved.digest}")
        else:
            log.info(f"Converting OCI blobs to SIF format ({resolved.digest})")
            convert(pinned_uri(ref, str(resolved.digest)), cached, cache, fetch,
                    build_options, uri, resolved.manifest.config.digest)
    return cached


def usable_sif(path: str) -> bool:
    """A cached SIF whose header and objects fit the file; anything else (a damaged or
    truncated file) is removed so that it gets converted again."""
    from satchel.errors import ImageError
    from satchel.image import sif
    if not os.path.isfile(path):
        return False
    try:
        with sif.SIFFile.open(path) as image:
            if image.primary_partition() is not None:
                return True
    except (ImageError, OSError):
        pass
    log.warning(f"removing damaged cached image {path}")
    _unlink(path)
    return False


def convert(uri: str, cached: str, cache: Cache, fetch: FetchOptions, build_options,
            shown: str, config_digest) -> None:
    """Build the SIF for `uri` in the cache's tmp/ and rename it to `cached`."""
    temp = cache.temp_path(os.path.basename(cached)) + ".sif"
    try:
        _build(uri, temp, fetch, build_options, cache.tmp_dir, shown)
        add_oci_config(temp, cache.read_blob(config_digest))
        os.rename(temp, cached)
    except OSError as err:
        raise OCIError(f"storing the converted image in the cache: {err.strerror}") from None
    finally:
        _unlink(temp)


def _build(uri: str, target: str, fetch: FetchOptions, build_options, tmpdir: str | None,
           shown: str) -> None:
    from satchel.build import builder
    options = build_options or builder.BuildOptions()
    options.force = True
    options.announce = False  # `target` is a temporary name; the caller reports the result
    if tmpdir and not options.tmpdir:
        options.tmpdir = tmpdir
    # the agent fetches with these, as they are (source.fetch_options), also in a forked
    # user-namespace child: nothing is read again from the environment or asked again
    options.fetch = fetch
    try:
        builder.build(target, uri, options)
    except SatchelError as err:  # unless the agent named the source already
        raise err.in_context_of(f"while pulling {shown}") from None


def add_oci_config(sif_path: str, config_blob: bytes | None) -> None:
    """Keep the image config's runtime part (Env, Entrypoint, Cmd, WorkingDir, User, Labels...)
    in the SIF as the JSON.Generic object "oci-config.json", where Apptainer keeps it: the
    layout turns most of it into /.singularity.d files, but WORKDIR, USER and the like have no
    other home (satchel, like Apptainer's native runtime, starts in the caller's directory)."""
    import json
    from satchel.image import sif
    if config_blob is None:
        return
    try:
        runtime = json.loads(config_blob).get("config") or {}
    except (ValueError, AttributeError):
        return
    data = json.dumps(runtime, separators=(",", ":")).encode()
    sif.add_object(sif_path, sif.NewObject(datatype=sif.DATA_GENERICJSON, data=data,
                                           name=OCI_CONFIG_OBJECT))


def install(cached: str, dest: str, force: bool) -> None:
    """Copy a cached SIF to `dest` (never a link: the user may modify their copy)."""
    temp = _temp_name(dest)
    try:
        shutil.copyfile(cached, temp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o755 & ~umask)
        _rename(temp, dest, force)
    except OSError as err:
        raise OCIError(f"writing {dest}: {err.strerror}") from None
    finally:
        _unlink(temp)


def _temp_name(dest: str) -> str:
    return os.path.join(os.path.dirname(dest),
                        f".{os.path.basename(dest)}.pull-{os.getpid()}")


def _rename(temp: str, dest: str, force: bool) -> None:
    if not force and os.path.lexists(dest):  # appeared while we worked
        raise OCIError(f"image file already exists: {dest} - will not overwrite",
                       hint="use --force to replace it")
    os.rename(temp, dest)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning(f"could not remove {path}: {err.strerror}")
