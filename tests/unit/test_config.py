"""satchel.conf parsing and lookup (pure, plus the shipped default file)."""

import pytest

from satchel.errors import ConfigError
from satchel.runtime.config import Config, config_path, default_config_path, load_config


def test_parse_repeated_keys_and_comments():
    cfg = Config.parse("# comment\n\nmount home = yes\nbind path = /a\nBind  Path=/b\n")
    assert cfg.get("mount home") == "yes"
    assert cfg.get_list("bind path") == ["/a", "/b"]
    assert cfg.get("bind path") == "/b"
    assert cfg.get("missing", "dflt") == "dflt"
    assert cfg.get_list("missing") == []


def test_bool_and_int_values():
    cfg = Config.parse("a = yes\nb = NO\nc = true\nd = maybe\nn = 12\nbad = x\nempty =\n")
    assert cfg.get_bool("a", False) is True
    assert cfg.get_bool("b", True) is False
    assert cfg.get_bool("c", False) is True
    assert cfg.get_bool("empty", True) is True
    assert cfg.get_bool("absent", False) is False
    with pytest.raises(ConfigError, match="expected yes or no"):
        cfg.get_bool("d", True)
    assert cfg.get_int("n", 0) == 12
    with pytest.raises(ConfigError, match="expected a number"):
        cfg.get_int("bad", 0)


def test_parse_error_names_file_and_line():
    with pytest.raises(ConfigError, match=r"x.conf:2: expected 'key = value'"):
        Config.parse("a = b\nnot a setting\n", "x.conf")


def test_config_path_precedence(tmp_path):
    chosen = tmp_path / "mine.conf"
    assert config_path({"SATCHEL_CONFIG": str(chosen)}) == str(chosen)
    assert config_path({}) in ("/etc/satchel/satchel.conf", default_config_path())


def test_load_config_from_file_and_errors(tmp_path):
    path = tmp_path / "s.conf"
    path.write_text("mount tmp = no\n")
    assert load_config(str(path)).get_bool("mount tmp", True) is False
    with pytest.raises(ConfigError, match="reading configuration"):
        load_config(str(tmp_path / "missing.conf"))
    path.write_bytes(b"\xff\xfe = x\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path))


def test_shipped_default_is_valid():
    cfg = load_config(default_config_path())
    assert cfg.get_bool("mount home", False) is True
    assert cfg.get("mount dev") == "minimal"
    assert cfg.get_list("bind path") == ["/etc/localtime", "/etc/hosts"]
    assert cfg.get_int("sessiondir max size", 0) == 64
