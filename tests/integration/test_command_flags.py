"""Apptainer's flags of the other commands, run: each refused flag ends in one FATAL line
that names it (never "unknown flag"), and the flags satchel implements do what Apptainer's
do (pull --name/--arch-variant, key --keysdir/--global/remove --both, build --userns).
The table of flags is tests/unit/test_apptainer_command_flags.py."""

import os
import sys

import pytest

from support.assertions import fatal
from support.fixtures_registry import sif_extract
from support.fixtures_users import run_satchel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unit"))
from test_apptainer_command_flags import APPTAINER_FLAGS, REFUSED, SAMPLE  # noqa: E402

# the command line each command needs to reach its flag checks (files need not exist)
ARGS = {"build": ["out.sif", "in.def"], "pull": ["out.sif", "docker://x/y"],
        "push": ["in.sif", "oras://x/y:1"], "verify": ["in.sif"]}
CASES = [(cmd, name) for cmd in sorted(REFUSED) for name in REFUSED[cmd]]


@pytest.mark.parametrize("cmd,name", CASES, ids=[f"{c}--{n}" for c, n in CASES])
def test_refused_flag_is_one_fatal_line_naming_it(cmd, name, test_user, user_tmp):
    kind = {f[0]: f[2] for f in APPTAINER_FLAGS[cmd]}[name]
    flag = [f"--{name}"] + ([] if kind == "bool" else [SAMPLE.get(name, "x")])
    result = run_satchel([cmd, *flag, *ARGS[cmd]], user=test_user, cwd=user_tmp)
    fatal(result, f"--{name} is not supported")
    assert "unknown flag" not in result.stderr


def test_pull_name_and_arch_variant(test_images, tmp_path):
    env = {"APPTAINER_CACHEDIR": str(tmp_path / "cache")}
    result = run_satchel(["pull", "--nohttps", "--name", str(tmp_path / "named.sif"),
                          "--arch", "arm64", "--arch-variant", "v8", test_images.uri("multi:latest")], env=env,
                         timeout=180)
    assert result.returncode == 0, result.stderr
    root = sif_extract(str(tmp_path / "named.sif"), str(tmp_path / "named.d"))
    assert open(os.path.join(root, "etc/arch")).read().strip() == "arm64"
    result = run_satchel(["pull", "--nohttps", "--arch", "arm64", "--arch-variant", "v5",
                          str(tmp_path / "v5.sif"), test_images.uri("multi:latest")], env=env)
    fatal(result, "arm64/v5")


def test_key_keysdir_global_and_remove_both(tmp_path):
    keys = tmp_path / "keys"
    env = {"HOME": str(tmp_path), "APPTAINER_KEYSDIR": "", "SATCHEL_CONFIG":
           str(tmp_path / "etc" / "satchel.conf")}
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "satchel.conf").write_text("")
    result = run_satchel(["key", "newpair", "--keysdir", str(keys), "-N", "Flag Test",
                          "-E", "f@example.org"], env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (keys / "pgp-public").exists() and (keys / "pgp-secret").exists()
    listed = run_satchel(["key", "list", "-d", str(keys)], env=env)
    assert "Flag Test" in listed.stdout, listed.stderr
    fpr = [l.split()[-1] for l in listed.stdout.splitlines() if "F:" in l][0]
    assert "Flag Test" not in run_satchel(["key", "list"], env=env).stdout  # ~/.apptainer/keys
    exported = str(tmp_path / "pub.asc")
    assert run_satchel(["key", "export", "-d", str(keys), exported], env=env).returncode == 0
    result = run_satchel(["key", "import", "--global", exported], env=env)
    assert result.returncode == 0, result.stderr
    assert "Flag Test" in run_satchel(["key", "list", "--global"], env=env).stdout
    fatal(run_satchel(["key", "list", "--global", "--secret"], env=env), "public keys only")
    result = run_satchel(["key", "remove", "--both", "--keysdir", str(keys), fpr], env=env)
    assert result.returncode == 0, result.stderr
    assert "Flag Test" not in run_satchel(["key", "list", "-d", str(keys)], env=env).stdout
    assert "Flag Test" not in run_satchel(["key", "list", "-s", "-d", str(keys)],
                                          env=env).stdout


def test_build_accepts_userns_flags(tmp_path):
    """--userns and --ignore-userns are accepted (a non-root build always uses a user
    namespace): the build runs."""
    definition = tmp_path / "d.def"
    definition.write_text("Bootstrap: scratch\n\n%setup\n    true\n")
    result = run_satchel(["build", "--userns", "--ignore-userns", "--ignore-fakeroot-command",
                          "--no-https", "--sandbox", str(tmp_path / "box"), str(definition)],
                         timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "box" / ".singularity.d").is_dir()
