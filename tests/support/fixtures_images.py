"""Test images built by the real `satchel build`, shared by every test module.

- `busybox_sif` / `busybox_sandbox`: built once per session from tests/data/busybox.def into a
  world-readable directory under /tmp (pytest's tmp_path is root-only), so the non-root test
  user can run them. The image has /bin/busybox with applet links, /etc/satchel-release,
  %environment (SATCHEL_TEST_ENV), a %post addition to the environment (SATCHEL_POST_ENV),
  a runscript that echoes its arguments, labels, help, a %test, and
  /usr/local/bin/busybox-suid: a setuid-root busybox copy (`busybox-suid id -u` prints 0 only if
  setuid bits take effect in the container).
- `debian_sif`: Debian bookworm minbase from debootstrap (tests/data/debian.def), built once and
  cached across runs under $SATCHEL_TEST_CACHE (default /var/tmp/satchel-test-cache), rebuilt
  when the definition changes. Needs the network (deb.debian.org) the first time.
- `image_dir`: the session's world-readable directory, for tests that build more images.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
BUSYBOX_DEF = os.path.join(DATA, "busybox.def")
DEBIAN_DEF = os.path.join(DATA, "debian.def")
CACHE_ENV = "SATCHEL_TEST_CACHE"
DEFAULT_CACHE = "/var/tmp/satchel-test-cache"


def _build(args: list[str], timeout: float) -> None:
    from support.fixtures_users import run_satchel  # imported late: pytest loads it as a plugin
    result = run_satchel(["build"] + args, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"satchel build {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stderr[-4000:]}")


def _world_readable(path: str) -> None:
    os.chmod(path, 0o755)


@pytest.fixture(scope="session")
def image_dir():
    """A directory under /tmp that every user can read (removed at the end of the session)."""
    path = tempfile.mkdtemp(prefix="satchel-images-", dir="/tmp")
    _world_readable(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_sif(image_dir) -> str:
    path = os.path.join(image_dir, "busybox.sif")
    _build([path, BUSYBOX_DEF], timeout=300)
    _world_readable(path)
    return path


@pytest.fixture(scope="session")
def busybox_sandbox(image_dir) -> str:
    path = os.path.join(image_dir, "busybox-sandbox")
    _build(["--sandbox", path, BUSYBOX_DEF], timeout=300)
    _world_readable(path)
    return path


def cache_dir() -> str:
    path = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    os.makedirs(path, exist_ok=True)
    try:
        os.chmod(path, 0o755)
    except PermissionError:
        pass
    return path


def cached_image(definition: str, name: str, timeout: float = 1200) -> str:
    """Build `definition` into the cache once; key = the definition's content."""
    with open(definition, "rb") as fh:
        key = hashlib.sha256(fh.read()).hexdigest()[:16]
    directory = cache_dir()
    path = os.path.join(directory, f"{name}-{key}.sif")
    with open(os.path.join(directory, f".{name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several sessions on one machine build it once
        if not os.path.exists(path):
            for stale in os.listdir(directory):
                if stale.startswith(f"{name}-") and stale.endswith(".sif"):
                    os.unlink(os.path.join(directory, stale))
            _build([path, definition], timeout=timeout)
        _world_readable(path)
    return path


@pytest.fixture(scope="session")
def debian_sif() -> str:
    return cached_image(DEBIAN_DEF, "debian")
