"""A real distribution image (Debian bookworm from debootstrap): dash as /bin/sh, bash for
`shell`, glibc programs resolving the caller through the generated /etc/passwd."""

import pytest

from support.fixtures_runtime import assert_nothing_left

pytestmark = pytest.mark.slow


def test_debian_exec_as_caller(who, debian_sif):
    r = who.run(["exec", debian_sif, "sh", "-c",
                 'readlink /bin/sh; id -un; getent passwd "$(id -u)" | cut -d: -f1,6; '
                 'grep -c "^_apt:" /etc/passwd; whoami; echo "$HOME"'])
    assert r.returncode == 0, r.stderr
    name = "satchel-test" if who.rootless else "root"
    assert r.stdout.split("\n")[:6] == ["dash", name, f"{name}:{who.home}", "1", name,
                                        who.home]
    assert_nothing_left(debian_sif)


def test_debian_environment_under_dash(who, debian_sif):
    r = who.run(["exec", debian_sif, "sh", "-c", 'echo "$FOO|$BAR|$PATH"'],
                env={"FOO": "host", "APPTAINERENV_BAR": "injected"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "host|injected|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:" \
                       "/sbin:/bin\n"


def test_debian_shell_is_bash(who, debian_sif):
    r = who.run(["shell", debian_sif, "-c", 'echo "$SHELL $BASH_VERSION"'], input=b"")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("/bin/bash 5.")


def test_debian_glibc_program_and_dynamic_loader(who, debian_sif):
    r = who.run(["exec", debian_sif, "ls", "-ld", "/usr/lib", "/proc/self/root"])
    assert r.returncode == 0, r.stderr
    assert "/usr/lib" in r.stdout


def test_debian_ptys_in_a_batch_job(who, debian_sif):
    # no terminal attached: a private devpts instance whose ptmx the container can open
    r = who.run(["exec", debian_sif, "script", "-qc", "tty; id -u", "/dev/null"], input=b"")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r", "").split("\n")[:2] == ["/dev/pts/0", str(who.uid)]
