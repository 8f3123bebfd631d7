"""Images given as URIs to exec, run, shell, test, inspect and instance start: pulled into the
cache by digest (as `pull` does) and run from there; archives and --disable-cache through a
temporary SIF removed afterwards. Against the session's local registry, as satchel-test."""

import json
import os
import subprocess

import pytest

from support.fixtures_users import run_satchel

pytestmark = pytest.mark.slow


@pytest.fixture
def user_env(user_tmp):
    return {"APPTAINER_CACHEDIR": os.path.join(user_tmp, "cache")}


def test_exec_docker_uri_twice_second_downloads_nothing(test_images, test_user, user_env):
    """exec docker://: the first run fetches config + 3 layers, the second no blob at all."""
    registry = test_images.registry
    uri = test_images.uri("busybox:v1")
    before = registry.log_size()
    first = run_satchel(["exec", "--nohttps", uri, "cat", "/etc/layer2"], user=test_user,
                        env=user_env, timeout=180)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "from the zstd layer\n"
    assert registry.blob_gets("busybox", before) == 4
    middle = registry.log_size()
    second = run_satchel(["exec", "--nohttps", uri, "cat", "/etc/layer3"], user=test_user,
                         env=user_env)
    assert (second.returncode, second.stdout) == (0, "plain tar\n"), second.stderr
    assert registry.blob_gets("busybox", middle) == 0
    assert "Using cached SIF image" in second.stderr
    # the cache holds the converted image under its manifest digest, owned by the user
    cached = os.path.join(user_env["APPTAINER_CACHEDIR"], "oci-tmp",
                          test_images.manifest_digest("busybox:v1")[7:] + ".sif")
    assert os.stat(cached).st_uid == test_user.uid


def test_run_docker_uri_runs_entrypoint_and_cmd(test_images, test_user, user_env):
    """run docker://: ENTRYPOINT + CMD, arguments replace CMD (Apptainer's rules)."""
    uri = test_images.uri("busybox:v1")
    r = run_satchel(["run", "--nohttps", uri], user=test_user, env=user_env, timeout=180)
    assert (r.returncode, r.stdout) == (0, "entry from-cmd\n"), r.stderr
    r = run_satchel(["run", "--nohttps", uri, "a", "b c"], user=test_user, env=user_env)
    assert (r.returncode, r.stdout) == (0, "entry a b c\n"), r.stderr
    r = run_satchel(["shell", "--nohttps", uri], user=test_user, env=user_env,
                    input=b"echo in-shell\n")
    assert "in-shell" in r.stdout, r.stderr
    inspect = run_satchel(["inspect", "--json", uri], user=test_user,
                          env=dict(user_env, APPTAINER_NOHTTPS="1"))
    assert inspect.returncode == 0, inspect.stderr
    labels = json.loads(inspect.stdout)["data"]["attributes"]["labels"]
    assert labels["org.example.label"] == "yes"


def test_disable_cache_uses_temporary_sif(test_images, test_user, user_tmp, user_env):
    """--disable-cache: nothing in the cache, the temporary SIF gone after the run."""
    tmpdir = os.path.join(user_tmp, "t")
    os.mkdir(tmpdir)
    os.chown(tmpdir, test_user.uid, test_user.gid)
    r = run_satchel(["exec", "--nohttps", "--disable-cache", "--tmpdir", tmpdir,
                     test_images.uri("busybox:v1"), "sh", "-c", "cat /etc/layer3; ls /"],
                    user=test_user, env=user_env, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("plain tar\n")
    assert os.listdir(tmpdir) == []
    assert not os.path.exists(os.path.join(user_env["APPTAINER_CACHEDIR"], "oci-tmp"))


def test_oci_archive_uri(test_images, test_user, user_tmp, user_env):
    """exec oci-archive:FILE (skopeo-made): converted to a temporary SIF, removed after."""
    archive = os.path.join(user_tmp, "oci.tar")
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                    test_images.uri("busybox:v1"), f"oci-archive:{archive}:v1"],
                   check=True, capture_output=True, timeout=120)
    os.chmod(archive, 0o644)
    tmpdir = os.path.join(user_tmp, "t")
    os.mkdir(tmpdir)
    os.chown(tmpdir, test_user.uid, test_user.gid)
    r = run_satchel(["exec", "--tmpdir", tmpdir, f"oci-archive:{archive}", "cat", "/etc/layer2"],
                    user=test_user, env=user_env, timeout=180)
    assert (r.returncode, r.stdout) == (0, "from the zstd layer\n"), r.stderr
    assert os.listdir(tmpdir) == []


def test_instance_start_docker_uri(test_images, test_user, user_env):
    """instance start docker://... NAME runs the cached image as an instance."""
    uri = test_images.uri("busybox:v1")
    r = run_satchel(["instance", "start", "--nohttps", uri, "uri17"], user=test_user,
                    env=user_env, timeout=180)
    try:
        assert r.returncode == 0, r.stderr
        e = run_satchel(["exec", "instance://uri17", "cat", "/etc/layer3"], user=test_user,
                        env=user_env)
        assert e.stdout == "plain tar\n", e.stderr
    finally:
        run_satchel(["instance", "stop", "uri17"], user=test_user, env=user_env)


@pytest.mark.parametrize("uri,needle", [
    ("library://alpine:3.19", "no library endpoint"),
    ("shub://a/b", "retired"),
    ("docker-daemon:alpine:3", "docker-archive"),
])
def test_unsupported_uri_schemes_one_line(uri, needle, test_user):
    r = run_satchel(["exec", uri, "true"], user=test_user)
    assert r.returncode == 255
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("FATAL:") and needle in r.stderr
