"""build_plan() with a fake host: which operations, in which order (pure, no privilege)."""

import json

import pytest

from satchel.errors import ConfigError, ContainerError, UsageError
from satchel.image.formats import ImageRef
from satchel.runtime import binds as bindmod
from satchel.runtime import plan as P
from satchel.runtime.config import Config, default_config_path, load_config
from satchel.runtime.host import HostInfo

SESSION = "/pkg/satchel/runtime/session"
ROOT = SESSION + "/root"


class FakeHost(HostInfo):
    """Invented caller and host paths; nothing is read from the machine."""

    __slots__ = ("paths", "writable")

    def __init__(self, uid=1000, gid=1000, cwd="/work/project", environ=None, paths=None,
                 writable=(), terminal=False):
        super().__init__(uid, gid, [gid, 50], "alice" if uid else "root",
                         "/home/alice" if uid else "/root", "/bin/bash", "Alice", cwd,
                         environ if environ is not None else {"USER": "alice", "TERM": "xterm"},
                         "node1", {gid: "alice", 50: "staff"}, terminal)
        self.paths = {"/home/alice": "dir", "/root": "dir", "/tmp": "dir", "/var/tmp": "dir",
                      "/work/project": "dir", "/etc/hosts": "file", "/etc/localtime": "file",
                      "/etc/resolv.conf": "file", "/data": "dir", "/data/f.txt": "file"}
        self.paths.update(paths or {})
        self.writable = set(writable)

    def path_kind(self, path):
        import posixpath
        return self.paths.get(posixpath.normpath(path))

    def realpath(self, path):
        import posixpath
        return {"/etc/localtime": "/usr/share/zoneinfo/UTC"}.get(path, posixpath.normpath(path))

    def is_writable_dir(self, path):
        return path in self.writable


SIF = ImageRef("/imgs/a.sif", "sif", 4096, 8192, "squashfs")
SANDBOX = ImageRef("/imgs/sandbox", "sandbox", 0, 0, "dir")


@pytest.fixture(scope="module")
def config():
    return load_config(default_config_path())


def plan(host=None, image=SIF, config=None, **opts):
    command = opts.pop("command", "exec")
    args = opts.pop("args", ["/bin/true"])
    cfg = config or load_config(default_config_path())
    if "binds" in opts or "mounts" in opts:  # -B and --mount, parsed once (launch.run_options)
        opts["binds"] = bindmod.from_options(opts.pop("binds", ()), opts.pop("mounts", ()))
    return P.build_plan(P.RunOptions(command, args, **opts), cfg, image, host or FakeHost(),
                        session_dir=SESSION)


def kinds(p):
    return [op.kind for op in p.ops]


def index(p, kind, **match):
    for i, op in enumerate(p.ops):
        if op.kind == kind and all(getattr(op, k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no {kind} {match} in {kinds(p)}")


def binds(p):
    return [(op.source, op.destination) for op in p.ops if op.kind == P.BIND]


def test_rootless_sif_order():
    p = plan()
    k = kinds(p)
    assert p.rootless and p.namespaces == ("user", "mount")
    assert k[:3] == [P.UNSHARE, P.ID_MAP, P.FUSE_PREPARE]
    assert p.ops[0].data == ("user",)
    assert p.ops[1].data == ("1000 1000 1", "1000 1000 1")  # own ids, never root
    prep = p.ops[2]
    # the built-in server, named by the plan (started by the launcher, adopted here)
    assert "builtin" in prep.flags and prep.data is None
    assert (p.server.image, p.server.offset) == ("/imgs/a.sif", 4096)
    # the built-in server's fallback: the program, in the foreground (already detached)
    assert p.server.fallback_argv == ("squashfuse_ll", "-f", "-o", "offset=4096", "/imgs/a.sif",
                                      "/dev/fd/{fd}")
    program = plan(config=Config.parse("squashfuse mode = program\n")).ops[2]
    assert program.flags == () and program.data[1:] == ("-o", "offset=4096", "/imgs/a.sif",
                                                        "/dev/fd/{fd}")
    with pytest.raises(ConfigError, match="squashfuse mode = fast"):
        plan(config=Config.parse("squashfuse mode = fast\n"))
    # the server is prepared before the mount namespace exists, mounted, and reaped before
    # anything looks inside the image
    assert index(p, P.FUSE_PREPARE) < index(p, P.UNSHARE, data=("mount",)) \
        < index(p, P.MOUNT_SQUASHFS_FUSE) < index(p, P.FUSE_WAIT) < index(p, P.ENSURE_MOUNTPOINT)
    assert k[-5:] == [P.PIVOT_ROOT, P.CHDIR, P.DROP_CAPS, P.CHECK_SHELL, P.EXEC]
    assert index(p, P.NOSUID_TREE) < index(p, P.PIVOT_ROOT)
    mount = p.ops[index(p, P.MOUNT_SQUASHFS_FUSE)]
    assert mount.destination == ROOT and set(mount.flags) == {"ro", "nosuid", "nodev"}
    assert P.MOUNT_SQUASHFS_LOOP not in k


def test_root_uses_loop_device_and_no_user_namespace():
    p = plan(FakeHost(uid=0, gid=0))
    k = kinds(p)
    assert not p.rootless and p.namespaces == ("mount",)
    assert P.ID_MAP not in k and P.FUSE_PREPARE not in k
    loop = p.ops[index(p, P.MOUNT_SQUASHFS_LOOP)]
    assert loop.data == (4096, 8192) and loop.source == "/imgs/a.sif"
    assert set(loop.flags) == {"ro", "nosuid", "nodev"}
    assert P.GEN_PASSWD not in k  # root keeps the image's own passwd
    assert DROP_CAPS_BEFORE_EXEC(p)


def DROP_CAPS_BEFORE_EXEC(p):
    return index(p, P.DROP_CAPS) < index(p, P.EXEC)


def test_sandbox_is_bound_read_only_nosuid_nodev():
    p = plan(image=SANDBOX)
    op = p.ops[index(p, P.BIND_IMAGE_DIR)]
    assert (op.source, op.destination) == ("/imgs/sandbox", ROOT)
    assert {"ro", "rec", "nosuid", "nodev"} <= set(op.flags)
    assert P.FUSE_PREPARE not in kinds(p)


def test_default_mounts():
    p = plan()
    b = binds(p)
    for pair in [("/proc", "/proc"), ("/sys", "/sys"), ("/home/alice", "/home/alice"),
                 ("/tmp", "/tmp"), ("/var/tmp", "/var/tmp"),
                 ("/usr/share/zoneinfo/UTC", "/etc/localtime"), ("/etc/hosts", "/etc/hosts"),
                 ("/etc/resolv.conf", "/etc/resolv.conf"),
                 (SESSION + "/files/passwd", "/etc/passwd"),
                 (SESSION + "/files/group", "/etc/group"), ("/work/project", "/work/project")]:
        assert pair in b, pair
    nodes = [op.source for op in p.ops if op.kind == P.BIND_DEV_NODE]
    assert nodes == ["/dev/" + n for n in P.DEV_NODES]
    # every bind has its mount point ensured right before it
    for i, op in enumerate(p.ops):
        if op.kind in (P.BIND, P.BIND_DEV_NODE):
            assert p.ops[i - 1].kind == P.ENSURE_MOUNTPOINT
            assert p.ops[i - 1].destination == op.destination
    ro = {op.destination for op in p.ops if op.kind == P.REMOUNT_RO}
    assert {"/sys", "/etc/hosts", "/etc/passwd", "/etc/group"} <= ro
    assert "/home/alice" not in ro


def test_passwd_entry_for_caller():
    p = plan()
    op = p.ops[index(p, P.GEN_PASSWD)]
    assert op.data == ("alice:x:1000:1000:Alice:/home/alice:/bin/bash", 1000, "alice")
    grp = p.ops[index(p, P.GEN_GROUP)]
    assert grp.data == (((1000, "alice"), (50, "staff")), "alice")


def test_contain_uses_private_dirs():
    p = plan(contain=True)
    tmpfs = {op.destination for op in p.ops if op.kind == P.TMPFS and "root" in op.flags}
    assert {"/home/alice", "/tmp", "/var/tmp", "/dev", "/dev/shm"} <= tmpfs
    assert ("/home/alice", "/home/alice") not in binds(p)
    assert ("/tmp", "/tmp") not in binds(p)
    assert ("/work/project", "/work/project") not in binds(p)
    assert p.cwd == ("/home/alice", "/")


def test_contain_with_workdir():
    host = FakeHost(paths={"/scratch/w": "dir"})
    p = plan(host, contain=True, workdir="/scratch/w")
    b = binds(p)
    assert ("/scratch/w/tmp", "/tmp") in b and ("/scratch/w/var_tmp", "/var/tmp") in b
    assert ("/scratch/w/home", "/home/alice") in b
    made = [op.destination for op in p.ops if op.kind == P.MKDIR
            and not op.destination.startswith(SESSION)]
    assert made == ["/scratch/w/home", "/scratch/w/tmp", "/scratch/w/var_tmp"]


def test_containall_implies_pid_ipc_cleanenv():
    p = plan(containall=True)
    assert p.namespaces == ("user", "mount", "pid", "ipc")
    assert index(p, P.FORK_INIT) < index(p, P.MOUNT_PROC) < index(p, P.PIVOT_ROOT)
    assert kinds(p)[-1] == P.EXEC_CHILD
    assert "USER" not in p.environ and p.environ["LANG"] == "C"
    assert ("/proc", "/proc") not in binds(p)  # a fresh procfs instead


def test_home_option_and_no_home():
    host = FakeHost(paths={"/scratch/h": "dir"})
    p = plan(host, home="/scratch/h:/myhome")
    assert ("/scratch/h", "/myhome") in binds(p)
    assert p.environ["HOME"] == "/myhome"
    assert p.ops[index(p, P.GEN_PASSWD)].data[0].split(":")[5] == "/myhome"
    p = plan(no_home=True)
    assert not any(dst == "/home/alice" for _, dst in binds(p))
    with pytest.raises(ContainerError, match="home directory /nope does not exist"):
        plan(home="/nope")


def test_cwd_rules():
    assert ("/work/project", "/work/project") in binds(plan())
    # covered by the home bind: not bound twice
    p = plan(FakeHost(cwd="/home/alice/src", paths={"/home/alice/src": "dir"}))
    assert not any(dst == "/home/alice/src" for _, dst in binds(p))
    assert p.cwd[0] == "/home/alice/src"
    # system directories are never bound over the image's
    for cwd in ("/", "/usr", "/etc", "/proc/self"):
        p = plan(FakeHost(cwd=cwd, paths={cwd: "dir"}))
        assert (cwd, cwd) not in binds(p)
    p = plan(pwd="/opt")
    assert p.cwd == ("/opt",) and "strict" in p.ops[index(p, P.CHDIR)].flags
    p = plan(FakeHost(cwd=None))
    assert p.cwd == ("/home/alice", "/")


def test_no_mount_values():
    p = plan(no_mount=["home,tmp", "proc", "sys", "dev", "/etc/hosts", "cwd"])
    b = binds(p)
    assert not any(dst in ("/home/alice", "/tmp", "/proc", "/sys", "/etc/hosts",
                           "/work/project") for _, dst in b)
    assert P.BIND_DEV_NODE not in kinds(p)
    assert ("/usr/share/zoneinfo/UTC", "/etc/localtime") in b
    p = plan(no_mount=["bind-paths"])
    assert not any(dst in ("/etc/hosts", "/etc/localtime") for _, dst in binds(p))
    with pytest.raises(UsageError, match="--no-mount nonsense"):
        plan(no_mount=["nonsense"])


def test_user_binds():
    host = FakeHost(environ={"APPTAINER_BIND": "/data:/from-env"})
    p = plan(host, binds=["/data/f.txt:/var/lib/cwl/stg1/input.txt:ro", "/data/../data:/d2"],
             mounts=["type=bind,source=/data,destination=/m,readonly"])
    b = binds(p)
    assert b[-3:] == [("/data/f.txt", "/var/lib/cwl/stg1/input.txt"), ("/data", "/d2"),
                      ("/data", "/m")]
    assert ("/data", "/from-env") in b
    i = index(p, P.BIND, destination="/var/lib/cwl/stg1/input.txt")
    assert p.ops[i - 1].data == "file"
    assert p.ops[i + 1].kind == P.REMOUNT_RO
    assert p.environ["APPTAINER_BIND"] == ("/data:/from-env,/data/f.txt:/var/lib/cwl/stg1/"
                                           "input.txt:ro,/data/../data:/d2,/data:/m:ro")


@pytest.mark.parametrize("spec, error, message", [
    ("/nope:/x", ContainerError, "bind source /nope does not exist"),
    ("/data:/", UsageError, "cannot bind onto the container's root"),
    ("/data:/x/../", UsageError, "cannot bind onto the container's root"),
    ("/data:rel", UsageError, "must be an absolute path"),
])
def test_user_bind_errors(spec, error, message):
    with pytest.raises(error, match=message):
        plan(binds=[spec])


def test_user_bind_control_off():
    cfg = Config.parse("user bind control = no\n")
    with pytest.raises(ConfigError, match="user bind control"):
        plan(config=cfg, binds=["/data"])
    plan(config=cfg)  # no binds asked: fine


def test_relative_bind_source_uses_cwd():
    host = FakeHost(paths={"/work/project/in": "dir"})
    assert ("/work/project/in", "/in") in binds(plan(host, binds=["in:/in"]))


def test_overlay_rootless_and_root():
    host = FakeHost(paths={"/ov": "dir"}, writable={"/ov"})
    p = plan(host, overlay=["/ov"])
    k = kinds(p)
    servers = [op.source for op in p.ops if op.kind == P.FUSE_PREPARE]
    assert servers == ["image", "overlay"]
    opts = p.ops[index(p, P.FUSE_PREPARE, source="overlay")].data[2]
    assert f"lowerdir={SESSION}/lower,upperdir=/ov/upper,workdir=/ov/work" in opts
    assert index(p, P.FUSE_WAIT, source="image") < index(p, P.FUSE_SNAPSHOT) \
        < index(p, P.MOUNT_OVERLAY_FUSE) < index(p, P.FUSE_WAIT, source="overlay") \
        < index(p, P.ENSURE_MOUNTPOINT)
    assert p.ops[index(p, P.MOUNT_SQUASHFS_FUSE)].destination == SESSION + "/lower"
    root = FakeHost(uid=0, gid=0, paths={"/ov": "dir"}, writable={"/ov"})
    p = plan(root, overlay=["/ov"])
    op = p.ops[index(p, P.MOUNT_OVERLAY)]
    assert op.data == (SESSION + "/lower", "/ov/upper", "/ov/work")
    assert P.MOUNT_OVERLAY_FUSE not in kinds(p)
    p = plan(writable_tmpfs=True)
    assert f"upperdir={SESSION}/overlay/upper" in \
        p.ops[index(p, P.FUSE_PREPARE, source="overlay")].data[2]


@pytest.mark.parametrize("kw, message", [
    (dict(overlay=["/ro"]), "not writable"),
    (dict(overlay=["/missing"]), "does not exist"),
    (dict(overlay=["/nonexistent-satchel/f.img"]), "overlay /nonexistent-satchel/f.img"),
    (dict(overlay=["/ov", "/ov2"]), "only one writable overlay"),
    (dict(writable=True), "no writable overlay partition"),
])
def test_overlay_errors(kw, message):
    host = FakeHost(paths={"/ov": "dir", "/ov2": "dir", "/ro": "dir",
                           "/nonexistent-satchel/f.img": "file"}, writable={"/ov", "/ov2"})
    with pytest.raises((ContainerError, UsageError), match=message):
        plan(host, **kw)


def test_read_only_overlay_directories_stack_above_the_image_last_given_on_top():
    """Apptainer's order: the writable layer is the upper wherever it was given; each
    read-only one goes on top of those given before it."""
    host = FakeHost(paths={"/a": "dir", "/b": "dir", "/ov": "dir"}, writable={"/ov"})
    p = plan(host, overlay=["/a:ro", "/ov", "/b:ro"])
    opts = p.ops[index(p, P.FUSE_PREPARE, source="overlay")].data[2]
    assert opts.startswith(f"lowerdir=/b:/a:{SESSION}/lower,upperdir=/ov/upper,workdir=/ov/work")
    p = plan(host, overlay=["/a:ro"])  # read-only: no upper layer at all
    opts = p.ops[index(p, P.FUSE_PREPARE, source="overlay")].data[2]
    assert opts.startswith(f"lowerdir=/a:{SESSION}/lower,squash") and "upperdir" not in opts


def test_overlay_disabled_by_admin():
    with pytest.raises(ConfigError, match="enable overlay = no"):
        plan(config=Config.parse("enable overlay = no\n"), writable_tmpfs=True)


def test_namespaces_and_hostname():
    p = plan(ipc=True, hostname="box")
    assert p.namespaces == ("user", "mount", "ipc", "uts")
    assert p.ops[index(p, P.SETHOSTNAME)].data == "box"
    assert plan(uts=True).namespaces == ("user", "mount", "uts")


def test_argv_and_actions():
    p = plan(command="run", args=["a", "b c"])
    assert p.argv[0:2] == ["/bin/sh", "-c"]
    assert p.argv[3:] == ["/.singularity.d/actions/run", "a", "b c"]
    assert "/.singularity.d/runscript" in p.argv[2]
    p = plan(command="shell", args=[], shell="/bin/zsh")
    assert p.environ["SINGULARITY_SHELL"] == "/bin/zsh"
    with pytest.raises(UsageError):
        plan(command="start")


def test_gpu_binds_applied():
    from satchel.hpc.gpu import GpuBinds
    g = GpuBinds()
    g.libraries = ["/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
    g.binaries = [("/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi")]
    g.devices = ["/dev/nvidia0", "/dev/nvidia-caps"]
    g.env = {"CUDA_VISIBLE_DEVICES": "0"}
    g.warnings = ["careful"]
    host = FakeHost(paths={"/dev/nvidia-caps": "dir"})
    p = plan(host, gpu=[g])
    b = binds(p)
    assert ("/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/.singularity.d/libs/libcuda.so.1") in b
    assert ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi") in b
    assert ("/dev/nvidia0", "/dev/nvidia0") in b and ("/dev/nvidia-caps", "/dev/nvidia-caps") in b
    assert p.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "careful" in p.warnings
    assert "__satchel_l=/.singularity.d/libs " in p.argv[2]  # libraries first


def test_plan_is_json_serializable_and_pure():
    host = FakeHost()
    before = dict(host.environ)
    p = plan(host, binds=["/data:/d"], pid=True)
    text = json.dumps(p.to_dict())
    doc = json.loads(text)
    assert doc["namespaces"] == ["user", "mount", "pid"]
    assert doc["operations"][0] == {"op": "unshare", "data": ["user"]}
    assert host.environ == before
    # same inputs, same plan
    again = plan(FakeHost(), binds=["/data:/d"], pid=True)
    assert json.dumps(again.to_dict()) == text


def test_env_file_and_missing_home_warning():
    host = FakeHost(uid=1000, paths={"/home/alice": None})
    p = plan(host, env_file_pairs=[("X", "1")])
    assert p.environ["X"] == "1"
    assert any("home directory /home/alice does not exist" in w for w in p.warnings)


def test_user_bind_over_cwd_wins():
    p = plan(binds=["/data:/work"])
    assert not any(dst == "/work/project" for _, dst in binds(p))
    assert binds(p)[-1] == ("/data", "/work")


def test_server_start_is_in_the_plan():
    """The built-in server is a field of the plan, decided once: what the launcher starts."""
    p = plan(args=["/opt/app"])
    assert p.server.fallback_argv == ("squashfuse_ll", "-f", "-o", "offset=4096", "/imgs/a.sif",
                                      "/dev/fd/{fd}")
    assert p.server.reads == p.ops[index(p, P.PREFETCH)].data == ("/bin/sh", "/opt/app")
    assert p.to_dict()["server"]["image"] == "/imgs/a.sif"
    assert plan(FakeHost(uid=0, gid=0)).server is None  # root: loop device
    assert plan(image=SANDBOX).server is None           # nothing to serve
    program = plan(config=Config.parse("squashfuse mode = program\n"))
    assert program.server is None and program.ops[2].data[0] == "squashfuse_ll"
    assert plan(config=Config.parse("prefetch = no\n")).server.reads == ()


def test_prefetch_first_reads():
    p = plan(args=["/opt/app", "x"])
    op = p.ops[index(p, P.PREFETCH)]
    assert op.data == ("/bin/sh", "/opt/app")
    assert index(p, P.FUSE_WAIT) < index(p, P.PREFETCH) < index(p, P.ENSURE_MOUNTPOINT)
    assert plan(command="run", args=[]).ops[index(plan(command="run", args=[]), P.PREFETCH)] \
        .data == ("/bin/sh", "/.singularity.d/runscript")
    assert plan(args=["ls"]).ops[index(plan(args=["ls"]), P.PREFETCH)].data == ("/bin/sh",)
    assert P.PREFETCH not in kinds(plan(config=Config.parse("prefetch = no\n")))
    assert P.PREFETCH not in kinds(plan(FakeHost(uid=0, gid=0)))  # kernel SquashFS: no FUSE


def test_dev_pts_follows_the_terminal():
    batch = plan()
    op = batch.ops[index(batch, P.MOUNT_DEVPTS)]
    assert op.destination == "/dev/pts" and "newinstance" in op.data and "ptmxmode=0666" in op.data
    assert ("/dev/pts", "/dev/pts") not in binds(batch)
    interactive = plan(FakeHost(terminal=True))
    assert ("/dev/pts", "/dev/pts") in binds(interactive)
    assert P.MOUNT_DEVPTS not in kinds(interactive)
    for p in (batch, interactive):
        link = p.ops[index(p, P.SYMLINK, destination="/dev/ptmx")]
        assert link.source == "pts/ptmx"
    assert P.MOUNT_DEVPTS not in kinds(plan(no_mount=["devpts"]))


def test_default_session_dir_ships_with_satchel():
    import os
    path = P.default_session_dir()
    assert os.path.isdir(path) and os.path.isfile(os.path.join(path, "__init__.py"))
    assert path.endswith("/satchel/runtime/session")


def test_dev_shm_is_the_hosts_unless_contained():
    """MPI ranks, each in its own container, share memory through the host's /dev/shm."""
    assert ("/dev/shm", "/dev/shm") in binds(plan())
    contained = plan(contain=True)
    assert ("/dev/shm", "/dev/shm") not in binds(contained)


KERNEL = {"/proc/sys": "dir", "/proc/sysrq-trigger": "file", "/proc/bus": "dir",
          "/proc/kcore": "file", "/proc/acpi": "dir", "/sys/firmware": "dir"}


def protected(p):
    """{path: (kind, data, flags)} of the READONLY_PATH and MASK_PATH operations."""
    return {op.destination: (op.kind, op.data, set(op.flags)) for op in p.ops
            if op.kind in (P.READONLY_PATH, P.MASK_PATH)}


@pytest.mark.parametrize("pid", [False, True])
def test_kernel_paths_read_only_or_masked_in_root_mode(pid):
    """runc's defaults: host sysctls read-only, leaks masked; only paths the host has."""
    p = plan(FakeHost(uid=0, gid=0, paths=KERNEL), pid=pid)
    found = protected(p)
    assert set(found) == set(KERNEL)  # /proc/keys, /proc/scsi...: not on this host
    for path in ("/proc/sys", "/proc/sysrq-trigger", "/proc/bus"):
        assert found[path][0] == P.READONLY_PATH and "optional" not in found[path][2]
    assert found["/proc/kcore"][:2] == (P.MASK_PATH, "file")
    assert found["/proc/acpi"][:2] == (P.MASK_PATH, "dir")
    assert found["/sys/firmware"][:2] == (P.MASK_PATH, "dir")
    assert all({"root", "ro", "nosuid"} <= found[path][2] for path in found
               if found[path][0] == P.MASK_PATH)
    # after /proc (the fresh one under --pid), /sys and every bind; before the switch
    first = min(i for i, op in enumerate(p.ops) if op.kind in (P.READONLY_PATH, P.MASK_PATH))
    last = max(i for i, op in enumerate(p.ops) if op.kind in (P.READONLY_PATH, P.MASK_PATH))
    assert index(p, P.BIND, destination="/sys") < first and last < index(p, P.PIVOT_ROOT)
    assert max(i for i, op in enumerate(p.ops) if op.kind == P.BIND) < first
    if pid:
        assert index(p, P.MOUNT_PROC) < first
    else:
        assert index(p, P.BIND, destination="/proc") < first


def test_kernel_paths_rootless_are_optional_and_follow_no_mount():
    p = plan(FakeHost(paths=KERNEL))
    assert all("optional" in flags for _, _, flags in protected(p).values())
    # an image's own /proc or /sys is no kernel's: nothing is protected there
    assert set(protected(plan(FakeHost(paths=KERNEL), no_mount=["proc"]))) == {"/sys/firmware"}
    assert "/sys/firmware" not in protected(plan(FakeHost(paths=KERNEL), no_mount=["sys"]))
    off = Config.parse("mount proc = no\nmount sys = no\n")
    assert protected(plan(FakeHost(paths=KERNEL), config=off)) == {}


@pytest.mark.parametrize("uid", [0, 1000])
def test_session_mount_is_unbindable_before_the_session_tmpfs(uid):
    """satchel under $HOME or /tmp: their recursive binds must not copy the session."""
    p = plan(FakeHost(uid=uid, gid=uid))
    anchor = index(p, P.UNBINDABLE, destination=SESSION)
    assert anchor < index(p, P.TMPFS, destination=SESSION)
    assert index(p, P.MAKE_PRIVATE) < anchor


def test_build_plan_does_not_change_the_options():
    """What --containall and --no-pid imply is derived in the plan, not written back."""
    opts = P.RunOptions("exec", ["/bin/true"], containall=True, no_pid=True,
                        binds=bindmod.from_options(["/data:/d"], ()))
    before = {name: getattr(opts, name) for name in P.RunOptions.__slots__}
    p = P.build_plan(opts, load_config(default_config_path()), SIF, FakeHost(),
                     session_dir=SESSION)
    assert {name: getattr(opts, name) for name in P.RunOptions.__slots__} == before
    assert p.namespaces == ("user", "mount", "ipc")  # --no-pid wins over --containall
    assert ("/tmp", "/tmp") not in binds(p) and "USER" not in p.environ


def test_ops_are_frozen_and_their_data_immutable():
    """No operation changes after the plan is made; data is a str, int or tuple of them."""
    p = plan(binds=["/data:/d:ro"], pid=True, hostname="box", net=True, network="none")
    op = p.ops[0]
    for name in ("kind", "source", "destination", "flags", "data", "extra"):
        with pytest.raises(AttributeError):
            setattr(op, name, None)
    with pytest.raises(AttributeError):
        p.server.image = "/elsewhere.sif"

    def immutable(value):
        if isinstance(value, tuple):
            return all(immutable(v) for v in value)
        return value is None or isinstance(value, (str, int))
    for candidate in (p, plan(FakeHost(uid=0, gid=0, paths={"/ov": "dir"}, writable={"/ov"}),
                              overlay=["/ov"]), plan(image=SANDBOX, dns="1.1.1.1")):
        for op in candidate.ops:
            assert immutable(op.data) and isinstance(op.flags, tuple), op


def test_every_kind_is_documented_and_applied():
    """The table at the top of plan.py is the list of kinds; the executor has one method each
    (or executor_extra.py one function: the operations of rarely used options)."""
    import inspect

    from satchel.runtime import executor, executor_extra
    source = inspect.getsource(P)
    kinds_ = [v for k, v in vars(P).items() if k.isupper() and isinstance(v, str)
              and f'{k} = "{v}"' in source]
    assert len(kinds_) > 40
    for kind in kinds_:
        assert (hasattr(executor.Executor, "op_" + kind)
                or hasattr(executor_extra, "op_" + kind)), kind
        line = next(line for line in source.splitlines() if line.endswith(f'"{kind}"')
                    or f'= "{kind}"  ' in line)
        assert "#" in line, f"{kind}: no shape documented"


def test_bind_specs_stay_bind_specs():
    """A -B value is parsed once; the plan checks it into a BindSpec and keeps it one."""
    host = FakeHost(environ={"APPTAINER_BIND": "/data:/e"})
    opts = P.RunOptions("exec", ["/bin/true"], binds=bindmod.from_options(["/data/../data:/d:ro"],
                                                                        ()))
    spec = opts.binds[0]
    p = P.build_plan(opts, load_config(default_config_path()), SIF, host, session_dir=SESSION)
    assert isinstance(spec, bindmod.BindSpec) and spec.host_path is None  # not changed
    assert p.environ["APPTAINER_BIND"] == "/data:/e,/data/../data:/d:ro"
    checked = bindmod.from_options(["/data/../data:/d/../d:ro"], ())[0].checked("/data", "/d",
                                                                               "dir")
    assert (checked.host_path, checked.destination, checked.kind, checked.readonly) == \
        ("/data", "/d", "dir", True)
    assert checked.text() == "/data/../data:/d:ro"
