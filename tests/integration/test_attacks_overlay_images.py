"""Root running a user's overlay image: nothing in the image can point root outside it."""

import os
import subprocess

from support.fixtures_users import run_satchel


def test_root_refuses_an_upper_dir_that_is_a_symlink(test_user, user_tmp, busybox_sif):
    """Attack: the user makes an ext3 overlay whose upper/ is a symbolic link to /root and
    asks root to run with it. Promise (docs/SECURITY.md, overlays): upper/ and work/ are
    opened inside the image's own mount without following links: one FATAL line, and
    nothing is written below the host's /root."""
    tree = os.path.join(user_tmp, "tree")
    os.makedirs(os.path.join(tree, "work"))
    os.symlink("/root", os.path.join(tree, "upper"))
    image = os.path.join(user_tmp, "evil.img")
    subprocess.run(["truncate", "-s", "64M", image], check=True)
    subprocess.run(["/sbin/mkfs.ext3", "-q", "-F", "-d", tree, image], check=True)
    subprocess.run(["chown", "-R", f"{test_user.uid}:{test_user.gid}", tree, image], check=True)
    before = sorted(os.listdir("/root"))
    r = run_satchel(["exec", "--overlay", image, busybox_sif, "touch", "/planted"])
    assert r.returncode != 0 and r.stderr.startswith("FATAL:   "), r.stderr
    assert "symbolic link" in r.stderr
    assert sorted(os.listdir("/root")) == before and not os.path.exists("/root/planted")
