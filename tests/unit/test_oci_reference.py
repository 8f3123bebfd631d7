"""Image references, digests and pull names (pure parsing)."""

import pytest

from satchel.errors import OCIError
from satchel.oci import digest as digests
from satchel.oci import reference as refs

HEX = "a" * 64


@pytest.mark.parametrize("uri, registry, repository, tag, digest, api_host", [
    ("docker://alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
    ("docker://alpine:3.19", "docker.io", "library/alpine", "3.19", None, "registry-1.docker.io"),
    ("docker://user/image", "docker.io", "user/image", "latest", None, "registry-1.docker.io"),
    ("docker://index.docker.io/library/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04",
     None, "registry-1.docker.io"),
    ("docker://127.0.0.1:5000/busybox", "127.0.0.1:5000", "busybox", "latest", None,
     "127.0.0.1:5000"),
    ("docker://localhost/a/b/c:v1.2-rc_3", "localhost", "a/b/c", "v1.2-rc_3", None, "localhost"),
    ("docker://ghcr.io/org/tool@sha256:" + HEX, "ghcr.io", "org/tool", None, "sha256:" + HEX,
     "ghcr.io"),
    ("docker://quay.io/org/tool:1.0@sha256:" + HEX, "quay.io", "org/tool", "1.0",
     "sha256:" + HEX, "quay.io"),
])
def test_docker_references(uri, registry, repository, tag, digest, api_host):
    ref = refs.parse(uri)
    assert isinstance(ref, refs.DockerRef)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.api_host == api_host
    assert ref.reference == (digest or tag)
    assert ref.scheme is None


def test_http_scheme_in_reference_means_plain_http():
    ref = refs.parse("docker://http://127.0.0.1:5000/busybox:1")
    assert ref.scheme == "http" and ref.registry == "127.0.0.1:5000" and ref.tag == "1"
    with pytest.raises(OCIError, match="needs a registry host"):
        refs.parse("docker://http://busybox")


@pytest.mark.parametrize("uri, message", [
    ("docker://UPPER/case", "lowercase"),
    ("docker://alpine:bad tag", "bad tag"),
    ("docker://alpine@sha256:1234", "64"),
    ("docker://alpine@md5:" + HEX, "unsupported algorithm"),
    ("docker://", "lowercase"),
    ("docker:alpine", "expected docker://"),
    ("docker://a//b", "lowercase"),
    ("ftp://x/y", "unsupported image source"),
    ("docker-daemon:alpine:latest", "not supported"),
])
def test_bad_references(uri, message):
    with pytest.raises(OCIError, match=message):
        refs.parse(uri)


def test_local_references(tmp_path):
    ref = refs.parse("oci:/some/layout:v2")
    assert (ref.transport, ref.path, ref.selector) == ("oci", "/some/layout", "v2")
    assert refs.parse("oci-archive:img.tar").selector is None
    ref = refs.parse("docker-archive:/x/img.tar:repo:tag")
    assert (ref.path, ref.selector) == ("/x/img.tar:repo", "tag")
    # a path that exists as written is not split at its last colon
    odd = tmp_path / "dir:with:colons"
    odd.mkdir()
    ref = refs.parse(f"oci:{odd}")
    assert ref.path == str(odd) and ref.selector is None
    with pytest.raises(OCIError, match="missing path"):
        refs.parse("oci-archive:")


@pytest.mark.parametrize("uri, name", [
    ("docker://ubuntu", "ubuntu_latest.sif"),
    ("docker://user/image", "image_latest.sif"),
    ("docker://sylabs.io/lolcow:3.7", "lolcow_3.7.sif"),
    ("docker://127.0.0.1:5000/busybox:v1", "busybox_v1.sif"),
    ("oci-archive:/tmp/img.tar", "img.tar_latest.sif"),
    ("not-a-uri", ""),
])
def test_default_pull_name_follows_apptainer(uri, name):
    assert refs.default_pull_name(uri) == name


def test_digest_parsing():
    d = digests.parse("sha256:" + HEX)
    assert str(d) == "sha256:" + HEX and d.short() == HEX[:12]
    assert digests.of_bytes(b"") == digests.parse(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    for bad in ("sha256:" + "A" * 64, "sha256:../../etc", "sha256:" + HEX + "/x", "", None, 5,
                "sha512:" + HEX):
        with pytest.raises(OCIError):
            digests.parse(bad)
