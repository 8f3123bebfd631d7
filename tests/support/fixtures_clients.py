"""The drop-in commands, and real Apptainer/Singularity clients driving them as a non-root user.

- `dropin_dir` (session): a world-readable directory where `satchel dropin` installed the real
  `apptainer`, `singularity` and `run-singularity` entry points.
- `client_tools`: a fresh logging-wrapper directory per test. Its `apptainer` and `singularity`
  append one JSON line per call (argv, cwd, the SINGULARITY*/APPTAINER* environment) to a
  log, then exec the real drop-in of the same name. A test puts it first on PATH for the
  client, runs the client as `satchel-test`, and reads back the exact command lines the client
  issued (`client_tools.calls()`); `client_tools.save(label)` prints them and keeps a copy
  under out/client-calls/ in the repository (ignored by git) for the record.
- `oci_style_sif` (session): a busybox image whose runscript is the one satchel's build writes
  for images converted from Docker/OCI (no ENTRYPOINT, CMD /bin/sh): cwltool's DockerRequirement
  means a Docker image, and cwltool uses `run`, whose arguments replace CMD.
- `instance_user` (session): a second real non-root user, `satchel-inst`, that only the
  instance tests use. Instances are per user and `instance stop --all` means all of them, so
  a user of their own keeps those tests and other sessions' `satchel-test` instances apart.
- `clients_python`: .venv-clients/bin/python3 (scripts/install-deps installs spython, cwltool
  and snakemake there); a missing environment fails the test: it is part of the suite.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile

import pytest

from support.fixtures_users import ROOT, SATCHEL

CLIENTS_VENV = os.path.join(ROOT, ".venv-clients")
CALLS_DIR = os.path.join(ROOT, "out", "client-calls")

_WRAPPER = """#!/usr/bin/python3 -IS
# logging wrapper made by tests/support/fixtures_clients.py: record, then run the drop-in
import json, os, sys
entry = {{"argv": [{name!r}] + sys.argv[1:], "cwd": os.getcwd(),
         "env": {{k: v for k, v in os.environ.items()
                 if k.startswith(("SINGULARITY", "APPTAINER"))}}}}
with open({log!r}, "a") as fh:
    fh.write(json.dumps(entry) + "\\n")
os.execv({real!r}, [{real!r}] + sys.argv[1:])
"""


@pytest.fixture(scope="session")
def dropin_dir():
    path = tempfile.mkdtemp(prefix="satchel-dropin-", dir="/tmp")
    os.chmod(path, 0o755)
    result = subprocess.run([SATCHEL, "dropin", path], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        pytest.fail(f"satchel dropin failed: {result.stderr}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class ClientTools:
    """The wrapper directory, its call log, and helpers to run a client as a user."""

    def __init__(self, base: str, dropins: str, user):
        self.base = base
        self.bin = os.path.join(base, "bin")
        self.log = os.path.join(base, "calls.jsonl")
        self.user = user
        os.makedirs(self.bin)
        for name in ("apptainer", "singularity"):
            path = os.path.join(self.bin, name)
            with open(path, "w") as fh:
                fh.write(_WRAPPER.format(name=name, log=self.log,
                                         real=os.path.join(dropins, name)))
            os.chmod(path, 0o755)
        open(self.log, "w").close()
        for path in (base, self.bin, self.log):
            os.chown(path, user.uid, user.gid)

    def env(self, extra: dict | None = None) -> dict:
        env = self.user.env({"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin"})
        env.update(extra or {})
        return env

    def run(self, argv: list[str], cwd: str, extra_env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.user.argv(argv), env=self.env(extra_env), cwd=cwd,
                              capture_output=True, timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode,
                                           proc.stdout.decode(errors="replace"),
                                           proc.stderr.decode(errors="replace"))

    def calls(self) -> list[dict]:
        with open(self.log) as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def command_lines(self) -> list[str]:
        """Each call as a shell command line, with the variables the client set for it."""
        lines = []
        for call in self.calls():
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(call["env"].items()))
            lines.append((env + " " if env else "") + shlex.join(call["argv"]))
        return lines

    def save(self, label: str) -> list[str]:
        lines = self.command_lines()
        os.makedirs(CALLS_DIR, exist_ok=True)
        with open(os.path.join(CALLS_DIR, label + ".txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"\n--- command lines issued by {label} ---")
        for line in lines:
            print(line)
        return lines


@pytest.fixture
def client_tools(test_user, dropin_dir):
    base = tempfile.mkdtemp(prefix="satchel-clients-", dir="/tmp")
    os.chmod(base, 0o755)
    tools = ClientTools(base, dropin_dir, test_user)
    yield tools
    shutil.rmtree(base, ignore_errors=True)


INSTANCE_USER = "satchel-inst"


@pytest.fixture(scope="session")
def instance_user(test_user):
    from support.fixtures_users import ensure_user
    return ensure_user(INSTANCE_USER)


@pytest.fixture
def instance_client_tools(instance_user, dropin_dir):
    base = tempfile.mkdtemp(prefix="satchel-clients-", dir="/tmp")
    os.chmod(base, 0o755)
    tools = ClientTools(base, dropin_dir, instance_user)
    yield tools
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def oci_style_sif(image_dir) -> str:
    from satchel.build.layout import oci_runscript
    from support.fixtures_runtime import busybox_tree, make_sif

    work = tempfile.mkdtemp(prefix="oci-tree-", dir=image_dir)
    tree = os.path.join(work, "tree")
    busybox_tree(tree)
    with open(os.path.join(tree, ".singularity.d", "runscript"), "w") as fh:
        fh.write(oci_runscript([], ["/bin/sh"]))
    os.chmod(os.path.join(tree, ".singularity.d", "runscript"), 0o755)
    with open(os.path.join(tree, "etc", "satchel-release"), "w") as fh:
        fh.write("satchel oci-style test image\n")
    path = os.path.join(image_dir, "oci-style.sif")
    make_sif(tree, path)
    shutil.rmtree(work)
    return path


@pytest.fixture(scope="session")
def clients_python() -> str:
    python = os.path.join(CLIENTS_VENV, "bin", "python3")
    if not os.access(python, os.X_OK):
        pytest.fail(f"{python} missing: run ./scripts/install-deps (it installs spython, "
                    "cwltool and snakemake there)")
    return python


def client_bin(name: str) -> str:
    return os.path.join(CLIENTS_VENV, "bin", name)
