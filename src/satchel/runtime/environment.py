"""The container's environment, decided before launch (pure: no I/O, unit-tested).

Apptainer's rules, which HPC users' scripts depend on:
- the host environment passes through, except HOME and PATH (set for the container),
  LD_LIBRARY_PATH (host libraries would break container programs), and APPTAINER_*,
  SINGULARITY_*, SATCHEL_* (settings of the runtime itself); with --cleanenv only TERM and the
  proxy variables pass, and LANG=C;
- APPTAINERENV_X / SINGULARITYENV_X set X (APPTAINERENV_ wins), then --env-file, then --env;
  HOME and PATH cannot be set this way (Apptainer's warning); PATH is changed with
  APPTAINERENV_PATH / _PREPEND_PATH / _APPEND_PATH, applied after the image's scripts;
- the image's /.singularity.d/env/*.sh scripts run in a shell before the command. They see
  neither host nor user-injected variables; afterwards the user-injected variables are
  re-applied (they win over the image) and host variables the image did not set are restored
  (the image wins over the host). The shell script doing this is action_script() below;
- APPTAINER_CONTAINER, APPTAINER_NAME, APPTAINER_COMMAND and the SINGULARITY_ twins, PS1 and
  LD_LIBRARY_PATH (with /.singularity.d/libs) are set inside;
- user-injected values are evaluated by the container's shell as if double-quoted
  (`--env 'D=$HOME/x'` expands $HOME inside the container), as Apptainer's injection script
  does, unless --no-eval: then they pass verbatim and SINGULARITY_NO_EVAL/APPTAINER_NO_EVAL
  are set in the container (images converted from OCI check them in their runscript to pass
  the arguments unevaluated too; native runscripts always get "$@" as given).
"""

from __future__ import annotations

from satchel.errors import UsageError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ALWAYS_PASS = frozenset((
    "TERM", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
    "all_proxy", "ALL_PROXY", "ftp_proxy", "FTP_PROXY",
))
# never taken from the host; value: whether APPTAINERENV_ may set it
ALWAYS_OMIT = {"HOME": False, "PATH": False, "APPTAINER_SHELL": False,
               "APPTAINER_APPNAME": False, "LD_LIBRARY_PATH": True}
RUNTIME_PREFIXES = ("APPTAINER_", "SINGULARITY_", "SATCHEL_")
ENV_PREFIXES = ("SINGULARITYENV_", "APPTAINERENV_")  # later wins
PATH_KEYS = {"PATH": "SING_USER_DEFINED_PATH", "PREPEND_PATH": "SING_USER_DEFINED_PREPEND_PATH",
             "APPEND_PATH": "SING_USER_DEFINED_APPEND_PATH"}
# shell variables the action script passes itself; never exported by the user
SAVE_HOST = "__SATCHEL_HOST"
SAVE_FORCE = "__SATCHEL_FORCE"
SAVE_EVAL = "__SATCHEL_EVAL"


class ContainerEnv:
    """The execve() environment plus what the action script must restore after the image's env."""

    __slots__ = ("environ", "host_names", "forced_names", "warnings")

    def __init__(self, environ, host_names, forced_names, warnings):
        self.environ = environ
        self.host_names = host_names
        self.forced_names = forced_names
        self.warnings = warnings


def valid_name(name: str) -> bool:
    """A shell variable name: ASCII letters, digits and _, not starting with a digit.
    (Whole-string str methods: a per-character loop cost ~3 µs a name, for every variable
    of the caller's environment on every launch.)"""
    if not name or not name.isascii() or not (name[0].isalpha() or name[0] == "_"):
        return False
    return name.replace("_", "a").isalnum()


def parse_env_option(values) -> list[tuple[str, str]]:
    """--env values: K=V pairs, comma-separated; a piece without '=' continues the previous value
    (pflag's StringToString semantics, so --env "A=1,2" keeps the comma)."""
    pairs: list[list[str]] = []
    for value in values or ():
        for piece in value.split(","):
            key, eq, val = piece.partition("=")
            if eq and valid_name(key):
                pairs.append([key, val])
            elif pairs:
                pairs[-1][1] += "," + piece
            else:
                raise UsageError(f"invalid --env value {value!r}: expected KEY=VALUE")
    return [(k, v) for k, v in pairs]


def parse_env_file(text: str, path: str) -> list[tuple[str, str]]:
    """--env-file: KEY=VALUE lines, '#' comments, optional 'export ', '' or "" quotes.

    Apptainer evaluates the file with a shell interpreter; this covers the forms such files
    use in practice without running anything.
    """
    pairs = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, eq, val = line.partition("=")
        key = key.strip()
        if not eq or not valid_name(key):
            raise UsageError(f"{path}:{number}: expected KEY=VALUE, got {raw.strip()!r}")
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        pairs.append((key, val))
    return pairs


def build_environment(host_env: dict, *, cleanenv: bool, home: str, image_path: str,
                      command: str, env_pairs=(), env_file_pairs=(), extra=None,
                      bind_list: str = "",
                      shell: str | None = None, evaluate: bool = False) -> ContainerEnv:
    """Decide the environment of the container's first process (see the module docstring).

    evaluate: user-injected values are expanded by the container's shell (Apptainer's default;
    the plan passes `not --no-eval`).
    """
    warnings: list[str] = []
    env: dict[str, str] = {}
    forced: dict[str, str] = {}
    path_vars: dict[str, str] = {}

    # user-injected: SINGULARITYENV_ < APPTAINERENV_ < --env-file < --env
    for prefix in ENV_PREFIXES:
        for name, value in host_env.items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix):]
            if not key:
                continue
            if key in PATH_KEYS:
                path_vars[PATH_KEYS[key]] = value
                continue
            if ALWAYS_OMIT.get(key) is False:
                warnings.append(f"Overriding {key} environment variable with {name} is not "
                                "permitted")
                continue
            forced[key] = value
    for key, value in list(env_file_pairs) + list(env_pairs):
        if key in PATH_KEYS and key != "PATH":
            path_vars[PATH_KEYS[key]] = value
        elif key == "PATH":
            path_vars["SING_USER_DEFINED_PATH"] = value
        elif ALWAYS_OMIT.get(key) is False:
            warnings.append(f"Overriding {key} environment variable with --env is not permitted")
        else:
            forced[key] = value

    host_names = []
    if cleanenv:
        env["LANG"] = "C"
    for name, value in host_env.items():
        if name.startswith(RUNTIME_PREFIXES) or name.startswith(ENV_PREFIXES):
            continue
        if name in forced:
            continue
        if name in ALWAYS_PASS or (not cleanenv and name not in ALWAYS_OMIT):
            env[name] = value
            if valid_name(name):
                host_names.append(name)
    if cleanenv and "LANG" not in forced:
        host_names.append("LANG")

    user_keys = list(forced)
    env.update(forced)
    env.update(path_vars)
    env["HOME"] = home
    env["PATH"] = DEFAULT_PATH
    name = image_path.rstrip("/").rsplit("/", 1)[-1]
    for prefix in ("APPTAINER_", "SINGULARITY_"):
        env[prefix + "CONTAINER"] = image_path
        env[prefix + "NAME"] = name
        env[prefix + "COMMAND"] = command
        env[prefix + "ENVIRONMENT"] = "/.singularity.d/env/91-environment.sh"
        if bind_list:
            env[prefix + "BIND"] = bind_list
    if shell:
        env["SINGULARITY_SHELL"] = env["APPTAINER_SHELL"] = shell
    for key, value in (extra or {}).items():
        env[key] = value
        forced[key] = value
        if key in host_names:  # listed twice, the prologue's save loop would lose the value
            host_names.remove(key)
    forced_names = [n for n in forced if valid_name(n)]
    eval_names = []
    if evaluate:
        for key in user_keys:
            if valid_name(key) and key not in (extra or {}):
                env[key] = dq_escape(forced[key])
                eval_names.append(key)
    env[SAVE_HOST] = " ".join(host_names)
    env[SAVE_FORCE] = " ".join(forced_names)
    env[SAVE_EVAL] = " ".join(eval_names)
    return ContainerEnv(env, host_names, forced_names, warnings)


def dq_escape(text: str) -> str:
    """Text that, placed between double quotes and evaluated by sh, keeps `$` and backquote
    expansions live but reads `"` and `\\` literally (how injected values are evaluated)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def sh_quote(text: str) -> str:
    """Quote for POSIX sh (shlex costs an import on the exec path)."""
    return "'" + text.replace("'", "'\\''") + "'"


_PROLOGUE = r"""__satchel_h=${__SATCHEL_HOST-} __satchel_f=${__SATCHEL_FORCE-}
__satchel_e=${__SATCHEL_EVAL-}
unset __SATCHEL_HOST __SATCHEL_FORCE __SATCHEL_EVAL
for __satchel_k in $__satchel_h $__satchel_f; do
  eval "__satchel_v_$__satchel_k=\${$__satchel_k-}; unset $__satchel_k"
done
unset PS1
if [ -d /.singularity.d/env ]; then
  for __satchel_s in /.singularity.d/env/*.sh; do
    if [ -f "$__satchel_s" ]; then . "$__satchel_s"; fi
  done
elif [ -f /environment ]; then
  . /environment
fi
for __satchel_k in $__satchel_f; do
  eval "$__satchel_k=\$__satchel_v_$__satchel_k; export $__satchel_k; unset __satchel_v_$__satchel_k"
done
for __satchel_k in $__satchel_h; do
  eval "if [ -z \"\${$__satchel_k+x}\" ]; then $__satchel_k=\$__satchel_v_$__satchel_k; export $__satchel_k; fi; unset __satchel_v_$__satchel_k"
done
for __satchel_k in $__satchel_e; do
  eval "__satchel_t=\${$__satchel_k}"
  eval "$__satchel_k=\"$__satchel_t\""
done
unset __satchel_h __satchel_f __satchel_e __satchel_t __satchel_k __satchel_s
if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then PATH="$SING_USER_DEFINED_PREPEND_PATH:$PATH"; fi
if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then PATH="$PATH:$SING_USER_DEFINED_APPEND_PATH"; fi
if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then PATH="$SING_USER_DEFINED_PATH"; fi
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH
export PATH
"""

_LIBS_LAST = r"""case ":${LD_LIBRARY_PATH:-}:" in
  *:/.singularity.d/libs:*) ;;
  *) LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/.singularity.d/libs" ;;
esac
export LD_LIBRARY_PATH
"""
_LIBS_FIRST = r"""__satchel_l=/.singularity.d/libs __satchel_ifs=$IFS
set -f; IFS=:
for __satchel_p in ${LD_LIBRARY_PATH:-}; do
  case $__satchel_p in ''|/.singularity.d/libs) ;; *) __satchel_l="$__satchel_l:$__satchel_p" ;; esac
done
set +f; IFS=$__satchel_ifs
LD_LIBRARY_PATH=$__satchel_l; export LD_LIBRARY_PATH
unset __satchel_l __satchel_p __satchel_ifs
"""

_ACTIONS = {
    "exec": r"""if ! command -v "$1" >/dev/null 2>&1; then
  echo "FATAL:   \"$1\": executable file not found in \$PATH" >&2; exit 255
fi
exec "$@"
""",
    "run": r"""if [ -x /.singularity.d/runscript ]; then exec /.singularity.d/runscript "$@"; fi
if [ -x /singularity ]; then exec /singularity "$@"; fi
if [ -x /bin/sh ]; then
  echo "INFO:    No runscript found in container, executing /bin/sh" >&2; exec /bin/sh "$@"
fi
echo "FATAL:   No runscript and no /bin/sh executable found in container, aborting" >&2
exit 255
""",
    "test": r"""if [ -x /.singularity.d/test ]; then exec /.singularity.d/test "$@"; fi
echo "INFO:    No test script found in container, exiting" >&2
exit 0
""",
    "shell": r"""if [ -n "${SINGULARITY_SHELL:-}" ] && [ -x "$SINGULARITY_SHELL" ]; then
  SHELL=$SINGULARITY_SHELL; export SHELL; exec "$SINGULARITY_SHELL" "$@"
fi
if [ -n "${SINGULARITY_SHELL:-}" ]; then
  echo "FATAL:   shell $SINGULARITY_SHELL not found or not executable in container" >&2; exit 255
fi
if [ -x /bin/bash ]; then SHELL=/bin/bash; export SHELL; exec /bin/bash --norc "$@"; fi
SHELL=/bin/sh; export SHELL
exec /bin/sh "$@"
""",
}


# payloads only an instance runs (satchel.instance): `instance start` runs the %startscript,
# and an image without one still makes an instance (its init waits for `instance stop`)
_INSTANCE_ACTIONS = {
    "start": r"""if [ -x /.singularity.d/startscript ]; then
  exec /.singularity.d/startscript "$@"
fi
exit 0
""",
}


def action_script(command: str, prompt: str, libs_first: bool = False,
                  instance: bool = False) -> str:
    """The sh program run as `/bin/sh -c SCRIPT NAME ARGS...` inside the container.

    The one source of the action scripts: the build writes action_file() of each action into
    /.singularity.d/actions (build/layout.py), so an image's own scripts do what the runtime
    does (tests/unit/test_layout.py checks they agree)."""
    body = _ACTIONS.get(command) or (_INSTANCE_ACTIONS.get(command) if instance else None)
    if body is None:
        raise UsageError(f"unknown container action {command!r}")
    libs = _LIBS_FIRST if libs_first else _LIBS_LAST
    ps1 = f'if [ -z "${{PS1:-}}" ]; then PS1={sh_quote(prompt)}; fi\nexport PS1\n'
    return _PROLOGUE + libs + ps1 + body


DEFAULT_PROMPT = "Satchel> "
# the files of /.singularity.d/actions; "start" is what `instance start` runs
ACTION_FILES = tuple(_ACTIONS) + tuple(_INSTANCE_ACTIONS)


def action_file(command: str) -> str:
    """Text of /.singularity.d/actions/COMMAND in every image: the very script `satchel
    COMMAND` runs (default prompt, host libraries last), as an executable sh file. Without the
    runtime's variables (__SATCHEL_*) its prologue only sources the image's env scripts, so the
    file also works alone (`/.singularity.d/actions/exec CMD`, the /.run links, %post)."""
    return "#!/bin/sh\n" + action_script(command, DEFAULT_PROMPT,
                                          instance=command in _INSTANCE_ACTIONS)
