#!/usr/bin/env python3
"""push_bench.py: `satchel push` of a ~200 MB SIF to a local registry and `satchel push --oci`
of the same SIF, each against skopeo doing the equivalent work, in the same run.

Setup (not timed): Debian's docker-registry on 127.0.0.1 (plain HTTP); a SIF built by
`satchel build` from a sandbox of busybox plus SIZE_MB of random (incompressible) files and,
for ORAS, text-like compressible files (a third of the data) so that compression matters.

Timed, RUNS times each, interleaved, every push to a registry of its own started just before
(not timed): skopeo remembers where it pushed a blob and mounts it from there next time, so
a fresh repository on the same registry would let it skip the work.
  oras    satchel: satchel push --nohttps IMAGE.sif oras://REG/bench/oras-N:1
          skopeo:  skopeo copy --preserve-digests oci:LAYOUT docker://REG/bench/skopeo-N:1
                   where LAYOUT holds the same artifact (the SIF as its one blob, same manifest)
  export  satchel: satchel push --oci --nohttps IMAGE.sif docker://REG/bench/oci-N:1
                   (SquashFS -> tar -> gzip layer, config, upload)
          peer:    unsquashfs the partition + `tar --sort=name --numeric-owner -c` into an OCI
                   layout (uncompressed layer) + skopeo copy to docker://REG/... (skopeo
                   gzip-compresses the layer on the way to the registry, as satchel does)
Prints medians and the ratios satchel/peer (goal <= 1.0x for both).

Usage: .venv/bin/python3 bench/push_bench.py [--runs N] [--size-mb N]
Defaults are short for a 2-core VM (3 runs, 200 MB). Needs root (unsquashfs keeps owners).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from satchel.oci import oras  # noqa: E402
from support.fixtures_registry import Registry  # noqa: E402

SATCHEL = os.environ.get("SATCHEL_BIN", os.path.join(ROOT, ".venv", "bin", "satchel"))


def run(argv, env=None, cwd=None) -> None:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{result.stderr[-2000:]}")


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def make_sif(work: str, size_mb: int) -> str:
    """A SIF of about size_mb MB: busybox plus random and text-like files."""
    sandbox = os.path.join(work, "sandbox")
    os.makedirs(os.path.join(sandbox, "bin"))
    shutil.copy("/bin/busybox", os.path.join(sandbox, "bin", "busybox"))
    os.symlink("busybox", os.path.join(sandbox, "bin", "sh"))
    data = os.path.join(sandbox, "data")
    os.makedirs(data)
    sizes = [4 << 10, 64 << 10, 512 << 10, 4 << 20]
    words = b" ".join(b"word%d" % i for i in range(200000))
    total, i = 0, 0
    while total < size_mb << 20:  # counts the random bytes: text shrinks in the SquashFS
        size = sizes[i % len(sizes)]
        with open(os.path.join(data, f"f{i:05d}"), "wb") as fh:
            fh.write(words[:size] if i % 3 == 0 else os.urandom(size))
        total += 0 if i % 3 == 0 else size
        i += 1
    sif = os.path.join(work, "big.sif")
    run([SATCHEL, "-q", "build", sif, sandbox])
    shutil.rmtree(sandbox)
    return sif


def artifact_layout(sif: str, work: str) -> str:
    """An OCI layout holding exactly what `satchel push IMAGE.sif oras://` sends."""
    layout = os.path.join(work, "oras-layout")
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    digest, size = oras.hash_file(sif)
    os.link(sif, os.path.join(blobs, digest.split(":")[1]))
    config = hashlib.sha256(oras.EMPTY_CONFIG).hexdigest()
    with open(os.path.join(blobs, config), "wb") as fh:
        fh.write(oras.EMPTY_CONFIG)
    manifest = oras.artifact_manifest(digest, size, os.path.basename(sif),
                                      oras.sif_created(sif))
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    with open(os.path.join(blobs, manifest_hex), "wb") as fh:
        fh.write(manifest)
    write_index(layout, manifest_hex, len(manifest))
    return layout


def write_index(layout: str, manifest_hex: str, size: int) -> None:
    with open(os.path.join(layout, "oci-layout"), "w") as fh:
        fh.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(layout, "index.json"), "w") as fh:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": f"sha256:{manifest_hex}", "size": size,
            "annotations": {"org.opencontainers.image.ref.name": "b"}}]}, fh)


def skopeo_push(layout: str, dest: str, preserve: bool) -> None:
    argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if preserve:
        argv.append("--preserve-digests")
    run(argv + [f"oci:{layout}:b", dest])


def tar_skopeo(sif: str, work: str, dest: str) -> None:
    """The peer of `push --oci`: unsquashfs, tar into a layout, skopeo copy."""
    from satchel.image import sif as siflib
    with siflib.SIFFile.open(sif) as image:
        offset = image.primary_partition().offset
    rootfs = os.path.join(work, "rootfs")
    run(["unsquashfs", "-no-progress", "-quiet", "-d", rootfs, "-o", str(offset), sif])
    layout = os.path.join(work, "tar-layout")
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    layer = os.path.join(work, "layer.tar")
    run(["tar", "--sort=name", "--numeric-owner", "-C", rootfs, "-cf", layer, "."])
    shutil.rmtree(rootfs)
    digest, size = oras.hash_file(layer)
    os.rename(layer, os.path.join(blobs, digest.split(":")[1]))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [digest]}}).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    with open(os.path.join(blobs, config_hex), "wb") as fh:
        fh.write(config)
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": f"sha256:{config_hex}", "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": digest, "size": size}]}).encode()
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    with open(os.path.join(blobs, manifest_hex), "wb") as fh:
        fh.write(manifest)
    write_index(layout, manifest_hex, len(manifest))
    skopeo_push(layout, dest, preserve=False)
    shutil.rmtree(layout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=200)
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry", "unsquashfs", "tar", "sqfs2tar"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/bin/{tool}"):
            raise SystemExit(f"push_bench: {tool} not found")
    work = tempfile.mkdtemp(prefix="satchel-pushbench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    try:
        sif = make_sif(work, args.size_mb)
        layout = artifact_layout(sif, work)
        print(f"SIF {os.path.getsize(sif) / 1e6:.1f} MB; {args.runs} runs each, interleaved")
        times: dict[str, list[float]] = {k: [] for k in (
            "satchel push oras", "skopeo copy", "satchel push --oci", "unsquashfs+tar+skopeo")}
        scratch = os.path.join(work, "scratch")
        jobs = {
            "satchel push oras": lambda reg: run(
                [SATCHEL, "-q", "push", "--nohttps", sif, f"oras://{reg}/bench/sif:1"]),
            "skopeo copy": lambda reg: skopeo_push(layout, f"docker://{reg}/bench/sif:1",
                                                   preserve=True),
            "satchel push --oci": lambda reg: run(
                [SATCHEL, "-q", "push", "--oci", "--nohttps", "--tmpdir", scratch, sif,
                 f"docker://{reg}/bench/oci:1"]),
            "unsquashfs+tar+skopeo": lambda reg: tar_skopeo(sif, scratch,
                                                            f"docker://{reg}/bench/oci:1"),
        }
        for n in range(args.runs):
            for name, job in jobs.items():
                os.makedirs(scratch)
                registry = Registry(tempfile.mkdtemp(dir=work))
                try:
                    times[name].append(timed(lambda: job(registry.host)))
                finally:
                    registry.stop()
                    shutil.rmtree(registry.workdir, ignore_errors=True)
                    shutil.rmtree(scratch, ignore_errors=True)
            print(f"run {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
        med = {k: statistics.median(v) for k, v in times.items()}
        print()
        print(f"{'what':<26}{'median s':>10}   all runs")
        for key, values in times.items():
            print(f"{key:<26}{med[key]:>10.2f}   " + " ".join(f"{v:.2f}" for v in values))
        print()
        print(f"oras push: satchel / skopeo = "
              f"{med['satchel push oras'] / med['skopeo copy']:.2f}x (goal <= 1.0x)")
        print(f"OCI export to a registry: satchel / (unsquashfs + tar + skopeo) = "
              f"{med['satchel push --oci'] / med['unsquashfs+tar+skopeo']:.2f}x (goal <= 1.0x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
