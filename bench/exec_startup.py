#!/usr/bin/python3
"""Container startup: `satchel exec` against ch-run and bwrap, side by side, in one run.

    sudo /usr/bin/python3 bench/exec_startup.py [--runs 40] [--user satchel-test] [--sif IMG]
                                                [--compare LAUNCHER]

Measures the median wall time of starting a container that runs /bin/true:
  satchel exec IMG.sif /bin/true          SIF, squashfuse (non-root) or loop device (root)
  ch-run IMG.sqfs -- /bin/true            Charliecloud, the same SquashFS bytes as the SIF's
                                          partition, mounted with its internal squashfuse
  satchel exec DIR /bin/true              the same tree unpacked (unsquashfs) as a sandbox
  ch-run DIR -- /bin/true
  bwrap --unshare-user --ro-bind DIR / ... /bin/true
and prints medians and the ratios the issue sets as goals (satchel SIF <= 1.0x ch-run SquashFS,
satchel directory <= 3x ch-run directory). --compare LAUNCHER adds another satchel entry script
(say, one written by satchel.launcher for an older checkout) to the same rotation, so a change
is measured against its baseline under the same load.

Each sample is one fork + (setuid to the user) + execve + waitpid, timed with
perf_counter_ns in this process; the commands are interleaved round-robin so that load from
other processes on the machine spreads over all of them alike, after warm-up rounds that fill
the page cache. Without --sif the busybox test image is built with `satchel build`
(tests/data/busybox.def). Run as root: the measurements run as --user (default satchel-test,
created by the test suite) unless --as-root is given.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SATCHEL = os.path.join(ROOT, ".venv", "bin", "satchel")
BUSYBOX_DEF = os.path.join(ROOT, "tests", "data", "busybox.def")
sys.path.insert(0, os.path.join(ROOT, "src"))


def spawn_wait(argv: list[str], env: dict, ids) -> tuple[int, int]:
    """Run argv as the given (uid, gid, groups) or as ourselves; return (ns, status)."""
    start = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        try:
            if ids is not None:
                uid, gid, groups = ids
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            fd = os.open(os.devnull, os.O_RDWR)
            os.dup2(fd, 1)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    return time.perf_counter_ns() - start, status


def write_bundle() -> None:
    """This checkout's launch bundle (satchel/__init__.py), fresh, as an installation has it:
    after editing, a stale bundle leaves the edited modules to the usual, slower imports."""
    subprocess.run([os.path.join(ROOT, ".venv", "bin", "python3"), "-m", "satchel.launcher",
                    "--bundle"], check=True, stdout=subprocess.DEVNULL)


def prepare_images(work: str, sif: str | None) -> tuple[str, str, str]:
    from satchel.image.formats import open_image

    if sif is None:
        sif = os.path.join(work, "busybox.sif")
        subprocess.run([SATCHEL, "build", sif, BUSYBOX_DEF], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ref = open_image(sif)
    sqfs = os.path.join(work, "image.sqfs")
    with open(ref.path, "rb") as src, open(sqfs, "wb") as dst:
        src.seek(ref.fs_offset)
        dst.write(src.read(ref.fs_size))
    directory = os.path.join(work, "image.dir")
    subprocess.run(["unsquashfs", "-q", "-n", "-d", directory, sqfs], check=True,
                   stdout=subprocess.DEVNULL)
    for path in (work, sif, sqfs):
        os.chmod(path, 0o755)
    return sif, sqfs, directory


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40, help="samples per command (default 40)")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    ap.add_argument("--user", default="satchel-test", help="run the containers as this user")
    ap.add_argument("--as-root", action="store_true", help="run the containers as root")
    ap.add_argument("--sif", help="SIF image to use (default: build the busybox test image)")
    ap.add_argument("--only", help="comma-separated subset of the command labels")
    ap.add_argument("--compare", metavar="LAUNCHER",
                    help="another satchel entry script, measured as satchel-sif@base and "
                         "satchel-dir@base")
    args = ap.parse_args()

    ids = None
    if args.as_root:
        entry = pwd.getpwuid(0)
    else:
        entry = pwd.getpwnam(args.user)
        ids = (entry.pw_uid, entry.pw_gid, [entry.pw_gid])
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": entry.pw_dir, "USER": entry.pw_name,
           "LANG": "C.UTF-8"}
    # byte-compile satchel so that a user who cannot write __pycache__ does not recompile
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "src")],
                   check=True, stdout=subprocess.DEVNULL)
    write_bundle()

    work = tempfile.mkdtemp(prefix="satchel-bench-", dir="/tmp")
    try:
        sif, sqfs, directory = prepare_images(work, args.sif)
        commands = {
            "satchel-sif": [SATCHEL, "exec", sif, "/bin/true"],
            "ch-run-sqfs": [shutil.which("ch-run"), sqfs, "--", "/bin/true"],
            "satchel-dir": [SATCHEL, "exec", directory, "/bin/true"],
            "ch-run-dir": [shutil.which("ch-run"), directory, "--", "/bin/true"],
            "bwrap-dir": [shutil.which("bwrap"), "--unshare-user", "--ro-bind", directory, "/",
                          "--proc", "/proc", "--dev", "/dev", "/bin/true"],
        }
        if args.compare:
            commands["satchel-sif@base"] = [args.compare, "exec", sif, "/bin/true"]
            commands["satchel-dir@base"] = [args.compare, "exec", directory, "/bin/true"]
        if args.only:
            keep = args.only.split(",")
            commands = {k: v for k, v in commands.items() if k in keep}
        os.chdir(entry.pw_dir)
        samples: dict[str, list[int]] = {k: [] for k in commands}
        for round_ in range(args.warmup + args.runs):
            for label, argv in commands.items():
                ns, status = spawn_wait(argv, env, ids)
                if status != 0:
                    print(f"{label} failed with status {status}: {' '.join(argv)}",
                          file=sys.stderr)
                    return 1
                if round_ >= args.warmup:
                    samples[label].append(ns)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) / 1e6 for k, v in samples.items()}
    who = "root" if args.as_root else args.user
    print(f"container startup, /bin/true, median of {args.runs} interleaved runs as {who} "
          f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    for label, value in med.items():
        spread = sorted(samples[label])
        q1, q3 = spread[len(spread) // 4] / 1e6, spread[3 * len(spread) // 4] / 1e6
        print(f"  {label:16s} {value:7.1f} ms   (quartiles {q1:.1f}-{q3:.1f})")

    def ratio(a, b, goal):
        if a in med and b in med:
            r = med[a] / med[b]
            verdict = "met" if r <= goal else "NOT met"
            print(f"  {a} / {b} = {r:.2f}x   (goal <= {goal}x: {verdict})")
    ratio("satchel-sif", "ch-run-sqfs", 1.0)
    ratio("satchel-dir", "ch-run-dir", 3.0)
    ratio("satchel-dir", "bwrap-dir", 3.0)
    if args.compare:
        for kind in ("sif", "dir"):
            a, b = f"satchel-{kind}", f"satchel-{kind}@base"
            if a in med and b in med:
                print(f"  {a} / {b} = {med[a] / med[b]:.2f}x   ({med[a] - med[b]:+.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
