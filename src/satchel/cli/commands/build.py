"""satchel build: build a SIF image (or a sandbox directory) from a definition file or image."""

from __future__ import annotations

from satchel.cli import options as o

_NO_GPU = "GPUs are not bound into %post/%test; build on the host, run with --nv/--rocm"
# Apptainer 1.3 build flags satchel parses and refuses (tests/unit/test_apptainer_command_flags.py)
REFUSED = (
    o.refused("-B --bind", "bind", "binds into %post are not supported yet", o.LIST),
    o.refused("--mount", "mount", "binds into %post are not supported yet", o.LIST),
    o.refused("--docker-host", "docker_host", "satchel does not talk to a Docker daemon",
              o.VALUE),
    o.refused("-e --encrypt", "encrypt", "satchel cannot build encrypted images"),
    o.refused("--passphrase", "passphrase", "satchel cannot build encrypted images"),
    o.refused("--pem-path", "pem_path", "satchel cannot build encrypted images", o.VALUE),
    o.refused("--json", "json", "JSON build definitions are not supported"),
    o.refused("--library", "library", "no library endpoint is configured here", o.VALUE),
    o.refused("--remote", "remote", "there is no remote build service"),
    o.refused("--no-cleanup", "no_cleanup",
              "satchel always removes a failed build's temporary files"),
    o.refused("--nv", "nv", _NO_GPU),
    o.refused("--rocm", "rocm", _NO_GPU),
    o.refused("--nvccli", "nvccli", _NO_GPU),
    o.refused("--writable-tmpfs", "writable_tmpfs",
              "%test runs on the built root file system directly"),
)

SPECS = {
    "build": o.Spec(
        "build", "build [build options...] <image path> <build spec>",
        "Build an Apptainer-compatible image",
        description=(
            "Build a SIF image (or with --sandbox a directory) from a definition file, a URI\n"
            "(docker://..., localimage://...), an existing SIF/SquashFS image or a sandbox.\n"
            "As a non-root user the build runs in a user namespace (--fakeroot) automatically."),
        options=(
            o.Opt("-s --sandbox", "sandbox", help="build image as sandbox format (chroot directory structure)"),
            o.Opt("-F --force", "force", help="overwrite an image file if it exists"),
            o.Opt("-f --fakeroot", "fakeroot", env=("APPTAINER_FAKEROOT", "SINGULARITY_FAKEROOT"),
                  help="build as uid 0 of a user namespace (subordinate ids from /etc/subuid)"),
            o.Opt("-T --notest", "notest", help="build without running tests in %test section"),
            o.Opt("--section", "sections", o.LIST, metavar="strings",
                  help="only run specific section(s) of deffile (setup, post, files, environment, test, labels, none)"),
            o.Opt("-u --update", "update", help="run definition over existing container (skips header)"),
            o.Opt("--build-arg", "build_args", o.LIST, metavar="strings",
                  help="defines variable=value to replace {{ variable }} entries in build definition file"),
            o.Opt("--build-arg-file", "build_arg_file", o.VALUE,
                  help="specifies a file containing variable=value lines to replace '{{ variable }}' with value in build definition files"),
            o.Opt("--warn-unused-build-args", "warn_unused_build_args",
                  help="shows warning instead of fatal message when build args are not exact matched"),
            o.Opt("--mksquashfs-args", "mksquashfs_args", o.VALUE,
                  env=("APPTAINER_MKSQUASHFS_ARGS", "SINGULARITY_MKSQUASHFS_ARGS"),
                  help="additional arguments for mksquashfs (e.g. '-comp gzip'; default zstd level 3)"),
            o.Opt("--tmpdir", "tmpdir", o.VALUE, env=("APPTAINER_TMPDIR", "SINGULARITY_TMPDIR"),
                  help="directory for the build's temporary files (default: next to the target)"),
            o.Opt("--fix-perms", "fix_perms", help="ensure owner has rwX permissions on all container content"),
            o.Opt("--ignore-subuid", "ignore_subuid",
                  help="use a root-mapped user namespace even if /etc/subuid has a range"),
            o.Opt("--no-https --nohttps", "nohttps",
                  help="use http instead of https for docker:// registries"),
            o.Opt("--userns", "userns", hidden=True,
                  help="accepted: a non-root build always runs in a user namespace"),
            o.Opt("--ignore-userns --ignore-fakeroot-command", "ignore_userns", hidden=True,
                  help="accepted with no effect (satchel runs no fakeroot command)"),
            o.Opt("--disable-cache", "disable_cache", help="do not use cache or create cache"),
            o.Opt("--authfile", "authfile", o.VALUE, help="docker-style auth file to use for registries"),
            o.Opt("--docker-login", "docker_login", help="login to a Docker Repository interactively"),
            o.Opt("--docker-username", "docker_username", o.VALUE,
                  env=("APPTAINER_DOCKER_USERNAME", "SINGULARITY_DOCKER_USERNAME"),
                  help="username for Docker Repository authentication"),
            o.Opt("--docker-password", "docker_password", o.VALUE,
                  env=("APPTAINER_DOCKER_PASSWORD", "SINGULARITY_DOCKER_PASSWORD"),
                  help="password for Docker Repository authentication"),
            o.Opt("--arch", "arch", o.VALUE, help="architecture to pull from a registry (e.g. arm64)"),
        ) + tuple(r[0] for r in REFUSED),
        min_args=2, max_args=2,
        examples=("  satchel build image.sif image.def\n"
                  "  satchel build --sandbox dir/ docker://alpine\n"
                  "  satchel build --fakeroot image.sif image.def"),
    ),
}


def run(name: str, parsed) -> int:
    from satchel.build.builder import SECTION_NAMES, BuildOptions, build
    from satchel.errors import UsageError
    o.check_refused(parsed, REFUSED)
    sections = []
    for item in parsed.sections:
        sections.extend(s.strip() for s in item.split(",") if s.strip())
    for section in sections:
        if section not in SECTION_NAMES:
            raise UsageError(f"invalid --section {section!r}",
                             hint="choose from " + ", ".join(SECTION_NAMES))
    options = BuildOptions(
        sandbox=parsed.sandbox, force=parsed.force, fakeroot=parsed.fakeroot,
        notest=parsed.notest, sections=sections or None, update=parsed.update,
        build_args=parsed.build_args, build_arg_file=parsed.build_arg_file,
        warn_unused_build_args=parsed.warn_unused_build_args,
        mksquashfs_args=parsed.mksquashfs_args, tmpdir=parsed.tmpdir, fix_perms=parsed.fix_perms,
        ignore_subuid=parsed.ignore_subuid, nohttps=parsed.nohttps,
        disable_cache=parsed.disable_cache, authfile=parsed.authfile,
        docker_login=parsed.docker_login, arch=parsed.arch,
        docker_username=parsed.docker_username, docker_password=parsed.docker_password)
    target, source = parsed.args
    build(target, source, options)
    return 0
