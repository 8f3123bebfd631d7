"""Drop-in names and versions: the `--version` line every client parses, and `satchel dropin`.

The version checks read the output the way each client does (the rules are summarised in
satchel/compat.py); tests/integration/test_clients.py then runs the clients' own code.
"""

import os
import re
import subprocess

import pytest
from packaging.version import Version

from support.fixtures_users import SATCHEL, run_satchel

from satchel import __version__, compat
from satchel.errors import SatchelError, UsageError

# cwltool / cwl-utils: re.match on the stripped stdout of `singularity --version`
CWLTOOL_PATTERN = r"(.+) version ([0-9\.]+)"


def _run(path, *args):
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def dropin_dir(tmp_path):
    compat.install_dropins(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", ["apptainer", "singularity"])
def test_version_line_shape(dropin_dir, name):
    result = _run(str(dropin_dir / name), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == compat.version_line(name, __version__) + "\n"
    assert result.stdout.startswith(f"{name} version {compat.UPSTREAM[name]}+satchel.")
    assert result.stderr == ""


def test_cwltool_reads_singularity_3_11_and_takes_modern_paths(dropin_dir):
    out = _run(str(dropin_dir / "singularity"), "--version").stdout.strip()
    match = re.match(CWLTOOL_PATTERN, out)
    assert match is not None
    flavor, version = match.group(1), Version(match.group(2))
    assert flavor == "singularity"
    assert version == Version(compat.UPSTREAM["singularity"])
    # run --no-eval (>= 3.10), --mount (>= 3.9), overlapping binds (>= 3.4), --home (>= 3.1)
    assert version >= Version("3.10")


def test_snakemake_reads_apptainer_at_least_1(dropin_dir):
    out = _run(str(dropin_dir / "apptainer"), "--version").stdout
    assert out.startswith("apptainer")
    last = out.rsplit(" ", 1)[-1].removeprefix("v")
    assert Version(last) >= Version("1.0.0")   # the whole word parses, local part included
    assert Version(last).local == f"satchel.{__version__}"


def test_spython_sees_version_3_for_modern_instance_stop(dropin_dir):
    out = _run(str(dropin_dir / "singularity"), "--version").stdout
    assert "version 3" in out.splitlines()[0]


def test_version_subcommand_prints_number_only(dropin_dir):
    result = _run(str(dropin_dir / "apptainer"), "version")
    assert result.stdout.strip() == compat.upstream_version("apptainer", __version__)


def test_satchel_name_keeps_own_version():
    result = run_satchel(["--version"])
    assert result.stdout == f"satchel version {__version__}\n"


def test_dropin_scripts_are_lean_launchers(dropin_dir):
    for name in compat.DROPIN_NAMES:
        path = dropin_dir / name
        assert os.access(path, os.X_OK)
        first = path.read_bytes().split(b"\n", 1)[0]
        assert first.endswith(b" -IS") and first.startswith(b"#!/")
        assert compat.is_satchel_launcher(str(path))


def test_dropin_keeps_foreign_file_unless_forced(tmp_path):
    foreign = tmp_path / "singularity"
    foreign.write_text("#!/bin/sh\necho real singularity\n")
    with pytest.raises(SatchelError, match="not written by satchel"):
        compat.install_dropins(str(tmp_path))
    assert foreign.read_text().endswith("echo real singularity\n")
    assert not (tmp_path / "apptainer").exists()   # nothing half-installed
    compat.install_dropins(str(tmp_path), force=True)
    assert compat.is_satchel_launcher(str(foreign))


def test_dropin_replaces_symlink_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    (tmp_path / "apptainer").symlink_to(target)
    compat.install_dropins(str(tmp_path), names=("apptainer",), force=True)
    assert target.read_text() == "keep me\n"
    assert not (tmp_path / "apptainer").is_symlink()


def test_dropin_reinstall_over_own_scripts_needs_no_force(dropin_dir):
    compat.install_dropins(str(dropin_dir))


def test_dropin_rejects_unknown_name_and_missing_dir(tmp_path):
    with pytest.raises(UsageError):
        compat.install_dropins(str(tmp_path), names=("docker",))
    with pytest.raises(SatchelError, match="does not exist"):
        compat.install_dropins(str(tmp_path / "missing"))


@pytest.mark.parametrize("args, message", [
    (["dropin"], "invalid args"),
    (["dropin", "/nonexistent-dir"], "does not exist"),
    (["dropin", "--name", "podman", "/tmp"], "unknown drop-in name"),
])
def test_dropin_cli_fatal_lines(args, message):
    result = run_satchel(args)
    assert result.returncode == 255
    assert result.stderr.startswith("FATAL:   ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_dropin_cli_installs_selected_names(tmp_path):
    result = run_satchel(["dropin", "--name", "apptainer", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["apptainer"]

