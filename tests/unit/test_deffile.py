"""Definition file parser: header, sections, %files, stages, build arguments, errors."""

import pytest

from satchel.build import deffile
from satchel.errors import DefinitionError


def one(text, args=None):
    stages, unused = deffile.parse(text, args)
    assert len(stages) == 1
    return stages[0]


def test_header_keys_case_comments_and_continuation():
    d = one("# leading comment\n"
            "BootStrap: debootstrap   # trailing comment\n"
            "OSVersion: bookworm\n"
            "MirrorURL: http://deb.debian.org/debian\n"
            "Include: vim \\\n"
            "   less\n"
            "\n"
            "%post\n    true\n")
    assert d.header == {"bootstrap": "debootstrap", "osversion": "bookworm",
                        "mirrorurl": "http://deb.debian.org/debian", "include": "vim less"}
    assert d.bootstrap == "debootstrap"


def test_unknown_header_key_is_an_error():
    with pytest.raises(DefinitionError, match="invalid header keyword found: fromm"):
        one("Bootstrap: docker\nFromm: alpine\n")


def test_numbered_otherurl_is_accepted():
    assert one("Bootstrap: yum\nOtherURL1: http://x\n").header["otherurl1"] == "http://x"


def test_header_line_without_colon():
    with pytest.raises(DefinitionError, match="not 'Key: value'"):
        one("Bootstrap busybox\n")


def test_sections_bodies_and_args():
    d = one("Bootstrap: busybox\n"
            "%post -c /bin/bash\n"
            "    echo one\n"
            "%runscript\n"
            "    exec \"$@\"\n"
            "%environment\n"
            "    export A=1\n"
            "%help\n"
            "    Some help.\n")
    assert d.section("post").args == "-c /bin/bash"
    assert d.script("post") == "    echo one\n"
    assert d.script("runscript") == '    exec "$@"\n'
    assert d.script("environment") == "    export A=1\n"
    assert d.script("help") == "    Some help.\n"
    assert d.script("test") == ""


def test_repeated_section_is_concatenated():
    d = one("Bootstrap: busybox\n%post\n  a\n%runscript\n  r\n%post\n  b\n")
    assert d.script("post") == "  a\n  b\n"


def test_labels():
    d = one("Bootstrap: busybox\n%labels\n  Author Jane Doe\n  # comment\n  Version 1.0\n  Empty\n")
    assert d.labels == {"Author": "Jane Doe", "Version": "1.0", "Empty": ""}


def test_files_parsing_quotes_and_from_stage():
    d = one('Bootstrap: busybox\n'
            '%files\n'
            '  a.txt\n'
            '  "with space.txt" /opt/\n'
            '  src/dir /opt/dir   # comment\n'
            '%files from build\n'
            '  /out/bin /usr/local/bin/tool\n'
            '%files\n'
            '  b.txt /b.txt\n')
    host = [b for b in d.files if b.stage is None][0]
    assert host.transfers == [("a.txt", ""), ("with space.txt", "/opt/"),
                              ("src/dir", "/opt/dir"), ("b.txt", "/b.txt")]
    staged = [b for b in d.files if b.stage == "build"][0]
    assert staged.transfers == [("/out/bin", "/usr/local/bin/tool")]


def test_files_quoted_destination_with_space():
    d = one('Bootstrap: busybox\n%files\n  "a b.txt" "/opt/c d.txt"\n')
    assert d.files[0].transfers == [("a b.txt", "/opt/c d.txt")]


def test_files_too_many_words_is_an_error():
    with pytest.raises(DefinitionError, match="expected 'source"):
        one("Bootstrap: busybox\n%files\n  a b c\n")


def test_files_bad_arguments():
    with pytest.raises(DefinitionError, match="from STAGE"):
        one("Bootstrap: busybox\n%files to x\n  a\n")


def test_invalid_section_is_an_error():
    with pytest.raises(DefinitionError, match="invalid section.*%postt"):
        one("Bootstrap: busybox\n%postt\n  true\n")


def test_app_sections_are_parsed():
    d = one("Bootstrap: busybox\n%apprun foo\n  echo foo\n%appinstall foo\n  true\n%apphelp bar\n  hi\n")
    assert sorted(d.apps) == ["bar", "foo"]
    assert d.apps["foo"]["apprun"].body.strip() == "echo foo"
    with pytest.raises(DefinitionError, match="app name"):
        one("Bootstrap: busybox\n%apprun\n  x\n")


def test_empty_definition():
    with pytest.raises(DefinitionError, match="empty"):
        deffile.parse("\n# nothing\n\n")


def test_content_before_bootstrap_is_an_error():
    with pytest.raises(DefinitionError, match="before the first Bootstrap"):
        deffile.parse("%post\n true\nBootstrap: busybox\n")


def test_multi_stage():
    text = ("# two stages\n"
            "Bootstrap: busybox\nStage: build\n%post\n  make\n\n"
            "Bootstrap: busybox\nStage: final\n%files from build\n  /out /out\n")
    stages, _ = deffile.parse(text)
    assert [s.stage for s in stages] == ["build", "final"]
    assert stages[0].script("post").strip() == "make"
    assert stages[1].files[0].stage == "build"
    assert stages[0].full_raw == stages[1].full_raw == text
    assert stages[0].raw.startswith("# two stages\nBootstrap: busybox")


def test_duplicate_stage_names():
    with pytest.raises(DefinitionError, match="same name"):
        deffile.parse("Bootstrap: busybox\nStage: a\n\nBootstrap: busybox\nStage: a\n")


def test_build_arguments_defaults_and_overrides():
    text = ("Bootstrap: docker\nFrom: {{ base }}:{{ tag }}\n"
            "%arguments\n  base=alpine\n  tag=3.19\n"
            "%post\n  # {{ undefined_in_comment }} stays\n  echo {{base}}\n")
    stages, unused = deffile.parse(text, {"tag": "3.20", "extra": "x"})
    d = stages[0]
    assert d.header["from"] == "alpine:3.20"
    assert "echo alpine" in d.script("post")
    assert "{{ undefined_in_comment }}" in d.script("post")
    assert unused == ["extra"]
    assert "alpine:3.20" in d.full_raw


def test_undefined_build_argument():
    with pytest.raises(DefinitionError, match="build argument 'nope' is not defined"):
        deffile.parse("Bootstrap: docker\nFrom: {{ nope }}\n")


def test_bad_arguments_line():
    with pytest.raises(DefinitionError, match="name=value"):
        deffile.parse("Bootstrap: busybox\n%arguments\n  novalue\n")


def test_parse_build_args(tmp_path):
    f = tmp_path / "args"
    f.write_text("# comment\nA=1\nB = two words\n")
    assert deffile.parse_build_args(["B=3", "C="], str(f)) == {"A": "1", "B": "3", "C": ""}
    with pytest.raises(DefinitionError, match="KEY=VALUE"):
        deffile.parse_build_args(["novalue"])
    with pytest.raises(DefinitionError, match="while reading build argument file"):
        deffile.parse_build_args([], str(tmp_path / "missing"))


def test_crlf_line_endings():
    d = one("Bootstrap: busybox\r\n%post\r\n  echo hi\r\n")
    assert d.bootstrap == "busybox"
    assert "\r" not in d.script("post")


def test_from_uri():
    d = deffile.from_uri("docker://alpine:3.19")
    assert d.header == {"bootstrap": "docker", "from": "alpine:3.19"}
    assert d.full_raw == "bootstrap: docker\nfrom: alpine:3.19\n"
    with pytest.raises(DefinitionError):
        deffile.from_uri("alpine")


def test_parse_file_errors(tmp_path):
    with pytest.raises(DefinitionError, match="definition file .*missing.def: No such file"):
        deffile.parse_file(str(tmp_path / "missing.def"))
    binary = tmp_path / "bin.def"
    binary.write_bytes(b"\x7fELF\x00\x01")
    with pytest.raises(DefinitionError, match="binary"):
        deffile.parse_file(str(binary))
    latin = tmp_path / "latin.def"
    latin.write_bytes(b"Bootstrap: busybox\n%labels\n  a \xe9\n")
    with pytest.raises(DefinitionError, match="UTF-8"):
        deffile.parse_file(str(latin))
    bad = tmp_path / "bad.def"
    bad.write_text("Bootstrap: busybox\nWhat: x\n")
    with pytest.raises(DefinitionError, match=r"while parsing definition file .*bad.def: invalid header"):
        deffile.parse_file(str(bad))


def test_parse_file_sets_path(tmp_path):
    f = tmp_path / "x.def"
    f.write_text("Bootstrap: busybox\n")
    stages, _ = deffile.parse_file(str(f))
    assert stages[0].path == str(f)
