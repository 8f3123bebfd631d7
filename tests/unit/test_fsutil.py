"""fsutil: secure_join never escapes its root; atomic and no-follow writes; tree removal."""

import errno
import os

import pytest

from satchel import fsutil
from satchel.errors import PathError


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "host").mkdir()
    return str(r)


def test_plain_paths(root):
    assert fsutil.secure_join(root, "/etc/passwd") == root + "/etc/passwd"
    assert fsutil.secure_join(root, "etc//./passwd") == root + "/etc/passwd"
    assert fsutil.secure_join(root, "/") == root
    assert fsutil.secure_join(root, "") == root


def test_dotdot_is_clamped_at_root(root):
    assert fsutil.secure_join(root, "/../../../etc/shadow") == root + "/etc/shadow"
    assert fsutil.secure_join(root, "usr/../../../x") == root + "/x"


def test_absolute_symlink_restarts_at_root(root):
    os.symlink("/../../host", os.path.join(root, "opt"))
    assert fsutil.secure_join(root, "/opt/file") == root + "/host/file"


def test_relative_symlink_cannot_climb_out(root):
    os.symlink("../../../host", os.path.join(root, "usr", "lib", "up"))
    assert fsutil.secure_join(root, "/usr/lib/up/x") == root + "/host/x"


def test_symlink_chain_and_final_component(root):
    os.symlink("lib", os.path.join(root, "usr", "lib64"))
    os.symlink("/usr/lib64", os.path.join(root, "lib"))
    open(os.path.join(root, "usr", "lib", "libc.so"), "w").close()
    assert fsutil.secure_join(root, "/lib/libc.so") == root + "/usr/lib/libc.so"
    os.symlink("/etc/../../outside", os.path.join(root, "etc", "resolv.conf"))
    assert fsutil.secure_join(root, "/etc/resolv.conf") == root + "/outside"


def test_dotdot_after_symlink_uses_the_link_target(root):
    # /a -> /usr/lib ; /a/.. is /usr, as the kernel resolves it inside the container
    os.symlink("/usr/lib", os.path.join(root, "a"))
    assert fsutil.secure_join(root, "/a/../x") == root + "/usr/x"


def test_symlink_loop_raises_eloop(root):
    os.symlink("/loop2", os.path.join(root, "loop1"))
    os.symlink("/loop1", os.path.join(root, "loop2"))
    with pytest.raises(PathError, match="too many levels of symbolic links") as info:
        fsutil.secure_join(root, "/loop1/x")
    assert info.value.errno == errno.ELOOP


def _chain(root, count):
    """/l0 -> /l1 -> ... -> /l{count-1} -> /etc: `count` links to follow."""
    for i in range(count):
        os.symlink(f"/l{i + 1}" if i + 1 < count else "/etc", os.path.join(root, f"l{i}"))


@pytest.mark.parametrize("resolver", ["secure_join", "resolve_at", "make_dirs_in_root"])
def test_one_symlink_limit_as_the_kernel(root, resolver):
    """Issue 11 point 3: every resolver entry point follows at most 40 links, as Linux does
    (fsutil's path resolver allowed 255 while the runtime's allowed 40)."""
    _chain(root, 40)
    os.symlink("/l0", os.path.join(root, "over"))  # 41 links

    def resolve(path):
        if resolver == "resolve_at":
            fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
            try:
                found = fsutil.resolve_at(fd, path)
                os.close(found.fd)
                return found.container_path
            finally:
                os.close(fd)
        return getattr(fsutil, resolver)(root, path)[len(root):]

    assert resolve("/l0") == "/etc"
    with pytest.raises(PathError) as info:
        resolve("/over")
    assert info.value.errno == errno.ELOOP


def test_file_in_the_middle_is_not_a_directory(root):
    """As the kernel: a component below a regular file is ENOTDIR, whatever follows it."""
    open(os.path.join(root, "etc", "hosts"), "w").close()
    with pytest.raises(PathError, match="/etc/hosts is not a directory") as info:
        fsutil.secure_join(root, "/etc/hosts/x/../y")
    assert info.value.errno == errno.ENOTDIR


def test_dotdot_after_missing_components(root):
    # the missing tail is normalised lexically; a '..' that climbs above it cannot be answered
    assert fsutil.secure_join(root, "/etc/missing/../passwd") == root + "/etc/passwd"
    with pytest.raises(PathError, match="'..' after a missing component"):
        fsutil.secure_join(root, "/etc/missing/../../x")


def test_resolve_path_splits_existing_and_missing(root):
    os.symlink("usr/lib", os.path.join(root, "lib"))
    assert fsutil.resolve_path(root, "/lib/a/b") == (root + "/usr/lib", ["a", "b"])
    assert fsutil.resolve_path(root, "/lib") == (root + "/usr/lib", [])


def test_make_dirs_in_root_follows_links_inside(root, tmp_path):
    os.symlink("/../../host", os.path.join(root, "opt"))
    made = fsutil.make_dirs_in_root(root, "/opt/a/b")
    assert made == root + "/host/a/b"
    assert os.path.isdir(made)
    assert os.listdir(tmp_path / "host") == []  # nothing outside the root


def test_make_dirs_in_root_refuses_file(root):
    open(os.path.join(root, "etc", "f"), "w").close()
    with pytest.raises(PathError) as info:
        fsutil.make_dirs_in_root(root, "/etc/f/sub")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(PathError, match="is not a directory"):
        fsutil.make_dirs_in_root(root, "/etc/f")


def test_write_new_file_replaces_symlink_instead_of_following(root, tmp_path):
    victim = tmp_path / "host" / "victim"
    victim.write_text("original")
    link = os.path.join(root, "etc", "passwd")
    os.symlink(str(victim), link)
    fsutil.write_new_file(link, "new content", 0o600)
    assert victim.read_text() == "original"
    assert not os.path.islink(link)
    assert open(link).read() == "new content"
    assert os.stat(link).st_mode & 0o777 == 0o600


def test_atomic_write_leaves_no_temporary(tmp_path):
    path = tmp_path / "f"
    fsutil.atomic_write(str(path), b"one")
    fsutil.atomic_write(str(path), "two", mode=0o640)
    assert path.read_text() == "two"
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_failure_cleans_up(tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(OSError):
        fsutil.atomic_write(str(target), b"x")  # rename onto a directory fails
    assert os.listdir(tmp_path) == ["dir"]


def test_inside():
    assert fsutil.inside("/a/b", "/a/b")
    assert fsutil.inside("/a/b", "/a/b/c")
    assert not fsutil.inside("/a/b", "/a/bc")
    assert not fsutil.inside("/a/b", "/a")


def test_remove_tree_read_only_dirs(tmp_path):
    top = tmp_path / "t"
    (top / "ro" / "deep").mkdir(parents=True)
    (top / "ro" / "deep" / "f").write_text("x")
    os.symlink("/etc", top / "link")
    os.chmod(top / "ro" / "deep", 0o500)
    os.chmod(top / "ro", 0o500)
    fsutil.remove_tree(str(top))
    assert not top.exists()
    assert os.path.isdir("/etc")
    fsutil.remove_tree(str(top))  # absent: no error


def test_fsutil_imports_only_lean_modules():
    import subprocess
    import sys
    code = ("import sys; before=set(sys.modules); import satchel.fsutil; "
            "print(' '.join(sorted(set(sys.modules)-before)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": ""}, cwd=os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    loaded = set(out.stdout.split())
    for heavy in ("shutil", "subprocess", "json", "re", "pathlib", "tempfile"):
        assert heavy not in loaded, out.stdout


def test_remove_tree_as_non_root_user(test_user, user_tmp):
    """Without root's override, read-only directories need the permission fix-up."""
    import subprocess
    import sys
    top = os.path.join(user_tmp, "tree")
    script = (
        "import os, sys; sys.path.insert(0, sys.argv[2]); from satchel import fsutil\n"
        "top = sys.argv[1]\n"
        "os.makedirs(top + '/ro/deep'); open(top + '/ro/deep/f', 'w').close()\n"
        "os.chmod(top + '/ro/deep', 0o500); os.chmod(top + '/ro', 0o500)\n"
        "fsutil.remove_tree(top)\n"
        "print(os.path.exists(top))\n")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    out = subprocess.run(test_user.argv([sys.executable, "-I", "-c", script, top, os.path.abspath(src)]),
                         capture_output=True, text=True, env=test_user.env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- read_regular / open_regular: files someone else controls ------------------------------------

@pytest.fixture
def bounded():
    """Fail (TimeoutError) instead of hanging when a read blocks: a FIFO would on the old code."""
    import signal

    def expired(signum, frame):
        raise TimeoutError("blocked for 5 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_read_regular_reads_a_regular_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_bytes(b'{"a": "b"}\n' * 10000)
    assert fsutil.read_regular(str(path)) == b'{"a": "b"}\n' * 10000


def test_read_regular_refuses_a_fifo_without_blocking(tmp_path, bounded):
    path = tmp_path / "labels.json"
    os.mkfifo(path)
    with pytest.raises(fsutil.NotRegularFileError, match="is a FIFO, not a regular file"):
        fsutil.read_regular(str(path))


def test_read_regular_refuses_devices_sockets_and_symlinks(tmp_path, bounded):
    import socket
    with pytest.raises(fsutil.NotRegularFileError, match="character device"):
        fsutil.read_regular("/dev/zero", follow=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    with pytest.raises(fsutil.NotRegularFileError, match="socket"):
        fsutil.read_regular(str(tmp_path / "sock"))
    sock.close()
    (tmp_path / "real").write_text("x")
    os.symlink("real", tmp_path / "link")
    with pytest.raises(fsutil.NotRegularFileError, match="symbolic link"):
        fsutil.read_regular(str(tmp_path / "link"))  # the last component is never followed
    assert fsutil.read_regular(str(tmp_path / "link"), follow=True) == b"x"


def test_read_regular_directory_and_missing_keep_their_errors(tmp_path):
    with pytest.raises(IsADirectoryError):
        fsutil.read_regular(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fsutil.read_regular(str(tmp_path / "absent"))


def test_read_regular_limit(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 200000)
    with pytest.raises(OSError, match="larger than 100000 bytes"):
        fsutil.read_regular(str(path), limit=100000)


def test_write_new_file_keeps_bytes_that_are_not_utf8(tmp_path):
    """A --build-arg from argv reaches us surrogate-escaped: the file holds the original bytes."""
    path = tmp_path / "post.sh"
    fsutil.write_new_file(str(path), os.fsdecode(b"echo \xff\n"))
    assert path.read_bytes() == b"echo \xff\n"
    fsutil.atomic_write(str(path), os.fsdecode(b"\xfe"))
    assert path.read_bytes() == b"\xfe"
