"""runtime/cgroups.py: flags -> OCI LinuxResources -> the files to write, for fake host layouts."""

import pytest

from satchel.errors import ContainerError, UsageError
from satchel.runtime import cgroups

V1_MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
31 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_SELF = "4:memory:/slurm/uid_0/job_7/step_0\n1:cpu:/\n8:pids:/\n0::/\n"
V2_MOUNTINFO = "30 25 0:26 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
V2_SELF = "0::/user.slice/user-1001.slice/job\n"


class Flags:
    def __init__(self, **values):
        for dest in cgroups._FLAG_DESTS + ("apply_cgroups",):
            setattr(self, dest, None)
        for key, value in values.items():
            setattr(self, key, value)


def test_sizes():
    assert cgroups.parse_bytes("64M", "--memory") == 64 << 20
    assert cgroups.parse_bytes("64mib", "--memory") == 64 << 20
    assert cgroups.parse_bytes("1g", "--memory") == 1 << 30
    assert cgroups.parse_bytes("1048576", "--memory") == 1 << 20
    with pytest.raises(UsageError):
        cgroups.parse_bytes("lots", "--memory")


def test_v1_nested_in_callers_cgroup():
    res = cgroups.resources_from_options(Flags(memory="64M", cpus="0.5", pids_limit="20"))
    req = cgroups.request(res, 0, 42, V1_MOUNTINFO, V1_SELF, exists=lambda p: True)
    assert req.version == 1
    assert req.dirs == ("/sys/fs/cgroup/memory/slurm/uid_0/job_7/step_0/satchel-42",
                        "/sys/fs/cgroup/cpu/satchel-42", "/sys/fs/cgroup/pids/satchel-42")
    writes = dict(req.writes)
    assert writes[req.dirs[0] + "/memory.limit_in_bytes"] == str(64 << 20)
    assert writes[req.dirs[1] + "/cpu.cfs_quota_us"] == "50000"
    assert writes[req.dirs[2] + "/pids.max"] == "20"
    assert req.procs == tuple(d + "/cgroup.procs" for d in req.dirs)


def test_oci_cgroups_path():
    """OCI linux.cgroupsPath: absolute from each hierarchy's root, relative below the
    caller's cgroup (v2: every level made hands the controllers on); `..` refused."""
    res = {"memory": {"limit": 1 << 26}, "pids": {"limit": 9}}
    absolute = cgroups.request(res, 0, 42, V1_MOUNTINFO, V1_SELF, path="/default/c1")
    assert absolute.dirs == ("/sys/fs/cgroup/memory/default/c1", "/sys/fs/cgroup/pids/default/c1")
    relative = cgroups.request(res, 0, 42, V1_MOUNTINFO, V1_SELF, path="a/b")
    assert relative.dirs == ("/sys/fs/cgroup/memory/slurm/uid_0/job_7/step_0/a/b",
                             "/sys/fs/cgroup/pids/a/b")
    v2 = cgroups.request(res, 0, 7, V2_MOUNTINFO, V2_SELF, path="a/b")
    base = "/sys/fs/cgroup/user.slice/user-1001.slice/job"
    assert v2.dirs == (base + "/a/b",)
    assert [w[0] for w in v2.writes[:2]] == [base + "/cgroup.subtree_control",
                                              base + "/a/cgroup.subtree_control"]
    for bad in ("/a/../../etc", "..", "/"):
        with pytest.raises(ContainerError, match="cgroupsPath"):
            cgroups.request(res, 0, 42, V1_MOUNTINFO, V1_SELF, path=bad)


def test_v1_rootless_refused():
    res = cgroups.resources_from_options(Flags(memory="64M"))
    with pytest.raises(ContainerError, match="need root or cgroup v2"):
        cgroups.request(res, 1001, 42, V1_MOUNTINFO, V1_SELF)


def test_v2_delegated_and_not():
    res = cgroups.resources_from_options(Flags(memory="64M", cpu_shares="1024"))
    req = cgroups.request(res, 1001, 7, V2_MOUNTINFO, V2_SELF, writable=lambda p: True)
    base = "/sys/fs/cgroup/user.slice/user-1001.slice/job"
    assert req.version == 2 and req.dirs == (base + "/satchel-7",)
    writes = dict(req.writes)
    assert writes[base + "/cgroup.subtree_control"] == "+memory +cpu"
    assert writes[base + "/satchel-7/memory.max"] == str(64 << 20)
    assert writes[base + "/satchel-7/cpu.weight"] == str(1 + (1022 * 9999) // 262142)
    with pytest.raises(ContainerError, match="not delegated"):
        cgroups.request(res, 1001, 7, V2_MOUNTINFO, V2_SELF, writable=lambda p: False)


def test_bad_values_and_toml(tmp_path):
    with pytest.raises(UsageError, match="--cpus"):
        cgroups.resources_from_options(Flags(cpus="half"))
    with pytest.raises(UsageError, match="--pids-limit"):
        cgroups.resources_from_options(Flags(pids_limit="many"))
    toml = tmp_path / "c.toml"
    toml.write_text("[cpu]\nshares = 512\n[devices]\nx = 1\n")
    with pytest.raises(UsageError, match=r"unsupported section \[devices\]"):
        cgroups.resources_from_options(Flags(apply_cgroups=str(toml)))
    toml.write_text("[cpu]\nshares = 512\nquota = 20000\nperiod = 100000\n")
    res = cgroups.resources_from_options(Flags(apply_cgroups=str(toml)))
    assert res == {"cpu": {"shares": 512, "quota": 20000, "period": 100000}}


DEVICES_MOUNTINFO = V1_MOUNTINFO + \
    "34 25 0:30 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices\n"


def test_v1_device_rules_in_order():
    """OCI device rules become devices.deny/devices.allow lines, written in the spec's order
    (deny all first, as containerd's and `runc spec`'s rules begin)."""
    res = {"devices": [{"allow": False, "access": "rwm"},
                       {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                       {"allow": True, "type": "b", "major": -1, "access": "m"},
                       {"allow": True, "type": "c", "major": 136, "minor": None,
                        "access": "rw"}]}
    req = cgroups.request(res, 0, 42, DEVICES_MOUNTINFO, "5:devices:/\n", exists=lambda p: True)
    assert req.dirs == ("/sys/fs/cgroup/devices/satchel-42",)
    assert [(path.rsplit("/", 1)[1], line) for path, line in req.writes] == [
        ("devices.deny", "a"), ("devices.allow", "c 1:3 rwm"), ("devices.allow", "b *:* m"),
        ("devices.allow", "c 136:* rw")]


@pytest.mark.parametrize("rule", [{"allow": True, "type": "x", "access": "r"},
                                  {"allow": True, "type": "c", "access": "rx"},
                                  {"allow": True, "type": "c", "major": "1", "access": "r"}])
def test_bad_device_rules_are_refused(rule):
    with pytest.raises(ContainerError, match="device rule"):
        cgroups.request({"devices": [rule]}, 0, 42, DEVICES_MOUNTINFO, "5:devices:/\n")


def test_device_rules_without_a_v1_devices_hierarchy_are_said_not_enforced(capsys):
    """cgroup v2 filters devices with a BPF program satchel does not load: the other limits
    apply, and a warning says the device rules do not."""
    res = {"devices": [{"allow": False, "access": "rwm"}], "pids": {"limit": 5}}
    req = cgroups.request(res, 0, 7, V2_MOUNTINFO, "0::/\n", writable=lambda p: True)
    assert req.version == 2 and not any("devices" in path for path, _ in req.writes)
    assert "device rules (linux.resources.devices) are not enforced" in capsys.readouterr().err
    assert cgroups.request({"devices": res["devices"]}, 0, 7, V2_MOUNTINFO, "0::/\n") is None
