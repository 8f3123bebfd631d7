"""Every flag of Apptainer's action commands parses: implemented, accepted, or refused with a
reason, never "unknown flag".

The table is Apptainer 1.3.6's, as its documented CLI reference lists it (apptainer_exec,
apptainer_run, apptainer_shell, apptainer_test, apptainer_instance_start; generated from
cmd/internal/cli/action_flags.go and the common flags in apptainer.go), plus the flags 1.4
added to those commands (--authfile, --netns-path). Groups are Apptainer's: "actions" are
exec, run, shell, test; "actions_instance" adds instance start and instance run.
"""

import pytest

from satchel.cli import options as o
from satchel.cli.commands import action, instance
from satchel.errors import SatchelError
from satchel.runtime import launch
from satchel.runtime.config import default_config_path, load_config

B, V = "bool", "value"  # a boolean flag, a flag that takes a value
ACTIONS = ("exec", "run", "shell", "test")
INSTANCE = ("instance start", "instance run")
# (long name, shorthand, kind, group)
APPTAINER_ACTION_FLAGS = [
    ("add-caps", "", V, "actions_instance"),
    ("allow-setuid", "", B, "actions_instance"),
    ("app", "", V, "actions_instance"),
    ("apply-cgroups", "", V, "actions_instance"),
    ("authfile", "", V, "actions_instance"),
    ("bind", "B", V, "actions_instance"),
    ("blkio-weight", "", V, "actions_instance"),
    ("blkio-weight-device", "", V, "actions_instance"),
    ("boot", "", B, "instance_start"),
    ("cleanenv", "e", B, "actions_instance"),
    ("compat", "", B, "actions_instance"),
    ("contain", "c", B, "actions_instance"),
    ("containall", "C", B, "actions_instance"),
    ("containlibs", "", V, "actions_instance"),
    ("cpu-shares", "", V, "actions_instance"),
    ("cpus", "", V, "actions_instance"),
    ("cpuset-cpus", "", V, "actions_instance"),
    ("cpuset-mems", "", V, "actions_instance"),
    ("cwd", "", V, "actions"),
    ("disable-cache", "", B, "actions_instance"),
    ("dns", "", V, "actions_instance"),
    ("docker-host", "", V, "actions_instance"),
    ("docker-login", "", B, "actions_instance"),
    ("docker-password", "", V, "actions_instance"),
    ("docker-username", "", V, "actions_instance"),
    ("drop-caps", "", V, "actions_instance"),
    ("env", "", V, "actions_instance"),
    ("env-file", "", V, "actions_instance"),
    ("fakeroot", "f", B, "actions_instance"),
    ("fusemount", "", V, "actions_instance"),
    ("home", "H", V, "actions_instance"),
    ("hostname", "", V, "actions_instance"),
    ("ignore-fakeroot-command", "", B, "actions_instance"),
    ("ignore-subuid", "", B, "actions_instance"),
    ("ignore-userns", "", B, "actions_instance"),
    ("ipc", "i", B, "actions_instance"),
    ("keep-privs", "", B, "actions_instance"),
    ("memory", "", V, "actions_instance"),
    ("memory-reservation", "", V, "actions_instance"),
    ("memory-swap", "", V, "actions_instance"),
    ("mount", "", V, "actions_instance"),
    ("net", "n", B, "actions_instance"),
    ("netns-path", "", V, "actions_instance"),
    ("network", "", V, "actions_instance"),
    ("network-args", "", V, "actions_instance"),
    ("no-eval", "", B, "actions_instance"),
    ("no-home", "", B, "actions_instance"),
    ("no-https", "", B, "actions_instance"),
    ("no-init", "", B, "actions_instance"),
    ("no-mount", "", V, "actions_instance"),
    ("no-nv", "", B, "actions_instance"),
    ("no-pid", "", B, "actions"),
    ("no-privs", "", B, "actions_instance"),
    ("no-rocm", "", B, "actions_instance"),
    ("no-umask", "", B, "actions_instance"),
    ("nohttps", "", B, "actions_instance"),
    ("nv", "", B, "actions_instance"),
    ("nvccli", "", B, "actions_instance"),
    ("oom-kill-disable", "", B, "actions_instance"),
    ("overlay", "o", V, "actions_instance"),
    ("passphrase", "", B, "actions_instance"),
    ("pem-path", "", V, "actions_instance"),
    ("pid", "p", B, "actions"),
    ("pids-limit", "", V, "actions_instance"),
    ("pwd", "", V, "actions"),
    ("rocm", "", B, "actions_instance"),
    ("runscript-timeout", "", V, "actions_runscript"),
    ("scratch", "S", V, "actions_instance"),
    ("security", "", V, "actions_instance"),
    ("sharens", "", B, "actions"),
    ("shell", "s", V, "shell"),
    ("tmpdir", "", V, "actions_instance"),
    ("underlay", "", B, "actions_instance"),
    ("unsquash", "", B, "actions_instance"),
    ("userns", "u", B, "actions_instance"),
    ("uts", "", B, "actions_instance"),
    ("workdir", "W", V, "actions_instance"),
    ("writable", "w", B, "actions_instance"),
    ("writable-tmpfs", "", B, "actions_instance"),
]
GROUPS = {"actions": ACTIONS, "actions_instance": ACTIONS + INSTANCE, "shell": ("shell",),
          "actions_runscript": ("run", "instance run"), "instance_start": ("instance start",)}
SAMPLE = {"cpus": "0.5", "memory": "64M", "pids-limit": "20", "cpu-shares": "512",
          "blkio-weight": "100", "memory-reservation": "32M", "memory-swap": "128M",
          "cpuset-cpus": "0", "cpuset-mems": "0", "scratch": "/scratch", "dns": "10.0.0.1",
          "cwd": "/", "pwd": "/", "workdir": "/tmp", "home": "/tmp", "network": "none",
          "env": "A=1", "bind": "/tmp", "hostname": "h"}
CASES = [(cmd, flag) for flag in APPTAINER_ACTION_FLAGS for cmd in GROUPS[flag[3]]]


def _spec(cmd: str) -> o.Spec:
    if cmd.startswith("instance "):
        return instance._sub_specs()[cmd.split()[1]]
    return action.SPECS[cmd]


def _argv(cmd: str, flag, form: str) -> list[str]:
    name, short, kind, _ = flag
    value = SAMPLE.get(name, "x")
    opt = f"-{short}" if form == "short" else f"--{name}"
    head = [opt] if kind == B else [opt, value]
    tail = ["img.sif", "inst"] if cmd.startswith("instance ") else ["img.sif", "true"]
    return head + tail


@pytest.mark.parametrize("cmd,flag", CASES, ids=[f"{c}--{f[0]}" for c, f in CASES])
def test_flag_parses(cmd, flag):
    """Long form (and shorthand) parse; the image stays the first positional argument."""
    forms = ["long"] + (["short"] if flag[1] else [])
    for form in forms:
        parsed = o.parse(_spec(cmd), _argv(cmd, flag, form), environ_defaults=False)
        assert parsed.args[0] == "img.sif"


ACTION_CASES = [(c, f) for c, f in CASES if c in ACTIONS]


@pytest.mark.parametrize("cmd,flag", ACTION_CASES, ids=[f"{c}--{f[0]}" for c, f in ACTION_CASES])
def test_flag_is_implemented_or_refused_with_reason(cmd, flag):
    """Each flag either maps onto the run options or is refused by one line naming it."""
    parsed = o.parse(_spec(cmd), _argv(cmd, flag, "long"), environ_defaults=False)
    try:
        launch.run_options(cmd, parsed, load_config(default_config_path()))
    except SatchelError as err:  # UsageError, or ContainerError where the host lacks something
        assert (f"--{flag[0]}" in err.message or flag[0] == "env-file"
                or "resource limits" in err.message), err.message
        assert "unknown flag" not in err.message
        assert "\n" not in err.message


def test_table_covers_satchel_action_options():
    """The reverse direction: no satchel action flag is missing from Apptainer's table
    (other than satchel's own spellings, which are aliases)."""
    ours = {n[2:] for opt in action.ACTION_OPTIONS for n in opt.names if n.startswith("--")}
    theirs = {f[0] for f in APPTAINER_ACTION_FLAGS}
    assert ours - theirs <= {"noinit", "no-share"}  # --no-share: image mounts (issue 14)


def test_uri_images_load_no_oci_code_for_image_files():
    """The URI branch is imported lazily: exec of an image file loads no satchel.oci module."""
    import subprocess
    import sys

    code = ("import sys; import satchel.cli.commands.action; import satchel.runtime.launch as a; "
            "assert a.is_uri('docker://x/y') and a.is_uri('oci-archive:/f.tar'); "
            "assert not a.is_uri('/img.sif') and not a.is_uri('instance://x'); "
            "print(a.resolve_image('/img.sif', None)); "
            "print(sorted(m for m in sys.modules if m.startswith('satchel.oci')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out == "('/img.sif', ())\n[]\n"
