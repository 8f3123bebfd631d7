"""`satchel push IMAGE.sif oras://...`, `satchel pull oras://...` and `Bootstrap: oras` against
Debian's docker-registry, checked with a third-party client (the `oras` Python SDK): each pulls
what the other pushed. Auth (htpasswd+TLS, Bearer tokens), the cache, and refusals."""

import json
import os
import shutil

import pytest

from support.assertions import fatal
from support.fixtures_push import FaultProxy, oras_sdk
from support.fixtures_registry import PASSWORD, USERNAME, http_get, sha256_file
from support.fixtures_users import run_satchel

pytestmark = pytest.mark.slow

SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"
EMPTY_CONFIG_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def env(tmp_path):
    return {"APPTAINER_CACHEDIR": str(tmp_path / "cache"), "HOME": str(tmp_path / "home"),
            "APPTAINER_DOCKER_USERNAME": "", "APPTAINER_DOCKER_PASSWORD": ""}


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def manifest(registry, repo_tag):
    repo, _, tag = repo_tag.partition(":")
    status, body = http_get(f"http://{registry.host}/v2/{repo}/manifests/{tag}",
                            {"Accept": OCI_MANIFEST})
    assert status == 200, body
    return json.loads(body)


def cache_clean_of_partials(cache_dir):
    """Nothing half-written: no partial downloads or temp files, no converted SIFs."""
    tmp = os.path.join(cache_dir, "tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == [], os.listdir(tmp)
    sifs = os.path.join(cache_dir, "oci-tmp")
    assert not os.path.isdir(sifs) or os.listdir(sifs) == []


def test_push_is_apptainers_artifact_and_the_oras_sdk_pulls_it(oci_registry, busybox_sif,
                                                              tmp_path, env):
    uri = f"oras://{oci_registry.host}/oras/busybox:1.0"
    ok(run_satchel(["push", "--nohttps", busybox_sif, uri], env=env))
    doc = manifest(oci_registry, "oras/busybox:1.0")
    assert doc["mediaType"] == OCI_MANIFEST
    assert doc["config"]["mediaType"] == SIF_CONFIG
    assert doc["config"]["digest"] == EMPTY_CONFIG_DIGEST and doc["config"]["size"] == 2
    (layer,) = doc["layers"]
    assert layer["mediaType"] == SIF_LAYER
    assert layer["digest"] == "sha256:" + sha256_file(busybox_sif)
    assert layer["size"] == os.path.getsize(busybox_sif)
    assert layer["annotations"]["org.opencontainers.image.title"] == "busybox.sif"
    out = tmp_path / "sdk"
    out.mkdir()
    oras_sdk("pull", f"{oci_registry.host}/oras/busybox:1.0", str(out))
    assert sha256_file(str(out / "busybox.sif")) == sha256_file(busybox_sif)


def test_sdk_push_satchel_pull_through_the_cache(oci_registry, busybox_sif, tmp_path, env,
                                                 test_user, user_tmp):
    """The SDK's artifact (its own config media type) pulls as the unprivileged user; the
    second pull downloads no blob."""
    sdk_file = tmp_path / "sdk.sif"
    shutil.copy(busybox_sif, sdk_file)
    with open(sdk_file, "ab") as fh:  # another digest than the other tests' pushes
        fh.write(b"\0" * 4096)
    oras_sdk("push", f"{oci_registry.host}/oras/sdk:v1", "sdk.sif", SIF_LAYER, cwd=str(tmp_path))
    uri = f"oras://{oci_registry.host}/oras/sdk:v1"
    user_env = {"APPTAINER_CACHEDIR": os.path.join(user_tmp, "cache")}
    ok(run_satchel(["pull", "--nohttps", uri], user=test_user, env=user_env, cwd=user_tmp))
    pulled = os.path.join(user_tmp, "sdk_v1.sif")
    assert sha256_file(pulled) == sha256_file(str(sdk_file))
    before = oci_registry.log_size()
    result = ok(run_satchel(["pull", "--nohttps", "again.sif", uri], user=test_user,
                            env=user_env, cwd=user_tmp))
    assert "Using cached SIF" in result.stderr
    assert oci_registry.blob_gets("oras/sdk", before) == 0
    assert sha256_file(os.path.join(user_tmp, "again.sif")) == sha256_file(str(sdk_file))
    cache_clean_of_partials(user_env["APPTAINER_CACHEDIR"])


def test_bootstrap_oras(oci_registry, busybox_sif, tmp_path, env):
    ok(run_satchel(["push", "--nohttps", busybox_sif,
                    f"oras://{oci_registry.host}/oras/base:1"], env=env))
    definition = tmp_path / "oras.def"
    definition.write_text(f"Bootstrap: oras\nFrom: {oci_registry.host}/oras/base:1\n\n"
                          "%post\n    echo layered > /layered\n")
    target = tmp_path / "derived.sif"
    ok(run_satchel(["build", "--nohttps", str(target), str(definition)], env=env,
                   timeout=300))
    assert ok(run_satchel(["exec", str(target), "cat", "/layered"])).stdout == "layered\n"
    # the base image's runscript is kept
    assert ok(run_satchel(["run", str(target), "x"])).stdout == \
        ok(run_satchel(["run", busybox_sif, "x"])).stdout


def test_basic_auth_over_tls(auth_registry, busybox_sif, tmp_path, env):
    env = dict(env, SSL_CERT_FILE=auth_registry.ca_file)
    uri = f"oras://{auth_registry.host}/private/sif:1"
    fatal(run_satchel(["push", busybox_sif, uri], env=env), "unauthorized", "anonymously")
    creds = ["--docker-username", USERNAME, "--docker-password", PASSWORD]
    ok(run_satchel(["push", *creds, busybox_sif, uri], env=env))
    fatal(run_satchel(["pull", str(tmp_path / "anon.sif"), uri], env=env), "unauthorized")
    assert not (tmp_path / "anon.sif").exists()
    ok(run_satchel(["pull", *creds, str(tmp_path / "got.sif"), uri], env=env))
    assert sha256_file(str(tmp_path / "got.sif")) == sha256_file(busybox_sif)
    cache_clean_of_partials(env["APPTAINER_CACHEDIR"])


def test_token_auth_from_docker_config(token_registry, busybox_sif, tmp_path, env):
    import base64
    config = tmp_path / "auth.json"
    config.write_text(json.dumps({"auths": {token_registry.host: {
        "auth": base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()}}}))
    uri = f"oras://{token_registry.host}/private/tok:1"
    ok(run_satchel(["push", "--nohttps", "--authfile", str(config), busybox_sif, uri], env=env))
    scopes = [q["query"].get("scope", [""])[0] for q in token_registry.tokens.requests]
    assert "repository:private/tok:pull,push" in scopes
    ok(run_satchel(["pull", "--nohttps", "--authfile", str(config), str(tmp_path / "t.sif"),
                    uri], env=env))
    assert sha256_file(str(tmp_path / "t.sif")) == sha256_file(busybox_sif)


def test_refused_push_403_and_missing_artifact_404(oci_registry, busybox_sif, tmp_path, env):
    proxy = FaultProxy(oci_registry.port, lambda m, p, n: 403 if m == "POST" else None)
    try:
        fatal(run_satchel(["push", "--nohttps", busybox_sif,
                           f"oras://{proxy.host}/oras/denied:1"], env=env),
              "denied", "oras://")
    finally:
        proxy.close()
    fatal(run_satchel(["pull", "--nohttps", str(tmp_path / "none.sif"),
                       f"oras://{oci_registry.host}/oras/nothing:here"], env=env),
          "manifest unknown")
    assert not (tmp_path / "none.sif").exists()
    cache_clean_of_partials(env["APPTAINER_CACHEDIR"])


def test_server_error_in_every_upload_is_fatal(oci_registry, busybox_sif, env):
    proxy = FaultProxy(oci_registry.port, lambda m, p, n: 500 if m == "PATCH" else None)
    try:
        line = fatal(run_satchel(["push", "--nohttps", busybox_sif,
                                  f"oras://{proxy.host}/oras/broken:1"], env=env, timeout=60),
                     "500", "gave up")
    finally:
        proxy.close()
    assert proxy.methods().count("PATCH") == 4, line  # the first try and 3 resumptions
    assert "PUT" not in proxy.methods()  # no manifest for a blob that never arrived


def test_not_a_sif_is_not_pushed(oci_registry, tmp_path, env):
    text = tmp_path / "notes.sif"
    text.write_text("not an image\n" * 100)
    before = oci_registry.log_size()
    fatal(run_satchel(["push", "--nohttps", str(text),
                       f"oras://{oci_registry.host}/oras/bad:1"], env=env),
          "cannot push", "SIF")
    assert "/v2/oras/bad" not in oci_registry.log_text()[before:]


def test_pull_refuses_other_media_types(test_images, oci_registry, tmp_path, env):
    """A container image is not a SIF artifact; nor is a file pushed with the SIF media type
    that is not a SIF (its verified blob does not stay in the cache)."""
    fatal(run_satchel(["pull", "--nohttps", str(tmp_path / "img.sif"),
                       f"oras://{oci_registry.host}/busybox:latest"], env=env),
          "not a SIF artifact", "application/vnd.oci.image.layer.v1.tar+gzip")
    (tmp_path / "fake.sif").write_text("plain text, SIF media type\n")
    oras_sdk("push", f"{oci_registry.host}/oras/fake:1", "fake.sif", SIF_LAYER,
             cwd=str(tmp_path))
    fatal(run_satchel(["pull", "--nohttps", str(tmp_path / "out.sif"),
                       f"oras://{oci_registry.host}/oras/fake:1"], env=env),
          "not a SIF file")
    assert not (tmp_path / "img.sif").exists() and not (tmp_path / "out.sif").exists()
    cache = env["APPTAINER_CACHEDIR"]
    cache_clean_of_partials(cache)
    fake_hex = sha256_file(str(tmp_path / "fake.sif"))
    assert not os.path.exists(os.path.join(cache, "blob", "sha256", fake_hex))
