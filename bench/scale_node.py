#!/usr/bin/python3
"""Many containers of one image on one node: satchel against ch-run, side by side in one run.

    sudo /usr/bin/python3 bench/scale_node.py [--n 1,4,16,32] [--runs 3] [--user satchel-test]
                                              [--sif IMG] [--compare LAUNCHER] [--only LABELS]
                                              [--load K]

N containers start at once (as an MPI job's ranks on one node would), each running a realistic
start from the image: `python3 -c "import json, email, http.client, decimal, unittest"`. The
image is the test suite's debootstrap Debian (cached in /var/tmp/satchel-test-cache/debian-*.sif)
with python3 added; it is built once into the same cache (its key: the base and the definition
below). ch-run runs the very same SquashFS bytes (the SIF's partition, copied out).

Per N and runner, median of --runs rounds:
  wall   seconds from the first start until every container has finished;
  cpu    user + sys seconds of everything: launchers, payloads and FUSE servers (every process
         is started inside a fresh cpuacct cgroup, so daemonized servers are counted too; the
         counter is read once the cgroup is empty);
  rss    the peak of the summed resident memory of the FUSE servers (sampled every 5 ms: the
         processes named squashfuse_ll for satchel, the ch-run processes left serving for ch-run);
  cores  cpu / wall: how much of the machine the runner's processes got (2.0 on an idle
         2-core machine when nothing waits).
The issue's goals at N=16: satchel's cpu <= 0.5x ch-run's, wall <= 0.7x.

`host` runs the payload itself, with no container (the host's /usr/bin/python3, of the same
Debian release as the image): the floor no runtime can go below. Once the containers are
CPU-bound, wall = (their cpu + what other processes take meanwhile) / cores, and what the
scheduler grants a group of processes under other load depends on how they run: ch-run's
containers wait on their FUSE servers thousands of times and get more of a loaded machine
than the same payloads run on the host do. --load K runs K busy loops, each in a session (an
autogroup) of its own, during every measurement: a load that is the same for every runner.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
SATCHEL = os.environ.get("SATCHEL_BIN", os.path.join(ROOT, ".venv", "bin", "satchel"))
CACHE = os.environ.get("SATCHEL_TEST_CACHE", "/var/tmp/satchel-test-cache")
CPUACCT = "/sys/fs/cgroup/cpuacct"
PAYLOAD = ["python3", "-c", "import json, email, http.client, decimal, unittest"]
DEFINITION = """Bootstrap: localimage
From: {base}

%post
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3
    apt-get clean
    rm -rf /var/lib/apt/lists/*
"""
SERVER_NAMES = {"satchel": ("squashfuse_ll",), "ch-run": ("ch-run",)}


def log(message: str) -> None:
    print(f"scale_node: {message}", file=sys.stderr, flush=True)


def debian_python_image() -> str:
    """The cached Debian fixture with python3 added (built once)."""
    bases = [p for p in glob.glob(os.path.join(CACHE, "debian-*.sif"))
             if "fakeroot" not in p and "python" not in p]
    if not bases:
        raise SystemExit(f"scale_node: no debian-*.sif in {CACHE}: run the test suite once "
                         "(tests/support/fixtures_images.py builds it) or pass --sif")
    base = max(bases, key=os.path.getmtime)
    text = DEFINITION.format(base=base)
    key = hashlib.sha256((text + os.path.basename(base)).encode()).hexdigest()[:16]
    image = os.path.join(CACHE, f"debian-python-{key}.sif")
    if not os.path.exists(image):
        log(f"building {image} (python3 on {os.path.basename(base)}, once)")
        with tempfile.TemporaryDirectory() as work:
            definition = os.path.join(work, "debian-python.def")
            with open(definition, "w") as fh:
                fh.write(text)
            subprocess.run([SATCHEL, "build", image + ".tmp", definition], check=True,
                           stdout=subprocess.DEVNULL)
            os.rename(image + ".tmp", image)
        os.chmod(image, 0o755)
    return image


class Cgroup:
    """A fresh cpuacct cgroup: everything started in it (daemons too) is counted."""

    def __init__(self, name: str):
        self.path = os.path.join(CPUACCT, name)
        os.mkdir(self.path)

    def pids(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs")) as fh:
            return [int(line) for line in fh if line.strip()]

    def cpu_seconds(self) -> float:
        with open(os.path.join(self.path, "cpuacct.usage")) as fh:
            return int(fh.read()) / 1e9

    def wait_empty(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pids():
                return True
            time.sleep(0.01)
        return False

    def remove(self) -> None:
        os.rmdir(self.path)


class RssSampler(threading.Thread):
    """Samples the summed RSS of the cgroup's processes with the given names; keeps the peak."""

    def __init__(self, cgroup: Cgroup, names):
        super().__init__(daemon=True)
        self.cgroup, self.names = cgroup, names
        self.peak = 0
        self.stop = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for pid in self.cgroup.pids():
                try:
                    with open(f"/proc/{pid}/comm") as fh:
                        if fh.read().strip() not in self.names:
                            continue
                    with open(f"/proc/{pid}/statm") as fh:
                        total += int(fh.read().split()[1]) * self.page
                except (OSError, IndexError, ValueError):
                    continue
            self.peak = max(self.peak, total)
            self.stop.wait(0.005)


def run_group(argv: list[str], n: int, env: dict, ids, cgroup: Cgroup, errors: str) -> float:
    """Start n copies of argv at once in the cgroup as ids; wall seconds until all exited."""
    start = time.perf_counter()
    wrapper = os.fork()
    if wrapper == 0:
        try:
            with open(os.path.join(cgroup.path, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
            err = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            uid, gid = ids
            os.setgroups([gid])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            null = os.open(os.devnull, os.O_RDWR)
            children = []
            for _ in range(n):
                pid = os.fork()
                if pid == 0:
                    os.dup2(null, 0)
                    os.dup2(null, 1)
                    os.dup2(err, 2)
                    os.execve(argv[0], argv, env)
                children.append(pid)
            failed = 0
            for pid in children:
                _, status = os.waitpid(pid, 0)
                failed += status != 0
            os._exit(min(failed, 100))
        except BaseException as exc:
            os.write(2, f"scale_node: wrapper: {exc}\n".encode())
            os._exit(101)
    _, status = os.waitpid(wrapper, 0)
    wall = time.perf_counter() - start
    if status != 0:
        tail = ""
        if os.path.exists(errors):
            with open(errors) as fh:
                tail = fh.read()[-2000:]
        raise SystemExit(f"scale_node: {os.waitstatus_to_exitcode(status)} of {n} containers "
                         f"failed: {' '.join(argv)}\n{tail}")
    return wall


def measure(label: str, argv: list[str], n: int, env: dict, ids, work: str) -> dict:
    cgroup = Cgroup(f"satchel-scale-{os.getpid()}-{label}-{n}")
    runner = label.split("@")[0].split("-sqfs")[0]
    sampler = RssSampler(cgroup, SERVER_NAMES.get(runner, ("squashfuse_ll",)))
    sampler.start()
    try:
        wall = run_group(argv, n, env, ids, cgroup, os.path.join(work, f"{label}.err"))
        if not cgroup.wait_empty():
            log(f"{label}: processes left in the cgroup after 30 s: {cgroup.pids()}")
        sampler.stop.set()
        sampler.join()
        return {"wall": wall, "cpu": cgroup.cpu_seconds(), "rss": sampler.peak}
    finally:
        sampler.stop.set()
        if cgroup.wait_empty(5):
            cgroup.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="1,4,16,32", help="concurrent containers (comma-separated)")
    ap.add_argument("--runs", type=int, default=3, help="rounds per N (median)")
    ap.add_argument("--user", default="satchel-test", help="run the containers as this user")
    ap.add_argument("--sif", help="the image (default: the cached Debian with python3)")
    ap.add_argument("--compare", metavar="LAUNCHER", help="another satchel entry script, "
                    "measured as satchel@base")
    ap.add_argument("--only", help="comma-separated subset of satchel,ch-run,host,"
                    "satchel@base")
    ap.add_argument("--command", help="what each container runs instead of the python3 import "
                    "(a shell command line; for a quick check with another image)")
    ap.add_argument("--load", type=int, default=0, metavar="K",
                    help="K busy loops (each in a session of its own) during the measurements")
    args = ap.parse_args()
    payload = ["/bin/sh", "-c", args.command] if args.command else PAYLOAD
    if os.geteuid() != 0:
        raise SystemExit("scale_node: run as root (it makes cgroups), the containers run as "
                         "--user")
    entry = pwd.getpwnam(args.user)
    ids = (entry.pw_uid, entry.pw_gid)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": entry.pw_dir, "USER": entry.pw_name,
           "LANG": "C.UTF-8"}
    # byte-compile satchel: a user who cannot write __pycache__ would recompile every launch
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "src")],
                   check=True, stdout=subprocess.DEVNULL)
    sif = args.sif or debian_python_image()
    from satchel.image.formats import open_image
    ref = open_image(sif)
    work = tempfile.mkdtemp(prefix="satchel-scale-", dir="/tmp")
    results: dict[tuple[str, int], list[dict]] = {}
    loaders: list[int] = []  # --load: busy loops, killed at the end
    try:
        os.chmod(work, 0o755)
        sqfs = os.path.join(work, "image.sqfs")
        with open(ref.path, "rb") as src, open(sqfs, "wb") as dst:
            src.seek(ref.fs_offset)
            dst.write(src.read(ref.fs_size))
        os.chmod(sqfs, 0o644)
        runners = {"satchel": [SATCHEL, "exec", sif] + payload,
                   "ch-run": [shutil.which("ch-run") or "ch-run", sqfs, "--"] + payload,
                   "host": ["/usr/bin/python3"] + payload[1:] if not args.command else
                           ["/bin/sh", "-c", args.command]}
        if args.compare:
            runners["satchel@base"] = [args.compare, "exec", sif] + payload
        if args.only:
            runners = {k: v for k, v in runners.items() if k in args.only.split(",")}
        os.chdir(work)
        for label, argv in runners.items():  # warm the page cache (and compile caches)
            measure(label, argv, 1, env, ids, work)
        loaders += [busy_loop() for _ in range(args.load)]
        for n in (int(x) for x in args.n.split(",")):
            for round_ in range(args.runs):
                order = list(runners.items())
                if round_ % 2:
                    order.reverse()  # neither runner always goes first
                for label, argv in order:
                    row = measure(label, argv, n, env, ids, work)
                    results.setdefault((label, n), []).append(row)
                    log(f"N={n} {label}: wall {row['wall']:.2f} s, cpu {row['cpu']:.2f} s, "
                        f"server rss {row['rss'] / 2**20:.1f} MiB, load "
                        f"{os.getloadavg()[0]:.1f}")
    finally:
        for pid in loaders:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        shutil.rmtree(work, ignore_errors=True)
    report(results, args, sif, payload)
    return 0


def busy_loop() -> int:
    """A process that spins until killed, in a session (so an autogroup) of its own."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        while True:
            pass
    return pid


def report(results, args, sif: str, payload) -> None:
    print(f"{os.path.basename(sif)}: N concurrent `{' '.join(payload)[:40]}` as {args.user}, "
          f"median of {args.runs} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
          f"{f', {args.load} busy loops' if args.load else ''})")
    print(f"  {'runner':14s} {'N':>3s} {'wall s':>8s} {'cpu s':>8s} {'server rss MiB':>15s} "
          f"{'cores':>6s}")
    med = {}
    for (label, n), rows in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
        med[label, n] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        m = med[label, n]
        cores = statistics.median(r["cpu"] / r["wall"] for r in rows)
        print(f"  {label:14s} {n:3d} {m['wall']:8.2f} {m['cpu']:8.2f} {m['rss'] / 2**20:15.1f} "
              f"{cores:6.2f}")
    for n in sorted({n for _, n in med}):
        s, c = med.get(("satchel", n)), med.get(("ch-run", n))
        if s and c:
            goal = "  (goals at N=16: cpu <= 0.5x, wall <= 0.7x)" if n == 16 else ""
            print(f"  N={n}: satchel/ch-run cpu {s['cpu'] / c['cpu']:.2f}x, "
                  f"wall {s['wall'] / c['wall']:.2f}x{goal}")


if __name__ == "__main__":
    raise SystemExit(main())
