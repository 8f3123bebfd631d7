"""--nv / --rocm: which host driver files a container needs to use the GPUs.

The runtime calls `gpu_binds(kind, config)` while building its plan and applies the answer:
  libraries  host paths; each is bound at /.singularity.d/libs/<basename> (the basename is the
             soname from the linker cache), and that directory goes first on LD_LIBRARY_PATH
  binaries   (host path, container path) pairs; driver programs land in /usr/bin, on any PATH
  devices    host device paths, each a direct child of the device directory, bound at
             /dev/<basename> (nvidia-caps is a directory and is bound whole)
  env        variables to set inside (CUDA_VISIBLE_DEVICES renumbered when only some GPUs
             are bound, see select_nvidia_gpus)
  warnings   one-line messages for the runtime to print with log.warning

The host facts come from settings so tests can point them at a fake driver tree; each has an
environment override that wins over satchel.conf (documented in README, "HPC" section):

  satchel.conf key    env override          default
  ld cache path       SATCHEL_LDCACHE       /etc/ld.so.cache
  gpu device dir      SATCHEL_GPU_DEVDIR    /dev
  nvliblist path      SATCHEL_NVLIBLIST     <package>/data/nvliblist.conf
  rocmliblist path    SATCHEL_ROCMLIBLIST   <package>/data/rocmliblist.conf
  gpu binary path     SATCHEL_GPU_BINPATH   host $PATH, then /usr/local/sbin:/usr/local/bin:
                                            /usr/sbin:/usr/bin:/sbin:/bin

The overrides grant nothing: the unprivileged runtime binds only what the caller can already
open, and as root the caller could bind those files with -B anyway.

Missing driver: one warning, and the container runs without GPU support (Apptainer's
behaviour). Malformed settings (an unreadable list, a corrupt cache) are ConfigErrors.
"""

from __future__ import annotations

import os
import stat

from satchel.errors import ConfigError
from satchel.hpc import ldcache, liblist

DEFAULT_LDCACHE = "/etc/ld.so.cache"
DEFAULT_DEVDIR = "/dev"
STANDARD_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
CONTAINER_BIN_DIR = "/usr/bin"

_KINDS = {
    # kind: (flag, vendor, list-path key, list env override)
    "nv": ("--nv", "NVIDIA", "nvliblist path", "SATCHEL_NVLIBLIST"),
    "rocm": ("--rocm", "AMD ROCm", "rocmliblist path", "SATCHEL_ROCMLIBLIST"),
}
# The driver counts as present only if one of its own libraries is: the lists also name
# generic ones (libdrm for ROCm) that many hosts without the driver have.
_DRIVER_MARKERS = {
    "nv": ("libcuda.so", "libnvidia-ml.so"),
    "rocm": ("libhsa-runtime64.so", "libamdhip64.so", "libhsakmt.so"),
}


class GpuBinds:
    """What the runtime must bind and set for one GPU vendor (see the module docstring)."""

    __slots__ = ("libraries", "binaries", "devices", "env", "warnings")

    def __init__(self):
        self.libraries: list[str] = []
        self.binaries: list[tuple[str, str]] = []
        self.devices: list[str] = []
        self.env: dict[str, str] = {}
        self.warnings: list[str] = []

    def __repr__(self) -> str:
        return (f"GpuBinds(libraries={self.libraries!r}, binaries={self.binaries!r}, "
                f"devices={self.devices!r}, env={self.env!r}, warnings={self.warnings!r})")


def setting(config, key: str, env_name: str, default: str, environ=None) -> str:
    """A path setting: the env override if set and non-empty, else satchel.conf, else default."""
    environ = os.environ if environ is None else environ
    value = environ.get(env_name)
    if value:
        return value
    if config is not None:
        value = config.get(key, None)
        if value:
            return str(value)
    return default


def default_bin_path(environ) -> str:
    dirs = [d for d in environ.get("PATH", "").split(":") if d]
    dirs += [d for d in STANDARD_BIN_DIRS if d not in dirs]
    return ":".join(dirs)


def find_libraries(wanted: list[str], cache_data: bytes, cache_path: str) -> list[str]:
    """Host paths of the cache's libraries whose soname is, or starts with, a wanted name + '.'.

    Entries whose file is gone (a stale cache after a driver upgrade) are skipped so the
    runtime never binds a dangling path. The path is the cache's own (dir/soname, usually a
    symlink): its basename is the soname the container's programs will dlopen.
    """
    return [path for _name, path in ldcache.lookup(cache_data, wanted, cache_path)
            if os.path.exists(path)]


def find_binaries(names: list[str], search_path: str) -> list[tuple[str, str]]:
    """(host path, /usr/bin/<name>) for each driver program found executable on search_path."""
    found = []
    dirs = [d for d in search_path.split(":") if d]
    for name in names:
        for directory in dirs:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                found.append((candidate, f"{CONTAINER_BIN_DIR}/{name}"))
                break
    return found


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _parse_indices(value: str) -> list[int] | None:
    """'0,2' -> [0, 2]; None when any item is not a plain index (a UUID, MIG name...)."""
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item.isdigit():
            return None
        if int(item) not in out:
            out.append(int(item))
    return out


def select_nvidia_gpus(environ, present: list[int]) -> tuple[list[int], dict[str, str], list[str]]:
    """Which /dev/nvidiaN to bind, the env to set inside, and warnings.

    Precedence, first that is set:
    1. NVIDIA_VISIBLE_DEVICES (the container toolkit's variable: GPU indices, "all", or
       "none"/"void"/"" for no GPU devices). Indices are the device minor numbers, which is
       what nvidia-smi's index is on ordinary installs.
    2. SLURM_STEP_GPUS / SLURM_JOB_GPUS: Slurm's global GPU indices for this step. With
       ConstrainDevices Slurm already renumbered CUDA_VISIBLE_DEVICES, so it passes as is;
       if CUDA_VISIBLE_DEVICES equals the global list we renumber it like case 3.
    3. CUDA_VISIBLE_DEVICES with plain indices: bind those GPUs only. CUDA numbers the GPUs
       it can open from 0, so inside the container the variable is rewritten to the new
       numbers of the same GPUs ("2,0" -> "1,0" when /dev/nvidia0 and /dev/nvidia2 are bound).
       UUIDs or MIG names cannot be mapped without NVML: all GPUs are bound and the variable
       passes unchanged.
    4. Otherwise all GPUs.
    """
    warnings: list[str] = []
    env: dict[str, str] = {}

    def pick(indices: list[int], source: str) -> list[int]:
        chosen = []
        for index in indices:
            if index in present:
                chosen.append(index)
            else:
                warnings.append(f"{source} names GPU {index}, but there is no /dev/nvidia{index}")
        return chosen

    def renumbered(order: list[int], bound: list[int]) -> str:
        ranks = sorted(bound)
        return ",".join(str(ranks.index(i)) for i in order if i in ranks)

    nvd = environ.get("NVIDIA_VISIBLE_DEVICES")
    if nvd is not None:
        value = nvd.strip().lower()
        if value in ("", "none", "void"):
            return [], env, warnings
        if value == "all":
            return list(present), env, warnings
        indices = _parse_indices(value)
        if indices is None:
            warnings.append(f"NVIDIA_VISIBLE_DEVICES={nvd!r} is not a list of GPU indices; "
                            "binding all GPUs")
            return list(present), env, warnings
        return pick(indices, "NVIDIA_VISIBLE_DEVICES"), env, warnings

    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    slurm = environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS")
    if slurm:
        indices = _parse_indices(slurm)
        if indices is not None:
            chosen = pick(indices, "SLURM_STEP_GPUS")
            if cvd is not None and _parse_indices(cvd) == indices:
                env["CUDA_VISIBLE_DEVICES"] = renumbered(indices, chosen)
            return chosen, env, warnings
    if cvd is not None:
        indices = _parse_indices(cvd)
        if indices is None:
            return list(present), env, warnings
        chosen = pick(indices, "CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = renumbered(indices, chosen)
        return chosen, env, warnings
    return list(present), env, warnings


def nvidia_devices(devdir: str, environ) -> tuple[list[str], dict[str, str], list[str]]:
    """The NVIDIA device nodes to bind: the selected /dev/nvidiaN plus the shared control nodes
    (nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset) and the nvidia-caps* directories.
    Only character devices count, so a stray regular file named nvidia0 is ignored."""
    try:
        names = sorted(os.listdir(devdir))
    except OSError as err:
        raise ConfigError(f"listing GPU device directory {devdir}: {err.strerror or err}") from None
    gpus: dict[int, str] = {}
    shared: list[str] = []
    for name in names:
        if not name.startswith("nvidia"):
            continue
        path = os.path.join(devdir, name)
        suffix = name[len("nvidia"):]
        if suffix.isdigit():
            if _is_char_device(path):
                gpus[int(suffix)] = path
        elif name.startswith("nvidia-caps"):
            if os.path.isdir(path):
                shared.append(path)
        elif _is_char_device(path):
            shared.append(path)
    if _devices_disabled(environ):
        return [], {}, []
    chosen, env, warnings = select_nvidia_gpus(environ, sorted(gpus))
    return [gpus[i] for i in sorted(chosen)] + shared, env, warnings


def rocm_devices(devdir: str) -> list[str]:
    """/dev/kfd (the compute interface) and /dev/dri (render nodes). ROCm selects GPUs inside
    the process (ROCR_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES pass through unchanged)."""
    found = []
    kfd = os.path.join(devdir, "kfd")
    if _is_char_device(kfd):
        found.append(kfd)
    dri = os.path.join(devdir, "dri")
    if os.path.isdir(dri):
        found.append(dri)
    return found


def gpu_binds(kind: str, config, environ=None) -> GpuBinds:
    """Discover the host driver for kind "nv" or "rocm" (see the module docstring)."""
    if kind not in _KINDS:
        raise ConfigError(f"unknown GPU kind {kind!r}: expected 'nv' or 'rocm'")
    environ = os.environ if environ is None else environ
    flag, vendor, list_key, list_env = _KINDS[kind]
    result = GpuBinds()

    wanted = liblist.read(setting(config, list_key, list_env, liblist.default_path(kind), environ))
    cache_path = setting(config, "ld cache path", "SATCHEL_LDCACHE", DEFAULT_LDCACHE, environ)
    devdir = setting(config, "gpu device dir", "SATCHEL_GPU_DEVDIR", DEFAULT_DEVDIR, environ)
    bin_path = setting(config, "gpu binary path", "SATCHEL_GPU_BINPATH",
                       default_bin_path(environ), environ)

    if os.path.exists(cache_path):
        result.libraries = find_libraries(wanted.libraries, ldcache.read_bytes(cache_path),
                                          cache_path)
    result.binaries = find_binaries(wanted.binaries, bin_path)
    if kind == "nv":
        result.devices, result.env, result.warnings = nvidia_devices(devdir, environ)
    else:
        result.devices = rocm_devices(devdir)

    if not any(_is_marker(path, kind) for path in result.libraries):
        # One line, and the container still runs: a job script with --nv must not die on a
        # login node or a CPU-only partition.
        result = GpuBinds()
        result.warnings.append(f"{flag}: no {vendor} driver libraries found in the linker "
                               f"cache {cache_path}; running without GPU support")
    elif not result.devices and not (kind == "nv" and _devices_disabled(environ)):
        where = "nvidia*" if kind == "nv" else "kfd or dri"
        result.warnings.append(f"{flag}: {vendor} driver libraries found but no {where} "
                               f"devices in {devdir}; GPUs will not be usable inside")
    return result


def _is_marker(path: str, kind: str) -> bool:
    name = os.path.basename(path)
    return any(name == m or name.startswith(m + ".") for m in _DRIVER_MARKERS[kind])


def _devices_disabled(environ) -> bool:
    value = environ.get("NVIDIA_VISIBLE_DEVICES")
    return value is not None and value.strip().lower() in ("", "none", "void")
