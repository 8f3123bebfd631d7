"""`satchel pull` from a real registry (Debian's docker-registry on loopback), as root and as the
unprivileged test user: contents, metadata, names, the cache, platforms, formats and errors."""

import json
import os
import pty
import select
import subprocess
import time

import pytest

from support.assertions import fatal
from support.fixtures_registry import (Proxy, sha256_file, sif_extract, sif_listing)
from support.fixtures_users import SATCHEL, run_satchel

pytestmark = pytest.mark.slow


@pytest.fixture
def cache_env(tmp_path):
    return {"APPTAINER_CACHEDIR": str(tmp_path / "cache")}


def pull(args, cwd, env, user=None, ok=True):
    result = run_satchel(["pull", "--nohttps", *args], user=user, env=env, cwd=str(cwd),
                         timeout=180)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def test_pull_content_metadata_and_default_name(test_images, tmp_path, cache_env):
    pull([test_images.uri("busybox:latest")], tmp_path, cache_env)
    sif = tmp_path / "busybox_latest.sif"
    assert sif.is_file() and os.access(sif, os.X_OK)
    root = sif_extract(str(sif), str(tmp_path / "root"))
    read = lambda p: open(os.path.join(root, p)).read()
    assert "Satchel Test OS" in read("etc/os-release")
    # layer 2 (zstd): whiteout, opaque directory, hardlink, a file replaced by a directory
    assert not os.path.exists(os.path.join(root, "etc/removed-later"))
    assert sorted(os.listdir(os.path.join(root, "opt/opaque"))) == ["upper-c"]
    assert os.path.samefile(os.path.join(root, "bin/busybox-hardlink"),
                            os.path.join(root, "bin/busybox"))
    assert read("var/lib/replaced-by-dir/inside") == "dir now"
    # layer 3 (uncompressed tar)
    assert read("etc/layer3") == "plain tar\n"
    assert os.readlink(os.path.join(root, "etc/os-release-link")) == "/etc/os-release"
    # metadata from the tar headers: owner, setuid bit, mtime, sticky /tmp
    listing = sif_listing(str(sif))
    assert listing["/home/user/owned"].endswith(" 1000/1000")
    assert listing["/bin/suid-tool"].startswith("-rwsr-xr-x")
    assert listing["/tmp"].startswith("drwxrwxrwt")
    assert os.stat(os.path.join(root, "etc/old-mtime")).st_mtime == 1000000000
    # the image config as Apptainer metadata
    env_script = read(".singularity.d/env/10-docker2singularity.sh")
    assert 'export PATH="/usr/bin:/bin"' in env_script
    assert 'export FOO="${FOO:-"bar baz"}"' in env_script
    runscript = read(".singularity.d/runscript")
    assert "OCI_ENTRYPOINT='\"/bin/echo\" \"entry\"'" in runscript and "from-cmd" in runscript
    from satchel.image import sif as siflib
    with siflib.SIFFile.open(str(sif)) as image:
        found = image.find(datatype=siflib.DATA_GENERICJSON, name="oci-config.json")
        assert len(found) == 1
        oci_config = json.loads(image.read_data(found[0].id))
    assert oci_config["WorkingDir"] == "/tmp" and oci_config["Cmd"] == ["from-cmd"]
    inspect = run_satchel(["inspect", "--json", str(sif)])
    assert inspect.returncode == 0, inspect.stderr
    labels = json.loads(inspect.stdout)["data"]["attributes"]["labels"]
    assert labels["org.example.label"] == "yes" and labels["org.example.quote"] == "it's"


def test_pulled_image_runs(test_images, tmp_path, cache_env):
    pull([str(tmp_path / "bb.sif"), test_images.uri("busybox:latest")], tmp_path, cache_env)
    result = run_satchel(["exec", str(tmp_path / "bb.sif"), "cat", "/etc/os-release"])
    assert result.returncode == 0, result.stderr
    assert 'NAME="Satchel Test OS"' in result.stdout
    run = run_satchel(["run", str(tmp_path / "bb.sif"), "arg1", "two words"])
    assert run.returncode == 0, run.stderr
    assert run.stdout == "entry arg1 two words\n"
    default = run_satchel(["run", str(tmp_path / "bb.sif")])
    assert default.stdout == "entry from-cmd\n"
    env = run_satchel(["exec", str(tmp_path / "bb.sif"), "sh", "-c", 'echo "$FOO"'])
    assert env.stdout == "bar baz\n"


def test_pull_as_unprivileged_user_and_run(test_images, test_user, user_tmp):
    env = {"APPTAINER_CACHEDIR": os.path.join(user_tmp, "cache")}
    result = pull([test_images.uri("busybox:latest")], user_tmp, env, user=test_user)
    sif = os.path.join(user_tmp, "busybox_latest.sif")
    assert os.stat(sif).st_uid == test_user.uid
    run = run_satchel(["exec", sif, "cat", "/etc/os-release"], user=test_user)
    assert run.returncode == 0, run.stderr
    assert "Satchel Test OS" in run.stdout
    # everything the pull wrote is in the destination and the cache, owned by the user
    for dirpath, dirs, files in os.walk(user_tmp):
        for name in dirs + files:
            assert os.lstat(os.path.join(dirpath, name)).st_uid == test_user.uid
    cache_tmp = os.path.join(user_tmp, "cache", "tmp")
    assert os.listdir(cache_tmp) == []
    assert "Traceback" not in result.stderr


def test_second_pull_downloads_and_converts_nothing(test_images, tmp_path, cache_env):
    registry = test_images.registry
    before = registry.log_size()
    pull([str(tmp_path / "a.sif"), test_images.uri("busybox:v1")], tmp_path, cache_env)
    first_gets = registry.blob_gets("busybox", before)
    assert first_gets == 4  # config + three layers
    middle = registry.log_size()
    result = pull([str(tmp_path / "b.sif"), test_images.uri("busybox:v1")], tmp_path, cache_env)
    assert registry.blob_gets("busybox", middle) == 0
    assert "Using cached SIF image" in result.stderr and "Creating SquashFS" not in result.stderr
    assert sha256_file(tmp_path / "a.sif") == sha256_file(tmp_path / "b.sif")
    # a damaged cached SIF is not handed out: it is converted again (from cached blobs)
    cached_sif = os.path.join(cache_env["APPTAINER_CACHEDIR"], "oci-tmp",
                              test_images.manifest_digest("busybox:v1")[7:] + ".sif")
    with open(cached_sif, "r+b") as fh:
        fh.truncate(50000)
    middle = registry.log_size()
    result = pull([str(tmp_path / "d.sif"), test_images.uri("busybox:v1")], tmp_path, cache_env)
    assert "removing damaged cached image" in result.stderr
    assert registry.blob_gets("busybox", middle) == 0
    run = run_satchel(["exec", str(tmp_path / "d.sif"), "cat", "/etc/layer2"])
    assert run.stdout == "from the zstd layer\n", run.stderr
    # a build from the same image reuses the blobs too
    middle = registry.log_size()
    build = run_satchel(["build", "--nohttps", str(tmp_path / "c.sif"),
                         test_images.uri("busybox:v1")], env=cache_env, timeout=180)
    assert build.returncode == 0, build.stderr
    assert registry.blob_gets("busybox", middle) == 0


def test_pull_by_digest_from_cache_needs_no_network(test_images, tmp_path, cache_env):
    digest = test_images.manifest_digest("busybox:latest")
    proxy = Proxy(test_images.registry.port)
    uri = f"docker://{proxy.host}/busybox@{digest}"
    try:
        pull([str(tmp_path / "first.sif"), uri], tmp_path, cache_env)
    finally:
        proxy.close()
    # the proxy's port is closed now: a second pull must not need the registry at all
    pull([str(tmp_path / "second.sif"), uri], tmp_path, cache_env)
    assert sha256_file(tmp_path / "first.sif") == sha256_file(tmp_path / "second.sif")
    offline_tag = pull([str(tmp_path / "third.sif"), f"docker://{proxy.host}/busybox:latest"],
                       tmp_path, cache_env, ok=False)
    fatal(offline_tag, "connection refused")


def test_force_and_existing_output(test_images, tmp_path, cache_env):
    out = tmp_path / "exists.sif"
    out.write_text("precious")
    result = pull([str(out), test_images.uri("busybox:latest")], tmp_path, cache_env, ok=False)
    fatal(result, "already exists", "will not overwrite")
    assert out.read_text() == "precious"
    pull(["--force", str(out), test_images.uri("busybox:latest")], tmp_path, cache_env)
    assert out.stat().st_size > 100000
    target_dir = tmp_path / "into"
    target_dir.mkdir()
    pull(["--dir", str(target_dir), test_images.uri("busybox:v1")], tmp_path, cache_env)
    assert (target_dir / "busybox_v1.sif").is_file()
    assert sorted(os.listdir(tmp_path)) == ["cache", "exists.sif", "into"]


def test_disable_cache_leaves_no_cache(test_images, tmp_path, cache_env):
    pull(["--disable-cache", str(tmp_path / "nc.sif"), test_images.uri("busybox:latest")],
         tmp_path, cache_env)
    assert not os.path.exists(cache_env["APPTAINER_CACHEDIR"])
    assert sorted(os.listdir(tmp_path)) == ["nc.sif"]


def test_multi_arch_index(test_images, tmp_path, cache_env):
    pull([str(tmp_path / "host.sif"), test_images.uri("multi:latest")], tmp_path, cache_env)
    pull(["--arch", "arm64", str(tmp_path / "arm.sif"), test_images.uri("multi:latest")],
         tmp_path, cache_env)
    pull(["--arch", "ppc64le", str(tmp_path / "ppc.sif"), test_images.uri("multi:latest")],
         tmp_path, cache_env)
    arch = lambda name: open(os.path.join(sif_extract(str(tmp_path / name),
                                                      str(tmp_path / (name + ".d"))),
                                          "etc/arch")).read().strip()
    assert arch("host.sif") == "amd64" and arch("arm.sif") == "arm64"
    assert arch("ppc.sif") == "ppc64le"
    result = pull(["--arch", "s390x", str(tmp_path / "x.sif"), test_images.uri("multi:latest")],
                  tmp_path, cache_env, ok=False)
    fatal(result, "no image for linux/s390x", "linux/amd64", "linux/arm64/v8")
    assert not (tmp_path / "x.sif").exists()


def test_docker_schema2_and_manifest_list(test_images, tmp_path, cache_env):
    pull([str(tmp_path / "list.sif"), test_images.uri("dockerfmt:list")], tmp_path, cache_env)
    pull([str(tmp_path / "single.sif"), test_images.uri("dockerfmt:single")], tmp_path,
         cache_env)
    for name in ("list.sif", "single.sif"):
        root = sif_extract(str(tmp_path / name), str(tmp_path / (name + ".d")))
        assert open(os.path.join(root, "etc/arch")).read() == "amd64\n"


def test_registry_errors(test_images, tmp_path, cache_env):
    host = test_images.registry.host
    fatal(pull([f"docker://{host}/no-such-repo:latest"], tmp_path, cache_env, ok=False),
          "no-such-repo")
    fatal(pull([f"docker://{host}/busybox:no-such-tag"], tmp_path, cache_env, ok=False),
          "manifest unknown", "no-such-tag")
    closed = Proxy(test_images.registry.port)
    closed.close()
    fatal(pull([f"docker://{closed.host}/busybox:latest"], tmp_path, cache_env, ok=False),
          "connection refused")
    # https against a plain-HTTP registry: a hint to use --nohttps
    result = run_satchel(["pull", test_images.uri("busybox:latest")], env=cache_env,
                         cwd=str(tmp_path))
    fatal(result, "does not speak TLS")
    assert "--nohttps" in result.stderr
    fatal(pull(["docker://Bad/Name"], tmp_path, cache_env, ok=False), "invalid image reference")
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_nohttps_from_environment_and_http_scheme(test_images, tmp_path, cache_env):
    env = dict(cache_env, APPTAINER_NOHTTPS="1")
    result = run_satchel(["pull", str(tmp_path / "e.sif"), test_images.uri("busybox:latest")],
                         env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    uri = f"docker://http://{test_images.registry.host}/busybox:latest"
    result = run_satchel(["pull", str(tmp_path / "h.sif"), uri], env=cache_env,
                         cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr


def test_digest_mismatch_from_a_corrupt_registry(oci_registry, registry_workdir, tmp_path,
                                                  cache_env):
    """A registry whose storage was damaged serves wrong bytes: the pull fails, caches nothing."""
    from support.fixtures_registry import busybox_layer, push_image
    from satchel.oci import writer
    marker = writer.Layer().file("corrupt-me", os.urandom(200000))
    layer = writer.compress_layer(marker.tar_bytes(), "")
    image = writer.Image([writer.compress_layer(busybox_layer().tar_bytes(), "gzip"), layer])
    push_image(f"docker://{oci_registry.host}", "corrupt:latest", image, registry_workdir)
    data_file = oci_registry.blob_file(layer.digest)
    with open(data_file, "r+b") as fh:
        fh.seek(100000)
        fh.write(b"EVIL")
    result = pull([oci_registry.uri("corrupt:latest")], tmp_path, cache_env, ok=False)
    fatal(result, "digest mismatch")
    cache = cache_env["APPTAINER_CACHEDIR"]
    assert not os.path.exists(os.path.join(cache, "blob", "sha256", layer.digest[7:]))
    assert os.listdir(os.path.join(cache, "tmp")) == []
    assert os.listdir(os.path.join(cache, "oci-tmp")) == []
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def _run_on_pty(argv, env, cwd):
    """Run argv with stderr (and stdout) on a pseudo-terminal; return everything it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=env, cwd=cwd)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    proc.wait(30)
    os.close(master)
    return proc.returncode, out.decode(errors="replace")


def test_progress_bar_only_on_a_terminal_and_not_with_quiet(test_images, tmp_path):
    env = dict(os.environ, APPTAINER_CACHEDIR=str(tmp_path / "c1"))
    uri = test_images.uri("busybox:latest")
    rc, out = _run_on_pty([SATCHEL, "pull", "--nohttps", str(tmp_path / "t.sif"), uri], env,
                          str(tmp_path))
    assert rc == 0, out
    assert "Fetching [" in out and "MiB" in out
    env["APPTAINER_CACHEDIR"] = str(tmp_path / "c2")
    rc, out = _run_on_pty([SATCHEL, "-q", "pull", "--nohttps", str(tmp_path / "q.sif"), uri],
                          env, str(tmp_path))
    assert rc == 0, out
    assert "Fetching [" not in out and "INFO" not in out
    piped = run_satchel(["pull", "--nohttps", str(tmp_path / "p.sif"), uri],
                        env={"APPTAINER_CACHEDIR": str(tmp_path / "c3")})
    assert piped.returncode == 0 and "Fetching [" not in piped.stderr
    assert "\r" not in piped.stderr


def test_unwritable_destination_fails_before_downloading(test_images, test_user, user_tmp):
    registry = test_images.registry
    before = registry.log_size()
    env = {"APPTAINER_CACHEDIR": os.path.join(user_tmp, "cache")}
    result = run_satchel(["pull", "--nohttps", "/etc/not-yours.sif",
                          test_images.uri("busybox:latest")], user=test_user, env=env)
    fatal(result, "no permission to create files in /etc")
    assert registry.blob_gets("busybox", before) == 0
    assert not os.path.exists("/etc/not-yours.sif")
    missing = run_satchel(["pull", "--nohttps", "--dir", os.path.join(user_tmp, "nope"),
                           test_images.uri("busybox:latest")], user=test_user, env=env)
    fatal(missing, "does not exist")
