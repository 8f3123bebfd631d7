#!/usr/bin/python3
"""`ctr run --rm IMAGE ID /bin/true` through containerd 1.6 with satchel-runc, runc and crun.

    sudo .venv/bin/python3 bench/oci_runtime_bench.py [--runs 20] [--also NAME=PATH]

Starts its own containerd (--root/--state/--address in a temporary directory, CRI plugin off),
imports a one-layer busybox image (umoci + skopeo oci-archive), installs satchel-runc with
`satchel dropin --name satchel-runc`, then times `ctr run --rm --runc-binary RUNTIME` of
/bin/true for each runtime, interleaved round-robin after warm-up rounds, and prints the
medians and satchel-runc's ratio to runc (issue 16's goal: at most 1.0x). crun 1.8 refuses
this hybrid cgroup host, so it runs through tests/support/fixtures_ocirt.py's wrapper (a mount
namespace without the cgroup2 mount: `unshare` and `sh` add ~3 ms to each of its calls). A
runtime that is not installed or fails is reported and left out. Everything started is
stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SATCHEL = os.path.join(ROOT, ".venv", "bin", "satchel")
sys.path.insert(0, os.path.join(ROOT, "tests"))


def one_run(ctr, runtime: str, n: int) -> float:
    start = time.perf_counter_ns()
    proc = subprocess.run(ctr + ["run", "--rm", "--runc-binary", runtime,
                                 "docker.io/library/satchel-bb:latest", f"b{n}", "/bin/true"],
                          capture_output=True, stdin=subprocess.DEVNULL)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if proc.returncode:
        raise RuntimeError(proc.stderr.decode(errors="replace").strip())
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--also", action="append", default=[], metavar="NAME=PATH",
                        help="another runc-compatible binary in the same interleaved rounds "
                        "(e.g. a satchel-runc of an older tree, for before/after figures)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (containerd)")
    from integration.test_oci_runtime_containerd import _oci_archive

    top = tempfile.mkdtemp(prefix="satchel-ocibench-")
    daemon = None
    try:
        bindir = os.path.join(top, "bin")
        os.mkdir(bindir)
        subprocess.run([SATCHEL, "dropin", "--name", "satchel-runc", bindir], check=True,
                       capture_output=True)
        runtimes = {"satchel-runc": os.path.join(bindir, "satchel-runc")}
        for item in args.also:
            name, _, path = item.partition("=")
            runtimes[name] = path
        from support.fixtures_ocirt import write_crun_wrapper
        for name, path in (("runc", shutil.which("runc")), ("crun", write_crun_wrapper(bindir))):
            if path:
                runtimes[name] = path
            else:
                print(f"{name}: not installed, left out")
        from support.fixtures_ocirt import start_containerd
        daemon, ctr = start_containerd(top)
        subprocess.run(ctr + ["images", "import", _oci_archive(top)], check=True,
                       capture_output=True)
        samples = {name: [] for name in runtimes}
        n = 0
        for round_ in range(args.warmup + args.runs):
            for name, path in list(runtimes.items()):
                n += 1
                try:
                    ms = one_run(ctr, path, n)
                except RuntimeError as err:
                    print(f"{name}: failed ({err}), left out")
                    del runtimes[name]
                    samples.pop(name)
                    continue
                if round_ >= args.warmup:
                    samples[name].append(ms)
        print(f"ctr run --rm /bin/true, medians of {args.runs} runs (containerd 1.6):")
        medians = {name: statistics.median(v) for name, v in samples.items() if v}
        for name, value in medians.items():
            print(f"  {name:20s} {value:8.1f} ms")
        if "runc" in medians and "satchel-runc" in medians:
            print(f"  satchel-runc / runc = {medians['satchel-runc'] / medians['runc']:.2f}x "
                  "(goal <= 1.0x)")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            for line in reversed(open("/proc/self/mounts").read().splitlines()):
                if line.split()[1].startswith(top):
                    subprocess.run(["umount", "-l", line.split()[1]], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
