"""run, test and shell: the runscript with its arguments, %test, an interactive shell on a pty."""

import fcntl
import os
import pty
import select
import subprocess
import termios
import time

from support.fixtures_runtime import assert_nothing_left


def test_run_runs_the_runscript_with_arguments(who, busybox_sif):
    r = who.run(["run", busybox_sif, "one", "two words", "three"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "runscript args: one two words three\n"


def test_run_without_runscript_falls_back_to_sh(who, rt_images):
    r = who.run(["run", rt_images.suid, "-c", "echo fallback $0"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "fallback /bin/sh\n"
    assert "No runscript found in container, executing /bin/sh" in r.stderr


def test_test_runs_the_test_section(who, busybox_sif):
    r = who.run(["test", busybox_sif])
    assert r.returncode == 0, r.stderr


def test_test_status_is_the_scripts(who, busybox_sandbox):
    # a sandbox whose %test (test -f /etc/satchel-release) fails: a device node bound over it
    r = who.run(["test", "-B", "/dev/null:/etc/satchel-release", busybox_sandbox])
    assert r.returncode == 1, (r.stdout, r.stderr)


def test_test_without_test_script(who, rt_images):
    r = who.run(["test", rt_images.suid])
    assert r.returncode == 0
    assert "No test script found in container, exiting" in r.stderr


def _run_on_pty(argv, env, cwd, script: bytes, timeout=30) -> tuple[int, bytes]:
    master, slave = pty.openpty()

    def make_controlling_tty():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                            preexec_fn=make_controlling_tty, close_fds=True)
    os.close(slave)
    output = b""
    sent = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the slave side is closed, the shell is gone
                break
            if not chunk:
                break
            output += chunk
        if not sent and b"> " in output:  # the prompt: the shell is interactive and waiting
            os.write(master, script)
            sent = True
        if proc.poll() is not None and not ready:
            break
    os.close(master)
    return proc.wait(10), output


def test_shell_on_a_real_pty(who, busybox_sif):
    env = who.env({"TERM": "dumb"})
    code, out = _run_on_pty(who.argv(["shell", busybox_sif]), env, who.home,
                            b"echo answer=$((6*7)); tty; test -t 0 && echo stdin-is-tty; "
                            b"echo $SHELL; exit 5\n")
    text = out.decode(errors="replace")
    assert code == 5, text
    assert "answer=42" in text
    assert "/dev/pts/" in text  # the user's terminal, visible in the container
    assert "stdin-is-tty" in text
    assert "Apptainer> " in text  # the prompt the image's 99-base.sh sets
    assert_nothing_left(busybox_sif)


def test_shell_prompt_default(who, rt_images):
    # an image without 99-base.sh gets satchel's own prompt when the host exports no PS1;
    # an exported one passes through like any other host variable
    r = who.run(["exec", rt_images.suid, "sh", "-c", 'echo "$PS1"'], env={"PS1": "host$ "})
    assert r.stdout == "host$ \n"  # exported on the host: passes through like any variable
    r = who.run(["exec", rt_images.suid, "sh", "-c", 'echo "$PS1"'])
    assert r.stdout == "Satchel> \n"


def test_shell_option_chooses_the_shell(who, busybox_sif):
    r = who.run(["shell", "--shell", "/bin/ash", busybox_sif, "-c", "echo $SHELL"],
                input=b"")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/bin/ash\n"
