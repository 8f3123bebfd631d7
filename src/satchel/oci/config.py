"""The OCI image configuration as Apptainer runtime metadata.

An image config's `config` object carries Env, Entrypoint, Cmd, WorkingDir and Labels. They
become, in the image's /.singularity.d: Env -> env/10-docker2singularity.sh, Entrypoint/Cmd ->
the runscript (Apptainer's rules), Labels -> labels.json (merged with the build labels).
The layout code of the builder writes those files from the values returned here.
"""

from __future__ import annotations

from satchel.errors import OCIError


class RuntimeConfig:
    __slots__ = ("env", "entrypoint", "cmd", "workdir", "labels", "user", "architecture")

    def __init__(self, env, entrypoint, cmd, workdir, labels, user, architecture):
        self.env = env                  # ["K=V", ...]
        self.entrypoint = entrypoint    # list[str] | None
        self.cmd = cmd                  # list[str] | None
        self.workdir = workdir          # str | None
        self.labels = labels            # dict[str, str]
        self.user = user                # str | None (not applied: runs as the caller)
        self.architecture = architecture


def _string_list(value, field: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):  # tolerated: some writers store a shell string
        return ["/bin/sh", "-c", value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OCIError(f"image config: {field} must be a list of strings")
    return list(value) or None


def from_image_config(doc: dict) -> RuntimeConfig:
    """Validate and extract the runtime fields of an image config document."""
    if not isinstance(doc, dict):
        raise OCIError("image config is not a JSON object")
    conf = doc.get("config")
    if conf is None:
        conf = doc.get("container_config") or {}
    if not isinstance(conf, dict):
        raise OCIError("image config: 'config' is not an object")
    env = conf.get("Env")
    env = [] if env is None else env
    if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        raise OCIError("image config: Env must be a list of strings")
    labels = conf.get("Labels")
    labels = {} if labels is None else labels
    if not isinstance(labels, dict):
        raise OCIError("image config: Labels must be an object")
    workdir = conf.get("WorkingDir") or None
    if workdir is not None and not isinstance(workdir, str):
        raise OCIError("image config: WorkingDir must be a string")
    user = conf.get("User") or None
    return RuntimeConfig(
        env=[e for e in env if e and not e.startswith("=")],
        entrypoint=_string_list(conf.get("Entrypoint"), "Entrypoint"),
        cmd=_string_list(conf.get("Cmd"), "Cmd"),
        workdir=workdir,
        labels={str(k): str(v) for k, v in labels.items()},
        user=user if isinstance(user, str) else None,
        architecture=doc.get("architecture") if isinstance(doc.get("architecture"), str) else None,
    )


def diff_ids(doc: dict) -> list[str]:
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        return []
    return [d for d in ids if isinstance(d, str)]
