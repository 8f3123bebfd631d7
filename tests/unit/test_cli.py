"""The CLI conventions: version, help, FATAL lines and exit status 255, no tracebacks."""

import subprocess

from support.fixtures_users import SATCHEL, run_satchel

from satchel.cli import options as o
from satchel.errors import UsageError

import pytest


def test_version_flag():
    r = run_satchel(["--version"])
    assert r.returncode == 0
    assert r.stdout.startswith("satchel version ")
    assert r.stdout.count("\n") == 1


def test_version_command_prints_number():
    from satchel import __version__
    r = run_satchel(["version"])
    assert r.returncode == 0
    assert r.stdout == f"{__version__}\n"  # the number alone, as `apptainer version` prints it
    assert run_satchel(["--version"]).stdout == f"satchel version {__version__}\n"


def test_help_for_one_command():
    for args in (["help", "exec"], ["exec", "--help"], ["--help", "exec"]):
        r = run_satchel(args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.startswith("Usage:\n  satchel exec "), args
        assert "--bind" in r.stdout and "--contain" in r.stdout, args
    r = run_satchel(["help", "no-such-command"])
    assert r.returncode == 255 and r.stderr.startswith("FATAL:   unknown command")


@pytest.mark.parametrize("flag", ["-d", "--debug"])
def test_traceback_only_under_debug(tmp_path, flag):
    missing = str(tmp_path / "missing.sif")
    plain = run_satchel(["inspect", missing])
    assert plain.returncode == 255
    assert plain.stderr == f"FATAL:   image {missing} not found: no such file or directory\n"
    debug = run_satchel([flag, "inspect", missing])
    assert debug.returncode == 255
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert debug.stderr.splitlines()[-1] == plain.stderr.rstrip("\n")


@pytest.mark.parametrize("flags", [["-s"], ["--silent"], ["-q"], ["--quiet"], ["-v"],
                                   ["--verbose"]])
def test_level_flags_never_hide_the_fatal_line(tmp_path, flags):
    missing = str(tmp_path / "missing.sif")
    r = run_satchel(flags + ["inspect", missing])
    assert r.returncode == 255
    assert r.stderr == f"FATAL:   image {missing} not found: no such file or directory\n"


def test_help_lists_commands():
    r = run_satchel(["help"])
    assert r.returncode == 0
    for cmd in ("build", "exec", "inspect", "sif"):
        assert f"  {cmd}" in r.stdout


def test_unknown_command_is_one_fatal_line():
    r = run_satchel(["no-such-command"])
    assert r.returncode == 255
    assert r.stderr.startswith("FATAL:   unknown command 'no-such-command'")
    assert "Traceback" not in r.stderr


def test_control_characters_from_input_stay_on_the_fatal_line(tmp_path):
    """A newline or tab in a path the user gave is shown escaped: the error stays one line."""
    missing = str(tmp_path / "two\nlines\tand tab.sif")
    r = run_satchel(["exec", missing, "true"])
    assert r.returncode == 255
    escaped = missing.replace("\n", "\\n").replace("\t", "\\t")
    assert r.stderr == f"FATAL:   image {escaped} not found: no such file or directory\n"


def test_unknown_global_flag():
    r = run_satchel(["--bogus", "version"])
    assert r.returncode == 255
    assert r.stderr.startswith("FATAL:   unknown flag: --bogus")


def test_entry_script_runs_interpreter_directly():
    first = open(SATCHEL, "rb").readline()
    assert first.startswith(b"#!/") and b"python3" in first and b"sh" not in first.split(b"/")[-1][:2]
    assert first.rstrip().endswith(b" -IS")


SPEC = o.Spec("x", "x", "test", options=(
    o.Opt("-B --bind", "bind", o.LIST),
    o.Opt("-c --contain", "contain"),
    o.Opt("-e --cleanenv", "cleanenv"),
    o.Opt("--pwd", "pwd", o.VALUE),
), interspersed=False, min_args=1)


def test_parser_bundled_shorts_and_values():
    p = o.parse(SPEC, ["-ce", "-B/a:/b", "--bind", "/c", "--pwd=/x", "img", "ls", "-l"])
    assert p.contain and p.cleanenv
    assert p.bind == ["/a:/b", "/c"]
    assert p.pwd == "/x"
    assert p.args == ["img", "ls", "-l"]


def test_parser_stops_at_first_positional():
    p = o.parse(SPEC, ["img", "--bind", "x"])
    assert p.bind == [] and p.args == ["img", "--bind", "x"]


def test_parser_errors():
    with pytest.raises(UsageError, match="unknown flag: --nope"):
        o.parse(SPEC, ["--nope", "img"])
    with pytest.raises(UsageError, match="needs an argument"):
        o.parse(SPEC, ["--pwd"])
    with pytest.raises(UsageError, match="requires at least 1"):
        o.parse(SPEC, [])


def test_parser_env_default(monkeypatch):
    spec = o.Spec("x", "x", "t", options=(o.Opt("-c --contain", "contain", env=("APPTAINER_CONTAIN",)),))
    monkeypatch.setenv("APPTAINER_CONTAIN", "true")
    assert o.parse(spec, []).contain is True
    assert o.parse(spec, ["--contain=false"]).contain is False


@pytest.mark.parametrize("argv", [["cache", "list", "--help"], ["cache", "clean", "-h"],
                                  ["build", "--force", "--help"], ["exec", "-c", "--help"]])
def test_help_flag_anywhere_among_options(argv):
    r = run_satchel(argv)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage:\n  satchel " + argv[0])


def test_help_after_the_image_belongs_to_the_command():
    p = o.parse(SPEC, ["img", "ls", "--help"])
    assert p.args == ["img", "ls", "--help"]
