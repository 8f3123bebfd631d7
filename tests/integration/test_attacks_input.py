"""Attacks by bad input, for every user: files that are not what they claim to be, bytes that are
not text, corrupt images, layers real tools write. Each test's docstring names the attack and the
promise it checks; the promise is always a bounded run that ends in one `FATAL:` line (or a
working container), never a hang, a traceback or "this is a bug in satchel".

Every satchel run here has a bounded timeout: a hang fails the test (subprocess.TimeoutExpired).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from support.assertions import one_fatal
from support.fixtures_runtime import assert_nothing_left

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HANG = 30  # seconds: far above any run below, far below the suite's patience


def fatal_after_info(r, *needles):
    """A build's INFO progress lines, then one FATAL line as the last thing printed."""
    lines = [l for l in r.stderr.splitlines() if not l.startswith(("INFO:", "VERBOSE:"))]
    assert r.returncode == 255, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("FATAL:   "), r.stderr
    assert "this is a bug" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def sandbox_copy(who, source: str) -> str:
    """A copy of the busybox sandbox in a directory `who` owns (the attacker prepares it)."""
    dest = os.path.join(who.tmp(), "sandbox")
    subprocess.run(["cp", "-a", source, dest], check=True)
    subprocess.run(["chown", "-R", f"{who.uid}:{who.gid}", dest], check=True)
    return dest


def plant_fifo(path: str, uid: int, gid: int) -> None:
    if os.path.lexists(path):
        os.unlink(path)
    os.mkfifo(path, 0o644)
    os.chown(path, uid, gid)


# -- 7: FIFOs and other special files ----------------------------------------------------------

def test_fifo_given_as_the_image(who):
    """Attack: a FIFO (or a device) named as the image. Promise: one FATAL line at once, as the
    user and as root (the open must not wait for a writer, a device must not be opened)."""
    fifo = os.path.join(who.tmp(), "image.sif")
    plant_fifo(fifo, who.uid, who.gid)
    for action in (["exec", fifo, "/bin/true"], ["inspect", fifo], ["run", fifo]):
        r = who.run(action, timeout=HANG)
        one_fatal(r, "is a FIFO, not an image file or a sandbox directory")
    r = who.run(["exec", "/dev/zero", "/bin/true"], timeout=HANG)
    one_fatal(r, "is a character device")


def test_fifo_at_etc_passwd_of_a_sandbox(test_user, busybox_sandbox):
    """Attack: a sandbox whose /etc/passwd is a FIFO (the unprivileged launcher reads it to add
    the user's entry). Promise: the launch neither hangs nor fails; the container runs."""
    from support.fixtures_runtime import Who
    who = Who("user", test_user)
    try:
        sandbox = sandbox_copy(who, busybox_sandbox)
        plant_fifo(os.path.join(sandbox, "etc/passwd"), who.uid, who.gid)
        r = who.run(["exec", sandbox, "/bin/sh", "-c", "echo ran"], timeout=HANG)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "ran\n"
    finally:
        who.cleanup()


@pytest.mark.parametrize("planted, flags", [
    ("labels.json", []),
    ("runscript", ["--runscript"]),
    ("Singularity", ["--deffile"]),
    ("env/90-environment.sh", ["--environment"]),
])
def test_fifo_in_sandbox_metadata(who, busybox_sandbox, planted, flags):
    """Attack: FIFOs in a sandbox's /.singularity.d, where inspect reads labels, runscript,
    definition and environment scripts. Promise: one FATAL line naming the file, at once."""
    sandbox = sandbox_copy(who, busybox_sandbox)
    plant_fifo(os.path.join(sandbox, ".singularity.d", planted), who.uid, who.gid)
    r = who.run(["inspect", *flags, sandbox], timeout=HANG)
    one_fatal(r, f"/.singularity.d/{planted}", "is a FIFO, not a regular file")


def _write_layout(directory: str, build) -> None:
    """An OCI layout written by satchel.oci.writer in a separate interpreter (the tests import
    satchel only through the CLI); `build` is the Python code that makes the layer `layer`."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from satchel.oci import writer\n"
            "layer = writer.Layer()\n%s\n"
            "image = writer.Image([writer.compress_layer(layer.tar_bytes())],"
            " {'Labels': {'from': 'config'}, 'Cmd': ['/bin/sh']})\n"
            "writer.write_layout(%r, {'v1': image})\n") % (os.path.join(ROOT, "src"), build,
                                                           directory)
    subprocess.run([sys.executable, "-I", "-c", code], check=True, timeout=60)
    subprocess.run(["chmod", "-R", "a+rX", directory], check=True)


BUSYBOX_LAYER = ("layer.dir('bin').host_file('bin/busybox', '/bin/busybox', mode=0o755)\n"
                 "layer.symlink('bin/sh', 'busybox').symlink('bin/true', 'busybox')\n")


def test_oci_layer_with_fifo_labels(who):
    """Attack: an OCI layer that puts a FIFO at /.singularity.d/labels.json (the conversion
    reads it to merge the image config's labels). Promise: the build ends at once in one FATAL
    line naming the file, as the user (user namespace) and as root."""
    work = who.tmp()
    layout = os.path.join(work, "layout")
    _write_layout(layout, BUSYBOX_LAYER + "layer.dir('.singularity.d')\n"
                  "layer.fifo('.singularity.d/labels.json')\n")
    target = os.path.join(work, "out.sif")
    r = who.run(["build", target, f"oci:{layout}:v1"], timeout=HANG * 2, cwd=work)
    fatal_after_info(r, "/.singularity.d/labels.json", "is a FIFO, not a regular file")
    assert not os.path.exists(target)


@pytest.mark.parametrize("planted", ["index.json", "blob", "archive"])
def test_fifo_in_an_oci_layout_or_as_an_archive(who, planted):
    """Attack: an OCI layout whose index.json or a blob is a FIFO, or a FIFO given as an
    oci-archive/docker-archive. Promise: the build ends at once in one FATAL line."""
    work = who.tmp()
    layout = os.path.join(work, "layout")
    _write_layout(layout, BUSYBOX_LAYER)
    if planted == "index.json":
        plant_fifo(os.path.join(layout, "index.json"), who.uid, who.gid)
        sources = [f"oci:{layout}:v1"]
    elif planted == "blob":
        blobs = os.path.join(layout, "blobs", "sha256")
        largest = max(os.listdir(blobs), key=lambda n: os.path.getsize(os.path.join(blobs, n)))
        plant_fifo(os.path.join(blobs, largest), who.uid, who.gid)  # the layer
        sources = [f"oci:{layout}:v1"]
    else:
        archive = os.path.join(work, "image.tar")
        plant_fifo(archive, who.uid, who.gid)
        sources = [f"oci-archive:{archive}", f"docker-archive:{archive}"]
    for source in sources:
        target = os.path.join(work, "out.sif")
        r = who.run(["build", target, source], timeout=HANG * 2, cwd=work)
        fatal_after_info(r, "is a FIFO, not a regular file")
        assert not os.path.exists(target)


def test_fifo_or_device_given_as_the_build_source(who):
    """Attack: a FIFO (or a device) named as the build's source (definition file or image).
    Promise: one FATAL line saying what it is, at once: no open that waits for a writer (the
    head of a source is read through fsutil.open_regular), no "not found", nothing built."""
    work = who.tmp()
    fifo = os.path.join(work, "image.def")
    plant_fifo(fifo, who.uid, who.gid)
    target = os.path.join(work, "out.sif")
    r = who.run(["build", target, fifo], timeout=HANG, cwd=work)
    one_fatal(r, f"build source {fifo} is a FIFO, not a definition file")
    r = who.run(["build", target, "/dev/zero"], timeout=HANG, cwd=work)
    one_fatal(r, "build source /dev/zero is a character device")
    assert not os.path.exists(target)


# -- 8: bytes that are not UTF-8 text -----------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"GOOD=1\nBAD=\xff\xfe\n", ":2: not UTF-8 text (byte 11)"),
    (b"GOOD=1\nBAD=a\0b\n", ":2: a NUL byte"),
])
def test_env_file_that_is_not_text(who, busybox_sif, content, message):
    """Attack: an --env-file holding bytes that are not UTF-8, or a NUL byte (no environment
    variable can hold one). Promise: one FATAL line naming the file and line, no bug report."""
    path = os.path.join(who.tmp(), "vars.env")
    with open(path, "wb") as fh:
        fh.write(content)
    os.chmod(path, 0o644)
    r = who.run(["exec", "--env-file", path, busybox_sif, "/bin/true"], timeout=HANG)
    one_fatal(r, f"--env-file {path}{message}")
    assert_nothing_left(busybox_sif)


def test_hostname_that_is_not_utf8(who, busybox_sif):
    """Attack: --hostname with bytes that are not UTF-8 (argv is bytes). Promise: no bug report;
    the kernel takes the bytes as given, as it would from Apptainer."""
    name = os.fsdecode(b"node\xff")
    r = who.run(["exec", "--uts", "--hostname", name, busybox_sif, "/bin/hostname"],
                timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "node\ufffd\n"  # the byte 0xff, shown by the test's decoder


def test_home_that_is_not_utf8(test_user, busybox_sif):
    """Attack: --home naming a directory whose name is not UTF-8 (the unprivileged launcher
    writes it into the container's /etc/passwd). Promise: no bug report; the passwd line holds
    the directory's very bytes."""
    from support.fixtures_runtime import Who
    who = Who("user", test_user)
    try:
        home = os.path.join(who.tmp(), os.fsdecode(b"h\xff"))
        os.mkdir(home)
        os.chown(home, who.uid, who.gid)
        argv = who.argv(["exec", "--home", home, busybox_sif, "/bin/sh", "-c",
                         f"grep '^{test_user.name}:' /etc/passwd; echo \"$HOME\""])
        proc = subprocess.run(argv, env=who.env(), cwd="/", capture_output=True, timeout=HANG)
        assert proc.returncode == 0, proc.stderr
        want = os.fsencode(home)
        lines = proc.stdout.splitlines()
        assert lines[0].split(b":")[5] == want and lines[1] == want, proc.stdout
    finally:
        who.cleanup()


def test_build_arg_that_is_not_utf8(who, busybox_sandbox):
    """Attack: a --build-arg value with bytes that are not UTF-8 (argv is bytes), substituted
    into %post. Promise: no bug report; the script gets the very bytes."""
    work = who.tmp()
    base = sandbox_copy(who, busybox_sandbox)  # theirs: a non-root build writes its metadata
    definition = os.path.join(work, "arg.def")
    with open(definition, "w") as fh:
        fh.write(f"Bootstrap: localimage\nFrom: {base}\n\n"
                 "%post\n    echo '{{ X }}' > /arg\n")
    os.chmod(definition, 0o644)
    target = os.path.join(work, "out")
    r = who.run(["build", "--sandbox", target, definition, "--build-arg",
                 os.fsdecode(b"X=v\xff")], timeout=HANG * 4, cwd=work)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(target, "arg"), "rb") as fh:
        assert fh.read() == b"v\xff\n"


# -- 13: layers real tools write ------------------------------------------------------------------

MTIME_NS = 1700000000_123456789  # what GNU tar records exactly; Python's tarfile keeps ~7 digits


def _python_tarfile_layer(path: str) -> int:
    """A layer as Python's tarfile writes it by default (PAX, the float mtime as `mtime=`)."""
    import io
    import tarfile
    with tarfile.open(path, "w") as tar:  # PAX_FORMAT is tarfile's default
        info = tarfile.TarInfo("data/stamp")
        info.mtime = MTIME_NS / 10**9
        info.size = 5
        tar.addfile(info, io.BytesIO(b"stamp"))
    with tarfile.open(path) as tar:
        text = tar.getmember("data/stamp").pax_headers["mtime"]
    whole, _, fraction = text.partition(".")
    return int(whole) * 10**9 + int(fraction.ljust(9, "0"))


def _gnu_tar_layer(path: str, work: str) -> int:
    """A layer from GNU tar --format=posix (mtime with nine fractional digits)."""
    tree = os.path.join(work, "tree")
    os.makedirs(os.path.join(tree, "data"))
    with open(os.path.join(tree, "data", "stamp"), "w") as fh:
        fh.write("stamp")
    os.utime(os.path.join(tree, "data", "stamp"), ns=(MTIME_NS, MTIME_NS))
    subprocess.run(["tar", "--format=posix", "-C", tree, "-cf", path, "data"], check=True)
    return MTIME_NS


def _layout_from_tar(tar_path: str, directory: str) -> None:
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from satchel.oci import writer\n"
            "data = open(%r, 'rb').read()\n"
            "image = writer.Image([writer.compress_layer(data)], {'Cmd': ['/bin/sh']})\n"
            "writer.write_layout(%r, {'v1': image})\n") % (os.path.join(ROOT, "src"), tar_path,
                                                           directory)
    subprocess.run([sys.executable, "-I", "-c", code], check=True, timeout=60)
    subprocess.run(["chmod", "-R", "a+rX", directory], check=True)


@pytest.mark.parametrize("maker", ["python-tarfile", "gnu-tar-posix"])
def test_layer_with_fractional_pax_mtimes(who, maker):
    """Input from real clients: an OCI layer whose PAX headers carry fractional mtimes (Python's
    tarfile by default, GNU tar --format=posix). Promise: the build succeeds; a sandbox keeps the
    exact mtime, a SIF (SquashFS stores whole seconds) the whole second."""
    from support.fixtures_registry import sif_extract
    work = who.tmp()
    tar_path = os.path.join(work, "layer.tar")
    if maker == "python-tarfile":
        want_ns = _python_tarfile_layer(tar_path)
    else:
        want_ns = _gnu_tar_layer(tar_path, work)
    assert want_ns % 10**9  # the layer really holds a fraction
    layout = os.path.join(work, "layout")
    _layout_from_tar(tar_path, layout)

    sandbox = os.path.join(work, "sandbox")
    r = who.run(["build", "--sandbox", sandbox, f"oci:{layout}:v1"], timeout=HANG * 4, cwd=work)
    assert r.returncode == 0, r.stderr
    assert os.stat(os.path.join(sandbox, "data", "stamp")).st_mtime_ns == want_ns

    sif = os.path.join(work, "image.sif")
    r = who.run(["build", sif, f"oci:{layout}:v1"], timeout=HANG * 4, cwd=work)
    assert r.returncode == 0, r.stderr
    tree = sif_extract(sif, os.path.join(work, "unsquashed"))
    assert os.stat(os.path.join(tree, "data", "stamp")).st_mtime_ns == want_ns // 10**9 * 10**9


# -- 12: a SquashFS that corrupts the FUSE server's memory -----------------------------------------

def _corrupt_first_entry(image: str, directory: str, name_size: int) -> None:
    """Set the name size of the first entry of `directory` in a SquashFS made with -noI -noD
    (metadata stored uncompressed) to `name_size`.

    Superblock: the root inode reference at byte 32, the inode and directory tables' starts at
    64 and 72 (0x48). A directory inode (basic, type 1) points into the directory table (block,
    offset, size); there a header (count-1, inode block, inode number; 3 x u32) precedes the
    entries (offset u16, inode delta s16, type u16, name size-1 u16, name). libsquashfuse
    copies `name size` bytes into a 257-byte buffer on its stack: 0x800 with 2 KiB of entries
    after it in the same metadata block smashes the stack (SIGABRT or SIGSEGV).
    """
    import struct
    with open(image, "rb") as fh:
        data = bytearray(fh.read())
    root_ref, inode_start, dir_start = struct.unpack_from("<Q24xQQ", data, 32)

    def metadata(table, block, offset):
        header = struct.unpack_from("<H", data, table + block)[0]
        assert header & 0x8000, "compressed metadata block"
        return table + block + 2 + offset

    def entries(ref):
        inode = metadata(inode_start, ref >> 16, ref & 0xFFFF)
        assert struct.unpack_from("<H", data, inode)[0] == 1, "not a basic directory inode"
        block, _, size, offset = struct.unpack_from("<IIHH", data, inode + 16)
        pos = metadata(dir_start, block, offset)
        end = pos + size - 3
        while pos < end:
            count, inode_block, _ = struct.unpack_from("<III", data, pos)
            pos += 12
            for _ in range(count + 1):
                entry_offset, _, _, length = struct.unpack_from("<HhHH", data, pos)
                yield pos, bytes(data[pos + 8:pos + 9 + length]), inode_block << 16 | entry_offset
                pos += 9 + length

    ref = root_ref
    for part in directory.strip("/").split("/"):
        ref = next(r for _, name, r in entries(ref) if name == part.encode())
    pos, _, _ = next(entries(ref))
    struct.pack_into("<H", data, pos + 6, name_size)
    with open(image, "wb") as fh:
        fh.write(data)


@pytest.fixture(scope="module")
def crashing_images(tmp_path_factory):
    """Two SquashFS images of a busybox tree: /bin's directory listing crafted (the launcher
    and the server's read-ahead look up /bin/sh), and /usr's (only the payload looks there)."""
    base = tempfile.mkdtemp(prefix="satchel-crash-", dir="/tmp")
    tree = os.path.join(base, "tree")
    for d in ("bin", "usr", "etc", "dev", "proc", "sys", "tmp", "home", "root", "var/tmp"):
        os.makedirs(os.path.join(tree, d))
    shutil.copy("/bin/busybox", os.path.join(tree, "bin", "busybox"))
    for applet in ("sh", "true", "cat"):
        os.symlink("busybox", os.path.join(tree, "bin", applet))
    for i in range(100):  # 5 KiB of entries after the first, in the same metadata block
        for d in ("bin", "usr"):
            with open(os.path.join(tree, d, f"a{i:03d}_" + "x" * 44), "w") as fh:
                fh.write("filler\n")
    images = {}
    for d in ("bin", "usr"):
        image = os.path.join(base, f"crafted-{d}.sqsh")
        subprocess.run(["mksquashfs", tree, image, "-noI", "-noD", "-noF", "-noX", "-quiet",
                        "-no-progress"], check=True, capture_output=True)
        _corrupt_first_entry(image, "/" + d, 0x800)
        os.chmod(image, 0o644)
        images[d] = image
    os.chmod(base, 0o755)
    yield images
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("mode", ["builtin", "program"])
def test_squashfs_that_crashes_the_fuse_server(test_user, crashing_images, mode):
    """Attack: a crafted SquashFS directory table that corrupts the memory of the FUSE server
    (libsquashfuse's handlers: built in, or the squashfuse_ll program). Nothing is gained (the
    server runs as the user, outside the container). Promise: as the non-root user, `exec`
    ends within a bounded time in one FATAL line that names the server's death, and nothing is
    left; a death the payload itself causes later ends the payload with an error, not a hang."""
    from support.fixtures_runtime import Who
    who = Who("user", test_user)
    env = {}
    if mode == "program":
        conf = os.path.join(who.tmp(), "satchel.conf")
        with open(conf, "w") as fh:
            fh.write("squashfuse mode = program\n")
        os.chmod(conf, 0o644)
        env["SATCHEL_CONFIG"] = conf
    try:
        image = crashing_images["bin"]
        for _ in range(3):  # the crash happens in the read-ahead thread or on the launcher's
            r = who.run(["exec", image, "/bin/true"], env=env, timeout=HANG)  # lookups
            program = " (squashfuse_ll)" if mode == "program" else ""
            one_fatal(r, f"the SquashFS server for {image}{program} died",
                      "the image may be corrupt")
            assert_nothing_left(image)
        image = crashing_images["usr"]
        victim = "/usr/a050_" + "x" * 44  # after the crafted entry: it is read on the way
        r = who.run(["exec", image, "/bin/sh", "-c", f"cat {victim}; cat {victim}"], env=env,
                    timeout=HANG)
        assert r.returncode != 0 and r.stdout == "", (r.returncode, r.stderr)
        assert victim in r.stderr
        assert_nothing_left(image)
    finally:
        who.cleanup()
