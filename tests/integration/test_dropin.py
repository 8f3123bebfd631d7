"""satchel under the names `singularity`, `apptainer` and `run-singularity`, as satchel-test.

The drop-ins are the entry points `satchel dropin` installs (fixture `dropin_dir`). Checked:
the version lines, the options the clients send (--no-eval, --net --network none,
--network-args, --hostname), the image formats (.sqsh/.squashfs, legacy .simg, a SIF run as
a program through its `#!/usr/bin/env run-singularity` line) and the `No valid /bin/sh in
container` answer that cwltool probes for with its own hello.simg.
"""

import os
import shutil
import subprocess

import pytest

from support.fixtures_clients import CLIENTS_VENV
from support.fixtures_runtime import busybox_tree

RUNSCRIPT = '#!/bin/sh\necho "runscript: $*"\n'


def dropin_run(test_user, dropin_dir, name, args, env=None, cwd=None, timeout=60):
    argv = test_user.argv([os.path.join(dropin_dir, name)] + list(args))
    full = test_user.env({"PATH": f"{dropin_dir}:/usr/local/bin:/usr/bin:/bin"})
    full.update(env or {})
    proc = subprocess.run(argv, env=full, cwd=cwd or test_user.home, capture_output=True,
                          timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


@pytest.fixture(scope="module")
def formats(image_dir):
    """The same small tree as a bare SquashFS (.sqsh and .squashfs) and a legacy .simg."""
    base = os.path.join(image_dir, "formats")
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    tree = os.path.join(base, "tree")
    busybox_tree(tree)
    with open(os.path.join(tree, "etc", "flavour"), "w") as fh:
        fh.write("squashfs tree\n")
    path = os.path.join(tree, ".singularity.d", "runscript")
    with open(path, "w") as fh:
        fh.write(RUNSCRIPT)
    os.chmod(path, 0o755)
    sqsh = os.path.join(base, "img.sqsh")
    subprocess.run(["mksquashfs", tree, sqsh, "-noappend", "-quiet", "-all-root",
                    "-no-progress"], check=True, capture_output=True)
    squashfs = os.path.join(base, "img.squashfs")
    shutil.copy(sqsh, squashfs)
    simg = os.path.join(base, "img.simg")
    with open(simg, "wb") as out, open(sqsh, "rb") as src:
        out.write(b"#!/usr/bin/env run-singularity\n")
        shutil.copyfileobj(src, out)
    for p in (sqsh, squashfs, simg):
        os.chmod(p, 0o755)
    shutil.rmtree(tree)
    return {"sqsh": sqsh, "squashfs": squashfs, "simg": simg}


@pytest.mark.parametrize("name, flavour", [("singularity", "singularity version 3."),
                                            ("apptainer", "apptainer version 1.")])
def test_version_lines_as_user(test_user, dropin_dir, name, flavour):
    r = dropin_run(test_user, dropin_dir, name, ["--version"])
    assert r.returncode == 0 and r.stdout.startswith(flavour) and r.stdout.count("\n") == 1


@pytest.mark.parametrize("name", ["singularity", "apptainer"])
def test_exec_under_both_names_is_the_user(test_user, dropin_dir, busybox_sif, name):
    r = dropin_run(test_user, dropin_dir, name, ["exec", busybox_sif, "id", "-u"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{test_user.uid}\n"
    r = dropin_run(test_user, dropin_dir, name, ["exec", busybox_sif, "sh", "-c", "exit 42"])
    assert r.returncode == 42


def test_shell_prompt_names_the_program(test_user, dropin_dir, busybox_sif):
    r = dropin_run(test_user, dropin_dir, "apptainer", ["exec", busybox_sif, "sh", "-c",
                                                         'echo "$PS1"'])
    assert r.stdout == "Apptainer> \n"


@pytest.mark.parametrize("command", ["run", "exec"])
def test_no_eval_versus_default_evaluation(test_user, dropin_dir, busybox_sif, command):
    args = ([command, "--env", "D=$HOME/sub $(echo x)", busybox_sif] +
            (["sh", "-c", 'printf "%s|%s" "$D" "$1"', "arg0", "$HOME"] if command == "exec"
             else ["$HOME", "a  b"]))
    default = dropin_run(test_user, dropin_dir, "singularity", args)
    assert default.returncode == 0, default.stderr
    verbatim = dropin_run(test_user, dropin_dir, "singularity",
                          [command, "--no-eval"] + args[1:])
    assert verbatim.returncode == 0, verbatim.stderr
    if command == "exec":
        assert default.stdout == f"{test_user.home}/sub x|$HOME"   # env evaluated, args never
        assert verbatim.stdout == "$HOME/sub $(echo x)|$HOME"
    else:   # a native runscript gets its arguments as given either way
        assert default.stdout == verbatim.stdout == "runscript args: $HOME a  b\n"


def test_no_eval_reaches_oci_runscript(test_user, dropin_dir, oci_style_sif):
    # an OCI-converted runscript evaluates its command line by default, not with --no-eval
    args = ["echo", "$HOME"]
    default = dropin_run(test_user, dropin_dir, "apptainer", ["run", oci_style_sif] + args)
    verbatim = dropin_run(test_user, dropin_dir, "apptainer",
                          ["run", "--no-eval", oci_style_sif] + args)
    assert default.returncode == 0 and verbatim.returncode == 0, (default.stderr,
                                                                  verbatim.stderr)
    assert default.stdout == f"{test_user.home}\n"
    assert verbatim.stdout == "$HOME\n"


def test_net_none_loopback_only_and_up(test_user, dropin_dir, busybox_sif):
    r = dropin_run(test_user, dropin_dir, "singularity", [
        "exec", "--net", "--network", "none", "--network-args", '"portmap=8080:80/tcp"',
        busybox_sif, "sh", "-c",
        "ip -o link | cut -d: -f2; ip -o link show lo | grep -c UP; "
        # no fixed sleeps (a loaded machine starts the listener late): retry the connection
        # until the listener takes it, then wait until what it received is on disk
        "(nc -l -p 4567 > /tmp/nc.$$ &); i=0; "
        "until echo ping | nc 127.0.0.1 4567 2>/dev/null; do "
        "i=$((i+1)); [ $i -ge 200 ] && break; sleep 0.05; done; "
        "i=0; until [ -s /tmp/nc.$$ ]; do i=$((i+1)); [ $i -ge 200 ] && break; sleep 0.05; done; "
        "cat /tmp/nc.$$; rm -f /tmp/nc.$$"])
    assert r.returncode == 0, r.stderr
    lines = [line.strip() for line in r.stdout.splitlines()]
    assert lines == ["lo", "1", "ping"]
    assert "no effect with --network none" in r.stderr


def test_hostname(test_user, dropin_dir, busybox_sif):
    r = dropin_run(test_user, dropin_dir, "apptainer",
                   ["exec", "--hostname", "compute-7", busybox_sif, "hostname"])
    assert r.returncode == 0 and r.stdout == "compute-7\n"


@pytest.mark.parametrize("kind", ["sqsh", "squashfs", "simg"])
def test_squashfs_and_legacy_simg_images(test_user, dropin_dir, formats, kind):
    r = dropin_run(test_user, dropin_dir, "singularity",
                   ["exec", formats[kind], "cat", "/etc/flavour"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "squashfs tree\n"
    r = dropin_run(test_user, dropin_dir, "singularity", ["run", formats[kind], "a b"])
    assert r.stdout == "runscript: a b\n"


def test_image_files_run_as_programs(test_user, dropin_dir, formats, busybox_sif):
    # `#!/usr/bin/env run-singularity` heads .simg and SIF files: PATH finds the drop-in
    simg = dropin_run_program(test_user, dropin_dir, [formats["simg"], "x", "y"])
    assert simg.returncode == 0, simg.stderr
    assert simg.stdout == "runscript: x y\n"
    sif = dropin_run_program(test_user, dropin_dir, [busybox_sif, "from", "sif"])
    assert sif.returncode == 0, sif.stderr
    assert sif.stdout == "runscript args: from sif\n"


def dropin_run_program(test_user, dropin_dir, argv):
    env = test_user.env({"PATH": f"{dropin_dir}:/usr/local/bin:/usr/bin:/bin"})
    proc = subprocess.run(test_user.argv(argv), env=env, cwd=test_user.home,
                          capture_output=True, timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def test_no_valid_bin_sh(test_user, dropin_dir, rt_images):
    r = dropin_run(test_user, dropin_dir, "singularity",
                   ["exec", "--userns", rt_images.nosh, "true"])
    assert r.returncode == 255
    assert r.stderr.startswith("FATAL:   ") and "No valid /bin/sh in container" in r.stderr


def test_cwltool_hello_simg_probe(test_user, dropin_dir):
    # cwltool runs exactly this and turns on --userns when the answer names /bin/sh
    hello = os.path.join(CLIENTS_VENV, "lib", "python3.11", "site-packages", "cwltool",
                         "hello.simg")
    if not os.path.exists(hello):
        pytest.fail(f"{hello} missing: run ./scripts/install-deps")
    r = dropin_run(test_user, dropin_dir, "singularity", ["exec", "--userns", hello, "true"])
    assert r.returncode == 255
    assert "No valid /bin/sh in container" in r.stderr
