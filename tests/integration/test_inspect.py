"""`satchel inspect` and `satchel run-help` on SIFs (with and without inspect-metadata.json),
SquashFS images and sandboxes, as root and as the non-root test user."""

import json
import os
import shutil

import pytest

from support.fixtures_users import run_satchel

from satchel.image import sif

ATTRIBUTE_ORDER = ["apps", "environment", "labels", "runscript", "test", "helpfile", "deffile",
                   "startscript"]


def inspect(*args, user=None):
    r = run_satchel(["inspect", *args], user=user)
    assert r.returncode == 0, r.stderr
    return r.stdout


def inspect_json(*args, user=None):
    text = inspect("--json", *args, user=user)
    doc = json.loads(text)
    assert list(doc) == ["data", "type"] and doc["type"] == "container"
    assert list(doc["data"]) == ["attributes"]
    attrs = doc["data"]["attributes"]
    assert list(attrs) == [k for k in ATTRIBUTE_ORDER if k in attrs]  # Go struct order
    assert text.startswith('{\n\t"data": {\n\t\t"attributes": {')  # tab indented
    assert text.endswith("}\n")
    return attrs


@pytest.fixture(scope="module")
def stripped_sif(busybox_sif, image_dir):
    """The busybox SIF without its inspect-metadata.json and definition objects (as from an
    older tool): inspect must read /.singularity.d from the SquashFS partition."""
    path = os.path.join(image_dir, "stripped.sif")
    shutil.copyfile(busybox_sif, path)
    with sif.SIFFile.open(path) as image:
        ids = [d.id for d in image.descriptors if d.datatype in (sif.DATA_GENERICJSON, sif.DATA_DEFFILE)]
    for ident in ids:
        sif.delete_object(path, ident)
    os.chmod(path, 0o755)
    with sif.SIFFile.open(path) as image:
        assert not image.find(datatype=sif.DATA_GENERICJSON)
    return path


@pytest.fixture(scope="module")
def squashfs_image(busybox_sif, image_dir):
    path = os.path.join(image_dir, "busybox.sqfs")
    with sif.SIFFile.open(busybox_sif) as image, open(path, "wb") as out:
        image.copy_data(image.primary_partition().id, out)
    os.chmod(path, 0o644)
    return path


def test_default_prints_labels(busybox_sif):
    out = inspect(busybox_sif)
    lines = out.splitlines()
    assert "org.satchel.test: busybox" in lines
    assert "Maintainer: satchel tests" in lines
    keys = [line.split(": ", 1)[0] for line in lines]
    assert keys == sorted(keys)  # sorted by key, like Apptainer


def test_json_labels_only_by_default(busybox_sif):
    attrs = inspect_json(busybox_sif)
    assert list(attrs) == ["labels"]
    assert attrs["labels"]["org.label-schema.schema-version"] == "1.0"


def test_every_section(busybox_sif):
    deffile = open(os.path.join(os.path.dirname(__file__), "..", "data", "busybox.def")).read()
    assert inspect("--deffile", busybox_sif) == deffile.rstrip("\n") + "\n"
    assert "runscript args" in inspect("--runscript", busybox_sif)
    assert inspect("--startscript", busybox_sif).startswith("#!/bin/sh")
    assert "test -f /etc/satchel-release" in inspect("--test", busybox_sif)
    assert "busybox test image" in inspect("--helpfile", busybox_sif)
    env = inspect("--environment", busybox_sif)
    assert "=== /.singularity.d/env/90-environment.sh ===" in env
    assert "=== /.singularity.d/env/91-environment.sh ===" in env
    assert 'SATCHEL_TEST_ENV="from %environment"' in env
    assert inspect("--list-apps", busybox_sif) == ""


def test_json_all_and_combinations(busybox_sif):
    attrs = inspect_json("--runscript", "--environment", "--test", busybox_sif)
    assert list(attrs) == ["environment", "runscript", "test"]
    everything = json.loads(inspect("--all", busybox_sif))["data"]["attributes"]
    assert list(everything) == ["environment", "labels", "runscript", "test", "helpfile",
                                "deffile", "startscript"]
    # the stored object is exactly the --all data
    with sif.SIFFile.open(busybox_sif) as image:
        stored = json.loads(image.read_data(image.find(name="inspect-metadata.json")[0].id))
    assert stored["data"]["attributes"] == everything


def test_go_style_escaping(busybox_sif):
    text = inspect("--json", "--deffile", busybox_sif)
    assert "\\u003e /etc/satchel-release" in text  # '>' escaped like Go's encoding/json
    assert json.loads(text)["data"]["attributes"]["deffile"].count(">") >= 1


@pytest.mark.parametrize("flags", [[], ["--deffile"], ["--runscript"], ["--environment"],
                                   ["--helpfile"], ["--test"], ["--startscript"]])
def test_sif_without_metadata_and_sandbox_match(busybox_sif, stripped_sif, busybox_sandbox,
                                                squashfs_image, flags):
    """Same answers from the metadata object, the SquashFS files, a sandbox, a bare SquashFS."""
    reference = inspect_json(*flags, busybox_sif)
    assert inspect_json(*flags, stripped_sif) == reference
    assert inspect_json(*flags, squashfs_image) == reference
    sandbox = inspect_json(*flags, busybox_sandbox)
    if "labels" in reference:  # the sandbox was built separately: its build date differs
        for key in ("org.label-schema.build-date", "org.opencontainers.image.created"):
            reference["labels"].pop(key), sandbox["labels"].pop(key)
    assert sandbox == reference


def test_run_help(busybox_sif, busybox_sandbox, image_dir):
    r = run_satchel(["run-help", busybox_sif])
    assert r.returncode == 0 and r.stdout == "    The busybox test image of satchel's test suite.\n"
    assert run_satchel(["run-help", busybox_sandbox]).stdout == r.stdout
    empty = os.path.join(image_dir, "nohelp")
    os.makedirs(os.path.join(empty, ".singularity.d"), exist_ok=True)
    r = run_satchel(["run-help", empty])
    assert r.returncode == 0 and r.stdout == "No help sections were defined for this image\n"


def test_inspect_as_non_root(test_user, busybox_sif, stripped_sif, busybox_sandbox):
    as_user = inspect("--json", "--labels", "--runscript", busybox_sif, user=test_user)
    as_root = inspect("--json", "--labels", "--runscript", busybox_sif)
    assert as_user == as_root
    assert inspect("--runscript", stripped_sif, user=test_user) == inspect("--runscript", busybox_sif)
    assert "org.satchel.test: busybox" in inspect(busybox_sandbox, user=test_user)
    r = run_satchel(["run-help", busybox_sif], user=test_user)
    assert r.returncode == 0 and "busybox test image" in r.stdout


def test_apps_are_listed_from_a_sandbox(tmp_path):
    root = tmp_path / "sb"
    app = root / "scif" / "apps" / "hello" / "scif"
    (app / "env").mkdir(parents=True)
    (app / "runscript").write_text("#!/bin/sh\necho hello\n")
    (app / "runscript.help").write_text("hello help\n")
    (app / "labels.json").write_text('{"app": "hello"}')
    (app / "env" / "90-environment.sh").write_text("export HELLO=1\n")
    (root / ".singularity.d").mkdir()
    assert inspect("--list-apps", str(root)) == "hello\n"
    attrs = inspect_json("--list-apps", str(root))
    assert attrs == {"apps": {"hello": {}}}
    everything = json.loads(inspect("--all", str(root)))["data"]["attributes"]
    assert everything["apps"]["hello"] == {
        "environment": {"/scif/apps/hello/scif/env/90-environment.sh": "export HELLO=1"},
        "labels": {"app": "hello"}, "runscript": "#!/bin/sh\necho hello", "helpfile": "hello help"}
    assert inspect("--app", "hello", "--helpfile", str(root)) == "hello help\n"
    assert run_satchel(["run-help", "--app", "hello", str(root)]).stdout == "hello help\n"


def test_sandbox_symlinks_stay_inside(tmp_path):
    """A sandbox whose runscript links to a host file must not show the host file."""
    root = tmp_path / "sb"
    (root / ".singularity.d").mkdir(parents=True)
    os.symlink("/../../../../etc/hostname", root / ".singularity.d" / "runscript")
    assert inspect("--runscript", str(root)) == ""


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x00" * 64])
def test_bad_images(tmp_path, content):
    bad = tmp_path / "bad.sif"
    bad.write_bytes(content)
    r = run_satchel(["inspect", str(bad)])
    assert r.returncode == 255
    assert r.stderr.startswith("FATAL:   ") and r.stderr.count("\n") == 1
    assert "is not a valid image: not a SIF, SquashFS or sandbox directory" in r.stderr


def test_truncated_and_missing_images(tmp_path, busybox_sif):
    cut = tmp_path / "cut.sif"
    cut.write_bytes(open(busybox_sif, "rb").read()[:5000])
    r = run_satchel(["inspect", str(cut)])
    assert r.returncode == 255 and r.stderr.startswith("FATAL:   ") and "Traceback" not in r.stderr
    r = run_satchel(["inspect", str(tmp_path / "missing.sif")])
    assert r.returncode == 255
    assert r.stderr == f"FATAL:   image {tmp_path / 'missing.sif'} not found: no such file or directory\n"
    r = run_satchel(["run-help", str(tmp_path / "missing.sif")])
    assert r.returncode == 255 and "not found" in r.stderr


def test_unreadable_image_as_non_root(test_user, image_dir):
    private = os.path.join(image_dir, "private.sif")
    with open(private, "wb") as fh:
        fh.write(b"x")
    os.chmod(private, 0o600)
    r = run_satchel(["inspect", private], user=test_user)
    assert r.returncode == 255 and "Permission denied" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_partition_without_metadata(tmp_path, stripped_sif):
    broken = tmp_path / "broken.sif"
    data = bytearray(open(stripped_sif, "rb").read())
    with sif.SIFFile.open(stripped_sif) as image:
        offset = image.primary_partition().offset
    data[offset:offset + 4] = b"XXXX"
    broken.write_bytes(bytes(data))
    r = run_satchel(["inspect", "--runscript", str(broken)])
    assert r.returncode == 255 and "no SquashFS superblock" in r.stderr and "Traceback" not in r.stderr
