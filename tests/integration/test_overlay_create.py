"""`satchel overlay create` as the real non-root user: Apptainer's ext3 layout (upper/ and
work/ at the top, owned by the caller or by root with --fakeroot), standalone or as an
Ext3/Overlay partition added to a SIF, and one FATAL line for what Apptainer refuses."""

import os
import shutil
import subprocess

from support.fixtures_users import run_satchel

from satchel.image import sif


def _debugfs_ls(image: str, path: str, offset: int = 0) -> dict:
    """{name: (mode octal text, uid, gid)} of a directory inside an ext3 image."""
    name = image + (f"?offset={offset}" if offset else "")
    out = subprocess.run(["/sbin/debugfs", "-R", f"ls -l {path}", name], capture_output=True,
                         text=True, check=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 9:
            entries[fields[-1]] = (fields[1], int(fields[3]), int(fields[4]))
    return entries


def _fsck_clean(image: str, offset: int = 0) -> None:
    name = image + (f"?offset={offset}" if offset else "")
    r = subprocess.run(["/sbin/e2fsck", "-fn", name], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _fatal_only(r) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL:   "), r.stderr


def test_standalone_image_has_apptainers_layout(test_user, user_tmp):
    image = os.path.join(user_tmp, "overlay.img")
    run_satchel(["overlay", "create", "--size", "80", "--create-dir", "/opt/tools", image],
                user=test_user, check=True)
    st = os.stat(image)
    assert st.st_size == 80 << 20 and st.st_mode & 0o777 == 0o600
    assert st.st_uid == test_user.uid
    assert st.st_blocks * 512 >= 80 << 20  # not sparse: the blocks are the image's
    top = _debugfs_ls(image, "/")
    assert top["upper"] == ("40755", test_user.uid, test_user.gid)
    assert top["work"] == ("40755", test_user.uid, test_user.gid)
    assert _debugfs_ls(image, "/upper/opt")["tools"] == ("40755", test_user.uid, test_user.gid)
    features = subprocess.run(["/sbin/dumpe2fs", "-h", image], capture_output=True,
                              text=True).stdout
    assert "has_journal" in features and "extent" not in features  # ext3, not ext4
    _fsck_clean(image)


def test_fakeroot_layout_is_root_owned_and_sparse_is_sparse(test_user, user_tmp):
    image = os.path.join(user_tmp, "fakeroot.img")
    run_satchel(["overlay", "create", "--fakeroot", "--sparse", image], user=test_user,
                check=True)
    top = _debugfs_ls(image, "/")
    assert top["upper"][1:] == (0, 0) and top["work"][1:] == (0, 0)
    st = os.stat(image)
    assert st.st_size == 64 << 20 and st.st_blocks * 512 < 16 << 20


def test_overlay_partition_added_to_a_sif(test_user, user_tmp, busybox_sif):
    image = os.path.join(user_tmp, "image.sif")
    shutil.copy(busybox_sif, image)
    os.chown(image, test_user.uid, test_user.gid)
    run_satchel(["overlay", "create", "--size", "64", image], user=test_user, check=True)
    with sif.SIFFile.open(image) as f:
        parts = [d for d in f.find(sif.DATA_PARTITION) if d.part_type == sif.PART_OVERLAY]
        arch = f.header.arch
    assert len(parts) == 1
    part = parts[0]
    assert part.fs_type == sif.FS_EXT3 and part.arch == arch and part.size == 64 << 20
    assert _debugfs_ls(image, "/", part.offset)["upper"][1] == test_user.uid
    _fsck_clean(image, part.offset)
    again = run_satchel(["overlay", "create", image], user=test_user)
    _fatal_only(again)
    assert f"already exists in {image} (ID: {part.id})" in again.stderr


def test_bad_requests_are_one_fatal_line(test_user, user_tmp):
    image = os.path.join(user_tmp, "o.img")
    _fatal_only(r := run_satchel(["overlay", "create", "--size", "32", image], user=test_user))
    assert "64 MiB" in r.stderr
    _fatal_only(r := run_satchel(["overlay", "create", "--create-dir", "../escape", image],
                                 user=test_user))
    assert "outside of overlay layout" in r.stderr
    assert not os.path.exists(image)
    run_satchel(["overlay", "create", image], user=test_user, check=True)
    _fatal_only(r := run_satchel(["overlay", "create", image], user=test_user))
    assert "already exists" in r.stderr
    assert [n for n in os.listdir(user_tmp) if n != "o.img"] == []  # no temporary file left
