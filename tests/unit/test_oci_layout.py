"""OCI image layouts and OCI archives written by satchel.oci.writer, read back and unpacked."""

import os
import tarfile

import pytest

from satchel.errors import OCIError
from satchel.oci import layout, manifest as mt, source, writer


def image(marker: str, arch="amd64", variant="", compression="gzip"):
    layer = writer.Layer().dir("etc").file("etc/marker", marker)
    return writer.Image([writer.compress_layer(layer.tar_bytes(), compression)],
                        {"Env": [f"MARK={marker}"], "Labels": {"m": marker}}, arch=arch,
                        variant=variant)


def unpack(img, root):
    os.makedirs(root, exist_ok=True)
    try:
        source.unpack(img, root)
    finally:
        img.close()
    return open(os.path.join(root, "etc", "marker")).read()


@pytest.fixture
def layout_dir(tmp_path):
    path = tmp_path / "layout"
    multi = writer.Index([image("amd", "amd64"), image("arm", "arm64", "v8")])
    writer.write_layout(str(path), {"one": image("first", compression="zstd"),
                                    "two": image("second", compression=""), "multi": multi})
    return path


def test_choose_by_tag_and_platform(layout_dir, tmp_path):
    arch, variant = mt.parse_arch("amd64")
    assert unpack(layout.open_layout_dir(str(layout_dir), "one", arch, variant),
                  tmp_path / "r1") == "first"
    assert unpack(layout.open_layout_dir(str(layout_dir), "two", arch, variant),
                  tmp_path / "r2") == "second"
    assert unpack(layout.open_layout_dir(str(layout_dir), "multi", arch, variant),
                  tmp_path / "r3") == "amd"
    img = layout.open_layout_dir(str(layout_dir), "multi", *mt.parse_arch("arm64"))
    assert img.runtime_config().env == ["MARK=arm"]
    assert unpack(img, tmp_path / "r4") == "arm"


def test_selection_errors(layout_dir):
    with pytest.raises(OCIError, match=r"holds 3 images; choose one with :TAG \(tags: one, two, multi\)"):
        layout.open_layout_dir(str(layout_dir), None, "amd64", "")
    with pytest.raises(OCIError, match="no image tagged 'nope'"):
        layout.open_layout_dir(str(layout_dir), "nope", "amd64", "")
    with pytest.raises(OCIError, match="no image for linux/s390x"):
        layout.open_layout_dir(str(layout_dir), "multi", "s390x", "")


def test_not_a_layout(tmp_path):
    with pytest.raises(OCIError, match="is not a directory"):
        layout.open_layout_dir(str(tmp_path / "missing"), None, "amd64", "")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OCIError, match="oci-layout is missing"):
        layout.open_layout_dir(str(tmp_path / "empty"), None, "amd64", "")


def test_corrupt_layer_blob_fails_verification(tmp_path):
    """A blob swapped for another valid layer of the same size (gzip and tar both fine):
    only the digest check can tell, and the unpack names the layer and says why."""
    path = tmp_path / "layout"
    img, other = image("x"), image("y")
    writer.write_layout(str(path), {"t": img})
    digest = img.layers[0].digest
    blob = path / "blobs" / "sha256" / digest.split(":")[1]
    assert len(other.layers[0].data) == blob.stat().st_size
    blob.write_bytes(other.layers[0].data)
    os.makedirs(tmp_path / "root")
    opened = layout.open_layout_dir(str(path), None, "amd64", "")
    with pytest.raises(OCIError) as info:
        source.unpack(opened, str(tmp_path / "root"))
    opened.close()
    assert str(info.value) == (f"oci:{path}: layer {digest} is corrupt (digest or size "
                               "mismatch)")


def test_corrupt_manifest_blob(tmp_path):
    path = tmp_path / "layout"
    img = image("x")
    writer.write_layout(str(path), {"t": img})
    (path / "blobs" / "sha256" / img.manifest.digest.split(":")[1]).write_bytes(b"{}")
    with pytest.raises(OCIError, match="is corrupt"):
        layout.open_layout_dir(str(path), None, "amd64", "")


def test_oci_archive(tmp_path, layout_dir):
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for name in sorted(os.listdir(layout_dir)):
            tar.add(layout_dir / name, arcname=name)
    img = layout.open_layout_archive(str(archive), "two", "amd64", "")
    assert unpack(img, tmp_path / "root") == "second"
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(OCIError, match="not a tar archive"):
        layout.open_layout_archive(str(tmp_path / "junk.tar"), None, "amd64", "")
    with pytest.raises(OCIError, match="does not exist"):
        layout.open_layout_archive(str(tmp_path / "none.tar"), None, "amd64", "")
