#!/usr/bin/python3
"""The single-file advantage on a parallel file system, measured.

A tree of small Python modules (default 5,000 in 50 packages) is imported
  (a) from a directory, and
  (b) from the same tree inside a SIF image (SquashFS partition), run with `satchel exec`,
both stored on a slow-metadata file system that this script mounts itself: pfs_slowfs, a FUSE
passthrough adding a fixed delay (default 1 ms) to every lookup/getattr/open/readdir, a stand-in
for Lustre or GPFS under load. Each case runs with 1 and 8 concurrent interpreters. Reported per
case: the metadata operations the slow file system served and the wall time. A read of a file
already open costs no metadata operation, as on Lustre or GPFS (pfs_slowfs.c); with
--read-revalidate every read() pays a getattr first (FUSE auto_inval_data: the issue-5 model).
bench/overlay_bench uses the same file system and the same model.

The interpreter is the host's /usr/bin/python3 in both cases (in the container the host /usr is
bound over the image's empty /usr), so only where the module tree lives differs.

Usage (as root, Debian 12 with ./scripts/install-deps done):
  bench/pfs_bench.py [--modules 5000] [--delay-us 1000] [--parallel 1,8]
                     [--runner satchel|squashfuse] [--read-revalidate] [--user satchel-test]
                     [--workdir DIR]
  --runner squashfuse mounts the SIF's partition with `squashfuse -o offset=N` per interpreter
  instead of `satchel exec` (the same mechanism without the rest of the runtime).
Results are printed as a table and written to WORKDIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))

SATCHEL = os.environ.get("SATCHEL_BIN", os.path.join(ROOT, ".venv", "bin", "satchel"))
PYTHON = "/usr/bin/python3"
IN_IMAGE = "/opt/pfs"
STATS = ".slowfs-stats"


def log(message: str) -> None:
    print(f"pfs_bench: {message}", file=sys.stderr, flush=True)


# --- the module tree ---------------------------------------------------------------------------

def write_tree(dest: str, modules: int, per_package: int = 100) -> int:
    """pfsmods/pNNN/mNNN.py, each defining VALUE; importing `pfsmods` imports all of them and
    sets pfsmods.TOTAL. Returns the expected TOTAL."""
    top = os.path.join(dest, "pfsmods")
    os.makedirs(top)
    packages = []
    total = 0
    for first in range(0, modules, per_package):
        pkg = f"p{first // per_package:03d}"
        packages.append(pkg)
        pkg_dir = os.path.join(top, pkg)
        os.makedirs(pkg_dir)
        names = []
        for number in range(first, min(first + per_package, modules)):
            name = f"m{number:05d}"
            names.append(name)
            total += number
            with open(os.path.join(pkg_dir, f"{name}.py"), "w") as fh:
                fh.write(f'"""Module {number} of the metadata benchmark."""\n\n'
                         f"VALUE = {number}\n\n\ndef describe():\n"
                         f"    return 'module {number} of package {pkg}'\n")
        with open(os.path.join(pkg_dir, "__init__.py"), "w") as fh:
            fh.write("".join(f"from . import {n}\n" for n in names))
            fh.write("SUM = " + " + ".join(f"{n}.VALUE" for n in names) + "\n")
    with open(os.path.join(top, "__init__.py"), "w") as fh:
        fh.write("".join(f"from . import {p}\n" for p in packages))
        fh.write("TOTAL = " + " + ".join(f"{p}.SUM" for p in packages) + "\n")
    # byte-compile once, as an installed package would be; the same .pyc go into the image
    subprocess.run([PYTHON, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
                    top], check=True)
    return total


def build_sif(tree: str, rootfs: str, sif_path: str) -> None:
    """mksquashfs a rootfs holding the tree at /opt/pfs (plus empty mount points and merged-/usr
    symlinks, so the host /usr bound over /usr gives a working interpreter), wrapped into a SIF
    with satchel.image.sif."""
    from satchel.image import sif
    for d in ("usr", "etc", "dev", "proc", "sys", "tmp", "home", "root", "run", "var", "opt",
              ".singularity.d/env", ".singularity.d/libs"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("lib64", "usr/lib64")):
        os.symlink(target, os.path.join(rootfs, link))
    shutil.copytree(tree, os.path.join(rootfs, IN_IMAGE.lstrip("/")), symlinks=True)
    squash = sif_path + ".squashfs"
    try:
        from satchel.image import squashfs
        argv = squashfs.mksquashfs_argv(rootfs, squash)
    except ImportError:
        argv = ["mksquashfs", rootfs, squash, "-noappend", "-no-progress", "-quiet",
                "-comp", "zstd", "-Xcompression-level", "3"]
    subprocess.run(argv + ["-all-root"], check=True)
    sif.create(sif_path, [sif.NewObject(datatype=sif.DATA_PARTITION, path=squash,
                                        fs_type=sif.FS_SQUASH, part_type=sif.PART_PRIMSYS)])
    os.remove(squash)


def squashfs_offset(sif_path: str) -> int:
    from satchel.image import sif
    with sif.SIFFile.open(sif_path) as image:
        return image.primary_partition().offset


# --- the slow file system ------------------------------------------------------------------------

def build_slowfs(workdir: str) -> str:
    binary = os.path.join(workdir, "pfs_slowfs")
    flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"], check=True,
                           capture_output=True, text=True).stdout.split()
    subprocess.run(["gcc", "-O2", "-Wall", "-o", binary, os.path.join(HERE, "pfs_slowfs.c")]
                   + flags, check=True)
    return binary


class SlowFS:
    def __init__(self, binary: str, source: str, mountpoint: str, delay_us: int):
        self.mountpoint = mountpoint
        os.makedirs(mountpoint, exist_ok=True)
        opts = ["-o", "allow_other"] if os.geteuid() == 0 else []
        subprocess.run([binary, source, mountpoint, str(delay_us)] + opts, check=True)

    def stats(self) -> dict[str, int]:
        with open(os.path.join(self.mountpoint, STATS)) as fh:
            return {k: int(v) for k, v in (line.split() for line in fh)}

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", self.mountpoint], check=False)


# --- the cases -----------------------------------------------------------------------------------

def read_model(revalidate: bool) -> None:
    """Whether the slow file system mounted next asks a getattr before every read (see
    pfs_slowfs.c): off by default, as a Lustre or GPFS client reading an open file."""
    os.environ["PFS_SLOWFS_READ_REVALIDATE"] = "1" if revalidate else "0"


def add_read_model_option(parser) -> None:
    parser.add_argument("--read-revalidate", action="store_true",
                        help="a getattr before every read() of the slow file system (FUSE "
                             "auto_inval_data), the model of the issue-5 figures; default: "
                             "reads of an open file cost no metadata, as on Lustre/GPFS")


def import_code(path: str) -> str:
    return f"import sys; sys.path.insert(0, {path!r}); import pfsmods; print(pfsmods.TOTAL)"


def as_user(argv: list[str], user: str | None) -> list[str]:
    if not user:
        return argv
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
            "--"] + argv


def run_concurrently(argvs: list[list[str]], expected: int, cwd: str) -> float:
    start = time.monotonic()
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                              stdin=subprocess.DEVNULL) for a in argvs]
    outputs = [p.communicate(timeout=1800) for p in procs]
    wall = time.monotonic() - start
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode != 0 or out.decode().strip() != str(expected):
            raise SystemExit(f"pfs_bench: an interpreter failed ({proc.returncode}): "
                             f"{out.decode()[-500:]}{err.decode()[-2000:]}")
    return wall


def directory_case(slow: SlowFS, parallel: int, user: str | None, expected: int,
                   cwd: str) -> list[list[str]]:
    tree = os.path.join(slow.mountpoint, "tree")
    return [as_user([PYTHON, "-I", "-c", import_code(tree)], user) for _ in range(parallel)]


def satchel_case(slow: SlowFS, parallel: int, user: str | None) -> list[list[str]]:
    image = os.path.join(slow.mountpoint, "tree.sif")
    argv = [SATCHEL, "exec", "-B", "/usr", image, PYTHON, "-I", "-c", import_code(IN_IMAGE)]
    return [as_user(argv, user) for _ in range(parallel)]


def squashfuse_case(slow: SlowFS, parallel: int, user: str | None, workdir: str,
                    offset: int) -> list[list[str]]:
    """One squashfuse mount per interpreter, as each container would have its own."""
    image = os.path.join(slow.mountpoint, "tree.sif")
    argvs = []
    for i in range(parallel):
        mnt = os.path.join(workdir, f"sifmnt{i}")
        os.makedirs(mnt, exist_ok=True)
        if user:  # fusermount3 mounts only on a directory its caller may write
            entry = pwd.getpwnam(user)
            os.chown(mnt, entry.pw_uid, entry.pw_gid)
        script = (f"squashfuse -o offset={offset} {image} {mnt} && "
                  f"{PYTHON} -I -c \"{import_code(mnt + IN_IMAGE)}\"; rc=$?; "
                  f"fusermount3 -u {mnt}; exit $rc")
        argvs.append(as_user(["sh", "-c", script], user))
    return argvs


def measure(slow: SlowFS, argvs: list[list[str]], expected: int, cwd: str) -> dict:
    before = slow.stats()
    wall = run_concurrently(argvs, expected, cwd)
    after = slow.stats()
    delta = {k: after[k] - before[k] for k in after}
    return {"wall_s": round(wall, 3), "metadata_ops": delta["metadata"], "ops": delta}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=5000)
    parser.add_argument("--delay-us", type=int, default=1000)
    parser.add_argument("--parallel", default="1,8")
    parser.add_argument("--runner", choices=("satchel", "squashfuse"), default="satchel")
    add_read_model_option(parser)
    parser.add_argument("--user", default=None, help="run the interpreters as this user")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", help="write the results here (default: WORKDIR/results.json)")
    args = parser.parse_args()
    parallel = [int(n) for n in args.parallel.split(",")]
    if args.runner == "satchel" and not os.access(SATCHEL, os.X_OK):
        raise SystemExit(f"pfs_bench: {SATCHEL} missing: run ./scripts/install-deps "
                         "(or use --runner squashfuse)")

    workdir = args.workdir or tempfile.mkdtemp(prefix="satchel-pfsbench-", dir="/tmp")
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    backing = os.path.join(workdir, "backing")
    slow = None
    try:
        log(f"building the slow file system and a tree of {args.modules} modules in {workdir}")
        binary = build_slowfs(workdir)
        tree = os.path.join(backing, "tree")
        os.makedirs(tree)
        expected = write_tree(tree, args.modules)
        build_sif(tree, os.path.join(workdir, "rootfs"), os.path.join(backing, "tree.sif"))
        offset = squashfs_offset(os.path.join(backing, "tree.sif"))
        for dirpath, _dirs, _files in os.walk(workdir):
            os.chmod(dirpath, 0o755)
        read_model(args.read_revalidate)
        slow = SlowFS(binary, backing, os.path.join(workdir, "slow"), args.delay_us)

        results = []
        for n in parallel:
            for case in ("directory", "sif"):
                if case == "directory":
                    argvs = directory_case(slow, n, args.user, expected, workdir)
                elif args.runner == "satchel":
                    argvs = satchel_case(slow, n, args.user)
                else:
                    argvs = squashfuse_case(slow, n, args.user, workdir, offset)
                log(f"{case}, {n} interpreter(s)...")
                row = {"case": case, "interpreters": n, **measure(slow, argvs, expected, workdir)}
                log(f"  {row['metadata_ops']} metadata ops, {row['wall_s']} s")
                results.append(row)
        report(results, args)
        save_results(results, args, workdir, log)
    finally:
        if slow is not None:
            slow.unmount()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def save_results(results: list[dict], args, workdir: str, say) -> None:
    """The results as JSON (--json, else WORKDIR/results.json; said where when it is kept),
    for this bench and bench/overlay_bench."""
    json_path = args.json or os.path.join(workdir, "results.json")
    with open(json_path, "w") as fh:
        json.dump({"modules": args.modules, "delay_us": args.delay_us, "runner": args.runner,
                   "read_revalidate": args.read_revalidate, "user": args.user,
                   "results": results}, fh, indent=2)
    if args.json or args.keep or args.workdir:
        say(f"results in {json_path}")


def report(results: list[dict], args) -> None:
    print(f"\n{args.modules} modules, {args.delay_us} us per metadata operation "
          f"({'and a getattr per read' if args.read_revalidate else 'reads free'}), "
          f"SIF run with {args.runner}\n")
    print(f"{'case':<10} {'interp.':>7} {'metadata ops':>13} {'wall s':>9}")
    by_key = {(r["case"], r["interpreters"]): r for r in results}
    for r in results:
        print(f"{r['case']:<10} {r['interpreters']:>7} {r['metadata_ops']:>13} {r['wall_s']:>9}")
    print()
    for n in sorted({r["interpreters"] for r in results}):
        d, s = by_key.get(("directory", n)), by_key.get(("sif", n))
        if d and s:
            ops = d["metadata_ops"] / max(1, s["metadata_ops"])
            speed = d["wall_s"] / max(1e-9, s["wall_s"])
            print(f"{n} interpreter(s): SIF needs {ops:.0f}x fewer metadata operations and is "
                  f"{speed:.1f}x faster")


if __name__ == "__main__":
    sys.exit(main())
