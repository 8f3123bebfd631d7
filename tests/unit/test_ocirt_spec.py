"""Unit tests of the OCI runtime's spec parsing and plan (satchel.ocirt.spec, .plan)."""

from __future__ import annotations

import copy

import pytest

from satchel.errors import ConfigError
from satchel.ocirt import plan as oplan
from satchel.ocirt import spec as specmod

BASE = {
    "ociVersion": "1.0.2-dev",
    "process": {"terminal": False, "user": {"uid": 1000, "gid": 100, "additionalGids": [5]},
                "args": ["sh", "-c", "true"], "env": ["PATH=/bin", "A=b=c"], "cwd": "/work",
                "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                 "permitted": ["CAP_KILL"], "inheritable": [], "ambient": []},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
                "noNewPrivileges": True, "oomScoreAdj": 100},
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "box",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
               {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "mode=755"]},
               {"destination": "/data", "type": "bind", "source": "/tmp",
                "options": ["rbind", "ro"]}],
    "hooks": {"prestart": [{"path": "/bin/true", "args": ["true"]}]},
    "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"},
                             {"type": "network", "path": "/proc/1/ns/net"}],
              "maskedPaths": ["/proc/kcore", "/proc/nonexistent"],
              "readonlyPaths": ["/proc/sys"],
              "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]},
}


def parse(doc=None):
    return specmod.parse(copy.deepcopy(doc or BASE), "/bundle")


def test_parse_fields():
    spec = parse()
    assert spec.root_path == "/bundle/rootfs" and spec.root_readonly
    p = spec.process
    assert (p.uid, p.gid, p.additional_gids) == (1000, 100, [5])
    assert p.rlimits == [("RLIMIT_NOFILE", 1024, 512)]
    assert p.no_new_privileges and p.oom_score_adj == 100
    assert spec.namespaces[-1] == ("network", "/proc/1/ns/net")
    assert spec.mounts[2].options == ("rbind", "ro")
    assert spec.devices[0]["mode"] == 0o666
    assert oplan.environ_of(p) == {"PATH": "/bin", "A": "b=c"}


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(ociVersion="2.0.0"), "ociVersion"),
    (lambda d: d["process"].update(args=[]), "process.args"),
    (lambda d: d["process"].update(cwd="rel"), "absolute"),
    (lambda d: d["process"]["user"].update(uid="0"), "process.user.uid must be an integer"),
    (lambda d: d["process"].update(terminal="yes"), "must be a boolean"),
    (lambda d: d["linux"]["namespaces"].append({"type": "pid"}), "listed twice"),
    (lambda d: d["linux"]["namespaces"].append({"type": "bogus"}), "not a namespace"),
    (lambda d: d["mounts"].append({"destination": "rel", "type": "tmpfs"}), "absolute"),
    (lambda d: d["linux"].update(intelRdt={"closID": "x"}), "intelRdt"),
    (lambda d: d["process"].update(env=["NOEQUALS"]), "has no '='"),
    (lambda d: d.update(root={}), "root.path"),
])
def test_bad_specs_name_the_field(change, words):
    doc = copy.deepcopy(BASE)
    change(doc)
    with pytest.raises(ConfigError) as info:
        specmod.parse(doc, "/bundle")
    assert words in info.value.message


def kinds_of(plan):
    return [op.kind for op in plan.ops]


def fake_kind(path):
    return {"/tmp": "dir", "/proc/kcore": "file", "/proc/sys": "dir"}.get(path)


def test_plan_order_follows_runc():
    spec = parse()
    ctx = oplan.Context(uid=0, sync_fd=5, fifo_fd=6, path_kind=fake_kind)
    kinds = kinds_of(oplan.build(spec, ctx))
    order = ["oci_setns", "unshare", "oci_fork", "propagation", "bind_image_dir", "oci_mount",
             "oci_device", "sethostname", "oci_sync", "readonly_path", "mask_path",
             "remount_ro", "pivot_root", "chdir", "oci_process", "oci_wait_start", "exec"]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions), kinds
    assert kinds.count("mask_path") == 1  # a path the host lacks is skipped, as runc does
    unshare = next(op for op in oplan.build(spec, ctx).ops if op.kind == "unshare")
    assert set(unshare.data) == {"pid", "mount", "uts"}


def test_plan_user_namespace_maps():
    doc = copy.deepcopy(BASE)
    doc["linux"]["namespaces"] = [{"type": "user"}, {"type": "mount"}]
    doc["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    doc["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    doc.pop("hostname")
    spec = specmod.parse(doc, "/b")
    own = oplan.build(spec, oplan.Context(uid=1000, self_map=True, path_kind=fake_kind))
    assert kinds_of(own)[:2] == ["unshare", "id_map"]
    assert own.ops[1].data == ("0 1000 1\n", "0 1000 1\n")
    helped = oplan.build(spec, oplan.Context(uid=0, sync_fd=7, path_kind=fake_kind))
    assert helped.ops[1].kind == "oci_sync" and helped.ops[1].data == ("idmap", 7)
    devices = [op for op in own.ops if op.kind == "oci_device"]
    assert devices and all("bind" in op.flags for op in devices)  # no mknod in a userns


def test_plan_refusals():
    doc = copy.deepcopy(BASE)
    doc["linux"]["namespaces"] = [{"type": "mount"}]
    with pytest.raises(ConfigError, match="hostname needs a new uts"):
        oplan.build(specmod.parse(doc, "/b"), oplan.Context(uid=0, path_kind=fake_kind))
    doc.pop("hostname")
    doc["mounts"].append({"destination": "/x", "type": "nfs", "source": "h:/x"})
    with pytest.raises(ConfigError, match="mount type 'nfs'"):
        oplan.build(specmod.parse(doc, "/b"), oplan.Context(uid=0, path_kind=fake_kind))
    doc["mounts"].pop()
    with pytest.raises(ConfigError, match="rootless container needs a user namespace"):
        oplan.build(specmod.parse(doc, "/b"), oplan.Context(uid=1000, path_kind=fake_kind))


def test_seccomp_profile_compiled_or_refused():
    """linux.seccomp goes through runtime/seccomp.py (the one loader): numbers resolved,
    unknown names skipped as runc does, comparisons of one argument split, bad values
    refused as config errors."""
    doc = copy.deepcopy(BASE)
    doc["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["read", "no_such_call_yet"], "action": "SCMP_ACT_ALLOW"},
                     {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                      "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
                     {"names": ["close"], "action": "SCMP_ACT_ERRNO"},  # = the default
                     {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_GE"},
                               {"index": 1, "value": 3, "op": "SCMP_CMP_LE"}]}]}
    spec = specmod.parse(doc, "/b")
    default, rules, arches = oplan.compile_seccomp(spec)
    assert default == 0x50001 and arches == ("x86_64",)
    assert rules == ((0, 0x7FFF0000, ()), (62, 0x50026, ((1, 4, 9, 0),)),
                     (62, 0x7FFF0000, ((1, 5, 1, 0),)), (62, 0x7FFF0000, ((1, 3, 3, 0),)))
    plan = oplan.build(spec, oplan.Context(uid=0, path_kind=fake_kind))
    late = next(op for op in plan.ops if op.kind == "oci_seccomp")  # noNewPrivileges: last
    assert late.data == (default, rules, arches)
    for bad, words in (({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY"),
                       ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z"]},
                        "SCMP_ARCH_Z"),
                       ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/s"},
                        "listenerPath")):
        spec.seccomp = bad
        with pytest.raises(ConfigError, match=words):
            oplan.compile_seccomp(spec)


def test_runc_flag_syntax():
    from satchel.cli.commands.oci import COMMAND_OPTIONS, parse_flags
    values, flags, short = COMMAND_OPTIONS["create"]
    opts, rest = parse_flags(["-bundle", "/b", "--pid-file=/p", "--no-pivot", "id1"],
                             values, flags, short, False)
    assert opts == {"bundle": "/b", "pid-file": "/p", "no-pivot": True} and rest == ["id1"]
    values, flags, short = COMMAND_OPTIONS["exec"]
    opts, rest = parse_flags(["-e", "A=1", "-t", "id", "ls", "-l"], values, flags, short, True)
    assert opts["env"] == ["A=1"] and opts["tty"] and rest == ["id", "ls", "-l"]


@pytest.mark.parametrize("value,before,after", [("", "rslave", None), ("slave", "rslave", "slave"),
                                                ("rshared", "rprivate", "rshared"),
                                                ("unbindable", "rprivate", "unbindable")])
def test_plan_rootfs_propagation(value, before, after):
    """rootfsPropagation: the tree starts as slaves (runc's default) or private (pivot_root
    refuses a shared root), and the value is set on / once it is the container's root."""
    doc = copy.deepcopy(BASE)
    if value:
        doc["linux"]["rootfsPropagation"] = value
    plan = oplan.build(specmod.parse(doc, "/b"), oplan.Context(uid=0, path_kind=fake_kind))
    kinds = kinds_of(plan)
    props = [op.data for op in plan.ops if op.kind == "propagation"]
    assert props == [before] + ([after] if after else [])
    if after:
        assert kinds.index("pivot_root") < len(kinds) - 1 - kinds[::-1].index("propagation")


def test_bad_rootfs_propagation_is_refused():
    doc = copy.deepcopy(BASE)
    doc["linux"]["rootfsPropagation"] = "bogus"
    with pytest.raises(ConfigError, match="rootfsPropagation 'bogus'"):
        specmod.parse(doc, "/b")
