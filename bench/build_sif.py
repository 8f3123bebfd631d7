#!/usr/bin/env python3
"""Benchmark: `satchel build out.sif ROOTFS` (sandbox -> SIF) against `mksquashfs` alone.

Both run on the same Debian bookworm minbase tree (made once with debootstrap and kept under
$SATCHEL_BENCH_CACHE, default /var/tmp/satchel-bench), in the same run, interleaved, with the
same mksquashfs options satchel uses (satchel.image.squashfs.mksquashfs_argv). Whole-process
wall times; prints each run, the medians and the ratio (goal: <= 1.2).

    sudo .venv/bin/python3 bench/build_sif.py [--runs 7] [--rootfs DIR] [--comp zstd]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from satchel.image import squashfs  # noqa: E402

SATCHEL = os.path.join(ROOT, ".venv", "bin", "satchel")
CACHE = os.environ.get("SATCHEL_BENCH_CACHE", "/var/tmp/satchel-bench")


def debootstrap_tree() -> str:
    rootfs = os.path.join(CACHE, "bookworm-minbase")
    if os.path.isfile(os.path.join(rootfs, "etc", "debian_version")):
        return rootfs
    os.makedirs(CACHE, exist_ok=True)
    partial = rootfs + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    print(f"creating {rootfs} with debootstrap (once)...", file=sys.stderr)
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", partial,
                    "http://deb.debian.org/debian"], check=True, stdout=subprocess.DEVNULL)
    os.rename(partial, rootfs)
    return rootfs


def timed(argv: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rootfs", help="an existing root file system tree (default: debootstrap)")
    parser.add_argument("--comp", default=None, help="compression for both (default: satchel's)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (debootstrap, and a tree owned by many users)")
    rootfs = args.rootfs or debootstrap_tree()
    size = subprocess.run(["du", "-sh", rootfs], capture_output=True, text=True).stdout.split()[0]
    files = sum(len(d) + len(f) for _, d, f in os.walk(rootfs))
    env = dict(os.environ)
    if args.comp:
        env[squashfs.ENV_COMPRESSION] = args.comp
        os.environ[squashfs.ENV_COMPRESSION] = args.comp
    with tempfile.TemporaryDirectory(prefix="satchel-bench-", dir="/var/tmp") as out:
        sqfs = os.path.join(out, "alone.squashfs")
        sif = os.path.join(out, "out.sif")
        mksquashfs = squashfs.mksquashfs_argv(rootfs, sqfs, args.comp)
        build = [SATCHEL, "-q", "build", "--force", sif, rootfs]
        print(f"tree: {rootfs} ({size}, {files} entries)")
        print(f"mksquashfs: {' '.join(mksquashfs)}")
        print(f"satchel:    {' '.join(build)}")
        timed(mksquashfs)  # warm the page cache for both
        alone, whole = [], []
        sizes = {}
        for i in range(args.runs):
            pair = [("m", mksquashfs), ("s", build)]
            if i % 2:
                pair.reverse()
            for kind, argv in pair:
                # each run starts without its output file: replacing a fresh 90 MB file costs
                # ext4 an immediate flush (auto_da_alloc) that is not part of building
                for stale in (sqfs, sif):
                    if os.path.exists(stale):
                        os.unlink(stale)
                subprocess.run(["sync"], check=True)
                seconds = timed(argv, env)
                (alone if kind == "m" else whole).append(seconds)
                sizes[kind] = os.path.getsize(sqfs if kind == "m" else sif)
            print(f"run {i + 1}: mksquashfs {alone[-1]:.3f} s   satchel build {whole[-1]:.3f} s")
        sqfs_size, image_size = sizes["m"], sizes["s"]
    m, s = statistics.median(alone), statistics.median(whole)
    print(f"median mksquashfs alone: {m:.3f} s  ({sqfs_size / 1e6:.1f} MB)")
    print(f"median satchel build:    {s:.3f} s  ({image_size / 1e6:.1f} MB SIF)")
    print(f"ratio: {s / m:.2f}  (goal <= 1.2)")
    # the machine may be shared: the ratio within each interleaved pair is steadier
    paired = statistics.median(b / a for a, b in zip(alone, whole))
    print(f"median of per-run ratios: {paired:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
