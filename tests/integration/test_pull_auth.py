"""Authentication against real registries: htpasswd Basic auth behind TLS (a self-signed CA
trusted through SSL_CERT_FILE), and Bearer tokens from a token realm."""

import base64
import json
import os

import pytest

from support.assertions import fatal
from support.fixtures_registry import PASSWORD, USERNAME, sif_extract
from support.fixtures_users import run_satchel

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path, auth_registry):
    return {"APPTAINER_CACHEDIR": str(tmp_path / "cache"), "SSL_CERT_FILE": auth_registry.ca_file,
            "HOME": str(tmp_path / "home"),
            "APPTAINER_DOCKER_USERNAME": "", "APPTAINER_DOCKER_PASSWORD": "",
            "SINGULARITY_DOCKER_USERNAME": "", "SINGULARITY_DOCKER_PASSWORD": ""}


def pulled_ok(result, sif):
    assert result.returncode == 0, result.stderr
    root = sif_extract(str(sif), str(sif) + ".d")
    assert "Satchel Test OS" in open(os.path.join(root, "etc/os-release")).read()


def test_tls_trust_is_required(auth_registry, env, tmp_path):
    uri = auth_registry.uri("private/busybox:latest")
    no_trust = dict(env)
    del no_trust["SSL_CERT_FILE"]
    result = run_satchel(["pull", "--docker-username", USERNAME, "--docker-password", PASSWORD,
                          str(tmp_path / "x.sif"), uri], env=no_trust)
    fatal(result, "certificate verification failed")
    assert "SSL_CERT_FILE" in result.stderr
    assert not (tmp_path / "x.sif").exists()


def test_basic_auth_sources(auth_registry, env, tmp_path):
    uri = auth_registry.uri("private/busybox:latest")
    fatal(run_satchel(["pull", str(tmp_path / "anon.sif"), uri], env=env),
          "unauthorized", "anonymously")
    fatal(run_satchel(["pull", "--docker-username", USERNAME, "--docker-password", "wrong",
                       str(tmp_path / "bad.sif"), uri], env=env),
          "unauthorized", "command line")
    result = run_satchel(["pull", "--docker-username", USERNAME, "--docker-password", PASSWORD,
                          str(tmp_path / "cli.sif"), uri], env=env)
    pulled_ok(result, tmp_path / "cli.sif")
    for prefix in ("APPTAINER", "SINGULARITY"):
        with_env = dict(env, **{f"{prefix}_DOCKER_USERNAME": USERNAME,
                                f"{prefix}_DOCKER_PASSWORD": PASSWORD,
                                "APPTAINER_CACHEDIR": str(tmp_path / f"cache-{prefix}")})
        result = run_satchel(["pull", str(tmp_path / f"{prefix}.sif"), uri], env=with_env)
        pulled_ok(result, tmp_path / f"{prefix}.sif")
    docker_dir = tmp_path / "home" / ".docker"
    docker_dir.mkdir(parents=True)
    (docker_dir / "config.json").write_text(json.dumps({"auths": {
        auth_registry.host: {"auth": base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()}
    }}))
    result = run_satchel(["pull", str(tmp_path / "cfg.sif"), uri],
                         env=dict(env, APPTAINER_CACHEDIR=str(tmp_path / "cache-cfg")))
    pulled_ok(result, tmp_path / "cfg.sif")


def test_auth_as_unprivileged_user(auth_registry, test_user, user_tmp):
    uri = auth_registry.uri("private/busybox:latest")
    env = {"APPTAINER_CACHEDIR": os.path.join(user_tmp, "cache"),
           "SSL_CERT_FILE": auth_registry.ca_file,
           "APPTAINER_DOCKER_USERNAME": USERNAME, "APPTAINER_DOCKER_PASSWORD": PASSWORD}
    sif = os.path.join(user_tmp, "u.sif")
    result = run_satchel(["pull", sif, uri], user=test_user, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    run = run_satchel(["exec", sif, "cat", "/etc/os-release"], user=test_user)
    assert "Satchel Test OS" in run.stdout, run.stderr


def test_bearer_token_auth(token_registry, tmp_path):
    uri = f"docker://{token_registry.host}/private/busybox:latest"
    env = {"APPTAINER_CACHEDIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    tokens = token_registry.tokens
    before = len(tokens.requests)
    fatal(run_satchel(["pull", "--nohttps", str(tmp_path / "anon.sif"), uri], env=env),
          "unauthorized")
    anonymous = tokens.requests[before:]
    assert anonymous and not anonymous[0]["authorization"]
    assert anonymous[0]["query"]["scope"] == ["repository:private/busybox:pull"]
    assert anonymous[0]["query"]["service"] == ["satchel-test-registry"]
    result = run_satchel(["pull", "--nohttps", "--docker-username", USERNAME,
                          "--docker-password", PASSWORD, str(tmp_path / "tok.sif"), uri],
                         env=env, timeout=180)
    pulled_ok(result, tmp_path / "tok.sif")
    assert tokens.requests[-1]["user"] == USERNAME
    fatal(run_satchel(["pull", "--nohttps", "--docker-username", USERNAME,
                       "--docker-password", "nope", "--force", str(tmp_path / "tok.sif"), uri],
                      env=dict(env, APPTAINER_CACHEDIR=str(tmp_path / "c2"))),
          "unauthorized")


def test_docker_login_prompts_on_the_terminal(auth_registry, env, tmp_path):
    """--docker-login asks for the username, then the password without echo."""
    import pty
    import select
    import subprocess
    import time
    from support.fixtures_users import SATCHEL
    master, slave = pty.openpty()
    proc = subprocess.Popen([SATCHEL, "pull", "--docker-login", str(tmp_path / "login.sif"),
                             auth_registry.uri("private/busybox:latest")],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env=dict(os.environ, **env))
    os.close(slave)
    out, sent = b"", set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            continue
        try:
            out += os.read(master, 4096)
        except OSError:
            break
        if b"Username: " in out and "user" not in sent:
            os.write(master, USERNAME.encode() + b"\n")
            sent.add("user")
        if b"Password: " in out and "password" not in sent:
            os.write(master, PASSWORD.encode() + b"\n")
            sent.add("password")
    proc.wait(60)
    os.close(master)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert PASSWORD not in text  # not echoed
    pulled_ok(subprocess.CompletedProcess([], 0), tmp_path / "login.sif")
