"""Archives and layouts written by skopeo (docker-archive, oci-archive, oci:DIR) pulled and built
by satchel; `Bootstrap: docker|docker-archive|oci|oci-archive` definitions with %post on top."""

import os
import subprocess

import pytest

from support.fixtures_registry import sif_extract
from support.fixtures_users import run_satchel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exports(test_images, registry_workdir):
    """The registry's images exported by skopeo into each local format."""
    directory = os.path.join(registry_workdir, "exports")
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    host = test_images.registry.host
    out = {
        "docker-archive": os.path.join(directory, "docker.tar"),
        "oci-archive": os.path.join(directory, "oci.tar"),
        "oci": os.path.join(directory, "layout"),
    }
    copies = [
        (f"docker://{host}/dockerfmt:single", f"docker-archive:{out['docker-archive']}:dockerfmt:single"),
        (f"docker://{host}/busybox:latest", f"oci-archive:{out['oci-archive']}:v1"),
        (f"docker://{host}/busybox:latest", f"oci:{out['oci']}:v1"),
        (f"docker://{host}/multi:latest", f"oci:{out['oci']}:other"),
    ]
    for src, dest in copies:
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", src, dest],
                       check=True, capture_output=True, timeout=120)
    for path in out.values():
        subprocess.run(["chmod", "-R", "a+rX", path], check=True)
    return out


def read_in(sif, tmp, path):
    root = sif_extract(str(sif), os.path.join(str(tmp), os.path.basename(str(sif)) + ".d"))
    with open(os.path.join(root, path)) as fh:
        return fh.read()


@pytest.mark.parametrize("uri_of, marker", [
    (lambda e: f"docker-archive:{e['docker-archive']}", ("etc/arch", "amd64\n")),
    (lambda e: f"oci-archive:{e['oci-archive']}", ("etc/layer2", "from the zstd layer\n")),
    (lambda e: f"oci:{e['oci']}:v1", ("etc/layer3", "plain tar\n")),
    (lambda e: f"oci:{e['oci']}:other", ("etc/arch", "amd64\n")),
])
def test_pull_local_sources(exports, tmp_path, uri_of, marker):
    sif = tmp_path / "local.sif"
    result = run_satchel(["pull", str(sif), uri_of(exports)],
                         env={"APPTAINER_CACHEDIR": str(tmp_path / "cache")}, timeout=180)
    assert result.returncode == 0, result.stderr
    assert ".pull-" not in result.stderr  # no temporary names in what the user reads
    assert f"Image saved to {sif}" in result.stderr
    assert read_in(sif, tmp_path, marker[0]) == marker[1]
    run = run_satchel(["exec", str(sif), "cat", "/etc/os-release"])
    assert "Satchel Test OS" in run.stdout, run.stderr
    assert not os.path.exists(tmp_path / "cache" / "oci-tmp") or \
        os.listdir(tmp_path / "cache" / "oci-tmp") == []


def test_default_name_for_archives(exports, tmp_path):
    result = run_satchel(["pull", f"oci-archive:{exports['oci-archive']}"], cwd=str(tmp_path),
                         env={"APPTAINER_CACHEDIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(tmp_path / "oci.tar_latest.sif")


def test_local_source_errors(exports, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"no tar here" * 100)
    cases = [
        (f"docker-archive:{junk}", "not a tar archive"),
        (f"docker-archive:{tmp_path}/missing.tar", "does not exist"),
        (f"oci-archive:{exports['docker-archive']}", "oci-layout is missing"),
        (f"oci:{tmp_path}/nowhere", "does not exist"),
        (f"oci:{junk}", "is not a directory"),
        (f"oci:{exports['oci']}", "choose one with :TAG"),
        (f"oci:{exports['oci']}:nope", "no image tagged 'nope'"),
        (f"docker-archive:{exports['docker-archive']}:other:tag", "no image tagged"),
        ("docker-daemon:alpine:latest", "not supported"),
    ]
    for uri, needle in cases:
        result = run_satchel(["pull", str(tmp_path / "out.sif"), uri],
                             env={"APPTAINER_CACHEDIR": str(tmp_path / "cache")})
        assert result.returncode == 255, (uri, result.stderr)
        fatal = [l for l in result.stderr.splitlines() if l.startswith("FATAL:")]
        assert len(fatal) == 1 and needle in fatal[0], (uri, result.stderr)
        assert "Traceback" not in result.stderr
        assert not os.path.exists(tmp_path / "out.sif")
    assert sorted(os.listdir(tmp_path)) in (["junk.tar"], ["cache", "junk.tar"])


def definition(path, bootstrap, source):
    path.write_text(f"Bootstrap: {bootstrap}\nFrom: {source}\n\n"
                    "%post\n    echo built-on-top > /posted\n"
                    "%labels\n    org.example.def yes\n")
    return str(path)


@pytest.mark.parametrize("bootstrap", ["docker", "docker-archive", "oci", "oci-archive"])
def test_build_from_definition_with_post(test_images, exports, tmp_path, bootstrap):
    source = {"docker": f"{test_images.registry.host}/busybox:latest",
              "docker-archive": exports["docker-archive"],
              "oci": f"{exports['oci']}:v1",
              "oci-archive": exports["oci-archive"]}[bootstrap]
    deffile = definition(tmp_path / "image.def", bootstrap, source)
    sif = tmp_path / "built.sif"
    result = run_satchel(["build", "--nohttps", str(sif), deffile],
                         env={"APPTAINER_CACHEDIR": str(tmp_path / "cache")}, timeout=300)
    assert result.returncode == 0, result.stderr
    run = run_satchel(["exec", str(sif), "cat", "/posted", "/etc/os-release"])
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("built-on-top\n") and "Satchel Test OS" in run.stdout
    labels = run_satchel(["inspect", "--labels", str(sif)]).stdout
    assert "org.example.def" in labels


def test_build_docker_as_unprivileged_user(test_images, test_user, user_tmp):
    deffile = definition(__import__("pathlib").Path(user_tmp) / "u.def", "docker",
                         f"{test_images.registry.host}/busybox:latest")
    os.chown(deffile, test_user.uid, test_user.gid)
    sif = os.path.join(user_tmp, "u.sif")
    result = run_satchel(["build", "--nohttps", sif, deffile], user=test_user,
                         env={"APPTAINER_CACHEDIR": os.path.join(user_tmp, "cache")}, timeout=300)
    assert result.returncode == 0, result.stderr
    run = run_satchel(["exec", sif, "cat", "/posted"], user=test_user)
    assert run.stdout == "built-on-top\n", run.stderr


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_build_from_single_colon_local_source(exports, tmp_path, kind):
    """`satchel build OUT.sif docker-archive:FILE` (Apptainer's spelling, no //) builds the image."""
    sif = tmp_path / "built.sif"
    result = run_satchel(["build", str(sif), f"{kind}:{exports[kind]}"],
                         env={"APPTAINER_CACHEDIR": str(tmp_path / "cache")}, timeout=180)
    assert result.returncode == 0, result.stderr
    run = run_satchel(["exec", str(sif), "cat", "/etc/os-release"])
    assert "Satchel Test OS" in run.stdout, run.stderr


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci"])
def test_pull_local_sources_as_unprivileged_user(exports, test_user, user_tmp, kind):
    uri = {"docker-archive": f"docker-archive:{exports['docker-archive']}",
           "oci-archive": f"oci-archive:{exports['oci-archive']}",
           "oci": f"oci:{exports['oci']}:v1"}[kind]
    sif = os.path.join(user_tmp, "local.sif")
    result = run_satchel(["pull", sif, uri], user=test_user,
                         env={"APPTAINER_CACHEDIR": os.path.join(user_tmp, "cache")}, timeout=180)
    assert result.returncode == 0, result.stderr
    assert os.stat(sif).st_uid == test_user.uid
    run = run_satchel(["exec", sif, "cat", "/etc/os-release"], user=test_user)
    assert "Satchel Test OS" in run.stdout, run.stderr
    assert sorted(os.listdir(user_tmp)) in (["local.sif"], ["cache", "local.sif"])


@pytest.fixture
def truncated_sources(tmp_path):
    """The same one-layer image as an OCI layout, an oci-archive and a docker-archive (written
    by skopeo), each with its layer cut in half: a download or copy that stopped early."""
    import io
    import shutil
    import tarfile
    from support.fixtures_registry import busybox_layer
    from satchel.oci import writer
    layer = writer.compress_layer(busybox_layer().tar_bytes(), "gzip")
    intact = str(tmp_path / "intact")
    writer.write_layout(intact, {"v1": writer.Image([layer], {"Cmd": ["/bin/sh"]})})
    docker = str(tmp_path / "docker.tar")
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{intact}:v1",
                    f"docker-archive:{docker}:cut:v1"], check=True, capture_output=True,
                   timeout=120)
    layout = str(tmp_path / "layout")
    shutil.copytree(intact, layout)
    blob = os.path.join(layout, "blobs", "sha256", layer.digest.split(":", 1)[1])
    os.chmod(blob, 0o644)
    os.truncate(blob, len(layer.data) // 2)
    archive = str(tmp_path / "oci.tar")
    subprocess.run(["tar", "-C", layout, "-cf", archive, "."], check=True)
    cut_docker = str(tmp_path / "docker-cut.tar")
    with tarfile.open(docker) as src, tarfile.open(cut_docker, "w") as out:
        cut = 0
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None and member.size > 100000:  # the layer
                data, cut = data[:member.size // 2], cut + 1
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    assert cut == 1
    shutil.rmtree(intact)
    os.unlink(docker)
    return {"oci": f"oci:{layout}:v1", "oci-archive": f"oci-archive:{archive}",
            "docker-archive": f"docker-archive:{cut_docker}"}


@pytest.mark.parametrize("kind", ["oci", "oci-archive", "docker-archive"])
def test_truncated_layer_is_one_fatal_line_and_no_image(truncated_sources, tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    result = run_satchel(["pull", str(out / "cut.sif"), truncated_sources[kind]],
                         env={"APPTAINER_CACHEDIR": str(tmp_path / "cache")}, cwd=str(out),
                         timeout=180)
    assert result.returncode == 255, result.stderr
    fatal = [l for l in result.stderr.splitlines() if l.startswith("FATAL:")]
    assert len(fatal) == 1 and "truncated" in fatal[0], result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(out) == []  # no image, no temporary file or work directory
