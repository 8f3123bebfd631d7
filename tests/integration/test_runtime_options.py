"""Options and environment, end to end, as satchel-test and as root."""

import os

import pytest

from support.fixtures_runtime import assert_nothing_left, live_processes, wait_until


def _data_dir(who, content="hello\n"):
    path = who.tmp()
    with open(os.path.join(path, "file.txt"), "w") as fh:
        fh.write(content)
    os.chown(os.path.join(path, "file.txt"), who.uid, who.gid)
    return path


def test_bind_to_directory_missing_from_image(who, busybox_sif):
    src = _data_dir(who)
    r = who.run(["exec", "-B", f"{src}:/XyZabc", busybox_sif, "cat", "/XyZabc/file.txt"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"
    # the rest of the image is still there, unchanged and read-only
    r = who.run(["exec", "-B", f"{src}:/XyZabc", busybox_sif, "sh", "-c",
                 "cat /etc/satchel-release; touch /newfile 2>/dev/null && echo WRITABLE; "
                 "touch /etc/x 2>/dev/null && echo WRITABLE; echo end"])
    assert r.stdout == "satchel test image\nend\n", r.stderr
    assert_nothing_left(busybox_sif)


def test_bind_single_file_to_deep_missing_path(who, busybox_sif):
    src = _data_dir(who, "cwl input\n")
    target = "/var/lib/cwl/stg1234/input.txt"
    r = who.run(["exec", "-B", f"{src}/file.txt:{target}:ro", busybox_sif, "sh", "-c",
                 f"cat {target}; echo more >> {target} 2>/dev/null || echo read-only"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "cwl input\nread-only\n"


def test_bind_rw_writes_through(who, busybox_sif):
    src = _data_dir(who)
    r = who.run(["exec", "-B", f"{src}:/data:rw", busybox_sif, "sh", "-c",
                 "echo new > /data/out.txt"])
    assert r.returncode == 0, r.stderr
    st = os.stat(os.path.join(src, "out.txt"))
    assert (st.st_uid, st.st_gid) == (who.uid, who.gid)


def test_mount_option_csv(who, busybox_sif):
    src = _data_dir(who)
    odd = os.path.join(src, "a,b")
    os.mkdir(odd)
    os.chown(odd, who.uid, who.gid)
    r = who.run(["exec", "--mount", f'type=bind,"source={odd}",target=/odd,readonly',
                 busybox_sif, "sh", "-c", "touch /odd/x 2>/dev/null || echo read-only"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "read-only\n"
    r = who.run(["exec", "--mount", f"type=bind,src={src},dst=/m", busybox_sif,
                 "cat", "/m/file.txt"])
    assert r.stdout == "hello\n", r.stderr


def test_bind_source_with_dotdot(who, busybox_sif):
    src = _data_dir(who)
    sub = os.path.join(src, "sub")
    os.mkdir(sub)
    r = who.run(["exec", "-B", f"{sub}/../:/up", busybox_sif, "cat", "/up/file.txt"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"


def test_env_bind_variable(who, busybox_sif):
    src = _data_dir(who)
    r = who.run(["exec", busybox_sif, "sh", "-c", "cat /eb/file.txt; echo $APPTAINER_BIND"],
                env={"APPTAINER_BIND": f"{src}:/eb"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"hello\n{src}:/eb\n"
    r = who.run(["exec", busybox_sif, "cat", "/sb/file.txt"],
                env={"SINGULARITY_BIND": f"{src}:/sb:ro"})
    assert r.stdout == "hello\n", r.stderr


def test_image_path_with_colon(who, rt_images):
    r = who.run(["exec", rt_images.sqfs, "cat", "/etc/passwd"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("root:x:0:0:")
    r = who.run(["exec", rt_images.sqfs, "sh", "-c", "echo $APPTAINER_CONTAINER $APPTAINER_NAME"])
    assert r.stdout == f"{rt_images.sqfs} img:1.sqfs\n"


def test_empty_environment(who, busybox_sif):
    raw = {"PATH": "/usr/bin:/bin"}
    r = who.run(["exec", busybox_sif, "sh", "-c", "echo $HOME; id -un; pwd"], raw_env=raw)
    assert r.returncode == 0, r.stderr
    name = "satchel-test" if who.rootless else "root"
    assert r.stdout.split("\n")[:2] == [who.home, name]


def test_environment_rules(who, busybox_sif):
    env = {"HOST_ONLY": "host", "SATCHEL_TEST_ENV": "host-value",
           "APPTAINERENV_INJECTED": "apptainer", "SINGULARITYENV_INJECTED": "singularity",
           "SINGULARITYENV_SONLY": "s", "APPTAINERENV_SATCHEL_POST_ENV": "user-wins",
           "LD_LIBRARY_PATH": "/host/lib", "APPTAINERENV_PREPEND_PATH": "/pre",
           "APPTAINERENV_APPEND_PATH": "/post", "APPTAINER_SOMETHING": "runtime-setting"}
    script = ('echo "$HOST_ONLY|$SATCHEL_TEST_ENV|$INJECTED|$SONLY|$SATCHEL_POST_ENV|'
              '$LD_LIBRARY_PATH|$PATH|${APPTAINER_SOMETHING-unset}|$APPTAINER_NAME|'
              '$SINGULARITY_CONTAINER|$APPTAINER_COMMAND"')
    r = who.run(["exec", busybox_sif, "sh", "-c", script], env=env)
    assert r.returncode == 0, r.stderr
    fields = r.stdout.rstrip("\n").split("|")
    assert fields[0] == "host"                    # host variables pass through
    assert fields[1] == "from %environment"       # the image wins over the host
    assert fields[2] == "apptainer"               # APPTAINERENV_ wins over SINGULARITYENV_
    assert fields[3] == "s"
    assert fields[4] == "user-wins"               # injected variables win over the image
    assert fields[5] == "/.singularity.d/libs"    # host LD_LIBRARY_PATH never leaks in
    assert fields[6] == "/pre:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/post"
    assert fields[7] == "unset"                   # runtime settings are not forwarded
    assert fields[8:] == ["busybox.sif", busybox_sif, "exec"]


def test_cleanenv_and_env_options(who, busybox_sif):
    env_file = os.path.join(who.tmp(), "env")
    with open(env_file, "w") as fh:
        fh.write("# comment\nexport FROM_FILE='file value'\nBOTH=file\n")
    os.chmod(env_file, 0o644)
    r = who.run(["exec", "--cleanenv", "--env", "FROM_OPT=a,b", "--env", "BOTH=opt",
                 "--env-file", env_file, busybox_sif, "sh", "-c",
                 'echo "${HOST_ONLY-gone}|$FROM_OPT|$FROM_FILE|$BOTH|$LANG|$TERM|$HOME"'],
                env={"HOST_ONLY": "x", "TERM": "xterm-test", "LANG": "de_DE.UTF-8"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"gone|a,b|file value|opt|C|xterm-test|{who.home}\n"


def test_apptainerenv_path_override(who, busybox_sif):
    r = who.run(["exec", busybox_sif, "sh", "-c", 'echo "$PATH"'],
                env={"APPTAINERENV_PATH": "/only/this:/bin"})
    assert r.stdout == "/only/this:/bin\n", r.stderr
    r = who.run(["exec", busybox_sif, "sh", "-c", 'echo "$HOME"'],
                env={"APPTAINERENV_HOME": "/elsewhere"})
    assert r.stdout == f"{who.home}\n"
    assert "Overriding HOME environment variable with APPTAINERENV_HOME is not permitted" \
        in r.stderr


def test_home_options(who, busybox_sif):
    src = _data_dir(who)
    r = who.run(["exec", "-H", f"{src}:/myhome", busybox_sif, "sh", "-c",
                 'echo $HOME; cat $HOME/file.txt; grep "^$(id -un):" /etc/passwd | cut -d: -f6'])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[:2] == ["/myhome", "hello"]
    if who.rootless:
        assert lines[2] == "/myhome"
    marker = os.path.join(who.home, f".satchel-nohome-{os.getpid()}")
    open(marker, "w").close()
    try:
        r = who.run(["exec", "--no-home", busybox_sif, "sh", "-c",
                     f"test -e {marker} && echo LEAK; echo ok"], cwd="/")
        assert r.stdout == "ok\n", r.stderr
    finally:
        os.unlink(marker)


def test_cwd_pwd_and_workdir(who, busybox_sif):
    work = _data_dir(who)
    r = who.run(["exec", busybox_sif, "sh", "-c", "pwd; cat file.txt"], cwd=work)
    assert r.stdout == f"{work}\nhello\n", r.stderr
    r = who.run(["exec", "--pwd", "/etc", busybox_sif, "pwd"], cwd=work)
    assert r.stdout == "/etc\n"
    # without the cwd bind the directory is still reached through the /tmp bind...
    r = who.run(["exec", "--no-mount", "cwd", busybox_sif, "pwd"], cwd=work)
    assert r.stdout == f"{work}\n", r.stderr
    # ...and without both it does not exist inside: the home directory is used instead
    r = who.run(["exec", "--no-mount", "cwd,tmp", busybox_sif, "pwd"], cwd=work)
    assert r.stdout == f"{who.home}\n", r.stderr
    wd = who.tmp()
    r = who.run(["exec", "-c", "-W", wd, busybox_sif, "sh", "-c",
                 "echo t > /tmp/t; echo v > /var/tmp/v; echo h > $HOME/h"])
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(wd)) == ["home", "tmp", "var_tmp"]
    with open(os.path.join(wd, "tmp", "t")) as fh:
        assert fh.read() == "t\n"
    assert os.path.exists(os.path.join(wd, "home", "h"))


def test_no_mount_options(who, busybox_sif):
    r = who.run(["exec", "--no-mount", "tmp,sys,proc", busybox_sif, "sh", "-c",
                 "ls /proc | wc -l; ls /sys | wc -l"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0"]
    with open("/etc/hosts") as fh:
        host_hosts = fh.read()
    r = who.run(["exec", busybox_sif, "cat", "/etc/hosts"])
    assert r.stdout == host_hosts
    r = who.run(["exec", "--no-mount", "/etc/hosts", busybox_sif, "cat", "/etc/hosts"])
    assert r.returncode == 0 and r.stdout != host_hosts  # the image's own file
    r = who.run(["exec", "--no-mount", "bind-paths", busybox_sif, "cat", "/etc/hosts"])
    assert r.returncode == 0 and r.stdout != host_hosts


def test_minimal_dev(who, busybox_sif):
    shm_name = f"satchel-test-shm-{os.getpid()}-{who.name}"
    try:
        r = who.run(["exec", busybox_sif, "sh", "-c",
                     "ls /dev; echo x > /dev/null; head -c 4 /dev/zero | wc -c; "
                     f"touch /dev/shm/{shm_name} && echo shm-ok"])
        assert r.returncode == 0, r.stderr
        names = r.stdout.split()
        for name in ("null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm",
                     "fd", "stdin", "stdout", "stderr"):
            assert name in names
        assert "sda" not in names and "vda" not in names and "mem" not in names
        assert names[-2:] == ["4", "shm-ok"]
        # the host's /dev/shm (MPI ranks in separate containers meet there) ...
        assert os.path.exists(f"/dev/shm/{shm_name}")
        # ... but a private one under --contain
        r = who.run(["exec", "--contain", busybox_sif, "sh", "-c",
                     f"ls /dev/shm; touch /dev/shm/{shm_name}-c && echo shm-ok"])
        assert r.returncode == 0, r.stderr
        assert shm_name not in r.stdout and r.stdout.split()[-1] == "shm-ok"
        assert not os.path.exists(f"/dev/shm/{shm_name}-c")
    finally:
        for suffix in ("", "-c"):
            if os.path.exists(f"/dev/shm/{shm_name}{suffix}"):
                os.unlink(f"/dev/shm/{shm_name}{suffix}")


@pytest.mark.parametrize("flag", ["--pid", "-p", "--containall"])
def test_pid_namespace(who, busybox_sif, flag):
    r = who.run(["exec", flag, busybox_sif, "sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"])
    assert r.returncode == 0, r.stderr
    pid, count = r.stdout.split()
    assert pid == "2"            # pid 1 is satchel's init
    assert int(count) <= 4       # init, sh, ls, grep: nothing of the host


def test_ipc_uts_hostname(who, busybox_sif):
    r = who.run(["exec", "--hostname", "inside-box", busybox_sif, "hostname"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "inside-box\n"
    assert os.uname().nodename != "inside-box"
    host_ipc = os.readlink("/proc/self/ns/ipc")
    r = who.run(["exec", "--ipc", busybox_sif, "readlink", "/proc/self/ns/ipc"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != host_ipc
    r = who.run(["exec", "--userns", "--uts", busybox_sif, "hostname"])
    assert r.stdout == os.uname().nodename + "\n"


def test_passwd_and_group_hold_the_caller(who, busybox_sif):
    r = who.run(["exec", busybox_sif, "sh", "-c", "id -un; id -gn; cat /etc/passwd"])
    assert r.returncode == 0, r.stderr
    name = "satchel-test" if who.rootless else "root"
    lines = r.stdout.split("\n")
    assert lines[:2] == [name, name]
    assert any(line.startswith("root:x:0:0:") for line in lines)  # the image's entries stay


def test_sandbox_image(who, busybox_sandbox):
    src = _data_dir(who)
    r = who.run(["exec", "-B", f"{src}:/XyZabc", busybox_sandbox, "sh", "-c",
                 "cat /XyZabc/file.txt; touch /etc/x 2>/dev/null && echo WRITABLE; echo end"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\nend\n"
    assert not os.path.exists(os.path.join(busybox_sandbox, "XyZabc"))
    assert not os.path.exists(os.path.join(busybox_sandbox, "etc", "x"))


def _overlay_servers_gone(before: set) -> bool:
    return wait_until(lambda: not set(live_processes("fuse-overlayfs")) - before, 1.0)


def test_writable_tmpfs(who, busybox_sif):
    before = set(live_processes("fuse-overlayfs"))
    r = who.run(["exec", "--writable-tmpfs", busybox_sif, "sh", "-c",
                 "echo w > /etc/new && cat /etc/new && touch /usr/x && echo ok"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "w\nok\n"
    assert_nothing_left(busybox_sif)
    assert _overlay_servers_gone(before)
    # ephemeral: the next container starts from the image again
    r = who.run(["exec", "--writable-tmpfs", busybox_sif, "sh", "-c",
                 "cat /etc/new 2>/dev/null || echo absent"])
    assert r.stdout == "absent\n"


def test_writable_tmpfs_killed_mid_setup(who, busybox_sif):
    import random
    import signal
    import time
    rng = random.Random(99)
    before = set(live_processes("fuse-overlayfs"))
    for _ in range(8):
        proc = who.popen(["exec", "--writable-tmpfs", busybox_sif, "sleep", "5"])
        time.sleep(rng.uniform(0.0, 0.12))  # the kill moment under test, not a wait
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert_nothing_left(busybox_sif)
    assert _overlay_servers_gone(before)


def test_overlay_directory_persists(who, busybox_sif):
    overlay = who.tmp()
    r = who.run(["exec", "--overlay", overlay, busybox_sif, "sh", "-c",
                 "echo persisted > /etc/kept; echo done"])
    assert r.returncode == 0, r.stderr
    r = who.run(["exec", "--overlay", overlay, busybox_sif, "cat", "/etc/kept"])
    assert r.stdout == "persisted\n", r.stderr
    r = who.run(["exec", busybox_sif, "sh", "-c", "cat /etc/kept 2>/dev/null || echo absent"])
    assert r.stdout == "absent\n"
    assert os.path.exists(os.path.join(overlay, "upper", "etc", "kept"))
    assert_nothing_left(busybox_sif)


def test_debug_prints_the_plan_as_json(who, busybox_sif):
    import json
    r = who.run(["-d", "exec", busybox_sif, "true"])
    assert r.returncode == 0, r.stderr
    text = r.stderr.split("container plan: ", 1)[1]
    doc, _ = json.JSONDecoder().raw_decode(text)
    kinds = [op["op"] for op in doc["operations"]]
    assert doc["rootless"] is who.rootless
    assert kinds[-1] == "exec" and "pivot_root" in kinds
    assert ("mount_squashfs_fuse" in kinds) is who.rootless
    assert ("mount_squashfs_loop" in kinds) is not who.rootless
    assert "] pivot_root:" in r.stderr  # each operation logged as it is applied
