"""Pure edits behind `config fakeroot` (subid files) and `config global` (satchel.conf)."""

import pytest

from satchel.errors import ConfigError
from satchel.runtime import config_edit, subid

TOP = 4294967296 - 131072


def test_add_skips_ranges_that_overlap():
    text = f"alice:100000:65536\n1001:{TOP}:65536\nbob:{TOP - 65536 + 10}:100\n"
    out = subid.edit(text, "add", "carol", 1002, "f")
    assert out.splitlines()[-1] == f"1002:{TOP - 2 * 65536}:65536"
    assert out.splitlines()[:3] == text.splitlines()


def test_entry_by_name_or_uid_and_the_largest_range():
    text = "1000:100000:65536\n"
    assert subid.edit(text, "add", "alice", 1000, "f") is None  # numeric uid is alice's
    assert subid.edit(text, "disable", "alice", 1000, "f") == "!1000:100000:65536\n"
    with pytest.raises(ConfigError, match="fewer than"):
        subid.edit("alice:100000:10\n", "remove", "alice", 1000, "f")
    with pytest.raises(ConfigError, match="no mapping entry"):
        subid.edit("# only a comment\n", "enable", "alice", 1000, "f")


def test_global_edit_keeps_comments_and_order():
    default = "# c\na = 1\nmount home = yes\n"
    text = "# mine\nmount home = yes\n# keep\nbind path = /x\n"
    out = config_edit.edit(text, "set", "mount home", "no", default)
    assert out == "# mine\nmount home = no\n# keep\nbind path = /x\n"
    out = config_edit.edit(out, "set", "bind path", "/y, /x", default)
    assert out.endswith("bind path = /x\nbind path = /y\n")
    assert config_edit.edit(out, "reset", "mount home", "", default).startswith(
        "# mine\nmount home = yes\n")
    assert "bind path" not in config_edit.edit(text, "reset", "bind path", "", default)
    with pytest.raises(ConfigError, match="one value"):
        config_edit.edit(text, "set", "mount home", "yes,no", default)
