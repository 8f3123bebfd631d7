"""`registry login|logout|list` against real registries (TLS + htpasswd Basic, Bearer token
realm), run as the unprivileged user: credentials are checked, stored where Apptainer keeps
them (~/.apptainer/docker-config.json, 0600; remote.yaml's Credentials), and used by pull,
push and actions on docker:// images."""

import base64
import json
import os
import stat

import pytest

from support.assertions import fatal
from support.fixtures_registry import PASSWORD, USERNAME
from support.fixtures_users import run_satchel

pytestmark = pytest.mark.slow


@pytest.fixture
def home(test_user, user_tmp):
    path = os.path.join(user_tmp, "home")
    os.mkdir(path)
    os.chown(path, test_user.uid, test_user.gid)
    return path


def user_env(home, registry=None):
    env = {"HOME": home, "APPTAINER_CACHEDIR": os.path.join(home, "cache")}
    if registry is not None and getattr(registry, "ca_file", None):
        env["SSL_CERT_FILE"] = registry.ca_file
    return env


def login(user, env, uri, password=PASSWORD, extra=()):
    return run_satchel(["registry", "login", "-u", USERNAME, "--password-stdin", *extra, uri],
                       user=user, env=env, input=password.encode() + b"\n")


def test_wrong_password_stores_nothing(auth_registry, test_user, home):
    env = user_env(home, auth_registry)
    result = login(test_user, env, f"docker://{auth_registry.host}", password="wrong")
    fatal(result, "unauthorized", "nothing was stored")
    assert not os.path.exists(os.path.join(home, ".apptainer", "docker-config.json"))
    assert not os.path.exists(os.path.join(home, ".apptainer", "remote.yaml"))
    fatal(run_satchel(["registry", "login", "--password-stdin", f"docker://{auth_registry.host}"],
                      user=test_user, env=env, input=b"x\n"), "username")


def test_login_stores_private_credentials_that_pull_exec_and_push_use(
        auth_registry, test_user, home):
    env = user_env(home, auth_registry)
    uri = auth_registry.uri("private/busybox:latest")
    fatal(run_satchel(["pull", os.path.join(home, "anon.sif"), uri], user=test_user, env=env),
          "unauthorized")
    result = login(test_user, env, f"docker://{auth_registry.host}")
    assert result.returncode == 0, result.stderr
    conf = os.path.join(home, ".apptainer", "docker-config.json")
    st = os.stat(conf)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == test_user.uid
    entry = json.load(open(conf))["auths"][auth_registry.host]
    assert base64.b64decode(entry["auth"]).decode() == f"{USERNAME}:{PASSWORD}"
    assert [n for n in os.listdir(os.path.dirname(conf)) if ".tmp" in n] == []
    listed = run_satchel(["registry", "list"], user=test_user, env=env)
    assert f"docker://{auth_registry.host}" in listed.stdout, listed.stdout

    sif = os.path.join(home, "stored.sif")
    result = run_satchel(["pull", sif, uri], user=test_user, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    result = run_satchel(["exec", "--disable-cache", uri, "cat", "/etc/os-release"],
                         user=test_user, env=env, timeout=180)
    assert "Satchel Test OS" in result.stdout, result.stderr
    pushed = f"oras://{auth_registry.host}/private/pushed:1"
    result = run_satchel(["push", sif, pushed], user=test_user, env=env, timeout=180)
    assert result.returncode == 0, result.stderr

    result = run_satchel(["registry", "logout", f"docker://{auth_registry.host}"],
                         user=test_user, env=env)
    assert result.returncode == 0, result.stderr
    assert auth_registry.host not in json.load(open(conf))["auths"]
    listed = run_satchel(["registry", "list"], user=test_user, env=env)
    assert auth_registry.host not in listed.stdout
    fatal(run_satchel(["pull", "--force", os.path.join(home, "again.sif"), pushed],
                      user=test_user, env=env), "unauthorized")
    fatal(run_satchel(["registry", "logout", f"docker://{auth_registry.host}"],
                      user=test_user, env=env), "not logged in")


def test_login_keeps_other_entries_and_refuses_a_broken_file(auth_registry, test_user, home):
    env = user_env(home, auth_registry)
    authfile = os.path.join(home, "auth.json")
    other = {"auths": {"other.example": {"auth": "eDp5"}}, "credsStore": "none"}
    with open(authfile, "w") as fh:
        json.dump(other, fh)
    os.chmod(authfile, 0o644)
    os.chown(authfile, test_user.uid, test_user.gid)
    result = login(test_user, env, f"docker://{auth_registry.host}", extra=("--authfile", authfile))
    assert result.returncode == 0, result.stderr
    doc = json.load(open(authfile))
    assert doc["auths"]["other.example"] == {"auth": "eDp5"} and doc["credsStore"] == "none"
    assert auth_registry.host in doc["auths"]
    assert stat.S_IMODE(os.stat(authfile).st_mode) == 0o600
    # --authfile given to pull reads it
    result = run_satchel(["pull", "--authfile", authfile, os.path.join(home, "a.sif"),
                          auth_registry.uri("private/busybox:latest")],
                         user=test_user, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    with open(authfile, "w") as fh:
        fh.write("{not json")
    fatal(login(test_user, env, f"docker://{auth_registry.host}",
                extra=("--authfile", authfile)), "not JSON")
    assert open(authfile).read() == "{not json"


def test_bearer_login_and_pull(token_registry, test_user, home):
    env = user_env(home)
    tokens = token_registry.tokens
    fatal(login(test_user, env, f"docker://{token_registry.host}", password="nope"),
          "unauthorized")
    result = login(test_user, env, f"docker://{token_registry.host}")
    assert result.returncode == 0, result.stderr
    assert tokens.requests[-1]["user"] == USERNAME
    listed = run_satchel(["registry", "list"], user=test_user, env=env)
    assert f"docker://{token_registry.host}" in listed.stdout and "✗!" in listed.stdout
    result = run_satchel(["pull", "--nohttps", os.path.join(home, "t.sif"),
                          f"docker://{token_registry.host}/private/busybox:latest"],
                         user=test_user, env=env, timeout=180)
    assert result.returncode == 0, result.stderr


def test_remote_yaml_keeps_what_apptainer_wrote(auth_registry, test_user, home):
    env = user_env(home, auth_registry)
    os.makedirs(os.path.join(home, ".apptainer"))
    remote = os.path.join(home, ".apptainer", "remote.yaml")
    with open(remote, "w") as fh:
        fh.write("Active: SylabsCloud\nRemotes:\n    SylabsCloud:\n        URI: cloud.example\n"
                 "Credentials:\n    - URI: docker://old.example\n      Insecure: false\n")
    for path in (os.path.dirname(remote), remote):
        os.chown(path, test_user.uid, test_user.gid)
    assert login(test_user, env, f"docker://{auth_registry.host}").returncode == 0
    text = open(remote).read()
    assert text.startswith("Active: SylabsCloud\nRemotes:\n    SylabsCloud:\n        URI: "
                           "cloud.example\n"), text
    listed = run_satchel(["registry", "list"], user=test_user, env=env).stdout
    assert "docker://old.example" in listed and f"docker://{auth_registry.host}" in listed


def test_registry_usage_errors(test_user, home):
    env = user_env(home)
    fatal(run_satchel(["registry", "login", "-u", "x", "-p", "y", "ftp://x"], user=test_user,
                      env=env), "docker://HOST")
    fatal(run_satchel(["registry", "frobnicate"], user=test_user, env=env), "subcommand")
    fatal(run_satchel(["registry", "list", "-u", "x"], user=test_user, env=env), "login")
