"""A real Slurm on loopback for the session: munged, slurmctld and slurmd, no systemd.

Debian's slurm-wlm and munge, started as root from a generated configuration in a private
directory (its own munge key and socket, its own ports, state and spool), torn down after the
session. Clients find it through SLURM_CONF; `SlurmCluster.run()` runs them as a given user.

Choices, each forced by this kind of machine (issue 5, "Facts"):
- munged gets `AuthInfo=socket=...` in slurm.conf so nothing touches /run/munge; `--force`
  because its directory is under the world-writable /tmp.
- SlurmUser=root and no accounting database: `sstat` works without slurmdbd and shows a
  step's MaxRSS and CPU time through jobacct_gather/linux.
- ProctrackType=proctrack/cgroup with cgroup/v1 where the v1 freezer hierarchy is mounted
  (it tracks every process of a step, including a container's squashfuse, so nothing
  outlives the job); proctrack/linuxproc otherwise.
- DefMemPerCPU is set, or one job takes the whole node's memory and the next one waits.
- One node with CPUs=4 on a 2-core machine (SlurmdParameters=config_overrides) so 4 MPI ranks
  fit in one allocation.
- `slurm_multinode`: two "nodes" on this one machine, each slurmd in its own network namespace
  (joined by veth pairs to a bridge in a third, "fabric" namespace where slurmctld and the
  clients run) and its own hostname (`unshare --uts`). Entered with `nsenter --net=` and not
  `ip netns exec`, which remounts /sys and hides the cgroup tree. No Slurm core pinning
  (task/none), and each node has its own spool (PMIx) directory, or ranks collide. Nothing of
  the host's own network changes; the namespaces go away at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

NODE = "satnode1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MPI_DEF = os.path.join(ROOT, "examples", "mpi.def")
REQUIRED = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "scancel", "sstat", "sinfo")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cgroup_v1_freezer() -> bool:
    return os.path.isdir("/sys/fs/cgroup/freezer") and os.path.ismount("/sys/fs/cgroup/freezer")


SLURM_CONF = """\
ClusterName=satchel
SlurmctldHost={host}({ctld_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.socket
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd-%n.log
MailProg=/bin/true
ProctrackType={proctrack}
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
{nodes}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
NODE_LINE = ("NodeName={name} NodeAddr={addr} NodeHostname={hostname} CPUs={cpus} "
             "RealMemory=8000 State=UNKNOWN\n")
FABRIC_NET = "10.213.0"  # private addresses inside our own network namespaces only

CGROUP_CONF = """\
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
"""


class SlurmCluster:
    """The running daemons and how to reach them."""

    def __init__(self, root: str):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.node = NODE
        self.nodes = [NODE]
        self.procs: list[subprocess.Popen] = []
        self.netns: list[str] = []      # namespaces we made (multi-node), deleted at teardown
        self.prefix: list[str] = []     # how clients reach the controller (nsenter, or none)

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": self.conf}

    def run(self, argv: list[str], user=None, timeout: float = 60, cwd: str | None = None,
            env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
        """Run a Slurm client (or anything) with SLURM_CONF set, as `user` if given."""
        if user is not None:
            full_env = user.env(dict(self.env, **(env or {})))
            argv = user.argv(argv)
            cwd = cwd or user.home
        else:
            full_env = dict(os.environ, **self.env, **(env or {}))
        argv = self.prefix + argv  # nsenter (as root) first, then setpriv drops to the user
        proc = subprocess.run(argv, env=full_env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}\n{self.logs()}")
        return proc

    def job(self, job_id: str) -> dict:
        """`scontrol show job -o` as a dict (empty once the controller forgot the job)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        info = {}
        for item in out.split():
            key, _, value = item.partition("=")
            info.setdefault(key, value)
        return info

    def wait_job(self, job_id: str, timeout: float = 60) -> dict:
        """Poll until the job has finished (any final state); returns its last record."""
        deadline = time.monotonic() + timeout
        info = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                        "OUT_OF_MEMORY", "NODE_FAIL"):
                return info
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout}s\n"
                             f"{self.logs()}")

    def wait_running(self, job_id: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        info = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") == "RUNNING":
                return info
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not running after {timeout}s: {info}")

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until no node has an allocation left (the previous test's job is gone)."""
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while time.monotonic() < deadline:
            states = self.run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.split()
            if states and all(state == "idle" for state in states):
                return
            time.sleep(0.1)
        raise AssertionError(f"nodes are {states!r}, not idle, after {timeout}s")

    def logs(self) -> str:
        out = []
        logdir = os.path.join(self.root, "log")
        for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else ():
            with open(os.path.join(logdir, name), errors="replace") as fh:
                out.append(f"--- {name} (last lines)\n" + "".join(fh.readlines()[-25:]))
        return "\n".join(out)


def _start(cluster: SlurmCluster, argv: list[str], logname: str) -> subprocess.Popen:
    """Start a daemon in the foreground; nsenter/unshare exec into it, so the Popen's pid is
    the daemon's own."""
    log = open(os.path.join(cluster.root, "log", logname), "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, **cluster.env), start_new_session=True)
    log.close()
    cluster.procs.append(proc)
    return proc


def _stop(cluster: SlurmCluster) -> None:
    # jobs first, so slurmd can still clean up their steps; then the daemons, newest first
    try:
        cluster.run(["scancel", "--full", "--partition=debug"], timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and cluster.run(["squeue", "-h"], timeout=10).stdout:
            time.sleep(0.2)
    except (subprocess.TimeoutExpired, OSError):
        pass
    for proc in reversed(cluster.procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(cluster.procs):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for name in reversed(cluster.netns):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _ip(*args: str) -> None:
    subprocess.run(["ip"] + list(args), check=True, capture_output=True, timeout=30)


def _make_fabric(cluster: SlurmCluster, tag: str, count: int) -> list[str]:
    """The fabric namespace (bridge, FABRIC_NET.1) and one namespace per node (.11, .12, ...),
    each joined to the bridge by a veth pair. Returns the node addresses."""
    fabric = f"satfab-{tag}"
    _ip("netns", "add", fabric)
    cluster.netns.append(fabric)
    _ip("-n", fabric, "link", "set", "lo", "up")
    _ip("-n", fabric, "link", "add", "br0", "type", "bridge")
    _ip("-n", fabric, "addr", "add", f"{FABRIC_NET}.1/24", "dev", "br0")
    _ip("-n", fabric, "link", "set", "br0", "up")
    addrs = []
    for number in range(1, count + 1):
        ns, addr = f"satn{number}-{tag}", f"{FABRIC_NET}.{10 + number}"
        _ip("netns", "add", ns)
        cluster.netns.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"vh{number}", "netns", fabric, "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip("-n", fabric, "link", "set", f"vh{number}", "master", "br0")
        _ip("-n", fabric, "link", "set", f"vh{number}", "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        addrs.append(addr)
    cluster.prefix = ["nsenter", f"--net=/run/netns/{fabric}"]
    return addrs


def _node_conf(cluster: SlurmCluster, name: str) -> str:
    """A node's own configuration directory: the same slurm.conf and cgroup.conf, plus an
    mpi.conf giving its PMIx client directories their own base. Two slurmds on one machine
    otherwise both create /tmp/spmix_appdir_<uid>_<step> and the second step fails (EEXIST)."""
    conf_dir = os.path.join(cluster.root, f"conf-{name}")
    pmix_dir = os.path.join(cluster.root, f"pmix-{name}")
    for path in (conf_dir, pmix_dir):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o755)
    for conf in ("slurm.conf", "cgroup.conf"):
        shutil.copy(os.path.join(cluster.root, conf), os.path.join(conf_dir, conf))
    with open(os.path.join(conf_dir, "mpi.conf"), "w") as fh:
        fh.write(f"PMIxCliTmpDirBase={pmix_dir}\n")
    return os.path.join(conf_dir, "slurm.conf")


def start_cluster(root: str, nodes: int = 1) -> SlurmCluster:
    """Generate the configuration under root and start munged, slurmctld and the slurmds:
    one node on loopback, or `nodes` nodes in network namespaces (see the module docstring)."""
    cluster = SlurmCluster(root)
    os.chmod(root, 0o755)
    try:
        if nodes == 1:
            names, addrs, hostnames = [NODE], ["127.0.0.1"], [socket.gethostname()]
            ctld_addr, cpus = "127.0.0.1", 4
        else:
            names = [f"satnode{i}" for i in range(1, nodes + 1)]
            addrs = _make_fabric(cluster, os.path.basename(root)[-8:], nodes)
            hostnames, ctld_addr, cpus = names, f"{FABRIC_NET}.1", 2
        cluster.nodes, cluster.node = names, names[0]
        for sub in ["state", "log"] + [f"spool/{n}" for n in names]:
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        key = os.path.join(root, "munge.key")
        with open(key, "wb") as fh:
            fh.write(os.urandom(1024))
        os.chmod(key, 0o400)
        v1 = _cgroup_v1_freezer()
        node_lines = "".join(NODE_LINE.format(name=n, addr=a, hostname=h, cpus=cpus)
                             for n, a, h in zip(names, addrs, hostnames))
        with open(cluster.conf, "w") as fh:
            fh.write(SLURM_CONF.format(
                host=socket.gethostname(), ctld_addr=ctld_addr, ctld_port=_free_port(),
                slurmd_port=_free_port(), dir=root, nodes=node_lines,
                proctrack="proctrack/cgroup" if v1 else "proctrack/linuxproc"))
        with open(os.path.join(root, "cgroup.conf"), "w") as fh:
            fh.write(CGROUP_CONF if v1 else CGROUP_CONF.replace("cgroup/v1", "autodetect"))
        os.chmod(cluster.conf, 0o644)
    except (OSError, subprocess.SubprocessError) as err:
        _stop(cluster)
        raise RuntimeError(f"cannot set up the Slurm test cluster: {err}") from None
    sock = os.path.join(root, "munge.socket")
    _start(cluster, ["munged", "--foreground", "--force", f"--socket={sock}",
                     f"--key-file={key}", f"--pid-file={root}/munged.pid",
                     f"--seed-file={root}/munged.seed"], "munged.out")
    _wait_for(lambda: os.path.exists(sock), 10, "munged socket", cluster)
    _start(cluster, cluster.prefix + ["slurmctld", "-D", "-i", "-f", cluster.conf],
           "slurmctld.out")
    for number, name in enumerate(names, 1):
        if nodes == 1:
            argv = ["slurmd", "-D", "-N", name, "-f", cluster.conf]
        else:
            argv = ["nsenter", f"--net=/run/netns/{cluster.netns[number]}", "unshare", "--uts",
                    "sh", "-c", f'hostname {name} && exec slurmd -D -N {name} -f "$0"',
                    _node_conf(cluster, name)]
        _start(cluster, argv, f"slurmd-{name}.out")
    _wait_for(lambda: cluster.run(["sinfo", "-h", "-N", "-o", "%T"], timeout=10).stdout.split()
              == ["idle"] * nodes, 30, "nodes idle", cluster)
    return cluster


def _wait_for(ready, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in cluster.procs):
            break
        try:
            if ready():
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.1)
    _stop(cluster)
    raise RuntimeError(f"Slurm did not come up ({what}):\n{cluster.logs()}")


@pytest.fixture(scope="session")
def slurm(test_user):
    """A running single-node Slurm; the non-root test user submits to it."""
    yield from _cluster_fixture(1)


@pytest.fixture(scope="session")
def slurm_multinode(test_user):
    """Two Slurm nodes on this machine, each in its own network namespace and UTS hostname."""
    if not shutil.which("ip") or not shutil.which("nsenter"):
        pytest.fail("ip/nsenter missing: run ./scripts/install-deps")
    yield from _cluster_fixture(2)


def _cluster_fixture(nodes: int):
    missing = [tool for tool in REQUIRED if not shutil.which(tool)]
    if missing:
        pytest.fail(f"Slurm tools missing ({' '.join(missing)}): run ./scripts/install-deps")
    root = tempfile.mkdtemp(prefix="satchel-slurm-", dir="/tmp")
    try:
        cluster = start_cluster(root, nodes)
    except RuntimeError as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(str(err))
    try:
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mpi_image() -> str:
    """examples/mpi.def built once and cached like the debootstrap image (about a minute the
    first time; needs deb.debian.org)."""
    from support.fixtures_images import cached_image  # a plugin module: import when used
    return cached_image(MPI_DEF, "mpi", timeout=1500)
