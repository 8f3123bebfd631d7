"""`satchel cache list|clean` on a cache filled by real pulls, as root and as satchel-test."""

import os

import pytest

from support.fixtures_users import run_satchel

pytestmark = pytest.mark.slow


def fill(test_images, directory, user=None):
    env = {"APPTAINER_CACHEDIR": os.path.join(directory, "cache")}
    for tag in ("busybox:latest", "multi:latest"):
        result = run_satchel(["pull", "--nohttps", os.path.join(directory, tag.split(":")[0] + ".sif"),
                              test_images.uri(tag)], user=user, env=env, timeout=180)
        assert result.returncode == 0, result.stderr
    return env


def test_list_and_clean(test_images, tmp_path):
    env = fill(test_images, str(tmp_path))
    listing = run_satchel(["cache", "list"], env=env)
    assert listing.returncode == 0, listing.stderr
    # busybox: manifest, config, 3 layers; multi: index, manifest, config, 1 layer
    assert "There are 2 container file(s)" in listing.stdout
    assert "and 9 oci blob file(s)" in listing.stdout
    verbose = run_satchel(["cache", "list", "-v", "--type", "oci"], env=env)
    rows = [l for l in verbose.stdout.splitlines() if l.endswith("  oci")]
    assert len(rows) == 2 and all(".sif" in r for r in rows)
    # clean asks first; anything but yes keeps everything
    kept = run_satchel(["cache", "clean"], env=env, input=b"n\n")
    assert kept.returncode == 0 and "Do you want to continue? [y/N]" in kept.stdout
    assert len(os.listdir(tmp_path / "cache" / "oci-tmp")) == 2
    dry = run_satchel(["cache", "clean", "--dry-run", "-T", "blob"], env=env)
    assert "Would remove 9 cache entries" in dry.stderr
    assert len(os.listdir(tmp_path / "cache" / "blob" / "sha256")) == 9
    old = run_satchel(["cache", "clean", "--force", "--days", "30"], env=env)
    assert "Removed 0 cache entries" in old.stderr
    only_sifs = run_satchel(["cache", "clean", "--force", "--type=oci"], env=env)
    assert "Removed 2 cache entries" in only_sifs.stderr
    assert os.listdir(tmp_path / "cache" / "oci-tmp") == []
    assert len(os.listdir(tmp_path / "cache" / "blob" / "sha256")) == 9
    yes = run_satchel(["cache", "clean"], env=env, input=b"y\n")
    assert "Removed 9 cache entries" in yes.stderr
    after = run_satchel(["cache", "list"], env=env)
    assert "There are 0 container file(s) using 0 B and 0 oci blob file(s)" in after.stdout
    # the pulled images are untouched by cleaning the cache
    assert (tmp_path / "busybox.sif").stat().st_size > 100000


def test_cache_as_user(test_images, test_user, user_tmp):
    env = fill(test_images, user_tmp, user=test_user)
    listing = run_satchel(["cache", "list"], user=test_user, env=env)
    assert "There are 2 container file(s)" in listing.stdout, listing.stderr
    clean = run_satchel(["cache", "clean", "-f"], user=test_user, env=env)
    assert clean.returncode == 0 and "Removed 11 cache entries" in clean.stderr
    # without APPTAINER_CACHEDIR the cache is under the user's home ($HOME/.satchel/cache;
    # a home of the test's own, so nothing is left in satchel-test's real one)
    home = os.path.join(user_tmp, "home")
    os.mkdir(home)
    os.chown(home, test_user.uid, test_user.gid)
    pulled = run_satchel(["pull", "--nohttps", os.path.join(user_tmp, "default.sif"),
                          test_images.uri("busybox:latest")], user=test_user,
                         env={"HOME": home}, timeout=180)
    assert pulled.returncode == 0, pulled.stderr
    assert len(os.listdir(os.path.join(home, ".satchel", "cache", "oci-tmp"))) == 1
    default = run_satchel(["cache", "list"], user=test_user, env={"HOME": home})
    assert default.returncode == 0, default.stderr
    assert "There are 1 container file(s)" in default.stdout


@pytest.mark.parametrize("args, needle", [
    (["cache", "list", "--type", "bogus"], "invalid cache type"),
    (["cache", "frobnicate"], "unknown cache action"),
    (["cache", "clean", "--days", "soon", "-f"], "invalid --days"),
    (["cache"], "requires 1 arg"),
])
def test_cache_usage_errors(args, needle, tmp_path):
    result = run_satchel(args, env={"APPTAINER_CACHEDIR": str(tmp_path / "c")})
    assert result.returncode == 255
    fatal = [l for l in result.stderr.splitlines() if l.startswith("FATAL:")]
    assert len(fatal) == 1 and needle in fatal[0], result.stderr


def test_unusable_cache_directory(test_images, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_satchel(["pull", "--nohttps", str(tmp_path / "x.sif"),
                          test_images.uri("busybox:latest")],
                         env={"APPTAINER_CACHEDIR": str(blocker / "cache")})
    assert result.returncode == 255
    assert "creating cache directory" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.sif").exists()
