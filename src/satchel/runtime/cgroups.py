"""Resource limits: Apptainer's --cpus, --memory, --pids-limit... and --apply-cgroups FILE.toml.

Three steps, like the rest of the runtime:
- resources_from_options() turns the flags (or the TOML file, Apptainer's cgroups.toml: the OCI
  LinuxResources) into one dict in the OCI shape; bad values are UsageErrors;
- request() decides, from the host's cgroup layout, which directories to create and which
  files to write: a CgroupRequest, plain data the plan carries (CGROUP operation);
- enter() (executor) creates the directories, writes the limits and moves the launcher in,
  before any namespace exists, so every process of the container starts inside; remove()
  (the reaper, runtime/reaper.py) kills what is left and removes the directories when the
  container ends, also after a SIGKILL.

Where: the container's cgroup is satchel-<pid> below the caller's own cgroup, per hierarchy,
read from /proc/self/cgroup. Under Slurm that is the step's cgroup, so the container's limits
nest inside the job's and never escape them (a limit below can only tighten the step's).

Who: root on cgroup v1 and v2. A non-root caller on cgroup v2 where its own cgroup is
delegated to it (writable: systemd's Delegate=yes, or a site's setup). Non-root on cgroup v1
cannot create cgroups at all: one error that says so.
"""

from __future__ import annotations

import os

from satchel.errors import ContainerError, UsageError

CPU_PERIOD = 100000  # microseconds: --cpus N means a quota of N periods per period


class CgroupRequest:
    """What to create and write: dirs in creation order, (file, value) writes in order, the
    cgroup.procs files the launcher's pid goes into."""

    __slots__ = ("version", "dirs", "writes", "procs")

    def __init__(self, version: int, dirs, writes, procs):
        self.version = version
        self.dirs = tuple(dirs)
        self.writes = tuple(writes)
        self.procs = tuple(procs)

    def to_data(self) -> tuple:
        return (self.version, self.dirs, self.writes, self.procs)


# -- options -> OCI LinuxResources --------------------------------------------------------------
_FLAG_DESTS = ("blkio_weight", "blkio_weight_device", "cpu_shares", "cpus", "cpuset_cpus",
               "cpuset_mems", "memory", "memory_reservation", "memory_swap", "oom_kill_disable",
               "pids_limit")


def wanted(parsed) -> bool:
    return bool(getattr(parsed, "apply_cgroups", None)) or any(
        getattr(parsed, dest, None) not in (None, [], False, "") for dest in _FLAG_DESTS)


def resources_from_options(parsed) -> dict:
    """The limits asked for, as OCI LinuxResources (Apptainer: flags or --apply-cgroups)."""
    flags = [d for d in _FLAG_DESTS if getattr(parsed, d, None) not in (None, [], False, "")]
    if getattr(parsed, "apply_cgroups", None):
        if flags:
            raise UsageError(f"--apply-cgroups cannot be combined with --"
                             f"{flags[0].replace('_', '-')}: put every limit in the file")
        return load_toml(parsed.apply_cgroups)
    res: dict = {}
    mem = {}
    if parsed.memory:
        mem["limit"] = parse_bytes(parsed.memory, "--memory")
    if parsed.memory_reservation:
        mem["reservation"] = parse_bytes(parsed.memory_reservation, "--memory-reservation")
    if parsed.memory_swap:
        mem["swap"] = (-1 if parsed.memory_swap.strip() == "-1"
                       else parse_bytes(parsed.memory_swap, "--memory-swap"))
    if parsed.oom_kill_disable:
        mem["disableOOMKiller"] = True
    if mem:
        res["memory"] = mem
    cpu = {}
    if parsed.cpu_shares not in (None, "", "-1"):
        cpu["shares"] = parse_int(parsed.cpu_shares, "--cpu-shares", 2, 262144)
    if parsed.cpus:
        try:
            count = float(parsed.cpus)
        except ValueError:
            count = -1.0
        if not 0.01 <= count <= 4096:
            raise UsageError(f"invalid --cpus {parsed.cpus!r}: expected a number of CPUs "
                             "such as 0.5 or 2")
        cpu["quota"], cpu["period"] = int(count * CPU_PERIOD), CPU_PERIOD
    if parsed.cpuset_cpus:
        cpu["cpus"] = parse_cpuset(parsed.cpuset_cpus, "--cpuset-cpus")
    if parsed.cpuset_mems:
        cpu["mems"] = parse_cpuset(parsed.cpuset_mems, "--cpuset-mems")
    if cpu:
        res["cpu"] = cpu
    if parsed.pids_limit not in (None, "", "0"):
        res["pids"] = {"limit": parse_int(parsed.pids_limit, "--pids-limit", -1, 1 << 22)}
    blkio = {}
    if parsed.blkio_weight not in (None, "", "0"):
        blkio["weight"] = parse_int(parsed.blkio_weight, "--blkio-weight", 10, 1000)
    devices = [_weight_device(v) for v in parsed.blkio_weight_device or ()]
    if devices:
        blkio["weightDevice"] = devices
    if blkio:
        res["blockIO"] = blkio
    return res


def load_toml(path: str) -> dict:
    """Apptainer's cgroups.toml (the OCI LinuxResources, in TOML)."""
    import tomllib
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise UsageError(f"--apply-cgroups {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--apply-cgroups {path}: not valid TOML ({err})") from None
    known = {"memory", "cpu", "pids", "blockIO"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"--apply-cgroups {path}: unsupported section [{unknown[0]}] "
                         f"(supported: {', '.join(sorted(known))})")
    for section, value in data.items():
        if not isinstance(value, dict):
            raise UsageError(f"--apply-cgroups {path}: [{section}] must be a table")
    return data


def parse_bytes(text: str, flag: str) -> int:
    """Docker's RAMInBytes: 64m, 64MB, 64MiB, 1g, 1048576 (binary units)."""
    value = text.strip().lower()
    for suffix in ("ib", "b"):  # 64mib, 64mb -> 64m; 1024b -> 1024
        if value.endswith(suffix):
            value = value[:-len(suffix)]
            break
    factor = 1
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    if value and value[-1] in units:
        factor, value = units[value[-1]], value[:-1]
    try:
        number = float(value)
    except ValueError:
        number = -1
    if number <= 0:
        raise UsageError(f"invalid {flag} {text!r}: expected a size such as 64M or 2G")
    return int(number * factor)


def parse_int(text: str, flag: str, low: int, high: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise UsageError(f"invalid {flag} {text!r}: expected an integer from {low} to {high}")
    return value


def parse_cpuset(text: str, flag: str) -> str:
    """0-3,6 style lists; checked here, the kernel checks against the host's CPUs/nodes."""
    value = text.strip()
    for part in value.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise UsageError(f"invalid {flag} {text!r}: expected a list such as 0-3,6")
    return value


def _weight_device(text: str) -> dict:
    path, _, weight = text.rpartition(":")
    try:
        st = os.stat(path)
    except OSError as err:
        raise UsageError(f"--blkio-weight-device {text}: {path}: {err.strerror}") from None
    import stat
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"--blkio-weight-device {text}: {path} is not a block device")
    return {"major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
            "weight": parse_int(weight, "--blkio-weight-device weight", 10, 1000)}


def request_for_options(parsed) -> CgroupRequest:
    """The cgroup for this launch (action.py): limits from the flags, layout from /proc."""
    resources = resources_from_options(parsed)
    if not _controllers(resources):
        raise UsageError("--apply-cgroups: the file sets no limit satchel applies")
    return request(resources, os.getuid(), os.getpid(), _read("/proc/self/mountinfo"),
                   _read("/proc/self/cgroup"))


# -- the host's layout -> what to create and write -------------------------------------------------
def hierarchies(mountinfo: str) -> dict:
    """controller name -> mount point of its hierarchy; "" -> the cgroup2 mount point."""
    found: dict = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2":
            found.setdefault("", fields[4])
        elif fstype == "cgroup":
            for option in options:
                if option in V1_CONTROLLERS:
                    found.setdefault(option, fields[4])
    return found


def own_cgroups(proc_cgroup: str) -> dict:
    """/proc/self/cgroup -> controller -> path ("" -> the cgroup2 path)."""
    paths = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


V1_CONTROLLERS = ("memory", "cpu", "cpuset", "pids", "blkio", "devices")


def request(resources: dict, uid: int, pid: int, mountinfo: str, proc_cgroup: str,
            exists=os.path.exists, writable=None, path: str = "") -> CgroupRequest | None:
    """Decide the cgroup (pure but for the `exists`/`writable` probes, injectable for tests).

    path: OCI linux.cgroupsPath, absolute (below each hierarchy's root) or relative (below
    the caller's own cgroup), as runc reads it; missing parents are made by enter() and left
    by remove(), as runc leaves them. Without it: satchel-PID below the caller's cgroup."""
    mounts = hierarchies(mountinfo)
    own = own_cgroups(proc_cgroup)
    if resources.get("devices") and "devices" not in mounts:
        # cgroup v2 filters devices with a BPF program, which satchel does not load: say so
        from satchel import log
        log.warning("device rules (linux.resources.devices) are not enforced: this host has "
                    "no v1 devices hierarchy, and satchel loads no cgroup v2 device program")
        resources = {k: v for k, v in resources.items() if k != "devices"}
    needed = _controllers(resources)
    if not needed:
        return None  # device rules alone, not enforceable here (warned above)
    v1 = [c for c in needed if c in mounts]
    name = _cgroup_name(path) if path else f"satchel-{pid}"
    if path.startswith("/"):
        own = {}  # absolute: from the hierarchy's root
    if v1 and len(v1) == len(needed):
        if uid != 0:
            raise ContainerError("resource limits need root or cgroup v2: this host has "
                                 "cgroup v1, where only root may create cgroups")
        return _request_v1(resources, mounts, own, name, exists)
    if "" not in mounts or ("" not in own and not path.startswith("/")):
        missing = [c for c in needed if c not in mounts]
        raise ContainerError(f"resource limits: no cgroup hierarchy with the "
                             f"{', '.join(missing)} controller on this host")
    return _request_v2(resources, mounts[""], own.get("", "/"), name, uid, writable)


def _cgroup_name(path: str) -> str:
    """cgroupsPath below its base, checked: no `..` may climb out of the hierarchy."""
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts or ".." in parts:
        raise ContainerError(f"linux.cgroupsPath {path!r} is not a cgroup path")
    return "/".join(parts)


def _controllers(res: dict) -> list:
    out = []
    if res.get("memory"):
        out.append("memory")
    cpu = res.get("cpu") or {}
    if any(k in cpu for k in ("shares", "quota", "period", "realtimeRuntime")):
        out.append("cpu")
    if cpu.get("cpus") or cpu.get("mems"):
        out.append("cpuset")
    if res.get("pids"):
        out.append("pids")
    if res.get("blockIO"):
        out.append("blkio")
    if res.get("devices"):
        out.append("devices")
    return out


def _request_v1(res, mounts, own, name, exists) -> CgroupRequest:
    dirs, writes, procs = [], [], []
    for controller in _controllers(res):
        base = mounts[controller] + own.get(controller, "/").rstrip("/")
        path = f"{base}/{name}"
        dirs.append(path)
        for file, value in _v1_files(controller, res, base, exists):
            writes.append((f"{path}/{file}", value))
        procs.append(f"{path}/cgroup.procs")
    return CgroupRequest(1, dirs, writes, procs)


def _v1_files(controller: str, res: dict, parent: str, exists) -> list:
    out = []
    if controller == "memory":
        mem = res["memory"]
        if "limit" in mem:
            out.append(("memory.limit_in_bytes", str(mem["limit"])))
        if "reservation" in mem:
            out.append(("memory.soft_limit_in_bytes", str(mem["reservation"])))
        if "swap" in mem:  # memory + swap, as Docker's --memory-swap
            if not exists(f"{parent}/memory.memsw.limit_in_bytes"):
                raise ContainerError("--memory-swap: this kernel does not account swap "
                                     "(memory.memsw.limit_in_bytes is missing; swapaccount=1)")
            out.append(("memory.memsw.limit_in_bytes", str(mem["swap"])))
        if mem.get("disableOOMKiller"):
            out.append(("memory.oom_control", "1"))
        if "swappiness" in mem:
            out.append(("memory.swappiness", str(mem["swappiness"])))
    elif controller == "cpu":
        cpu = res["cpu"]
        if "shares" in cpu:
            out.append(("cpu.shares", str(cpu["shares"])))
        if "period" in cpu:
            out.append(("cpu.cfs_period_us", str(cpu["period"])))
        if "quota" in cpu:
            out.append(("cpu.cfs_quota_us", str(cpu["quota"])))
    elif controller == "cpuset":
        cpu = res["cpu"]
        # a new v1 cpuset is empty and takes no task until both are set: default to the
        # parent's ("inherit" is read at apply time)
        out.append(("cpuset.cpus", cpu.get("cpus") or "inherit"))
        out.append(("cpuset.mems", cpu.get("mems") or "inherit"))
    elif controller == "pids":
        limit = res["pids"].get("limit", -1)
        out.append(("pids.max", "max" if limit is None or limit <= 0 else str(limit)))
    elif controller == "devices":
        out += [device_rule(rule) for rule in res["devices"]]
    elif controller == "blkio":
        blkio = res["blockIO"]
        file = "blkio.weight" if exists(f"{parent}/blkio.weight") else "blkio.bfq.weight"
        if "weight" in blkio:
            if not exists(f"{parent}/{file}"):
                raise ContainerError("--blkio-weight: the I/O scheduler of this host has no "
                                     "weights (blkio.weight needs BFQ or CFQ)")
            out.append((file, str(blkio["weight"])))
        for dev in blkio.get("weightDevice") or ():
            out.append((file.replace("weight", "weight_device") if file == "blkio.weight"
                        else file, f"{dev['major']}:{dev['minor']} {dev['weight']}"))
    return out


def device_rule(rule: dict) -> tuple[str, str]:
    """(file, line) of one OCI device rule for the v1 devices controller, written in order:
    {"allow": false, "access": "rwm"} is `a` to devices.deny (nothing allowed), then each
    allowed `TYPE MAJOR:MINOR ACCESS` (a missing or negative number is `*`)."""
    kind = rule.get("type") or "a"
    if kind not in ("a", "b", "c"):
        raise ContainerError(f"device rule {rule}: type must be a, b or c")
    access = rule.get("access") or "rwm"
    if not access or set(access) - set("rwm"):
        raise ContainerError(f"device rule {rule}: access must be made of r, w and m")
    numbers = []
    for key in ("major", "minor"):
        value = rule.get(key)
        if value is not None and not isinstance(value, int):
            raise ContainerError(f"device rule {rule}: {key} must be a number")
        numbers.append("*" if value is None or value < 0 else str(value))
    line = "a" if kind == "a" else f"{kind} {numbers[0]}:{numbers[1]} {access}"
    return ("devices.allow" if rule.get("allow") else "devices.deny", line)


def _request_v2(res, mount, own_path, name, uid, writable) -> CgroupRequest:
    parent = mount + own_path.rstrip("/")
    writable = writable or (lambda p: os.access(p, os.W_OK))
    if uid != 0 and not writable(parent):
        raise ContainerError(f"resource limits: your cgroup {own_path} is not delegated to you "
                             "(cgroup v2 needs a delegated subtree, e.g. systemd-run --user "
                             "--scope -p Delegate=yes)")
    path = f"{parent}/{name}"
    enable = " ".join("+" + c for c in _v2_controllers(res))
    writes = []
    node = parent
    for part in name.split("/"):  # each level down to the new one hands the controllers on
        writes.append((f"{node}/cgroup.subtree_control", enable))
        node = f"{node}/{part}"
    mem = res.get("memory") or {}
    if "limit" in mem:
        writes.append((f"{path}/memory.max", str(mem["limit"])))
    if "reservation" in mem:
        writes.append((f"{path}/memory.low", str(mem["reservation"])))
    if "swap" in mem:
        swap = mem["swap"]
        value = "max" if swap < 0 else str(max(swap - mem.get("limit", 0), 0))
        writes.append((f"{path}/memory.swap.max", value))
    if mem.get("disableOOMKiller"):
        raise ContainerError("--oom-kill-disable: cgroup v2 has no way to disable the OOM "
                             "killer")
    cpu = res.get("cpu") or {}
    if "shares" in cpu:  # the conversion runc and crun use
        weight = 1 + ((cpu["shares"] - 2) * 9999) // 262142
        writes.append((f"{path}/cpu.weight", str(weight)))
    if "quota" in cpu:
        writes.append((f"{path}/cpu.max", f"{cpu['quota']} {cpu.get('period', CPU_PERIOD)}"))
    if cpu.get("cpus"):
        writes.append((f"{path}/cpuset.cpus", cpu["cpus"]))
    if cpu.get("mems"):
        writes.append((f"{path}/cpuset.mems", cpu["mems"]))
    if res.get("pids"):
        limit = res["pids"].get("limit", -1)
        writes.append((f"{path}/pids.max", "max" if limit <= 0 else str(limit)))
    blkio = res.get("blockIO") or {}
    if "weight" in blkio:
        writes.append((f"{path}/io.weight", f"default {blkio['weight']}"))
    for dev in blkio.get("weightDevice") or ():
        writes.append((f"{path}/io.weight", f"{dev['major']}:{dev['minor']} {dev['weight']}"))
    # subtree_control first (it applies to the parent), then the new directory's files
    return CgroupRequest(2, [path], writes, [f"{path}/cgroup.procs"])


def _v2_controllers(res: dict) -> list:
    names = {"memory": "memory", "cpu": "cpu", "cpuset": "cpuset", "pids": "pids",
             "blkio": "io"}
    return [names[c] for c in _controllers(res)]


# -- applying (executor) and removing (reaper) -----------------------------------------------------
def enter(data, pid: int | None = None) -> None:
    """Create the cgroup(s), write the limits, move this process in (CGROUP operation), or
    process `pid` (satchel oci's create moves its setup process while that builds its plan:
    the first write to a v1 cgroup.procs in a while waits ~10 ms for an RCU grace period)."""
    from satchel import fsutil  # here: `satchel oci delete` loads this module for remove()

    version, dirs, writes, procs = data
    for path in dirs:
        _make(path)
    for path, value in writes:
        if value == "inherit":  # v1 cpuset: the parent's cpus/mems
            value = _read(os.path.join(os.path.dirname(os.path.dirname(path)),
                                       os.path.basename(path))).strip()
        fsutil.write_kernel_file(path, value, "setting a resource limit", ContainerError)
    for path in procs:
        fsutil.write_kernel_file(path, str(pid or os.getpid()), "entering the container's cgroup",
                                 ContainerError)


def _make(path: str) -> None:
    """mkdir, with the missing parents an OCI cgroupsPath names. A new v1 cpuset takes no
    task and no child with cpus until its cpus and mems are set: a parent made here gets its
    own parent's (as runc does)."""
    from satchel import fsutil

    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        _make(parent)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if os.path.exists(f"{parent}/{name}"):
                value = _read(f"{os.path.dirname(parent)}/{name}").strip()
                fsutil.write_kernel_file(f"{parent}/{name}", value, "setting up a cgroup",
                                         ContainerError)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as err:
        raise ContainerError(f"creating cgroup {path}: {err.strerror}") from None


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as err:
        raise ContainerError(f"reading {path}: {err.strerror}") from None


def remove(dirs, timeout: float) -> list:
    """Kill whatever is left in the cgroups and remove them (deepest first); returns the
    warnings for those that could not be removed in `timeout` seconds."""
    import time
    deadline = time.monotonic() + timeout
    problems = []
    for path in sorted(dirs, key=len, reverse=True):
        while True:
            pids = _members(path)
            if pids is None:  # gone already
                break
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    problems.append(f"could not remove cgroup {path}: {err.strerror}")
                    break
                time.sleep(0.01)
    return problems


def _members(path: str) -> list | None:
    try:
        with open(f"{path}/cgroup.procs") as fh:
            return [int(line) for line in fh.read().split()]
    except FileNotFoundError:
        return None
    except OSError:
        return []
