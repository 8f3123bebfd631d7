"""Parsing --fusemount specifications and compiling seccomp profiles (no container)."""

import json

import pytest

from satchel.errors import UsageError
from satchel.runtime import fusemount, seccomp

ENV = {"PATH": "/usr/bin:/bin"}


def test_host_forms():
    host, daemon = fusemount.parse(["host:squashfuse_ll -o ro /i.sqsh /mnt//data/",
                                    "host-daemon:squashfuse_ll /j.sqsh /b"], ENV)
    assert host.argv == ("/usr/bin/squashfuse_ll", "-o", "ro", "/i.sqsh", "/dev/fd/{fd}", "-f")
    assert (host.mountpoint, host.daemon) == ("/mnt/data", False)
    assert daemon.argv[-1] == "/dev/fd/{fd}" and daemon.daemon


@pytest.mark.parametrize("spec, message", [
    ("container:sshfs h:/ /x", "container: is not supported"),
    ("container-daemon:sshfs h:/ /x", "container-daemon: is not supported"),
    ("squashfuse_ll /i /x", "expected host:"), ("host:squashfuse_ll", "expected host:"),
    ("host:squashfuse_ll /i rel", "absolute"), ("host:squashfuse_ll /i /", "absolute"),
    ("host:not-a-program-here /i /x", "not found"),
])
def test_refusals(spec, message):
    with pytest.raises(UsageError, match=message):
        fusemount.parse([spec], ENV)


def test_same_mountpoint_twice():
    with pytest.raises(UsageError, match="twice"):
        fusemount.parse(["host:squashfuse_ll /i /x", "host:squashfuse_ll /j /x/"], ENV)


def write(tmp_path, doc):
    path = tmp_path / "p.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_compile_rules(tmp_path):
    default, rules, _arches = seccomp.compile_profile(write(tmp_path, {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # = default
            {"names": ["reboot"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_BOOT"]}},  # no capabilities here: skipped
            {"name": "kill", "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]}]}))
    assert default == 0x00050000 | 38
    assert [(nr, action) for nr, action, _ in rules] == [(0, 0x7FFF0000), (1, 0x7FFF0000),
                                                         (62, 0x7FFF0000)]
    assert rules[2][2] == ((1, 4, 15, 0),)


@pytest.mark.parametrize("doc, message", [
    ("{oops", "not a JSON seccomp profile"), ({"syscalls": []}, "no defaultAction"),
    ({"defaultAction": "SCMP_ACT_NOPE"}, "unknown action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["nope_call"],
                                                        "action": "SCMP_ACT_ERRNO"}]},
     "unknown system call 'nope_call'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action":
                                                        "SCMP_ACT_ERRNO", "args": [
                                                            {"index": 9, "op": "SCMP_CMP_EQ"}]}]},
     "index"),
])
def test_bad_profiles(tmp_path, doc, message):
    with pytest.raises(UsageError, match=message):
        seccomp.compile_profile(write(tmp_path, doc))
