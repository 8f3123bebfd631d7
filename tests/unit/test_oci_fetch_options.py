"""FetchOptions ride on BuildOptions: a pull's choices reach the build's agent as they are."""

from satchel.build.builder import BuildOptions
from satchel.oci import source


def test_pull_fetch_options_reach_the_agent_unchanged(monkeypatch):
    """What pull decided (here: https, no cache off, these credentials) is what the agent
    uses, even where the environment now says otherwise: nothing is read twice."""
    fetch = source.FetchOptions(arch="arm64/v8", plain_http=False, username="u", password="p",
                                authfile="/a.json")
    options = BuildOptions(force=True)
    options.fetch = fetch
    monkeypatch.setenv("APPTAINER_NOHTTPS", "1")
    monkeypatch.setenv("APPTAINER_DISABLE_CACHE", "1")
    got = source.fetch_options(options)
    assert got is fetch
    assert (got.arch, got.variant, got.plain_http, got.disable_cache, got.username,
            got.password, got.authfile) == ("arm64", "v8", False, False, "u", "p", "/a.json")


def test_a_build_makes_its_fetch_options_once(monkeypatch):
    """`satchel build`: made from the build's options and environment at the first agent, and
    kept (a later agent or stage gets the same object, no second --docker-login prompt)."""
    monkeypatch.setenv("SINGULARITY_NOHTTPS", "yes")
    options = BuildOptions(authfile="/cfg.json", arch="amd64")
    first = source.fetch_options(options)
    assert first.plain_http and first.authfile == "/cfg.json" and first.arch == "amd64"
    monkeypatch.delenv("SINGULARITY_NOHTTPS")
    assert source.fetch_options(options) is first and options.fetch is first
