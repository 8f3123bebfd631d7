"""The exec path stays lean: no heavy standard-library module is imported by its modules.

Measured with `python3 -X importtime` in a fresh interpreter that imports exactly what
`satchel exec` loads before it execs the payload (DESIGN.md: "Rules that keep the exec path
fast"). A forbidden module anywhere in that import tree fails the test with its importer chain.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXEC_PATH_MODULES = [
    "satchel.cli.main", "satchel.cli.commands.action", "satchel.image.formats",
    "satchel.image.sif", "satchel.runtime.config", "satchel.runtime.host",
    "satchel.runtime.plan", "satchel.runtime.binds", "satchel.runtime.environment",
    "satchel.runtime.executor", "satchel.runtime.linux", "satchel.runtime.underlay",
    "satchel.runtime.fuse", "satchel.runtime.loopdev", "satchel.runtime.etcfiles",
    "satchel.runtime.session", "satchel.runtime.cfunc", "satchel.runtime.sqfs_server",
    "satchel.runtime.sqfs_prefetch", "satchel.runtime.elfdeps", "satchel.runtime.launch",
    "satchel.pathwalk",
]
FORBIDDEN = {"json", "logging", "argparse", "subprocess", "pathlib", "dataclasses", "enum",
             "typing", "re", "shlex", "tempfile", "shutil", "uuid", "hashlib", "signal",
             "threading", "socket", "csv", "datetime", "inspect", "traceback", "importlib.metadata",
             "tomllib"}
# the launcher reaches libc through runtime/cfunc.py (_ctypes): `import ctypes` costs ~7 ms
LAUNCHER_ONLY_FORBIDDEN = {"ctypes"}


def _imported(modules: list[str]) -> list[tuple[str, int]]:
    code = "import sys; sys.path.insert(0, %r)\n" % os.path.join(ROOT, "src")
    code += "".join(f"import {m}\n" for m in modules)
    proc = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", "-c", code],
                          capture_output=True, text=True, check=True)
    found = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "imported package" in line:
            continue
        cumulative = parts[1].strip()
        if cumulative.isdigit():
            found.append((parts[2].strip(), int(cumulative)))
    return found


def test_exec_path_imports_no_heavy_module():
    imported = _imported(EXEC_PATH_MODULES)
    names = {name for name, _ in imported}
    assert "satchel.runtime.executor" in names  # the measurement saw the exec path
    bad = sorted(names & (FORBIDDEN | LAUNCHER_ONLY_FORBIDDEN))
    assert not bad, f"the exec path imports {bad}: import them lazily inside functions"


def test_fuse_server_process_is_lean_too():
    # sqfs_server runs in its own forked process, which must be ready before the mount
    names = {name for name, _ in _imported(["satchel.runtime.sqfs_server"])}
    assert "satchel.runtime.cfunc" in names
    assert not names & (FORBIDDEN | LAUNCHER_ONLY_FORBIDDEN)


def test_measurement_would_see_a_forbidden_module():
    names = {name for name, _ in _imported(["satchel.runtime.plan", "json"])}
    assert "json" in names and "satchel.runtime.plan" in names


def test_supervisor_is_only_loaded_for_pid():
    # signal is allowed only for --pid, through satchel.runtime.supervisor (imported lazily)
    names = {name for name, _ in _imported(EXEC_PATH_MODULES)}
    assert "satchel.runtime.supervisor" not in names
    assert "signal" not in names


# what an ECL check may load only once an ecl.toml is activated (trust/ecl.py)
TRUST_HEAVY = {"tomllib", "hashlib", "json", "subprocess", "tempfile", "pysequoia",
               "cryptography", "satchel.trust.verify", "satchel.trust.pgp", "satchel.trust.dsse"}


def _after_enforce(ecl_text: str | None, tmp_path) -> set[str]:
    conf = tmp_path / "satchel.conf"
    conf.write_text("")
    if ecl_text is not None:
        (tmp_path / "ecl.toml").write_text(ecl_text)
    code = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'src')!r})\n"
            "from satchel.trust.ecl import enforce\n"
            "class Image: kind = 'sif'; path = '/nonexistent.sif'\n"
            f"enforce(Image(), {str(conf)!r})\n"
            "print(' '.join(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True)
    return set(proc.stdout.split())


def test_ecl_check_without_an_activated_list_loads_no_crypto(tmp_path):
    assert not _after_enforce(None, tmp_path) & TRUST_HEAVY
    off = "# activated = true\nactivated = false\n[[execgroup]]\n  activated = true\n"
    assert not _after_enforce(off, tmp_path) & TRUST_HEAVY


def test_activated_list_would_be_seen(tmp_path):
    # the check above can fail: an activated list loads the TOML parser and the verifier
    loaded = _after_enforce_failing("activated = true\n", tmp_path)
    assert {"tomllib", "satchel.trust.verify"} <= loaded


def _after_enforce_failing(ecl_text: str, tmp_path) -> set[str]:
    (tmp_path / "satchel.conf").write_text("")
    (tmp_path / "ecl.toml").write_text(ecl_text)
    code = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'src')!r})\n"
            "from satchel.trust.ecl import enforce\n"
            "class Image: kind = 'sif'; path = '/nonexistent.sif'\n"
            "try:\n"
            f"    enforce(Image(), {str(tmp_path / 'satchel.conf')!r})\n"
            "except Exception:\n    pass\n"
            "print(' '.join(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True)
    return set(proc.stdout.split())


def _after_check_ecl(tmp_path) -> set[str]:
    code = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'src')!r})\n"
            "from satchel.runtime.launch import check_ecl\n"
            "class Image: kind = 'sif'; path = '/nonexistent.sif'\n"
            "try:\n"
            f"    check_ecl(Image(), {str(tmp_path / 'satchel.conf')!r})\n"
            "except Exception as err:\n    print('refused', type(err).__name__)\n"
            "print(' '.join(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True)
    return set(proc.stdout.split())


def test_launch_without_an_ecl_file_does_not_load_the_ecl_module(tmp_path):
    """Most hosts have no ecl.toml: the launch stats for it and imports trust/ecl.py only
    when it is there (and then enforces it: an activated list refuses an unsigned image)."""
    (tmp_path / "satchel.conf").write_text("")
    assert "satchel.trust.ecl" not in _after_check_ecl(tmp_path)
    (tmp_path / "ecl.toml").write_text("activated = true\n")
    loaded = _after_check_ecl(tmp_path)
    assert {"satchel.trust.ecl", "refused", "TrustError"} <= loaded


def test_loading_the_exec_path_runs_no_garbage_collection():
    """cli/main.py raises the collector's threshold: loading the exec path's modules (a few
    thousand long-lived objects) must not run a collection on the way (~1.2 ms at the
    default threshold of 700)."""
    code = (f"import gc, sys; sys.path.insert(0, {os.path.join(ROOT, 'src')!r})\n"
            "runs = []\n"
            "gc.callbacks.append(lambda phase, info: runs.append(info['generation']))\n"
            "import satchel.cli.main\n"
            "after_main = len(runs)\n"
            + "".join(f"import {m}\n" for m in EXEC_PATH_MODULES) +
            "print(len(runs) - after_main, gc.get_count()[0])\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True)
    collections, allocated = map(int, proc.stdout.split())
    assert collections == 0
    assert allocated > 700  # enough objects that the default threshold would have collected


def test_oci_runtime_commands_are_lean():
    # containerd's shim starts satchel-runc four times per container (create, start, delete,
    # delete --force): what start/state/kill/delete load must stay at os and builtins (issue 16)
    modules = ["satchel.cli.main", "satchel.cli.commands.oci", "satchel.ocirt.lifecycle",
               "satchel.ocirt.state"]
    names = {name for name, _ in _imported(modules)}
    assert "satchel.ocirt.lifecycle" in names
    bad = sorted(names & (FORBIDDEN | LAUNCHER_ONLY_FORBIDDEN))
    assert not bad, f"satchel oci's light commands import {bad}"
