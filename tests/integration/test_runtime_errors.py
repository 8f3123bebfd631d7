"""Bad input: one FATAL line, a non-zero status (255), no traceback, nothing left mounted."""

import os
import subprocess

import pytest

from support.assertions import one_fatal
from support.fixtures_runtime import assert_nothing_left


def test_missing_image(who):
    r = who.run(["exec", "/nonexistent/image.sif", "true"])
    one_fatal(r, "/nonexistent/image.sif", "not found")


def test_not_an_image(who):
    path = os.path.join(who.tmp(), "notes.txt")
    with open(path, "w") as fh:
        fh.write("just text\n" * 20)
    os.chmod(path, 0o644)
    r = who.run(["exec", path, "true"])
    one_fatal(r, "not a valid image")


def test_corrupt_sif(who, rt_images):
    r = who.run(["exec", rt_images.corrupt, "true"])
    one_fatal(r, "corrupt SIF image")
    assert_nothing_left(rt_images.corrupt)


def test_sif_without_primary_partition(who, rt_images):
    r = who.run(["exec", rt_images.dataonly, "true"])
    one_fatal(r, "no primary system partition")


def test_missing_bind_source(who, busybox_sif):
    r = who.run(["exec", "-B", "/nonexistent/src:/mnt", busybox_sif, "true"])
    one_fatal(r, "bind source /nonexistent/src does not exist")
    assert_nothing_left(busybox_sif)


def test_bind_onto_root(who, busybox_sif):
    src = who.tmp()
    r = who.run(["exec", "-B", f"{src}:/", busybox_sif, "true"])
    one_fatal(r, "cannot bind onto the container's root")
    r = who.run(["exec", "--mount", f"type=bind,source={src},destination=/", busybox_sif, "true"])
    one_fatal(r, "cannot bind onto the container's root")


def test_bind_kind_mismatch(who, busybox_sif):
    """A file onto a directory (or the reverse) is refused in the container's terms."""
    r = who.run(["exec", "-B", "/etc/hostname:/etc", busybox_sif, "true"])
    one_fatal(r, "cannot mount a file onto /etc: it is a directory in the container")
    assert "session" not in r.stderr  # no staging paths in what the user reads
    r = who.run(["exec", "-B", f"{who.tmp()}:/etc/passwd", busybox_sif, "true"])
    one_fatal(r, "cannot mount a directory onto /etc/passwd: it is a file in the container")
    assert_nothing_left(busybox_sif)


def test_relative_bind_destination(who, busybox_sif):
    src = who.tmp()
    r = who.run(["exec", "-B", f"{src}:relative/dir", busybox_sif, "true"])
    one_fatal(r, "must be an absolute path")


def test_bad_bind_option(who, busybox_sif):
    src = who.tmp()
    r = who.run(["exec", "-B", f"{src}:/mnt:rx", busybox_sif, "true"])
    one_fatal(r, "invalid bind specification")
    r = who.run(["exec", "--mount", f"type=volume,source={src},destination=/x", busybox_sif,
                 "true"])
    one_fatal(r, "only type=bind")


@pytest.fixture
def unwritable_dir(who):
    if who.rootless:
        path = who.tmp()
        os.chown(path, 0, 0)
        os.chmod(path, 0o755)
        yield path
        return
    # root may write anywhere DAC-wise: a read-only mount is what it cannot write
    path = who.tmp()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


def test_unwritable_overlay(who, busybox_sif, unwritable_dir):
    r = who.run(["exec", "--overlay", unwritable_dir, busybox_sif, "true"])
    one_fatal(r, "overlay", "not writable")
    assert_nothing_left(busybox_sif)


def test_missing_overlay(who, busybox_sif):
    r = who.run(["exec", "--overlay", "/nonexistent/overlay", busybox_sif, "true"])
    one_fatal(r, "does not exist")


def test_unknown_option(who, busybox_sif):
    r = who.run(["exec", "--no-such-option", busybox_sif, "true"])
    one_fatal(r, "unknown flag: --no-such-option")


def test_unknown_no_mount_value(who, busybox_sif):
    r = who.run(["exec", "--no-mount", "bogus", busybox_sif, "true"])
    one_fatal(r, "--no-mount bogus")


def test_refused_options(who, busybox_sif):
    r = who.run(["exec", "--keep-privs", busybox_sif, "true"])
    one_fatal(r, "--keep-privs is not supported")


def test_no_shell_in_container(who, rt_images):
    r = who.run(["exec", rt_images.nosh, "/bin/busybox", "true"])
    one_fatal(r, "No valid /bin/sh in container")
    assert_nothing_left(rt_images.nosh)


def test_missing_command(who, busybox_sif):
    r = who.run(["exec", busybox_sif, "no-such-command"])
    assert r.returncode == 255
    assert r.stderr.startswith('FATAL:   "no-such-command": executable file not found in $PATH')


def test_missing_pwd(who, busybox_sif):
    r = who.run(["exec", "--pwd", "/no/such/dir", busybox_sif, "true"])
    one_fatal(r, "could not set working directory /no/such/dir")
    assert_nothing_left(busybox_sif)


def test_exec_needs_a_command(who, busybox_sif):
    r = who.run(["exec", busybox_sif])
    one_fatal(r, "requires at least 2 arg(s)")


def test_bad_env_file(who, busybox_sif):
    path = os.path.join(who.tmp(), "env")
    with open(path, "w") as fh:
        fh.write("GOOD=1\nthis is not an assignment\n")
    os.chmod(path, 0o644)
    r = who.run(["exec", "--env-file", path, busybox_sif, "true"])
    one_fatal(r, "expected KEY=VALUE")
