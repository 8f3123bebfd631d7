"""satchel pull: download an OCI/Docker image and convert it to a SIF file (through the cache)."""

from __future__ import annotations

from satchel.cli import options as o

# Apptainer 1.3 pull flags satchel parses and refuses (tests/unit/test_apptainer_command_flags.py)
REFUSED = (
    o.refused("--docker-host", "docker_host", "satchel does not talk to a Docker daemon",
              o.VALUE),
    o.refused("--library", "library", "no library endpoint is configured here", o.VALUE),
    o.refused("--no-cleanup", "no_cleanup",
              "satchel always removes a failed pull's temporary files"),
)

SPECS = {
    "pull": o.Spec(
        "pull", "pull [pull options...] [output file] <URI>",
        "Pull an image from a URI",
        description=(
            "Pull an image from a registry (docker://REGISTRY/REPO[:TAG|@DIGEST]), a SIF stored\n"
            "as an ORAS artifact (oras://REGISTRY/REPO[:TAG]), a Docker\n"
            "archive (docker-archive:FILE.tar), an OCI archive (oci-archive:FILE.tar) or an OCI\n"
            "image layout (oci:DIR[:TAG]) and convert it to a SIF file, by default NAME_TAG.sif\n"
            "in the current directory. Registry images are cached by digest under\n"
            "$APPTAINER_CACHEDIR (default ~/.satchel/cache): pulling the same image again\n"
            "downloads and converts nothing."),
        options=(
            o.Opt("-F --force", "force", help="overwrite an image file if it exists"),
            o.Opt("--dir", "dir", o.VALUE, help="download images to the specific directory"),
            o.Opt("--name", "name", o.VALUE, env=("APPTAINER_PULL_NAME",), hidden=True,
                  help="name of the image file (the same as giving it before the URI)"),
            o.Opt("--arch-variant", "arch_variant", o.VALUE,
                  help="architecture variant to pull from a registry (e.g. v8 of arm64)"),
            o.Opt("-U --allow-unsigned --allow-unauthenticated", "allow_unsigned", hidden=True,
                  help="accepted: satchel does not check signatures when pulling"),
            o.Opt("--arch", "arch", o.VALUE,
                  help="architecture to pull from a multi-architecture image (default: the host's)"),
            o.Opt("--disable-cache", "disable_cache",
                  env=("APPTAINER_DISABLE_CACHE", "SINGULARITY_DISABLE_CACHE"),
                  help="do not use or create cached images/blobs"),
            o.Opt("--no-https --nohttps", "nohttps",
                  env=("APPTAINER_NOHTTPS", "SINGULARITY_NOHTTPS", "APPTAINER_NO_HTTPS",
                       "SINGULARITY_NO_HTTPS"),
                  help="use http instead of https for docker:// registries"),
            o.Opt("--docker-username", "docker_username", o.VALUE,
                  help="username for the registry (or APPTAINER_DOCKER_USERNAME)"),
            o.Opt("--docker-password", "docker_password", o.VALUE,
                  help="password for the registry (or APPTAINER_DOCKER_PASSWORD)"),
            o.Opt("--docker-login", "docker_login", help="login to a Docker Repository interactively"),
            o.Opt("--authfile", "authfile", o.VALUE, help="docker-style auth file to use for registries"),
            o.Opt("--tmpdir", "tmpdir", o.VALUE, env=("APPTAINER_TMPDIR", "SINGULARITY_TMPDIR"),
                  help="directory for temporary files of the conversion"),
            o.Opt("--mksquashfs-args", "mksquashfs_args", o.VALUE,
                  env=("APPTAINER_MKSQUASHFS_ARGS", "SINGULARITY_MKSQUASHFS_ARGS"),
                  help="additional arguments for mksquashfs", hidden=True),
        ) + tuple(r[0] for r in REFUSED),
        min_args=1, max_args=2,
        examples=("  satchel pull docker://alpine:3.19\n"
                  "  satchel pull --arch arm64 mine.sif docker://registry.example.org/team/tool:1.2\n"
                  "  satchel pull --nohttps docker://127.0.0.1:5000/busybox\n"
                  "  satchel pull oci-archive:image.tar\n"
                  "  satchel pull tool.sif oras://registry.example.org/team/tool:1.2"),
    ),
}


def run(name: str, parsed) -> int:
    from satchel import log
    from satchel.build.builder import BuildOptions
    from satchel.oci import pull, source
    o.check_refused(parsed, REFUSED)
    if len(parsed.args) == 2:
        output, uri = parsed.args
    else:
        output, uri = parsed.name or None, parsed.args[0]
    if parsed.arch_variant:  # Apptainer's --arch arm64 --arch-variant v8 = arm64/v8
        from satchel.oci.manifest import host_platform
        parsed.arch = f"{parsed.arch or host_platform()[0]}/{parsed.arch_variant}"
    fetch = source.FetchOptions.from_options(parsed)
    dest = pull.destination(uri, output, parsed.dir)
    if uri.startswith("oras://"):
        from satchel.oci import oras
        oras.pull(uri, dest, parsed.force, fetch)
        log.info(f"Image saved to {dest}")
        return 0
    build_options = BuildOptions(force=True, tmpdir=parsed.tmpdir,
                                 mksquashfs_args=parsed.mksquashfs_args or "")
    pull.pull(uri, dest, parsed.force, fetch, build_options)
    log.info(f"Image saved to {dest}")
    return 0
