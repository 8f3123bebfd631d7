"""open_image(): what kind of image a path names and where its SquashFS lies (real files)."""

import os
import struct
import subprocess

import pytest

from satchel.errors import ImageError
from satchel.image import sif
from satchel.image.formats import SIMG_LAUNCH, open_image


@pytest.fixture(scope="module")
def sqfs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fmt")
    tree = base / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text("hi\n")
    path = base / "img.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(path), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    return path


def _sif(tmp_path, sqfs, **kw):
    path = tmp_path / "x.sif"
    sif.create(str(path), [sif.NewObject(datatype=sif.DATA_PARTITION, path=str(sqfs), **kw)])
    return path


def test_sandbox(tmp_path):
    ref = open_image(str(tmp_path))
    assert (ref.kind, ref.path, ref.fs_offset, ref.fs_size) == ("sandbox", str(tmp_path), 0, 0)


def test_bare_squashfs_and_relative_path(sqfs, monkeypatch):
    monkeypatch.chdir(sqfs.parent)
    ref = open_image("img.sqfs")
    assert ref.kind == "squashfs" and ref.path == str(sqfs)
    assert ref.fs_offset == 0 and ref.fs_size == os.path.getsize(sqfs)


def test_sif_partition_offset(tmp_path, sqfs):
    path = _sif(tmp_path, sqfs)
    ref = open_image(str(path))
    assert ref.kind == "sif" and ref.fs_offset % 4096 == 0 and ref.fs_offset > 0
    with open(path, "rb") as fh:
        fh.seek(ref.fs_offset)
        assert fh.read(ref.fs_size) == sqfs.read_bytes()


def test_legacy_simg(tmp_path, sqfs):
    path = tmp_path / "old.simg"
    path.write_bytes(SIMG_LAUNCH + b"\n" + sqfs.read_bytes())
    ref = open_image(str(path))
    assert ref.kind == "simg" and ref.fs_offset == len(SIMG_LAUNCH) + 1


@pytest.mark.parametrize("content, message", [
    (b"just some text\n" * 10, "is not a valid image"),
    (b"", "is not a valid image"),
    (SIMG_LAUNCH + b"\nnot squashfs", "legacy Singularity image without SquashFS"),
])
def test_not_images(tmp_path, content, message):
    path = tmp_path / "f"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        open_image(str(path))


def test_missing_and_empty_name(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        open_image(str(tmp_path / "nope.sif"))
    with pytest.raises(ImageError, match="no image given"):
        open_image("")


def test_sif_without_primary_or_with_other_fs(tmp_path, sqfs):
    with pytest.raises(ImageError, match="no primary system partition"):
        open_image(str(_sif(tmp_path, sqfs, part_type=sif.PART_DATA)))
    with pytest.raises(ImageError, match="primary partition is ext3"):
        open_image(str(_sif(tmp_path, sqfs, fs_type=sif.FS_EXT3)))
    with pytest.raises(ImageError, match="encrypted squashfs"):
        open_image(str(_sif(tmp_path, sqfs, fs_type=sif.FS_ENCRYPTEDSQUASHFS)))


def test_truncated_sif_is_corrupt(tmp_path, sqfs):
    path = _sif(tmp_path, sqfs)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])
    with pytest.raises(ImageError, match="corrupt SIF image"):
        open_image(str(path))


@pytest.mark.parametrize("offset, value, message", [
    (40, 10 ** 12, "truncated"),                     # bytes_used past the end
    (12, 4096 * 3, "block size"),                    # not a power of two
    (64, 10 ** 9, "inode table at"),                 # a table past the end
    (72, 0, "out of order"),                         # directory table before inodes
])
def test_corrupt_superblock(tmp_path, sqfs, offset, value, message):
    path = tmp_path / "bad.sqfs"
    data = bytearray(sqfs.read_bytes())
    fmt = "<I" if offset == 12 else "<Q"
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=message):
        open_image(str(path))


def test_wrong_version_and_compressor(tmp_path, sqfs):
    for offset, value, message in ((28, 3, "version 3"), (20, 9, "unknown SquashFS compressor")):
        data = bytearray(sqfs.read_bytes())
        struct.pack_into("<H", data, offset, value)
        path = tmp_path / f"v{offset}.sqfs"
        path.write_bytes(bytes(data))
        with pytest.raises(ImageError, match=message):
            open_image(str(path))


def test_fifo_and_devices_are_refused_without_blocking(tmp_path):
    """A FIFO given as the image must not hang the launch (open() would wait for a writer)."""
    import signal

    def expired(signum, frame):
        raise TimeoutError("open_image blocked for 5 s")

    fifo = tmp_path / "image.sif"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    try:
        with pytest.raises(ImageError, match="image .*image.sif is a FIFO, not an image file"):
            open_image(str(fifo))
        with pytest.raises(ImageError, match="is a character device, not an image file"):
            open_image("/dev/zero")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
