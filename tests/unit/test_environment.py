"""The container environment (pure) and the action script, run by real shells (dash, busybox)."""

import subprocess

import pytest

from satchel.errors import UsageError
from satchel.runtime import environment as envmod
from satchel.runtime.environment import (DEFAULT_PATH, action_script, build_environment,
                                         parse_env_file, parse_env_option, sh_quote)


def _build(host_env, **kw):
    args = dict(cleanenv=False, home="/home/u", image_path="/img/x.sif", command="exec")
    args.update(kw)
    return build_environment(host_env, **args)


def test_host_passes_except_runtime_and_omitted():
    env = _build({"FOO": "1", "HOME": "/elsewhere", "PATH": "/host/bin",
                  "LD_LIBRARY_PATH": "/host/lib", "APPTAINER_X": "a", "SINGULARITY_Y": "b",
                  "SATCHEL_CONFIG": "c", "TERM": "xterm"}).environ
    assert env["FOO"] == "1" and env["TERM"] == "xterm"
    assert env["HOME"] == "/home/u"
    assert env["PATH"] == DEFAULT_PATH
    for gone in ("LD_LIBRARY_PATH", "APPTAINER_X", "SINGULARITY_Y", "SATCHEL_CONFIG"):
        assert gone not in env


def test_cleanenv_keeps_only_term_proxies_and_sets_lang():
    env = _build({"FOO": "1", "TERM": "vt100", "https_proxy": "http://p", "LANG": "de"},
                 cleanenv=True)
    assert "FOO" not in env.environ
    assert env.environ["TERM"] == "vt100" and env.environ["https_proxy"] == "http://p"
    assert env.environ["LANG"] == "C"
    assert "LANG" in env.host_names  # restored after the image's scripts unless they set it


def test_injection_precedence():
    host = {"SINGULARITYENV_A": "s", "APPTAINERENV_A": "a", "SINGULARITYENV_B": "sb",
            "APPTAINERENV_C": "ac", "C": "host-c", "APPTAINERENV_D": "ad"}
    env = _build(host, env_pairs=[("D", "opt")], env_file_pairs=[("C", "file"), ("D", "file")])
    assert env.environ["A"] == "a"        # APPTAINERENV_ over SINGULARITYENV_
    assert env.environ["B"] == "sb"
    assert env.environ["C"] == "file"     # --env-file over APPTAINERENV_ over the host
    assert env.environ["D"] == "opt"      # --env over everything
    assert set(env.forced_names) == {"A", "B", "C", "D"}
    assert "C" not in env.host_names
    assert env.environ[envmod.SAVE_FORCE].split() == env.forced_names


def test_path_and_home_injection():
    env = _build({"APPTAINERENV_PATH": "/p", "APPTAINERENV_PREPEND_PATH": "/pre",
                  "SINGULARITYENV_APPEND_PATH": "/app", "APPTAINERENV_HOME": "/h",
                  "APPTAINERENV_LD_LIBRARY_PATH": "/mylib"})
    assert env.environ["SING_USER_DEFINED_PATH"] == "/p"
    assert env.environ["SING_USER_DEFINED_PREPEND_PATH"] == "/pre"
    assert env.environ["SING_USER_DEFINED_APPEND_PATH"] == "/app"
    assert env.environ["HOME"] == "/home/u"
    assert env.environ["LD_LIBRARY_PATH"] == "/mylib"  # permitted through APPTAINERENV_
    assert any("Overriding HOME" in w for w in env.warnings)


def test_container_variables():
    env = _build({}, image_path="/a/b:c.sif", command="run", bind_list="/x:/y",
                 shell="/bin/zsh", extra={"CUDA_VISIBLE_DEVICES": "0"}).environ
    for prefix in ("APPTAINER_", "SINGULARITY_"):
        assert env[prefix + "CONTAINER"] == "/a/b:c.sif"
        assert env[prefix + "NAME"] == "b:c.sif"
        assert env[prefix + "COMMAND"] == "run"
        assert env[prefix + "BIND"] == "/x:/y"
    assert env["SINGULARITY_SHELL"] == "/bin/zsh"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"


def test_invalid_names_pass_but_are_not_restored():
    env = _build({"weird.name": "1", "OK_1": "2"})
    assert env.environ["weird.name"] == "1"
    assert "weird.name" not in env.host_names and "OK_1" in env.host_names


@pytest.mark.parametrize("values, expected", [
    (["A=1"], [("A", "1")]),
    (["A=1,B=2"], [("A", "1"), ("B", "2")]),
    (["A=1,2,3", "B=x=y"], [("A", "1,2,3"), ("B", "x=y")]),
    ([], []),
])
def test_parse_env_option(values, expected):
    assert parse_env_option(values) == expected


def test_parse_env_option_error():
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_env_option(["novalue"])


def test_parse_env_file():
    text = "# c\n\nexport A='one two'\nB=\"q\"\nC=plain=x\n  D = spaced \n"
    assert parse_env_file(text, "f") == [("A", "one two"), ("B", "q"), ("C", "plain=x"),
                                         ("D", "spaced")]
    with pytest.raises(UsageError, match="f:2: expected KEY=VALUE"):
        parse_env_file("A=1\n1BAD=2\n", "f")


SHELLS = [["/bin/sh"], ["/bin/busybox", "sh"]]


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
@pytest.mark.parametrize("text", ["plain", "it's", 'a "b" $c `d` \\e', "", "multi\nline"])
def test_sh_quote_round_trip(shell, text):
    out = subprocess.run(shell + ["-c", f"printf %s {sh_quote(text)}"], capture_output=True,
                         text=True, check=True).stdout
    assert out == text


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_action_script_restores_and_forces(shell):
    # no /.singularity.d on the host: the script's own logic alone is exercised here
    env = _build({"HOSTV": "h v", "APPTAINERENV_FORCED": "f'1", "APPTAINERENV_PREPEND_PATH": "/pre",
                  "PATH": "/usr/bin:/bin"}).environ
    env["PATH"] = "/usr/bin:/bin"
    script = action_script("exec", "P> ")
    out = subprocess.run(shell + ["-c", script, "exec", "/bin/sh", "-c",
                                  'echo "$HOSTV|$FORCED|$PATH|$LD_LIBRARY_PATH|$PS1|'
                                  '${__SATCHEL_HOST-none}|${SING_USER_DEFINED_PREPEND_PATH-no}"'],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "h v|f'1|/pre:/usr/bin:/bin|/.singularity.d/libs|P> |none|no\n"


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_action_script_missing_command(shell):
    out = subprocess.run(shell + ["-c", action_script("exec", "> "), "exec", "no-such-cmd-x"],
                         env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert out.returncode == 255
    assert out.stderr == 'FATAL:   "no-such-cmd-x": executable file not found in $PATH\n'


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
@pytest.mark.parametrize("before, after", [
    (None, "/.singularity.d/libs"),
    ("/a:/.singularity.d/libs:/b", "/.singularity.d/libs:/a:/b"),
    ("/.singularity.d/libs", "/.singularity.d/libs"),
    ("/x*y::/z", "/.singularity.d/libs:/x*y:/z"),
])
def test_action_script_libs_first(shell, before, after):
    env = {"PATH": "/usr/bin:/bin"}
    if before is not None:
        env["APPTAINERENV_LD_LIBRARY_PATH"] = before
    env = _build(env).environ
    env["PATH"] = "/usr/bin:/bin"
    out = subprocess.run(shell + ["-c", action_script("exec", "> ", libs_first=True), "exec",
                                  "/bin/sh", "-c", 'echo "$LD_LIBRARY_PATH"'],
                         env=env, capture_output=True, text=True, cwd="/")
    assert out.stdout == after + "\n", out.stderr


def test_action_script_unknown_action():
    with pytest.raises(UsageError):
        action_script("start", "> ")
