"""Attacks on `satchel build`: each test names the attack and the promise it checks.

A real non-root user prepares the base image; root builds from it (what an admin does with a
user's image). The promise of a root build is narrow (docs/SECURITY.md): code from the base
image runs as root with every capability, but the build's %post and %test start in a root
of their own (pivot_root, the host's root detached), not in a chroot they can walk out of.
"""

import os
import shutil
import subprocess

import pytest

from support.fixtures_images import DATA
from support.fixtures_users import run_satchel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root builds")


def chown_tree(path, user):
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            os.lchown(name, user.uid, user.gid)


@pytest.fixture
def escape_sandbox(test_user, user_tmp):
    """A busybox sandbox, owned by the non-root user, holding /bin/escape (static)."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to compile the escape program")
    root = os.path.join(user_tmp, "base")
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
    os.symlink("busybox", os.path.join(root, "bin", "sh"))
    subprocess.run(["gcc", "-static", "-O2", "-o", os.path.join(root, "bin", "escape"),
                    os.path.join(DATA, "chroot_escape.c")], check=True)
    chown_tree(root, test_user)
    return root


def test_root_build_post_and_test_cannot_leave_the_rootfs(escape_sandbox, user_tmp, tmp_path):
    """Attack: a base image's program escapes a chroot (chroot subdir, chdir(".."), chroot(".")) in
    %post/%test of a root build and writes a root-owned file on the host.
    Promise: %post and %test run after pivot_root with the host root detached: no host file."""
    post_marker = tmp_path / "written-by-post"
    test_marker = tmp_path / "written-by-test"
    deffile = os.path.join(user_tmp, "escape.def")
    with open(deffile, "w") as fh:
        fh.write(f"Bootstrap: localimage\nFrom: {escape_sandbox}\n\n"
                 f"%post\n    /bin/escape {post_marker} escaped || true\n"
                 f"    test -d /escape-dir && echo ran-escape > /post-ran\n\n"
                 f"%test\n    /bin/escape {test_marker} escaped || true\n    echo test-ran-escape\n")
    target = os.path.join(user_tmp, "escape.sif")
    r = run_satchel(["build", target, deffile], timeout=180)
    assert r.returncode == 0, r.stderr
    assert "+ /bin/escape" in r.stderr  # the attack ran in %post ...
    assert "test-ran-escape" in r.stdout + r.stderr  # ... and in %test
    assert not post_marker.exists(), "%post left the rootfs and wrote on the host"
    assert not test_marker.exists(), "%test left the rootfs and wrote on the host"
    listing = subprocess.run(["unsquashfs", "-l", "-o", str(_offset(target)), target],
                             capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/post-ran" in listing  # the program ran, inside the image


def _offset(path):
    from satchel.image import sif
    with sif.SIFFile.open(path) as image:
        return image.primary_partition().offset


def test_root_build_post_cannot_write_host_kernel_settings(tmp_path):
    """Attack: a package script in a root build's %post runs sysctl (writes /proc/sys), which
    would set the host's kernel parameters (the sandbox shares the host's kernel).
    Promise: the build sandbox has exec's (and `docker build`'s) read-only /proc/sys and masked
    kernel paths (runtime/plan_build.py), so the write fails with EROFS; /proc/sys stays
    readable for package managers. (A guard against accidents, not against a hostile root
    %post: docs/SECURITY.md.)"""
    deffile = tmp_path / "sysctl.def"
    # writes the value already there back: harmless even where the write gets through
    deffile.write_text(
        "Bootstrap: busybox\n\n%post\n"
        "    value=$(cat /proc/sys/kernel/domainname)\n"
        "    test -n \"$value\"\n"
        "    if echo \"$value\" > /proc/sys/kernel/domainname; then echo WROTE-SYSCTL;"
        " else echo SYSCTL-REFUSED; fi\n"
        "    if cat /proc/kcore > /dev/null 2>&1 && [ -s /proc/kcore ]; then echo KCORE-OPEN; fi\n")
    target = tmp_path / "sysctl.sif"
    r = run_satchel(["build", str(target), str(deffile)], timeout=180)
    assert r.returncode == 0, r.stderr
    output = r.stdout + r.stderr
    assert "SYSCTL-REFUSED" in output and "WROTE-SYSCTL" not in output, output[-2000:]
    assert "Read-only file system" in output
    assert "KCORE-OPEN" not in output
