"""`satchel push --oci IMAGE.sif DEST`: a SIF exported as an OCI image to oci-archive:, oci: and
docker:// (Debian's docker-registry), run by Podman and containerd from Debian; the round trip
docker:// -> SIF -> OCI -> SIF; refusals."""

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

import pytest

from support.assertions import fatal
from support.fixtures_registry import sif_extract, sif_partition_offset
from support.fixtures_runtime import processes_mentioning, wait_until
from support.fixtures_users import run_satchel

pytestmark = pytest.mark.slow

ENTRYPOINT_HEAD = ["/bin/sh", "-c"]
# written by every build (a pull is one): dates, the definition, the previous definition
BUILD_RECORDS = ("/.singularity.d/labels.json", "/.singularity.d/Singularity",
                 "/.singularity.d/bootstrap_history")


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def sif_listing(path):
    """path -> 'MODE OWNER/GROUP' of every entry (symbolic links too) from `unsquashfs -lln`."""
    out = subprocess.run(["unsquashfs", "-lln", "-o", str(sif_partition_offset(path)), path],
                         check=True, capture_output=True, text=True).stdout
    listing = {}
    for line in out.splitlines():
        if "squashfs-root" not in line:
            continue
        fields = line.split()
        name = line[line.index("squashfs-root") + len("squashfs-root"):].split(" -> ")[0]
        listing[name or "/"] = f"{fields[0]} {fields[1]}"
    return listing


def layout_of_archive(path, into):
    with tarfile.open(path) as tar:
        tar.extractall(into)
    index = json.load(open(os.path.join(into, "index.json")))
    blob = lambda d: os.path.join(into, "blobs", "sha256", d.split(":", 1)[1])
    manifest = json.load(open(blob(index["manifests"][0]["digest"])))
    config = json.load(open(blob(manifest["config"]["digest"])))
    return index, manifest, config, blob(manifest["layers"][0]["digest"])


@pytest.fixture(scope="module")
def exported(busybox_sif, image_dir):
    """busybox.sif exported to an oci-archive (once for the module)."""
    path = os.path.join(image_dir, "busybox-oci.tar")
    ok(run_satchel(["push", "--oci", busybox_sif, f"oci-archive:{path}:v1"]))
    return path


def test_archive_layer_and_config(exported, busybox_sif, tmp_path):
    index, manifest, config, layer = layout_of_archive(exported, tmp_path / "layout")
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    runtime = config["config"]
    # Env: the static assignments of %environment and of what %post appended
    assert "SATCHEL_TEST_ENV=from %environment" in runtime["Env"]
    assert "SATCHEL_POST_ENV=from %post" in runtime["Env"]
    assert runtime["Entrypoint"][:2] == ENTRYPOINT_HEAD
    assert "/.singularity.d/runscript" in runtime["Entrypoint"][2]
    labels = json.loads(ok(run_satchel(["inspect", "--json", busybox_sif])).stdout)
    assert runtime["Labels"] == labels["data"]["attributes"]["labels"]
    # the layer: the SIF's tree, whole-second times, numeric owners only, sorted per directory
    digest = hashlib.sha256(open(layer, "rb").read()).hexdigest()
    assert manifest["layers"][0]["digest"] == "sha256:" + digest
    with tarfile.open(layer) as tar:
        members = tar.getmembers()
    names = ["/" + m.name[2:].rstrip("/") if m.name != "./" else "/" for m in members]
    listing = sif_listing(busybox_sif)
    assert sorted(names) == sorted(listing)
    for name, m in zip(names, members):
        assert isinstance(m.mtime, int) and "mtime" not in m.pax_headers, m.name
        assert (m.uname, m.gname) == (str(m.uid), str(m.gid)), m.name  # no names looked up
        assert listing[name].endswith(f" {m.uid}/{m.gid}"), (name, listing[name])
    siblings = {}
    for name in names[1:]:
        parent, _, base = name.rpartition("/")
        siblings.setdefault(parent, []).append(base.encode())
    assert all(v == sorted(v) for v in siblings.values())


def test_export_is_reproducible_and_keeps_image_owners(exported, busybox_sif, test_user,
                                                       user_tmp):
    """Exported again by the unprivileged user: the same bytes (owners come from the image,
    not from whoever exports)."""
    again = os.path.join(user_tmp, "again.tar")
    ok(run_satchel(["push", "--oci", busybox_sif, f"oci-archive:{again}:v1"], user=test_user))
    assert open(again, "rb").read() == open(exported, "rb").read()


def test_oci_dir_and_back_to_sif(busybox_sif, tmp_path):
    layout = tmp_path / "layout"
    ok(run_satchel(["push", "--oci", busybox_sif, f"oci:{layout}:one"]))
    ok(run_satchel(["push", "--oci", "--layer-compression", "zstd", busybox_sif,
                    f"oci:{layout}:two"]))
    tags = [m["annotations"]["org.opencontainers.image.ref.name"]
            for m in json.load(open(layout / "index.json"))["manifests"]]
    assert tags == ["one", "two"]
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{layout}:two"], capture_output=True,
                             text=True)
    assert inspect.returncode == 0, inspect.stderr
    back = tmp_path / "back.sif"
    ok(run_satchel(["pull", str(back), f"oci:{layout}:two"]))
    assert ok(run_satchel(["run", str(back), "a", "b"])).stdout == \
        ok(run_satchel(["run", busybox_sif, "a", "b"])).stdout
    env = ok(run_satchel(["exec", str(back), "env"])).stdout
    assert "SATCHEL_TEST_ENV=from %environment" in env


def tree(sif, workdir):
    """path -> (mode+owner, sha256 of a regular file's content or a link's target)."""
    listing = sif_listing(sif)
    root = sif_extract(sif, tempfile.mkdtemp(dir=workdir))
    out = {}
    for path, mode_owner in listing.items():
        if path.startswith(BUILD_RECORDS) or path == "/.singularity.d":
            continue
        full = root + path
        if os.path.islink(full):
            content = os.readlink(full)
        elif os.path.isfile(full):
            content = hashlib.sha256(open(full, "rb").read()).hexdigest()
        else:
            content = None
        out[path] = (mode_owner, content)
    return out


def test_round_trip_docker_sif_oci_sif(test_images, tmp_path):
    env = {"APPTAINER_CACHEDIR": str(tmp_path / "cache")}
    first = tmp_path / "first.sif"
    ok(run_satchel(["pull", "--nohttps", str(first), test_images.uri("busybox:latest")],
                   env=env))
    archive = tmp_path / "first.tar"
    ok(run_satchel(["push", "--oci", str(first), f"oci-archive:{archive}"]))
    second = tmp_path / "second.sif"
    ok(run_satchel(["pull", str(second), f"oci-archive:{archive}"], env=env))
    a, b = tree(str(first), tmp_path), tree(str(second), tmp_path)
    assert a["/home/user/owned"][0].endswith(" 1000/1000")  # owners other than root travel
    assert a == b
    assert ok(run_satchel(["run", str(second)])).stdout == \
        ok(run_satchel(["run", str(first)])).stdout


def test_refusals(busybox_sif, tmp_path):
    from satchel.image import sif
    empty = tmp_path / "defonly.sif"
    sif.create(str(empty), [sif.NewObject(datatype=sif.DATA_DEFFILE, data=b"Bootstrap: scratch\n")])
    work = tmp_path / "tmp"
    work.mkdir()
    fatal(run_satchel(["push", "--oci", "--tmpdir", str(work), str(empty),
                       f"oci-archive:{tmp_path / 'x.tar'}"]), "no root file system")
    fatal(run_satchel(["push", "--oci", str(tmp_path / "missing.sif"),
                       f"oci:{tmp_path / 'dir'}"]), "cannot export")
    wrong = run_satchel(["push", busybox_sif, f"oci-archive:{tmp_path / 'y.tar'}"])
    fatal(wrong, "oras://")
    assert "add --oci" in wrong.stderr
    assert os.listdir(work) == [] and sorted(os.listdir(tmp_path)) == ["defonly.sif", "tmp"]


# ------------------------------------------------------------------ other runtimes
@pytest.fixture(scope="module")
def pushed(busybox_sif, oci_registry):
    ref = f"{oci_registry.host}/exported/busybox:1"
    ok(run_satchel(["push", "--oci", "--nohttps", busybox_sif, f"docker://{ref}"]))
    return ref


def test_podman_runs_the_exported_image(pushed, busybox_sif, tmp_path):
    storage = tempfile.mkdtemp(prefix="podman-", dir="/var/tmp")
    try:
        result = subprocess.run(
            ["podman", "--root", f"{storage}/root", "--runroot", f"{storage}/run",
             "--storage-driver", "vfs", "--runtime", "runc", "run", "--rm", "--network", "none",
             "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
             "--tls-verify=false", pushed, "a", "b c"],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout == ok(run_satchel(["run", busybox_sif, "a", "b c"])).stdout
    finally:
        subprocess.run(["podman", "--root", f"{storage}/root", "--runroot", f"{storage}/run",
                        "--storage-driver", "vfs", "system", "reset", "--force"],
                       capture_output=True, timeout=60)
        shutil.rmtree(storage, ignore_errors=True)


def test_containerd_runs_the_exported_image(pushed, busybox_sif):
    base = tempfile.mkdtemp(prefix="ctd-", dir="/var/tmp")
    sock = f"{base}/sock"
    log = open(f"{base}/log", "wb")
    daemon = subprocess.Popen(["containerd", "--root", f"{base}/root", "--state",
                               f"{base}/state", "--address", sock], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_until(lambda: os.path.exists(sock), 20, interval=0.1)
        ctr = ["ctr", "-a", sock]
        pull = subprocess.run(ctr + ["images", "pull", "--plain-http", pushed],
                              capture_output=True, text=True, timeout=120)
        assert pull.returncode == 0, pull.stderr
        run = subprocess.run(ctr + ["run", "--rm", "--runc-binary", shutil.which("runc"),
                                    pushed, "satchel-export-test"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout == ok(run_satchel(["run", busybox_sif])).stdout
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()
        for line in processes_mentioning(sock):  # a shim outlives its daemon
            os.kill(int(line.split()[0]), 9)
        with open("/proc/self/mountinfo") as fh:
            mounts = [l.split()[4] for l in fh if base in l.split()[4]]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
