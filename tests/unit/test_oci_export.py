"""Pure parts of push/export: the Env of an exported config, the block-parallel gzip writer,
the ORAS manifest."""

import gzip
import io
import json
import os
import zlib

from satchel.oci import export, oras


def test_static_env_follows_source_order_and_skips_computed_values():
    scripts = {
        "/.singularity.d/env/90-environment.sh":
            "#!/bin/sh\nexport A=plain\nexport B='single quoted'\nexport C=\"x \\\"q\\\" \\$y\"\n"
            "export D=$HOME/bin\nexport E=\"$(date)\"\nexport A=again\n",
        "/.singularity.d/env/10-docker2singularity.sh":
            '#!/bin/sh\nexport PATH="/usr/bin:/bin"\nexport FOO="${FOO:-"bar baz"}"\n'
            'export EMPTY="${EMPTY:-}"\n',
    }
    assert export.static_env(scripts) == [
        "PATH=/usr/bin:/bin", "FOO=bar baz", "EMPTY=", "B=single quoted", 'C=x "q" $y',
        "A=again"]


def test_gzip_blocks_are_one_valid_reproducible_stream():
    data = os.urandom(300_000) + b"compressible " * 200_000 + os.urandom(10)
    outputs = []
    for _ in range(2):
        out = io.BytesIO()
        writer = export._Compressor(out, "gzip")
        for i in range(0, len(data), export.BLOCK):
            writer.write(data[i:i + export.BLOCK])
        writer.close()
        outputs.append(out.getvalue())
        assert writer.size == len(out.getvalue())
    assert outputs[0] == outputs[1]
    assert gzip.decompress(outputs[0]) == data
    assert zlib.decompress(outputs[0], 31) == data
    assert len(outputs[0]) < len(data) // 2


def test_oras_manifest_has_apptainers_shape():
    doc = json.loads(oras.artifact_manifest("sha256:" + "a" * 64, 123, "x.sif", 0))
    assert doc["config"] == {"mediaType": oras.SIF_CONFIG, "size": 2,
                             "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                             "data": "e30="}
    assert doc["layers"] == [{"mediaType": "application/vnd.sylabs.sif.layer.v1.sif", "size": 123,
                              "digest": "sha256:" + "a" * 64,
                              "annotations": {"org.opencontainers.image.title": "x.sif"}}]
    assert doc["annotations"] == {"org.opencontainers.image.created": "1970-01-01T00:00:00Z"}
    assert "annotations" not in json.loads(oras.artifact_manifest("sha256:" + "a" * 64, 1, "x",
                                                                  None))
