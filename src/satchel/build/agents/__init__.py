"""Bootstrap agents: where a build stage's root filesystem comes from.

An agent is a module with `fetch(ctx: AgentContext) -> FetchResult` that fills `ctx.rootfs`
(an empty directory). Agents are named by module path and imported only when used, so the OCI
layer plugs in its agents (docker, oci, ...) without the build importing registry code for a
busybox build. To add one, add a name -> module entry to AGENTS (or call `register`).
"""

from __future__ import annotations

import importlib

from satchel.errors import BuildError

AGENTS: dict[str, str] = {
    "scratch": "satchel.build.agents.scratch",
    "busybox": "satchel.build.agents.busybox",
    "localimage": "satchel.build.agents.localimage",
    "debootstrap": "satchel.build.agents.debootstrap",
    # the OCI layer (src/satchel/oci/agent.py) implements these
    "docker": "satchel.oci.agent",
    "docker-archive": "satchel.oci.agent",
    "docker-daemon": "satchel.oci.agent",
    "oci": "satchel.oci.agent",
    "oci-archive": "satchel.oci.agent",
    "oras": "satchel.build.agents.oras",
}


def register(name: str, module_path: str) -> None:
    """Make `Bootstrap: name` use the agent in `module_path`."""
    AGENTS[name.lower()] = module_path


def get_agent(name: str):
    """The agent module for `Bootstrap: name`; BuildError when unknown or not installed."""
    key = (name or "").strip().lower()
    if not key:
        raise BuildError("the definition has no Bootstrap header",
                         hint="start the definition with e.g. 'Bootstrap: busybox'")
    module_path = AGENTS.get(key)
    if module_path is None:
        raise BuildError(f"unsupported bootstrap agent {name!r}",
                         hint="supported agents: " + ", ".join(sorted(AGENTS)))
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as err:
        if err.name and module_path.startswith(err.name):
            raise BuildError(f"bootstrap agent {name!r} is not available in this satchel "
                             f"({module_path} is missing)") from None
        raise
    if not hasattr(module, "fetch"):
        raise BuildError(f"bootstrap agent {name!r} ({module_path}) has no fetch()")
    return module


class AgentContext:
    """What an agent gets: the parsed stage, an empty rootfs to fill, scratch space, options.

    - definition: the stage's satchel.build.deffile.Definition; header: its header dict
      (lowercase keys, e.g. "from", "osversion", "mirrorurl", "include");
    - rootfs: empty directory to fill; workdir: scratch directory next to the target
      (removed after the build);
    - fakeroot: True when running as uid 0 of a user namespace (not real root);
    - options: the build options (satchel.build.builder.BuildOptions).
    """

    __slots__ = ("definition", "header", "rootfs", "fakeroot", "workdir", "options")

    def __init__(self, definition, rootfs: str, workdir: str, fakeroot: bool = False, options=None):
        self.definition = definition
        self.header = dict(definition.header)
        self.rootfs = rootfs
        self.workdir = workdir
        self.fakeroot = fakeroot
        self.options = options


BARE_RUNSCRIPT = "#!/bin/sh\n"


class FetchResult:
    """What an agent reports besides the files it wrote.

    - env: "K=V" strings from an image config (-> /.singularity.d/env/10-docker2singularity.sh);
    - entrypoint / cmd: from an image config (-> the default runscript, by Apptainer's rules);
    - workdir: the image's working directory, if any; labels: image labels (-> labels.json);
    - runscript: the runscript the agent writes before the definition's %runscript, if any
      (None: keep the image's, or the layout's default). Apptainer's agents that make a new
      root filesystem (scratch, busybox, debootstrap, yum, ...) write a bare BARE_RUNSCRIPT,
      so `run` of an image without %runscript prints nothing; localimage keeps the base's.
    - keep_layout: the rootfs came with a complete /.singularity.d of its own (localimage,
      oras, an OCI image `satchel push --oci` exported from a SIF): layout.prepare keeps its
      files instead of writing the defaults over them.
    """

    __slots__ = ("env", "entrypoint", "cmd", "workdir", "labels", "runscript", "keep_layout")

    def __init__(self, env=None, entrypoint=None, cmd=None, workdir=None, labels=None,
                 runscript=None, keep_layout: bool = False):
        self.env: list[str] = list(env or [])
        self.entrypoint: list[str] | None = list(entrypoint) if entrypoint is not None else None
        self.cmd: list[str] | None = list(cmd) if cmd is not None else None
        self.workdir: str | None = workdir
        self.labels: dict[str, str] = dict(labels or {})
        self.runscript: str | None = runscript
        self.keep_layout = keep_layout

    def __repr__(self) -> str:
        return (f"FetchResult(env={self.env!r}, entrypoint={self.entrypoint!r}, cmd={self.cmd!r}, "
                f"workdir={self.workdir!r}, labels={self.labels!r}, runscript={self.runscript!r}, "
                f"keep_layout={self.keep_layout!r})")


def warn_unused_headers(ctx: AgentContext, used: tuple[str, ...]) -> None:
    """Tell the user about header keys this agent does not use: never ignore them silently."""
    from satchel import log
    for key in sorted(ctx.header):
        if key in ("bootstrap", "stage") or key in used:
            continue
        log.warning(f"header key {key!r} is not used by the {ctx.definition.bootstrap} "
                    f"bootstrap agent and is ignored")
