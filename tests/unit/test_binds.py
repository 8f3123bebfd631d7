"""-B / --mount / APPTAINER_BIND parsing (pure)."""

import pytest

from satchel.errors import UsageError
from satchel.runtime.binds import BindSpec, collect, parse_bind, parse_mount, split_csv


@pytest.mark.parametrize("value, expected", [
    ("/data", [BindSpec("/data", "/data")]),
    ("/data:/mnt", [BindSpec("/data", "/mnt")]),
    ("/data:/mnt:ro", [BindSpec("/data", "/mnt", True)]),
    ("/data:/mnt:rw", [BindSpec("/data", "/mnt", False)]),
    ("/data:ro", [BindSpec("/data", "/data", True)]),
    ("/a,/b:/c:ro, /d:/e", [BindSpec("/a", "/a"), BindSpec("/b", "/c", True),
                            BindSpec("/d", "/e")]),
    ("/a:", [BindSpec("/a", "/a")]),
    (",,", []),
    ("../rel/src:/x", [BindSpec("../rel/src", "/x")]),
])
def test_parse_bind(value, expected):
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value, message", [
    ("/a:/b:/c", "expected SRC[:DST[:ro|rw]]"),
    ("/a:/b:rx", "invalid bind specification"),
    (":/b", "empty source"),
])
def test_parse_bind_errors(value, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("|", r"\|")):
        parse_bind(value)


def test_split_csv_quoting():
    assert split_csv('a,"b,c",d') == ["a", "b,c", "d"]
    assert split_csv('"say ""hi""",x') == ['say "hi"', "x"]
    assert split_csv("") == [""]
    with pytest.raises(UsageError, match="unterminated quote"):
        split_csv('"open')


@pytest.mark.parametrize("value, expected", [
    ("type=bind,source=/a,destination=/b", BindSpec("/a", "/b")),
    ("type=bind,src=/a,dst=/b,ro", BindSpec("/a", "/b", True)),
    ("type=bind,source=/a,target=/b,readonly", BindSpec("/a", "/b", True)),
    ("type=bind,source=/a,target=/b,readonly=false", BindSpec("/a", "/b", False)),
    ('type=bind,"source=/a,b",destination=/c,bind-propagation=rprivate',
     BindSpec("/a,b", "/c")),
    ("source=/a,destination=/b", BindSpec("/a", "/b")),
])
def test_parse_mount(value, expected):
    assert parse_mount(value) == expected


@pytest.mark.parametrize("value, message", [
    ("type=volume,source=/a,destination=/b", "only type=bind"),
    ("type=bind,destination=/b", "missing source"),
    ("type=bind,source=/a", "missing destination"),
    ("type=bind,source=/a,destination=/b,ro=maybe", "not a boolean"),
    ("type=bind,source=/a,destination=/b,image-src=/x", "unsupported key 'image-src'"),
])
def test_parse_mount_errors(value, message):
    with pytest.raises(UsageError, match=message):
        parse_mount(value)


def test_collect_order_and_environment():
    env = {"APPTAINER_BIND": "/e1,/e2:/x", "SINGULARITY_BIND": "/ignored"}
    specs = collect(["/b1"], ["type=bind,source=/m,destination=/mm\ntype=bind,source=/n,dst=/nn"],
                    env)
    assert [s.source for s in specs] == ["/e1", "/e2", "/b1", "/m", "/n"]
    assert [s.source for s in collect([], [], {"SINGULARITY_BIND": "/s"})] == ["/s"]
    assert [s.source for s in collect([], [], {"APPTAINER_BINDPATH": "/p"})] == ["/p"]
    assert collect(None, None, {}) == []
