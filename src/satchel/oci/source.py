"""Image sources: one shape for images from a registry, an OCI layout (directory or archive)
and a docker-archive — a manifest digest (when there is one), the image config and an ordered
list of layers that open as uncompressed, verified tar streams.

Registry layers download into the cache in background threads (at most PARALLEL at a time)
while the caller applies the earlier ones: extraction of layer 1 overlaps the download of
layers 2..n. Threads are daemons, so a fatal error or ^C does not wait for them.
"""

from __future__ import annotations

import contextlib
import os
import threading

from satchel import log
from satchel.errors import OCIError, SatchelError
from satchel.oci import auth, blobs, config as imgconfig, manifest as mt, progress, stream
from satchel.oci import digest as digests
from satchel.oci.cache import Cache
from satchel.oci.reference import DockerRef, LocalRef, parse as parse_ref
from satchel.oci.registry import Registry

PARALLEL = 4
NOHTTPS_ENV = ("APPTAINER_NOHTTPS", "SINGULARITY_NOHTTPS", "APPTAINER_NO_HTTPS",
               "SINGULARITY_NO_HTTPS")
_TRUE = ("1", "true", "yes", "on", "y", "t")


class FetchOptions:
    """What a pull or a docker/oci bootstrap needs to know, from options and environment."""

    __slots__ = ("arch", "variant", "plain_http", "username", "password", "disable_cache",
                 "cache_root", "authfile")

    def __init__(self, arch=None, plain_http=False, username=None, password=None,
                 disable_cache=False, cache_root=None, authfile=None):
        self.arch, self.variant = mt.parse_arch(arch)
        self.plain_http = plain_http
        self.username = username
        self.password = password
        self.disable_cache = disable_cache
        self.cache_root = cache_root
        self.authfile = authfile  # a Docker config.json to read credentials from first

    @classmethod
    def from_options(cls, opts, environ=None) -> "FetchOptions":
        """From parsed command-line options (any object; missing attributes mean unset)."""
        environ = os.environ if environ is None else environ
        nohttps = bool(getattr(opts, "nohttps", False)) or any(
            environ.get(name, "").lower() in _TRUE for name in NOHTTPS_ENV)
        disable = bool(getattr(opts, "disable_cache", False)) or any(
            environ.get(name, "").lower() in _TRUE
            for name in ("APPTAINER_DISABLE_CACHE", "SINGULARITY_DISABLE_CACHE"))
        username = getattr(opts, "docker_username", None) or None
        password = getattr(opts, "docker_password", None) or None
        if getattr(opts, "docker_login", False) and not (username and password):
            username, password = auth.prompt_login(username)
        return cls(arch=getattr(opts, "arch", None) or None, plain_http=nohttps,
                   username=username, password=password, disable_cache=disable,
                   authfile=getattr(opts, "authfile", None) or None)

    def cache(self) -> Cache | None:
        if self.disable_cache:
            return None
        return Cache(self.cache_root) if self.cache_root else Cache.default()


def fetch_options(build_options) -> FetchOptions:
    """The FetchOptions a build's docker/oci/oras agent fetches with: those that rode in on
    BuildOptions.fetch (a pull, an image URI to run), else made once from the build's own
    options (`satchel build`) and kept there, so the environment is read and a --docker-login
    prompt shown once per build, never again by a later agent or stage."""
    if getattr(build_options, "fetch", None) is None:
        build_options.fetch = FetchOptions.from_options(build_options)
    return build_options.fetch


class Layer:
    """One layer: `open()` gives a context manager over its uncompressed tar stream."""

    __slots__ = ("name", "size", "_opener")

    def __init__(self, name: str, size: int, opener):
        self.name = name
        self.size = size
        self._opener = opener

    def open(self, progress_cb=None):
        return self._opener(progress_cb)


class Image:
    __slots__ = ("description", "manifest_digest", "config", "layers", "closers", "remote")

    def __init__(self, description, manifest_digest, config_doc, layers, closers=(),
                 remote=False):
        self.description = description
        self.manifest_digest = manifest_digest  # None for docker-archive (no manifest)
        self.config = config_doc
        self.layers = layers
        self.closers = list(closers)
        self.remote = remote  # layers are downloaded (and counted twice by progress bars)

    def progress_total(self) -> int:
        """Bytes a progress bar will count: downloads (when remote) plus extraction."""
        size = sum(layer.size for layer in self.layers)
        return size * 2 if self.remote else size

    def runtime_config(self) -> imgconfig.RuntimeConfig:
        return imgconfig.from_image_config(self.config)

    def close(self) -> None:
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()
        self.closers = []


# ---------------------------------------------------------------- registry
class RegistryImage:
    """A registry image resolved to one platform manifest; blobs not fetched yet."""

    def __init__(self, ref: DockerRef, registry: Registry, manifest: mt.Manifest, cache: Cache,
                 arch: str):
        self.ref = ref
        self.registry = registry
        self.manifest = manifest
        self.cache = cache
        self.arch = arch

    @property
    def digest(self) -> digests.Digest:
        return self.manifest.digest

    def fetch(self, bar=None) -> Image:
        """Config now; layers start downloading in the background."""
        bar = bar or progress.Null()
        conf_desc = self.manifest.config
        path = blobs.ensure_blob(self.cache, conf_desc, self.blob_opener(conf_desc),
                                 what="config")
        with open(path, "rb") as fh:
            config_doc = mt.load_json(fh.read(), f"{self.ref}: image config")
        warn_arch(str(self.ref), config_doc, self.arch)
        layers = []
        downloads = _Downloads(self, bar)
        for index, desc in enumerate(self.manifest.layers):
            if desc.media_type not in mt.LAYER_TYPES:
                raise OCIError(f"{self.ref}: layer {index + 1} has unsupported media type "
                               f"{desc.media_type!r}", in_context=True)
            layers.append(Layer(desc.digest.short(), desc.size, downloads.opener(index)))
        image = Image(str(self.ref), self.manifest.digest, config_doc, layers, remote=True)
        if isinstance(bar, progress.Bar):
            bar.total = image.progress_total()
        downloads.start()
        return image

    def blob_opener(self, desc: mt.Descriptor):
        return lambda offset: self.registry.open_blob(str(desc.digest), offset)


class _Downloads:
    """Background downloads of a manifest's layers, in order, PARALLEL at a time."""

    def __init__(self, image: RegistryImage, bar):
        self.image = image
        self.bar = bar
        descs = image.manifest.layers
        self.descs = descs
        self.done = [threading.Event() for _ in descs]
        self.paths: list[str | None] = [None] * len(descs)
        self.errors: list[BaseException | None] = [None] * len(descs)
        self.slots = threading.Semaphore(PARALLEL)
        self.stop = threading.Event()

    def start(self) -> None:
        seen: dict[str, int] = {}
        for index, desc in enumerate(self.descs):
            first = seen.setdefault(str(desc.digest), index)
            threading.Thread(target=self._run, args=(index, first), daemon=True,
                             name=f"blob-{desc.digest.short()}").start()

    def _run(self, index: int, first: int) -> None:
        try:
            if first != index:  # the same blob twice in one manifest: wait for the first
                self.done[first].wait()
                if self.errors[first] is None:
                    self.paths[index] = self.paths[first]
                else:
                    self.errors[index] = self.errors[first]
                return
            with self.slots:
                if self.stop.is_set():
                    raise OCIError("download cancelled")
                desc = self.descs[index]
                self.paths[index] = blobs.ensure_blob(
                    self.image.cache, desc, self.image.blob_opener(desc), self.bar.update,
                    what=f"layer {desc.digest.short()}")
        except BaseException as err:  # reported to the consumer, in order
            self.errors[index] = err
            self.stop.set()
        finally:
            self.done[index].set()

    def opener(self, index: int):
        @contextlib.contextmanager
        def open_layer(progress_cb=None):
            self.done[index].wait()
            if self.errors[index] is not None:
                err = self.errors[index]
                if isinstance(err, SatchelError):
                    raise err
                raise OCIError(f"downloading layer {self.descs[index].digest.short()}: {err}")
            with open(self.paths[index], "rb") as raw:
                tap = stream.TapReader(raw, progress=progress_cb)
                yield _Verified(stream.decoder(tap, self.descs[index].compression))
        return open_layer


class _Verified:
    """A decoded layer stream whose digest was checked already (or needs no check)."""

    def __init__(self, reader, check=None):
        self.reader = reader
        self._check = check

    def read(self, n: int = -1) -> bytes:
        return self.reader.read(n)

    def verify(self) -> None:
        if self._check is not None:
            self._check()


def _fetch_manifest(registry: Registry, cache: Cache, reference: str, what: str):
    """A manifest or index by tag or digest: from the cache when addressed by a digest we
    already hold, else from the registry, verified and then cached."""
    by_digest = digests.is_digest(reference)
    if by_digest:
        dig = digests.parse(reference)
        data = cache.read_blob(dig)
        if data is not None:
            log.debug(f"{what}: {reference} from the cache")
            return mt.parse(data, None, dig, what)
    data, media_type, header = registry.get_manifest(reference)
    algorithm = "sha256"
    if by_digest:
        algorithm = dig.algorithm
    elif header and digests.is_digest(header):
        algorithm = header.partition(":")[0]
    actual = digests.of_bytes(data, algorithm)
    if by_digest and actual != dig:
        raise OCIError(f"{what}: digest mismatch: asked for {reference}, received content "
                       f"with digest {actual}", in_context=True)
    if header and digests.is_digest(header) and header.startswith(algorithm + ":") \
            and header != str(actual):
        raise OCIError(f"{what}: digest mismatch: registry says {header}, content has "
                       f"digest {actual}", in_context=True)
    cache.put_blob(actual, data)
    return mt.parse(data, media_type, actual, what)


def resolve_registry(ref: DockerRef, opts: FetchOptions, cache: Cache) -> RegistryImage:
    """Resolve `ref` to the platform manifest (index -> linux/ARCH) without fetching blobs."""
    cache.ensure()
    creds = auth.find_credentials(ref.auth_keys, opts.username, opts.password,
                                  authfile=opts.authfile)
    registry = Registry(ref, creds, plain_http=opts.plain_http)
    doc = _fetch_manifest(registry, cache, ref.reference, str(ref))
    if isinstance(doc, mt.Index):
        entry = mt.select_platform(doc, opts.arch, opts.variant, str(ref))
        log.verbose(f"{ref}: {entry.platform_name()} manifest {entry.digest}")
        doc = _fetch_manifest(registry, cache, str(entry.digest),
                              f"{ref} ({entry.platform_name()})")
        if not isinstance(doc, mt.Manifest):
            raise OCIError(f"{ref}: index entry {entry.digest} is not an image manifest",
                           in_context=True)
    return RegistryImage(ref, registry, doc, cache, opts.arch)


def warn_arch(what: str, config_doc: dict, arch: str) -> None:
    """A single-platform image built for another architecture will not run here: say so."""
    image_arch = config_doc.get("architecture")
    if isinstance(image_arch, str) and image_arch and image_arch != arch:
        log.warning(f"{what}: the image is for {image_arch}, not {arch}")


# ---------------------------------------------------------------- local sources
def open_local(ref: LocalRef, opts: FetchOptions) -> Image:
    if ref.transport == "docker-archive":
        from satchel.oci import archive
        return archive.open_docker_archive(ref.path, ref.selector)
    from satchel.oci import layout
    if ref.transport == "oci":
        return layout.open_layout_dir(ref.path, ref.selector, opts.arch, opts.variant)
    return layout.open_layout_archive(ref.path, ref.selector, opts.arch, opts.variant)


def open_image(uri: str, opts: FetchOptions, cache: Cache | None, bar=None) -> Image:
    """Any supported source as an Image (registry layers start downloading)."""
    ref = parse_ref(uri)
    if isinstance(ref, DockerRef):
        if cache is None:
            raise OCIError("internal: a registry pull needs a cache (a temporary one with "
                           "--disable-cache)")
        return resolve_registry(ref, opts, cache).fetch(bar)
    return open_local(ref, opts)


def download(uri: str, opts: FetchOptions, cache: Cache, bar=None) -> list[str]:
    """Fetch every blob of a registry image into the cache (no extraction): the download
    phase of a pull on its own, for the benchmark and for warming a cache."""
    ref = parse_ref(uri)
    if not isinstance(ref, DockerRef):
        raise OCIError(f"{uri}: only registry images are downloaded", in_context=True)
    resolved = resolve_registry(ref, opts, cache)
    image = resolved.fetch(bar)
    for layer in image.layers:
        with layer.open():
            pass  # opening waits for the layer's download and raises its error
    return [cache.blob_path(desc.digest) for desc in resolved.manifest.layers]


def unpack(image: Image, rootfs: str, bar=None, as_root: bool | None = None):
    """Apply the image's layers to `rootfs`, verifying each layer stream to its end."""
    from satchel.oci.layers import Extractor
    extractor = Extractor(rootfs, as_root)
    update = bar.update if bar is not None else None
    for layer in image.layers:
        with layer.open(update) as layer_stream:
            extractor.apply(layer_stream, layer.name)
            layer_stream.verify()
    return extractor.finish()
