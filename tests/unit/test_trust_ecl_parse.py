"""ecl.toml: the cheap activation scan and Apptainer's validation rules."""

import pytest

from satchel.errors import ConfigError
from satchel.trust import ecl

FP = "5994BE54C31CF1B5E1994F987C52CF6D055F072B"


@pytest.mark.parametrize("text,on", [
    ("activated = true\n", True),
    ("  activated=true  # on\n", True),
    ("activated = false\n", False),
    ("#activated = true\n", False),
    ("[[execgroup]]\nactivated = true\n", False),   # a key of the table, not the top level
    ("legacyinsecure = true\n", False),
    ("", False),
])
def test_activation_scan(text, on):
    assert ecl._activated(text) is on


def _toml(mode="whitelist", dirpath="/", keyfp=f'["{FP}"]', extra=""):
    return (f"activated = true\n{extra}[[execgroup]]\n  tagname = \"g\"\n  mode = \"{mode}\"\n"
            f"  dirpath = \"{dirpath}\"\n  keyfp = {keyfp}\n")


def test_load_apptainer_example():
    parsed = ecl.load("ecl.toml", _toml(extra="legacyinsecure = true\n"))
    assert parsed.activated and parsed.legacy
    group = parsed.groups[0]
    assert (group.tagname, group.mode, group.dirpath, group.keyfps) == ("g", "whitelist", "/",
                                                                       [FP])


@pytest.mark.parametrize("text,why", [
    (_toml(mode="greylist"), "mode field"),
    (_toml(keyfp='["ABCD"]'), "40 chars hex"),
    (_toml(dirpath="/tmp/../tmp"), "symlinks resolved"),
    (_toml() + _toml().split("\n", 1)[1], "only appear in one execgroup"),
    ("activated = \n", "ECL configuration"),
])
def test_invalid_configurations(text, why):
    with pytest.raises(ConfigError, match=why):
        ecl.load("ecl.toml", text)
