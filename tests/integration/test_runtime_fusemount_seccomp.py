"""--fusemount (host programs) and --security seccomp:PROFILE.json, end to end, as satchel-test
and as root."""

import json
import os
import subprocess

from support.assertions import fatal
from support.fixtures_runtime import assert_nothing_left


def squashfs(who, content: str) -> str:
    """A SquashFS file holding hello = content, in a directory of the identity's."""
    base = who.tmp()
    src = os.path.join(base, "src")
    os.mkdir(src)
    with open(os.path.join(src, "hello"), "w") as fh:
        fh.write(content)
    image = os.path.join(base, "data.sqsh")
    subprocess.run(["mksquashfs", src, image, "-quiet", "-noappend"], check=True,
                   capture_output=True)
    os.chmod(image, 0o644)
    return image


def test_fusemount_host_program_serves_inside(who, busybox_sif):
    """host:squashfuse_ll IMG /mnt/data: the program runs on the host (foreground, -f, given
    /dev/fd/N), the file system is at /mnt/data in the container, writable mounts stay
    nosuid,nodev, and nothing of it outlives the container."""
    image = squashfs(who, "hello-from-fuse\n")
    r = who.run(["exec", "--fusemount", f"host:squashfuse_ll {image} /mnt/data", busybox_sif,
                 "sh", "-c", "cat /mnt/data/hello; grep ' /mnt/data ' /proc/mounts"])
    assert r.returncode == 0, r.stderr
    text, mount = r.stdout.split("\n", 1)
    assert text == "hello-from-fuse"
    assert "fuse.squashfuse_ll" in mount and "nosuid" in mount and "nodev" in mount
    assert_nothing_left(image, timeout=5)


def test_fusemount_daemon_form_and_two_mounts(who, busybox_sif):
    """host-daemon: the program daemonizes itself; two --fusemount flags, two mounts."""
    one, two = squashfs(who, "one\n"), squashfs(who, "two\n")
    r = who.run(["exec", "--fusemount", f"host-daemon:squashfuse_ll {one} /a",
                 "--fusemount", f"host:squashfuse_ll {two} /b", busybox_sif,
                 "cat", "/a/hello", "/b/hello"])
    assert (r.returncode, r.stdout) == (0, "one\ntwo\n"), r.stderr
    assert_nothing_left(one, timeout=5)
    assert_nothing_left(two, timeout=5)


def test_fusemount_errors_are_one_line(who, busybox_sif):
    """A program that fails (not a SquashFS file) is named in one FATAL line; container:
    forms, missing programs and bad specifications are refused before anything runs."""
    bad = os.path.join(who.tmp(), "bad.sqsh")
    with open(bad, "w") as fh:
        fh.write("not squashfs\n")
    os.chmod(bad, 0o644)
    fatal(who.run(["exec", "--fusemount", f"host:squashfuse_ll {bad} /mnt/x", busybox_sif,
                   "true"], timeout=30), "fusemount /mnt/x", "squashfuse_ll")
    fatal(who.run(["exec", "--fusemount", "container:squashfuse_ll /i /mnt/x", busybox_sif,
                   "true"]), "container: is not supported")
    fatal(who.run(["exec", "--fusemount", "host:no-such-fuse-prog /i /mnt/x", busybox_sif,
                   "true"]), "not found")
    fatal(who.run(["exec", "--fusemount", "host:squashfuse_ll", busybox_sif, "true"]),
          "expected host:PROGRAM")


def profile(who, doc) -> str:
    path = os.path.join(who.tmp(), "profile.json")
    with open(path, "w") as fh:
        fh.write(doc if isinstance(doc, str) else json.dumps(doc))
    os.chmod(path, 0o644)
    return path


def test_seccomp_profile_denies_mkdir_only(who, busybox_sif):
    """--security seccomp:PROFILE.json: mkdir fails with EPERM, other calls work; without the
    profile mkdir works (the profile, not the container, refused it)."""
    path = profile(who, {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["reboot"], "action": "SCMP_ACT_ERRNO",
         "includes": {"caps": ["CAP_SYS_BOOT"]}}]})
    work = who.tmp()
    script = (f"mkdir {work}/d; echo mkdir=$?; touch {work}/f && echo touch=0; "
              f"cat /etc/passwd >/dev/null; echo cat=$?")
    r = who.run(["exec", "--security", f"seccomp:{path}", busybox_sif, "sh", "-c", script])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["mkdir=1", "touch=0", "cat=0"]
    assert "Operation not permitted" in r.stderr
    r = who.run(["exec", busybox_sif, "sh", "-c", f"mkdir {work}/d2 && echo ok"])
    assert r.stdout == "ok\n", r.stderr


def test_seccomp_errno_values_and_bad_profiles(who, busybox_sif):
    """errnoRet picks the error (ENOSYS here), a rule on argument values only matches those
    values; an unknown syscall name, bad JSON, a wrong action: one FATAL line each; AppArmor
    and SELinux stay refused."""
    path = profile(who, {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["fchmodat", "chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]}]})
    work = who.tmp()
    script = (f"touch {work}/f; chmod 600 {work}/f; echo chmod=$?; "
              "kill -USR1 $$ 2>/dev/null; echo usr1=$?; trap 'echo got-term' TERM; "
              "kill -TERM $$; echo term=$?")
    r = who.run(["exec", "--security", f"seccomp:{path}", busybox_sif, "sh", "-c", script])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["chmod=1", "usr1=1", "got-term", "term=0"], (r.stdout,
                                                                             r.stderr)
    assert "Function not implemented" in r.stderr
    fatal(who.run(["exec", "--security", "seccomp:" + profile(who, {
        "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]}), busybox_sif, "true"]),
        "unknown system call 'no_such_call'")
    fatal(who.run(["exec", "--security", "seccomp:" + profile(who, "{not json"), busybox_sif,
                   "true"]), "not a JSON seccomp profile")
    fatal(who.run(["exec", "--security", "seccomp:" + profile(who, {
        "defaultAction": "SCMP_ACT_MAYBE"}), busybox_sif, "true"]), "unknown action")
    fatal(who.run(["exec", "--security", "seccomp:/no/such.json", busybox_sif, "true"]),
          "/no/such.json")
    fatal(who.run(["exec", "--security", "apparmor:unconfined", busybox_sif, "true"]),
          "apparmor")


def test_seccomp_keeps_json_off_the_plain_exec_path():
    """Only --security loads json and libseccomp: the plain exec path imports neither."""
    import sys
    code = ("import sys; import satchel.cli.commands.action, satchel.runtime.launch, "
            "satchel.runtime.plan; print('json' in sys.modules, "
            "'satchel.runtime.seccomp' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          "import sys; sys.path.insert(0, %r); " % os.path.join(
                              os.path.dirname(__file__), "..", "..", "src") + code],
                         capture_output=True, text=True, check=True).stdout
    assert out == "False False\n"
