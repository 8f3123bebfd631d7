"""The built-in SquashFS server reads the container's first files ahead (sqfs_prefetch.py).

What it lists is what the loader will open; what it stores in the page cache is byte for byte
what a READ returns; the pages are in the kernel's cache before anything reads the file.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from support.fixtures_images import ROOT as REPO_ROOT
from support.fixtures_users import run_satchel

DEFAULT_CONF = os.path.join(REPO_ROOT, "src", "satchel", "data", "satchel.conf")


def _listed(result) -> list[str]:
    for line in result.stderr.splitlines():
        if "the FUSE server reads ahead:" in line:
            return line.split("reads ahead:", 1)[1].split()
    raise AssertionError(f"no read-ahead line in:\n{result.stderr[-3000:]}")


def _no_prefetch_config(directory: str) -> str:
    path = os.path.join(directory, "satchel.conf")
    with open(DEFAULT_CONF) as src, open(path, "w") as dst:
        dst.write(src.read().replace("prefetch = yes", "prefetch = no"))
    os.chmod(path, 0o644)
    return path


def _env_scripts(sandbox: str) -> list[str]:
    """The image's environment scripts, in the order the action script sources them."""
    names = sorted(n for n in os.listdir(os.path.join(sandbox, ".singularity.d", "env"))
                   if n.endswith(".sh"))
    assert len(names) >= 5
    return ["/.singularity.d/env/" + n for n in names]


def test_busybox_read_ahead_follows_the_sh_link(test_user, busybox_sif, busybox_sandbox):
    r = run_satchel(["-d", "exec", busybox_sif, "/bin/true"], user=test_user)
    assert r.returncode == 0, r.stderr
    # /bin/sh -> busybox (the command is the same file), then what the action script sources
    assert _listed(r) == ["/bin/busybox"] + _env_scripts(busybox_sandbox)


def test_debian_read_ahead_adds_loader_and_libraries(test_user, debian_sif):
    r = run_satchel(["-d", "exec", debian_sif, "/usr/bin/env"], user=test_user)
    assert r.returncode == 0, r.stderr
    listed = _listed(r)
    # /bin/sh -> dash, the command, then what their PT_INTERP and DT_NEEDED name, found
    # through the image's own ld.so.cache (never the host's)
    assert listed[:2] == ["/usr/bin/dash", "/usr/bin/env"]
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in listed or os.uname().machine != "x86_64"
    assert any(p.rsplit("/", 1)[-1].startswith("ld-linux") for p in listed)
    assert "/etc/ld.so.cache" in listed  # read to find the libraries, and by the loader
    assert "/.singularity.d/env/99-base.sh" in listed
    assert len(listed) == len(set(listed))


def test_pages_read_ahead_are_the_image_bytes(test_user, debian_sif, user_tmp):
    files = ["/usr/bin/dash", "/usr/bin/md5sum", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
    with_read_ahead = run_satchel(["exec", debian_sif, "/usr/bin/md5sum"] + files,
                                  user=test_user)
    assert with_read_ahead.returncode == 0, with_read_ahead.stderr
    plain = run_satchel(["exec", debian_sif, "/usr/bin/md5sum"] + files, user=test_user,
                        env={"SATCHEL_CONFIG": _no_prefetch_config(user_tmp)})
    assert plain.returncode == 0, plain.stderr
    assert with_read_ahead.stdout == plain.stdout
    assert len(with_read_ahead.stdout.splitlines()) == len(files)


def test_missing_command_and_odd_paths_are_not_read_ahead(test_user, busybox_sif,
                                                         busybox_sandbox):
    expected = ["/bin/busybox"] + _env_scripts(busybox_sandbox)
    r = run_satchel(["-d", "exec", busybox_sif, "/no/such/program"], user=test_user)
    assert r.returncode == 255
    assert _listed(r) == expected
    r = run_satchel(["-d", "exec", busybox_sif, "/etc/satchel-release/.."], user=test_user)
    assert _listed(r) == expected
    r = run_satchel(["-d", "exec", busybox_sif, "/etc"], user=test_user)  # a directory
    assert _listed(r) == expected


def test_environment_scripts_read_ahead_are_sourced_as_written(test_user, debian_sif,
                                                                user_tmp):
    script = "cat /.singularity.d/env/*.sh | md5sum; echo ${SATCHEL_TEST_ENV:-unset}"
    with_read_ahead = run_satchel(["exec", debian_sif, "/bin/sh", "-c", script],
                                  user=test_user)
    plain = run_satchel(["exec", debian_sif, "/bin/sh", "-c", script], user=test_user,
                        env={"SATCHEL_CONFIG": _no_prefetch_config(user_tmp)})
    assert with_read_ahead.returncode == plain.returncode == 0, with_read_ahead.stderr
    assert with_read_ahead.stdout == plain.stdout


MECHANISM = textwrap.dedent("""
    import hashlib, os, subprocess, sys, time
    sys.path.insert(0, {src!r})
    from satchel.image.formats import open_image
    from satchel.runtime import fuse, linux

    image = open_image({sif!r})
    server = fuse.start_builtin("image", image.path, image.fs_offset,
                                ["squashfuse_ll", "-f", "/dev/fd/{{fd}}"], ["/bin/sh"])
    linux.unshare(("mount",))
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None, "private")
    server.open_device()
    server.before_mount()
    linux.mount(image.path, {mnt!r}, "fuse.squashfuse", linux.MS_RDONLY | linux.MS_NODEV,
                fuse.mount_options(server.fd, 0, 0), "mount")
    server.start()
    server.wait_ready()
    assert server.reads_ahead
    server.store_read_ahead(lambda path: os.stat({mnt!r} + path) and None)
    target = {mnt!r} + "/bin/busybox"
    size = os.stat(target).st_size
    deadline = time.monotonic() + 5
    while True:  # fincore maps the file and asks mincore(2): it reads nothing
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES",
                              target], capture_output=True, text=True, check=True).stdout
        if int(out) >= size or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(int(out), size)
    with open(target, "rb") as fh:
        print(hashlib.sha256(fh.read()).hexdigest())
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting FUSE by hand needs root")
@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux fincore missing")
def test_pages_are_cached_before_anything_reads_the_file(busybox_sif, busybox_sandbox,
                                                         tmp_path):
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    script = MECHANISM.format(src=os.path.join(REPO_ROOT, "src"), sif=busybox_sif, mnt=mnt)
    r = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    resident, size = map(int, r.stdout.splitlines()[0].split())
    assert resident >= size > 0  # every page stored by the server, none read
    import hashlib
    with open(os.path.join(busybox_sandbox, "bin", "busybox"), "rb") as fh:
        assert r.stdout.splitlines()[1] == hashlib.sha256(fh.read()).hexdigest()


def test_read_ahead_thread_ends_once_it_has_stored(test_user, busybox_sif):
    from support.fixtures_runtime import live_processes, wait_until
    from support.fixtures_users import SATCHEL

    proc = subprocess.Popen(test_user.argv([SATCHEL, "exec", busybox_sif, "sleep", "4"]),
                            env=test_user.env(), cwd=test_user.home,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: live_processes("squashfuse_ll", busybox_sif), timeout=5)
        server = live_processes("squashfuse_ll", busybox_sif)[0]
        # the thread stores what it read, closes its pipes and ends; libfuse's loop serves on
        assert wait_until(lambda: len(os.listdir(f"/proc/{server}/task")) == 1, timeout=3)
        fds = os.listdir(f"/proc/{server}/fd")
        # stdio, /dev/fuse, two image handles, the life pipe (fuse.py): no other pipe left
        assert len(fds) <= 7, fds
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_thread_that_read_everything_before_the_mount_still_ends(tmp_path):
    """Tiny files are read before the main thread hands the pipes over: the thread waits for
    them, then stores (refused here: nothing is mounted) and ends, closing its pipe ends."""
    import select

    from satchel.runtime import sqfs_prefetch, sqfs_server

    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "sh").write_bytes(b"not an ELF file\n")
    (tree / ".singularity.d" / "env").mkdir(parents=True)
    (tree / ".singularity.d" / "env" / "01-a.sh").write_text("A=1\n")
    image = str(tmp_path / "image.sqfs")
    subprocess.run(["mksquashfs", str(tree), image, "-quiet", "-no-progress"], check=True)
    libraries = sqfs_server.Libraries()
    session = sqfs_server.Session(libraries, image, 0)
    go_read, go_write = os.pipe()
    ack_read, ack_write = os.pipe()
    handover = sqfs_prefetch.start(libraries.lib, libraries.fuse, image, 0, session.session,
                                   ["/bin/sh"], go_read, ack_write)
    assert handover is not None
    try:
        assert select.select([ack_read], [], [], 5)[0]
        # both files are smaller than a chunk: read to their end before the list was sent
        assert os.read(ack_read, 4096) == b"l/bin/sh\0/.singularity.d/env/01-a.sh\0\n"
        handover.release()  # what the main thread does after "x"
        os.write(go_write, b"s")
        assert select.select([ack_read], [], [], 3)[0], "the thread never ended"
        assert os.read(ack_read, 64) == b""  # its end of the pipe is closed
    finally:
        os.close(ack_read)
        os.close(go_write)


def _tiny_image(tmp_path) -> str:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "sh").write_bytes(b"not an ELF file\n")
    image = str(tmp_path / "image.sqfs")
    subprocess.run(["mksquashfs", str(tree), image, "-quiet", "-no-progress"], check=True)
    return image


def test_the_inode_layout_read_ahead_relies_on_is_checked(tmp_path):
    """libsquashfuse's sqfs_inode as this library lays it out passes the start-up check."""
    from satchel.runtime import sqfs_prefetch, sqfs_server

    libraries = sqfs_server.Libraries()
    handle = libraries.open_image(os.fsencode(_tiny_image(tmp_path)), 0)
    assert handle
    sqfs_prefetch.check_layout(libraries.lib, handle)  # raises if the layout differs


def test_a_different_inode_layout_fails_the_launch_loudly(tmp_path, monkeypatch):
    """A library whose inodes read otherwise (here: the mode read 2 bytes off, where uid is)
    is refused at the server's start with one error naming the layout, not read ahead from
    silently (a real server process, real library and image; the launcher's side too)."""
    from satchel.errors import ContainerError
    from satchel.runtime import fuse, sqfs_prefetch

    image = _tiny_image(tmp_path)
    monkeypatch.setattr(sqfs_prefetch, "_MODE_AT", sqfs_prefetch._MODE_AT + 2)
    server = fuse.fork_builtin("image")  # forked now: the server inherits the changed layout
    try:
        server.serve_image(image, 0, ["squashfuse_ll", "-f", image, "/dev/fd/{fd}"],
                           ["/bin/sh"])
        with pytest.raises(ContainerError, match="inode layout is not the one satchel reads "
                                                 "ahead with .*prefetch = no"):
            server.before_mount()
    finally:
        server.cancel()


def test_without_the_libraries_the_squashfuse_ll_program_serves(test_user, busybox_sif,
                                                                user_tmp):
    """libsquashfuse_ll cannot be loaded (here: a broken copy first on LD_LIBRARY_PATH): the
    server execs the squashfuse_ll program instead (sqfs_server's fallback, which looks the
    program up on PATH itself), and the container runs from its mount."""
    broken = os.path.join(user_tmp, "broken-libs")
    os.makedirs(broken)
    with open(os.path.join(broken, "libsquashfuse_ll.so.0"), "wb") as fh:
        fh.write(b"not an ELF file")
    os.chmod(broken, 0o755)
    os.chmod(os.path.join(broken, "libsquashfuse_ll.so.0"), 0o644)
    script = 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f"; echo; done; ls /bin/busybox'
    r = run_satchel(["exec", busybox_sif, "/bin/sh", "-c", script], user=test_user,
                    env={"LD_LIBRARY_PATH": broken})
    assert r.returncode == 0, r.stderr
    servers = [line for line in r.stdout.splitlines()
               if line.startswith("/") and line.split()[0].endswith("/squashfuse_ll")]
    assert servers and all(" -f " in line for line in servers), r.stdout
    assert "/bin/busybox" in r.stdout.splitlines()
