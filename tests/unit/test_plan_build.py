"""The build's %post/%test sandbox as a ContainerPlan (runtime/plan_build.py): pure, no host.

Issue 11 point 1: the build sandbox is planned with exec's operation kinds and helpers and
applied by the same executor; these tests pin what it gets and in which order.
"""

import json

import pytest

from satchel.runtime import executor, executor_extra, plan
from satchel.runtime.plan_build import STAGED_FILES, build_sandbox_plan

ROOTFS = "/work/.img.build-x/rootfs-0"
ARGV = ["/.singularity.d/actions/exec", "/bin/sh", "-ex", "/.post.script"]
STAGED = {"/etc/resolv.conf": "/work/.img.build-x/staged-resolv.conf",
          "/etc/hosts": "/work/.img.build-x/staged-hosts"}


class KernelPaths:
    """The host's kernel paths, invented: what _protect_kernel asks about."""

    def __init__(self, paths=("/proc/sys", "/proc/kcore", "/sys/firmware")):
        self.paths = {p: "dir" if p in ("/proc/sys", "/sys/firmware") else "file"
                      for p in paths}

    def path_kind(self, path):
        return self.paths.get(path)


def sandbox(user_namespace=False, staged=STAGED, host=None):
    return build_sandbox_plan(ROOTFS, ARGV, {"PATH": "/bin"}, staged, host or KernelPaths(),
                              user_namespace=user_namespace, workdir="/work/.img.build-x")


def kinds(p):
    return [op.kind for op in p.ops]


def index(p, kind, destination=None):
    for i, op in enumerate(p.ops):
        if op.kind == kind and (destination is None or op.destination == destination):
            return i
    raise AssertionError(f"no {kind} {destination or ''} in {kinds(p)}")


@pytest.mark.parametrize("user_namespace", [False, True])
def test_namespaces_then_pid1_then_a_writable_root(user_namespace):
    p = sandbox(user_namespace)
    assert p.ops[0].kind == plan.UNSHARE and p.ops[0].data == ("mount", "pid")
    assert p.ops[1].kind == plan.FORK_INIT  # pid 1 of the new namespace makes every mount
    assert p.ops[2].kind == plan.MAKE_PRIVATE and p.ops[2].destination == "/"
    root_bind = p.ops[3]
    assert (root_bind.kind, root_bind.source, root_bind.destination) == (plan.BIND, ROOTFS,
                                                                         ROOTFS)
    assert "writable" in root_bind.flags and "ro" not in root_bind.flags
    assert not any(op.kind in (plan.MOUNT_SQUASHFS_FUSE, plan.MOUNT_SQUASHFS_LOOP,
                               plan.BIND_IMAGE_DIR, plan.REMOUNT_RO) and op.destination in
                   ("/", ROOTFS) for op in p.ops)
    assert p.root == ROOTFS and p.namespaces == ("mount", "pid")
    # every operation after the root bind is a container path, resolved below the rootfs
    for op in p.ops[4:]:
        if op.destination is not None and op.kind != plan.PIVOT_ROOT:
            assert "root" in op.flags, op


def test_real_root_gets_a_fresh_proc_never_the_hosts():
    """2ee2356: host /proc bound only inside a user namespace (its /proc/1/root is the host)."""
    p = sandbox(user_namespace=False)
    proc = p.ops[index(p, plan.MOUNT_PROC)]
    assert proc.destination == "/proc" and "host_fallback" not in proc.flags
    assert not any(op.kind == plan.BIND and op.source == "/proc" for op in p.ops)
    assert index(p, plan.FORK_INIT) < index(p, plan.MOUNT_PROC)


def test_user_namespace_may_fall_back_to_the_hosts_proc():
    p = sandbox(user_namespace=True)
    assert "host_fallback" in p.ops[index(p, plan.MOUNT_PROC)].flags


def test_sys_read_only_dev_minimal_tmp_private():
    p = sandbox()
    assert p.ops[index(p, plan.BIND, "/sys")].source == "/sys"
    assert index(p, plan.REMOUNT_RO, "/sys") > index(p, plan.BIND, "/sys")
    assert p.ops[index(p, plan.TMPFS, "/dev")].data.startswith("mode=0755")
    nodes = [op.source for op in p.ops if op.kind == plan.BIND_DEV_NODE]
    assert nodes == ["/dev/" + name for name in plan.DEV_NODES]  # one list, plan.py's
    assert p.ops[index(p, plan.MOUNT_DEVPTS)].data.startswith("newinstance")
    assert index(p, plan.TMPFS, "/dev/shm") and index(p, plan.TMPFS, "/tmp")
    assert not any(op.kind == plan.BIND and op.source in ("/dev/shm", "/dev/pts", "/tmp")
                   for op in p.ops)


def test_staged_resolv_conf_and_hosts_are_bound_copies():
    p = sandbox()
    for path in STAGED_FILES:
        op = p.ops[index(p, plan.BIND, path)]
        assert op.source == STAGED[path] and op.source != path
        assert p.ops[index(p, plan.BIND, path) - 1].kind == plan.ENSURE_MOUNTPOINT
    bare = sandbox(staged={})
    assert not any(op.destination in STAGED_FILES for op in bare.ops)


@pytest.mark.parametrize("user_namespace", [False, True])
def test_kernel_paths_protected_fatal_as_root_optional_in_a_user_namespace(user_namespace):
    p = sandbox(user_namespace, host=KernelPaths())
    ro = p.ops[index(p, plan.READONLY_PATH, "/proc/sys")]
    assert ("optional" in ro.flags) == user_namespace
    assert p.ops[index(p, plan.MASK_PATH, "/proc/kcore")].data == "file"
    assert p.ops[index(p, plan.MASK_PATH, "/sys/firmware")].data == "dir"
    # paths the host lacks are not planned
    assert not any(op.destination == "/proc/keys" for op in p.ops)
    last_mount = max(index(p, plan.MOUNT_PROC), index(p, plan.BIND, "/etc/hosts"))
    assert index(p, plan.READONLY_PATH) > last_mount


def test_pivot_root_then_the_scriptlet_with_its_capabilities():
    p = sandbox()
    assert kinds(p)[-3:] == [plan.PIVOT_ROOT, plan.CHDIR, plan.EXEC]
    assert p.ops[-3].destination == ROOTFS
    assert p.ops[-1].source == ARGV[0] and p.argv == ARGV
    assert plan.DROP_CAPS not in kinds(p)  # package managers need root's capabilities
    assert p.environ == {"PATH": "/bin"}


def test_every_operation_has_an_executor_method_and_the_plan_prints():
    p = sandbox(user_namespace=True)
    for op in p.ops:
        assert (hasattr(executor.Executor, "op_" + op.kind)
                or hasattr(executor_extra, "op_" + op.kind)), op.kind
    text = json.dumps(p.to_dict())
    assert ROOTFS in text


def test_the_build_has_no_second_device_list_nor_syscalls():
    from satchel.build import ns, scriptlet
    assert not hasattr(scriptlet, "DEV_NODES")
    for module in (ns, scriptlet):
        source = open(module.__file__).read()
        assert "ctypes" not in source and "CLONE_NEW" not in source
