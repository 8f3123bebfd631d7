#!/usr/bin/python3
"""Where a launch spends its CPU, phase by phase and operation by operation, against a base tree.

    sudo /usr/bin/python3 bench/startup_phases.py [--runs 60] [--image sif|dir]
                                                  [--base SRC] [--user satchel-test]

exec_startup.py says how long a launch takes; this says where the launcher's own CPU time
(time.process_time: the launcher process only, not the FUSE server, not waiting) goes, for
this tree and for another checkout's src/ (--base, e.g. a `git worktree` of an older commit),
measured in the same interleaved rounds, as medians:

  interpreter       the interpreter until the entry script runs
  import cli.main   importing satchel.cli.main
  to action.run     main() until cli/commands/action.run() (the command's options parsed)
  to build_plan     action.run() until build_plan() begins (opening the image, the options,
                    the host; the early FUSE server's fork for an image file)
  build_plan        build_plan()
  to apply          build_plan()'s end until executor.apply() (starting the server,
                    importing the executor)
  apply             apply() until the payload's execve, each operation kind's share below

The marks come from an import hook in a generated entry script (it wraps the functions once
their module has loaded: the import order is the launcher's own) and from a wrapper of
os.execve that writes them to a file; each tree's Executor.op_* methods are wrapped the same
way. The image is the busybox test image (built as exec_startup.py builds it), as a SIF or
unpacked; the launches run as --user, /bin/true.
"""

from __future__ import annotations

import argparse
import collections
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import exec_startup  # noqa: E402 - the image it measures with, built the same way

# (label, from mark, to mark); "start" is the process's CPU when the entry script begins
PHASES = (("interpreter", None, "start"), ("import cli.main", "start", "main"),
          ("to action.run", "main", "action"), ("to build_plan", "action", "plan"),
          ("build_plan", "plan", "build"), ("to apply", "build", "apply"),
          ("apply", "apply", "execve"))

# the entry script: marks (name, process CPU ns) at the wrapped functions, written at execve
ENTRY = r'''#!/usr/bin/python3 -IS
import os, sys, time
_marks = [("start", time.process_time_ns())]
_mark = lambda name: _marks.append((name, time.process_time_ns()))
_execve = os.execve
def _final(*args, **kwargs):
    _mark("execve")
    with open(__OUT__, "a") as out:
        out.write(" ".join("%s=%d" % m for m in _marks) + "\n")
    return _execve(*args, **kwargs)
os.execve = _final

def _wrap(owner, attr, name):
    real = getattr(owner, attr)
    def marked(*args, **kwargs):
        _mark(name(args) if callable(name) else name)
        return real(*args, **kwargs)
    setattr(owner, attr, marked)

def _loaded(module):
    if module.__name__ == "satchel.cli.commands.action":
        _wrap(module, "run", "action")
    elif module.__name__ == "satchel.runtime.plan":
        real = module.build_plan
        def build_plan(*args, **kwargs):
            _mark("plan")
            plan = real(*args, **kwargs)
            _mark("build")
            return plan
        module.build_plan = build_plan
    elif module.__name__ == "satchel.runtime.executor":
        _wrap(module, "apply", "apply")
        for attr in dir(module.Executor):
            if attr.startswith("op_"):
                _wrap(module.Executor, attr, "op:" + attr[3:])

class _Hook:
    """Finds nothing itself: wraps the loader of what the other finders find."""
    def find_spec(self, name, path=None, target=None):
        if not name.startswith("satchel."):
            return None
        for finder in sys.meta_path[1:]:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        spec.loader = _Marking(spec.loader)  # one per module: finders share their loader
        return spec

class _Marking:
    def __init__(self, loader):
        self.loader = loader
    def create_module(self, spec):
        return self.loader.create_module(spec)
    def exec_module(self, module):
        self.loader.exec_module(module)
        _loaded(module)
sys.path.insert(0, __SRC__)
import satchel  # first: a launch bundle's finder goes in front, and the hook in front of it
sys.meta_path.insert(0, _Hook())
from satchel.cli.main import main
_mark("main")
sys.exit(main())
'''


def write_entry(directory: str, src: str, out: str) -> str:
    path = out + ".entry"
    with open(path, "w") as fh:
        fh.write(ENTRY.replace("__OUT__", repr(out)).replace("__SRC__", repr(src)))
    os.chmod(path, 0o755)
    return path


def summarize(path: str) -> tuple[dict, dict, float]:
    """Medians of the phases and of each operation kind's CPU, and of the whole, in ms."""
    phases, ops, totals = collections.defaultdict(list), collections.defaultdict(list), []
    with open(path) as fh:
        for line in fh:
            marks = [(k, int(v)) for k, v in (item.rsplit("=", 1) for item in line.split())]
            at = {}
            for name, ns in marks:
                at.setdefault(name, ns)
            for phase, since, until in PHASES:
                if until in at and (since is None or since in at):
                    phases[phase].append((at[until] - at.get(since, 0)) / 1e6)
            per_op = collections.Counter()
            for (name, ns), (_, following) in zip(marks, marks[1:]):
                if name.startswith("op:"):
                    per_op[name[3:]] += following - ns
            for name, ns in per_op.items():
                ops[name].append(ns / 1e6)
            totals.append(marks[-1][1] / 1e6)
    return ({k: statistics.median(v) for k, v in phases.items()},
            {k: statistics.median(v) for k, v in ops.items()}, statistics.median(totals))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--image", choices=("sif", "dir"), default="dir")
    ap.add_argument("--base", metavar="SRC", help="another checkout's src/ directory")
    ap.add_argument("--user", default="satchel-test")
    ap.add_argument("--sif", help="SIF image to use (default: build the busybox test image)")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    args = ap.parse_args()

    user = pwd.getpwnam(args.user)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": user.pw_dir, "USER": user.pw_name,
           "LANG": "C.UTF-8"}
    trees = {"this tree": os.path.join(ROOT, "src")}
    if args.base:
        trees["base"] = os.path.abspath(args.base)
    for src in trees.values():  # the user cannot write __pycache__: compile as root first
        subprocess.run([sys.executable, "-m", "compileall", "-q", src], check=True,
                       stdout=subprocess.DEVNULL)
    exec_startup.write_bundle()  # this tree's launch bundle, as an installation has it
    work = tempfile.mkdtemp(prefix="satchel-phases-", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        sif, _, directory = exec_startup.prepare_images(work, args.sif)
        image = sif if args.image == "sif" else directory
        entries, outputs = {}, {}
        for label, src in trees.items():
            outputs[label] = os.path.join(work, f"marks-{len(outputs)}")
            open(outputs[label], "w").close()
            os.chown(outputs[label], user.pw_uid, user.pw_gid)
            entries[label] = write_entry(work, src, outputs[label])
        ids = (user.pw_uid, user.pw_gid, [user.pw_gid])
        os.chdir(user.pw_dir)
        for round_ in range(args.runs + args.warmup):
            for label, entry in entries.items():
                if round_ == args.warmup:  # the first rounds warm the caches: forget them
                    open(outputs[label], "w").close()
                _, status = exec_startup.spawn_wait([entry, "exec", image, "/bin/true"], env,
                                                    ids)
                if status != 0:
                    print(f"{label}: the launch failed ({status})", file=sys.stderr)
                    return 1
        results = {label: summarize(path) for label, path in outputs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    labels = list(results)
    print(f"launcher CPU by phase, {args.image} image, /bin/true, median of {args.runs} "
          f"interleaved runs as {args.user} (load {os.getloadavg()[0]:.2f}), ms")
    print(f"  {'phase':20s}" + "".join(f"{label:>12s}" for label in labels) +
          ("        diff" if len(labels) == 2 else ""))

    def row(name: str, values: list[float]) -> None:
        line = f"  {name:20s}" + "".join(f"{v:12.2f}" for v in values)
        if len(values) == 2:
            line += f"{values[0] - values[1]:+12.2f}"
        print(line)

    for phase, _, _ in PHASES:
        row(phase, [results[label][0].get(phase, 0.0) for label in labels])
    row("after the interpreter", [results[label][2] - results[label][0].get("interpreter", 0.0)
                                  for label in labels])
    row("whole launcher", [results[label][2] for label in labels])
    print("  operations of apply:")
    kinds = set().union(*(results[label][1] for label in labels))
    first = results[labels[0]][1]
    for kind in sorted(kinds, key=lambda k: -first.get(k, 0.0)):
        row("  " + kind, [results[label][1].get(kind, 0.0) for label in labels])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
