"""`satchel exec --nv/--rocm` with a fake driver tree (tests/support/fixtures_gpu.py), run as the
real non-root user: inside the container a program dlopens the driver libraries by soname and
gets each library's own number, the device nodes are there (open fails with ENXIO: present, no
driver behind them), the driver program runs from PATH; without the flag none of it is there."""

from __future__ import annotations

import os

import pytest

from support.fixtures_gpu import NVIDIA_LIBS, ROCM_LIBS, UNLISTED_LIBS
from support.fixtures_users import run_satchel

pytestmark = pytest.mark.slow

NV_DEVICES = ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm",
              "/dev/nvidia-modeset", "/dev/nvidia-caps/nvidia-cap1"]


def probe(image, fake, user, flags, sonames, devices, env=None):
    """Run the probe in the container; returns ({name: result}, CompletedProcess)."""
    args = ["exec"] + flags + [image, fake.probe] + list(sonames) + ["--"] + list(devices)
    result = run_satchel(args, user=user, env=dict(fake.env, **(env or {})))
    assert result.returncode == 0, result.stderr
    seen = {}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition("=")
        seen[name] = value
    return seen, result


def test_nv_libraries_devices_and_smi(debian_sif, fake_driver, test_user):
    sonames = list(NVIDIA_LIBS) + list(UNLISTED_LIBS)
    seen, result = probe(debian_sif, fake_driver, test_user, ["--nv"], sonames,
                         NV_DEVICES + ["/dev/nvidia7"])
    for soname, value in NVIDIA_LIBS.items():
        assert seen[soname] == str(value), (soname, result.stdout)
    assert seen["libnotadriver.so.1"] == "missing"  # in the cache, not in nvliblist.conf
    for dev in NV_DEVICES:
        assert seen[dev] == "ENXIO", (dev, result.stdout)
    assert seen["/dev/nvidia7"] == "ENOENT"  # a regular file on the host, not a device
    assert "WARNING" not in result.stderr

    smi = run_satchel(["exec", "--nv", debian_sif, "nvidia-smi"], user=test_user,
                      env=fake_driver.env)
    assert smi.returncode == 0, smi.stderr
    assert smi.stdout.startswith("fake nvidia-smi: GPU 0: Satchel Fake GPU")
    where = run_satchel(["exec", "--nv", debian_sif, "sh", "-c",
                         "command -v nvidia-smi; echo $LD_LIBRARY_PATH; ls /.singularity.d/libs"],
                        user=test_user, env=fake_driver.env)
    lines = where.stdout.splitlines()
    assert lines[0] == "/usr/bin/nvidia-smi"
    assert lines[1].split(":")[0] == "/.singularity.d/libs"
    assert set(NVIDIA_LIBS) <= set(lines[2:])


def test_without_nv_nothing_is_there(debian_sif, fake_driver, test_user):
    seen, result = probe(debian_sif, fake_driver, test_user, [], list(NVIDIA_LIBS), NV_DEVICES)
    assert all(seen[s] == "missing" for s in NVIDIA_LIBS), result.stdout
    assert all(seen[d] == "ENOENT" for d in NV_DEVICES), result.stdout
    smi = run_satchel(["exec", debian_sif, "nvidia-smi"], user=test_user, env=fake_driver.env)
    assert smi.returncode != 0


def test_cuda_visible_devices_binds_only_that_gpu(debian_sif, fake_driver, test_user):
    seen, result = probe(debian_sif, fake_driver, test_user, ["--nv"], ["libcuda.so.1"],
                         ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"],
                         env={"CUDA_VISIBLE_DEVICES": "1"})
    assert seen == {"libcuda.so.1": "101", "/dev/nvidia0": "ENOENT", "/dev/nvidia1": "ENXIO",
                    "/dev/nvidiactl": "ENXIO"}, result.stdout
    env = run_satchel(["exec", "--nv", debian_sif, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"],
                      user=test_user, env=dict(fake_driver.env, CUDA_VISIBLE_DEVICES="1"))
    assert env.stdout.strip() == "0"  # the same GPU, numbered as CUDA inside will number it


def test_rocm(debian_sif, fake_driver, test_user):
    seen, result = probe(debian_sif, fake_driver, test_user, ["--rocm"],
                         list(ROCM_LIBS) + ["libcuda.so.1"], ["/dev/kfd", "/dev/dri/renderD128",
                                                             "/dev/nvidia0"])
    for soname, value in ROCM_LIBS.items():
        assert seen[soname] == str(value), result.stdout
    assert seen["libcuda.so.1"] == "missing"
    assert seen["/dev/kfd"] == "ENXIO" and seen["/dev/dri/renderD128"] == "ENXIO"
    assert seen["/dev/nvidia0"] == "ENOENT"


def test_no_driver_is_one_warning_and_the_container_runs(debian_sif, fake_driver, test_user):
    result = run_satchel(["exec", "--nv", debian_sif, "echo", "ran"], user=test_user,
                         env=dict(fake_driver.env, SATCHEL_LDCACHE="/etc/ld.so.cache"))
    assert result.returncode == 0
    assert result.stdout == "ran\n"
    warnings = [l for l in result.stderr.splitlines() if l.startswith("WARNING:")]
    assert len(warnings) == 1 and "--nv: no NVIDIA driver libraries found" in warnings[0]


def test_unreadable_library_list_is_fatal(debian_sif, fake_driver, test_user):
    result = run_satchel(["exec", "--nv", debian_sif, "true"], user=test_user,
                         env=dict(fake_driver.env, SATCHEL_NVLIBLIST="/nonexistent/nvlib.conf"))
    assert result.returncode == 255
    assert result.stderr.startswith("FATAL:   ") and result.stderr.count("\n") <= 2
    assert "/nonexistent/nvlib.conf" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_cache_is_fatal(debian_sif, fake_driver, test_user, user_tmp):
    bad = os.path.join(user_tmp, "bad.cache")
    with open(bad, "wb") as fh:
        fh.write(b"glibc-ld.so.cache1.1" + b"\xff" * 40)
    result = run_satchel(["exec", "--nv", debian_sif, "true"], user=test_user,
                         env=dict(fake_driver.env, SATCHEL_LDCACHE=bad))
    assert result.returncode == 255
    assert result.stderr.startswith(f"FATAL:   linker cache {bad}")


def test_nv_as_root(debian_sif, fake_driver):
    seen, result = probe(debian_sif, fake_driver, None, ["--nv"], ["libcuda.so.1"],
                         ["/dev/nvidia0"])
    assert seen == {"libcuda.so.1": "101", "/dev/nvidia0": "ENXIO"}, result.stdout


def test_settings_from_satchel_conf(debian_sif, fake_driver, test_user, user_tmp):
    """The admin's way: keys in satchel.conf (SATCHEL_CONFIG), no SATCHEL_* overrides."""
    from satchel.runtime.config import default_config_path
    conf = os.path.join(user_tmp, "satchel.conf")
    with open(default_config_path()) as src, open(conf, "w") as dst:
        dst.write(src.read())
        dst.write(f"\nld cache path = {fake_driver.cache}\n"
                  f"gpu device dir = {fake_driver.devdir}\n"
                  f"gpu binary path = {fake_driver.bindir}\n")
    args = ["exec", "--nv", debian_sif, fake_driver.probe, "libcuda.so.1", "--", "/dev/nvidia1"]
    result = run_satchel(args, user=test_user, env={"SATCHEL_CONFIG": conf})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["libcuda.so.1=101", "/dev/nvidia1=ENXIO"]
    smi = run_satchel(["exec", "--nv", debian_sif, "nvidia-smi"], user=test_user,
                      env={"SATCHEL_CONFIG": conf})
    assert smi.stdout.startswith("fake nvidia-smi")
