"""Attacks on the sharing of image mounts (runtime/share.py, issue 14) by another local user.

Promise (docs/SECURITY.md, rootless): containers share an image mount only with containers of
the same user; the directory that records them is used only if it is the caller's own and
private, so another user can neither plant records in it nor read the caller's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from support.fixtures_users import ensure_user
from support.fixtures_share import Container, finish_all, servers

TIMEOUT = 120


def test_a_sharing_directory_planted_by_another_user_is_not_used(test_user, share_sif):
    """Attack: another user creates the caller's sharing directory first ($XDG_RUNTIME_DIR/
    satchel, world-writable) and plants a record of their own running container of the same
    image. Promise: the caller's launch ignores that directory (not theirs, not private): it
    joins no other user's mount, writes nothing there, and runs on a mount of its own."""
    attacker = ensure_user("satchel-test2")
    xdg = tempfile.mkdtemp(prefix="satchel-xdg-", dir="/tmp")
    os.chmod(xdg, 0o755)
    planted = os.path.join(xdg, "satchel")
    os.mkdir(planted)
    os.chown(planted, attacker.uid, attacker.gid)
    os.chmod(planted, 0o777)
    theirs = Container(attacker, share_sif)
    try:
        their_dev = theirs.ready(time.monotonic() + TIMEOUT)
        st = os.stat(share_sif)
        key = f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"
        with open(f"/proc/{theirs.proc.pid}/stat") as fh:
            start = fh.read().rsplit(")", 1)[1].split()[19]
        from satchel.image.formats import open_image
        offset = open_image(share_sif).fs_offset
        for name, text in ((key + ".members", f"{theirs.proc.pid} {start} {their_dev} "
                                              f"{offset}\n"), (key + ".lock", "")):
            with open(os.path.join(planted, name), "w") as fh:
                fh.write(text)
            os.chown(os.path.join(planted, name), attacker.uid, attacker.gid)
            os.chmod(os.path.join(planted, name), 0o666)
        before = sorted(os.listdir(planted))
        mine = Container(test_user, share_sif, env={"XDG_RUNTIME_DIR": xdg})
        try:
            assert mine.ready(time.monotonic() + TIMEOUT) != their_dev
            assert sorted(os.listdir(planted)) == before
            for name in before:
                assert os.stat(os.path.join(planted, name)).st_uid == attacker.uid
            assert len(servers(share_sif)) == 2
        finally:
            finish_all([mine])
    finally:
        finish_all([theirs])
        shutil.rmtree(xdg, ignore_errors=True)
