"""satchel installed where containers see it: under $HOME (non-root) or /tmp (root).

The runtime's session mounts (its tmpfs, the staged root and everything below it) live in
the package directory, runtime/session/. When the home directory or /tmp is bound into the
container recursively and satchel is installed below it, those mounts must not come along.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

import satchel
from satchel import launcher

SOURCE = os.path.dirname(os.path.abspath(satchel.__file__))


@pytest.fixture
def installed(who):
    """A copy of satchel's package with its own entry script (as scripts/install-deps writes
    it), owned by `who`, in its home (non-root: bound) or under /tmp (root: bound)."""
    top = tempfile.mkdtemp(prefix="satchel-inst-", dir=who.home if who.rootless else "/tmp")
    shutil.copytree(SOURCE, os.path.join(top, "lib", "satchel"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    entry = os.path.join(top, "satchel")
    with open(entry, "w") as fh:
        fh.write(launcher.TEMPLATE.format(python=launcher.sys.executable,
                                          path=os.path.join(top, "lib"),
                                          site_dirs=launcher.site_dirs()))
    os.chmod(entry, 0o755)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
            os.lchown(name, who.uid, who.gid)
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_session_mounts_stay_out_of_a_bound_install_dir(who, installed, busybox_sif):
    """satchel under a directory the container gets recursively: the container's mount table
    holds nothing below the install directory (no session tmpfs, no second staged root)."""
    session = os.path.join(installed, "lib", "satchel", "runtime", "session")
    argv = [os.path.join(installed, "satchel"), "exec", busybox_sif, "sh", "-c",
            f"test -d {installed} && echo BOUND; cat /proc/self/mountinfo"]
    proc = subprocess.run(who.user.argv(argv) if who.rootless else argv, env=who.env(), cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "BOUND"  # the directory is there, as home or /tmp
    below = [line for line in lines[1:] if line.split()[4].startswith(installed + "/")]
    assert below == [], f"mounts below {installed} (session {session}):\n" + "\n".join(below)
