"""Inspect data of an image: labels, definition, runscript, environment, help, test, apps.

The data has Apptainer's shape (`{"data": {"attributes": {...}}, "type": "container"}`, its key
names and order, empty attributes omitted) and comes from, fastest first:
1. a SIF's JSON.Generic object `inspect-metadata.json` (what `satchel build` and Apptainer >=
   1.2 write: one small read, no file system access);
2. the files in /.singularity.d, read from a sandbox directory, or from the SIF's SquashFS
   partition with `unsquashfs -o OFFSET -cat` (SIFs made by others; no mount, no privilege).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os

from satchel import fsutil, log
from satchel.errors import ImageError, PathError, SatchelError

INSPECT_OBJECT_NAME = "inspect-metadata.json"
SD = "/.singularity.d"

# Go struct field order of Apptainer's inspect.Attributes / AppAttributes.
ATTRIBUTES = ("apps", "environment", "labels", "runscript", "test", "helpfile", "deffile",
              "startscript")
APP_ATTRIBUTES = ("environment", "labels", "runscript", "startscript", "test", "helpfile")
ALL = frozenset(ATTRIBUTES)

_FILES = {  # attribute -> file under /.singularity.d (or an app's scif/ directory)
    "runscript": "runscript",
    "test": "test",
    "helpfile": "runscript.help",
    "deffile": "Singularity",
    "startscript": "startscript",
}
_ENV_PATTERNS = ("10-docker*.sh", "9*-environment.sh")


# --- reading a tree: a sandbox directory or a SquashFS file ----------------------------------

class SandboxReader:
    """Reads files of a sandbox as the container sees them (symlinks stay inside the root)."""

    def __init__(self, root: str):
        self.root = root

    def read(self, path: str) -> bytes | None:
        try:
            # a FIFO or device planted in the sandbox must not hang or act: regular files only
            return fsutil.read_regular(fsutil.secure_join(self.root, path))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except PathError as err:
            if err.errno == errno.ENOTDIR:
                return None
            raise ImageError(f"while reading {path} in {self.root}: {err}") from None
        except OSError as err:
            raise ImageError(f"while reading {path} in {self.root}: {err.strerror}") from None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(fsutil.secure_join(self.root, path)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except PathError as err:
            if err.errno == errno.ENOTDIR:
                return []
            raise ImageError(f"while listing {path} in {self.root}: {err}") from None
        except OSError as err:
            raise ImageError(f"while listing {path} in {self.root}: {err.strerror}") from None

    def isdir(self, path: str) -> bool:
        try:
            return os.path.isdir(fsutil.secure_join(self.root, path))
        except PathError:
            return False


class SquashfsReader:
    """Reads files from a SquashFS file system at `offset` in `image`, with unsquashfs."""

    def __init__(self, image: str, offset: int = 0):
        self.image = image
        self.offset = offset
        self._listing: dict[str, list[str]] | None = None

    def read(self, path: str) -> bytes | None:
        from satchel.image import squashfs
        return squashfs.cat(self.image, path, self.offset)

    def _tree(self) -> dict[str, list[str]]:
        if self._listing is None:
            from satchel.image import squashfs
            tree: dict[str, list[str]] = {}
            for under in (SD, "/scif"):
                try:
                    paths = squashfs.list_paths(self.image, self.offset, under)
                except ImageError:
                    continue
                for p in paths:
                    parent, _, name = p.rpartition("/")
                    tree.setdefault(parent or "/", []).append(name)
                    tree.setdefault(p, tree.get(p, []))
            self._listing = tree
        return self._listing

    def listdir(self, path: str) -> list[str]:
        return sorted(self._tree().get(path.rstrip("/") or "/", []))

    def isdir(self, path: str) -> bool:
        return (path.rstrip("/") or "/") in self._tree()


def _text(data: bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace").rstrip("\n")


def _labels(data: bytes | None, where: str) -> dict[str, str]:
    if not data or not data.strip():
        return {}
    try:
        value = json.loads(data)
    except ValueError as err:
        log.warning(f"unable to parse labels in {where}: {err}")
        return {}
    if not isinstance(value, dict):
        log.warning(f"unable to parse labels in {where}: not a JSON object")
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def _environment(reader, directory: str) -> dict[str, str]:
    env = {}
    names = reader.listdir(directory)
    for pattern in _ENV_PATTERNS:
        for name in names:
            if fnmatch.fnmatchcase(name, pattern):
                data = reader.read(f"{directory}/{name}")
                if data is not None:
                    env[f"{directory}/{name}"] = _text(data)
    return env


def collect(reader, want=ALL) -> dict:
    """Attributes (Apptainer's key order, empty ones left out) read from a tree."""
    attrs: dict = {}
    if "apps" in want:
        apps = {}
        for app in reader.listdir("/scif/apps"):
            base = f"/scif/apps/{app}/scif"
            if not reader.isdir(base):
                continue
            app_attrs: dict = {}
            if "environment" in want:
                app_attrs["environment"] = _environment(reader, base + "/env")
            if "labels" in want:
                app_attrs["labels"] = _labels(reader.read(base + "/labels.json"), base)
            for key in ("runscript", "startscript", "test", "helpfile"):
                if key in want:
                    app_attrs[key] = _text(reader.read(f"{base}/{_FILES[key]}"))
            apps[app] = {k: app_attrs[k] for k in APP_ATTRIBUTES if app_attrs.get(k)}
        attrs["apps"] = apps
    if "environment" in want:
        attrs["environment"] = _environment(reader, SD + "/env")
    if "labels" in want:
        attrs["labels"] = _labels(reader.read(SD + "/labels.json"), SD + "/labels.json")
    for key in ("runscript", "test", "helpfile", "deffile", "startscript"):
        if key in want:
            attrs[key] = _text(reader.read(f"{SD}/{_FILES[key]}"))
    return order_attributes(attrs)


def order_attributes(attrs: dict) -> dict:
    out = {}
    for key in ATTRIBUTES:
        value = attrs.get(key)
        if not value:
            continue
        if isinstance(value, dict):
            if key == "apps":
                value = {name: {k: (dict(sorted(v.items())) if isinstance(v, dict) else v)
                                for k, v in attr.items()}
                         for name, attr in sorted(value.items())}
            else:
                value = dict(sorted(value.items()))
        out[key] = value
    return out


def document(attrs: dict) -> dict:
    return {"data": {"attributes": order_attributes(attrs)}, "type": "container"}


def to_json(attrs: dict, indent: str | None = "\t") -> str:
    """Go-compatible JSON of the inspect document (struct order kept, maps sorted)."""
    return go_json(document(attrs), indent=indent, sort_keys=False)


def go_json(value, indent: str | None = None, sort_keys: bool = True) -> str:
    """JSON text as Go's encoding/json writes it (what Apptainer's files and output hold).

    Keys sorted (Go sorts map keys; pass sort_keys=False to keep a struct's order), `<`, `>`, `&`, U+2028 and U+2029 escaped; indentation with `indent` and no
    trailing newline, or compact.
    """
    if indent is None:
        text = json.dumps(value, ensure_ascii=False, sort_keys=sort_keys, separators=(",", ":"))
    else:
        text = json.dumps(value, ensure_ascii=False, sort_keys=sort_keys, indent=indent,
                          separators=(",", ": "))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))



# --- images -----------------------------------------------------------------------------------

class InspectSource:
    """An opened image for inspection: its kind, a tree reader, and SIF metadata if any."""

    def __init__(self, path: str, kind: str, reader, sif_metadata: dict | None = None,
                 sif_deffile: str | None = None):
        self.path = path
        self.kind = kind
        self.reader = reader
        self.sif_metadata = sif_metadata
        self.sif_deffile = sif_deffile


def open_source(path: str) -> InspectSource:
    from satchel.image.formats import open_image
    ref = open_image(path)
    if ref.kind == "sandbox":
        return InspectSource(ref.path, ref.kind, SandboxReader(ref.path))
    reader = SquashfsReader(ref.path, ref.fs_offset)
    if ref.kind != "sif":
        return InspectSource(ref.path, ref.kind, reader)
    from satchel.image import sif
    try:
        with sif.SIFFile.open(ref.path) as image:
            metadata = None
            for d in image.find(datatype=sif.DATA_GENERICJSON, name=INSPECT_OBJECT_NAME):
                metadata = parse_inspect_object(image.read_data(d.id), path)
                break
            deffile = None
            for d in image.find(datatype=sif.DATA_DEFFILE):
                deffile = image.read_data(d.id).decode("utf-8", "replace")
                break
    except SatchelError as err:
        raise err.context(f"while inspecting {path}") from None
    return InspectSource(ref.path, ref.kind, reader, metadata, deffile)


def parse_inspect_object(data: bytes, where: str) -> dict | None:
    try:
        doc = json.loads(data)
        attrs = doc["data"]["attributes"]
        if not isinstance(attrs, dict):
            raise TypeError("attributes is not an object")
        return attrs
    except (ValueError, KeyError, TypeError) as err:
        log.warning(f"unable to read the {INSPECT_OBJECT_NAME} object of {where}: {err}")
        return None


def inspect(path: str, want=ALL) -> dict:
    """The attributes of the image at `path` restricted to `want` (Apptainer's rules)."""
    source = open_source(path)
    want = set(want)
    if source.sif_metadata is not None:
        attrs = {k: v for k, v in source.sif_metadata.items() if k in want}
        return order_attributes(attrs)
    attrs = collect(source.reader, want)
    if "deffile" in want and source.sif_deffile is not None:
        attrs["deffile"] = source.sif_deffile
    return order_attributes(attrs)


def format_text(attrs: dict, list_apps: bool = False) -> str:
    """Apptainer's plain output: apps, deffile, runscript, startscript, test, help, env, labels."""
    out = []
    if list_apps:
        out.extend(f"{name}\n" for name in sorted(attrs.get("apps", {})))
    for key in ("deffile", "runscript", "startscript", "test", "helpfile"):
        if attrs.get(key):
            out.append(attrs[key] + "\n")
    for path, text in sorted(attrs.get("environment", {}).items()):
        out.append(f"=== {path} ===\n{text}\n\n")
    for key, value in sorted(attrs.get("labels", {}).items()):
        out.append(f"{key}: {value}\n")
    return "".join(out)
