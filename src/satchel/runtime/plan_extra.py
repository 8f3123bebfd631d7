"""The plan steps of options most launches do not use, out of plan.py so that a plain `exec`
does not load them (DESIGN.md, "The exec path imports little"): joining a running container
(instance://, --sharens), --net/--network(-args), --dns, -S/--scratch, --nv/--rocm, --fusemount
and overlay images. plan.build_plan() calls them through plan._extra() only when the option is
given; they decide as plan.py's steps do and add operations to the same _Plan.
"""

from __future__ import annotations

import posixpath

from satchel.errors import ContainerError, UsageError
from satchel.runtime.plan import (CHDIR, CHECK_SHELL, DROP_CAPS, EXEC, FORK_INIT, FUSE_WAIT,
                                  JOIN_NAMESPACES, MOUNT_EXT3, MOUNT_EXT3_LOOP, MOUNT_FUSE,
                                  MOUNT_SQUASHFS_FUSE, MOUNT_SQUASHFS_LOOP, ContainerPlan, Op,
                                  RunOptions, _clean, _environment_and_argv, _home_dirs, _Plan)


def layers(p: _Plan) -> None:
    """The overlay images (--overlay files, a SIF's overlay partition), each on its mount
    point in the session, before the overlay that stacks them."""
    for layer in p.layers.images if p.layers is not None else ():
        ro = ("ro",) if layer.readonly else ()
        if layer.fs == "ext3" and p.rootless:
            p.add(MOUNT_EXT3, layer.name, layer.mountpoint)
        elif layer.fs == "ext3":
            p.add(MOUNT_EXT3_LOOP, layer.path, layer.mountpoint, ro + ("nosuid", "nodev"),
                  (layer.offset, layer.size))
        elif p.rootless:
            p.add(MOUNT_SQUASHFS_FUSE, layer.name, layer.mountpoint,
                  ("ro", "nosuid", "nodev") + p.fuse_flags, p.fuse_ids)
            p.add(FUSE_WAIT, layer.name)
        else:
            p.add(MOUNT_SQUASHFS_LOOP, layer.path, layer.mountpoint, ("ro", "nosuid", "nodev"),
                  (layer.offset, layer.size))


def gpus(p: _Plan) -> None:
    """--nv/--rocm: the driver's libraries, programs and devices found by hpc/gpu.py."""
    for gpu in p.opts.gpu or ():
        for lib in gpu.libraries:
            p.bind(lib, "/.singularity.d/libs/" + posixpath.basename(lib), "file",
                   readonly=True, rec=False)
        for src, dst in gpu.binaries:
            p.bind(src, dst, "file", readonly=True, rec=False)
        for dev in gpu.devices:
            kind = p.host.path_kind(dev) or "file"
            p.bind(dev, "/dev/" + posixpath.basename(dev), kind, rec=kind == "dir")
        p.gpu_env.update(gpu.env)
        p.warnings.extend(gpu.warnings)


def fusemounts(p: _Plan) -> None:
    """--fusemount: each program's /dev/fuse mounted at its container path (made if missing,
    as a user bind's), then the program started; the mount must answer (FUSE_WAIT check)."""
    for mount in p.opts.fusemounts:
        p.ensure(mount.mountpoint, "dir", user=True)
        p.add(MOUNT_FUSE, mount.name, mount.mountpoint, ("root", "nosuid", "nodev"),
              (p.host.uid, p.host.gid))
        p.add(FUSE_WAIT, mount.name, mount.mountpoint, flags=("check",))


_FIXED_BY_INSTANCE = ("binds", "contain", "containall", "home", "no_home", "no_mount",
                      "workdir", "writable_tmpfs", "overlay", "pid", "ipc", "uts", "hostname",
                      "net", "gpu")


def join_plan(opts: RunOptions, config, host):
    """exec|run|shell instance://NAME: enter the instance's namespaces instead of building.

    The instance's mount namespace already holds the pivoted container root, so setns() into
    it (after its user namespace, which gives the capabilities to do so) lands in the
    container; with a PID namespace a fork puts the payload inside it.
    """
    target = opts.join
    warnings = []
    ignored = [name for name in _FIXED_BY_INSTANCE if getattr(opts, name, None)]
    if ignored:
        warnings.append(f"options fixed when instance {target.name} started are ignored: "
                        + ", ".join("--" + n.replace("_", "-") for n in ignored))
    names = [n for n in ("user", "mount", "ipc", "uts", "net", "pid") if n in target.namespaces]
    if "mount" not in names:
        raise ContainerError(f"instance {target.name} has no mount namespace to join")
    ops = [Op(JOIN_NAMESPACES, data=(target.pid, tuple(names)))]
    if "pid" in names:
        ops.append(Op(FORK_INIT))
    _, home_dst, _ = _home_dirs(opts, host)
    cwd = (opts.pwd,) if opts.pwd else tuple(c for c in (host.cwd, home_dst, "/") if c)
    ops += [Op(CHDIR, data=cwd, flags=("strict",) if opts.pwd else ()), Op(DROP_CAPS),
            Op(CHECK_SHELL, None, "/bin/sh"), Op(EXEC, "/bin/sh")]
    environ, argv = _environment_and_argv(opts, host, target.image, home_dst, (), {},
                                          opts.cleanenv or opts.containall, warnings)
    from satchel.image.formats import ImageRef
    return ContainerPlan(
        rootless=host.uid != 0, namespaces=tuple(names), uid=host.uid, gid=host.gid,
        session=None, root="/", ops=tuple(ops), environ=environ, argv=argv, cwd=cwd,
        hostname=None, image=ImageRef(target.image, "instance"), warnings=warnings, server=None)


def scratch_dirs(values) -> list[str]:
    """-S/--scratch: absolute container directories (comma-separated lists allowed)."""
    out = []
    for value in values or ():
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if not item.startswith("/") or _clean(item) == "/":
                raise UsageError(f"--scratch {item}: expected an absolute directory below /")
            out.append(_clean(item))
    return out


def resolv_conf(servers: str) -> str:
    """--dns 1.1.1.1,8.8.8.8 -> resolv.conf text (one nameserver line each)."""
    names = [s.strip() for s in servers.split(",") if s.strip()]
    for name in names:
        if not all(c.isalnum() or c in ".:%" for c in name):
            raise UsageError(f"--dns {name!r}: not an IP address")
    return "".join(f"nameserver {name}\n" for name in names)


SUPPORTED_NETWORKS = ("none",)


def network_request(opts: RunOptions, warnings: list) -> tuple:
    """Check --net/--network/--network-args; return the network args as (key, value) pairs.

    Only `none` is provided: a new network namespace with the loopback interface up, which a
    non-root user may create (the namespace belongs to the user namespace). Apptainer's
    default network is `bridge` (CNI, root only): satchel says so rather than silently
    giving a container without network to a caller who asked for one.
    """
    pairs = []
    for value in opts.network_args or ():
        text = value.strip()
        # tolerate a literal layer of quotes, as shells in job scripts leave them
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1].strip()
        key, eq, val = text.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"invalid --network-args value {value!r}: expected KEY=VALUE")
        pairs.append((key.strip(), val.strip()))
    if not opts.net:
        if opts.network or pairs:
            warnings.append("--network and --network-args have no effect without --net")
        return ()
    names = [n.strip() for n in (opts.network or "").split(",") if n.strip()]
    if not names:
        raise UsageError("--net without --network asks for Apptainer's default 'bridge' "
                         "network, which satchel does not provide",
                         hint="use --net --network none for a private network with only "
                              "the loopback interface")
    for name in names:
        if name not in SUPPORTED_NETWORKS:
            raise UsageError(f"network {name!r} is not supported by satchel: only 'none' "
                             "(a private network namespace with loopback only)")
    if pairs:
        warnings.append("--network-args have no effect with --network none: ignored")
    return tuple(pairs)
