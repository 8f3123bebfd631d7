"""`satchel build` as root with the real tools: SIF objects, layout, sections, safety, errors."""

import json
import os
import signal
import subprocess
import time

import pytest

from support.fixtures_registry import sif_listing
from support.fixtures_runtime import wait_for_name_below
from support.fixtures_users import SATCHEL, run_satchel

from satchel.image import sif

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these builds run as root")


def partition(path):
    with sif.SIFFile.open(path) as image:
        return image.primary_partition()


def cat(image, path):
    """A file's content from a SIF or sandbox (None if absent)."""
    if os.path.isdir(image):
        full = os.path.join(image, path.lstrip("/"))
        return open(full, "rb").read().decode() if os.path.isfile(full) else None
    part = partition(image)
    r = subprocess.run(["unsquashfs", "-o", str(part.offset), "-cat", image, path.lstrip("/")],
                       capture_output=True)
    return r.stdout.decode() if r.returncode == 0 else None


def listing(image):
    """{path: (mode string, 'uid/gid')} of a SIF's file system."""
    return {path: tuple(entry.split(" ")) for path, entry in sif_listing(str(image)).items()}


def build(tmp_path, text, *extra, name="image.sif", check=True):
    deffile = tmp_path / "image.def"
    deffile.write_text(text)
    target = str(tmp_path / name)
    r = run_satchel(["build", *extra, target, str(deffile)])
    if check:
        assert r.returncode == 0, r.stderr
    return target, r


def leftovers(directory, keep=()):
    return sorted(n for n in os.listdir(directory) if n not in keep)


# --- the busybox image and the SIF objects ----------------------------------------------------

def test_busybox_sif_objects(busybox_sif):
    with sif.SIFFile.open(busybox_sif) as image:
        objects = [(d.id, d.datatype, d.name) for d in image.descriptors]
        assert objects[:3] == [(1, sif.DATA_DEFFILE, ""), (2, sif.DATA_LABELS, ""),
                               (3, sif.DATA_GENERICJSON, "inspect-metadata.json")]
        part = image.primary_partition()
        assert part.id == 4
        assert (part.fs_type, part.part_type, part.arch) == (sif.FS_SQUASH, sif.PART_PRIMSYS,
                                                             sif.host_arch())
        assert image.header.arch == sif.host_arch()
        deffile_text = image.read_data(1).decode()
        labels = json.loads(image.read_data(2))
        inspect = json.loads(image.read_data(3))
        with open(busybox_sif, "rb") as fh:
            fh.seek(part.offset)
            assert fh.read(4) == b"hsqs"
    assert deffile_text == open(os.path.join(os.path.dirname(__file__), "..", "data",
                                             "busybox.def")).read()
    assert labels["org.satchel.test"] == "busybox"
    assert inspect["type"] == "container"
    attrs = inspect["data"]["attributes"]
    assert attrs["labels"] == labels
    assert attrs["deffile"] == deffile_text.rstrip("\n")
    assert "runscript args" in attrs["runscript"]
    assert "/.singularity.d/env/90-environment.sh" in attrs["environment"]
    assert os.stat(busybox_sif).st_mode & 0o777 == 0o755


def test_busybox_layout_in_sif(busybox_sif):
    files = listing(busybox_sif)
    for path in ("/.singularity.d/actions/exec", "/.singularity.d/actions/run",
                 "/.singularity.d/actions/shell", "/.singularity.d/actions/start",
                 "/.singularity.d/actions/test", "/.singularity.d/env/01-base.sh",
                 "/.singularity.d/env/90-environment.sh", "/.singularity.d/env/91-environment.sh",
                 "/.singularity.d/env/94-appsbase.sh", "/.singularity.d/env/95-apps.sh",
                 "/.singularity.d/env/99-base.sh",
                 "/.singularity.d/env/99-runtimevars.sh", "/.singularity.d/runscript",
                 "/.singularity.d/startscript", "/.singularity.d/test",
                 "/.singularity.d/labels.json", "/.singularity.d/Singularity",
                 "/.singularity.d/runscript.help", "/.singularity.d/libs", "/proc", "/sys", "/dev",
                 "/tmp", "/home", "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/resolv.conf",
                 "/bin/busybox", "/bin/sh", "/usr/bin/env", "/etc/satchel-release"):
        assert path in files, path
    assert files["/usr/local/bin/busybox-suid"][0] == "-rwsr-xr-x"
    assert files["/usr/local/bin/busybox-suid"][1] == "0/0"
    assert files["/tmp"][0] == "drwxrwxrwt"
    assert "/.post.script" not in files and "/.build.labels" not in files
    assert "SATCHEL_POST_ENV" in cat(busybox_sif, "/.singularity.d/env/91-environment.sh")


def test_busybox_sandbox(busybox_sandbox):
    assert os.path.isfile(os.path.join(busybox_sandbox, "etc", "satchel-release"))
    assert os.readlink(os.path.join(busybox_sandbox, "bin", "sh")) == "busybox"
    st = os.stat(os.path.join(busybox_sandbox, "usr", "local", "bin", "busybox-suid"))
    assert st.st_mode & 0o4000 and st.st_uid == 0


def test_no_runscript_gives_apptainers_bare_one(tmp_path):
    target, _ = build(tmp_path, "Bootstrap: busybox\n")
    assert cat(target, "/.singularity.d/runscript") == "#!/bin/sh\n"  # as Apptainer's agent
    assert cat(target, "/.singularity.d/test") is None


# --- sections -----------------------------------------------------------------------------------

def test_scriptlet_variables_and_section_arguments(tmp_path):
    text = ("Bootstrap: busybox\n"
            "%setup\n"
            '    echo "$APPTAINER_ROOTFS|$SINGULARITY_ROOTFS|$(pwd)" > "$APPTAINER_ROOTFS/setup.txt"\n'
            "%post -c /bin/ash\n"
            '    echo "$APPTAINER_ROOTFS|$SINGULARITY_ROOTFS|$APPTAINER_ENVIRONMENT|'
            '$SINGULARITY_ENVIRONMENT|$0|$(id -u)" > /post.txt\n'
            '    echo "export FROM_POST=1" >> "$SINGULARITY_ENVIRONMENT"\n'
            '    echo "PostLabel yes" >> "$APPTAINER_LABELS"\n'
            '    test -e /proc/self/status && test -c /dev/null && test -w /tmp\n'
            '    echo ok > /dev/null\n')
    target, r = build(tmp_path, text, "--sandbox", name="sandbox")
    setup = open(os.path.join(target, "setup.txt")).read().strip().split("|")
    assert setup[0] == setup[1] and setup[0].endswith("rootfs-0")
    assert setup[2] == str(tmp_path)  # %setup runs next to the definition file
    post = open(os.path.join(target, "post.txt")).read().strip()
    assert post == ("/|/|/.singularity.d/env/91-environment.sh|/.singularity.d/env/91-environment.sh|"
                    "/.post.script|0")
    assert "FROM_POST=1" in open(os.path.join(target, ".singularity.d/env/91-environment.sh")).read()
    labels = json.load(open(os.path.join(target, ".singularity.d/labels.json")))
    assert labels["PostLabel"] == "yes"
    assert "+ /bin/ash /.post.script" in r.stderr  # /bin/sh -ex -c "/bin/ash SCRIPT"


def test_post_sees_image_environment_and_resolv_conf(tmp_path):
    text = ("Bootstrap: busybox\n"
            "%post\n"
            '    cat /etc/resolv.conf > /resolv.copy\n'
            '    echo "$LD_LIBRARY_PATH" > /ldpath\n'
            '    echo changed > /etc/hosts\n')
    before = open("/etc/hosts").read()
    target, _ = build(tmp_path, text, "--sandbox", name="sb")
    assert open("/etc/hosts").read() == before  # a staged copy, never the host file
    assert open(os.path.join(target, "resolv.copy")).read().rstrip("\n") == \
        open("/etc/resolv.conf").read().rstrip("\n")
    assert open(os.path.join(target, "ldpath")).read().strip() == "/.singularity.d/libs"


def test_post_processes_do_not_outlive_the_scriptlet(tmp_path):
    marker = f"satchel-bg-{os.getpid()}-{time.time_ns()}"
    text = ("Bootstrap: busybox\n%post\n"
            f"    (exec -a {marker} sleep 100) &\n    true\n")
    build(tmp_path, text, "--sandbox", name="sb")
    r = subprocess.run(["pgrep", "-f", marker], capture_output=True)
    assert r.returncode == 1, "a %post background process survived the build"


def test_failing_post_leaves_nothing(tmp_path):
    target, r = build(tmp_path, "Bootstrap: busybox\n%post\n    echo partial > /x\n    false\n",
                      check=False)
    assert r.returncode == 255
    assert r.stderr.splitlines()[-1].startswith("FATAL:   %post failed with exit status 1")
    assert "Traceback" not in r.stderr
    assert leftovers(tmp_path) == ["image.def"]


def test_test_section_runs_and_notest_skips_it(tmp_path):
    text = "Bootstrap: busybox\n%test\n    echo TEST-RAN\n    exit 3\n"
    target, r = build(tmp_path, text, check=False)
    assert r.returncode == 255 and "%test failed with exit status 3" in r.stderr
    assert "TEST-RAN" in r.stdout + r.stderr
    assert leftovers(tmp_path) == ["image.def"]
    target, r = build(tmp_path, text, "--notest")
    assert "TEST-RAN" not in r.stdout + r.stderr
    assert "exit 3" in cat(target, "/.singularity.d/test")


def test_section_option_limits_sections(tmp_path):
    text = ("Bootstrap: busybox\n%post\n    touch /post-ran\n"
            "%files\n    image.def /copied.def\n%labels\n    L v\n")
    target, _ = build(tmp_path, text, "--sandbox", "--section", "files", name="sb")
    assert os.path.exists(os.path.join(target, "copied.def"))
    assert not os.path.exists(os.path.join(target, "post-ran"))
    assert "L" not in json.load(open(os.path.join(target, ".singularity.d/labels.json")))
    target, _ = build(tmp_path, text, "--sandbox", "--section", "post,labels", name="sb2")
    assert os.path.exists(os.path.join(target, "post-ran"))
    assert not os.path.exists(os.path.join(target, "copied.def"))
    assert json.load(open(os.path.join(target, ".singularity.d/labels.json")))["L"] == "v"
    r = run_satchel(["build", "--section", "bogus", str(tmp_path / "x.sif"), str(tmp_path / "image.def")])
    assert r.returncode == 255 and "invalid --section" in r.stderr


def test_files_relative_to_definition_and_globs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("A")
    (tmp_path / "data" / "b.txt").write_text("B")
    (tmp_path / "data" / "sub").mkdir()
    (tmp_path / "data" / "sub" / "c").write_text("C")
    (tmp_path / "tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(tmp_path / "tool", 0o755)
    os.symlink("data/a.txt", tmp_path / "link-to-a")
    text = ("Bootstrap: busybox\n%files\n"
            "    data/*.txt /opt/txt/\n"
            "    data /opt/tree\n"
            "    tool /usr/local/bin/tool\n"
            "    link-to-a /opt/deref\n"
            "    data/a.txt\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    deffile = tmp_path / "image.def"
    deffile.write_text(text)
    target = str(tmp_path / "sb")
    r = run_satchel(["build", "--sandbox", target, str(deffile)], cwd=str(other))
    assert r.returncode == 0, r.stderr
    assert open(os.path.join(target, "opt/txt/a.txt")).read() == "A"
    assert open(os.path.join(target, "opt/txt/b.txt")).read() == "B"
    assert open(os.path.join(target, "opt/tree/sub/c")).read() == "C"
    assert os.access(os.path.join(target, "usr/local/bin/tool"), os.X_OK)
    assert not os.path.islink(os.path.join(target, "opt/deref"))
    assert open(os.path.join(target, "opt/deref")).read() == "A"
    assert open(os.path.join(target, "data/a.txt")).read() == "A"


def test_files_missing_source_is_fatal(tmp_path):
    target, r = build(tmp_path, "Bootstrap: busybox\n%files\n    nope.txt /x\n", check=False)
    assert r.returncode == 255
    assert "FATAL:   %files: no such file or directory: nope.txt" in r.stderr
    assert leftovers(tmp_path) == ["image.def"]


def test_files_never_write_outside_the_rootfs(tmp_path):
    """An image symlink `/opt -> /../../<host dir>` and `..` destinations stay inside."""
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (tmp_path / "payload.txt").write_text("payload")
    (tmp_path / "payload-dir").mkdir()
    (tmp_path / "payload-dir" / "inner").write_text("inner")
    escape = "/.." * 20 + str(host_dir)
    text = ("Bootstrap: busybox\n"
            "%post\n"
            f"    ln -s {escape} /opt\n"
            f"    ln -s {'/..' * 20}{victim} /etc/victim-link\n"
            "    mkdir -p /data && ln -s /../../../ /data/up\n")
    base, _ = build(tmp_path, text, "--sandbox", name="base")
    text2 = (f"Bootstrap: localimage\nFrom: {base}\n"
             "%files\n"
             "    payload.txt /opt/p1.txt\n"
             "    payload-dir /opt/\n"
             f"    payload.txt /../../../../{tmp_path.name}/escaped-dotdot.txt\n"
             "    payload.txt /etc/victim-link\n"
             f"    payload.txt /data/up{tmp_path}/escaped-up.txt\n")
    target, r = build(tmp_path, text2, "--sandbox", name="final")
    assert os.listdir(host_dir) == []
    assert victim.read_text() == "untouched"
    assert not (tmp_path / "escaped-dotdot.txt").exists()
    assert not (tmp_path / "escaped-up.txt").exists()
    # everything landed inside the new image, where the container sees it
    inside = os.path.join(target, str(host_dir).lstrip("/"))
    assert open(os.path.join(inside, "p1.txt")).read() == "payload"
    assert open(os.path.join(inside, "payload-dir", "inner")).read() == "inner"
    assert open(os.path.join(target, tmp_path.name, "escaped-dotdot.txt")).read() == "payload"
    # the link was followed inside the image, as the container resolves it
    assert open(os.path.join(target, str(victim).lstrip("/"))).read() == "payload"


def test_multi_stage_files_from_stage(tmp_path):
    text = ("Bootstrap: busybox\nStage: build\n"
            "%post\n    mkdir -p /out && echo built > /out/artifact && ln -s /out/artifact /out/link\n"
            "\n"
            "Bootstrap: busybox\nStage: final\n"
            "%files from build\n    /out/artifact /opt/artifact\n    /out/link /opt/via-link\n"
            "    /out/* /opt/all/\n"
            "%runscript\n    cat /opt/artifact\n")
    target, r = build(tmp_path, text)
    assert "Stage 2/2: final" in r.stderr
    assert cat(target, "/opt/artifact") == "built\n"
    assert cat(target, "/opt/via-link") == "built\n"
    assert cat(target, "/opt/all/artifact") == "built\n"
    assert "/out" not in listing(target)
    assert "Stage: build" in cat(target, "/.singularity.d/Singularity")  # the whole definition


def test_files_from_unknown_stage(tmp_path):
    _, r = build(tmp_path, "Bootstrap: busybox\n%files from nowhere\n    /a /b\n", check=False)
    assert r.returncode == 255 and "no earlier stage named 'nowhere'" in r.stderr


def test_build_arguments(tmp_path):
    text = ("Bootstrap: busybox\n%arguments\n    who=world\n    what=hello\n"
            "%post\n    echo '{{ what }} {{ who }}' > /greeting\n")
    target, _ = build(tmp_path, text, "--sandbox", "--build-arg", "who=satchel", name="sb")
    assert open(os.path.join(target, "greeting")).read() == "hello satchel\n"
    args = tmp_path / "args"
    args.write_text("what=bye\n")
    target, _ = build(tmp_path, text, "--sandbox", "--build-arg-file", str(args), name="sb2")
    assert open(os.path.join(target, "greeting")).read() == "bye world\n"
    _, r = build(tmp_path, text, "--build-arg", "unused=1", name="x.sif", check=False)
    assert r.returncode == 255 and "unused build arguments: unused" in r.stderr
    target, r = build(tmp_path, text, "--sandbox", "--build-arg", "unused=1",
                      "--warn-unused-build-args", name="sb3")
    assert "WARNING: unused build arguments: unused" in r.stderr


# --- targets: force, sandbox, localimage, scratch -----------------------------------------------

def test_existing_target_needs_force(tmp_path):
    target, _ = build(tmp_path, "Bootstrap: busybox\n")
    first = os.stat(target).st_ino
    _, r = build(tmp_path, "Bootstrap: busybox\n", check=False)
    assert r.returncode == 255
    assert r.stderr.strip().splitlines()[0] == f"FATAL:   build target {target} already exists"
    assert os.stat(target).st_ino == first
    build(tmp_path, "Bootstrap: busybox\n%labels\n  second yes\n", "--force")
    assert os.stat(target).st_ino != first
    assert '"second": "yes"' in cat(target, "/.singularity.d/labels.json")
    assert leftovers(tmp_path) == ["image.def", "image.sif"]


def test_sandbox_force_replaces_directory(tmp_path):
    target, _ = build(tmp_path, "Bootstrap: busybox\n%post\n  touch /one\n", "--sandbox", name="sb")
    build(tmp_path, "Bootstrap: busybox\n%post\n  touch /two\n", "--sandbox", "--force", name="sb")
    assert os.path.exists(os.path.join(target, "two")) and not os.path.exists(os.path.join(target, "one"))
    assert leftovers(tmp_path) == ["image.def", "sb"]


def test_update_existing_sandbox(tmp_path):
    target, _ = build(tmp_path, "Bootstrap: busybox\n%post\n  touch /one\n", "--sandbox", name="sb")
    build(tmp_path, "Bootstrap: busybox\n%post\n  touch /two\n", "--sandbox", "--update", name="sb")
    assert os.path.exists(os.path.join(target, "one")) and os.path.exists(os.path.join(target, "two"))
    assert os.listdir(os.path.join(target, ".singularity.d", "bootstrap_history")) == ["Singularity0"]


def test_localimage_from_sif_and_sandbox(tmp_path, busybox_sif, busybox_sandbox):
    for source in (busybox_sif, busybox_sandbox):
        text = f"Bootstrap: localimage\nFrom: {source}\n%post\n    echo extra > /extra\n"
        target, _ = build(tmp_path, text, "--force")
        assert cat(target, "/extra") == "extra\n"
        assert cat(target, "/etc/satchel-release") == "satchel test image\n"
        labels = json.loads(cat(target, "/.singularity.d/labels.json"))
        assert labels["org.satchel.test"] == "busybox"  # the base image's labels are kept
        assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "localimage"
        assert "SATCHEL_TEST_ENV" in cat(target, "/.singularity.d/env/90-environment.sh")
        assert cat(target, "/.singularity.d/bootstrap_history/Singularity0").startswith("# The busybox")
        assert listing(target)["/usr/local/bin/busybox-suid"][0] == "-rwsr-xr-x"


def test_image_as_source_converts(tmp_path, busybox_sif, busybox_sandbox):
    sandbox = str(tmp_path / "sb")
    r = run_satchel(["build", "--sandbox", sandbox, busybox_sif])
    assert r.returncode == 0, r.stderr
    assert open(os.path.join(sandbox, "etc/satchel-release")).read() == "satchel test image\n"
    again = str(tmp_path / "again.sif")
    r = run_satchel(["build", again, sandbox])
    assert r.returncode == 0, r.stderr
    assert cat(again, "/etc/satchel-release") == "satchel test image\n"


def test_scratch_with_files(tmp_path):
    (tmp_path / "hello").write_text("hi")
    target, _ = build(tmp_path, "Bootstrap: scratch\n%files\n    hello /hello\n")
    files = listing(target)
    assert "/hello" in files and "/bin" not in files
    assert "/.singularity.d/actions/exec" in files


def test_quiet_silences_steps(tmp_path):
    deffile = tmp_path / "d.def"
    deffile.write_text("Bootstrap: busybox\n")
    r = run_satchel(["-q", "build", str(tmp_path / "q.sif"), str(deffile)])
    assert r.returncode == 0 and r.stderr == ""
    r = run_satchel(["build", str(tmp_path / "v.sif"), str(deffile)])
    assert "INFO:    Creating SquashFS file system" in r.stderr
    assert "done in" in r.stderr and "Build complete" in r.stderr


def test_message_levels(tmp_path):
    """-q keeps warnings, -s only errors, -v adds VERBOSE lines; the FATAL line always shows
    (its hint only above -s)."""
    deffile = tmp_path / "w.def"
    deffile.write_text("Bootstrap: busybox\nOSVersion: 12\n")  # warns: the key is unused
    warning = ("WARNING: header key 'osversion' is not used by the busybox bootstrap agent "
               "and is ignored")
    for flag in ("-q", "--quiet"):
        r = run_satchel([flag, "build", "--force", str(tmp_path / "q.sif"), str(deffile)])
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines() == [warning]
    for flag in ("-s", "--silent"):
        r = run_satchel([flag, "build", "--force", str(tmp_path / "s.sif"), str(deffile)])
        assert r.returncode == 0 and r.stderr == "", r.stderr
    r = run_satchel(["--verbose", "build", "--force", str(tmp_path / "v.sif"), str(deffile)])
    assert r.returncode == 0, r.stderr
    assert warning in r.stderr and "INFO:    " in r.stderr and "VERBOSE: " in r.stderr
    assert "VERBOSE: " not in run_satchel(["build", "--force", str(tmp_path / "d.sif"),
                                          str(deffile)]).stderr
    # an error: the FATAL line and its hint; under -s the FATAL line alone
    fatal = f"FATAL:   build target {tmp_path / 's.sif'} already exists\n"
    r = run_satchel(["build", str(tmp_path / "s.sif"), str(deffile)])
    assert r.returncode == 255 and r.stderr == fatal + "         hint: use --force to replace it\n"
    r = run_satchel(["-s", "build", str(tmp_path / "s.sif"), str(deffile)])
    assert r.returncode == 255 and r.stderr == fatal


def test_mksquashfs_args_choose_compression(tmp_path):
    target, _ = build(tmp_path, "Bootstrap: busybox\n", "--mksquashfs-args", "-comp gzip")
    part = partition(target)
    with open(target, "rb") as fh:
        fh.seek(part.offset + 20)
        compression = int.from_bytes(fh.read(2), "little")
    assert compression == 1  # gzip; the default is zstd (6)
    default, _ = build(tmp_path, "Bootstrap: busybox\n", name="default.sif")
    with open(default, "rb") as fh:
        fh.seek(partition(default).offset + 20)
        assert int.from_bytes(fh.read(2), "little") == 6


# --- interruption ---------------------------------------------------------------------------

def test_sigint_during_post_leaves_no_target_and_no_temporaries(tmp_path):
    deffile = tmp_path / "slow.def"
    marker = f"satchel-int-{os.getpid()}-{time.time_ns()}"
    deffile.write_text("Bootstrap: busybox\n%post\n"
                       f"    (exec -a {marker} sleep 300) &\n"
                       "    touch /started\n    sleep 300\n")
    proc = subprocess.Popen([SATCHEL, "build", str(tmp_path / "slow.sif"), str(deffile)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait_for_name_below(str(tmp_path), "started", 60):
        proc.kill()
        pytest.fail("%post never started")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"FATAL:   interrupted" in err
    assert leftovers(tmp_path) == ["slow.def"]
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


# --- bad input: one FATAL line, exit 255, nothing written -----------------------------------

@pytest.mark.parametrize("text,message", [
    ("Bootstrap: nosuchagent\n", "unsupported bootstrap agent 'nosuchagent'"),
    ("Bootstrap: busybox\nBogusKey: 1\n", "invalid header keyword found: boguskey"),
    ("Bootstrap: busybox\n%nosuchsection\n  x\n", "invalid section(s) specified: %nosuchsection"),
    ("%post\n  true\n", "the definition has no Bootstrap header"),
    ("Bootstrap: busybox\n%apprun foo\n  echo\n", "SCIF apps (%app* sections) are not supported"),
    ("Bootstrap: localimage\nFrom: /nonexistent.sif\n", "localimage source: image /nonexistent.sif not found"),
    ("Bootstrap: busybox\n%post -c\n  true\n", "%post -c needs an interpreter"),
    ("Bootstrap: busybox\nFrom: {{ x }}\n", "build argument 'x' is not defined"),
    ("Bootstrap: scratch\n%post\n  true\n", "%post: the image has no /bin/sh to run the scriptlet"),
])
def test_bad_definitions(tmp_path, text, message):
    _, r = build(tmp_path, text, check=False)
    assert r.returncode == 255, r.stderr
    lines = [line for line in r.stderr.splitlines() if not line.startswith(("INFO:", "WARNING:", "+ ", "         hint"))]
    assert len(lines) == 1 and lines[0].startswith("FATAL:   "), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr
    assert leftovers(tmp_path) == ["image.def"]


def test_bad_sources_and_targets(tmp_path):
    r = run_satchel(["build", str(tmp_path / "x.sif"), str(tmp_path / "missing.def")])
    assert r.returncode == 255 and "FATAL:   build source" in r.stderr
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x00\x01\x02garbage")
    r = run_satchel(["build", str(tmp_path / "x.sif"), str(binary)])
    assert r.returncode == 255 and "binary file" in r.stderr
    r = run_satchel(["build", str(tmp_path / "no" / "dir" / "x.sif"), str(binary)])
    assert r.returncode == 255 and "does not exist" in r.stderr
    r = run_satchel(["build", str(tmp_path / "x.sif")])
    assert r.returncode == 255 and "requires 2 arg(s)" in r.stderr
    sandbox = tmp_path / "dir-target"
    sandbox.mkdir()
    good = tmp_path / "good.def"
    good.write_text("Bootstrap: busybox\n")
    r = run_satchel(["build", "--force", str(sandbox), str(good)])
    assert r.returncode == 255 and "is a directory" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["binary", "dir-target", "good.def"]


def test_unused_header_key_warns(tmp_path):
    _, r = build(tmp_path, "Bootstrap: busybox\nOSVersion: 12\n")
    assert "WARNING: header key 'osversion' is not used by the busybox bootstrap agent" in r.stderr


def test_help_for_build():
    r = run_satchel(["build", "--help"])
    assert r.returncode == 0 and "--fakeroot" in r.stdout and "--sandbox" in r.stdout


@pytest.mark.parametrize("overlay", [True, False])
def test_localimage_sandbox_source_is_never_modified(tmp_path, overlay):
    """Sandbox sources are mounted as an overlay (or copied without one): %post changes go to
    the new image only."""
    base, _ = build(tmp_path, "Bootstrap: busybox\n%post\n    echo base > /etc/base\n",
                    "--sandbox", name="base")
    before = sorted(os.path.relpath(os.path.join(d, n), base)
                    for d, dirs, files in os.walk(base) for n in dirs + files)
    text = (f"Bootstrap: localimage\nFrom: {base}\n"
            "%post\n    echo changed >> /etc/base\n    rm /etc/group\n    rm -r /home\n"
            "    echo new > /new\n")
    env = {} if overlay else {"SATCHEL_BUILD_NO_OVERLAY": "1"}
    deffile = tmp_path / "l.def"
    deffile.write_text(text)
    target = str(tmp_path / "l.sif")
    r = run_satchel(["-v", "build", target, str(deffile)], env=env)
    assert r.returncode == 0, r.stderr
    assert ("mounted as an overlay" in r.stderr) == overlay
    assert open(os.path.join(base, "etc", "base")).read() == "base\n"
    after = sorted(os.path.relpath(os.path.join(d, n), base)
                   for d, dirs, files in os.walk(base) for n in dirs + files)
    assert after == before
    files = listing(target)
    assert cat(target, "/etc/base") == "base\nchanged\n"
    assert "/etc/group" not in files and "/home" not in files and "/new" in files
    assert leftovers(tmp_path) == ["base", "image.def", "l.def", "l.sif"]
    sandbox = str(tmp_path / "l-sandbox")
    r = run_satchel(["build", "--sandbox", sandbox, str(deffile)], env=env)
    assert r.returncode == 0, r.stderr
    assert open(os.path.join(sandbox, "etc", "base")).read() == "base\nchanged\n"
    assert not os.path.ismount(sandbox)


def test_squashfs_progress_bar_only_on_a_terminal(tmp_path):
    """Conversion shows mksquashfs's progress bar on a terminal, and nothing under -q or a pipe."""
    import pty
    import select

    definition = os.path.join(os.path.dirname(__file__), "..", "data", "busybox.def")

    def on_pty(args):
        pid, fd = pty.fork()
        if pid == 0:
            import fcntl
            import struct
            import termios
            # a real terminal has a size; mksquashfs draws no bar on a 0-column one
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            os.execv(SATCHEL, [SATCHEL] + args)
        chunks = []
        while True:
            ready, _, _ = select.select([fd], [], [], 120)
            if not ready:
                break
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")

    code, out = on_pty(["build", str(tmp_path / "a.sif"), definition])
    assert code == 0, out
    assert "100%" in out and "[" in out  # mksquashfs's bar: [====...] n/n 100%
    code, out = on_pty(["-q", "build", str(tmp_path / "b.sif"), definition])
    assert code == 0, out
    assert "100%" not in out
    piped = run_satchel(["build", str(tmp_path / "c.sif"), definition])
    assert piped.returncode == 0 and "100%" not in piped.stderr + piped.stdout


# --- %files from the output's own directory, %test's environment --------------------------

def image_paths(image, under):
    """Paths below `under` in a SIF's file system, relative to it."""
    out = subprocess.run(["unsquashfs", "-l", "-o", str(partition(image).offset), image,
                          under.lstrip("/")], capture_output=True, text=True, check=True).stdout
    prefix = "squashfs-root" + under.rstrip("/") + "/"
    return sorted(line[len(prefix):] for line in out.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("base", ["busybox", "localimage"])
def test_files_dot_from_the_output_directory_copies_only_the_project(base, tmp_path, busybox_sif):
    """`satchel build app.sif Singularity.def` in a project whose %files copies `.`: the work
    directory next to app.sif (and the partial image) must not be swept in, nor copied into
    itself (with a localimage base it once grew to 9.3 GB)."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')\n")
    (project / "README").write_text("readme\n")
    header = "Bootstrap: busybox\n" if base == "busybox" else \
        f"Bootstrap: localimage\nFrom: {busybox_sif}\n"
    (project / "Singularity.def").write_text(header + "%files\n    . /opt/app\n")
    r = run_satchel(["build", "app.sif", "Singularity.def"], cwd=str(project), timeout=60)
    assert r.returncode == 0, r.stderr
    assert image_paths(str(project / "app.sif"), "/opt/app") == [
        "README", "Singularity.def", "src", "src/main.py"]
    assert leftovers(project) == ["README", "Singularity.def", "app.sif", "src"]


def test_test_section_sees_the_host_environment_without_apptainer_variables(tmp_path):
    """Apptainer's build runs %test like `apptainer test`: host variables pass, APPTAINER_* and
    SINGULARITY_* do not, APPTAINERENV_X sets X."""
    text = ("Bootstrap: busybox\n%test\n"
            '    echo "marker=$BUILD_HOST_MARKER injected=$INJECTED"\n'
            '    test -z "${APPTAINER_FOO:-}${SINGULARITY_FOO:-}" && echo no-runtime-variables\n')
    deffile = tmp_path / "image.def"
    deffile.write_text(text)
    r = run_satchel(["build", str(tmp_path / "image.sif"), str(deffile)],
                    env={"BUILD_HOST_MARKER": "from-host", "APPTAINER_FOO": "1",
                         "SINGULARITY_FOO": "1", "APPTAINERENV_INJECTED": "yes"})
    assert r.returncode == 0, r.stderr
    assert "marker=from-host injected=yes" in r.stdout
    assert "no-runtime-variables" in r.stdout
