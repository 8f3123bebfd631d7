"""runtime/share.py's private directory and records (the rest runs real containers:
tests/integration/test_share_mounts.py, test_attacks_share.py)."""

from __future__ import annotations

import os

from satchel.runtime import share


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_runtime_dir_is_made_private_under_xdg_runtime_dir(tmp_path):
    fd = share.runtime_dir(os.getuid(), {"XDG_RUNTIME_DIR": str(tmp_path)})
    assert _path_of(fd) == str(tmp_path / "satchel")
    assert (tmp_path / "satchel").stat().st_mode & 0o777 == 0o700


def test_a_wide_or_symlinked_directory_is_not_used(tmp_path):
    (tmp_path / "wide").mkdir()
    os.mkdir(tmp_path / "wide" / "satchel", 0o700)
    os.chmod(tmp_path / "wide" / "satchel", 0o755)  # readable by others: records would leak
    (tmp_path / "link").mkdir()
    os.symlink(tmp_path / "wide" / "satchel", tmp_path / "link" / "satchel")
    for xdg in ("wide", "link"):
        fd = share.runtime_dir(os.getuid(), {"XDG_RUNTIME_DIR": str(tmp_path / xdg)})
        assert fd is None or _path_of(fd) == f"/tmp/satchel-{os.getuid()}"


def test_records_are_read_back_and_junk_is_skipped(tmp_path):
    fd = share.runtime_dir(os.getuid(), {"XDG_RUNTIME_DIR": str(tmp_path)})
    try:
        share._write_members(fd, "key", [("12", "345", "67", "8192")])
        with open(tmp_path / "satchel" / "key.members", "a") as fh:
            fh.write("junk\n1 2 x 4\n")
        assert share._read_members(fd, "key") == [("12", "345", "67", "8192")]
        assert share._read_members(fd, "other") == []
    finally:
        os.close(fd)


def test_start_time_names_a_live_process_only():
    assert share.start_time(os.getpid())
    assert share.start_time(2 ** 22 + 12345) is None
