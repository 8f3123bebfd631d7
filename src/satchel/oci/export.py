"""`satchel push --oci IMAGE.sif DEST`: a SIF as a single-layer OCI image, to a registry
(docker://REG/REPO:TAG), an OCI layout archive (oci-archive:FILE.tar[:TAG]) or an OCI layout
directory (oci:DIR[:TAG]).

The layer is the SIF's root file system as a reproducible tar: sqfs2tar (squashfs-tools-ng)
streams the SquashFS partition as tar entries in directory order (SquashFS directories are
sorted by name), with the image's own numeric owners (never the caller's: nothing is unpacked
on the host), whole-second mtimes, hard links kept and no user or group names. sqfs2tar reads
a whole SquashFS file, so the partition is first copied out of the SIF with copy_file_range
(measured: 0.03 s for 50 MB; unpacking with unsquashfs and packing again with tar writes every
file to disk twice). The tar is compressed here (gzip by default, in blocks on every core, or
zstd or none), hashed on the way (diff_id and digest) and written once to a temporary file.

The config comes from the SIF's metadata:
- Env: the static assignments (`export NAME=value`, `export NAME="${NAME:-value}"`) of the
  environment scripts, in the order they are sourced;
- Entrypoint: a shell that sources /.singularity.d/env/*.sh and execs /.singularity.d/runscript
  with the container's arguments, so `podman run IMAGE args` prints what `satchel run` prints;
- Labels: the SIF's labels object (else /.singularity.d/labels.json); WorkingDir: the one of an
  image converted from OCI (its oci-config.json object); architecture: the partition's.

Converting such an image back (`satchel pull oci-archive:...`) recognises that Entrypoint and
keeps the image's own /.singularity.d (oci/agent.py), so SIF -> OCI -> SIF gives the same tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib

from satchel import log
from satchel.errors import OCIError, SatchelError
from satchel.oci import manifest as mt, progress
from satchel.oci import digest as digests

ENV_DIR = "/.singularity.d/env"
RUNSCRIPT = "/.singularity.d/runscript"
ENTRYPOINT_SCRIPT = ('for script in /.singularity.d/env/*.sh; do if [ -f "$script" ]; then '
                     '. "$script"; fi; done; exec /.singularity.d/runscript "$@"')
ENTRYPOINT = ["/bin/sh", "-c", ENTRYPOINT_SCRIPT, RUNSCRIPT]
COMPRESSIONS = ("gzip", "zstd", "none")
# gzip -1 against -6 on a Debian rootfs (121 MB of tar): 9% larger, 2.6x faster to make
GZIP_LEVEL = 1
ZSTD_LEVEL = 3
BLOCK = 1 << 20
SAMPLE = 64 << 10  # what decides whether a gzip block is worth compressing
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "none": "application/vnd.oci.image.layer.v1.tar"}


class Layer:
    """The layer blob written to `path`."""

    __slots__ = ("path", "digest", "diff_id", "size", "media_type")

    def __init__(self, path, digest, diff_id, size, media_type):
        self.path, self.digest, self.diff_id, self.size = path, digest, diff_id, size
        self.media_type = media_type

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


# ---------------------------------------------------------------- the SIF's side
class SifSource:
    """What an export reads from the SIF: where the SquashFS is, and the metadata."""

    def __init__(self, path: str):
        from satchel.image import sif
        self.path = path
        try:
            with sif.SIFFile.open(path) as image:
                part = image.primary_partition()
                if part is None or part.fs_type != sif.FS_SQUASH:
                    raise OCIError(f"cannot export {path}: the SIF has no root file system "
                                   "(no primary SquashFS partition)")
                self.offset, self.size = part.offset, part.size
                self.arch = part.arch or sif.host_arch()
                self.created = image.header.created
                self.labels_object = _json_object(image, sif.DATA_LABELS, None)
                self.oci_config = _json_object(image, sif.DATA_GENERICJSON, "oci-config.json")
        except OCIError:
            raise
        except SatchelError as err:
            raise OCIError(f"cannot export {path}: {err.message}") from None

    def config(self, diff_id: str) -> dict:
        """The OCI image config for this SIF whose one layer has `diff_id`."""
        from satchel.image import metadata, sif
        attrs = metadata.inspect(self.path, {"environment", "labels"})
        labels = self.labels_object if isinstance(self.labels_object, dict) \
            else attrs.get("labels") or {}
        runtime = {"Env": static_env(attrs.get("environment") or {}),
                   "Entrypoint": list(ENTRYPOINT),
                   "Labels": {str(k): str(v) for k, v in sorted(labels.items())}}
        workdir = (self.oci_config or {}).get("WorkingDir")
        if isinstance(workdir, str) and workdir:
            runtime["WorkingDir"] = workdir
        doc = {"architecture": self.arch, "os": "linux", "config": runtime,
               "rootfs": {"type": "layers", "diff_ids": [diff_id]},
               "history": [{"created_by": "satchel push --oci"}]}
        if self.created not in (0, sif.ZERO_TIME):
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
            doc["created"] = when
            doc["history"][0]["created"] = when
        return doc


def _json_object(image, datatype: int, name: str | None):
    found = image.find(datatype=datatype, name=name) if name else image.find(datatype=datatype)
    if not found:
        return None
    try:
        return json.loads(image.read_data(found[0].id))
    except (ValueError, OSError):
        return None


_ASSIGN = re.compile(r"^\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*?)\s*;?\s*$")
_DEFAULT = re.compile(r'^"\$\{([A-Za-z_][A-Za-z0-9_]*):-(.*)\}"$')


def static_env(scripts: dict[str, str]) -> list[str]:
    """NAME=value for the assignments whose value needs no shell to compute, in the order the
    scripts are sourced (by file name); a later assignment replaces an earlier one."""
    env: dict[str, str] = {}
    for name in sorted(scripts, key=os.path.basename):
        for line in scripts[name].splitlines():
            found = _ASSIGN.match(line)
            if not found:
                continue
            value = static_value(found.group(2))
            if value is None:
                log.verbose(f"{name}: {found.group(1)} is computed by the shell; not in Env")
                continue
            env.pop(found.group(1), None)
            env[found.group(1)] = value
    return [f"{k}={v}" for k, v in env.items()]


def static_value(text: str) -> str | None:
    """The value of a shell word that expands to a constant, else None: 'x', "x" (escapes
    \\ \" \\$ \\`), bare words, and satchel's "${NAME:-"x"}" defaults."""
    default = _DEFAULT.match(text)
    if default:
        inner = default.group(2)
        return static_value(inner) if inner else ""
    if len(text) >= 2 and text[0] == text[-1] == "'" and "'" not in text[1:-1]:
        return text[1:-1]
    if len(text) >= 2 and text[0] == text[-1] == '"':
        out, i, body = [], 0, text[1:-1]
        while i < len(body):
            c = body[i]
            if c == "\\" and i + 1 < len(body) and body[i + 1] in '\\"$`':
                out.append(body[i + 1])
                i += 2
                continue
            if c in '$`"':
                return None
            out.append(c)
            i += 1
        return "".join(out)
    if re.fullmatch(r"[A-Za-z0-9_./:,+@%=-]*", text):
        return text
    return None


# ---------------------------------------------------------------- the layer
def write_layer(source: SifSource, workdir: str, compression: str, bar=None) -> Layer:
    """The SIF's root file system as a tar layer blob in `workdir`."""
    if compression not in COMPRESSIONS:
        raise OCIError(f"unknown layer compression {compression!r}",
                       hint="choose one of " + ", ".join(COMPRESSIONS))
    sqfs = os.path.join(workdir, "rootfs.squashfs")
    _copy_range(source.path, source.offset, source.size, sqfs)
    tool = shutil.which("sqfs2tar") or "/usr/bin/sqfs2tar"
    if not os.access(tool, os.X_OK):
        raise OCIError("sqfs2tar not found", hint="install Debian's squashfs-tools-ng package")
    blob = os.path.join(workdir, "layer.blob")
    argv = [tool, "--no-skip", "--root-becomes", ".", sqfs]
    log.verbose("running: " + " ".join(argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        with open(blob, "wb") as out:
            writer = _Compressor(out, compression)
            diff = hashlib.sha256()
            while True:
                data = proc.stdout.read(BLOCK)
                if not data:
                    break
                diff.update(data)
                writer.write(data)
                if bar is not None:
                    bar.update(len(data))
            writer.close()
        errors = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise OCIError(f"cannot export {source.path}: sqfs2tar failed: "
                           f"{errors.splitlines()[-1] if errors else proc.returncode}")
    except OSError as err:
        raise OCIError(f"writing the layer of {source.path}: {err.strerror}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        os.unlink(sqfs)
    return Layer(blob, "sha256:" + writer.hasher.hexdigest(), "sha256:" + diff.hexdigest(),
                 writer.size, LAYER_TYPES[compression])


def _copy_range(path: str, offset: int, size: int, dest: str) -> None:
    try:
        with open(path, "rb") as src, open(dest, "wb") as dst:
            left, position = size, offset
            while left:
                n = os.copy_file_range(src.fileno(), dst.fileno(), left, position)
                if not n:
                    raise OCIError(f"{path}: file ends inside its root file system partition")
                left -= n
                position += n
    except OSError as err:
        raise OCIError(f"copying the root file system of {path}: {err.strerror}") from None


class _Compressor:
    """Compress, hash and write. gzip is made of independent 1 MiB deflate blocks (each
    primed with the 32 KiB before it, as pigz does) on a thread per core: zlib releases the
    GIL, so 2 cores compress at about twice the speed of one. The output depends only on the
    input, the level and zlib: a reproducible layer."""

    def __init__(self, out, compression: str):
        self.out = out
        self.compression = compression
        self.hasher = hashlib.sha256()
        self.size = 0
        self.crc = 0
        self.length = 0
        self.tail = b""
        self.pending = []
        self.pool = None
        if compression == "gzip":
            from concurrent.futures import ThreadPoolExecutor
            self.workers = max(1, min(os.cpu_count() or 1, 8))
            self.pool = ThreadPoolExecutor(self.workers)
            self._emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # no name, mtime 0
        elif compression == "zstd":
            from satchel.oci.stream import import_zstandard
            params = import_zstandard().ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
            self.zstd = params.compressobj()

    def _emit(self, data: bytes) -> None:
        if data:
            self.hasher.update(data)
            self.out.write(data)
            self.size += len(data)

    def write(self, data: bytes) -> None:
        if self.compression == "none":
            self._emit(data)
        elif self.compression == "zstd":
            self._emit(self.zstd.compress(data))
        else:
            self.crc = zlib.crc32(data, self.crc)
            self.length += len(data)
            self.pending.append(self.pool.submit(_deflate_block, data, self.tail))
            self.tail = data[-32768:]
            while len(self.pending) > self.workers * 2:
                self._emit(self.pending.pop(0).result())

    def close(self) -> None:
        if self.compression == "zstd":
            self._emit(self.zstd.flush())
        elif self.compression == "gzip":
            for future in self.pending:
                self._emit(future.result())
            self.pool.shutdown()
            self._emit(b"\x03\x00")  # an empty final block ends the deflate stream
            self._emit(self.crc.to_bytes(4, "little")
                       + (self.length & 0xFFFFFFFF).to_bytes(4, "little"))


def _deflate_block(data: bytes, dictionary: bytes) -> bytes:
    """One block of the deflate stream. A block whose first 64 KiB do not shrink by 3%
    (compressed files: .gz, .jar, .xz, .png, wheels) is stored: deflating it costs as much
    as good data and saves nothing (zstd skips such blocks the same way)."""
    level = GZIP_LEVEL
    sample = data[:SAMPLE]
    if len(sample) == SAMPLE and len(zlib.compress(sample, 1)) > SAMPLE * 0.97:
        level = 0
    if dictionary and level:
        comp = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                                dictionary)
    else:
        comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)


# ---------------------------------------------------------------- the image
class Exported:
    """A finished export in a work directory: layer file, config and manifest bytes."""

    def __init__(self, layer: Layer, config: bytes):
        self.layer = layer
        self.config = config
        self.config_digest = str(digests.of_bytes(config))
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
               "config": {"mediaType": mt.OCI_CONFIG, "digest": self.config_digest,
                          "size": len(config)},
               "layers": [layer.descriptor()]}
        self.manifest = json.dumps(doc, separators=(",", ":")).encode()
        self.manifest_digest = str(digests.of_bytes(self.manifest))


def export(source: SifSource, workdir: str, compression: str) -> Exported:
    bar = progress.Bar("Exporting", source.size)
    try:
        layer = write_layer(source, workdir, compression, bar)
    finally:
        bar.close()
    config = json.dumps(source.config(layer.diff_id), separators=(",", ":"),
                        sort_keys=True).encode()
    return Exported(layer, config)


def push(path: str, uri: str, fetch, compression: str = "gzip", tmpdir: str | None = None,
         chunk_size: int = 0) -> str:
    """Export the SIF `path` to `uri`; the manifest's digest."""
    from satchel.oci import reference as refs
    ref = refs.parse(uri)
    if isinstance(ref, refs.LocalRef) and ref.transport == "docker-archive":
        raise OCIError(f"cannot export to {uri}: docker-archive is not written",
                       hint="use oci-archive:FILE.tar, oci:DIR or docker://REGISTRY/REPO:TAG")
    source = SifSource(path)
    parent = tmpdir or os.environ.get("TMPDIR") or "/tmp"
    try:
        workdir = tempfile.mkdtemp(prefix=".satchel-export-", dir=parent)
    except OSError as err:
        raise OCIError(f"creating a work directory in {parent}: {err.strerror}") from None
    try:
        image = export(source, workdir, compression)
        if isinstance(ref, refs.DockerRef):
            _to_registry(image, ref, fetch, chunk_size, path)
        elif ref.transport == "oci":
            from satchel.oci import layout_write
            layout_write.to_directory(image, ref.path, ref.selector or "latest")
        else:
            from satchel.oci import layout_write
            layout_write.to_archive(image, ref.path, ref.selector or "latest")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return image.manifest_digest


def _to_registry(image: Exported, ref, fetch, chunk_size: int, path: str) -> None:
    from satchel.oci import push as pushing
    registry = pushing.open_registry(ref, fetch)
    bar = progress.Bar("Uploading", image.layer.size)
    try:
        pushing.push_blob(registry, pushing.BlobSource(image.layer.path, image.layer.digest,
                                                       image.layer.size, what="layer"),
                          bar, chunk_size)
        pushing.push_bytes(registry, image.config, image.config_digest, "config")
        pushing.push_manifest(registry, ref.reference, image.manifest, mt.OCI_MANIFEST)
    except OCIError as err:
        raise err.in_context_of(f"while pushing {path} to {ref}") from None
    finally:
        bar.close()
