"""`Bootstrap: scratch`: start from an empty root filesystem (then %setup/%files fill it)."""

from __future__ import annotations

from satchel.build.agents import BARE_RUNSCRIPT, AgentContext, FetchResult, warn_unused_headers


def fetch(ctx: AgentContext) -> FetchResult:
    warn_unused_headers(ctx, used=())
    return FetchResult(runscript=BARE_RUNSCRIPT)
