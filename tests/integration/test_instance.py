"""Instances without a daemon, as a non-root user and as root: start, list, join, stop, leftovers.

Every test runs under two identities (`who`, like the runtime tests): the real non-root user
`satchel-inst` (user namespace + FUSE; a user only these tests use, since `stop --all` stops
every instance of its user) and root (loop device). "Nothing left" is checked the way the runtime tests
check it: no squashfuse server, mount or loop device of the image, and the instance's
processes gone.
"""

import glob
import json
import os
import pwd
import signal
import subprocess
import time

import pytest

from support.fixtures_clients import INSTANCE_USER
from support.fixtures_runtime import (Who, alive, assert_nothing_left, busybox_tree,
                                      make_sif, wait_until)

START_SCRIPT = """#!/bin/sh
echo "startscript args: $*"
echo "startscript stderr" >&2
trap 'echo "got TERM"; exit 0' TERM
while :; do sleep 1; done
"""
ORPHANS_SCRIPT = """#!/bin/sh
# three double-forked children: their parent exits at once, so they are orphans
for i in 1 2 3; do (sleep 999 &); done
exec sleep 1000
"""
RUN_SCRIPT = """#!/bin/sh
echo "runscript args: $*"
exec sleep 1000
"""


@pytest.fixture(scope="module")
def inst_image(image_dir):
    """busybox with a %startscript that logs its arguments and waits, and a runscript."""
    base = os.path.join(image_dir, "instance")
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    tree = os.path.join(base, "tree")
    busybox_tree(tree, applets=("sh", "id", "cat", "echo", "ls", "true", "sleep", "test",
                                "touch", "ps", "hostname", "ip", "kill", "rm"))
    for name, text in (("startscript", START_SCRIPT), ("runscript", RUN_SCRIPT)):
        path = os.path.join(tree, ".singularity.d", name)
        with open(path, "w") as fh:
            fh.write(text)
        os.chmod(path, 0o755)
    image = os.path.join(base, "inst.sif")
    make_sif(tree, image)
    return image


@pytest.fixture(scope="module")
def orphans_image(inst_image):
    base = os.path.dirname(inst_image)
    tree = os.path.join(base, "tree")
    path = os.path.join(tree, ".singularity.d", "startscript")
    with open(path, "w") as fh:
        fh.write(ORPHANS_SCRIPT)
    image = os.path.join(base, "orphans.sif")
    make_sif(tree, image)
    return image


def children_states(parent: int) -> list[tuple[int, str, str]]:
    """(pid, state, comm) of every process whose parent is `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[1]) == parent:
            found.append((int(entry), fields[0], comm))
    return found


@pytest.fixture(params=["user", "root"])
def who(request):
    if os.geteuid() != 0:
        pytest.skip("the instance tests create a user and compare with root: run as root")
    if request.param == "user":
        identity = Who("user", request.getfixturevalue("instance_user"))
    else:
        identity = Who("root")
    yield identity
    identity.cleanup()


@pytest.fixture(scope="module", autouse=True)
def remove_own_instance_logs():
    """An instance's logs outlive it (as with Apptainer), and every name here is new: without
    this, each run of the module leaves ~60 more log files (and their ~/.singularity twins) in
    the homes of root and satchel-inst. Only this process's names (see _name) are removed."""
    yield
    marker = f"-{os.getpid()}-"
    homes = ["/root"]
    try:
        homes.append(pwd.getpwnam(INSTANCE_USER).pw_dir)
    except KeyError:
        pass
    for home in homes:
        for flavour in (".apptainer", ".singularity"):
            pattern = os.path.join(home, flavour, "instances", "logs", "*", "*", f"*{marker}*")
            for path in glob.glob(pattern):
                os.unlink(path)


def _name(tag: str) -> str:
    return f"{tag}-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"


def start(who, image, name, *options, args=()):
    result = who.run(["instance", "start", *options, image, name, *args], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "instance started successfully" in result.stderr
    return result


def listing(who, *extra) -> list:
    result = who.run(["instance", "list", "--json", *extra])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["instances"]


def holders(path: str) -> list[int]:
    """Pids with `path` open (a FUSE server serving it, whatever its name)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == path:
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return found


def nothing_left(image: str) -> None:
    assert_nothing_left(image, timeout=5)
    assert wait_until(lambda: not holders(image), 5), f"{image} still open: {holders(image)}"


@pytest.fixture
def stop_all(who):
    yield
    who.run(["instance", "stop", "--all", "-F"])


def test_two_instances_listed_joined_separate_then_stopped(who, inst_image, stop_all):
    a, b = _name("a"), _name("b")
    start(who, inst_image, a, "--contain", args=["x", "y z"])
    start(who, inst_image, b, "--contain")
    entries = {e["instance"]: e for e in listing(who)}
    assert set(entries) >= {a, b}
    for name in (a, b):
        entry = entries[name]
        assert set(entry) == {"instance", "pid", "img", "ip", "logErrPath", "logOutPath"}
        assert entry["img"] == inst_image and alive(entry["pid"])
        assert entry["logOutPath"] == os.path.join(
            who.home, ".apptainer", "instances", "logs", os.uname().nodename,
            who.user.name if who.rootless else "root", name + ".out")
    # each instance has its own contained /tmp: a file made in one is not in the other
    r = who.run(["exec", f"instance://{a}", "sh", "-c", "echo only-a > /tmp/mark; id -u"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(who.uid)
    assert who.run(["exec", f"instance://{b}", "test", "-e", "/tmp/mark"]).returncode == 1
    r = who.run(["exec", f"instance://{a}", "cat", "/tmp/mark"])
    assert r.stdout == "only-a\n"
    assert not os.path.exists("/tmp/mark")
    # the startscript ran with its arguments; its output is in the logs (and the twins)
    assert wait_until(lambda: "startscript args: x y z" in open(entries[a]["logOutPath"]).read(),
                      5)
    assert "startscript stderr" in open(entries[a]["logErrPath"]).read()
    twin = entries[a]["logOutPath"].replace("/.apptainer/", "/.singularity/")
    assert os.path.realpath(twin) == entries[a]["logOutPath"]

    if who.rootless:  # the check below sees the FUSE server while the instances run
        assert holders(inst_image)
    r = who.run(["instance", "stop", a])
    assert r.returncode == 0, r.stderr
    assert f"Stopping {a} instance of {inst_image} (PID={entries[a]['pid']})" in r.stderr
    assert not alive(entries[a]["pid"])
    assert "got TERM" in open(entries[a]["logOutPath"]).read()  # SIGTERM reached the payload
    assert [e["instance"] for e in listing(who)] == [b]
    r = who.run(["instance", "stop", "--all"])
    assert r.returncode == 0, r.stderr
    assert listing(who) == []
    assert not alive(entries[b]["pid"])
    nothing_left(inst_image)


def test_list_json_empty_and_table(who, inst_image, stop_all):
    assert who.run(["instance", "list", "--json"]).stdout == '{\n    "instances": []\n}\n'
    name = _name("tbl")
    start(who, inst_image, name)
    table = who.run(["instance", "list"]).stdout.splitlines()
    assert table[0].split() == ["INSTANCE", "NAME", "PID", "IP", "IMAGE"]
    assert table[1].split()[0] == name and table[1].split()[-1] == inst_image
    logs = who.run(["instance", "list", "--logs", name]).stdout.splitlines()
    assert logs[1].endswith(name + ".err") and logs[2].strip().endswith(name + ".out")
    assert who.run(["instance", "list", "--json", "nomatch*"]).stdout.count(name) == 0


def test_instance_run_runs_the_runscript(who, inst_image, stop_all):
    name = _name("run")
    result = who.run(["instance", "run", inst_image, name, "p", "q"])
    assert result.returncode == 0, result.stderr
    entry = next(e for e in listing(who) if e["instance"] == name)
    assert wait_until(lambda: "runscript args: p q" in open(entry["logOutPath"]).read(), 5)
    assert who.run(["instance", "stop", name]).returncode == 0


def test_pid_namespace_net_none_and_hostname(who, inst_image, stop_all):
    name = _name("iso")
    start(who, inst_image, name, "--pid", "--net", "--network", "none", "--hostname", "inst-host")
    r = who.run(["exec", f"instance://{name}", "sh", "-c",
                 "hostname; ip -o link | cut -d: -f2; ps -o pid,args | sed -n 2p"])
    assert r.returncode == 0, r.stderr
    host, links, first = r.stdout.splitlines()[0], r.stdout.splitlines()[1:-1], \
        r.stdout.splitlines()[-1]
    assert host == "inst-host"
    assert [link.strip() for link in links] == ["lo"]
    assert first.split()[0] == "1"   # the instance's init is pid 1 of its namespace
    # exit status of a joined command passes through
    assert who.run(["exec", f"instance://{name}", "sh", "-c", "exit 7"]).returncode == 7
    entry = next(e for e in listing(who) if e["instance"] == name)
    assert who.run(["instance", "stop", "-t", "5", name]).returncode == 0
    assert not alive(entry["pid"])
    nothing_left(inst_image)


def test_stale_entry_removed_on_next_list(who, inst_image, stop_all):
    name = _name("stale")
    start(who, inst_image, name, "--pid")
    entry = next(e for e in listing(who) if e["instance"] == name)
    os.kill(entry["pid"], signal.SIGKILL)   # the instance dies behind satchel's back
    assert wait_until(lambda: not alive(entry["pid"]), 5)
    assert name not in [e["instance"] for e in listing(who)]
    record = os.path.join(who.home, ".satchel", "instances", os.uname().nodename,
                          who.user.name if who.rootless else "root", name + ".json")
    assert not os.path.exists(record)
    nothing_left(inst_image)
    r = who.run(["exec", f"instance://{name}", "true"])
    assert r.returncode == 255 and f"no instance found with name {name}" in r.stderr


def test_stop_signal_timeout_and_force(who, inst_image, stop_all):
    slow = _name("slow")
    start(who, inst_image, slow)
    entry = next(e for e in listing(who) if e["instance"] == slow)
    # SIGUSR1 is forwarded to the payload (which dies of it) but does not stop the instance:
    # after the timeout it is killed
    began = time.monotonic()
    r = who.run(["instance", "stop", "-s", "USR1", "-t", "1", slow])
    assert r.returncode == 0, r.stderr
    assert 0.9 <= time.monotonic() - began < 8
    assert not alive(entry["pid"])
    fast = _name("fast")
    start(who, inst_image, fast)
    entry = next(e for e in listing(who) if e["instance"] == fast)
    r = who.run(["instance", "stop", "-F", fast])
    assert r.returncode == 0 and not alive(entry["pid"])
    assert "got TERM" not in open(entry["logOutPath"]).read()
    nothing_left(inst_image)


def test_legacy_spellings(who, inst_image, stop_all):
    name = _name("legacy")
    r = who.run(["instance.start", inst_image, name])
    assert r.returncode == 0, r.stderr
    assert name in who.run(["instance.list"]).stdout
    assert who.run(["instance.stop", "--all"]).returncode == 0
    assert listing(who) == []


def test_root_lists_a_users_instances(instance_user, inst_image):
    test_user = instance_user
    user, root = Who("user", test_user), Who("root")
    name = _name("other")
    try:
        start(user, inst_image, name)
        assert name in [e["instance"] for e in listing(root, "-u", test_user.name)]
        assert name not in [e["instance"] for e in listing(root)]
        r = user.run(["instance", "list", "-u", "root"])
        assert r.returncode == 255 and "only root" in r.stderr
        assert root.run(["instance", "stop", "-u", test_user.name, name]).returncode == 0
        assert listing(user) == []
    finally:
        user.run(["instance", "stop", "--all", "-F"])


@pytest.mark.parametrize("args, message", [
    (["instance", "start", "IMAGE", "bad/name"], "is not a valid instance name"),
    (["instance", "start", "IMAGE", ".."], "is not a valid instance name"),
    (["instance", "start", "/nonexistent.sif", "x"], "not found"),
    (["instance", "start", "instance://x", "y"], "cannot be started from another instance"),
    (["instance", "start", "IMAGE"], "invalid args"),
    (["instance", "stop"], "needs an instance name"),
    (["instance", "stop", "--all", "x"], "not both"),
    (["instance", "stop", "no-such-instance"], "no instance found with name no-such-instance"),
    (["instance", "stop", "-s", "SIGNOPE", "x"], "invalid signal"),
    (["instance", "stop", "-t", "soon", "x"], "invalid --timeout"),
    (["instance", "frobnicate"], "unknown instance subcommand"),
    (["instance", "list", "-u", "no-such-user-xyz"], "unknown user"),
    (["exec", "instance://no-such-instance", "true"], "no instance found"),
    (["exec", "instance://../etc", "true"], "is not a valid instance name"),
    (["instance", "start", "--net", "IMAGE", "x"], "bridge"),
])
def test_bad_input_is_one_fatal_line(who, inst_image, args, message):
    args = [inst_image if a == "IMAGE" else a for a in args]
    r = who.run(args)
    assert r.returncode == 255, (r.stdout, r.stderr)
    assert r.stderr.startswith("FATAL:   ") and message in r.stderr
    assert "Traceback" not in r.stderr


def test_duplicate_name_refused_and_failed_start_leaves_nothing(who, inst_image, rt_images,
                                                                stop_all):
    name = _name("dup")
    start(who, inst_image, name)
    r = who.run(["instance", "start", inst_image, name])
    assert r.returncode == 255 and f"instance {name} already exists" in r.stderr
    # an image without /bin/sh: the container fails before its init; no record stays behind
    bad = _name("nosh")
    r = who.run(["instance", "start", rt_images.nosh, bad])
    assert r.returncode == 255
    assert r.stderr.startswith("FATAL:   ") and "No valid /bin/sh in container" in r.stderr
    assert bad not in [e["instance"] for e in listing(who)]
    nothing_left(rt_images.nosh)


def test_start_that_is_never_ready_is_killed_and_forgotten(who, inst_image, stop_all):
    # a start whose container is not up in time (here: an impossible deadline) must not leave
    # an unrecorded instance running
    name = _name("late")
    r = who.run(["instance", "start", inst_image, name],
                env={"SATCHEL_INSTANCE_READY_TIMEOUT": "0.001"})
    assert r.returncode == 255
    assert r.stderr.startswith("FATAL:   ") and "was not ready" in r.stderr
    assert name not in [e["instance"] for e in listing(who)]
    nothing_left(inst_image)


def _sleep_children(init: int) -> dict[int, str]:
    """pid -> argument of the live `sleep N` children of init."""
    found = {}
    for pid, state, comm in children_states(init):
        if comm != "sleep" or state == "Z":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                found[pid] = fh.read().split(b"\0")[1].decode()
        except (OSError, IndexError):
            continue
    return found


def test_init_adopts_and_reaps_orphans(who, orphans_image, stop_all):
    name = _name("orph")
    start(who, orphans_image, name)
    init = next(e for e in listing(who) if e["instance"] == name)["pid"]
    # the double-forked sleeps are reparented to the instance's init (child subreaper)...
    assert wait_until(lambda: sorted(_sleep_children(init).values()) ==
                      ["1000", "999", "999", "999"], 10), children_states(init)
    # ...and reaped by it when they die (killed here: no time window to race against): no
    # zombie stays, the payload goes on
    for pid, arg in _sleep_children(init).items():
        if arg == "999":
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: len(children_states(init)) == 1 and
                      all(st != "Z" for _, st, _ in children_states(init)) and
                      list(_sleep_children(init).values()) == ["1000"], 10), \
        children_states(init)
    assert who.run(["instance", "stop", name]).returncode == 0
    nothing_left(orphans_image)


def test_shell_and_test_join_too(who, inst_image, stop_all):
    name = _name("sh")
    start(who, inst_image, name, "--hostname", "joined-shell")
    r = who.run(["shell", f"instance://{name}"], input=b"hostname\nexit 3\n")
    assert r.returncode == 3 and r.stdout == "joined-shell\n", r.stderr
    r = who.run(["test", f"instance://{name}"])
    assert r.returncode == 0 and "No test script found" in r.stderr
    assert who.run(["instance", "stop", name]).returncode == 0
    nothing_left(inst_image)


def test_run_joins_too(who, busybox_sif, stop_all):
    """`run instance://NAME ARGS` runs the image's runscript inside the running instance."""
    name = _name("runj")
    start(who, busybox_sif, name, "--hostname", "joined-run")
    r = who.run(["run", f"instance://{name}", "one", "two words"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "runscript args: one two words\n"
    r = who.run(["exec", f"instance://{name}", "hostname"])
    assert r.stdout == "joined-run\n", r.stderr  # the instance's namespaces, not new ones
    assert who.run(["instance", "stop", name]).returncode == 0
    nothing_left(busybox_sif)


def test_pid_file(who, inst_image, stop_all):
    name = _name("pidf")
    pid_file = os.path.join(who.tmp(), "inst.pid")
    start(who, inst_image, name, "--pid-file", pid_file)
    entry = next(e for e in listing(who) if e["instance"] == name)
    with open(pid_file) as fh:
        assert int(fh.read()) == entry["pid"]
    assert who.run(["instance", "stop", name]).returncode == 0


def test_unwritable_pid_file_takes_the_instance_down(who, inst_image, stop_all):
    name = _name("badpid")
    r = who.run(["instance", "start", "--pid-file", "/proc/no/such/file", inst_image, name])
    assert r.returncode == 255 and "--pid-file" in r.stderr and "Traceback" not in r.stderr
    assert name not in [e["instance"] for e in listing(who)]
    nothing_left(inst_image)


def _mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def subprocess_as(who, argv: list[str]) -> None:
    """Run argv as the identity (files it makes are the identity's own)."""
    if who.rootless:
        argv = who.user.argv(argv)
    subprocess.run(argv, env=who.env(), cwd=who.home, check=True, timeout=30)


def test_logs_and_records_are_private(who, inst_image, stop_all):
    """A service's output is its user's: log files 0600 in 0700 directories, records too,
    and a log directory or log file left wider by an older satchel is narrowed when reused."""
    name = _name("priv")
    owner = who.user.name if who.rootless else "root"
    host = os.uname().nodename
    log_dir = os.path.join(who.home, ".apptainer", "instances", "logs", host, owner)
    old_log = os.path.join(log_dir, name + ".out")
    # what an older satchel left: a 0755 directory holding a 0644 log of this name
    subprocess_as(who, ["sh", "-c", f'umask 022; mkdir -p "{log_dir}" && chmod 755 "{log_dir}"'
                                    f' && echo old > "{old_log}"'])
    assert _mode(log_dir) == 0o755 and _mode(old_log) == 0o644
    start(who, inst_image, name)
    state_dir = os.path.join(who.home, ".satchel", "instances", host, owner)
    twin_dir = log_dir.replace("/.apptainer/", "/.singularity/")
    for path in (log_dir, state_dir, twin_dir):
        assert _mode(path) == 0o700, path
    for path in (old_log, os.path.join(log_dir, name + ".err"),
                 os.path.join(state_dir, name + ".json")):
        assert _mode(path) == 0o600, path
    assert open(old_log).read().startswith("old\n")  # appended to, not replaced
    assert who.run(["instance", "stop", name]).returncode == 0


def _launcher_child(launcher: int) -> bool:
    return any(st != "Z" for _, st, _ in children_states(launcher))


def test_launcher_killed_after_fork_leaves_nothing_unrecorded(who, inst_image, stop_all):
    """SIGKILL of `instance start` at any moment after its fork: either the instance is
    recorded (then `instance list` shows it and `instance stop` ends it) or nothing of it runs
    on. The kill comes at observable moments: the fork, the container's own mount namespace,
    the payload running (ready, perhaps not yet recorded), then after a few small delays."""
    from support.fixtures_runtime import processes_mentioning, wait_processes_gone

    moments = ["fork", "namespace", "payload"] + [0.005, 0.02, 0.05, 0.1, 0.2]
    for moment in moments:
        name = _name(f"kill{moments.index(moment)}")
        token = f"tok-{name}"  # on the launcher's and its forks' command lines, the payload's
        launcher = who.popen(["instance", "start", inst_image, name, token],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: _launcher_child(launcher.pid) or launcher.poll() is not None,
                          10)
        if moment == "namespace":
            wait_until(lambda: any(_other_mount_ns(pid) for pid, st, _ in
                                   children_states(launcher.pid) if st != "Z"), 10, 0.001)
        elif moment == "payload":
            wait_until(lambda: any("startscript" in line for line in
                                   processes_mentioning(token)), 10, 0.002)
        elif moment != "fork":
            time.sleep(moment)  # the kill moment under test, not a wait for something
        launcher.kill()
        launcher.wait()
        if name in [e["instance"] for e in listing(who)]:  # recorded in time: a real instance
            assert who.run(["instance", "stop", name]).returncode == 0
        left = wait_processes_gone(token, 10)
        assert not left, f"kill at {moment!r} left an unrecorded instance running: {left}"
        assert name not in [e["instance"] for e in listing(who)]
    nothing_left(inst_image)


def _other_mount_ns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return False


def test_killed_init_takes_joined_processes_and_server_with_it(who, inst_image, stop_all):
    """SIGKILL of an instance's init (the recorded process): the payload, a process that
    joined with `exec instance://` and (non-root) the FUSE server serving the image all end
    within a bounded time, and the next list forgets the instance. Instances always have a PID
    namespace (as Apptainer's): its init's death makes the kernel kill everything in it."""
    from support.fixtures_runtime import processes_mentioning, wait_processes_gone

    name = _name("killinit")
    start(who, inst_image, name)
    init = next(e for e in listing(who) if e["instance"] == name)["pid"]
    marker = str(40000 + os.getpid() % 20000)
    joined = who.popen(["exec", f"instance://{name}", "sleep", marker],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: processes_mentioning(f"sleep {marker}"), 10)
    if who.rootless:
        assert holders(inst_image)
    os.kill(init, signal.SIGKILL)
    assert joined.wait(timeout=10) != 0
    assert not wait_processes_gone(f"sleep {marker}", 10)
    assert not wait_processes_gone(name, 10)
    assert wait_until(lambda: not holders(inst_image), 10), holders(inst_image)
    assert name not in [e["instance"] for e in listing(who)]
    nothing_left(inst_image)
