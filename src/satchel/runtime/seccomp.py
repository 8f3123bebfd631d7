"""--security seccomp:PROFILE.json: an OCI/Docker seccomp profile, through libseccomp.

Two halves, so that a bad profile is one FATAL line before anything is set up:
- compile_profile(path), at plan time: read the JSON (imported only here: the exec path without
  --security never loads json), keep the rules that apply here, resolve every syscall name
  with libseccomp (an unknown name is an error, not a silently missing rule) and return the
  filter as immutable data for the plan's SECCOMP operation;
- load(data), the executor's last step before the exec (after no_new_privs and the
  capability drop, so an unprivileged process may load it): seccomp_init with the default
  action, one seccomp_rule_add_array per syscall and argument set, seccomp_load.

Profile format (runtime-spec config-linux.md#seccomp, Docker's profiles): defaultAction,
defaultErrnoRet, syscalls[] of {names (or name), action, errnoRet, args[] of {index, value,
valueTwo, op}, includes/excludes {caps, arches}}. The container holds no capability, so a
rule that `includes` capabilities never applies; `arches` conditions compare with the host's.
Only the native architecture is filtered (architectures[] adds nothing: a 32-bit syscall on
x86_64 then fails the architecture check and gets the kill action, libseccomp's default).
"""

from __future__ import annotations

import os

from satchel.errors import ContainerError, UsageError

_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000, "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_WITH_VALUE = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_ARCHES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64",
           "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
           "riscv64": "SCMP_ARCH_RISCV64", "i686": "SCMP_ARCH_X86"}
_EPERM = 1
_lib = None


def _libseccomp():
    """libseccomp.so.2 through ctypes (Debian: libseccomp2), loaded once."""
    global _lib
    if _lib is None:
        import ctypes
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as err:
            raise ContainerError(f"--security seccomp: cannot load libseccomp ({err})",
                                 hint="install libseccomp2") from None
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.c_void_p]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_load.restype = ctypes.c_int
        _lib = lib
    return _lib


def _action(name, errno_ret, where: str, default_errno: int = _EPERM) -> int:
    if not isinstance(name, str) or name not in _ACTIONS:
        raise UsageError(f"{where}: unknown action {name!r}; expected one of "
                         + ", ".join(sorted(_ACTIONS)))
    value = _ACTIONS[name]
    if name in _WITH_VALUE:
        number = default_errno if errno_ret is None else errno_ret
        if not isinstance(number, int) or not 0 <= number <= 0xFFFF:
            raise UsageError(f"{where}: errnoRet {number!r} is not a number from 0 to 65535")
        value |= number
    return value


def _applies(rule: dict, host_arch: str) -> bool:
    """Docker's includes/excludes, for a container without capabilities on this arch."""
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("caps"):
        return False
    if includes.get("arches") and host_arch not in includes["arches"]:
        return False
    if excludes.get("arches") and host_arch in excludes["arches"]:
        return False
    return True


def _args(rule: dict, where: str) -> tuple:
    out = []
    for arg in rule.get("args") or ():
        if not isinstance(arg, dict):
            raise UsageError(f"{where}: each of args must be an object")
        op = arg.get("op")
        if op not in _OPS:
            raise UsageError(f"{where}: unknown args op {op!r}")
        index, value, two = arg.get("index"), arg.get("value", 0), arg.get("valueTwo", 0)
        if not isinstance(index, int) or not 0 <= index <= 5:
            raise UsageError(f"{where}: args index {index!r} is not 0 to 5")
        for number in (value, two):
            if not isinstance(number, int) or not 0 <= number < 1 << 64:
                raise UsageError(f"{where}: args value {number!r} is not an unsigned number")
        out.append((index, _OPS[op], value, two))
    return tuple(out)


def compile_profile(path: str) -> tuple:
    """The profile at `path` as plan data: (default action, ((nr, action, args), ...))."""
    import json
    from satchel import fsutil
    where = f"--security seccomp:{path}"
    try:
        doc = json.loads(fsutil.read_regular(path, follow=True))
    except OSError as err:
        raise UsageError(f"{where}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{where}: not a JSON seccomp profile ({err})") from None
    if not isinstance(doc, dict) or "defaultAction" not in doc:
        raise UsageError(f"{where}: not a seccomp profile (no defaultAction)")
    default_errno = doc.get("defaultErrnoRet", _EPERM)
    default = _action(doc["defaultAction"], default_errno, where)
    syscalls = doc.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise UsageError(f"{where}: syscalls must be a list")
    lib = _libseccomp()
    host_arch = _ARCHES.get(os.uname().machine, "")
    rules = []
    for number, rule in enumerate(syscalls):
        rule_where = f"{where}: syscalls[{number}]"
        if not isinstance(rule, dict):
            raise UsageError(f"{rule_where}: not an object")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"{rule_where}: names must be a list of syscall names")
        action = _action(rule.get("action"), rule.get("errnoRet"), rule_where, _EPERM)
        args = _args(rule, rule_where)
        if not _applies(rule, host_arch):
            continue
        for name in names:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                raise UsageError(f"{rule_where}: unknown system call {name!r}")
            if action != default:  # libseccomp refuses a rule that repeats the default
                rules.append((nr, action, args))
    return default, tuple(rules)


def load(data: tuple) -> None:
    """Install the compiled filter in this process (no_new_privs must be set already)."""
    import ctypes

    class ArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    lib = _libseccomp()
    default, rules = data
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ContainerError("seccomp_init failed (out of memory?)")
    try:
        for nr, action, args in rules:
            array = (ArgCmp * max(len(args), 1))(*[ArgCmp(*a) for a in args])
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), array)
            if rc < 0:
                raise ContainerError(f"seccomp: adding the rule for system call {nr}: "
                                     f"{os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise ContainerError(f"seccomp: loading the filter: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)
