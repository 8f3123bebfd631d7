"""Apptainer's in-image layout: /.singularity.d and the mount points a runtime needs.

    /.singularity.d/
        actions/{exec,run,shell,start,test}   what `satchel ACTION` runs (runtime/environment.py)
        env/01-base.sh                        (empty hook)
        env/10-docker2singularity.sh          ENV of an OCI image config (only for OCI sources)
        env/90-environment.sh                 %environment
        env/91-environment.sh                 what %post appended to $APPTAINER_ENVIRONMENT
        env/94-appsbase.sh, 95-apps.sh        SCIF apps
        env/99-base.sh                        LD_LIBRARY_PATH += /.singularity.d/libs, PS1
        env/99-runtimevars.sh                 --env PATH handling (SING_USER_DEFINED_*PATH)
        libs/                                 bound host libraries (--nv, --rocm)
        runscript, startscript, test          %runscript, %startscript, %test
        runscript.help                        %help
        labels.json                           labels (org.label-schema.* + %labels)
        Singularity                           the definition file (older ones: bootstrap_history/)
    /singularity, /.run, /.exec, /.shell, /.test, /environment   compatibility links
    /proc /sys /dev /tmp /home /root /var/tmp, /etc/{hosts,resolv.conf,passwd,group,localtime}

The scripts' behaviour follows Apptainer's (public sources, internal/pkg/build/sources); the
text is satchel's. Every write goes through fsutil.secure_join: a rootfs from another image
may hold symlinks such as `/.singularity.d -> /../../host`, and nothing may land outside it.

Order of a build stage (as in Apptainer): agent fetch -> prepare() -> %setup, %files, %post ->
finish() -> %test. `write_layout()` does prepare + finish in one call for image conversions
without a definition (the OCI layer's pull).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time

from satchel import fsutil
from satchel.errors import BuildError, PathError, os_error
from satchel.image.metadata import go_json
from satchel.runtime import environment

SD = "/.singularity.d"
ENV_DIR = SD + "/env"
POST_ENVIRONMENT = ENV_DIR + "/91-environment.sh"
BUILD_LABELS = "/.build.labels"
HELP_FILE = SD + "/runscript.help"

# The action scripts come from the runtime (environment.action_file): an image's
# /.singularity.d/actions/X is exactly what `satchel X` runs there, one source for both.
ACTION_SCRIPTS = tuple((SD + "/actions/" + name, 0o755, environment.action_file(name))
                       for name in environment.ACTION_FILES)

ENV_01_BASE = "#!/bin/sh\n# satchel: first environment hook (intentionally empty).\n"

ENV_90_ENVIRONMENT = "#!/bin/sh\n# satchel: the %environment section of the definition follows.\n"

ENV_91_ENVIRONMENT = "#!/bin/sh\n# satchel: what %post wrote to $APPTAINER_ENVIRONMENT follows.\n"

ENV_94_APPSBASE = "#!/bin/sh\n# satchel: SCIF app environment hook (no apps in this image).\n"

ENV_95_APPS = """#!/bin/sh
# satchel: the environment of the selected SCIF app (--app NAME), if any.
app="${APPTAINER_APPNAME:-${SINGULARITY_APPNAME:-}}"
if [ -n "$app" ]; then
    SINGULARITY_APPNAME="$app"
    export SINGULARITY_APPNAME
    if [ ! -d "/scif/apps/$app/" ]; then
        echo "Could not locate the container application: $app" >&2
        exit 1
    fi
    SCIF_APPS=/scif/apps
    SCIF_APPROOT="/scif/apps/$app"
    export SCIF_APPS SCIF_APPROOT
    PATH="/scif/apps/$app:/scif/apps/singularity:$PATH"
    for sub in "/scif/apps/$app" /scif/apps/singularity; do
        if [ -d "$sub/bin" ]; then
            PATH="$sub/bin:$PATH"
            break
        fi
    done
    for sub in "/scif/apps/$app" /scif/apps/singularity; do
        if [ -d "$sub/lib" ]; then
            LD_LIBRARY_PATH="$sub/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            export LD_LIBRARY_PATH
            break
        fi
    done
    for name in 01-base.sh 90-environment.sh; do
        for sub in "/scif/apps/$app" /scif/apps/singularity; do
            if [ -f "$sub/scif/env/$name" ]; then
                . "$sub/scif/env/$name"
                break
            fi
        done
    done
    export PATH
fi
"""

ENV_99_BASE = """#!/bin/sh
# satchel: libraries bound into /.singularity.d/libs (--nv, --rocm) come last; a default prompt.
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH=/.singularity.d/libs
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
if [ -z "${PS1:-}" ]; then
    PS1="Apptainer> "
fi
export LD_LIBRARY_PATH PS1
"""

ENV_99_RUNTIMEVARS = """#!/bin/sh
# satchel: PATH requested on the command line (--env PATH=..., APPTAINERENV_PREPEND_PATH,
# APPTAINERENV_APPEND_PATH) wins over what the image's scripts set; applied last.
if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
    PATH="$SING_USER_DEFINED_PREPEND_PATH:$PATH"
fi
if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
    PATH="$PATH:$SING_USER_DEFINED_APPEND_PATH"
fi
if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
    PATH="$SING_USER_DEFINED_PATH"
fi
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH
export PATH
"""

DEFAULT_RUNSCRIPT = "#!/bin/sh\n\necho 'There is no runscript defined for this container'\n"
DEFAULT_STARTSCRIPT = "#!/bin/sh\n"

BASE_DIRS = (SD, SD + "/libs", SD + "/actions", ENV_DIR, "/dev", "/proc", "/sys", "/root",
             "/tmp", "/var/tmp", "/etc", "/home")

BASE_FILES = ACTION_SCRIPTS + (  # (path, mode, content): written when missing, or always
    (ENV_DIR + "/01-base.sh", 0o755, ENV_01_BASE),
    (ENV_DIR + "/90-environment.sh", 0o755, ENV_90_ENVIRONMENT),
    (ENV_DIR + "/94-appsbase.sh", 0o755, ENV_94_APPSBASE),
    (ENV_DIR + "/95-apps.sh", 0o755, ENV_95_APPS),
    (ENV_DIR + "/99-base.sh", 0o755, ENV_99_BASE),
    (ENV_DIR + "/99-runtimevars.sh", 0o755, ENV_99_RUNTIMEVARS),
    (SD + "/runscript", 0o755, DEFAULT_RUNSCRIPT),
    (SD + "/startscript", 0o755, DEFAULT_STARTSCRIPT),
)

MOUNT_POINT_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/passwd", "/etc/group", "/etc/localtime")

COMPAT_LINKS = (  # (link in /, target)
    ("/singularity", ".singularity.d/runscript"),
    ("/.run", ".singularity.d/actions/run"),
    ("/.exec", ".singularity.d/actions/exec"),
    ("/.test", ".singularity.d/actions/test"),
    ("/.shell", ".singularity.d/actions/shell"),
    ("/environment", ".singularity.d/env/90-environment.sh"),
)


# --- writing inside a rootfs, never outside -------------------------------------------------

def host_path(rootfs: str, path: str) -> str:
    try:
        return fsutil.secure_join(rootfs, path)
    except PathError as err:
        raise BuildError(f"in the image: {err}") from None


def ensure_dir(rootfs: str, path: str, mode: int = 0o755) -> str:
    try:
        return fsutil.make_dirs_in_root(rootfs, path, mode)
    except PathError as err:
        raise BuildError(f"while creating {path} in the image: {err}") from None
    except OSError as err:
        raise os_error(f"while creating {path} in the image", err, BuildError) from None


def write_file(rootfs: str, path: str, content: str | bytes, mode: int = 0o644,
               overwrite: bool = True) -> bool:
    """Write `path` (container view) inside rootfs; returns False if kept (exists, no overwrite)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    directory = ensure_dir(rootfs, parent or "/")
    target = os.path.join(directory, name)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise os_error(f"while writing {path} in the image", err, BuildError) from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        # follow the link the way the container would, inside rootfs
        target = host_path(rootfs, path)
        parent_dir = os.path.dirname(target)
        if not os.path.isdir(parent_dir):
            ensure_dir(rootfs, parent_dir[len(os.path.abspath(rootfs)):] or "/")
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise BuildError(f"while writing {path} in the image: it is a directory")
        if not overwrite:
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
                try:
                    os.chmod(target, mode)
                except OSError:
                    pass
            return False
    try:
        fsutil.write_new_file(target, content, mode)
    except OSError as err:
        raise os_error(f"while writing {path} in the image", err, BuildError) from None
    return True


def read_file(rootfs: str, path: str) -> str | None:
    try:
        target = fsutil.secure_join(rootfs, path)
    except PathError as err:
        if err.errno == errno.ENOTDIR:  # a file where a directory of the path should be
            return None
        raise BuildError(f"while reading {path} in the image: {err}") from None
    try:
        # the rootfs comes from a base image or OCI layers: a FIFO at labels.json must not
        # hang the build, a device node there must not be opened
        return fsutil.read_regular(target).decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as err:
        raise os_error(f"while reading {path} in the image", err, BuildError) from None


def append_file(rootfs: str, path: str, text: str, mode: int = 0o755) -> None:
    existing = read_file(rootfs, path)
    write_file(rootfs, path, (existing or "") + text, mode)


def remove_file(rootfs: str, path: str) -> None:
    parent, _, name = path.rstrip("/").rpartition("/")
    try:
        target = os.path.join(fsutil.secure_join(rootfs, parent or "/"), name)
    except PathError as err:
        if err.errno == errno.ENOTDIR:  # nothing there to remove
            return
        raise BuildError(f"while removing {path} in the image: {err}") from None
    try:
        os.unlink(target)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as err:
        raise os_error(f"while removing {path} in the image", err, BuildError) from None


def make_link(rootfs: str, link: str, target: str) -> None:
    """Create symlink `link` -> `target` unless something else (not a link) is there already."""
    parent, _, name = link.rstrip("/").rpartition("/")
    where = os.path.join(host_path(rootfs, parent or "/"), name)
    try:
        st = os.lstat(where)
    except FileNotFoundError:
        st = None
    try:
        if st is not None:
            if not stat.S_ISLNK(st.st_mode) or os.readlink(where) == target:
                return
            os.unlink(where)
        os.symlink(target, where)
    except OSError as err:
        raise os_error(f"while creating link {link} in the image", err, BuildError) from None


# --- the layout -----------------------------------------------------------------------------

def prepare(rootfs: str, fetch_result=None, overwrite: bool = True) -> None:
    """Base layout right after the agent: directories, scripts, links, mount points, OCI data.

    `overwrite=False`, or a fetch result with keep_layout (localimage, oras, a SIF exported to
    OCI), keeps the files an existing image already has.
    """
    if fetch_result is not None and fetch_result.keep_layout:
        overwrite = False
    try:
        st = os.stat(rootfs)
        if not st.st_mode & stat.S_IWUSR:
            os.chmod(rootfs, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    except OSError as err:
        raise os_error(f"while preparing {rootfs}", err, BuildError) from None
    for directory in BASE_DIRS:
        ensure_dir(rootfs, directory)
    for path in ("/tmp", "/var/tmp"):
        try:
            os.chmod(host_path(rootfs, path), 0o1777)
        except OSError:
            pass
    for path, mode, content in BASE_FILES:
        write_file(rootfs, path, content, mode, overwrite=overwrite)
    for path in MOUNT_POINT_FILES:
        write_file(rootfs, path, "", 0o644, overwrite=False)
    for link, target in COMPAT_LINKS:
        make_link(rootfs, link, target)
    if fetch_result is not None:
        apply_fetch_result(rootfs, fetch_result)


def apply_fetch_result(rootfs: str, result) -> None:
    """The agent's runscript; OCI image config -> 10-docker2singularity.sh, runscript, labels."""
    if result.runscript is not None:
        write_file(rootfs, SD + "/runscript", result.runscript, 0o755)
    if result.env:
        write_file(rootfs, ENV_DIR + "/10-docker2singularity.sh", docker_env_script(result.env), 0o755)
    if result.entrypoint is not None or result.cmd is not None:
        write_file(rootfs, SD + "/runscript", oci_runscript(result.entrypoint or [], result.cmd or []),
                   0o755)
    if result.labels:
        labels = read_labels(rootfs)
        labels.update(result.labels)
        write_file(rootfs, SD + "/labels.json", go_json(labels, indent="\t"), 0o644)


def docker_env_script(env: list[str]) -> str:
    """`export` lines for an OCI config's Env: image values are defaults the host may override,
    except PATH, which the image sets (Apptainer's rule)."""
    import re
    name_ok = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    lines = ["#!/bin/sh"]
    for item in env:
        name, sep, value = item.partition("=")
        if not name_ok.match(name):
            continue
        if not sep:
            lines.append(f'export {name}="${{{name}:-}}"')
        elif name == "PATH":
            lines.append(f'export {name}="{shell_escape(value)}"')
        else:
            lines.append(f'export {name}="${{{name}:-"{shell_escape(value)}"}}"')
    return "\n".join(lines) + "\n"


def shell_escape(value: str) -> str:
    """Escape for inside double quotes: backslash, double quote, backquote, dollar."""
    return (value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
            .replace("$", "\\$"))


def _args_quoted(args: list[str]) -> str:
    return " ".join(f'"{shell_escape(a)}"' for a in args)


def _single_quoted(text: str) -> str:
    return text.replace("'", "'\"'\"'")


def oci_runscript(entrypoint: list[str], cmd: list[str]) -> str:
    """The runscript of an image converted from OCI, with Apptainer's ENTRYPOINT/CMD rules.

    By default the ENTRYPOINT/CMD/arguments line is evaluated by the shell (Apptainer's
    historical behaviour); with SINGULARITY_NO_EVAL/APPTAINER_NO_EVAL set, arguments pass
    through unevaluated like in Docker.
    """
    def prepend(args: list[str], indent: str) -> str:
        return "".join(f"{indent}set -- '{_single_quoted(a)}' \"$@\"\n" for a in reversed(args))

    out = ["#!/bin/sh",
           f"OCI_ENTRYPOINT='{_single_quoted(_args_quoted(entrypoint))}'",
           f"OCI_CMD='{_single_quoted(_args_quoted(cmd))}'",
           "",
           "# Docker-like: no evaluation of ENTRYPOINT/CMD/arguments by the shell",
           'if [ -n "${APPTAINER_NO_EVAL:-${SINGULARITY_NO_EVAL:-}}" ]; then']
    if entrypoint:
        out.append('    if [ $# -eq 0 ]; then')
        out.append(prepend(cmd, "        ").rstrip("\n") or "        :")
        out.append('    fi')
        out.append(prepend(entrypoint, "    ").rstrip("\n"))
    elif cmd:
        out.append('    if [ $# -eq 0 ]; then')
        out.append(prepend(cmd, "        ").rstrip("\n"))
        out.append('    fi')
    out += ['    exec "$@"', 'fi', "",
            "# Apptainer's default: evaluate the combined command line through the shell",
            'CMDLINE_ARGS=""',
            'for arg in "$@"; do',
            '    CMDLINE_ARGS="${CMDLINE_ARGS} \\"$arg\\""',
            'done',
            'if [ -z "$OCI_ENTRYPOINT" ]; then',
            '    if [ $# -gt 0 ]; then',
            '        SINGULARITY_OCI_RUN="${CMDLINE_ARGS}"',
            '    else',
            '        SINGULARITY_OCI_RUN="${OCI_CMD}"',
            '    fi',
            'elif [ $# -gt 0 ]; then',
            '    SINGULARITY_OCI_RUN="${OCI_ENTRYPOINT} ${CMDLINE_ARGS}"',
            'else',
            '    SINGULARITY_OCI_RUN="${OCI_ENTRYPOINT} ${OCI_CMD}"',
            'fi',
            'eval "set ${SINGULARITY_OCI_RUN}"',
            'exec "$@"', ""]
    return "\n".join(out)


def script_file(section, default_shell: str = "/bin/sh") -> str:
    """Text of /.singularity.d/{runscript,startscript,test} from a definition section.

    A body starting with `#!` keeps its own interpreter line; `-c SHELL` section arguments
    choose the interpreter; other arguments are added to `#!/bin/sh`.
    """
    body = section.body
    shebang = "#!" + default_shell
    stripped = body.lstrip()
    if stripped.startswith("#!"):
        first, _, body = stripped.partition("\n")
        shebang = first.strip()
    args = section.args.split("#", 1)[0].split()
    if args:
        if args[0] == "-c" and len(args) > 1:
            shebang = "#!" + " ".join(args[1:])
        else:
            shebang += " " + " ".join(args)
    return f"{shebang}\n\n{body.rstrip()}\n"


def read_labels(rootfs: str) -> dict[str, str]:
    text = read_file(rootfs, SD + "/labels.json")
    if not text or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        from satchel import log
        log.warning("ignoring the image's unreadable /.singularity.d/labels.json")
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def build_date_labels(now: float | None = None) -> dict[str, str]:
    """org.label-schema.build-date in Apptainer's format, and the OCI RFC 3339 creation time."""
    when = time.localtime(now if now is not None else time.time())
    weekday = time.strftime("%A", when)
    month = time.strftime("%B", when)
    zone = time.strftime("%Z", when)
    build_date = (f"{weekday}_{when.tm_mday}_{month}_{when.tm_year}_"
                  f"{when.tm_hour}:{when.tm_min}:{when.tm_sec}_{zone}")
    offset = time.strftime("%z", when)
    rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%S", when) + (
        "Z" if offset in ("+0000", "-0000") else f"{offset[:3]}:{offset[3:]}")
    return {"org.label-schema.build-date": build_date, "org.opencontainers.image.created": rfc3339}


def finish(rootfs: str, definition, force: bool = False, now: float | None = None,
           run_section=None) -> dict:
    """Write the definition's metadata into the image after %post; return the labels written.

    %help, labels.json, Singularity (+ bootstrap_history), %environment, %startscript,
    %runscript, %test - in Apptainer's order. `run_section(name)` (from --section) says which
    of help, labels, environment, startscript, runscript and test are applied (default: all).
    """
    from satchel import log
    wanted = run_section or (lambda _name: True)
    has_help = wanted("help") and bool(definition.script("help").strip())
    if has_help:
        write_file(rootfs, HELP_FILE, definition.script("help").strip("\n") + "\n", 0o644)

    labels = compute_labels(rootfs, definition, has_help, force, now, wanted("labels"))
    write_file(rootfs, SD + "/labels.json", go_json(labels, indent="\t"), 0o644)

    previous = host_path(rootfs, SD + "/Singularity")
    if os.path.isfile(previous):
        history = ensure_dir(rootfs, SD + "/bootstrap_history")
        try:
            index = len(os.listdir(history))
            os.rename(previous, os.path.join(history, f"Singularity{index}"))
        except OSError as err:
            raise os_error("while keeping the previous definition in bootstrap_history", err,
                           BuildError) from None
    write_file(rootfs, SD + "/Singularity", definition.full_raw, 0o644)

    environment = definition.script("environment")
    if environment.strip() and wanted("environment"):
        append_file(rootfs, ENV_DIR + "/90-environment.sh", "\n" + environment.rstrip("\n") + "\n")
    for name, path in (("startscript", SD + "/startscript"), ("runscript", SD + "/runscript"),
                       ("test", SD + "/test")):
        section = definition.section(name)
        if section is not None and section.body.strip() and wanted(name):
            write_file(rootfs, path, script_file(section), 0o755)
    log.debug(f"wrote /.singularity.d metadata into {rootfs}")
    return labels


def compute_labels(rootfs: str, definition, has_help: bool, force: bool, now: float | None,
                   with_definition_labels: bool = True) -> dict:
    """Labels as Apptainer computes them: the image's, %post's $APPTAINER_LABELS, the build's,
    then %labels (an existing label changes only with --force)."""
    from satchel import __version__, log
    from satchel.compat import upstream_version
    from satchel.image.sif import host_arch
    labels = read_labels(rootfs)
    post_labels = read_file(rootfs, BUILD_LABELS)
    if post_labels is not None:
        from satchel.build.deffile import parse_labels
        labels.update(parse_labels(post_labels))
        remove_file(rootfs, BUILD_LABELS)
    version = upstream_version("apptainer", __version__)
    arch = host_arch()
    labels["org.label-schema.schema-version"] = "1.0"
    labels.update(build_date_labels(now))
    labels["org.label-schema.usage.apptainer.version"] = version
    labels["org.label-schema.usage.singularity.version"] = version
    if has_help:
        labels["org.label-schema.usage"] = HELP_FILE
        labels["org.label-schema.usage.apptainer.runscript.help"] = HELP_FILE
        labels["org.label-schema.usage.singularity.runscript.help"] = HELP_FILE
    for key, value in definition.header.items():
        labels["org.label-schema.usage.singularity.deffile." + key] = value
    labels["org.opencontainers.image.architecture"] = arch
    labels["org.label-schema.build-arch"] = arch
    for key, value in (definition.labels.items() if with_definition_labels else ()):
        if key in labels and labels[key] != value and not force:
            log.warning(f"label {key} already exists and --force is not set: not overwriting")
            continue
        labels[key] = value
    return labels


def write_layout(rootfs: str, definition, fetch_result=None, force: bool = False) -> dict:
    """prepare() + finish(): the whole layout for a rootfs and its (maybe synthetic) definition."""
    prepare(rootfs, fetch_result)
    return finish(rootfs, definition, force=force)
