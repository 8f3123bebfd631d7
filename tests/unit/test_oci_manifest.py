"""Manifests, indexes, platform selection, image config, credentials and auth challenges."""

import base64
import json
import os

import pytest

from satchel.errors import OCIError
from satchel.oci import auth, config, digest as digests, manifest as mt, writer


def _parse(doc, media_type=None):
    data = json.dumps(doc).encode()
    return mt.parse(data, media_type, digests.of_bytes(data))


def test_manifest_and_index_from_writer():
    layer = writer.compress_layer(writer.Layer().file("a", "x").tar_bytes(), "zstd")
    image = writer.Image([layer], {"Cmd": ["/bin/sh"]}, arch="arm64", variant="v8")
    doc = mt.parse(image.manifest.data, None, digests.parse(image.manifest.digest))
    assert isinstance(doc, mt.Manifest)
    assert doc.layers[0].compression == "zstd" and doc.layers[0].size == len(layer.data)
    assert str(doc.config.digest) == image.config.digest
    index = writer.Index([image], docker=True)
    parsed = mt.parse(index.manifest.data, None, digests.parse(index.manifest.digest))
    assert isinstance(parsed, mt.Index) and parsed.media_type == mt.DOCKER_LIST
    assert parsed.manifests[0].platform_name() == "linux/arm64/v8"


def test_media_type_from_registry_or_shape_when_document_has_none():
    config = {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "1" * 64, "size": 2}
    doc = _parse({"schemaVersion": 2, "config": config, "layers": []})
    assert isinstance(doc, mt.Manifest)
    doc = _parse({"schemaVersion": 2, "manifests": []})
    assert isinstance(doc, mt.Index)
    doc = _parse({"schemaVersion": 2, "manifests": []}, mt.DOCKER_LIST)
    assert doc.media_type == mt.DOCKER_LIST


@pytest.mark.parametrize("doc, message", [
    ({"schemaVersion": 1, "fsLayers": []}, "schema 1"),
    ({"schemaVersion": 3, "layers": []}, "schemaVersion"),
    ({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": {}, "layers": []}, "size"),
    ({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": [{"size": 1,
      "digest": "sha256:../x", "mediaType": "x"}], "config": {"size": 1, "mediaType": "x",
      "digest": "sha256:" + "1" * 64}}, "digest"),
    ({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": {"size": -1, "mediaType": "",
      "digest": "sha256:" + "1" * 64}, "layers": []}, "size"),
    ({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": {}}, "manifests list"),
    ({"schemaVersion": 2, "mediaType": "application/x-nonsense"}, "unsupported media type"),
])
def test_bad_manifests(doc, message):
    with pytest.raises(OCIError, match=message):
        _parse(doc)


def test_not_json():
    with pytest.raises(OCIError, match="not valid JSON"):
        mt.parse(b"{nope", None, digests.of_bytes(b"{nope"))
    with pytest.raises(OCIError, match="not a JSON object"):
        mt.parse(b"[]", None, digests.of_bytes(b"[]"))


def _index(*platforms):
    entries = []
    for i, p in enumerate(platforms):
        entries.append({"mediaType": mt.OCI_MANIFEST, "size": 10,
                        "digest": f"sha256:{i:064x}", "platform": p})
    return _parse({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries})


def test_platform_selection():
    index = _index({"os": "linux", "architecture": "amd64"},
                   {"os": "linux", "architecture": "arm64", "variant": "v8"},
                   {"os": "linux", "architecture": "arm", "variant": "v6"},
                   {"os": "linux", "architecture": "arm", "variant": "v7"},
                   {"os": "windows", "architecture": "amd64"})
    assert mt.select_platform(index, "amd64", "", "x").digest.hex == f"{0:064x}"
    assert mt.select_platform(index, *mt.parse_arch("arm64"), "x").digest.hex == f"{1:064x}"
    assert mt.select_platform(index, *mt.parse_arch("arm32v7"), "x").digest.hex == f"{3:064x}"
    assert mt.select_platform(index, *mt.parse_arch("linux/arm/v6"), "x").digest.hex == f"{2:064x}"
    with pytest.raises(OCIError, match=r"no image for linux/s390x \(available: linux/amd64, "
                                       r"linux/arm/v6, linux/arm/v7, linux/arm64/v8, windows/amd64\)"):
        mt.select_platform(index, "s390x", "", "x")


def test_index_entry_without_variant_matches_and_exact_variant_wins():
    index = _index({"os": "linux", "architecture": "arm64"},
                   {"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert mt.select_platform(index, "arm64", "v8", "x").digest.hex == f"{1:064x}"
    only = _index({"os": "linux", "architecture": "arm64"})
    assert mt.select_platform(only, "arm64", "v8", "x").digest.hex == f"{0:064x}"


def test_parse_arch():
    assert mt.parse_arch("amd64") == ("amd64", "")
    assert mt.parse_arch("arm64v8") == ("arm64", "v8")
    assert mt.parse_arch(None) == mt.host_platform()
    with pytest.raises(OCIError, match="unknown architecture"):
        mt.parse_arch("vax")


def test_image_config_to_runtime_metadata():
    doc = {"architecture": "amd64", "config": {
        "Env": ["PATH=/usr/bin", "A=b c", "=bogus"], "Entrypoint": ["/e"], "Cmd": None,
        "WorkingDir": "/work", "Labels": {"k": "v", "n": 1}, "User": "1000"}}
    rc = config.from_image_config(doc)
    assert rc.env == ["PATH=/usr/bin", "A=b c"]
    assert rc.entrypoint == ["/e"] and rc.cmd is None and rc.workdir == "/work"
    assert rc.labels == {"k": "v", "n": "1"} and rc.user == "1000"
    assert config.from_image_config({}).labels == {}
    for bad in ({"config": {"Env": "x"}}, {"config": {"Cmd": [1]}}, {"config": []},
                {"config": {"Labels": []}}):
        with pytest.raises(OCIError):
            config.from_image_config(bad)


def test_challenges():
    got = auth.parse_challenges('Bearer realm="https://auth.example/token",service="reg",'
                                'scope="repository:a/b:pull", Basic realm="x\\"y"')
    assert got == [("bearer", {"realm": "https://auth.example/token", "service": "reg",
                               "scope": "repository:a/b:pull"}),
                   ("basic", {"realm": 'x"y'})]
    assert auth.parse_challenges("Basic") == [("basic", {})]
    assert auth.parse_challenges("") == []


def test_credentials_order(tmp_path):
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    token = base64.b64encode(b"cfg-user:cfg:pass").decode()
    (home / ".docker" / "config.json").write_text(json.dumps(
        {"auths": {"https://reg.example:5000": {"auth": token},
                   "https://index.docker.io/v1/": {"username": "hub", "password": "hubpw"}}}))
    keys = ("reg.example:5000", "https://reg.example:5000")
    env = {"HOME": str(home)}
    creds = auth.find_credentials(keys, environ=env)
    assert (creds.username, creds.password) == ("cfg-user", "cfg:pass")
    assert "config.json" in creds.origin and "cfg:pass" not in repr(creds)
    env2 = dict(env, SINGULARITY_DOCKER_USERNAME="envu", SINGULARITY_DOCKER_PASSWORD="envp")
    assert auth.find_credentials(keys, environ=env2).username == "envu"
    env3 = dict(env2, APPTAINER_DOCKER_USERNAME="appu", APPTAINER_DOCKER_PASSWORD="appp")
    assert auth.find_credentials(keys, environ=env3).username == "appu"
    assert auth.find_credentials(keys, "cli", "clipw", environ=env3).username == "cli"
    hub = auth.find_credentials(("https://index.docker.io/v1/",), environ=env)
    assert hub.username == "hub"
    assert auth.find_credentials(("other:1",), environ=env) is None
    with pytest.raises(OCIError, match="both a username and a password"):
        auth.find_credentials(keys, "only-user", None, environ=env)
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {"reg.example:5000": {
        "auth": base64.b64encode(b"file:pw").decode()}}}))
    assert auth.find_credentials(keys, environ=env, authfile=str(authfile)).username == "file"
    with pytest.raises(OCIError, match="no such file"):
        auth.find_credentials(keys, environ=env, authfile=str(tmp_path / "missing"))
    (home / ".docker" / "config.json").write_text("{broken")
    with pytest.raises(OCIError, match="reading docker credentials"):
        auth.find_credentials(keys, environ=env)
    paths = auth.docker_config_paths({"DOCKER_CONFIG": "/d"}, "/h")
    assert paths == ["/h/.apptainer/docker-config.json", "/d/config.json",
                     "/h/.docker/config.json"]  # registry login's store first
