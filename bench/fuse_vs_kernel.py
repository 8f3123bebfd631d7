#!/usr/bin/python3
"""How fast the image is served: 5,000 small modules imported from a directory, from the SIF
through kernel SquashFS (root), through satchel's FUSE server (rootless) and through ch-run's
linked squashfuse, side by side in one run.

    sudo /usr/bin/python3 bench/fuse_vs_kernel.py [--modules 5000] [--runs 7] [--user U]
                                                  [--compare LAUNCHER] [--only LABELS]

The tree is bench/pfs_bench's (pfsmods/pNNN/mNNN.py, byte-compiled), stored on local disk; the
interpreter is the host's /usr/bin/python3 everywhere (bound at /usr in the containers, whose
image has an empty /usr), so only where the module tree lives differs. The page cache is warm
(warm-up rounds first): what is measured is the serving of lookups, attributes and reads, not
the disk. Each case is a fresh container (a fresh mount: the FUSE server's caches and the
kernel's dentries for it start empty), as every launch in a job would be.

Reported per case: the median time of `import pfsmods` inside the interpreter (the serving
alone) and of the whole command (with the container's start), and the ratio of each to kernel
SquashFS. The issue's goal: satchel rootless <= 1.5x kernel SquashFS on the import.
--compare adds another satchel entry script's rootless run (say, the baseline's).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))

import pfs_bench  # noqa: E402  (the tree and the SIF are pfs_bench's)

SATCHEL = os.environ.get("SATCHEL_BIN", os.path.join(ROOT, ".venv", "bin", "satchel"))
PYTHON = pfs_bench.PYTHON
IN_IMAGE = pfs_bench.IN_IMAGE


def import_code(path: str) -> str:
    """Prints TOTAL and the seconds the import took, measured inside the interpreter."""
    return (f"import sys, time; sys.path.insert(0, {path!r}); t = time.perf_counter(); "
            f"import pfsmods; print(pfsmods.TOTAL, time.perf_counter() - t)")


def run_once(argv: list[str], env: dict, ids, expected: int) -> tuple[float, float]:
    """(import seconds, whole-command seconds) of one run as the given ids."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=(lambda: _become(ids)) if ids else None)
    wall = time.perf_counter() - start
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) != 2 or fields[0] != str(expected):
        raise SystemExit(f"fuse_vs_kernel: {' '.join(argv[:3])}... failed "
                         f"({proc.returncode}): {proc.stdout[-300:]}{proc.stderr[-1500:]}")
    return float(fields[1]), wall


def _become(ids) -> None:
    uid, gid = ids
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=7, help="measured runs per case (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--user", default="satchel-test", help="the rootless cases run as this user")
    ap.add_argument("--compare", metavar="LAUNCHER", help="another satchel entry script, "
                    "measured rootless as satchel-fuse@base")
    ap.add_argument("--only", help="comma-separated subset of the case labels")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("fuse_vs_kernel: run as root (the kernel SquashFS case needs it)")
    entry = pwd.getpwnam(args.user)
    ids = (entry.pw_uid, entry.pw_gid)
    # byte-compile satchel: a user who cannot write __pycache__ would recompile every launch
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "src")],
                   check=True, stdout=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="satchel-fusebench-", dir="/tmp")
    try:
        os.chmod(work, 0o755)
        tree = os.path.join(work, "tree")
        os.makedirs(tree)
        expected = pfs_bench.write_tree(tree, args.modules)
        sif = os.path.join(work, "tree.sif")
        pfs_bench.build_sif(tree, os.path.join(work, "rootfs"), sif)
        offset = pfs_bench.squashfs_offset(sif)
        sqfs = os.path.join(work, "tree.sqfs")
        with open(sif, "rb") as src, open(sqfs, "wb") as dst:
            src.seek(offset)
            shutil.copyfileobj(src, dst)
        for dirpath, _dirs, files in os.walk(work):
            os.chmod(dirpath, 0o755)
            for name in files:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o644)
        root_env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "USER": "root", "LANG": "C.UTF-8"}
        user_env = {"PATH": "/usr/bin:/bin", "HOME": entry.pw_dir, "USER": entry.pw_name,
                    "LANG": "C.UTF-8"}
        in_image = [PYTHON, "-I", "-c", import_code(IN_IMAGE)]
        cases = {  # label -> (argv, env, ids)
            "directory": ([PYTHON, "-I", "-c", import_code(tree)], user_env, ids),
            "kernel-sqfs": ([SATCHEL, "exec", "-B", "/usr", sif] + in_image, root_env, None),
            "satchel-fuse": ([SATCHEL, "exec", "-B", "/usr", sif] + in_image, user_env, ids),
            "ch-run-sqfs": ([shutil.which("ch-run") or "ch-run", "--no-passwd", "-b",
                             "/usr:/usr", sqfs, "--"] + in_image, user_env, ids),
        }
        if args.compare:
            cases["satchel-fuse@base"] = ([args.compare, "exec", "-B", "/usr", sif] + in_image,
                                          user_env, ids)
        if args.only:
            cases = {k: v for k, v in cases.items() if k in args.only.split(",")}
        os.chdir(work)
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
        for round_ in range(args.warmup + args.runs):
            for label, (argv, env, who) in cases.items():
                result = run_once(argv, env, who, expected)
                if round_ >= args.warmup:
                    samples[label].append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(samples, args)
    return 0


def report(samples, args) -> None:
    print(f"{args.modules} modules imported, median of {args.runs} interleaved runs "
          f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    print(f"  {'case':18s} {'import s':>9s} {'command s':>10s} {'import/kernel':>14s}")
    med = {k: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
           for k, v in samples.items()}
    kernel = med.get("kernel-sqfs")
    for label, (imp, wall) in med.items():
        ratio = f"{imp / kernel[0]:.2f}x" if kernel else "-"
        print(f"  {label:18s} {imp:9.3f} {wall:10.3f} {ratio:>14s}")
    if kernel and "satchel-fuse" in med:
        r = med["satchel-fuse"][0] / kernel[0]
        print(f"  satchel-fuse / kernel-sqfs = {r:.2f}x   (goal <= 1.5x: "
              f"{'met' if r <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    raise SystemExit(main())
