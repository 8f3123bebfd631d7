"""Attacks on root's mounts: each test names the attack and the promise it checks.

A real non-root user prepares a sandbox image or an overlay directory; root runs `satchel exec`
on it (an admin running a user's image). Root mode promises that what a user controls cannot
make root mount a host directory the user may not read into the container, nor put a host
directory over the container's root: every path from the image or a user's directory is
opened once without following symlinks, checked, and mounted through that descriptor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from support.assertions import one_fatal
from support.fixtures_users import run_satchel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root-mode attacks run as root")

LAUNCHES = 60          # root launches against the swapping loop (the issue saw 12-17 of 40-60)
SWAP_PAIRS = 16        # entries swapped between a directory and a symlink, in turn
SWAP_SECONDS = 120     # the swapper stops by itself after this, whatever happens to the test

# Runs as the attacker: swaps dI <-> lI (a directory and a symlink to the secret directory)
# with renameat2(RENAME_EXCHANGE) until the stop file appears or the time is up; prints the count.
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint)
directory, stop, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + float(sys.argv[4])
names = [(os.path.join(directory, f"d{i}").encode(), os.path.join(directory, f"l{i}").encode())
         for i in range(pairs)]
swaps = 0
print("started", flush=True)
while swaps % 256 or (not os.path.exists(stop) and time.monotonic() < deadline):
    for a, b in names:
        if libc.renameat2(-100, a, -100, b, 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
            sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    swaps += 1
print(swaps, flush=True)
"""


def chown_tree(path, user):
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            os.lchown(name, user.uid, user.gid)


@pytest.fixture
def user_sandbox(busybox_sandbox, test_user, user_tmp):
    """A copy of the busybox sandbox owned by the non-root user, with an image marker."""
    root = os.path.join(user_tmp, "sandbox")
    shutil.copytree(busybox_sandbox, root, symlinks=True)
    marker = "image-marker-" + uuid.uuid4().hex[:8]
    with open(os.path.join(root, marker), "w") as fh:
        fh.write("from the image\n")
    chown_tree(root, test_user)
    os.chmod(user_tmp, 0o755)
    return root, marker


@pytest.fixture
def secret_dir():
    """A root-only directory (0700) with a marker file, outside every path a root container
    gets from the host (/run: not /tmp, /var/tmp, /root or the working directory)."""
    path = tempfile.mkdtemp(prefix="satchel-secret-", dir="/run")
    token = "SECRET-" + uuid.uuid4().hex
    with open(os.path.join(path, "marker"), "w") as fh:
        fh.write(token + "\n")
    yield path, token
    shutil.rmtree(path, ignore_errors=True)


def test_underlay_entry_swapped_for_a_symlink_never_binds_the_target(
        user_sandbox, secret_dir, test_user, user_tmp, tmp_path):
    """Attack: the user swaps entries of their sandbox between a directory and a symlink to a
    root-only host directory (renameat2 RENAME_EXCHANGE in a loop) while root's launches make
    an underlay of that directory (a bind whose mount point is missing), hoping an entry
    listed as a directory is a symlink when it is bound.
    Promise: underlay entries are opened O_NOFOLLOW, checked and bound through that
    descriptor: the root-only directory is never visible nor writable in the container."""
    root, _ = user_sandbox
    secret, token = secret_dir
    race = os.path.join(root, "opt", "race")
    os.makedirs(race)
    for i in range(SWAP_PAIRS):
        os.mkdir(os.path.join(race, f"d{i}"))
        os.symlink(secret, os.path.join(race, f"l{i}"))
    chown_tree(os.path.join(root, "opt"), test_user)
    source = tmp_path / "bind-source"
    source.mkdir()
    stop = os.path.join(user_tmp, "stop")  # where the user can see it
    swapper = subprocess.Popen(
        test_user.argv(["/usr/bin/python3", "-I", "-c", SWAPPER, race, stop, str(SWAP_PAIRS),
                        str(SWAP_SECONDS)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    probe = ("for d in /opt/race/*; do cat $d/marker 2>/dev/null; "
             "touch $d/written 2>/dev/null; done; echo launched")
    leaks, failures = 0, []
    try:
        assert swapper.stdout.readline().strip() == "started", swapper.stderr.read()
        for _ in range(LAUNCHES):
            r = run_satchel(["exec", "-B", f"{source}:/opt/race/mnt", root, "sh", "-c", probe],
                            cwd="/", timeout=60)
            if token in r.stdout:
                leaks += 1
            if r.returncode != 0 or "launched" not in r.stdout:
                failures.append(r.stderr.strip())
    finally:
        open(stop, "w").close()
        try:
            out, err = swapper.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            swapper.kill()
            out, err = swapper.communicate()
    assert swapper.returncode == 0 and int(out.split()[-1]) > 0, (out, err)  # it did swap
    assert leaks == 0, f"the root-only directory was bound into {leaks} of {LAUNCHES} launches"
    assert not os.path.exists(os.path.join(secret, "written"))
    assert not failures, failures[:3]


@pytest.mark.parametrize("links", [("root",), ("var/tmp",), ("root", "var/tmp")])
def test_system_bind_through_an_image_symlink_to_root_is_skipped(user_sandbox, links):
    """Attack: the image holds `/root -> /` or `/var/tmp -> /`, so root's home bind (/root)
    or the /var/tmp bind would put that host directory over the container's /.
    Promise: a system bind whose destination resolves to the container's root is skipped
    with a warning; the container's / is the image's."""
    root, marker = user_sandbox
    for link in links:
        path = os.path.join(root, link)
        shutil.rmtree(path)
        os.symlink("/", path)
        os.lchown(path, *_owner(root))
    host_only = tempfile.mkdtemp(prefix="satchel-hostonly-", dir="/var/tmp")
    try:
        r = run_satchel(["exec", root, "ls", "-a", "/"], cwd="/", timeout=60)
    finally:
        shutil.rmtree(host_only, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    listing = r.stdout.split()
    assert marker in listing and "bin" in listing, r.stdout
    assert os.path.basename(host_only) not in listing, r.stdout
    for link in links:
        assert f"not mounting /{link}: it resolves to the container's root" in r.stderr


def test_user_bind_through_an_image_symlink_to_root_is_refused(user_sandbox, tmp_path):
    """Attack: the image holds `/var/tmp -> /`; root's `-B DIR:/var/tmp` would put DIR over
    the container's /.
    Promise: a user bind whose destination resolves to the container's root is an error:
    one FATAL line, nothing runs."""
    root, _ = user_sandbox
    shutil.rmtree(os.path.join(root, "var", "tmp"))
    os.symlink("/", os.path.join(root, "var", "tmp"))
    r = run_satchel(["exec", "--no-mount", "tmp", "-B", f"{tmp_path}:/var/tmp", root, "echo",
                     "ran"], cwd="/", timeout=60)
    one_fatal(r, "/var/tmp", "container's root directory")
    assert "ran" not in r.stdout


@pytest.mark.parametrize("linked", ["upper", "work"])
def test_overlay_with_a_symlinked_upper_or_work_is_refused(busybox_sif, test_user, user_tmp,
                                                           tmp_path, linked):
    """Attack: the user prepares an overlay directory whose `upper` (or `work`) is a symlink to
    a root-only directory; root runs `satchel exec --overlay DIR` and the container's writes
    land there.
    Promise: an overlay directory that is a symlink, holds a symlinked upper/work, or belongs
    to another user than the caller is refused: one FATAL line, nothing written."""
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    overlay = os.path.join(user_tmp, "overlay")
    os.mkdir(overlay)
    other = "work" if linked == "upper" else "upper"
    os.mkdir(os.path.join(overlay, other))
    os.symlink(str(secret), os.path.join(overlay, linked))
    chown_tree(overlay, test_user)
    r = run_satchel(["exec", "--overlay", overlay, busybox_sif, "sh", "-c",
                     "echo pwned > /pwned-by-overlay; echo ran"], cwd="/", timeout=60)
    one_fatal(r, "overlay directory")
    assert "ran" not in r.stdout
    assert os.listdir(secret) == []


def test_overlay_symlink_is_refused_even_in_the_callers_own_directory(busybox_sif, tmp_path):
    """Attack: as above, with the symlinked `upper` in a directory root owns (a user who could
    write there once, or a link root did not notice).
    Promise: the symlink alone is refused, whoever owns the directory: one FATAL line."""
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "upper").symlink_to(secret)
    r = run_satchel(["exec", "--overlay", str(overlay), busybox_sif, "sh", "-c",
                     "echo pwned > /pwned-by-overlay; echo ran"], cwd="/", timeout=60)
    one_fatal(r, f"{overlay}/upper", "symbolic link")
    assert os.listdir(secret) == []


def _owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid

