"""SIF v01 reader and writer against the reference corpus (../shared/sif-testdata).

The strongest checks: images the reference wrote are reproduced byte for byte by `create` and
`add_object` from their own contents, and everything `create` writes reads back the same.
"""

import glob
import os
import shutil

import pytest

from support.corpus import CORPUS, IMAGES

from satchel.errors import SIFError
from satchel.image import sif



def image(name: str) -> str:
    path = os.path.join(IMAGES, name)
    if not os.path.exists(path):
        pytest.fail(f"SIF corpus missing: {path}")
    return path


ALL_IMAGES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(IMAGES, "*.sif")))


def test_corpus_present():
    assert len(ALL_IMAGES) >= 21, f"the reference SIF corpus is missing or incomplete: {IMAGES} " \
        "(../shared/sif-testdata beside the checkout, or $SATCHEL_SIF_CORPUS)"


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_every_corpus_image_opens(name):
    with sif.SIFFile.open(image(name)) as f:
        h = f.header
        assert h.version == "01"
        assert h.descriptors_total == 48 and h.descriptors_offset == 4096
        assert h.descriptors_free == 48 - len(f.descriptors)
        ids = [d.id for d in f.descriptors]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        for d in f.descriptors:
            assert d.used
            assert h.data_offset <= d.offset and d.offset + d.size <= f.file_size
            assert len(f.read_data(d.id)) == d.size
        primary = f.primary_partition()
        assert h.arch == (primary.arch if primary else "")


def test_two_groups_descriptors():
    with sif.SIFFile.open(image("two-groups-signed-pgp.sif")) as f:
        assert f.header.arch == "386"
        assert f.header.uuid == sif.NIL_UUID
        raw, squash, ext3, sig1, sig2 = f.descriptors
        assert (raw.fs_type, raw.part_type, raw.arch) == (sif.FS_RAW, sif.PART_SYSTEM, "386")
        assert (squash.fs_type, squash.part_type) == (sif.FS_SQUASH, sif.PART_PRIMSYS)
        assert (ext3.fs_type, ext3.arch, ext3.group_id) == (sif.FS_EXT3, "amd64", 2)
        assert f.primary_partition() is squash
        assert (sig1.group_id, sig1.link_id, sig1.link_is_group) == (0, 1, True)
        assert (sig2.link_id, sig2.link_is_group) == (2, True)
        assert sig1.hash_type == sif.HASH_SHA256
        assert sig1.entity.hex().upper() == "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"
        assert raw.fs_type is not None and sig1.fs_type is None and raw.entity is None
        assert f.find(datatype=sif.DATA_SIGNATURE) == [sig1, sig2]
        assert f.find(datatype=sif.DATA_PARTITION, name="") == [raw, squash, ext3]
        with open(os.path.join(CORPUS, "root.squashfs"), "rb") as fh:
            assert f.read_data(2) == fh.read()
        assert f.read_data(1) == bytes([0xFA, 0xCE, 0xFE, 0xED])
        with pytest.raises(SIFError, match="no object with id 9"):
            f.get(9)


def test_metadata_of_other_types():
    with sif.SIFFile.open(image("one-object-crypt-message.sif")) as f:
        d = f.get(1)
        assert (d.format_type, d.message_type) == (sif.FORMAT_OPENPGP, sif.MESSAGE_CLEARSIGNATURE)
    with sif.SIFFile.open(image("one-object-sbom.sif")) as f:
        assert f.get(1).sbom_format == sif.SBOM_CYCLONEDX_JSON
    with sif.SIFFile.open(image("one-object-oci-blob.sif")) as f:
        d = f.get(1)
        import hashlib
        assert d.oci_digest == "sha256:" + hashlib.sha256(f.read_data(1)).hexdigest()
    with sif.SIFFile.open(image("one-object-time.sif")) as f:
        assert f.header.created == 1593475316 and f.get(1).modified == 1593475316
        assert f.get(1).name == "data.json"


def test_copy_data_to_file_and_buffer(tmp_path):
    import io
    with sif.SIFFile.open(image("two-groups.sif")) as f:
        out = tmp_path / "part3"
        with open(out, "wb") as fh:
            fh.write(b"x")  # buffered bytes must land before the streamed ones
            f.copy_data(3, fh)
        assert out.read_bytes() == b"x" + f.read_data(3)
        buf = io.BytesIO()
        f.copy_data(2, buf)
        assert buf.getvalue() == f.read_data(2)


def test_arch_names():
    assert sif.arch_code("amd64") == b"02\0" and sif.arch_code("386") == b"01\0"
    assert sif.arch_name(b"04\0") == "arm64" and sif.arch_name(b"00\0") == ""
    assert sif.arch_name(b"99\0") == ""
    for name in ("386", "amd64", "arm", "arm64", "ppc64", "ppc64le", "mips", "mipsle",
                 "mips64", "mips64le", "s390x", "riscv64", "loong64"):
        assert sif.arch_name(sif.arch_code(name)) == name
    with pytest.raises(SIFError, match="unknown architecture"):
        sif.arch_code("vax")
    expected = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    if expected:
        assert sif.host_arch() == expected


# --- the writer reproduces the reference's files --------------------------------------------

def deterministic(path, objects):
    sif.create(path, objects, launch_script="", uuid=sif.NIL_UUID, created=sif.ZERO_TIME)


def corpus_objects(name):
    """Partition objects of the corpus' group images, content taken from the corpus itself."""
    with sif.SIFFile.open(image("two-groups.sif")) as f:
        ext3 = f.read_data(3)
    with open(os.path.join(CORPUS, "root.squashfs"), "rb") as fh:
        squash = fh.read()
    objects = [
        sif.NewObject(datatype=sif.DATA_PARTITION, data=bytes([0xFA, 0xCE, 0xFE, 0xED]),
                      fs_type=sif.FS_RAW, part_type=sif.PART_SYSTEM, arch="386"),
        sif.NewObject(datatype=sif.DATA_PARTITION, data=squash, fs_type=sif.FS_SQUASH,
                      part_type=sif.PART_PRIMSYS, arch="386"),
    ]
    if name.startswith("two-groups"):
        objects.append(sif.NewObject(datatype=sif.DATA_PARTITION, data=ext3, group_id=2,
                                     fs_type=sif.FS_EXT3, part_type=sif.PART_SYSTEM,
                                     arch="amd64"))
    return objects


@pytest.mark.parametrize("name", ["one-group.sif", "two-groups.sif"])
def test_create_reproduces_reference_partitions(tmp_path, name):
    out = str(tmp_path / name)
    deterministic(out, corpus_objects(name))
    assert open(out, "rb").read() == open(image(name), "rb").read()


@pytest.mark.parametrize("name", ["one-group-signed-pgp.sif", "two-groups-signed-pgp.sif",
                                  "one-group-signed-dsse.sif", "two-groups-signed-dsse.sif"])
def test_add_object_reproduces_reference_signatures(tmp_path, name):
    """Signing adds signature objects to a finished image: add_object must write them exactly."""
    out = str(tmp_path / name)
    deterministic(out, corpus_objects(name))
    with sif.SIFFile.open(image(name)) as ref:
        signatures = ref.find(datatype=sif.DATA_SIGNATURE)
        for d in signatures:
            new_id = sif.add_object(out, sif.NewObject(
                datatype=sif.DATA_SIGNATURE, data=ref.read_data(d.id), group_id=d.group_id,
                link_id=d.link_id, link_is_group=d.link_is_group, hash_type=d.hash_type,
                entity=d.entity))
            assert new_id == d.id
    assert signatures
    assert open(out, "rb").read() == open(image(name), "rb").read()


def test_create_reproduces_single_objects(tmp_path):
    cases = {
        "one-object-generic-json.sif": lambda f: dict(name="data.json"),
        "one-object-crypt-message.sif": lambda f: dict(),
        "one-object-sbom.sif": lambda f: dict(sbom_format=f.get(1).sbom_format),
        "one-object-oci-blob.sif": lambda f: dict(),
        "one-object-oci-root-index.sif": lambda f: dict(),
    }
    for name, extra_fields in cases.items():
        with sif.SIFFile.open(image(name)) as ref:
            d = ref.get(1)
            obj = sif.NewObject(datatype=d.datatype, data=ref.read_data(1), **extra_fields(ref))
        out = str(tmp_path / name)
        deterministic(out, [obj])
        assert open(out, "rb").read() == open(image(name), "rb").read(), name
    out = str(tmp_path / "time.sif")
    sif.create(out, [sif.NewObject(datatype=sif.DATA_GENERICJSON, data=b"{}", name="data.json")],
               launch_script="", uuid=sif.NIL_UUID, created=1593475316)
    assert open(out, "rb").read() == open(image("one-object-time.sif"), "rb").read()
    for name, script, uuid in (("empty.sif", "", sif.NIL_UUID),
                               ("empty-launch-script.sif", "#!/usr/bin/env run-script\n",
                                sif.NIL_UUID),
                               ("empty-id.sif", "",
                                bytes.fromhex("3fa802cc358b45e3bcc069dc7a45f9f8"))):
        out = str(tmp_path / name)
        sif.create(out, [], launch_script=script, uuid=uuid, created=sif.ZERO_TIME)
        assert open(out, "rb").read() == open(image(name), "rb").read(), name


# --- round trip of every type ------------------------------------------------------------------

def test_round_trip_every_type(tmp_path):
    big = tmp_path / "rootfs.squashfs"
    big.write_bytes(os.urandom(3 * 4096 + 17))
    fp = bytes(range(20))
    objects = [
        sif.NewObject(datatype=sif.DATA_DEFFILE, data=b"Bootstrap: scratch\n", name="def"),
        sif.NewObject(datatype=sif.DATA_ENVVAR, data=b"export A=1\n"),
        sif.NewObject(datatype=sif.DATA_LABELS, data=b'{"a": "b"}'),
        sif.NewObject(datatype=sif.DATA_PARTITION, path=str(big), arch="arm64",
                      part_type=sif.PART_PRIMSYS, fs_type=sif.FS_SQUASH),
        sif.NewObject(datatype=sif.DATA_SIGNATURE, data=b"sig", group_id=0, link_id=1,
                      link_is_group=True, hash_type=sif.HASH_SHA512, entity=fp),
        sif.NewObject(datatype=sif.DATA_GENERICJSON, data=b"{}", name="inspect-metadata.json"),
        sif.NewObject(datatype=sif.DATA_GENERIC, data=b"\0raw\xff"),
        sif.NewObject(datatype=sif.DATA_CRYPTOMESSAGE, data=b"msg", format_type=sif.FORMAT_PEM,
                      message_type=sif.MESSAGE_RSAOAEP),
        sif.NewObject(datatype=sif.DATA_SBOM, data=b"<sbom/>", sbom_format=sif.SBOM_SPDX_YAML),
        sif.NewObject(datatype=sif.DATA_OCIROOTINDEX, data=b'{"schemaVersion": 2}'),
        sif.NewObject(datatype=sif.DATA_OCIBLOB, path=str(big), group_id=3, link_id=4),
        sif.NewObject(datatype=sif.DATA_PARTITION, data=b"", part_type=sif.PART_DATA,
                      fs_type=sif.FS_RAW, arch="amd64", name="empty"),
    ]
    out = str(tmp_path / "all.sif")
    sif.create(out, objects, created=1700000000)
    import hashlib
    with sif.SIFFile.open(out) as f:
        h = f.header
        assert h.launch_script == sif.DEFAULT_LAUNCH_SCRIPT
        assert h.arch == "arm64" and h.created == h.modified == 1700000000
        assert h.uuid[6] >> 4 == 4 and h.uuid[8] >> 6 == 2  # random v4 UUID
        assert h.descriptors_free == 48 - len(objects)
        assert [d.id for d in f.descriptors] == list(range(1, len(objects) + 1))
        for obj, d in zip(objects, f.descriptors):
            data = obj.data if obj.data is not None else big.read_bytes()
            assert d.datatype == obj.datatype and d.name == obj.name
            assert d.group_id == obj.group_id and d.link_id == obj.link_id
            assert d.link_is_group == obj.link_is_group
            assert d.created == d.modified == 1700000000
            assert f.read_data(d.id) == data
            if obj.datatype == sif.DATA_PARTITION:
                assert d.offset % 4096 == 0
                assert (d.fs_type, d.part_type, d.arch) == (obj.fs_type, obj.part_type, obj.arch)
        assert f.get(5).hash_type == sif.HASH_SHA512 and f.get(5).entity == fp
        assert (f.get(8).format_type, f.get(8).message_type) == (sif.FORMAT_PEM,
                                                                 sif.MESSAGE_RSAOAEP)
        assert f.get(9).sbom_format == sif.SBOM_SPDX_YAML
        assert f.get(11).oci_digest == "sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()
        assert f.primary_partition().id == 4
        last = f.descriptors[-1]
        assert h.data_offset + h.data_size == last.offset + last.size == f.file_size


def test_create_refuses_bad_requests(tmp_path):
    out = str(tmp_path / "x.sif")
    prim = dict(datatype=sif.DATA_PARTITION, data=b"x", part_type=sif.PART_PRIMSYS, arch="amd64")
    cases = [
        ([sif.NewObject(**prim), sif.NewObject(**prim)], {}, "primary partition"),
        ([sif.NewObject(datatype=0x1234, data=b"")], {}, "unknown SIF data type"),
        ([sif.NewObject(datatype=sif.DATA_GENERIC, data=b"", name="n" * 129)], {}, "too long"),
        ([sif.NewObject(datatype=sif.DATA_PARTITION, data=b"", arch="vax")], {}, "architecture"),
        ([sif.NewObject(datatype=sif.DATA_GENERIC)], {}, "exactly one of data or path"),
        ([], {"launch_script": "#" * 32}, "launch script too long"),
        ([sif.NewObject(datatype=sif.DATA_GENERIC, data=b"")] * 3, {"descriptors_total": 2},
         "do not fit"),
        ([sif.NewObject(datatype=sif.DATA_GENERIC, path=str(tmp_path / "missing"))], {},
         "could not open"),
    ]
    for objects, kwargs, message in cases:
        with pytest.raises(SIFError, match=message):
            sif.create(out, objects, **kwargs)
        assert not os.path.exists(out)
        assert os.listdir(tmp_path) == [], "no temporary file may be left behind"


# --- modifying -----------------------------------------------------------------------------

def copy_of(tmp_path, name):
    out = str(tmp_path / name)
    shutil.copyfile(image(name), out)
    return out


def test_add_delete_reuse(tmp_path):
    path = copy_of(tmp_path, "one-group.sif")
    new = sif.add_object(path, sif.NewObject(datatype=sif.DATA_DEFFILE, data=b"Bootstrap: x\n",
                                             name="def"))
    assert new == 3
    with sif.SIFFile.open(path) as f:
        d = f.get(3)
        assert d.offset == 40960 and f.read_data(3) == b"Bootstrap: x\n"
        assert f.header.descriptors_free == 45
        assert f.header.data_offset + f.header.data_size == d.offset + d.size
        # the image was deterministic: it stays so
        assert f.header.modified == sif.ZERO_TIME and d.created == sif.ZERO_TIME
    sif.delete_object(path, 1)
    with sif.SIFFile.open(path) as f:
        assert [d.id for d in f.descriptors] == [2, 3]
        assert f.header.descriptors_free == 46
        assert f.header.arch == "386"
    # the freed first slot gets the next object, and its id
    assert sif.add_object(path, sif.NewObject(datatype=sif.DATA_LABELS, data=b"{}")) == 1
    with sif.SIFFile.open(path) as f:
        assert f.get(1).offset == 40960 + len(b"Bootstrap: x\n")
    sif.delete_object(path, 2)
    with sif.SIFFile.open(path) as f:
        assert f.header.arch == "" and f.primary_partition() is None
    with pytest.raises(SIFError, match="no object with id 7"):
        sif.delete_object(path, 7)


def test_add_updates_modified_time_of_normal_images(tmp_path):
    path = str(tmp_path / "n.sif")
    sif.create(path, [], created=1000)
    sif.add_object(path, sif.NewObject(datatype=sif.DATA_GENERIC, data=b"abc"))
    with sif.SIFFile.open(path) as f:
        assert f.header.created == 1000 and f.header.modified > 1000
        assert f.get(1).created == f.header.modified


def test_add_primary_partition_sets_arch_and_refuses_a_second(tmp_path):
    path = str(tmp_path / "p.sif")
    sif.create(path, [sif.NewObject(datatype=sif.DATA_DEFFILE, data=b"d")])
    ident = sif.add_object(path, sif.NewObject(datatype=sif.DATA_PARTITION, data=b"s" * 10,
                                               arch="s390x"))
    with sif.SIFFile.open(path) as f:
        assert f.header.arch == "s390x" and f.primary_partition().id == ident
        assert f.get(ident).offset % 4096 == 0
    with pytest.raises(SIFError, match="already contains a primary partition"):
        sif.add_object(path, sif.NewObject(datatype=sif.DATA_PARTITION, data=b"x", arch="386"))


def test_add_when_full(tmp_path):
    path = str(tmp_path / "full.sif")
    sif.create(path, [sif.NewObject(datatype=sif.DATA_GENERIC, data=b"a")], descriptors_total=1)
    with pytest.raises(SIFError, match="no free descriptor"):
        sif.add_object(path, sif.NewObject(datatype=sif.DATA_GENERIC, data=b"b"))


def test_set_primary(tmp_path):
    path = copy_of(tmp_path, "two-groups.sif")
    sif.set_primary(path, 3)
    with sif.SIFFile.open(path) as f:
        assert f.get(3).part_type == sif.PART_PRIMSYS and f.get(2).part_type == sif.PART_SYSTEM
        assert f.header.arch == "amd64" and f.primary_partition().id == 3
        assert f.get(3).fs_type == sif.FS_EXT3  # the rest of the metadata is untouched
    sif.set_primary(path, 3)  # already primary: nothing to do
    path2 = copy_of(tmp_path, "one-object-generic-json.sif")
    with pytest.raises(SIFError, match="not a partition"):
        sif.set_primary(path2, 1)
    path3 = str(tmp_path / "data.sif")
    sif.create(path3, [sif.NewObject(datatype=sif.DATA_PARTITION, data=b"x",
                                     part_type=sif.PART_DATA, arch="amd64")])
    with pytest.raises(SIFError, match="not a system partition"):
        sif.set_primary(path3, 1)


def test_write_errors_are_sif_errors(tmp_path):
    with pytest.raises(SIFError, match="could not create"):
        sif.create(str(tmp_path / "missing-dir" / "x.sif"), [])
    with pytest.raises(SIFError, match="could not open"):
        sif.delete_object(str(tmp_path / "missing.sif"), 1)
    target = tmp_path / "dir.sif"
    target.mkdir()
    with pytest.raises(SIFError):
        sif.create(str(target), [])
    assert sorted(os.listdir(tmp_path)) == ["dir.sif"]


def test_empty_object_past_the_end_is_accepted(tmp_path):
    """The reference aligns an empty last partition past the bytes it wrote: still a valid SIF."""
    path = str(tmp_path / "empty-part.sif")
    deterministic(path, [sif.NewObject(datatype=sif.DATA_DEFFILE, data=b"d"),
                         sif.NewObject(datatype=sif.DATA_PARTITION, data=b"", arch="amd64")])
    os.truncate(path, 32177)  # as the reference leaves it: nothing written at 32768
    with sif.SIFFile.open(path) as f:
        assert f.get(2).offset == 32768 and f.read_data(2) == b""


def test_add_the_image_to_itself_terminates(tmp_path):
    """The source grows while it is copied: only its size at the start is copied."""
    path = copy_of(tmp_path, "one-group.sif")
    before = open(path, "rb").read()
    ident = sif.add_object(path, sif.NewObject(datatype=sif.DATA_GENERIC, path=path))
    with sif.SIFFile.open(path) as f:
        assert f.read_data(ident) == before


def test_object_streamed_from_a_pipe(tmp_path):
    import threading
    read_end, write_end = os.pipe()
    payload = os.urandom(300_000)

    def feed():
        with os.fdopen(write_end, "wb") as fh:
            fh.write(payload)

    feeder = threading.Thread(target=feed)
    feeder.start()
    out = str(tmp_path / "piped.sif")
    try:
        sif.create(out, [sif.NewObject(datatype=sif.DATA_OCIBLOB, path=f"/dev/fd/{read_end}")])
    finally:
        feeder.join()
        os.close(read_end)
    import hashlib
    with sif.SIFFile.open(out) as f:
        assert f.read_data(1) == payload
        assert f.get(1).oci_digest == "sha256:" + hashlib.sha256(payload).hexdigest()


def test_complete_in_place_equals_create(tmp_path):
    """A partition already written at its offset (mksquashfs -o) + complete_in_place gives the
    same image create() writes from a separate file, byte for byte."""
    part = os.urandom(10000)
    part_file = tmp_path / "part.sqfs"
    part_file.write_bytes(part)

    def objects(path):
        return [sif.NewObject(datatype=sif.DATA_DEFFILE, data=b"bootstrap: scratch\n"),
                sif.NewObject(datatype=sif.DATA_LABELS, data=b"{}"),
                sif.NewObject(datatype=sif.DATA_PARTITION, path=str(path), fs_type=sif.FS_SQUASH,
                              part_type=sif.PART_PRIMSYS, arch="amd64")]

    reference = tmp_path / "created.sif"
    sif.create(str(reference), objects(part_file), uuid=sif.NIL_UUID, created=sif.ZERO_TIME)

    in_place = tmp_path / "in-place.sif"
    offset = sif.last_object_offset(objects(in_place))
    assert offset % 4096 == 0 and offset >= 32176
    with open(in_place, "wb") as fh:  # what mksquashfs -o leaves: a hole, then the file system
        fh.seek(offset)
        fh.write(part)
    sif.complete_in_place(str(in_place), objects(in_place), uuid=sif.NIL_UUID,
                          created=sif.ZERO_TIME)
    assert in_place.read_bytes() == reference.read_bytes()
    with sif.SIFFile.open(str(in_place)) as f:
        assert f.primary_partition().offset == offset
        assert f.read_data(f.primary_partition().id) == part


def test_complete_in_place_refuses_a_file_without_the_partition(tmp_path):
    path = tmp_path / "short.sif"
    path.write_bytes(b"\0" * 100)
    objs = [sif.NewObject(datatype=sif.DATA_PARTITION, path=str(path), fs_type=sif.FS_SQUASH,
                          part_type=sif.PART_PRIMSYS, arch="amd64")]
    with pytest.raises(SIFError, match="holds no data"):
        sif.complete_in_place(str(path), objs)
