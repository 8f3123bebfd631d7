"""Attacks on root's `instance list|stop -u USER`: each test names the attack and the promise.

The attacker is the real non-root user `satchel-test`: it writes what it likes under its own
home (instance records, symlinks, FIFOs), then root runs `satchel instance list|stop -u
satchel-test`, as an administrator cleaning up a user's services would. The promises
(docs/SECURITY.md): root signals only processes that live in a user namespace the user
created (checked through /proc/PID and a pidfd, never the record's word), and only those of
the user's processes in the instance's mount namespace; root never follows the user's
symlinks, never blocks on the user's FIFOs and unlinks nothing outside the user's state
directory; every attempt ends in bounded time with a FATAL line or a skip warning.

Root's satchel runs with its own node name (a UTS namespace) so the records it reads sit in
a directory of this test alone: `~/.satchel/instances/<node name>/satchel-test/`.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid

import pytest

from support.fixtures_runtime import alive, wait_until
from support.fixtures_users import SATCHEL

TIMEOUT = 30  # every root command must answer well within this


def root_satchel(host: str, *args: str) -> subprocess.CompletedProcess:
    """Run satchel as root under node name `host` (its own UTS namespace)."""
    argv = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', host,
            SATCHEL, *args]
    env = {"HOME": "/root", "USER": "root", "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
           "LANG": "C.UTF-8"}
    return subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True,
                          timeout=TIMEOUT)


def as_user(user, script: str, *args: str, text_in: str | None = None) -> None:
    """Run a shell script as the attacker (the files it makes are truly the user's)."""
    subprocess.run(user.argv(["sh", "-ec", script, "sh", *args]), env=user.env(),
                   cwd=user.home, input=text_in, text=True, check=True, timeout=TIMEOUT)


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[19])


def mount_ns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


@pytest.fixture
def host(test_user):
    """A node name of this test alone; its record directory is removed afterwards."""
    name = "atk-" + uuid.uuid4().hex[:10]
    yield name
    shutil.rmtree(os.path.join(test_user.home, ".satchel", "instances", name),
                  ignore_errors=True)


def state_dir(user, host: str) -> str:
    return os.path.join(user.home, ".satchel", "instances", host, user.name)


def forge(user, host: str, name: str, pid: int) -> None:
    """The attacker writes a record for instance `name` that names process `pid`."""
    record = {"name": name, "pid": pid, "starttime": start_time(pid), "status": "running",
              "image": "/tmp/x.sif", "user": user.name, "uid": user.uid, "host": host,
              "namespaces": ["user", "mount"], "log_out": "", "log_err": "", "ip": ""}
    as_user(user, 'mkdir -p "$1" && cat > "$1/$2.json"', state_dir(user, host), name,
            text_in=json.dumps(record))


@pytest.fixture
def processes():
    """Start processes for a test; every one still running at the end is killed."""
    started = []

    def spawn(argv, **kw):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, **kw)
        started.append(proc)
        return proc
    yield spawn
    for proc in started:
        for child in _children(proc.pid):  # the neighbour sleep: never a child of ours
            os.kill(child, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def root_process_in_own_mount_ns(spawn) -> tuple[int, int]:
    """A root `sleep` in a mount namespace of its own, with a second root sleep beside it:
    (pid, pid of the second). Both must outlive every command below."""
    proc = spawn(["unshare", "-m", "--propagation", "private", "--", "sh", "-c",
                  "sleep 1001 & exec sleep 1000"])
    assert wait_until(lambda: _comm(proc.pid) == "sleep" and _children(proc.pid), 10)
    return proc.pid, _children(proc.pid)[0]


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def test_forged_record_cannot_make_root_signal_a_root_process(test_user, host, processes):
    """Attack: the user forges a record naming a root process (pid and start time right) in
    another mount namespace, then root runs `instance stop -u USER` (TERM, KILL after -t, -F,
    --all) and `instance list -u USER`. Promise: root checks the process lives in a user
    namespace of the user before any signal; the root process and its neighbour in its mount
    namespace get none; the commands answer at once, with a FATAL line or a skip warning."""
    target, neighbour = root_process_in_own_mount_ns(processes)
    assert mount_ns(target) != mount_ns(os.getpid())
    forge(test_user, host, "web", target)
    user = test_user.name

    r = root_satchel(host, "instance", "list", "--json", "-u", user)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"instances": []}
    assert "WARNING" in r.stderr and "not touched" in r.stderr
    for args in (["-t", "1", "web"], ["-F", "web"], ["-s", "KILL", "web"]):
        r = root_satchel(host, "instance", "stop", "-u", user, *args)
        assert r.returncode == 255 and r.stderr.count("FATAL:   ") == 1, r.stderr
        assert "no instance found with name web" in r.stderr
        assert "Traceback" not in r.stderr
    r = root_satchel(host, "instance", "stop", "-u", user, "--all", "-t", "1")
    assert r.returncode == 0 and "not touched" in r.stderr, r.stderr
    assert alive(target) and alive(neighbour), "root signalled a process the user named"
    assert start_time(target) == json.load(
        open(os.path.join(state_dir(test_user, host), "web.json")))["starttime"]


def test_root_kills_only_the_users_processes_in_the_namespace(test_user, host, processes):
    """Attack: the user's own `unshare -Urm sleep` stands in for an instance (a real user
    namespace of the user), and a root process sits in its mount namespace; root runs
    `instance stop -u USER`. Promise: the user's process is stopped (it is theirs), but the
    "kill what is left in the instance's mount namespace" step touches only processes the user
    could signal itself: the root process lives on."""
    users = processes(test_user.argv(["unshare", "-U", "-r", "-m", "--", "sleep", "1003"]),
                      env=test_user.env(), cwd=test_user.home)
    assert wait_until(lambda: _comm(users.pid) == "sleep"
                      and mount_ns(users.pid) != mount_ns(os.getpid()), 10)
    roots = processes(["nsenter", "-t", str(users.pid), "-m", "--", "sleep", "1004"])
    assert wait_until(lambda: _comm(roots.pid) == "sleep"
                      and mount_ns(roots.pid) == mount_ns(users.pid), 10)
    forge(test_user, host, "svc", users.pid)

    r = root_satchel(host, "instance", "stop", "-u", test_user.name, "-t", "2", "svc")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: not alive(users.pid), 5), "the user's process was not stopped"
    assert alive(roots.pid), "root killed a root process in the user's mount namespace"


@pytest.fixture
def root_only_dir():
    path = tempfile.mkdtemp(prefix="satchel-rootonly-", dir="/tmp")  # 0700, root's
    with open(os.path.join(path, "config.json"), "w") as fh:
        fh.write('{"name": "config", "pid": 1, "status": "running"}\n')
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("link", ["user", "host"])
def test_symlinked_state_directory_is_not_followed(test_user, host, root_only_dir, link):
    """Attack: the user replaces its state directory (or the node's directory above it) with a
    symlink to a root-only directory holding `config.json`; root runs `instance list -u USER`
    and `instance stop -u USER --all|config`. Promise: root does not follow the symlink (one
    FATAL line naming it) and the root-only file is neither read nor removed."""
    top = os.path.join(test_user.home, ".satchel", "instances")
    as_user(test_user, 'mkdir -p "$1"', top)
    if link == "user":
        as_user(test_user, 'mkdir -p "$1" && ln -s "$2" "$1/$3"', os.path.join(top, host),
                root_only_dir, test_user.name)
        target = root_only_dir
    else:
        os.mkdir(os.path.join(root_only_dir, test_user.name))
        os.rename(os.path.join(root_only_dir, "config.json"),
                  os.path.join(root_only_dir, test_user.name, "config.json"))
        as_user(test_user, 'ln -s "$1" "$2"', root_only_dir, os.path.join(top, host))
        target = os.path.join(root_only_dir, test_user.name)
    for args in (["list", "-u", test_user.name], ["stop", "-u", test_user.name, "--all"],
                 ["stop", "-u", test_user.name, "config"]):
        r = root_satchel(host, "instance", *args)
        assert r.returncode == 255, (args, r.stderr)
        assert r.stderr.startswith("FATAL:   ") and "not followed" in r.stderr, r.stderr
        assert os.path.exists(os.path.join(target, "config.json")), f"{args} removed it"


def test_fifo_or_symlink_as_record_does_not_hang_or_mislead_root(test_user, host, processes,
                                                                  root_only_dir):
    """Attack: in its real state directory the user puts a FIFO named `X.json` (a reader
    blocks on it forever) and a symlink `Y.json` to a root-only record that names a live root
    process; root runs `instance list -u USER` and `instance stop -u USER`. Promise: records are
    opened with O_NOFOLLOW|O_NONBLOCK and used only if regular files of the user: both are
    skipped with a warning, nothing hangs, nothing is signalled, nothing is removed."""
    target, _ = root_process_in_own_mount_ns(processes)
    record = {"name": "Y", "pid": target, "starttime": start_time(target), "status": "running",
              "namespaces": ["mount"]}
    secret = os.path.join(root_only_dir, "y.json")
    with open(secret, "w") as fh:
        json.dump(record, fh)
    os.chmod(root_only_dir, 0o755)  # the user may name it; only root may write it
    as_user(test_user, 'mkdir -p "$1" && mkfifo "$1/X.json" && ln -s "$2" "$1/Y.json"',
            state_dir(test_user, host), secret)

    r = root_satchel(host, "instance", "list", "-u", test_user.name)
    assert r.returncode == 0, r.stderr
    assert "X.json: not a regular file" in r.stderr
    assert "Y.json" in r.stderr and "WARNING" in r.stderr
    for name in ("X", "Y"):
        r = root_satchel(host, "instance", "stop", "-u", test_user.name, "-t", "1", name)
        assert r.returncode == 255 and f"no instance found with name {name}" in r.stderr
    assert alive(target)
    assert os.path.exists(secret)
    assert sorted(os.listdir(state_dir(test_user, host))) == ["X.json", "Y.json"]
