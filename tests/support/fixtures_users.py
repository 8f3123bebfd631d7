"""The real non-root user the tests run satchel as, and helpers to run satchel.

CI runs as root. Unprivileged behaviour is only proven by running satchel as a real user, so the
session creates `satchel-test` (useradd) with a subuid/subgid range for --fakeroot, and makes
/dev/fuse usable by it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_satchel() -> str:
    """The satchel under test: $SATCHEL_BIN, else the one installed beside the Python running
    the tests (`pip install -e .` in any environment), else the first on PATH."""
    if os.environ.get("SATCHEL_BIN"):
        return os.environ["SATCHEL_BIN"]
    import sys
    beside = os.path.join(os.path.dirname(sys.executable), "satchel")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("satchel") or beside


SATCHEL = find_satchel()
TEST_USER = "satchel-test"


class User:
    def __init__(self, name: str):
        entry = pwd.getpwnam(name)
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.home = entry.pw_dir

    def env(self, extra: dict | None = None) -> dict:
        env = {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
        }
        env.update(extra or {})
        return env

    def argv(self, argv: list[str]) -> list[str]:
        """Wrap argv so it runs as this user with its groups (setpriv, no PAM, no shell)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "--"] + list(argv)


def ensure_user(name: str = TEST_USER) -> User:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    user = User(name)
    # subordinate ids for --fakeroot builds
    for path in ("/etc/subuid", "/etc/subgid"):
        line_start = f"{name}:"
        existing = open(path).read() if os.path.exists(path) else ""
        if not any(line.startswith(line_start) for line in existing.splitlines()):
            with open(path, "a") as fh:
                fh.write(f"{name}:{200000 + user.uid * 65536 % 100000000}:65536\n")
    if os.path.exists("/dev/fuse"):
        os.chmod("/dev/fuse", 0o666)
    return user


@pytest.fixture(scope="session")
def test_user() -> User:
    if os.geteuid() != 0:
        pytest.skip("creating the unprivileged test user needs root")
    return ensure_user()


@pytest.fixture
def user_tmp(test_user):
    """A fresh directory under /tmp owned by the test user (pytest's tmp_path is root-only)."""
    path = tempfile.mkdtemp(prefix="satchel-ut-", dir="/tmp")
    os.chown(path, test_user.uid, test_user.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_satchel(args: list[str], user: User | None = None, env: dict | None = None,
                timeout: float = 120, input: bytes | None = None, cwd: str | None = None,
                check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed satchel (as `user` if given) and capture its output as text."""
    argv = [SATCHEL] + list(args)
    if user is not None:
        argv = user.argv(argv)
        full_env = user.env(env)
        cwd = cwd or user.home
    else:
        full_env = dict(os.environ)
        full_env.update(env or {})
    proc = subprocess.run(argv, env=full_env, cwd=cwd, input=input, capture_output=True,
                          timeout=timeout)
    result = subprocess.CompletedProcess(proc.args, proc.returncode,
                                         proc.stdout.decode(errors="replace"),
                                         proc.stderr.decode(errors="replace"))
    if check and result.returncode != 0:
        raise AssertionError(f"satchel {args} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def satchel_bin() -> str:
    if not os.access(SATCHEL, os.X_OK):
        pytest.fail(f"{SATCHEL} missing: pip install -e . (or ./scripts/install-deps), or "
                    "set SATCHEL_BIN")
    return SATCHEL
