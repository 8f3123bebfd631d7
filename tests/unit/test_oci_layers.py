"""Layer extraction on a real file system: OCI whiteouts, links, metadata, and layers crafted
to escape the root (each must be refused or neutralised, never write outside)."""

import gzip
import io
import os
import stat
import tarfile

import pytest

from satchel.errors import OCIError
from satchel.oci import layers, stream, writer


def apply(root, *tars, as_root=None):
    extractor = layers.Extractor(str(root), as_root)
    for i, tar in enumerate(tars):
        extractor.apply(stream.decoder(io.BytesIO(tar)), f"l{i}")
    return extractor.finish()


@pytest.fixture
def world(tmp_path):
    """root/ to extract into, and outside/ next to it that must stay untouched."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    return root, outside


def listing(path):
    return sorted(os.path.relpath(os.path.join(d, n), path)
                  for d, dirs, files in os.walk(path) for n in dirs + files)


def test_files_dirs_links_and_metadata(world):
    root, _ = world
    tar = (writer.Layer().dir("d", mode=0o750).file("d/f", "hello", mode=0o640, mtime=1234567890)
           .symlink("d/abs", "/d/f").hardlink("d/hard", "d/f").fifo("d/pipe")
           .file("suid", "x", mode=0o4755).file("owned", "o", uid=1000, gid=2000)
           .dir("empty", mtime=1111111111).tar_bytes())
    stats = apply(root, tar)
    assert (root / "d" / "f").read_text() == "hello"
    assert stat.S_IMODE((root / "d" / "f").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o750
    assert (root / "d" / "f").stat().st_mtime == 1234567890
    assert (root / "empty").stat().st_mtime == 1111111111  # set after its children
    assert os.readlink(root / "d" / "abs") == "/d/f"
    assert os.path.samefile(root / "d" / "hard", root / "d" / "f")
    assert stat.S_ISFIFO((root / "d" / "pipe").lstat().st_mode)
    assert (root / "suid").stat().st_mode & stat.S_ISUID
    if os.geteuid() == 0:
        assert ((root / "owned").stat().st_uid, (root / "owned").stat().st_gid) == (1000, 2000)
    assert stats.entries == 8 and stats.bytes == 7


def test_whiteouts_hide_lower_layers_only(world):
    root, _ = world
    lower = (writer.Layer().dir("etc").file("etc/gone", "1").file("etc/kept", "2")
             .dir("opq").file("opq/lower", "l").dir("opq/sub").file("opq/sub/deep", "d")
             .dir("tree").file("tree/x", "x").tar_bytes())
    upper = (writer.Layer().whiteout("etc/gone").whiteout("tree")
             .file("opq/upper-before", "u")       # same layer, before the marker: kept
             .opaque("opq")
             .dir("opq/sub").file("opq/sub/new", "n")  # a lower dir re-created: its old
             .file("etc/same-layer", "s").whiteout("etc/same-layer")  # content stays hidden
             .whiteout("etc/never-existed").tar_bytes())
    stats = apply(root, lower, upper)
    assert listing(root) == ["etc", "etc/kept", "etc/same-layer", "opq", "opq/sub",
                             "opq/sub/new", "opq/upper-before"]
    assert stats.whiteouts == 5


def test_replacing_types(world):
    root, _ = world
    lower = (writer.Layer().file("a", "file").dir("b").file("b/inner", "i")
             .symlink("c", "/somewhere").tar_bytes())
    upper = (writer.Layer().dir("a").file("a/now-dir", "x").file("b", "now a file")
             .file("c", "no longer a link").tar_bytes())
    apply(root, lower, upper)
    assert (root / "a" / "now-dir").read_text() == "x"
    assert (root / "b").read_text() == "now a file"
    assert not (root / "c").is_symlink() and (root / "c").read_text() == "no longer a link"


def test_absolute_symlink_then_write_through_it_stays_inside(world):
    root, outside = world
    tar = (writer.Layer().symlink("evil", str(outside))
           .file("evil/pwned", "inside the image")
           .symlink("rel", "../../../../../../../../" + str(outside).lstrip("/"))
           .file("rel/pwned2", "also inside").symlink("loop", "loop")
           .tar_bytes())
    apply(root, tar)
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (root / str(outside).lstrip("/") / "pwned").read_text() == "inside the image"
    assert (root / str(outside).lstrip("/") / "pwned2").read_text() == "also inside"
    # the last component is replaced, never followed: a symlink to a host file is not
    # written through
    tar2 = writer.Layer().symlink("victim", str(outside / "secret")).file(
        "victim", "replaced").tar_bytes()
    apply(root, tar2)
    assert (outside / "secret").read_text() == "host secret\n"
    assert (root / "victim").read_text() == "replaced"


def test_symlink_loop_is_an_error(world):
    root, _ = world
    tar = writer.Layer().symlink("loop", "loop").file("loop/x", "y").tar_bytes()
    with pytest.raises(OCIError, match="too many levels of symbolic links"):
        apply(root, tar)


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/../escape", "./../x"])
def test_dotdot_entries_are_refused(world, name):
    root, outside = world
    info = tarfile.TarInfo(name)
    info.size = 3
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(OCIError, match="points outside the root filesystem"):
        apply(root, buf.getvalue())
    assert sorted(os.listdir(outside)) == ["secret"]
    assert not (root.parent / "escape").exists() and not (root.parent / "x").exists()


def test_absolute_and_harmless_dotdot_names_are_neutralised(world):
    root, _ = world
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("/abs-file", "d/../inside"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"z"))
    apply(root, buf.getvalue())
    assert (root / "abs-file").read_text() == "z" and (root / "inside").read_text() == "z"


def test_hardlinks_cannot_reach_outside(world):
    root, outside = world
    escaping = writer.Layer().hardlink("stolen", "../outside/secret").tar_bytes()
    with pytest.raises(OCIError, match="points outside the root filesystem"):
        apply(root, escaping)
    # through a symlink to the host's directory: resolved inside the root
    through_link = (writer.Layer().dir(str(outside).lstrip("/"))
                    .file(str(outside).lstrip("/") + "/secret", "image copy")
                    .symlink("lnk", str(outside)).hardlink("stolen2", "lnk/secret").tar_bytes())
    apply(root, through_link)
    assert (root / "stolen2").read_text() == "image copy"
    assert os.stat(root / "stolen2").st_ino != os.stat(outside / "secret").st_ino
    missing = writer.Layer().hardlink("dangling", "no/such/file").tar_bytes()
    with pytest.raises(OCIError, match="target does not exist"):
        apply(root, missing)
    to_dir = writer.Layer().dir("somedir").hardlink("dirlink", "somedir").tar_bytes()
    with pytest.raises(OCIError, match="target is a directory"):
        apply(root, to_dir)


def test_device_nodes_skipped_when_not_root(world):
    root, _ = world
    tar = writer.Layer().dir("dev").device("dev/null2", "c", 1, 3).device(
        "dev/sda", "b", 8, 0).file("dev/regular", "r").tar_bytes()
    stats = apply(root, tar, as_root=False)
    assert stats.skipped_devices == 2
    assert sorted(os.listdir(root / "dev")) == ["regular"]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes needs root")
def test_device_nodes_created_by_root(world):
    root, _ = world
    tar = writer.Layer().dir("dev").device("dev/null2", "c", 1, 3).tar_bytes()
    apply(root, tar, as_root=True)
    st = (root / "dev" / "null2").lstat()
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


def test_non_root_mode_keeps_tree_readable_and_removable(world):
    root, _ = world
    tar = (writer.Layer().dir("locked", mode=0o500).file("locked/f", "x", mode=0o000)
           .tar_bytes())
    apply(root, tar, as_root=False)
    assert stat.S_IMODE((root / "locked").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "locked" / "f").stat().st_mode) == 0o400


def test_file_under_a_regular_file_is_an_error(world):
    root, _ = world
    tar = writer.Layer().file("plain", "x").file("plain/child", "y").tar_bytes()
    with pytest.raises(OCIError, match="is not a directory"):
        apply(root, tar)


def test_bad_whiteout_and_bad_tar(world):
    root, _ = world
    with pytest.raises(OCIError, match="invalid whiteout"):
        apply(root, writer.Layer().file("d/.wh..", "").tar_bytes())
    with pytest.raises(OCIError, match="not a tar archive|bad tar data"):
        apply(root, b"this is not a tar archive at all" * 40)
    apply(root, b"")  # an empty layer is valid and changes nothing


def test_big_file_and_many_entries_through_gzip_stream(world):
    root, _ = world
    layer = writer.Layer()
    payload = os.urandom(3 << 20)
    layer.file("big", payload)
    for i in range(500):
        layer.file(f"many/{i:04d}", str(i))
    compressed = gzip.compress(layer.tar_bytes(), compresslevel=1)
    apply(root, compressed)
    assert (root / "big").read_bytes() == payload
    assert len(os.listdir(root / "many")) == 500 and (root / "many" / "0042").read_text() == "42"


def test_gzip_multi_member_and_trailing_padding_and_zstd():
    data = os.urandom(100000)
    two = gzip.compress(data[:50000]) + gzip.compress(data[50000:]) + b"\0" * 1024
    out = stream.decoder(io.BytesIO(two))
    got = b"".join(iter(lambda: out.read(7777), b""))
    assert got == data
    z = stream.import_zstandard().ZstdCompressor().compress(data)
    out = stream.decoder(io.BytesIO(z))
    assert b"".join(iter(lambda: out.read(65536), b"")) == data
    with pytest.raises(OCIError, match="gzip layer is truncated|corrupt"):
        out = stream.decoder(io.BytesIO(gzip.compress(data)[:5000]))
        while out.read(65536):
            pass


def test_gzip_bomb_output_is_bounded_per_read():
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    reader = stream.decoder(io.BytesIO(bomb))
    assert len(reader.read(4096)) <= 4096


def test_forward_reader_seeks_only_forward():
    reader = stream.ForwardReader(io.BytesIO(bytes(range(256)) * 10000))
    assert reader.read(3) == b"\0\1\2"
    reader.seek(10)
    assert reader.read(1) == b"\x0a" and reader.tell() == 11
    reader.seek(5)  # still inside the current chunk: allowed
    assert reader.read(1) == b"\x05"
    reader.seek(2_000_000)
    assert reader.read(1) == bytes([2_000_000 % 256])
    with pytest.raises(OSError):
        reader.seek(0)


def test_fractional_pax_mtimes_are_applied_exactly(world):
    """Python's tarfile (PAX by default) and GNU tar --format=posix write `mtime=SECS.FRACTION`:
    the float tarfile makes of it crashed utime(ns=...); the record's text gives exact ns."""
    root, _ = world
    tar = (writer.Layer().dir("d", mtime=1700000000.25).file("d/f", "x", mtime=1234567890.5)
           .symlink("d/l", "f", mtime=1600000000.75).tar_bytes())
    apply(root, tar)
    assert (root / "d" / "f").stat().st_mtime_ns == 1234567890_500000000
    assert (root / "d").stat().st_mtime_ns == 1700000000_250000000
    assert (root / "d" / "l").lstat().st_mtime_ns == 1600000000_750000000


def _pax_member(mtime_text):
    info = tarfile.TarInfo("f")
    info.pax_headers = {"mtime": mtime_text}
    info.mtime = float(mtime_text) if mtime_text.lower() in ("nan", "inf", "-inf") else 0
    return info


@pytest.mark.parametrize("text, ns", [
    ("1700000000.123456789", 1700000000_123456789),   # GNU tar: nine digits, beyond a float
    ("1700000000.1234567891234", 1700000000_123456789),
    ("1700000000", 1700000000_000000000),
    ("-1.5", -1_500000000),
    ("nan", 0), ("inf", 0),                            # tarfile accepts them as floats
    ("9" * 5000, (2**63 - 1) * 10**9),                 # clamped to time_t, no int() limit
    ("--5", 0), ("1.2x", 0), ("\u0663", 0),            # not a decimal: tarfile's value
])
def test_mtime_ns_from_pax_text(text, ns):
    assert layers.mtime_ns(_pax_member(text)) == ns


def test_mtime_ns_whole_seconds_without_pax():
    info = tarfile.TarInfo("f")
    info.mtime = 1234567890
    assert layers.mtime_ns(info) == 1234567890 * 10**9
