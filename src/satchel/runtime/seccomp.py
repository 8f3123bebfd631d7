"""seccomp filters through libseccomp (ctypes): `--security seccomp:PROFILE.json` of satchel
exec/run/shell and `linux.seccomp` of an OCI config.json (satchel oci) alike.

Two halves, so that a bad profile is one FATAL line before anything is set up:
- compile_document(doc, ...) at plan time: check the profile (an OCI/Docker seccomp profile,
  runtime-spec config-linux.md#seccomp), keep the rules that apply here, resolve every syscall
  name with libseccomp and return the filter as immutable data (default action, rules,
  architectures) for the plan's SECCOMP / OCI_PROCESS / OCI_SECCOMP operation.
  compile_profile(path) reads --security's file first (json is imported only there: the exec
  path without --security never loads it); ocirt/plan.py passes config.json's object.
- load(data), in the executor: seccomp_init with the default action, the listed architectures,
  one seccomp_rule_add_array per syscall and argument set, seccomp_load. libseccomp's own
  no_new_privs attribute is off: the caller sets no_new_privs when its contract says so
  (satchel exec always, before; an OCI process when process.noNewPrivileges asks).

Profile format: defaultAction, defaultErrnoRet, architectures[], syscalls[] of {names (or
name), action, errnoRet, args[] of {index, value, valueTwo, op}, includes/excludes {caps,
arches}}. The container holds no capability from a Docker rule's point of view, so a rule that
`includes` capabilities never applies; `arches` conditions compare with the host's.
architectures[] adds those to the native one (a call of another listed ABI then meets the same
rules instead of the kill action). A syscall name this libseccomp does not know is an error
for --security; for OCI it is skipped, as runc skips it (profiles list newer kernels' calls).
Several comparisons of one argument cannot share a rule (libseccomp: EINVAL): they become one
rule each, as runc does. Notification listeners (listenerPath, SCMP_ACT_NOTIFY) are refused.
"""

from __future__ import annotations

import os

from satchel.errors import ContainerError, UsageError

ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000, "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_WITH_VALUE = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
             "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# profile architecture -> libseccomp's name for seccomp_arch_resolve_name
ARCHES = {"SCMP_ARCH_X86": "x86", "SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X32": "x32",
          "SCMP_ARCH_ARM": "arm", "SCMP_ARCH_AARCH64": "aarch64", "SCMP_ARCH_MIPS": "mips",
          "SCMP_ARCH_MIPS64": "mips64", "SCMP_ARCH_MIPS64N32": "mips64n32",
          "SCMP_ARCH_MIPSEL": "mipsel", "SCMP_ARCH_MIPSEL64": "mipsel64",
          "SCMP_ARCH_MIPSEL64N32": "mipsel64n32", "SCMP_ARCH_PPC": "ppc",
          "SCMP_ARCH_PPC64": "ppc64", "SCMP_ARCH_PPC64LE": "ppc64le", "SCMP_ARCH_S390": "s390",
          "SCMP_ARCH_S390X": "s390x", "SCMP_ARCH_RISCV64": "riscv64"}
# uname -m -> the profile's name of the native architecture (Docker's includes/excludes)
_HOST_ARCHES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64",
                "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
                "riscv64": "SCMP_ARCH_RISCV64", "i686": "SCMP_ARCH_X86"}
_EPERM = 1
_EEXIST = 17
_SCMP_FLTATR_CTL_NNP = 3
_lib = None


def library():
    """libseccomp.so.2 through ctypes (Debian: libseccomp2), loaded once; an OCI create loads
    it before pivot_root (the container's root has none of the host's libraries)."""
    global _lib
    if _lib is None:
        import ctypes
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as err:
            raise ContainerError(f"a seccomp profile needs libseccomp ({err})",
                                 hint="install libseccomp2") from None
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_add.restype = ctypes.c_int
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_attr_set.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.c_void_p]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_load.restype = ctypes.c_int
        _lib = lib
    return _lib


def _action(name, errno_ret, where: str, error, default_errno: int = _EPERM) -> int:
    """An action's number; errnoRet (ERRNO, TRACE) defaults to EPERM (defaultErrnoRet is the
    default action's only, as in runc)."""
    if not isinstance(name, str) or name not in ACTIONS:
        raise error(f"{where}: unknown action {name!r}; expected one of "
                    + ", ".join(sorted(ACTIONS)))
    value = ACTIONS[name]
    if name in _WITH_VALUE:
        number = default_errno if errno_ret is None else errno_ret
        if not isinstance(number, int) or not 0 <= number <= 0xFFFF:
            raise error(f"{where}: errnoRet {number!r} is not a number from 0 to 65535")
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


def _args(rule: dict, where: str, error) -> tuple:
    out = []
    for arg in rule.get("args") or ():
        if not isinstance(arg, dict):
            raise error(f"{where}: each of args must be an object")
        op = arg.get("op")
        if op not in OPERATORS:
            raise error(f"{where}: unknown args op {op!r}")
        index, value, two = arg.get("index"), arg.get("value", 0), arg.get("valueTwo", 0)
        if not isinstance(index, int) or not 0 <= index <= 5:
            raise error(f"{where}: args index {index!r} is not 0 to 5")
        for number in (value, two):
            if not isinstance(number, int) or not 0 <= number < 1 << 64:
                raise error(f"{where}: args value {number!r} is not an unsigned number")
        out.append((index, OPERATORS[op], value, two))
    return tuple(out)


def _groups(args: tuple) -> tuple:
    """The argument sets one rule each: all together, or one per comparison where two compare
    the same argument (libseccomp refuses that in one rule; runc splits them the same way)."""
    indices = [a[0] for a in args]
    if len(set(indices)) == len(indices):
        return (args,)
    return tuple((a,) for a in args)


def _arches(doc: dict, where: str, error) -> tuple:
    arches = doc.get("architectures") or []
    if not isinstance(arches, list):
        raise error(f"{where}: architectures must be a list")
    for arch in arches:
        if arch not in ARCHES:
            raise error(f"{where}: unknown architecture {arch!r}")
    return tuple(ARCHES[a] for a in arches)


def compile_document(doc, where: str, error=UsageError, skip_unknown: bool = False) -> tuple:
    """A profile (parsed JSON) as plan data: (default action, ((nr, action, args), ...),
    (libseccomp architecture names, ...)). Errors are `error`s whose text starts with
    `where`; skip_unknown: a syscall name libseccomp does not know is left out (OCI)."""
    if not isinstance(doc, dict) or "defaultAction" not in doc:
        raise error(f"{where}: not a seccomp profile (no defaultAction)")
    if doc.get("listenerPath"):
        raise error(f"{where}: seccomp notification (listenerPath) is not supported")
    default_errno = doc.get("defaultErrnoRet", _EPERM)
    default = _action(doc["defaultAction"], default_errno, where, error)
    syscalls = doc.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise error(f"{where}: syscalls must be a list")
    arches = _arches(doc, where, error)
    lib = library()
    host_arch = _HOST_ARCHES.get(os.uname().machine, "")
    rules = []
    for number, rule in enumerate(syscalls):
        rule_where = f"{where}: syscalls[{number}]"
        if not isinstance(rule, dict):
            raise error(f"{rule_where}: not an object")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise error(f"{rule_where}: names must be a list of syscall names")
        action = _action(rule.get("action"), rule.get("errnoRet"), rule_where, error)
        args = _args(rule, rule_where, error)
        if not _applies(rule, host_arch):
            continue
        for name in names:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                if skip_unknown:
                    continue
                raise error(f"{rule_where}: unknown system call {name!r}")
            if action != default:  # libseccomp refuses a rule that repeats the default
                rules.extend((nr, action, group) for group in _groups(args))
    return default, tuple(rules), arches


def compile_profile(path: str) -> tuple:
    """--security seccomp:PATH: the profile file as plan data (compile_document)."""
    import json
    from satchel import fsutil
    where = f"--security seccomp:{path}"
    try:
        doc = json.loads(fsutil.read_regular(path, follow=True))
    except OSError as err:
        raise UsageError(f"{where}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{where}: not a JSON seccomp profile ({err})") from None
    return compile_document(doc, where)


def load(data: tuple) -> None:
    """Install the compiled filter in this process (inherited by what it execs)."""
    import ctypes

    class ArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    lib = library()
    default, rules, arches = data
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ContainerError("seccomp_init failed (out of memory?)")
    try:
        for arch in arches:
            token = lib.seccomp_arch_resolve_name(arch.encode())
            rc = lib.seccomp_arch_add(ctx, token) if token else 0
            if rc < 0 and rc != -_EEXIST:  # EEXIST: the native one
                raise ContainerError(f"seccomp: adding architecture {arch}: {os.strerror(-rc)}")
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0)
        for nr, action, args in rules:
            array = (ArgCmp * max(len(args), 1))(*[ArgCmp(*a) for a in args])
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), array)
            if rc < 0 and rc != -_EEXIST:  # the same rule twice (names listed twice)
                raise ContainerError(f"seccomp: adding the rule for system call {nr}: "
                                     f"{os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise ContainerError(f"seccomp: loading the filter: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)
