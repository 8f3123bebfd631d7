"""--nv/--rocm driver discovery against a fake driver tree (real .so files, a real ldconfig
cache, real device nodes), and the linker-cache reader against the real ldconfig."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from satchel.errors import ConfigError
from satchel.hpc import gpu, ldcache, liblist
from support.fixtures_gpu import NVIDIA_LIBS, ROCM_LIBS


class FakeConfig:
    """The runtime Config's read interface: get(key, default)."""

    def __init__(self, values=None):
        self.values = dict(values or {})

    def get(self, key, default=None):
        return self.values.get(key, default)


def binds(kind, fake, environ_extra=None, config=None):
    environ = {"PATH": "/usr/bin:/bin"}
    environ.update(fake.env)
    environ.update(environ_extra or {})
    return gpu.gpu_binds(kind, config or FakeConfig(), environ=environ)


# --- the linker cache reader ---------------------------------------------------------------

def ldconfig_listing(cache: str) -> list[tuple[str, str]]:
    """(soname, path) pairs as `ldconfig -p -C cache` prints them, native ABI only."""
    out = subprocess.run(["ldconfig", "-p", "-C", cache], check=True, capture_output=True,
                         text=True).stdout
    pairs = []
    for line in out.splitlines()[1:]:
        left, _, path = line.strip().partition(" => ")
        name, _, desc = left.partition(" (")
        if "x86-64" in desc and "hwcap" not in desc:
            pairs.append((name, path))
    return pairs


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="compares x86-64 ldconfig output")
@pytest.mark.parametrize("which", ["system", "fake"])
def test_cache_reader_agrees_with_ldconfig(which, fake_driver_nodev):
    cache = "/etc/ld.so.cache" if which == "system" else fake_driver_nodev.cache
    mine = [(e.name, e.path) for e in ldcache.native_entries(ldcache.read(cache))]
    assert mine == ldconfig_listing(cache)
    assert len(mine) > 10


def test_cache_lists_fake_sonames(fake_driver_nodev):
    names = {e.name: e.path for e in ldcache.native_entries(ldcache.read(fake_driver_nodev.cache))}
    for soname in list(NVIDIA_LIBS) + list(ROCM_LIBS):
        assert names[soname] == fake_driver_nodev.lib_path(soname)


def test_lookup_matches_full_parse(fake_driver_nodev):
    data = ldcache.read_bytes(fake_driver_nodev.cache)
    full = ldcache.native_entries(ldcache.parse(data))
    first: dict[str, str] = {}
    for entry in full:
        first.setdefault(entry.name, entry.path)
    assert ldcache.lookup(data, list(first)) == list(first.items())
    assert ldcache.lookup(data, ["libcuda.so"]) == [
        ("libcuda.so.1", fake_driver_nodev.lib_path("libcuda.so.1"))]
    # a prefix must end at a dot: libcuda.s and libcuda.so.1.x match nothing
    assert ldcache.lookup(data, ["libcuda.s", "libcuda.so.1.x", "ibcuda.so"]) == []


def test_cache_abi_filter_drops_other_abis(fake_driver_nodev):
    entries = ldcache.read(fake_driver_nodev.cache)
    assert ldcache.native_entries(entries, abi=0x0A00) == []  # nothing is aarch64 here
    assert len(ldcache.native_entries(entries, abi=None)) >= len(NVIDIA_LIBS)


@pytest.mark.parametrize("mangle, message", [
    (lambda d: b"not a cache at all" + d[18:], "bad magic"),
    (lambda d: d[:30], "truncated header"),
    (lambda d: d[:60], "do not fit"),
    (lambda d: d[:48 + 24 * struct.unpack_from("=I", d, 20)[0]], "outside the file"),
    (lambda d: b"ld.so-1.7.0" + b"\0" * 40, "libc5 format"),
])
def test_corrupt_cache_is_a_config_error(mangle, message, fake_driver_nodev, tmp_path):
    bad = tmp_path / "bad.cache"
    bad.write_bytes(mangle(open(fake_driver_nodev.cache, "rb").read()))
    with pytest.raises(ConfigError, match=message):
        ldcache.read(str(bad))


def test_unreadable_cache_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="reading linker cache .*: Is a directory"):
        ldcache.read(str(tmp_path))


# --- the library lists -------------------------------------------------------------------

def test_packaged_lists_parse():
    nv = liblist.read(liblist.default_path("nv"))
    assert "libcuda.so" in nv.libraries and "libnvidia-ml.so" in nv.libraries
    assert nv.binaries[:2] == ["nvidia-smi", "nvidia-debugdump"]
    assert {"nvidia-cuda-mps-control", "nvidia-cuda-mps-server", "nvidia-persistenced"} <= set(
        nv.binaries)
    rocm = liblist.read(liblist.default_path("rocm"))
    assert "libamdhip64.so" in rocm.libraries and "rocm-smi" in rocm.binaries


def test_list_comments_blank_lines_and_duplicates():
    parsed = liblist.parse("# c\n\nlibcuda.so  # trailing\nnvidia-smi\nlibcuda.so\n")
    assert parsed.libraries == ["libcuda.so"]
    assert parsed.binaries == ["nvidia-smi"]


@pytest.mark.parametrize("line", ["/usr/bin/nvidia-smi", "../libcuda.so", "lib cuda.so", ".."])
def test_list_rejects_paths(line):
    with pytest.raises(ConfigError, match="is not a plain file name"):
        liblist.parse(f"libcuda.so\n{line}\n", "x.conf")


def test_missing_list_is_a_config_error(fake_driver_nodev, tmp_path):
    with pytest.raises(ConfigError, match="reading GPU library list .*nope.conf"):
        binds("nv", fake_driver_nodev, {"SATCHEL_NVLIBLIST": str(tmp_path / "nope.conf")})


# --- gpu_binds -----------------------------------------------------------------------------

def test_nv_finds_listed_libraries_by_soname(fake_driver):
    result = binds("nv", fake_driver)
    assert sorted(result.libraries) == sorted(fake_driver.lib_path(s) for s in NVIDIA_LIBS)
    assert {os.path.basename(p) for p in result.libraries} == set(NVIDIA_LIBS)
    assert result.warnings == []


def test_nv_binds_programs_into_usr_bin(fake_driver):
    result = binds("nv", fake_driver)
    assert result.binaries == [(os.path.join(fake_driver.bindir, "nvidia-smi"),
                                "/usr/bin/nvidia-smi")]


def test_nv_devices_all_by_default(fake_driver):
    result = binds("nv", fake_driver)
    names = [os.path.relpath(p, fake_driver.devdir) for p in result.devices]
    # nvidia7 is a regular file, not a device: ignored
    assert names == ["nvidia0", "nvidia1", "nvidia-caps", "nvidia-modeset", "nvidia-uvm",
                     "nvidiactl"]
    assert all(os.path.dirname(p) == fake_driver.devdir for p in result.devices)
    assert result.env == {}


def test_rocm_finds_its_own_libraries_and_devices(fake_driver):
    result = binds("rocm", fake_driver)
    fake_found = [p for p in result.libraries if p.startswith(fake_driver.libdir + "/")]
    assert sorted(os.path.basename(p) for p in fake_found) == sorted(ROCM_LIBS)
    # the private cache also holds the host's system dirs (ldconfig always adds them): a
    # real libdrm there is a genuine match of rocmliblist's libdrm.so / libdrm_amdgpu.so
    for other in set(result.libraries) - set(fake_found):
        assert os.path.basename(other).startswith(("libdrm.so.", "libdrm_amdgpu.so."))
    assert result.devices == [os.path.join(fake_driver.devdir, "kfd"),
                              os.path.join(fake_driver.devdir, "dri")]
    assert result.binaries == [(os.path.join(fake_driver.bindir, "rocm-smi"),
                                "/usr/bin/rocm-smi")]


def test_settings_come_from_config_when_env_is_unset(fake_driver):
    config = FakeConfig({"ld cache path": fake_driver.cache,
                         "gpu device dir": fake_driver.devdir,
                         "gpu binary path": fake_driver.bindir})
    result = gpu.gpu_binds("nv", config, environ={"PATH": "/usr/bin"})
    assert len(result.libraries) == len(NVIDIA_LIBS)
    assert len(result.devices) == 6
    assert result.binaries[0][0] == os.path.join(fake_driver.bindir, "nvidia-smi")


def test_env_override_beats_config(fake_driver, tmp_path):
    config = FakeConfig({"ld cache path": str(tmp_path / "absent.cache")})
    result = gpu.gpu_binds("nv", config, environ=dict(fake_driver.env))
    assert len(result.libraries) == len(NVIDIA_LIBS)


def test_custom_list_selects_what_is_bound(fake_driver, tmp_path):
    custom = tmp_path / "nvliblist.conf"
    custom.write_text("libcuda.so\n")
    result = binds("nv", fake_driver, {"SATCHEL_NVLIBLIST": str(custom)})
    assert result.libraries == [fake_driver.lib_path("libcuda.so.1")]
    assert result.binaries == []


def test_no_driver_is_one_warning_and_nothing_bound(fake_driver, tmp_path):
    empty_cache = "/etc/ld.so.cache"  # the real host: no NVIDIA driver installed here
    result = binds("nv", fake_driver, {"SATCHEL_LDCACHE": empty_cache})
    assert result.libraries == [] and result.devices == [] and result.binaries == []
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("--nv: no NVIDIA driver libraries found")


def test_generic_libraries_alone_are_no_driver(fake_driver, tmp_path):
    # rocmliblist names libdrm too; a host with libdrm but no ROCm has no ROCm driver
    custom = tmp_path / "rocm.conf"
    custom.write_text("libnotadriver.so\nlibhsa-runtime64.so.9\n")
    result = binds("rocm", fake_driver, {"SATCHEL_ROCMLIBLIST": str(custom)})
    assert result.libraries == [] and result.devices == []
    assert len(result.warnings) == 1 and "no AMD ROCm driver" in result.warnings[0]


def test_absent_cache_file_is_no_driver(fake_driver, tmp_path):
    result = binds("rocm", fake_driver, {"SATCHEL_LDCACHE": str(tmp_path / "none")})
    assert result.libraries == [] and len(result.warnings) == 1
    assert "--rocm: no AMD ROCm driver" in result.warnings[0]


def test_driver_without_devices_warns(fake_driver, tmp_path):
    result = binds("nv", fake_driver, {"SATCHEL_GPU_DEVDIR": str(tmp_path)})
    assert len(result.libraries) == len(NVIDIA_LIBS)
    assert result.devices == []
    assert len(result.warnings) == 1 and "no nvidia* devices" in result.warnings[0]


def test_missing_device_dir_is_a_config_error(fake_driver, tmp_path):
    with pytest.raises(ConfigError, match="listing GPU device directory"):
        binds("nv", fake_driver, {"SATCHEL_GPU_DEVDIR": str(tmp_path / "nodir")})


def test_stale_cache_entry_is_skipped(fake_driver_nodev):
    # a driver upgrade removed a file the cache still lists: it must not be bound
    lib = fake_driver_nodev.lib_path("libnvidia-ml.so.1")
    real = os.path.realpath(lib)
    os.rename(real, real + ".moved")
    try:
        data = ldcache.read_bytes(fake_driver_nodev.cache)
        found = gpu.find_libraries(["libcuda.so", "libnvidia-ml.so"], data, "cache")
        assert found == [fake_driver_nodev.lib_path("libcuda.so.1")]
    finally:
        os.rename(real + ".moved", real)


def test_unknown_kind():
    with pytest.raises(ConfigError, match="unknown GPU kind 'amd'"):
        gpu.gpu_binds("amd", None, environ={})


# --- which GPUs: NVIDIA_VISIBLE_DEVICES / Slurm / CUDA_VISIBLE_DEVICES ---------------------

@pytest.mark.parametrize("environ, chosen, env", [
    ({}, [0, 1, 2, 3], {}),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, [0, 1, 2, 3], {}),
    ({"NVIDIA_VISIBLE_DEVICES": "2,0"}, [2, 0], {}),
    ({"NVIDIA_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "3"}, [1], {}),
    ({"CUDA_VISIBLE_DEVICES": "2,0"}, [2, 0], {"CUDA_VISIBLE_DEVICES": "1,0"}),
    ({"CUDA_VISIBLE_DEVICES": "3"}, [3], {"CUDA_VISIBLE_DEVICES": "0"}),
    ({"CUDA_VISIBLE_DEVICES": "GPU-8f1e-uuid"}, [0, 1, 2, 3], {}),
    ({"CUDA_VISIBLE_DEVICES": ""}, [0, 1, 2, 3], {}),
    ({"SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, [2, 3], {}),
    ({"SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "2,3"}, [2, 3],
     {"CUDA_VISIBLE_DEVICES": "0,1"}),
    ({"SLURM_JOB_GPUS": "1"}, [1], {}),
])
def test_gpu_selection(environ, chosen, env):
    got, got_env, warnings = gpu.select_nvidia_gpus(environ, [0, 1, 2, 3])
    assert (got, got_env, warnings) == (chosen, env, [])


def test_gpu_selection_warns_about_absent_gpu():
    got, env, warnings = gpu.select_nvidia_gpus({"CUDA_VISIBLE_DEVICES": "1,5"}, [0, 1])
    assert got == [1] and env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert warnings == ["CUDA_VISIBLE_DEVICES names GPU 5, but there is no /dev/nvidia5"]


@pytest.mark.parametrize("value", ["none", "void", ""])
def test_no_visible_devices_binds_libraries_only(fake_driver, value):
    result = binds("nv", fake_driver, {"NVIDIA_VISIBLE_DEVICES": value})
    assert result.devices == [] and result.warnings == []
    assert len(result.libraries) == len(NVIDIA_LIBS)


def test_cuda_visible_devices_binds_one_gpu_and_shared_nodes(fake_driver):
    result = binds("nv", fake_driver, {"CUDA_VISIBLE_DEVICES": "1"})
    names = [os.path.basename(p) for p in result.devices]
    assert names == ["nvidia1", "nvidia-caps", "nvidia-modeset", "nvidia-uvm", "nvidiactl"]
    assert result.env == {"CUDA_VISIBLE_DEVICES": "0"}


# --- exec-path cost -------------------------------------------------------------------------

HEAVY = ("json", "logging", "argparse", "subprocess", "pathlib", "dataclasses", "enum",
         "typing", "re", "shlex", "tempfile", "shutil", "uuid", "hashlib")


def test_gpu_module_imports_no_heavy_stdlib(fake_driver_nodev):
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(gpu.__file__))))
    code = (f"import sys, os; sys.path.insert(0, {src!r}); before = set(sys.modules); "
            "from satchel.hpc import gpu; "
            "r = gpu.gpu_binds('nv', None, environ=dict(os.environ)); "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    env = dict(os.environ, **fake_driver_nodev.env)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, env=env, check=True).stdout
    loaded = set(out.split())
    assert "satchel.hpc.gpu" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_rocm_on_a_host_with_only_libdrm(fake_driver, tmp_path):
    # a host of its own with libdrm and libdrm_amdgpu in its linker cache and no ROCm (the
    # host's /etc/ld.so.cache may or may not list libdrm: the test must not depend on it)
    from support.fixtures_gpu import _compile_lib
    libdir = tmp_path / "lib"
    libdir.mkdir()
    for soname in ("libdrm.so.2", "libdrm_amdgpu.so.1"):
        _compile_lib(str(libdir), soname, 7)
    conf, cache = tmp_path / "ld.so.conf", tmp_path / "ld.so.cache"
    conf.write_text(f"{libdir}\n")
    subprocess.run(["ldconfig", "-i", "-X", "-C", str(cache), "-f", str(conf)], check=True,
                   capture_output=True)
    listed = {n for n, _ in ldcache.lookup(ldcache.read_bytes(str(cache)),
                                           ["libdrm.so", "libdrm_amdgpu.so"])}
    assert listed == {"libdrm.so.2", "libdrm_amdgpu.so.1"}  # the generic libraries are there
    result = binds("rocm", fake_driver, {"SATCHEL_LDCACHE": str(cache)})
    assert result.libraries == [] and result.devices == [] and result.binaries == []
    assert len(result.warnings) == 1 and result.warnings[0].startswith("--rocm: no AMD ROCm")
