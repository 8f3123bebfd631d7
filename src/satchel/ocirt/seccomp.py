"""linux.seccomp of an OCI spec, loaded through libseccomp (ctypes), as runc does.

compile_profile() checks the profile and turns it into plain data at plan time (actions and
operators as numbers; an unknown action, operator or architecture is an error, never
skipped); load() builds the filter with libseccomp and installs it in the container's init.
A syscall name this libseccomp does not know is skipped, as runc skips it: profiles list
calls of newer kernels. Without libseccomp.so.2 a profile is refused in one line.
"""

from __future__ import annotations

import os

from satchel.errors import ConfigError, ContainerError

ACTIONS = {"SCMP_ACT_KILL": 0, "SCMP_ACT_KILL_THREAD": 0, "SCMP_ACT_KILL_PROCESS": 0x80000000,
           "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7ff00000,
           "SCMP_ACT_ALLOW": 0x7fff0000, "SCMP_ACT_LOG": 0x7ffc0000}
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
             "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
ARCHES = {"SCMP_ARCH_X86": "x86", "SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X32": "x32",
          "SCMP_ARCH_ARM": "arm", "SCMP_ARCH_AARCH64": "aarch64", "SCMP_ARCH_MIPS": "mips",
          "SCMP_ARCH_MIPS64": "mips64", "SCMP_ARCH_MIPS64N32": "mips64n32",
          "SCMP_ARCH_MIPSEL": "mipsel", "SCMP_ARCH_MIPSEL64": "mipsel64",
          "SCMP_ARCH_MIPSEL64N32": "mipsel64n32", "SCMP_ARCH_PPC": "ppc",
          "SCMP_ARCH_PPC64": "ppc64", "SCMP_ARCH_PPC64LE": "ppc64le", "SCMP_ARCH_S390": "s390",
          "SCMP_ARCH_S390X": "s390x", "SCMP_ARCH_RISCV64": "riscv64"}
EPERM = 1
SCMP_FLTATR_CTL_NNP = 3


def _action(name, errno_ret, default_errno: int, where: str) -> int:
    if name not in ACTIONS:
        raise ConfigError(f"config.json: {where}: seccomp action {name!r} is not supported")
    value = ACTIONS[name]
    if name == "SCMP_ACT_ERRNO":
        value |= (errno_ret if errno_ret is not None else default_errno) & 0xFFFF
    elif name == "SCMP_ACT_TRACE":
        value |= (errno_ret if errno_ret is not None else default_errno) & 0xFFFF
    return value


def compile_profile(profile: dict) -> dict:
    """The profile as {default, arches, rules: [(action, [names], [(arg, op, a, b)])]}."""
    default_errno = profile.get("defaultErrnoRet", EPERM)
    if not isinstance(default_errno, int):
        raise ConfigError("config.json: linux.seccomp.defaultErrnoRet must be an integer")
    default = _action(profile.get("defaultAction", ""), None, default_errno,
                      "linux.seccomp.defaultAction")
    arches = []
    for arch in profile.get("architectures") or ():
        if arch not in ARCHES:
            raise ConfigError(f"config.json: seccomp architecture {arch!r} is unknown")
        arches.append(ARCHES[arch])
    if profile.get("listenerPath"):
        raise ConfigError("config.json: seccomp notification (listenerPath) is not supported")
    rules = []
    for i, rule in enumerate(profile.get("syscalls") or ()):
        where = f"linux.seccomp.syscalls[{i}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("names"), list):
            raise ConfigError(f"config.json: {where} needs a list of names")
        action = _action(rule.get("action", ""), rule.get("errnoRet"), default_errno, where)
        args = []
        for arg in rule.get("args") or ():
            op = arg.get("op")
            if op not in OPERATORS:
                raise ConfigError(f"config.json: {where}: seccomp operator {op!r} unknown")
            args.append((int(arg.get("index", 0)), OPERATORS[op], int(arg.get("value", 0)),
                         int(arg.get("valueTwo", 0))))
        rules.append((action, [str(n) for n in rule["names"]], args))
    return {"default": default, "arches": arches, "rules": rules}


_lib = None


def library():
    """libseccomp, loaded once (before pivot_root: the container has none of the host's)."""
    global _lib
    if _lib is None:
        _lib = _load_library()
    return _lib


def _load_library():
    import ctypes

    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise ContainerError("the spec has a seccomp profile but libseccomp.so.2 is not "
                             "installed: install libseccomp2 or remove linux.seccomp") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_void_p)
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    return lib


def load(data: dict) -> None:
    """Build the filter and install it in this process (inherited by what it execs)."""
    import ctypes
    import struct

    data = dict(data)
    lib = library()
    ctx = lib.seccomp_init(data["default"])
    if not ctx:
        raise ContainerError("seccomp_init failed")
    try:
        for arch in data["arches"]:
            token = lib.seccomp_arch_resolve_name(arch.encode())
            rc = lib.seccomp_arch_add(ctx, token) if token else 0
            if rc not in (0, -17):  # -EEXIST: the native one
                raise ContainerError(f"seccomp: adding architecture {arch}: {os.strerror(-rc)}")
        # no_new_privs is the spec's to set (process.noNewPrivileges), not libseccomp's
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)
        for action, names, args in data["rules"]:
            if action == data["default"]:
                continue  # libseccomp refuses rules equal to the default action
            # comparisons of one argument cannot share a rule (libseccomp: EINVAL): runc
            # then adds one rule per comparison
            indices = [a[0] for a in args]
            groups = [args] if len(set(indices)) == len(indices) else [[a] for a in args]
            for group in groups:
                table = b"".join(struct.pack("=IIQQ", *a) for a in group)
                buf = ctypes.create_string_buffer(table, max(len(table), 1))
                for name in names:
                    number = lib.seccomp_syscall_resolve_name(name.encode())
                    if number < 0:
                        continue  # unknown to this libseccomp (a newer kernel's call)
                    rc = lib.seccomp_rule_add_array(ctx, action, number, len(group), buf)
                    if rc < 0 and rc != -17:  # EEXIST: the same rule is already there
                        raise ContainerError(f"seccomp: adding the rule for {name}: "
                                             f"{os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise ContainerError(f"seccomp: loading the filter: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)
