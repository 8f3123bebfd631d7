#!/usr/bin/python3
"""MPI ping-pong, bare metal vs in containers, side by side in one run.

The same binary (pingpong.c compiled with the host's mpicc) runs
  bare:       mpirun -np 2 ./pingpong
  container:  mpirun -np 2 satchel exec mpi.sif ./pingpong
(hybrid model: host Open MPI launches, each rank starts its own container and uses the image's
Open MPI libraries; the binary is reached through the default bind of the host /tmp). The two
alternate for --rounds rounds so drifting machine load hits both alike; each run reports the
median of --trials trials, and the table shows the median over rounds and the spread.

Usage (as root on the Debian 12 development machine, after ./scripts/install-deps):
  bench/mpi_pingpong/compare.py [--image mpi.sif] [--rounds 5] [--trials 7]
                                [--user satchel-test] [--mca KEY=VALUE ...]
Without --image the image is built from examples/mpi.def (about a minute, needs the network).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SATCHEL = os.environ.get("SATCHEL_BIN", os.path.join(ROOT, ".venv", "bin", "satchel"))
METRICS = (("latency_8B_us", "latency 8 B (us, lower is better)"),
           ("bandwidth_1MiB_MBps", "bandwidth 1 MiB (MB/s, higher is better)"))


def log(message: str) -> None:
    print(f"mpi_pingpong: {message}", file=sys.stderr, flush=True)


def user_argv(argv: list[str], user: str | None) -> list[str]:
    if not user:
        return argv
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
            "--"] + argv


def user_env(user: str | None) -> dict:
    env = dict(os.environ)
    if user:
        entry = pwd.getpwnam(user)
        env.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
    return env


def run_once(argv: list[str], user: str | None, cwd: str) -> dict[str, float]:
    proc = subprocess.run(user_argv(argv, user), capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=user_env(user))
    values = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in dict(METRICS):
            values[key] = float(value)
    if proc.returncode != 0 or len(values) != len(METRICS):
        raise SystemExit(f"mpi_pingpong: {' '.join(argv)} failed ({proc.returncode}):\n"
                         f"{proc.stdout}\n{proc.stderr[-3000:]}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--user", default=None, help="run mpirun as this user (default: me)")
    parser.add_argument("--mca", action="append", default=[],
                        help="an Open MPI MCA setting for both cases, KEY=VALUE")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="satchel-pingpong-", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        binary = os.path.join(work, "pingpong")
        subprocess.run(["mpicc", "-O2", "-o", binary, os.path.join(HERE, "pingpong.c")],
                       check=True)
        image = args.image
        if not image:
            image = os.path.join(work, "mpi.sif")
            log("building the image from examples/mpi.def")
            subprocess.run([SATCHEL, "build", image, os.path.join(ROOT, "examples", "mpi.def")],
                           check=True, stdout=subprocess.DEVNULL)
            os.chmod(image, 0o644)
        mpirun = ["mpirun", "-np", "2"]
        if not args.user and os.geteuid() == 0:
            mpirun.append("--allow-run-as-root")
        for setting in args.mca:
            key, _, value = setting.partition("=")
            mpirun += ["--mca", key, value]
        cases = {
            "bare": mpirun + [binary, str(args.trials)],
            "container": mpirun + [SATCHEL, "exec", image, binary, str(args.trials)],
        }
        results: dict[str, list[dict]] = {name: [] for name in cases}
        for rnd in range(args.rounds):
            order = list(cases) if rnd % 2 == 0 else list(reversed(cases))
            for name in order:
                results[name].append(run_once(cases[name], args.user, work))
            log(f"round {rnd + 1}/{args.rounds}: " + ", ".join(
                f"{n} {results[n][-1]['latency_8B_us']:.3f} us "
                f"{results[n][-1]['bandwidth_1MiB_MBps']:.0f} MB/s" for n in cases))
        summary = report(results, args)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"rounds": results, "summary": summary, "image": image,
                           "user": args.user, "mca": args.mca}, fh, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: dict[str, list[dict]], args) -> dict:
    print(f"\nMPI ping-pong, 2 ranks on one node, {args.rounds} alternating rounds x "
          f"{args.trials} trials (median of medians; min..max over rounds)\n")
    print(f"{'':42} {'bare metal':>22} {'container':>22} {'diff':>8}")
    summary = {}
    for key, label in METRICS:
        bare = [r[key] for r in results["bare"]]
        cont = [r[key] for r in results["container"]]
        b, c = statistics.median(bare), statistics.median(cont)
        diff = (c - b) / b * 100
        summary[key] = {"bare": b, "container": c, "diff_percent": round(diff, 2)}
        print(f"{label:42} {b:>10.3f} ({min(bare):.2f}..{max(bare):.2f}) "
              f"{c:>10.3f} ({min(cont):.2f}..{max(cont):.2f}) {diff:>+7.2f}%")
    return summary


if __name__ == "__main__":
    sys.exit(main())
