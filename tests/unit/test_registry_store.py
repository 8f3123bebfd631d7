"""Pure parts of `registry login`: the keys credentials are stored under (Apptainer's host +
path, Docker Hub's v1 URL) and remote.yaml's Credentials block."""

import pytest

from satchel.errors import UsageError
from satchel.oci import auth, login


@pytest.mark.parametrize("uri, key, api", [
    ("docker://127.0.0.1:5000", "127.0.0.1:5000", "127.0.0.1:5000"),
    ("oras://reg.example.org/team/", "reg.example.org/team", "reg.example.org"),
    ("docker://docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"),
    ("docker://index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"),
])
def test_registry_keys(uri, key, api):
    reg = login.RegistryURI(uri)
    assert (reg.key, reg.api_host) == (key, api)


@pytest.mark.parametrize("uri", ["reg.example.org", "library://x", "docker://", "docker://a b"])
def test_bad_registry_uris(uri):
    with pytest.raises(UsageError):
        login.RegistryURI(uri)


def test_remote_yaml_credentials_block():
    text = ("Active: X\nRemotes:\n  X:\n    URI: a\nCredentials:\n- URI: docker://h1\n"
            "  Insecure: true\n- URI: oras://h2\n  Insecure: false\nOther: 1\n")
    kept, entries = login._split_remote_yaml(text)
    assert entries == [("docker://h1", True), ("oras://h2", False)]
    assert kept == ["Active: X", "Remotes:", "  X:", "    URI: a", "Other: 1"]


def test_apptainer_store_is_read_first(tmp_path):
    paths = auth.docker_config_paths({"HOME": str(tmp_path), "DOCKER_CONFIG": "/d"}, None)
    assert paths == [str(tmp_path / ".apptainer/docker-config.json"), "/d/config.json",
                     str(tmp_path / ".docker/config.json")]
    paths = auth.docker_config_paths({"APPTAINER_CONFIGDIR": "/c", "HOME": "/h"}, None)
    assert paths[0] == "/c/docker-config.json"
