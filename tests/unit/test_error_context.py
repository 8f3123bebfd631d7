"""Whether an error already names what it is about is a flag on the error, not its text."""

import pytest

from satchel.errors import OCIError, SatchelError
from satchel.oci import agent, source


def test_context_is_added_once():
    err = OCIError("manifest unknown")
    assert not err.in_context
    outer = err.in_context_of("while pulling docker://h/r:t")
    assert outer.message == "while pulling docker://h/r:t: manifest unknown" and outer.in_context
    assert outer.in_context_of("while pulling docker://h/r:t") is outer  # not twice
    assert outer.context("while building x").message.startswith("while building x: while")


def test_the_flag_decides_not_the_text():
    """A message that merely starts like the subject still gets the context; a flagged one
    that does not start with it gets none."""
    lookalike = SatchelError("docker://h/r:t: text that only looks like a subject")
    assert lookalike.in_context_of("while pulling docker://h/r:t").message.startswith(
        "while pulling docker://h/r:t: docker://h/r:t:")
    named = OCIError("h/r:t: unauthorized", in_context=True)
    assert named.in_context_of("while pulling docker://h/r:t") is named


def test_a_source_error_names_its_source_once(tmp_path):
    """An archive error starts with the archive's URI (flagged): the agent adds no
    'while fetching' in front of it."""
    archive = tmp_path / "x.tar"
    archive.write_text("not a tar archive")
    uri = f"oci-archive:{archive}"
    with pytest.raises(OCIError) as caught:
        agent.fetch_into(uri, str(tmp_path / "root"), source.FetchOptions(), str(tmp_path))
    assert caught.value.in_context and caught.value.message.startswith(uri + ": ")
    assert "while fetching" not in caught.value.message
