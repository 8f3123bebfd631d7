"""A fake GPU driver tree on disk, for testing --nv/--rocm without a GPU.

What a real driver install gives the host, rebuilt from scratch in a temp dir:
- shared libraries compiled with gcc under the real sonames (libcuda.so.1, libnvidia-ml.so.1, ...),
  each exporting `int satchel_fake_value(void)` returning a number unique to that library, with
  the driver's file naming (libcuda.so.<version> plus the soname symlink);
- a private linker cache listing them (`ldconfig -i -X -C CACHE -f CONF`: the system cache and
  the aux cache are left alone);
- a fake `nvidia-smi` and `rocm-smi` (shell scripts, so they run in any image with /bin/sh);
- character devices made with mknod: /dev/nvidia0, nvidia1, nvidiactl, nvidia-uvm, the
  nvidia-caps directory (major 195, which no driver claims here, so open() fails with ENXIO:
  that tells "present" from "absent", ENOENT), and /dev/kfd, /dev/dri/renderD128 for ROCm.

`FakeDriver.env` holds the SATCHEL_* overrides that point satchel at the tree.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile

import pytest

DRIVER_VERSION = "580.00.01"
NVIDIA_MAJOR = 195
DRM_MAJOR = 226

# soname -> the number its satchel_fake_value() returns
NVIDIA_LIBS = {
    "libcuda.so.1": 101,
    "libnvidia-ml.so.1": 102,
    "libnvidia-ptxjitcompiler.so.1": 103,
    "libEGL_nvidia.so.0": 104,
    "libnvidia-opencl.so.1": 105,
}
ROCM_LIBS = {
    "libamdhip64.so.6": 201,
    "libhsa-runtime64.so.1": 202,
}
# in the cache, but in neither list: must never be bound
UNLISTED_LIBS = {"libnotadriver.so.1": 999}

# C source of the in-container probe: dlopen each soname given, print "soname=value" or
# "soname=missing"; then open each device path given after "--", print "path=errno-name".
PROBE_SOURCE = r"""
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        void *h = dlopen(argv[i], RTLD_NOW);
        int (*f)(void) = h ? (int (*)(void))dlsym(h, "satchel_fake_value") : NULL;
        if (f) printf("%s=%d\n", argv[i], f()); else printf("%s=missing\n", argv[i]);
    }
    for (i++; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        if (fd >= 0) { printf("%s=open\n", argv[i]); close(fd); }
        else printf("%s=%s\n", argv[i], errno == ENXIO ? "ENXIO" : errno == ENOENT ? "ENOENT"
                                      : strerror(errno));
    }
    return 0;
}
"""


class FakeDriver:
    def __init__(self, root: str):
        self.root = root
        self.libdir = os.path.join(root, "lib")
        self.bindir = os.path.join(root, "bin")
        self.devdir = os.path.join(root, "dev")
        self.cache = os.path.join(root, "ld.so.cache")
        self.probe = os.path.join(root, "gpuprobe")
        self.values = dict(NVIDIA_LIBS, **ROCM_LIBS, **UNLISTED_LIBS)

    @property
    def env(self) -> dict:
        return {"SATCHEL_LDCACHE": self.cache, "SATCHEL_GPU_DEVDIR": self.devdir,
                "SATCHEL_GPU_BINPATH": self.bindir}

    def lib_path(self, soname: str) -> str:
        return os.path.join(self.libdir, soname)


def _compile_lib(libdir: str, soname: str, value: int) -> None:
    stem = soname.split(".so")[0]
    real = f"{stem}.so.{DRIVER_VERSION}"
    src = os.path.join(libdir, f"{stem}.c")
    with open(src, "w") as fh:
        fh.write(f"int satchel_fake_value(void) {{ return {value}; }}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-Wl,-soname,{soname}", "-o",
                    os.path.join(libdir, real), src], check=True, capture_output=True)
    os.remove(src)
    os.symlink(real, os.path.join(libdir, soname))


def _script(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)


def build_fake_driver(root: str, devices: bool = True) -> FakeDriver:
    """Write the fake tree under root (devices need CAP_MKNOD, i.e. root)."""
    fake = FakeDriver(root)
    for path in (fake.libdir, fake.bindir, fake.devdir):
        os.makedirs(path, exist_ok=True)
    for soname, value in fake.values.items():
        _compile_lib(fake.libdir, soname, value)
    conf = os.path.join(root, "ld.so.conf")
    with open(conf, "w") as fh:
        fh.write(fake.libdir + "\n")
    subprocess.run(["ldconfig", "-i", "-X", "-C", fake.cache, "-f", conf], check=True,
                   capture_output=True)
    _script(os.path.join(fake.bindir, "nvidia-smi"),
            "#!/bin/sh\necho 'fake nvidia-smi: GPU 0: Satchel Fake GPU (driver "
            f"{DRIVER_VERSION})'\n")
    _script(os.path.join(fake.bindir, "rocm-smi"), "#!/bin/sh\necho 'fake rocm-smi'\n")
    # a regular file with a device's name: must not be taken for a device
    with open(os.path.join(fake.devdir, "nvidia7"), "w") as fh:
        fh.write("not a device\n")
    if devices:
        for name, minor in (("nvidia0", 0), ("nvidia1", 1), ("nvidiactl", 255),
                            ("nvidia-uvm", 250), ("nvidia-modeset", 254)):
            os.mknod(os.path.join(fake.devdir, name), 0o666 | 0o020000,
                     os.makedev(NVIDIA_MAJOR, minor))
        caps = os.path.join(fake.devdir, "nvidia-caps")
        os.makedirs(caps)
        os.mknod(os.path.join(caps, "nvidia-cap1"), 0o444 | 0o020000,
                 os.makedev(NVIDIA_MAJOR + 40, 1))
        os.mknod(os.path.join(fake.devdir, "kfd"), 0o666 | 0o020000,
                 os.makedev(NVIDIA_MAJOR, 200))
        os.makedirs(os.path.join(fake.devdir, "dri"))
        os.mknod(os.path.join(fake.devdir, "dri", "renderD128"), 0o666 | 0o020000,
                 os.makedev(DRM_MAJOR, 128))
    src = fake.probe + ".c"
    with open(src, "w") as fh:
        fh.write(PROBE_SOURCE)
    subprocess.run(["gcc", "-O1", "-o", fake.probe, src, "-ldl"], check=True,
                   capture_output=True)
    # readable by the unprivileged test user (mknod's mode went through the umask)
    for dirpath, _dirnames, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in files:
            path = os.path.join(dirpath, name)
            if stat.S_ISCHR(os.lstat(path).st_mode):
                os.chmod(path, 0o444 if name.startswith("nvidia-cap") else 0o666)
    return fake


@pytest.fixture(scope="session")
def fake_driver():
    """The whole fake tree (devices included: needs root), shared by the session."""
    if os.geteuid() != 0:
        pytest.skip("making fake GPU device nodes needs root (mknod)")
    if not shutil.which("gcc"):
        pytest.fail("gcc is missing: run ./scripts/install-deps")
    root = tempfile.mkdtemp(prefix="satchel-fakegpu-", dir="/tmp")
    try:
        yield build_fake_driver(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_driver_nodev(tmp_path_factory):
    """Libraries, cache and programs only: works without root."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is missing: run ./scripts/install-deps")
    return build_fake_driver(str(tmp_path_factory.mktemp("fakegpu")), devices=False)
