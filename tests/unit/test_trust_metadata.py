"""The signed image metadata, byte for byte as the reference wrote it into the corpus."""

import os

import pytest

from satchel.image import sif
from satchel.trust import dsse, metadata, pgp
from tests.support.corpus import IMAGES


@pytest.mark.parametrize("name,sig_id,group", [("one-group-signed-pgp.sif", 3, 1),
                                               ("two-groups-signed-pgp.sif", 4, 1),
                                               ("two-groups-signed-pgp.sif", 5, 2)])
def test_metadata_matches_the_reference_signature(name, sig_id, group):
    with sif.SIFFile.open(os.path.join(IMAGES, name)) as f:
        objects = [d for d in f.descriptors if d.group_id == group]
        ours = metadata.image_metadata(f, group, objects)
        signed = pgp.clearsigned_text(f.read_data(sig_id))
    assert ours == signed


def test_dsse_payload_matches_too():
    import base64
    import json
    with sif.SIFFile.open(os.path.join(IMAGES, "two-groups-signed-dsse.sif")) as f:
        env = json.loads(f.read_data(5))
        ours = metadata.image_metadata(f, 2, [f.get(3)])
    assert base64.b64decode(env["payload"]) == ours


def test_checks_name_what_differs():
    with sif.SIFFile.open(os.path.join(IMAGES, "one-group-signed-pgp.sif")) as f:
        text = pgp.clearsigned_text(f.read_data(3))
        signed = metadata.SignedMetadata(text, 1)
        assert [d.id for d in signed.check(f, [f.get(1), f.get(2)])] == [1, 2]
        d = f.get(2)
        d.name = "changed"
        with pytest.raises(metadata.IntegrityError, match="descriptor integrity compromised: 2"):
            signed.check(f, [d])


@pytest.mark.parametrize("bad", [b"not json", b'{"version":2}', b'{"version":1}',
                                 b'{"version":1,"header":{"digest":"md5:00"},"objects":[]}'])
def test_malformed_metadata_is_a_trust_error(bad):
    from satchel.errors import TrustError
    with pytest.raises(TrustError):
        metadata.SignedMetadata(bad, 1)


def test_pae():
    assert dsse.pae("t", b"ab") == b"DSSEv1 1 t 2 ab"
