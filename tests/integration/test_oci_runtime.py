"""satchel-runc against runc on the same bundles: stdout, exit status, /proc/self/status
fields and mounts must match (root). Lifecycle commands, hooks, resources and the rootless
mode are checked on their own below. Each case is data: a change to `runc spec`'s config."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest

from support.fixtures_ocirt import default_config, make_bundle, run_bundle

STATUS = ("grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' "
          "/proc/self/status")


def script(text: str):
    return lambda c: c["process"].update(args=["sh", "-c", text])


def chain(*changes):
    def apply(config):
        for change in changes:
            change(config)
    return apply


CASES = {
    "defaults": script(f"echo hello; id; {STATUS}; hostname; exit 3"),
    "user_and_groups": chain(
        lambda c: c["process"].update(user={"uid": 1000, "gid": 1000,
                                            "additionalGids": [10, 20]}),
        script(f"id; {STATUS}")),
    "capability_sets": chain(
        lambda c: c["process"].update(capabilities={
            "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"],
            "effective": ["CAP_CHOWN", "CAP_KILL"], "permitted": ["CAP_CHOWN", "CAP_KILL"],
            "inheritable": ["CAP_KILL"], "ambient": []}),
        script(STATUS)),
    "no_new_privileges_off": chain(lambda c: c["process"].update(noNewPrivileges=False),
                                   script(STATUS)),
    "rlimits": chain(lambda c: c["process"].update(rlimits=[
        {"type": "RLIMIT_NOFILE", "hard": 100, "soft": 50},
        {"type": "RLIMIT_NPROC", "hard": 300, "soft": 200}]),
        script("grep -E 'open files|processes' /proc/self/limits")),
    "oom_score_adj": chain(lambda c: c["process"].update(oomScoreAdj=123),
                           script("cat /proc/self/oom_score_adj")),
    "env_and_cwd": chain(lambda c: c["process"].update(env=["PATH=/bin", "A=1 2", "B="],
                                                       cwd="/tmp"),
                         script("pwd; echo \"$A|$B\"; env | grep -c .")),
    "readonly_root": script("touch /x 2>/dev/null; echo $?; touch /dev/x; echo $?"),
    "hostname": chain(lambda c: c.update(hostname="oci-box"), script("hostname")),
    "mounts": chain(
        lambda c: c["mounts"].extend([
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "size=1m", "mode=1777"]},
            {"destination": "/host-etc", "type": "bind", "source": "/etc",
             "options": ["rbind", "ro", "nosuid"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["ro", "nosuid", "noexec", "nodev"]}]),
        script("for m in /proc /dev /dev/pts /dev/shm /dev/mqueue /sys /scratch /host-etc; do "
               "grep \" $m \" /proc/self/mounts | "
               "sed -E 's/^[^ ]+ ([^ ]+) ([^ ]+) (r[ow]).*/\\1 \\2 \\3/'; done; "
               "test -f /host-etc/hostname && echo bound; touch /host-etc/x 2>/dev/null; echo $?; "
               "touch /scratch/x && echo tmpfs-writable; ls -d /sys/fs/cgroup/memory")),
    "masked_and_readonly_paths": script(
        "wc -c < /proc/kcore; ls /proc/acpi 2>/dev/null | wc -l; "
        "echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null; echo $?"),
    "devices": chain(
        lambda c: c["linux"].update(devices=[
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640,
             "uid": 0, "gid": 0}]),
        script("stat -c '%n %F %t:%T %a %u' /dev/fuse /dev/null /dev/zero /dev/tty; "
               "readlink /dev/fd /dev/ptmx")),
    # the device cgroup (v1): the rules the container gets (the spec's, then the runtime's
    # defaults; a node linux.devices creates is not allowed by that alone), and what they mean:
    # mknod is allowed, using the host's disk or /dev/fuse is not. runc mounts the container's own cgroup at /sys/fs/cgroup/devices,
    # satchel-runc binds the host's hierarchy: the list is read where each has it.
    "device_rules": chain(
        lambda c: [c["process"]["capabilities"][k].append("CAP_MKNOD")
                   for k in ("bounding", "effective", "permitted")],
        lambda c: c["linux"]["resources"].update(devices=[{"allow": False, "access": "rwm"}]),
        lambda c: c["linux"].update(devices=[
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640,
             "uid": 0, "gid": 0}]),
        script("p=$(sed -n 's/^[0-9]*:devices://p' /proc/self/cgroup); "
               "sort /sys/fs/cgroup/devices$p/devices.list 2>/dev/null || "
               "sort /sys/fs/cgroup/devices/devices.list; "
               f"mknod /dev/disk b {os.major(os.stat('/').st_dev)} "
               f"{os.minor(os.stat('/').st_dev)}; echo mknod $?; "
               "head -c 1 /dev/disk >/dev/null 2>&1; echo read $?; "
               "head -c 1 /dev/zero | wc -c; echo x > /dev/fuse 2>/dev/null; echo fuse $?")),
    "namespace_by_path": chain(
        lambda c: c["linux"]["namespaces"].__setitem__(
            slice(None), [n if n["type"] != "network" else
                          {"type": "network", "path": f"/proc/{os.getpid()}/ns/net"}
                          for n in c["linux"]["namespaces"]]),
        script("readlink /proc/self/ns/net")),
    "exit_by_signal": script("sleep 30 & kill -9 $!; wait $!; echo $?; exit 9"),
    "seccomp": chain(
        lambda c: c["linux"].update(seccomp={
            "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 1}]}),
        script(f"mkdir /dev/newdir; echo $?; {STATUS}")),
    "program_on_path": lambda c: c["process"].update(args=["echo", "found", "on", "PATH"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_runc(name, oci_rootfs, satchel_runc, tmp_path):
    """Each spec feature gives under satchel-runc what it gives under runc (root)."""
    config = default_config()
    CASES[name](config)
    bundle = make_bundle(str(tmp_path), oci_rootfs, config)
    if name == "namespace_by_path":  # the host's network namespace, named the same way
        expected_ns = os.readlink("/proc/self/ns/net")
    reference = run_bundle("runc", bundle, str(tmp_path / "runc-root"))
    ours = run_bundle(satchel_runc, bundle, str(tmp_path / "satchel-root"))
    assert ours[:2] == reference[:2], f"runc: {reference}\nsatchel-runc: {ours}"
    assert reference[1].strip(), "the case printed nothing under runc"
    if name == "namespace_by_path":
        assert expected_ns in ours[1]
    assert os.listdir(tmp_path / "satchel-root") == []  # run removes its record


# cases where crun itself gives another answer than runc (satchel-runc follows runc): why
CRUN_DIFFERS = {
    "device_rules": "crun 1.8's default device rules are not runc's: c 5:1 (console) instead "
                    "of c 10:200 (tun)",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_crun(name, oci_rootfs, satchel_runc, crun_runtime, tmp_path):
    """The same bundles under crun (the C reference, run in a mount namespace without the
    cgroup2 mount it refuses on this hybrid host) give what satchel-runc gives."""
    if name in CRUN_DIFFERS:
        pytest.skip(f"crun differs from runc here: {CRUN_DIFFERS[name]}")
    config = default_config()
    CASES[name](config)
    bundle = make_bundle(str(tmp_path), oci_rootfs, config)
    reference = run_bundle(crun_runtime, bundle, str(tmp_path / "crun-root"))
    ours = run_bundle(satchel_runc, bundle, str(tmp_path / "satchel-root"))
    assert reference[1].strip(), f"the case printed nothing under crun: {reference}"
    assert ours[:2] == reference[:2], f"crun: {reference}\nsatchel-runc: {ours}"


def _leftovers(root: str) -> list[int]:
    """Live processes (not zombies) whose command line names this --root."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{name}/stat") as fh:
                state = fh.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if name.isdigit() and root.encode() in cmdline and state != "Z":
            found.append(int(name))
    return found


@pytest.mark.slow  # ~25 s: three busy loops on two cores
def test_create_on_a_busy_machine(oci_rootfs, satchel_runc, tmp_path):
    """With every core busy, create still learns the init's pid before the init's own
    messages (it used to fail "init exited during create" about one time in four here and
    leave the init blocked on exec.fifo for good): 25 create/start/delete cycles, no failure,
    no process left."""
    config = default_config()
    config["process"]["args"] = ["true"]
    bundle = make_bundle(str(tmp_path), oci_rootfs, config)
    root = str(tmp_path / "busy-root")
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(3)]
    failures = []
    try:
        for i in range(25):
            cid = f"busy{i}"
            created = _detached(satchel_runc, root, "create", "--bundle", bundle, cid)
            if created.returncode:
                failures.append(created.stderr.strip())
                continue
            _oci(satchel_runc, root, "start", cid)
            _oci(satchel_runc, root, "delete", "--force", cid)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        left = _leftovers(root)
        for pid in left:
            os.kill(pid, 9)
    assert failures == [] and left == []
    assert os.listdir(root) == []


def test_missing_program_fails_create(oci_rootfs, satchel_runc, tmp_path):
    """A program not in the root fails `create` in one line, leaves no record or process."""
    config = default_config()
    config["process"]["args"] = ["no-such-program"]
    bundle = make_bundle(str(tmp_path), oci_rootfs, config)
    root = str(tmp_path / "root")
    proc = subprocess.run([satchel_runc, "--root", root, "--log", str(tmp_path / "log.json"),
                           "--log-format", "json", "create", "c1"], cwd=bundle,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "no-such-program" in proc.stderr and "Traceback" not in proc.stderr
    entry = json.loads(open(tmp_path / "log.json").read().splitlines()[-1])
    assert entry["level"] == "error" and "no-such-program" in entry["msg"]
    assert os.listdir(root) == []


def _oci(runtime, root, *args, **kw):
    return subprocess.run([runtime, "--root", root] + list(args), capture_output=True,
                          text=True, timeout=30, **kw)


def _detached(runtime, root, *args):
    """create / run --detach: the container keeps the stdio it inherits, so none is a pipe
    this test waits on (runc behaves the same); stderr through a file."""
    with open(os.devnull, "w") as null, open(f"{root}.err", "w+") as err:
        proc = subprocess.run([runtime, "--root", root] + list(args), stdout=null,
                              stderr=err, stdin=subprocess.DEVNULL, timeout=30)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", err.read())


def _wait_status(runtime, root, cid, wanted, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(_oci(runtime, root, "state", cid).stdout)
        if state["status"] == wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


def test_lifecycle_create_start_state_kill_delete(oci_rootfs, satchel_runc, tmp_path):
    """create stops before the user's program (exec.fifo), start runs it, state/ps/list
    report it, kill signals it, delete removes record and cgroup, hooks see the state."""
    config = default_config()
    marker = tmp_path / "started"
    hooks_out = tmp_path / "hooks"
    config["process"]["args"] = ["sh", "-c", "echo started > /dev/shm/m; sleep 60"]
    config["linux"]["resources"] = {"memory": {"limit": 64 << 20}, "pids": {"limit": 50}}
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat >> {hooks_out}; echo >> {hooks_out}"]}
    config["hooks"] = {k: [hook] for k in ("prestart", "createRuntime", "poststart",
                                             "poststop")}
    bundle = make_bundle(str(tmp_path), oci_rootfs, config)
    root = str(tmp_path / "root")
    cid = "life-" + uuid.uuid4().hex[:6]
    created = _detached(satchel_runc, root, "create", "--bundle", bundle, "--pid-file",
                   str(tmp_path / "pid"), cid)
    assert created.returncode == 0, created.stderr
    pid = int(open(tmp_path / "pid").read())
    state = json.loads(_oci(satchel_runc, root, "state", cid).stdout)
    assert state["status"] == "created" and state["pid"] == pid
    assert not marker.exists()
    cgroup = open(f"/proc/{pid}/cgroup").read()
    memory_path = next(l.split(":")[2] for l in cgroup.splitlines() if ":memory:" in l)
    assert open(f"/sys/fs/cgroup/memory{memory_path}/memory.limit_in_bytes").read().strip() \
        == str(64 << 20)
    assert _oci(satchel_runc, root, "start", cid).returncode == 0
    assert _wait_status(satchel_runc, root, cid, "running")["status"] == "running"
    ps = _oci(satchel_runc, root, "ps", "--format", "json", cid)
    assert pid in json.loads(ps.stdout)
    assert cid in _oci(satchel_runc, root, "list", "-q").stdout.split()
    refused = _oci(satchel_runc, root, "delete", cid)
    assert refused.returncode != 0 and "not stopped" in refused.stderr
    assert _oci(satchel_runc, root, "kill", cid, "KILL").returncode == 0
    assert _wait_status(satchel_runc, root, cid, "stopped")["status"] == "stopped"
    assert _oci(satchel_runc, root, "delete", cid).returncode == 0
    assert not os.path.exists(f"/sys/fs/cgroup/memory{memory_path}")
    states = [json.loads(l) for l in open(hooks_out).read().split("\n") if l.strip()]
    assert [s["status"] for s in states] == ["created", "created", "running", "stopped"]
    assert all(s["id"] == cid and s["bundle"] == bundle for s in states)
    missing = _oci(satchel_runc, root, "state", cid)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_exec_joins_the_container(oci_rootfs, satchel_runc, tmp_path):
    """exec --process runs in the container's namespaces with the process's own user; its
    exit status comes back; --detach writes the pid file."""
    config = default_config()
    config["process"]["args"] = ["sleep", "60"]
    config["hostname"] = "inside"
    bundle = make_bundle(str(tmp_path), oci_rootfs, config)
    root = str(tmp_path / "root")
    cid = "ex-" + uuid.uuid4().hex[:6]
    started = _detached(satchel_runc, root, "run", "--detach", "--bundle", bundle, cid)
    assert started.returncode == 0, started.stderr
    try:
        process = dict(config["process"], args=["sh", "-c", "hostname; id -u; exit 7"],
                       user={"uid": 1234, "gid": 1234})
        (tmp_path / "p.json").write_text(json.dumps(process))
        out = _oci(satchel_runc, root, "exec", "--process", str(tmp_path / "p.json"), cid)
        assert (out.returncode, out.stdout) == (7, "inside\n1234\n"), out.stderr
        plain = _oci(satchel_runc, root, "exec", cid, "cat", "/proc/1/cmdline")
        assert plain.stdout.startswith("sleep"), plain.stderr
        detached = _detached(satchel_runc, root, "exec", "--detach", "--pid-file",
                        str(tmp_path / "xpid"), cid, "sleep", "30")
        assert detached.returncode == 0, detached.stderr
        xpid = int(open(tmp_path / "xpid").read())
        init = json.loads(_oci(satchel_runc, root, "state", cid).stdout)["pid"]
        assert os.readlink(f"/proc/{xpid}/ns/pid") == os.readlink(f"/proc/{init}/ns/pid")
        all_pids = json.loads(_oci(satchel_runc, root, "ps", "-f", "json", cid).stdout)
        assert {init, xpid} <= set(all_pids)
    finally:
        _oci(satchel_runc, root, "delete", "--force", cid)
    assert os.listdir(root) == []


def test_rootless_with_user_namespace(oci_rootfs, satchel_runc, user_tmp, test_user):
    """satchel-runc as the real user satchel-test runs `runc spec --rootless`'s bundle
    (uidMappings to its own uid), root inside the container, no privilege outside."""
    config = default_config(rootless=True)
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": test_user.uid, "size": 1}]
    config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": test_user.gid, "size": 1}]
    config["process"]["args"] = ["sh", "-c", f"id -u; cat /proc/self/uid_map; {STATUS}; "
                                 "touch /proc/sys/x 2>/dev/null; echo $?; hostname"]
    config["hostname"] = "rootless"
    bundle = make_bundle(user_tmp, oci_rootfs, config)
    root = os.path.join(user_tmp, "uroot")
    os.mkdir(root, 0o700)
    os.chown(root, test_user.uid, test_user.gid)
    code, out, err = run_bundle(satchel_runc, bundle, root, user=test_user)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "0" and lines[1].split() == ["0", str(test_user.uid), "1"]
    assert "NoNewPrivs:\t1" in out and lines[-1] == "rootless"
    reference = run_bundle("runc", bundle, os.path.join(user_tmp, "runc-root"), user=test_user)
    if reference[0] == 0:  # runc rootless works here too: the same output
        assert out == reference[1]


# linux.rootfsPropagation: the propagation field of / (and /proc) in the container's
# /proc/self/mountinfo, peer-group numbers dropped ("shared", "master", or none = private)
PROPAGATION_SCRIPT = ("for m in / /proc; do sed -nE "
                      "\"s|^[0-9]+ [0-9]+ [^ ]+ [^ ]+ $m [^ ]+ (.*)- .*|$m=\\1|p\" "
                      "/proc/self/mountinfo | sed -E 's/:[0-9]+//g; s/ +$//'; done")


def _in_shared_host(runtime: str, directory: str) -> str:
    """RUNTIME run in a mount namespace whose mounts are shared (this host's are private, where
    slave and private look alike): a script with RUNTIME's command line."""
    path = os.path.join(directory, "shared-" + os.path.basename(runtime))
    with open(path, "w") as fh:
        fh.write(f'#!/bin/sh\nexec unshare --mount --propagation shared {runtime} "$@"\n')
    os.chmod(path, 0o755)
    return path


def _propagation_config(value):
    config = default_config()
    if value is not None:
        config["linux"]["rootfsPropagation"] = value
    config["process"]["args"] = ["sh", "-c", PROPAGATION_SCRIPT]
    return config


@pytest.mark.parametrize("value", [None, "slave", "rslave", "private", "rprivate"])
def test_rootfs_propagation_matches_runc(value, oci_rootfs, satchel_runc, tmp_path):
    """rootfsPropagation unset, slave and private give the root mount runc gives (on a host
    whose mounts are shared: a slave of the host's peer group, or private)."""
    bundle = make_bundle(str(tmp_path), oci_rootfs, _propagation_config(value))
    reference = run_bundle(_in_shared_host("runc", str(tmp_path)), bundle,
                           str(tmp_path / "runc-root"))
    ours = run_bundle(_in_shared_host(satchel_runc, str(tmp_path)), bundle,
                      str(tmp_path / "satchel-root"))
    assert reference[0] == 0 and reference[1].startswith("/="), reference
    assert ours[:2] == reference[:2], f"runc: {reference}\nsatchel-runc: {ours}"
    expected = "/=master" if value in (None, "slave", "rslave") else "/="
    assert ours[1].splitlines()[0] == expected


# runc 1.1 (Debian 12) leaves a shared root private and fails unbindable (EINVAL binding its
# root on itself); crun, like runc 1.2, sets the value on / after pivot_root, as satchel does
@pytest.mark.parametrize("value,expected", [("shared", "/=shared\n/proc=\n"),
                                            ("rshared", "/=shared\n/proc=shared\n"),
                                            ("unbindable", "/=unbindable\n/proc=\n"),
                                            ("private", "/=\n/proc=\n")])
def test_rootfs_propagation_matches_crun(value, expected, oci_rootfs, satchel_runc,
                                         crun_runtime, tmp_path):
    """rootfsPropagation shared, rshared and unbindable: the container's root mount (and,
    recursive, those below it) has that propagation, as under crun."""
    bundle = make_bundle(str(tmp_path), oci_rootfs, _propagation_config(value))
    reference = run_bundle(crun_runtime, bundle, str(tmp_path / "crun-root"))
    ours = run_bundle(satchel_runc, bundle, str(tmp_path / "satchel-root"))
    assert reference[:2] == (0, expected), reference
    assert ours[:2] == reference[:2], f"crun: {reference}\nsatchel-runc: {ours}"


def test_refused_config_with_cgroup_fails_create_cleanly(oci_rootfs, satchel_runc, tmp_path):
    """create makes the cgroup while the setup process builds its plan: a config the plan
    refuses is still reported in one line (not as a cgroup error), and no record, process or
    cgroup is left."""
    config = default_config()
    path = "/satchel-refused-" + uuid.uuid4().hex[:6]
    config["linux"].update(cgroupsPath=path, resources={"pids": {"limit": 20}})
    config["mounts"].append({"destination": "/x", "type": "nfs", "source": "h:/x"})
    bundle = make_bundle(str(tmp_path), oci_rootfs, config)
    root = str(tmp_path / "root")
    created = _detached(satchel_runc, root, "create", "--bundle", bundle, "c1")
    assert created.returncode != 0
    assert "mount type 'nfs'" in created.stderr and "Traceback" not in created.stderr
    assert os.listdir(root) == [] and _leftovers(root) == []
    assert not os.path.exists(f"/sys/fs/cgroup/pids{path}")
