"""`config fakeroot` (subordinate id files) and `config global` (satchel.conf), as root and as
the unprivileged user. The subid tests edit copies named by SATCHEL_SUBUID/SATCHEL_SUBGID:
other tests rely on satchel-test's range in the real /etc/subuid."""

import os
import shutil
import stat
import tempfile
import uuid

import pytest

from satchel.build.fakeroot import subid_range
from satchel.runtime.config import default_config_path
from support.assertions import fatal
from support.fixtures_users import run_satchel


@pytest.fixture
def subids(tmp_path, test_user):
    """Copies of /etc/subuid and /etc/subgid, group-owned by the test user, mode 0640."""
    paths = []
    for name in ("subuid", "subgid"):
        path = str(tmp_path / name)
        shutil.copyfile(f"/etc/{name}", path)
        with open(path, "a") as fh:
            fh.write("# a comment the admin wrote\nbroken line\n")
        os.chown(path, 0, test_user.gid)
        os.chmod(path, 0o640)
        paths.append(path)
    return {"SATCHEL_SUBUID": paths[0], "SATCHEL_SUBGID": paths[1]}


def lines(path):
    return open(path).read().splitlines()


def test_fakeroot_add_disable_enable_remove(subids, test_user):
    """Apptainer's semantics: --add gives the highest free 65536-id range (UID:START:65536)
    in both files; --disable puts '!' before the entry, so the build's fakeroot (like
    newuidmap) no longer finds it; --enable takes it off; --remove deletes it."""
    uid_file, gid_file = subids["SATCHEL_SUBUID"], subids["SATCHEL_SUBGID"]
    before = lines(uid_file)
    inode = os.stat(uid_file).st_ino
    result = run_satchel(["config", "fakeroot", "--add", "nobody"], env=subids)
    assert result.returncode == 0, result.stderr
    nobody = 65534
    for path in (uid_file, gid_file):
        assert lines(path)[:len(before)] == before  # the rest kept, comments included
        assert lines(path)[-1] == f"{nobody}:{4294967296 - 131072}:65536"
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, test_user.gid)
        assert [n for n in os.listdir(os.path.dirname(path)) if ".tmp" in n] == []
    assert os.stat(uid_file).st_ino != inode  # replaced by rename, not rewritten in place
    assert subid_range(uid_file, "nobody", nobody) == (4294967296 - 131072, 65536)
    # a second user gets the next range down; adding again changes nothing
    assert run_satchel(["config", "fakeroot", "-a", "daemon"], env=subids).returncode == 0
    assert run_satchel(["config", "fakeroot", "-a", "nobody"], env=subids).returncode == 0
    assert lines(uid_file)[-1] == f"1:{4294967296 - 131072 - 65536}:65536"
    assert sum(l.startswith(f"{nobody}:") for l in lines(uid_file)) == 1

    name = test_user.name
    assert run_satchel(["config", "fakeroot", "--disable", name], env=subids).returncode == 0
    for path in (uid_file, gid_file):
        assert any(l.startswith(f"!{name}:") for l in lines(path))
        assert subid_range(path, name, test_user.uid) is None
    assert run_satchel(["config", "fakeroot", "--enable", name], env=subids).returncode == 0
    for path in (uid_file, gid_file):
        assert subid_range(path, name, test_user.uid) is not None
        assert not any(l.startswith("!") for l in lines(path))
    assert run_satchel(["config", "fakeroot", "--remove", "nobody"], env=subids).returncode == 0
    assert not any(l.startswith(f"{nobody}:") for l in lines(uid_file) + lines(gid_file))


def test_fakeroot_refusals(subids, test_user):
    uid_file = subids["SATCHEL_SUBUID"]
    before = open(uid_file).read()
    fatal(run_satchel(["config", "fakeroot", "--add", "nobody"], user=test_user, env=subids),
          "only root")
    fatal(run_satchel(["config", "fakeroot", "--remove", "daemon"], env=subids),
          "no mapping entry for daemon")
    fatal(run_satchel(["config", "fakeroot", "--add", "no-such-user-x"], env=subids),
          "no user named")
    fatal(run_satchel(["config", "fakeroot", "--add", "--remove", "nobody"], env=subids),
          "exactly one")
    fatal(run_satchel(["config", "fakeroot", "nobody"], env=subids), "exactly one")
    assert open(uid_file).read() == before


@pytest.fixture
def conf():
    """A copy of the packaged satchel.conf that the unprivileged user can read."""
    directory = tempfile.mkdtemp(prefix="satchel-conf-", dir="/tmp")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "satchel.conf")
    shutil.copyfile(default_config_path(), path)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(directory)


def test_global_get_set_unset_reset_keep_the_file(conf):
    env = {"SATCHEL_CONFIG": conf}
    original = open(conf).read()

    def sat(*args):
        return run_satchel(["config", "global", *args], env=env)

    assert sat("--get", "mount home").stdout.strip() == "yes"
    assert sat("--set", "mount home", "no").returncode == 0
    assert sat("--get", "mount home").stdout.strip() == "no"
    assert sat("--set", "bind path", "/scratch,/etc/hosts").returncode == 0
    assert sat("-g", "bind path").stdout.strip() == "/etc/localtime,/etc/hosts,/scratch"
    changed = open(conf).read().splitlines()
    diff = [(a, b) for a, b in zip(original.splitlines(), changed) if a != b]
    assert diff[0] == ("mount home = yes", "mount home = no")  # in place, comments kept
    assert "bind path = /scratch" in changed
    dry = sat("--dry-run", "--set", "prefetch", "no")
    assert "prefetch = no" in dry.stdout and "prefetch = yes" in open(conf).read()
    assert sat("--unset", "bind path", "/scratch").returncode == 0
    assert sat("--reset", "mount home").returncode == 0
    assert open(conf).read() == original
    fatal(sat("--unset", "bind path", "/nothere"), "not found")
    fatal(sat("--get", "no such directive"), "not a satchel.conf directive")
    fatal(sat("--set", "mount home", "maybe"), "expected yes or no")
    fatal(sat("--set", "sessiondir max size", "big"), "expected a number")
    fatal(sat("--set", "mount home"), "value")
    assert open(conf).read() == original


def test_global_set_changes_what_the_runtime_does(conf, test_user, busybox_sif):
    """A directive set with config global is what the next launch reads: 'mount home = no'
    and the home directory is not bound."""
    marker = f"marker-{uuid.uuid4().hex}"
    path = os.path.join(test_user.home, marker)
    with open(path, "w") as fh:
        fh.write("x")
    try:
        probe = ["exec", busybox_sif, "ls", test_user.home]
        env = {"SATCHEL_CONFIG": conf}
        seen = run_satchel(probe, user=test_user, env=env, cwd="/")
        assert marker in seen.stdout, seen.stderr
        assert run_satchel(["config", "global", "--set", "mount home", "no"],
                           env=env).returncode == 0
        seen = run_satchel(probe, user=test_user, env=env, cwd="/")
        assert marker not in seen.stdout
    finally:
        os.unlink(path)


def test_global_system_file_needs_root(test_user, tmp_path):
    fatal(run_satchel(["config", "global", "--set", "mount home", "no"], user=test_user,
                      env={"SATCHEL_CONFIG": ""}), "needs root")
    own = os.path.join("/tmp", f"satchel-conf-{uuid.uuid4().hex}.conf")
    try:
        result = run_satchel(["config", "global", "--set", "prefetch", "no"], user=test_user,
                             env={"SATCHEL_CONFIG": own})
        assert result.returncode == 0, result.stderr
        assert os.stat(own).st_uid == test_user.uid and "prefetch = no" in open(own).read()
    finally:
        if os.path.exists(own):
            os.unlink(own)
