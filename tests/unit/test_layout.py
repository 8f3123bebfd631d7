"""The /.singularity.d layout: files, links, mount points, metadata, OCI runscript/env rules."""

import json
import os
import re
import subprocess

import pytest

from satchel.build import deffile, layout
from satchel.build.agents import FetchResult


def definition(text):
    stages, _ = deffile.parse(text)
    return stages[-1]


@pytest.fixture
def rootfs(tmp_path):
    r = tmp_path / "rootfs"
    r.mkdir()
    return str(r)


ENV_SCRIPTS = ["01-base.sh", "90-environment.sh", "94-appsbase.sh", "95-apps.sh", "99-base.sh", "99-runtimevars.sh"]


def test_prepare_creates_the_layout(rootfs):
    layout.prepare(rootfs)
    sd = os.path.join(rootfs, ".singularity.d")
    assert sorted(os.listdir(os.path.join(sd, "actions"))) == ["exec", "run", "shell", "start", "test"]
    assert sorted(os.listdir(os.path.join(sd, "env"))) == ENV_SCRIPTS
    for name in ("libs",):
        assert os.path.isdir(os.path.join(sd, name))
    for name in ("runscript", "startscript"):
        assert os.access(os.path.join(sd, name), os.X_OK)
    for d in ("proc", "sys", "dev", "tmp", "home", "root", "var/tmp", "etc"):
        assert os.path.isdir(os.path.join(rootfs, d)), d
    assert os.stat(os.path.join(rootfs, "tmp")).st_mode & 0o7777 == 0o1777
    for f in ("etc/hosts", "etc/resolv.conf", "etc/passwd", "etc/group"):
        assert os.path.isfile(os.path.join(rootfs, f)), f
    assert os.readlink(os.path.join(rootfs, "singularity")) == ".singularity.d/runscript"
    assert os.readlink(os.path.join(rootfs, ".exec")) == ".singularity.d/actions/exec"
    assert os.readlink(os.path.join(rootfs, "environment")) == ".singularity.d/env/90-environment.sh"


def test_env_scripts_sort_in_apptainer_order(rootfs):
    layout.prepare(rootfs, FetchResult(env=["A=1"]))
    layout.write_file(rootfs, layout.POST_ENVIRONMENT, layout.ENV_91_ENVIRONMENT, 0o755)
    names = sorted(os.listdir(os.path.join(rootfs, ".singularity.d", "env")))
    assert names == ["01-base.sh", "10-docker2singularity.sh", "90-environment.sh",
                     "91-environment.sh", "94-appsbase.sh", "95-apps.sh", "99-base.sh", "99-runtimevars.sh"]


def test_prepare_keeps_existing_files_without_overwrite(rootfs):
    os.makedirs(os.path.join(rootfs, ".singularity.d"))
    with open(os.path.join(rootfs, ".singularity.d", "runscript"), "w") as fh:
        fh.write("#!/bin/sh\necho mine\n")
    layout.prepare(rootfs, overwrite=False)
    assert "echo mine" in open(os.path.join(rootfs, ".singularity.d", "runscript")).read()
    layout.prepare(rootfs, overwrite=True)
    assert "echo mine" not in open(os.path.join(rootfs, ".singularity.d", "runscript")).read()


def test_fetch_result_keep_layout_keeps_the_image_files(rootfs):
    """An agent whose rootfs has its own /.singularity.d (localimage, oras, a SIF exported to
    OCI and converted back) says so in its FetchResult; prepare() then keeps its runscript."""
    os.makedirs(os.path.join(rootfs, ".singularity.d"))
    with open(os.path.join(rootfs, ".singularity.d", "runscript"), "w") as fh:
        fh.write("#!/bin/sh\necho mine\n")
    layout.prepare(rootfs, FetchResult(keep_layout=True))
    assert "echo mine" in open(os.path.join(rootfs, ".singularity.d", "runscript")).read()
    layout.prepare(rootfs, FetchResult())
    assert "echo mine" not in open(os.path.join(rootfs, ".singularity.d", "runscript")).read()


def test_image_symlinks_cannot_redirect_writes_outside(tmp_path, rootfs):
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("host file")
    os.symlink("/../../host", os.path.join(rootfs, ".singularity.d"))
    os.makedirs(os.path.join(rootfs, "etc"))
    os.symlink(str(host / "passwd"), os.path.join(rootfs, "etc", "passwd"))
    layout.prepare(rootfs)
    assert os.listdir(host) == ["passwd"]
    assert (host / "passwd").read_text() == "host file"
    # the .singularity.d link was followed *inside* the rootfs
    assert os.path.isdir(os.path.join(rootfs, "host", "env"))


def test_finish_writes_metadata(rootfs):
    d = definition("Bootstrap: busybox\nFrom: x\n"
                   "%labels\n  Author me\n"
                   "%environment\n  export A=1\n"
                   "%runscript\n  echo run\n"
                   "%startscript -c /bin/bash\n  echo start\n"
                   "%test\n#!/bin/ash\n  echo test\n"
                   "%help\n  Help text.\n")
    layout.prepare(rootfs)
    labels = layout.finish(rootfs, d)
    sd = os.path.join(rootfs, ".singularity.d")
    assert open(os.path.join(sd, "runscript")).read() == "#!/bin/sh\n\n  echo run\n"
    assert open(os.path.join(sd, "startscript")).read().startswith("#!/bin/bash\n")
    assert open(os.path.join(sd, "test")).read().startswith("#!/bin/ash\n")
    assert open(os.path.join(sd, "runscript.help")).read() == "  Help text.\n"
    assert "export A=1" in open(os.path.join(sd, "env", "90-environment.sh")).read()
    assert open(os.path.join(sd, "Singularity")).read() == d.full_raw
    on_disk = json.loads(open(os.path.join(sd, "labels.json")).read())
    assert on_disk == labels
    assert labels["Author"] == "me"
    assert labels["org.label-schema.schema-version"] == "1.0"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "busybox"
    assert labels["org.label-schema.usage.singularity.deffile.from"] == "x"
    assert labels["org.label-schema.usage"] == "/.singularity.d/runscript.help"
    assert labels["org.label-schema.usage.singularity.version"]
    assert labels["org.label-schema.build-arch"] == "amd64"
    assert re.fullmatch(r"[A-Z][a-z]+day_\d{1,2}_[A-Z][a-z]+_\d{4}_\d{1,2}:\d{1,2}:\d{1,2}_\S+",
                        labels["org.label-schema.build-date"])
    # a tab-indented JSON object, as Apptainer writes it
    assert open(os.path.join(sd, "labels.json")).read().startswith('{\n\t"Author": "me",')


def test_second_build_keeps_definition_history_and_label_rules(rootfs):
    layout.prepare(rootfs)
    layout.finish(rootfs, definition("Bootstrap: busybox\n%labels\n  A one\n"))
    layout.finish(rootfs, definition("Bootstrap: localimage\nFrom: x\n%labels\n  A two\n  B b\n"))
    history = os.path.join(rootfs, ".singularity.d", "bootstrap_history")
    assert os.listdir(history) == ["Singularity0"]
    labels = layout.read_labels(rootfs)
    assert labels["A"] == "one"  # no --force: an existing label is kept (Apptainer's rule)
    assert labels["B"] == "b"
    layout.finish(rootfs, definition("Bootstrap: localimage\nFrom: x\n%labels\n  A three\n"), force=True)
    assert layout.read_labels(rootfs)["A"] == "three"


def test_post_labels_file_is_merged_and_removed(rootfs):
    layout.prepare(rootfs)
    with open(os.path.join(rootfs, ".build.labels"), "w") as fh:
        fh.write("FromPost yes\n")
    labels = layout.finish(rootfs, definition("Bootstrap: busybox\n"))
    assert labels["FromPost"] == "yes"
    assert not os.path.exists(os.path.join(rootfs, ".build.labels"))


def test_environment_appends_to_existing(rootfs):
    layout.prepare(rootfs)
    layout.finish(rootfs, definition("Bootstrap: busybox\n%environment\n  export A=1\n"))
    layout.finish(rootfs, definition("Bootstrap: busybox\n%environment\n  export B=2\n"))
    text = open(os.path.join(rootfs, ".singularity.d", "env", "90-environment.sh")).read()
    assert text.index("export A=1") < text.index("export B=2")


def sh(script, *args, env=None):
    return subprocess.run(["/bin/sh", "-c", script, "sh"] + list(args), capture_output=True,
                          text=True, env=env or {"PATH": "/usr/bin:/bin"})


def test_docker_env_script_semantics():
    text = layout.docker_env_script(["PATH=/opt/bin:/usr/bin:/bin", "A=image", 'Q=a "b" $c `d`',
                                     "NOVALUE", "bad-name=x"])
    assert "bad-name" not in text
    out = sh(text + '\necho "$PATH|$A|$Q|${NOVALUE-unset}"', env={"PATH": "/usr/bin:/bin", "A": "host"})
    assert out.stdout.strip() == '/opt/bin:/usr/bin:/bin|host|a "b" $c `d`|'


@pytest.mark.parametrize("entrypoint,cmd,args,expected", [
    ([], ["echo", "cmd"], [], "cmd"),
    ([], ["echo", "cmd"], ["echo", "over"], "over"),
    (["echo", "ep"], [], ["x"], "ep x"),
    (["echo", "ep"], ["default"], [], "ep default"),
    (["echo", "ep"], ["default"], ["given"], "ep given"),
    (["echo"], ["it's", "a b"], [], "it's a b"),
])
def test_oci_runscript_rules(entrypoint, cmd, args, expected):
    script = layout.oci_runscript(entrypoint, cmd)
    assert sh(script, *args).stdout.strip() == expected
    no_eval = sh(script, *args, env={"PATH": "/usr/bin:/bin", "SINGULARITY_NO_EVAL": "1"})
    assert no_eval.stdout.strip() == expected


def test_oci_runscript_no_eval_keeps_arguments_literal():
    script = layout.oci_runscript(["echo"], [])
    assert sh(script, "$HOME").stdout.strip() == ""  # evaluated (Apptainer's default)
    literal = sh(script, "$HOME", env={"PATH": "/usr/bin:/bin", "APPTAINER_NO_EVAL": "1"})
    assert literal.stdout.strip() == "$HOME"


def test_apply_fetch_result(rootfs):
    layout.prepare(rootfs, FetchResult(env=["X=1"], cmd=["/bin/true"], labels={"maintainer": "x"}))
    sd = os.path.join(rootfs, ".singularity.d")
    assert 'X="${X:-"1"}"' in open(os.path.join(sd, "env", "10-docker2singularity.sh")).read()
    assert "OCI_CMD='\"/bin/true\"'" in open(os.path.join(sd, "runscript")).read()
    assert layout.read_labels(rootfs) == {"maintainer": "x"}


def _patched_action(sd, tmp_path, name):
    """actions/NAME pointed at this test's tree (its env scripts, test and runscript)."""
    text = open(os.path.join(sd, "actions", name)).read()
    for part in ("/env", "/runscript", "/test"):
        text = text.replace("/.singularity.d" + part, sd + part)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_action_files_are_what_the_runtime_runs(rootfs):
    """Issue 11 point 4: /.singularity.d/actions/X is, byte for byte, the script `satchel X`
    runs (default options), for every action the runtime has; none is left out or extra."""
    from satchel.runtime import environment
    layout.prepare(rootfs)
    actions = os.path.join(rootfs, ".singularity.d", "actions")
    assert sorted(os.listdir(actions)) == sorted(environment.ACTION_FILES)
    assert set(environment.ACTION_FILES) == {"exec", "run", "shell", "start", "test"}
    for name in environment.ACTION_FILES:
        script = environment.action_script(name, "Satchel> ", instance=name == "start")
        assert open(os.path.join(actions, name)).read() == "#!/bin/sh\n" + script, name
        assert os.access(os.path.join(actions, name), os.X_OK)


def test_action_test_without_test_script_agrees_with_satchel_test(rootfs, tmp_path):
    """Issue 11 point 4: on an image without %test, actions/test says what `satchel test`
    says (Apptainer's runtime: "No test script found in container, exiting", status 0), not
    a second message of its own."""
    from satchel.runtime import environment
    layout.prepare(rootfs)
    sd = os.path.join(rootfs, ".singularity.d")
    env = {"PATH": "/usr/bin:/bin"}
    from_file = subprocess.run(["/bin/sh", _patched_action(sd, tmp_path, "test")],
                               capture_output=True, text=True, env=env)
    runtime = environment.action_script("test", "Satchel> ")
    for part in ("/env", "/test"):
        runtime = runtime.replace("/.singularity.d" + part, sd + part)
    from_runtime = subprocess.run(["/bin/sh", "-c", runtime, "test"], capture_output=True,
                                  text=True, env=env)
    assert from_file.returncode == from_runtime.returncode == 0
    assert from_file.stderr == from_runtime.stderr
    assert "No test script found in container, exiting" in from_file.stderr


def test_action_scripts_run(rootfs, tmp_path):
    layout.prepare(rootfs)
    sd = os.path.join(rootfs, ".singularity.d")

    def patched(name):
        return _patched_action(sd, tmp_path, name)
    with open(os.path.join(sd, "env", "90-environment.sh"), "a") as fh:
        fh.write("export FROM_ENV=yes\n")
    out = subprocess.run(["/bin/sh", patched("exec"), "/bin/sh", "-c", 'echo "$FROM_ENV $LD_LIBRARY_PATH"'],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "yes /.singularity.d/libs"  # 99-base.sh was sourced
    out = subprocess.run(["/bin/sh", patched("run")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert "no runscript defined" in out.stdout


def test_runtimevars_path_handling():
    env = {"PATH": "/usr/bin:/bin", "SING_USER_DEFINED_PREPEND_PATH": "/pre",
           "SING_USER_DEFINED_APPEND_PATH": "/post"}
    out = sh(layout.ENV_99_RUNTIMEVARS + 'echo "$PATH ${SING_USER_DEFINED_PREPEND_PATH-gone}"', env=env)
    assert out.stdout.strip() == "/pre:/usr/bin:/bin:/post gone"
    out = sh(layout.ENV_99_RUNTIMEVARS + 'echo "$PATH"',
             env={"PATH": "/usr/bin", "SING_USER_DEFINED_PATH": "/only"})
    assert out.stdout.strip() == "/only"


def test_go_json_escapes_like_go():
    assert layout.go_json({"b": "x<y>&z\u2028", "a": "é"}) == \
        '{"a":"é","b":"x\\u003cy\\u003e\\u0026z\\u2028"}'
    assert layout.go_json({"k": "v"}, indent="\t") == '{\n\t"k": "v"\n}'
    assert layout.go_json({}, indent="\t") == "{}"


def test_build_date_format():
    import time
    labels = layout.build_date_labels(0)
    when = time.localtime(0)
    assert labels["org.label-schema.build-date"].startswith(
        f"{time.strftime('%A', when)}_{when.tm_mday}_{time.strftime('%B', when)}_{when.tm_year}_")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)",
                        labels["org.opencontainers.image.created"])
