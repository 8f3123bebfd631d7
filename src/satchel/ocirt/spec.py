"""A bundle's config.json (OCI runtime spec v1.0 to v1.2) as plain, checked data.

Only what satchel applies is kept; each field is checked for its JSON type here so that the
plan and the executor never meet a malformed value. A field satchel cannot honour is refused
with an error naming it (never ignored silently): see UNSUPPORTED_LINUX.
"""

from __future__ import annotations

import os
import posixpath

from satchel.errors import ConfigError
from satchel.ocirt import jsonlite

SUPPORTED_VERSIONS = ("1.0.", "1.1.", "1.2.")
NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")
# linux.* keys with an effect satchel does not provide: refused rather than dropped
UNSUPPORTED_LINUX = ("intelRdt", "personality")
MAX_CONFIG = 4 << 20
# rootfsPropagation values (the spec's four, and the recursive forms runc accepts)
PROPAGATIONS = ("shared", "slave", "private", "unbindable", "rshared", "rslave", "rprivate",
                "runbindable")


class Mount:
    __slots__ = ("destination", "type", "source", "options")

    def __init__(self, destination, type_, source, options):
        self.destination = destination
        self.type = type_
        self.source = source
        self.options = tuple(options)

    def to_dict(self) -> dict:
        return {"destination": self.destination, "type": self.type, "source": self.source,
                "options": list(self.options)}


class Process:
    __slots__ = ("args", "env", "cwd", "uid", "gid", "additional_gids", "umask", "terminal",
                 "console_size", "rlimits", "capabilities", "no_new_privileges",
                 "oom_score_adj", "apparmor", "selinux")

    def __init__(self, **values):
        for key in self.__slots__:
            setattr(self, key, values.get(key))


class Spec:
    __slots__ = ("version", "bundle", "root_path", "root_readonly", "process", "hostname",
                 "mounts", "namespaces", "uid_mappings", "gid_mappings", "masked_paths",
                 "readonly_paths", "devices", "resources", "hooks", "seccomp", "sysctl",
                 "rootfs_propagation", "cgroups_path", "annotations", "raw_process")

    def __init__(self, **values):
        for key in self.__slots__:
            setattr(self, key, values.get(key))

    def namespace_types(self) -> list[str]:
        return [kind for kind, _ in self.namespaces]


def _type(value, kinds, where: str):
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join({"str": "a string", "int": "an integer", "bool": "a boolean",
                             "list": "a list", "dict": "an object"}[k.__name__] for k in kinds)
        raise ConfigError(f"config.json: {where} must be {names}")
    return value


def _get(obj: dict, key: str, kinds, where: str, default=None):
    value = obj.get(key, default)
    if value is None:
        return default
    return _type(value, kinds, f"{where}.{key}" if where else key)


def _strings(obj: dict, key: str, where: str) -> list[str]:
    values = _get(obj, key, list, where, [])
    for i, value in enumerate(values):
        _type(value, str, f"{where}.{key}[{i}]")
    return list(values)


def _int(obj: dict, key: str, where: str, default=None, low=None, high=None):
    value = _get(obj, key, int, where, default)
    if value is not None and ((low is not None and value < low) or
                              (high is not None and value > high)):
        raise ConfigError(f"config.json: {where}.{key} = {value} is out of range")
    return value


def load(bundle: str) -> Spec:
    """Read BUNDLE/config.json (a regular file: a FIFO must not hang us) and parse it."""
    from satchel import fsutil

    path = posixpath.join(bundle, "config.json")
    try:
        raw = fsutil.read_regular(path, follow=True, limit=MAX_CONFIG)
    except OSError as err:
        raise ConfigError(f"reading {path}: {err.strerror}") from None
    try:
        data = jsonlite.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    return parse(data, os.path.abspath(bundle))


def parse(data, bundle: str) -> Spec:
    _type(data, dict, "the document")
    version = _get(data, "ociVersion", str, "", "")
    if not version.startswith(SUPPORTED_VERSIONS):
        raise ConfigError(f"config.json: ociVersion {version!r} is not supported "
                          "(satchel reads 1.0.x to 1.2.x)")
    root = _get(data, "root", dict, "", {})
    root_path = _get(root, "path", str, "root", "")
    if not root_path:
        raise ConfigError("config.json: root.path is required")
    if not root_path.startswith("/"):
        root_path = posixpath.join(bundle, root_path)
    linux = _get(data, "linux", dict, "", {})
    for key in UNSUPPORTED_LINUX:
        if linux.get(key):
            raise ConfigError(f"config.json: linux.{key} is not supported by satchel")
    process = data.get("process")
    return Spec(
        version=version, bundle=bundle, root_path=posixpath.normpath(root_path),
        root_readonly=bool(_get(root, "readonly", bool, "root", False)),
        process=parse_process(process) if process is not None else None,
        raw_process=process,  # as given: `exec ID CMD` without --process starts from it
        hostname=_get(data, "hostname", str, "", None),
        mounts=_mounts(data), namespaces=_namespaces(linux),
        uid_mappings=_mappings(linux, "uidMappings"), gid_mappings=_mappings(linux, "gidMappings"),
        masked_paths=_strings(linux, "maskedPaths", "linux"),
        readonly_paths=_strings(linux, "readonlyPaths", "linux"),
        devices=_devices(linux), resources=_get(linux, "resources", dict, "linux", {}),
        hooks=_hooks(data), seccomp=_get(linux, "seccomp", dict, "linux", None),
        sysctl=_sysctl(linux),
        rootfs_propagation=_propagation(linux),
        cgroups_path=_get(linux, "cgroupsPath", str, "linux", ""),
        annotations=_get(data, "annotations", dict, "", {}))


def parse_process(obj) -> Process:
    """process (config.json) or the --process file of `exec`."""
    _type(obj, dict, "process")
    args = _strings(obj, "args", "process")
    if not args:
        raise ConfigError("config.json: process.args must name the program to run")
    cwd = _get(obj, "cwd", str, "process", "/")
    if not cwd.startswith("/"):
        raise ConfigError(f"config.json: process.cwd {cwd!r} must be an absolute path")
    user = _get(obj, "user", dict, "process", {})
    env = _strings(obj, "env", "process")
    for item in env:
        if "=" not in item:
            raise ConfigError(f"config.json: process.env entry {item!r} has no '='")
    caps = _get(obj, "capabilities", dict, "process", None)
    sets = None
    if caps is not None:
        sets = {name: _strings(caps, name, "process.capabilities") for name in CAP_SETS}
    rlimits = []
    for i, item in enumerate(_get(obj, "rlimits", list, "process", [])):
        where = f"process.rlimits[{i}]"
        _type(item, dict, where)
        rlimits.append((_get(item, "type", str, where, ""),
                        _int(item, "hard", where, 0, 0, (1 << 64) - 1),
                        _int(item, "soft", where, 0, 0, (1 << 64) - 1)))
    size = _get(obj, "consoleSize", dict, "process", None)
    return Process(
        args=args, env=env, cwd=cwd,
        uid=_int(user, "uid", "process.user", 0, 0, (1 << 32) - 2),
        gid=_int(user, "gid", "process.user", 0, 0, (1 << 32) - 2),
        additional_gids=[_type(g, int, "process.user.additionalGids")
                         for g in _get(user, "additionalGids", list, "process.user", [])],
        umask=_int(user, "umask", "process.user", None, 0, 0o777),
        terminal=bool(_get(obj, "terminal", bool, "process", False)),
        console_size=(_int(size, "height", "process.consoleSize", 0),
                      _int(size, "width", "process.consoleSize", 0)) if size else None,
        rlimits=rlimits, capabilities=sets,
        no_new_privileges=bool(_get(obj, "noNewPrivileges", bool, "process", False)),
        oom_score_adj=_int(obj, "oomScoreAdj", "process", None, -1000, 1000),
        apparmor=_get(obj, "apparmorProfile", str, "process", ""),
        selinux=_get(obj, "selinuxLabel", str, "process", ""))


def _mounts(data: dict) -> list[Mount]:
    out = []
    for i, item in enumerate(_get(data, "mounts", list, "", [])):
        where = f"mounts[{i}]"
        _type(item, dict, where)
        dest = _get(item, "destination", str, where, "")
        if not dest.startswith("/"):
            raise ConfigError(f"config.json: {where}.destination {dest!r} must be absolute")
        out.append(Mount(posixpath.normpath(dest), _get(item, "type", str, where, ""),
                         _get(item, "source", str, where, ""), _strings(item, "options", where)))
    return out


def _namespaces(linux: dict) -> list[tuple[str, str]]:
    out, seen = [], set()
    for i, item in enumerate(_get(linux, "namespaces", list, "linux", [])):
        where = f"linux.namespaces[{i}]"
        _type(item, dict, where)
        kind = _get(item, "type", str, where, "")
        if kind not in NAMESPACE_TYPES:
            raise ConfigError(f"config.json: {where}.type {kind!r} is not a namespace type")
        if kind in seen:
            raise ConfigError(f"config.json: namespace {kind} listed twice")
        seen.add(kind)
        out.append((kind, _get(item, "path", str, where, "")))
    return out


def _mappings(linux: dict, key: str) -> list[tuple[int, int, int]]:
    out = []
    for i, item in enumerate(_get(linux, key, list, "linux", [])):
        where = f"linux.{key}[{i}]"
        _type(item, dict, where)
        out.append((_int(item, "containerID", where, 0, 0), _int(item, "hostID", where, 0, 0),
                    _int(item, "size", where, 0, 1)))
    return out


def _devices(linux: dict) -> list[dict]:
    out = []
    for i, item in enumerate(_get(linux, "devices", list, "linux", [])):
        where = f"linux.devices[{i}]"
        _type(item, dict, where)
        path = _get(item, "path", str, where, "")
        kind = _get(item, "type", str, where, "")
        if not path.startswith("/dev/") or kind not in ("c", "b", "u", "p"):
            raise ConfigError(f"config.json: {where}: expected a /dev path and type c, b, u or p")
        out.append({"path": posixpath.normpath(path), "type": kind,
                    "major": _int(item, "major", where, 0, 0),
                    "minor": _int(item, "minor", where, 0, 0),
                    "mode": _int(item, "fileMode", where, 0o666, 0, 0o7777),
                    "uid": _int(item, "uid", where, 0, 0), "gid": _int(item, "gid", where, 0, 0)})
    return out


def _hooks(data: dict) -> dict:
    hooks = _get(data, "hooks", dict, "", {})
    out = {}
    for kind in HOOK_KINDS:
        entries = []
        for i, item in enumerate(_get(hooks, kind, list, "hooks", [])):
            where = f"hooks.{kind}[{i}]"
            _type(item, dict, where)
            path = _get(item, "path", str, where, "")
            if not path.startswith("/"):
                raise ConfigError(f"config.json: {where}.path must be absolute")
            entries.append({"path": path, "args": _strings(item, "args", where) or [path],
                            "env": _strings(item, "env", where),
                            "timeout": _int(item, "timeout", where, None, 1)})
        out[kind] = entries
    return out


def _propagation(linux: dict) -> str:
    value = _get(linux, "rootfsPropagation", str, "linux", "")
    if value and value not in PROPAGATIONS:
        raise ConfigError(f"config.json: linux.rootfsPropagation {value!r} is not one of "
                          f"{', '.join(PROPAGATIONS)}")
    return value


def _sysctl(linux: dict) -> dict:
    values = _get(linux, "sysctl", dict, "linux", {})
    for key, value in values.items():
        _type(value, str, f"linux.sysctl.{key}")
        if "/" in key or key.startswith(".") or ".." in key:
            raise ConfigError(f"config.json: linux.sysctl key {key!r} is not a sysctl name")
    return dict(values)
