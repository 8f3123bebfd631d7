"""Commands Apptainer users reach for: completion scripts, and the library/keyserver commands
that say in one line that no such endpoint is configured here."""

import subprocess

import pytest

from satchel.cli import main


def test_completion_bash_is_valid_and_knows_action_flags(capsys):
    assert main.main(["satchel", "completion", "bash"]) == 0
    script = capsys.readouterr().out
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    exec_line = [line for line in script.splitlines() if line.strip().startswith("exec)")][0]
    assert "--cwd" in exec_line and "--memory" in exec_line and "--bind" in exec_line
    # the completion works: a bash that sources it completes `satchel ex` to exec
    probe = script + 'COMP_WORDS=(satchel ex); COMP_CWORD=1; _satchel_complete; ' \
                     'echo "${COMPREPLY[@]}"\n'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["exec"]


def test_completion_zsh_and_fish(capsys):
    assert main.main(["satchel", "completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("#compdef satchel")
    assert main.main(["apptainer", "completion", "fish"]) == 0
    fish = capsys.readouterr().out
    assert "complete -c apptainer -n '__fish_seen_subcommand_from exec' -l cwd" in fish
    assert main.main(["satchel", "completion", "tcsh"]) == 255
    assert "unsupported shell" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["remote", "list"], "no library endpoint is configured"),
    (["remote", "add", "--no-login", "x", "https://x"], "no library endpoint is configured"),
    (["search", "alpine"], "no library endpoint is configured"),
    (["delete", "-F", "library://a/b/c:1"], "no library endpoint is configured"),
    (["keyserver", "list"], "no keyserver endpoint is configured"),
])
def test_library_commands_say_why(argv, needle, capsys):
    assert main.main(["satchel"] + argv) == 255
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("FATAL:") and needle in err
