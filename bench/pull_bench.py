#!/usr/bin/env python3
"""pull_bench.py: `satchel pull` of a ~100 MB multi-layer image from a local registry into an
empty cache, against skopeo in the same run.

Setup (not timed): Debian's docker-registry on 127.0.0.1 (plain HTTP), filled by skopeo with an
image of LAYERS gzip layers of random (incompressible) files, LAYER_MB each.

Timed, RUNS times each, interleaved, every run into a fresh cache / directory:
  download  satchel: resolve + download + verify every blob into an empty cache
                     (satchel.oci.source.download in a fresh `python -I -S`, like the launcher)
            skopeo:  skopeo copy docker://... oci:DIR
  pull      satchel: satchel pull --nohttps OUT.sif docker://...   (download, extract, SquashFS, SIF)
            skopeo:  skopeo copy + `tar -xzf` of each layer + mksquashfs with satchel's own
                     arguments (satchel.image.squashfs.mksquashfs_argv)
Prints the medians and the ratios satchel/skopeo (goals: download <= 1.0, pull <= 1.3).

Usage: .venv/bin/python3 bench/pull_bench.py [--runs N] [--layers N] [--layer-mb N]
Needs root or a user who may run docker-registry, skopeo, mksquashfs, tar.
"""

from __future__ import annotations

import argparse
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

from satchel.image import squashfs  # noqa: E402
from satchel.oci import writer  # noqa: E402
from support.fixtures_registry import Registry, busybox_layer, push_image  # noqa: E402

SATCHEL = os.environ.get("SATCHEL_BIN", os.path.join(ROOT, ".venv", "bin", "satchel"))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python3")


def make_image(layers: int, layer_mb: int) -> writer.Image:
    """busybox base plus `layers` layers of random files (sizes from 4 KiB to 4 MiB)."""
    blobs = [writer.compress_layer(busybox_layer().tar_bytes(), "gzip")]
    sizes = [4 << 10, 64 << 10, 512 << 10, 4 << 20]
    for n in range(layers):
        layer = writer.Layer().dir(f"data{n}")
        total, i = 0, 0
        while total < layer_mb << 20:
            size = sizes[i % len(sizes)]
            layer.file(f"data{n}/f{i:05d}", os.urandom(size))
            total += size
            i += 1
        blobs.append(writer.compress_layer(layer.tar_bytes(), "gzip", level=1))
    return writer.Image(blobs, {"Cmd": ["/bin/sh"]})


DOWNLOAD_DRIVER = """
import sys
sys.path.insert(0, {src!r})
from satchel.oci import source
from satchel.oci.cache import Cache
opts = source.FetchOptions(plain_http=True)
source.download({uri!r}, opts, Cache(sys.argv[1]).ensure())
"""


def timed(argv, env=None) -> float:
    start = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{result.stderr}")
    return elapsed


def skopeo_copy(uri: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", uri, f"oci:{dest}:b"],
                   check=True, capture_output=True)


def skopeo_pipeline(uri: str, work: str) -> None:
    """The baseline pull: skopeo copy, tar -x of each layer in order, mksquashfs."""
    layout = os.path.join(work, "layout")
    skopeo_copy(uri, layout)
    with open(os.path.join(layout, "index.json")) as fh:
        manifest_digest = json.load(fh)["manifests"][0]["digest"].split(":")[1]
    with open(os.path.join(layout, "blobs", "sha256", manifest_digest)) as fh:
        manifest = json.load(fh)
    rootfs = os.path.join(work, "rootfs")
    os.mkdir(rootfs)
    for layer in manifest["layers"]:
        blob = os.path.join(layout, "blobs", "sha256", layer["digest"].split(":")[1])
        subprocess.run(["tar", "-xzf", blob, "-C", rootfs, "--no-same-owner"], check=True)
    subprocess.run(squashfs.mksquashfs_argv(rootfs, os.path.join(work, "out.sqfs")), check=True,
                   capture_output=True)


def fresh(base: str, name: str) -> str:
    path = os.path.join(base, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=20)
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry", "mksquashfs", "tar"):
        if not shutil.which(tool):
            raise SystemExit(f"pull_bench: {tool} not found")

    work = tempfile.mkdtemp(prefix="satchel-pullbench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    registry = Registry(fresh(work, "registry"))
    try:
        image = make_image(args.layers, args.layer_mb)
        size = sum(len(b.data) for b in image.layers)
        push_image(f"docker://{registry.host}", "bench/big:latest", image, work)
        uri = registry.uri("bench/big:latest")
        print(f"image: {len(image.layers)} layers, {size / 1e6:.1f} MB compressed, "
              f"registry {registry.host}; {args.runs} runs each, interleaved")
        driver = DOWNLOAD_DRIVER.format(src=os.path.join(ROOT, "src"), uri=uri)
        times: dict[str, list[float]] = {k: [] for k in
                                         ("satchel download", "skopeo download",
                                          "satchel pull", "skopeo+tar+mksquashfs")}
        for run in range(args.runs):
            cache = fresh(work, "cache")
            times["satchel download"].append(
                timed([PYTHON, "-I", "-S", "-c", driver, cache]))
            dest = fresh(work, "skopeo")
            start = time.monotonic()
            skopeo_copy(uri, os.path.join(dest, "layout"))
            times["skopeo download"].append(time.monotonic() - start)
            cache = fresh(work, "cache")
            out = fresh(work, "out")
            env = dict(os.environ, APPTAINER_CACHEDIR=cache)
            times["satchel pull"].append(
                timed([SATCHEL, "-q", "pull", "--nohttps", os.path.join(out, "big.sif"), uri], env))
            dest = fresh(work, "skopeo")
            start = time.monotonic()
            skopeo_pipeline(uri, dest)
            times["skopeo+tar+mksquashfs"].append(time.monotonic() - start)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
            sizes = (os.path.getsize(os.path.join(out, "big.sif")),
                     os.path.getsize(os.path.join(dest, "out.sqfs")))
        print(f"outputs: satchel SIF {sizes[0] / 1e6:.1f} MB, baseline SquashFS "
              f"{sizes[1] / 1e6:.1f} MB")
        med = {k: statistics.median(v) for k, v in times.items()}
        print()
        print(f"{'what':<24}{'median s':>10}   all runs")
        for key, values in times.items():
            print(f"{key:<24}{med[key]:>10.2f}   " + " ".join(f"{v:.2f}" for v in values))
        print()
        download = med["satchel download"] / med["skopeo download"]
        pull = med["satchel pull"] / med["skopeo+tar+mksquashfs"]
        print(f"download: satchel / skopeo = {download:.2f}x (goal <= 1.0x)")
        print(f"pull to SIF: satchel / (skopeo + tar + mksquashfs) = {pull:.2f}x (goal <= 1.3x)")
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
