#!/usr/bin/python3
"""Installing into an ext3 overlay image instead of a directory on a parallel file system.

N small Python modules (default 2,000, bench/pfs_bench's tree) are installed
  (a) into an ext3 overlay image made by `satchel overlay create` (below upper/, where a
      container's `pip install` would put them), through fuse2fs, and
  (b) into a plain directory,
both stored on bench/pfs_bench's slow-metadata FUSE file system (pfs_slowfs: every lookup,
getattr, open and readdir waits --delay-us, 1 ms by default: a loaded Lustre or GPFS). Then 8
interpreters (--parallel) import them all at once: from the directory, and from the image, each
interpreter through its own read-only mount of it (`--runner fuse2fs`: fuse2fs -o ro in a user
namespace of its own, what each container's mount is; `--runner satchel`: `satchel exec
--overlay IMAGE:ro` over a SIF holding nothing but mount points, the host /usr bound in).
Reported per case: the metadata operations the slow file system served and the wall time.
A read of an open file costs no metadata operation (pfs_bench's model, as on Lustre or GPFS;
--read-revalidate: a getattr before every read() instead, which fuse2fs' many small reads of
its image pay for: see pfs_slowfs.c).
Goal (issue 12): the image needs at least 10x fewer metadata operations and is at least 5x
faster with 8 interpreters.

Usage (as root, Debian 12 with ./scripts/install-deps done):
  bench/overlay_bench.py [--modules 2000] [--delay-us 1000] [--parallel 8]
                         [--runner fuse2fs|satchel] [--read-revalidate] [--user satchel-test]
                         [--workdir DIR]
Results are printed as a table and written to WORKDIR/results.json (--json FILE elsewhere).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pfs_bench  # noqa: E402  (the tree, the slow file system, the runners)

IN_OVERLAY = "/opt/pfs"   # where the modules live in the container (upper/opt/pfs in the image)


def log(message: str) -> None:
    print(f"overlay_bench: {message}", file=sys.stderr, flush=True)


def ns_mount(image: str, mnt: str, options: str, then: str) -> list[str]:
    """argv: mount the image with fuse2fs in a user+mount namespace of its own, then run
    `then` (a shell command). uid 0 of the namespace keeps CAP_SYS_ADMIN across exec, which
    fuse2fs (libfuse 2) needs to mount by itself."""
    # fuse2fs lives in the namespace it mounted in and would pin it (and itself) forever:
    # unmounting ends it
    script = (f"fuse2fs -o {options} {image} {mnt} 2>/dev/null || exit 1; ({then}); "
              f"rc=$?; umount {mnt}; exit $rc")
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script]


def install_into_directory(tree: str, slow: pfs_bench.SlowFS, user: str | None) -> str:
    target = os.path.join(slow.mountpoint, "site")
    subprocess.run(pfs_bench.as_user(["cp", "-r", tree, target], user), check=True)
    return target


def install_into_overlay(tree: str, slow: pfs_bench.SlowFS, user: str | None,
                         workdir: str, size_mib: int) -> str:
    image = os.path.join(slow.mountpoint, "overlay.img")
    # --fakeroot: upper/ belongs to uid 0, the namespace's root that ns_mount() installs as
    satchel = [pfs_bench.SATCHEL, "overlay", "create", "--fakeroot", "--sparse", "--size",
               str(size_mib), image]
    subprocess.run(pfs_bench.as_user(satchel, user), check=True)
    mnt = os.path.join(workdir, "install-mnt")
    os.makedirs(mnt, exist_ok=True)
    target = "$M/upper" + IN_OVERLAY
    copy = f"M={mnt}; mkdir -p {target} && cp -r {tree}/. {target}/ && sync -f {target}"
    subprocess.run(pfs_bench.as_user(ns_mount(image, mnt, "rw", copy), user), check=True)
    return image


def overlay_case(image: str, parallel: int, user: str | None, workdir: str, runner: str,
                 sif_path: str) -> list[list[str]]:
    argvs = []
    for i in range(parallel):
        if runner == "satchel":
            argv = [pfs_bench.SATCHEL, "exec", "--overlay", image + ":ro", "-B", "/usr",
                    sif_path, pfs_bench.PYTHON, "-I", "-c", pfs_bench.import_code(IN_OVERLAY)]
        else:
            mnt = os.path.join(workdir, f"mnt{i}")
            os.makedirs(mnt, exist_ok=True)
            code = pfs_bench.import_code(mnt + "/upper" + IN_OVERLAY)
            argv = ns_mount(image, mnt, "ro", f"{pfs_bench.PYTHON} -I -c \"{code}\"")
        argvs.append(pfs_bench.as_user(argv, user))
    return argvs


def empty_sif(workdir: str) -> str:
    """A SIF of mount points only (the runner satchel's image: python comes from /usr)."""
    empty = os.path.join(workdir, "empty")
    os.makedirs(empty)
    sif_path = os.path.join(workdir, "empty.sif")
    pfs_bench.build_sif(empty, os.path.join(workdir, "rootfs"), sif_path)
    shutil.rmtree(os.path.join(workdir, "rootfs"))  # its merged-/usr links dangle on the host
    return sif_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=2000)
    parser.add_argument("--delay-us", type=int, default=1000)
    parser.add_argument("--parallel", default="8")
    parser.add_argument("--runner", choices=("fuse2fs", "satchel"), default="fuse2fs")
    parser.add_argument("--size", type=int, default=1024,
                        help="overlay image size in MiB (sparse; from 512 MiB on, mke2fs makes "
                             "4 KiB blocks: fewer, larger reads than 1 KiB ones)")
    pfs_bench.add_read_model_option(parser)
    parser.add_argument("--user", default=None, help="run everything as this user")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", help="write the results here (default: WORKDIR/results.json)")
    args = parser.parse_args()
    parallel = [int(n) for n in args.parallel.split(",")]

    workdir = args.workdir or tempfile.mkdtemp(prefix="satchel-ovlbench-", dir="/tmp")
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    slow = None
    try:
        log(f"building the slow file system and a tree of {args.modules} modules in {workdir}")
        binary = pfs_bench.build_slowfs(workdir)
        tree = os.path.join(workdir, "tree")
        os.makedirs(tree)
        expected = pfs_bench.write_tree(tree, args.modules)
        sif_path = empty_sif(workdir) if args.runner == "satchel" else ""
        for dirpath, _dirs, files in os.walk(workdir):
            os.chmod(dirpath, 0o777 if dirpath == backing else 0o755)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o755)
        os.environ["PFS_SLOWFS_WRITABLE"] = "1"  # both cases install into it
        pfs_bench.read_model(args.read_revalidate)  # pfs_bench's model: reads of open files
        slow = pfs_bench.SlowFS(binary, backing, os.path.join(workdir, "slow"), args.delay_us)

        results = []
        for case in ("directory", "overlay"):
            log(f"installing into the {case}...")
            before, start = slow.stats(), time.monotonic()
            if case == "directory":
                where = install_into_directory(tree, slow, args.user)
            else:
                where = install_into_overlay(tree, slow, args.user, workdir, args.size)
            wall = time.monotonic() - start
            ops = slow.stats()["metadata"] - before["metadata"]
            results.append({"case": case, "step": "install", "interpreters": 1,
                            "wall_s": round(wall, 3), "metadata_ops": ops})
            log(f"  {ops} metadata ops, {wall:.3f} s")
            for n in parallel:
                if case == "directory":
                    code = pfs_bench.import_code(where)
                    argvs = [pfs_bench.as_user([pfs_bench.PYTHON, "-I", "-c", code], args.user)
                             for _ in range(n)]
                else:
                    argvs = overlay_case(where, n, args.user, workdir, args.runner, sif_path)
                log(f"{case}: importing from {n} interpreter(s)...")
                row = {"case": case, "step": "import", "interpreters": n,
                       **pfs_bench.measure(slow, argvs, expected, workdir)}
                log(f"  {row['metadata_ops']} metadata ops, {row['wall_s']} s")
                results.append(row)
        report(results, args)
        pfs_bench.save_results(results, args, workdir, log)
    finally:
        if slow is not None:
            slow.unmount()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(results: list[dict], args) -> None:
    print(f"\n{args.modules} modules, {args.delay_us} us per metadata operation "
          f"({'and a getattr per read' if args.read_revalidate else 'reads free'}), "
          f"overlay image read through {args.runner}\n")
    print(f"{'case':<10} {'step':<8} {'interp.':>7} {'metadata ops':>13} {'wall s':>9}")
    for r in results:
        print(f"{r['case']:<10} {r['step']:<8} {r['interpreters']:>7} {r['metadata_ops']:>13} "
              f"{r['wall_s']:>9}")
    print()
    by_key = {(r["case"], r["step"], r["interpreters"]): r for r in results}
    for step, n in sorted({(r["step"], r["interpreters"]) for r in results}):
        d, o = by_key.get(("directory", step, n)), by_key.get(("overlay", step, n))
        if d and o:
            ops = d["metadata_ops"] / max(1, o["metadata_ops"])
            speed = d["wall_s"] / max(1e-9, o["wall_s"])
            print(f"{step}, {n} interpreter(s): the overlay image needs {ops:.0f}x fewer "
                  f"metadata operations and is {speed:.1f}x faster")


if __name__ == "__main__":
    sys.exit(main())
