"""What a launch loads: the code of rarely used options (runtime/plan_extra.py,
runtime/executor_extra.py, trust/ecl.py on a host without an ecl.toml) and the writers
(fsutil.py's, image/sif_write.py) stay out of a plain
`exec IMAGE /bin/true`, as root and as satchel-test, on a SIF and on a sandbox; an option
that needs that code still loads it. Each module kept out is bytecode a launch does not read
(~10 µs per KB on these machines)."""

import os
import subprocess
import sys

import pytest

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")
# satchel's CLI with execve replaced: once the container is built, print the satchel modules
# loaded and exit (the container's namespaces die with the process)
HARNESS = """
import os, sys
sys.path.insert(0, %r)
def report(*args):
    names = sorted(m for m in sys.modules if m.startswith("satchel"))
    os.write(2, ("LOADED " + " ".join(names) + "\\n").encode())
    os._exit(0)
os.execve = report
sys.argv = ["satchel"] + sys.argv[1:]
from satchel.cli.main import main
main()
""" % os.path.abspath(SRC)
RARE = {"satchel.runtime.plan_extra", "satchel.runtime.executor_extra", "satchel.trust.ecl",
        "satchel.fsutil", "satchel.image.sif_write"}


def loaded(who, args: list[str]) -> set[str]:
    argv = [sys.executable, "-I", "-S", "-c", HARNESS] + args
    proc = subprocess.run(who.user.argv(argv) if who.user else argv, env=who.env(),
                          cwd=who.home, capture_output=True, text=True, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("LOADED ")]
    assert proc.returncode == 0 and lines, proc.stderr
    return set(lines[-1].split()[1:])


@pytest.mark.parametrize("image", ["busybox_sif", "busybox_sandbox"])
def test_plain_exec_loads_no_rare_option_module(who, image, request):
    names = loaded(who, ["exec", request.getfixturevalue(image), "/bin/true"])
    assert "satchel.runtime.executor" in names  # the container was built
    assert not names & RARE


def test_an_option_loads_the_code_it_needs(who, busybox_sandbox):
    """--dns is planned by plan_extra.py; as root --writable-tmpfs mounts a kernel overlay
    (executor_extra.py)."""
    names = loaded(who, ["exec", "--dns", "192.0.2.1", busybox_sandbox, "/bin/true"])
    assert "satchel.runtime.plan_extra" in names
    if not who.rootless:
        names = loaded(who, ["exec", "--writable-tmpfs", busybox_sandbox, "/bin/true"])
        assert "satchel.runtime.executor_extra" in names
