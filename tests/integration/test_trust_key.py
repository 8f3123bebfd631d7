"""satchel key over Apptainer's keyring layout, as the real non-root user and as root."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.corpus import IMAGES
from tests.support.fixtures_trust import CORPUS_FPR, PRIVATE_ASC, corpus_key
from tests.support.fixtures_users import run_satchel


def _fatal(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith("FATAL:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _fingerprints(text: str) -> list[str]:
    return [l.split("F: ")[1].strip() for l in text.splitlines() if "F: " in l]


@pytest.fixture
def as_user(test_user, user_tmp):
    """(run, directory): satchel as satchel-test with HOME's default keyring layout."""
    home = os.path.join(user_tmp, "home")
    os.mkdir(home)
    os.chown(home, test_user.uid, test_user.gid)

    def run(args, **kw):
        return run_satchel(args, user=test_user, env={"HOME": home}, cwd=user_tmp, **kw)
    return run, user_tmp, home


def test_newpair_list_sign_verify_as_user(as_user, test_user):
    run, tmp, home = as_user
    proc = run(["key", "newpair", "--name", "Test User", "--email", "t@example.org"])
    assert proc.returncode == 0, proc.stderr
    keys = os.path.join(home, ".apptainer", "keys")
    for name in ("pgp-public", "pgp-secret"):
        st = os.stat(os.path.join(keys, name))
        assert st.st_uid == test_user.uid and st.st_mode & 0o077 == 0
    public = _fingerprints(run(["key", "list"]).stdout)
    secret = _fingerprints(run(["key", "list", "--secret"]).stdout)
    assert len(public) == 1 and public == secret
    image = os.path.join(tmp, "img.sif")
    shutil.copyfile(os.path.join(IMAGES, "one-group.sif"), image)
    os.chown(image, test_user.uid, test_user.gid)
    assert run(["sign", image]).returncode == 0
    proc = run(["verify", image])
    assert proc.returncode == 0, proc.stderr
    assert f"Fingerprint: {public[0]}" in proc.stdout


@pytest.mark.parametrize("armor", [True, False])
def test_import_export_round_trip(armor, as_user, test_user):
    run, tmp, home = as_user
    src = PRIVATE_ASC
    if not armor:
        src = os.path.join(tmp, "private.gpg")
        with open(src, "wb") as fh:
            fh.write(corpus_key().binary())
        os.chown(src, test_user.uid, test_user.gid)
    assert run(["key", "import", src]).returncode == 0
    assert _fingerprints(run(["key", "list", "-s"]).stdout) == [CORPUS_FPR]
    assert _fingerprints(run(["key", "list"]).stdout) == [CORPUS_FPR]
    flags = ["-a"] if armor else []
    pub, sec = os.path.join(tmp, "pub.out"), os.path.join(tmp, "sec.out")
    assert run(["key", "export"] + flags + [pub]).returncode == 0
    assert run(["key", "export", "--secret"] + flags + [sec]).returncode == 0
    data = open(pub, "rb").read()
    assert data.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----") == armor
    assert (b"PRIVATE KEY BLOCK" in open(sec, "rb").read()) == armor
    assert os.stat(sec).st_mode & 0o077 == 0
    assert "already exists" in _fatal(run(["key", "export", pub]))
    # remove, then import the exports back
    assert run(["key", "remove", CORPUS_FPR]).returncode == 0
    assert run(["key", "remove", "--secret", CORPUS_FPR]).returncode == 0
    assert _fingerprints(run(["key", "list"]).stdout) == []
    assert "no key with fingerprint" in _fatal(run(["key", "remove", CORPUS_FPR]))
    assert run(["key", "import", pub]).returncode == 0
    assert _fingerprints(run(["key", "list"]).stdout) == [CORPUS_FPR]
    assert _fingerprints(run(["key", "list", "-s"]).stdout) == []
    assert run(["key", "import", "--secret", sec]).returncode == 0
    assert _fingerprints(run(["key", "list", "-s"]).stdout) == [CORPUS_FPR]


def test_keysdir_env_and_root(tmp_path):
    keys = str(tmp_path / "elsewhere")
    env = {"APPTAINER_KEYSDIR": keys}
    assert run_satchel(["key", "import", PRIVATE_ASC], env=env).returncode == 0
    assert sorted(os.listdir(keys)) == ["pgp-public", "pgp-secret"]
    # keys written by satchel are readable by GnuPG (the format apptainer shares)
    import subprocess
    out = subprocess.run(["gpg", "--homedir", str(tmp_path), "--batch", "--no-default-keyring",
                          "--with-colons", "--show-keys", os.path.join(keys, "pgp-public")],
                         capture_output=True, text=True)
    assert CORPUS_FPR in out.stdout, out.stderr


def test_passphrase_newpair_needs_it_to_sign(tmp_path):
    env = {"APPTAINER_KEYSDIR": str(tmp_path / "keys")}
    proc = run_satchel(["key", "newpair", "-N", "Pass", "-E", "p@example.org",
                        "--password", "s3cret"], env=env)
    assert proc.returncode == 0, proc.stderr
    image = str(tmp_path / "img.sif")
    shutil.copyfile(os.path.join(IMAGES, "one-group.sif"), image)
    before = open(image, "rb").read()
    assert "wrong passphrase" in _fatal(run_satchel(["sign", image], env=env, input=b"nope\n"))
    assert open(image, "rb").read() == before
    assert run_satchel(["sign", image], env=env, input=b"s3cret\n").returncode == 0
    assert run_satchel(["verify", image], env=env).returncode == 0


@pytest.mark.parametrize("args", [["search", "alice"], ["push", CORPUS_FPR],
                                  ["pull", CORPUS_FPR], ["newpair", "-N", "x", "--push"]])
def test_no_keyserver(args, tmp_path):
    line = _fatal(run_satchel(["key"] + args, env={"APPTAINER_KEYSDIR": str(tmp_path)}))
    assert "no keyserver" in line


def test_import_of_something_that_is_not_a_key(tmp_path):
    bogus = tmp_path / "bogus.asc"
    bogus.write_bytes(b"\x99\x01garbage that is not OpenPGP\n")
    line = _fatal(run_satchel(["key", "import", str(bogus)],
                              env={"APPTAINER_KEYSDIR": str(tmp_path / "k")}))
    assert "is not an OpenPGP key" in line
    assert not os.path.exists(tmp_path / "k" / "pgp-public")
