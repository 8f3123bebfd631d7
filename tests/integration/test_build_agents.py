"""Bootstrap agents: the registry (pluggable by module path), busybox and debootstrap details."""

import os

import pytest

from support.fixtures_users import run_satchel

from satchel.build import agents, deffile
from satchel.build.agents import busybox, debootstrap
from satchel.errors import BuildError


def test_registry_lookup_and_plugging():
    assert agents.get_agent("BusyBox") is busybox
    with pytest.raises(BuildError, match="unsupported bootstrap agent 'yum'"):
        agents.get_agent("yum")
    with pytest.raises(BuildError, match="no Bootstrap header"):
        agents.get_agent("")
    agents.register("test-plugged", "satchel.build.agents.scratch")
    try:
        assert agents.get_agent("test-plugged").__name__ == "satchel.build.agents.scratch"
        agents.register("test-ghost", "satchel.no_such_module")
        with pytest.raises(BuildError, match="is not available"):
            agents.get_agent("test-ghost")
    finally:
        agents.AGENTS.pop("test-plugged", None)
        agents.AGENTS.pop("test-ghost", None)
    for name in ("docker", "docker-archive", "docker-daemon", "oci", "oci-archive"):
        assert agents.AGENTS[name] == "satchel.oci.agent"


def test_static_elf_detection(tmp_path):
    assert busybox.is_static_elf(busybox.find_busybox())
    assert not busybox.is_static_elf("/bin/ls")  # dynamically linked
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    assert not busybox.is_static_elf(str(text))


@pytest.mark.skipif(os.geteuid() != 0, reason="builds as root")
def test_dynamic_busybox_is_refused(tmp_path):
    deffile_path = tmp_path / "b.def"
    deffile_path.write_text("Bootstrap: busybox\n")
    r = run_satchel(["build", str(tmp_path / "b.sif"), str(deffile_path)],
                    env={"SATCHEL_BUSYBOX": "/bin/ls"})
    assert r.returncode == 255
    assert "/bin/ls is dynamically linked" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["b.def"]


def test_busybox_applet_links(busybox_sandbox):
    assert os.readlink(os.path.join(busybox_sandbox, "usr/bin/env")) == "../../bin/busybox"
    assert os.readlink(os.path.join(busybox_sandbox, "sbin/ifconfig")) == "../bin/busybox"
    assert open(os.path.join(busybox_sandbox, "etc/passwd")).read().startswith("root:x:0:0:")


def ctx_for(text, tmp_path):
    stages, _ = deffile.parse(text)
    return agents.AgentContext(stages[0], str(tmp_path / "rootfs"), str(tmp_path))


def test_debootstrap_command_line(tmp_path):
    ctx = ctx_for("Bootstrap: debootstrap\nOSVersion: trixie\n"
                  "MirrorURL: http://mirror.example/%{OSVERSION}/debian\nInclude: curl, less vim\n",
                  tmp_path)
    argv = debootstrap.debootstrap_argv(ctx)
    assert argv[1:] == ["--variant=minbase", "--arch=amd64", "--include=curl,less,vim", "trixie",
                        str(tmp_path / "rootfs"), "http://mirror.example/trixie/debian"]
    default = debootstrap.debootstrap_argv(ctx_for("Bootstrap: debootstrap\n", tmp_path))
    assert default[-3:] == ["bookworm", str(tmp_path / "rootfs"), "http://deb.debian.org/debian"]


@pytest.mark.skipif(os.geteuid() != 0, reason="builds as root")
def test_pre_runs_on_the_host_before_bootstrap(tmp_path):
    marker = tmp_path / "pre-ran"
    deffile_path = tmp_path / "p.def"
    deffile_path.write_text("Bootstrap: busybox\n%pre\n"
                            f'    test ! -e "$APPTAINER_ROOTFS/bin/busybox" && touch {marker}\n')
    r = run_satchel(["build", str(tmp_path / "p.sif"), str(deffile_path)])
    assert r.returncode == 0, r.stderr
    assert marker.exists()


FAKE_DEBOOTSTRAP = """#!/bin/sh
# stands in for debootstrap (no network in tests): ... SUITE ROOTFS MIRROR -> a busybox rootfs
while [ $# -gt 2 ]; do shift; done
mkdir -p "$1/bin" && cp /bin/busybox "$1/bin/busybox" && ln -s busybox "$1/bin/sh"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="builds as root")
@pytest.mark.parametrize("agent", ["scratch", "busybox", "debootstrap"])
def test_new_rootfs_agents_write_a_bare_runscript(agent, tmp_path):
    """Apptainer's scratch, busybox and debootstrap agents write `#!/bin/sh` as the runscript:
    `run` of an image built without %runscript prints nothing and succeeds."""
    env = None
    text = f"Bootstrap: {agent}\n"
    if agent == "scratch":
        text += "%files\n    /bin/busybox /bin/sh\n"
    if agent == "debootstrap":
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "debootstrap").write_text(FAKE_DEBOOTSTRAP)
        (bin_dir / "debootstrap").chmod(0o755)
        env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    (tmp_path / "image.def").write_text(text)
    target = str(tmp_path / "image.sif")
    r = run_satchel(["build", target, str(tmp_path / "image.def")], env=env)
    assert r.returncode == 0, r.stderr
    r = run_satchel(["exec", target, "cat", "/.singularity.d/runscript"])
    assert (r.returncode, r.stdout) == (0, "#!/bin/sh\n"), r.stderr
    r = run_satchel(["run", target])
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="builds as root")
def test_localimage_keeps_the_base_runscript(tmp_path):
    """Apptainer's localimage agent keeps the base image's runscript (a bare one, or the base's
    %runscript) when the new definition has no %runscript."""
    def build(name, text):
        (tmp_path / f"{name}.def").write_text(text)
        r = run_satchel(["build", str(tmp_path / f"{name}.sif"), str(tmp_path / f"{name}.def")])
        assert r.returncode == 0, r.stderr
        return str(tmp_path / f"{name}.sif")
    bare = build("bare", "Bootstrap: busybox\n")
    with_script = build("script", "Bootstrap: busybox\n%runscript\n    echo base-runscript\n")
    for base, expected in ((bare, ""), (with_script, "base-runscript\n")):
        derived = build("derived", f"Bootstrap: localimage\nFrom: {base}\n%post\n    true\n")
        r = run_satchel(["run", derived])
        assert (r.returncode, r.stdout) == (0, expected), r.stderr
        os.unlink(derived)
