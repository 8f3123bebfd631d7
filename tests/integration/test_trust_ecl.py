"""The admin's execution control list (ecl.toml beside satchel.conf): when activated, exec,
run, shell, test and instance start refuse a SIF whose signatures do not satisfy the execgroup
of its directory, with one FATAL line naming the rule; when absent or off, nothing changes."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.support.fixtures_trust import CORPUS_FPR, corpus_key, write_keyring
from tests.support.fixtures_users import run_satchel

OTHER_FPR = "7064B1D6EFF01B1262FED3F03581D99FE87EAFD1"


@pytest.fixture(scope="module")
def ecl_site(busybox_sif):
    """A config dir (satchel.conf + global keyring with the corpus key) and an image dir with a
    signed and an unsigned busybox, all readable by the test user."""
    top = tempfile.mkdtemp(prefix="satchel-ecl-", dir="/tmp")
    os.chmod(top, 0o755)
    conf_dir, images = os.path.join(top, "etc"), os.path.join(top, "images")
    os.makedirs(conf_dir)
    os.makedirs(images)
    from satchel.runtime.config import default_config_path
    shutil.copyfile(default_config_path(), os.path.join(conf_dir, "satchel.conf"))
    key = corpus_key()
    with open(os.path.join(conf_dir, "global-pgp-public"), "wb") as fh:
        fh.write(key.public_bytes())
    keys = os.path.join(top, "keys")
    write_keyring(keys, key.public_bytes(), key.binary())
    signed, unsigned = os.path.join(images, "signed.sif"), os.path.join(images, "unsigned.sif")
    shutil.copyfile(busybox_sif, signed)
    shutil.copyfile(busybox_sif, unsigned)
    run_satchel(["sign", signed], env={"APPTAINER_KEYSDIR": keys}, check=True)
    for path in (conf_dir, images, signed, unsigned, os.path.join(conf_dir, "satchel.conf"),
                 os.path.join(conf_dir, "global-pgp-public")):
        os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
    yield {"conf": os.path.join(conf_dir, "satchel.conf"), "dir": images, "signed": signed,
           "unsigned": unsigned, "ecl": os.path.join(conf_dir, "ecl.toml")}
    shutil.rmtree(top, ignore_errors=True)


def _write_ecl(site, mode: str, keyfps, activated=True, dirpath=None, tag="site") -> None:
    dirpath = site["dir"] if dirpath is None else dirpath
    fps = ", ".join(f'"{fp}"' for fp in keyfps)
    with open(site["ecl"], "w") as fh:
        fh.write(f"# test ECL\nactivated = {'true' if activated else 'false'}\n"
                 f"legacyinsecure = false\n\n[[execgroup]]\n  tagname = \"{tag}\"\n"
                 f"  mode = \"{mode}\"\n  dirpath = \"{dirpath}\"\n  keyfp = [{fps}]\n")
    os.chmod(site["ecl"], 0o644)


@pytest.fixture
def site(ecl_site):
    yield ecl_site
    if os.path.exists(ecl_site["ecl"]):
        os.unlink(ecl_site["ecl"])


def _exec(site, image, user=None, action="exec"):
    args = [action, image] + (["true"] if action == "exec" else [])
    return run_satchel(args, user=user, env={"SATCHEL_CONFIG": site["conf"]}, timeout=60)


def _refused(proc, rule: str) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith("FATAL:")]
    assert proc.returncode == 255 and len(lines) == 1, proc.stderr
    assert "prohibited by ECL" in lines[0] and rule in lines[0], lines[0]
    return lines[0]


def test_no_ecl_and_inactive_ecl_change_nothing(site, test_user):
    assert _exec(site, site["unsigned"], test_user).returncode == 0
    _write_ecl(site, "whitelist", [OTHER_FPR], activated=False)
    assert _exec(site, site["unsigned"], test_user).returncode == 0


@pytest.mark.parametrize("mode,fps,allowed", [
    ("whitelist", [CORPUS_FPR], True),
    ("whitelist", [OTHER_FPR, CORPUS_FPR], True),
    ("whitelist", [OTHER_FPR], False),
    ("whitestrict", [CORPUS_FPR], True),
    ("whitestrict", [CORPUS_FPR, OTHER_FPR], False),
    ("blacklist", [OTHER_FPR], True),
    ("blacklist", [CORPUS_FPR], False),
])
def test_modes_on_the_signed_image(site, test_user, mode, fps, allowed):
    _write_ecl(site, mode, fps, tag=f"grp-{mode}")
    proc = _exec(site, site["signed"], test_user)
    if allowed:
        assert proc.returncode == 0, proc.stderr
    else:
        _refused(proc, f"execgroup 'grp-{mode}' ({mode})")


@pytest.mark.parametrize("mode", ["whitelist", "whitestrict", "blacklist"])
def test_unsigned_image_is_refused(site, mode):
    _write_ecl(site, mode, [CORPUS_FPR] if mode != "blacklist" else [OTHER_FPR])
    line = _refused(_exec(site, site["unsigned"]), f"({mode})")
    assert "signature not found" in line


@pytest.mark.parametrize("action", ["run", "test", "shell"])
def test_every_action_is_guarded(site, test_user, action):
    _write_ecl(site, "whitelist", [OTHER_FPR])
    _refused(_exec(site, site["signed"], test_user, action), "(whitelist)")


def test_instance_start_is_guarded(site, test_user):
    _write_ecl(site, "whitelist", [OTHER_FPR])
    proc = run_satchel(["instance", "start", site["signed"], "ecltest"], user=test_user,
                       env={"SATCHEL_CONFIG": site["conf"]}, timeout=60)
    _refused(proc, "(whitelist)")


def test_altered_signed_image_is_refused(site, tmp_path):
    from satchel.image import sif
    altered = os.path.join(site["dir"], "altered.sif")
    shutil.copyfile(site["signed"], altered)
    try:
        with sif.SIFFile.open(altered) as f:
            d = f.primary_partition()
            table = f.header.descriptors_offset
        with open(altered, "r+b") as fh:  # one byte of the partition's descriptor name
            fh.seek(table + d.slot * 585 + 4 + 1 + 4 + 4 + 4 + 7 * 8 + 100)
            fh.write(b"x")
        _write_ecl(site, "whitelist", [CORPUS_FPR])
        line = _refused(_exec(site, altered), "(whitelist)")
        assert "integrity compromised" in line
    finally:
        os.unlink(altered)


def test_signer_not_in_global_keyring_counts_for_nothing(site):
    ring = os.path.join(os.path.dirname(site["conf"]), "global-pgp-public")
    saved = ring + ".saved"
    os.rename(ring, saved)
    try:
        _write_ecl(site, "whitelist", [CORPUS_FPR])
        _refused(_exec(site, site["signed"]), "not signed by required entities")
    finally:
        os.rename(saved, ring)


def test_directory_outside_every_execgroup(site):
    _write_ecl(site, "whitelist", [CORPUS_FPR], dirpath="/nonexistent-dir")
    line = [l for l in _exec(site, site["signed"]).stderr.splitlines() if l.startswith("FATAL")]
    assert len(line) == 1 and "not part of any execgroup" in line[0]


def test_invalid_ecl_is_one_fatal_line(site):
    _write_ecl(site, "greylist", [CORPUS_FPR])
    proc = _exec(site, site["signed"])
    lines = [l for l in proc.stderr.splitlines() if l.startswith("FATAL:")]
    assert proc.returncode == 255 and len(lines) == 1 and "mode field" in lines[0]
