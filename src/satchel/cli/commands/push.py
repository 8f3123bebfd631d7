"""satchel push: a SIF to a registry as an ORAS artifact, or (--oci) as an OCI image."""

from __future__ import annotations

from satchel.cli import options as o

# Apptainer 1.3 push flags satchel parses and refuses (tests/unit/test_apptainer_command_flags.py)
REFUSED = (
    o.refused("--docker-host", "docker_host", "satchel does not talk to a Docker daemon",
              o.VALUE),
    o.refused("--library", "library", "no library endpoint is configured here", o.VALUE),
    o.refused("-D --description", "description",
              "descriptions belong to library:// pushes (no library endpoint is configured here)",
              o.VALUE),
)

SPECS = {
    "push": o.Spec(
        "push", "push [push options...] <image file> <URI>",
        "Upload an image to a registry (ORAS), or export it as an OCI image",
        description=(
            "Upload a SIF file to an OCI registry as an ORAS artifact (oras://REGISTRY/REPO:TAG),\n"
            "the way Apptainer does: `satchel pull oras://...` and `apptainer pull oras://...`\n"
            "get the same file back.\n\n"
            "With --oci, export the SIF as an OCI image instead: its root file system becomes\n"
            "one reproducible tar layer and its metadata (environment, labels, runscript,\n"
            "architecture) the image config, so Podman, containerd, Docker or Kubernetes run it.\n"
            "Destinations: docker://REGISTRY/REPO[:TAG], oci-archive:FILE.tar[:TAG] (an OCI\n"
            "layout in a tar file) and oci:DIR[:TAG] (an OCI layout directory).\n\n"
            "Blobs the registry has already are not sent again; an interrupted upload resumes.\n"
            "Credentials as for pull: --docker-username/--docker-password, --docker-login,\n"
            "APPTAINER_DOCKER_USERNAME/PASSWORD, --authfile or ~/.docker/config.json."),
        options=(
            o.Opt("--oci", "oci", help="export the SIF as an OCI image (docker://, oci-archive:, oci:)"),
            o.Opt("--layer-compression", "layer_compression", o.VALUE,
                  help="compression of the exported layer: gzip (default), zstd or none"),
            o.Opt("--no-https --nohttps", "nohttps",
                  env=("APPTAINER_NOHTTPS", "SINGULARITY_NOHTTPS", "APPTAINER_NO_HTTPS",
                       "SINGULARITY_NO_HTTPS"),
                  help="use http instead of https for the registry"),
            o.Opt("--docker-username", "docker_username", o.VALUE,
                  help="username for the registry (or APPTAINER_DOCKER_USERNAME)"),
            o.Opt("--docker-password", "docker_password", o.VALUE,
                  help="password for the registry (or APPTAINER_DOCKER_PASSWORD)"),
            o.Opt("--docker-login", "docker_login", help="login to a Docker Repository interactively"),
            o.Opt("--authfile", "authfile", o.VALUE, help="docker-style auth file to use for registries"),
            o.Opt("--chunk-size", "chunk_size", o.VALUE,
                  help="upload blobs in PATCH requests of this many bytes (default: one request)",
                  hidden=True),
            o.Opt("-U --allow-unsigned", "allow_unsigned",
                  help="accepted for Apptainer compatibility (satchel does not refuse unsigned images)",
                  hidden=True),
            o.Opt("--tmpdir", "tmpdir", o.VALUE, env=("APPTAINER_TMPDIR", "SINGULARITY_TMPDIR"),
                  help="directory for temporary files of an --oci export"),
        ) + tuple(r[0] for r in REFUSED),
        min_args=2, max_args=2,
        examples=("  satchel push image.sif oras://registry.example.org/team/tool:1.2\n"
                  "  satchel push --oci image.sif docker://registry.example.org/team/tool:1.2\n"
                  "  satchel push --oci image.sif oci-archive:tool.tar\n"
                  "  satchel push --oci image.sif oci:layout-dir:1.2"),
    ),
}


def run(name: str, parsed) -> int:
    from satchel import log
    from satchel.errors import UsageError
    from satchel.oci import source
    o.check_refused(parsed, REFUSED)
    image, uri = parsed.args
    fetch = source.FetchOptions.from_options(parsed)
    chunk_size = _size(parsed.chunk_size) if parsed.chunk_size else 0
    if parsed.oci:
        from satchel.oci import export
        digest = export.push(image, uri, fetch, compression=parsed.layer_compression or "gzip",
                             tmpdir=parsed.tmpdir, chunk_size=chunk_size)
        log.info(f"Exported {image} to {uri} (manifest {digest})")
        return 0
    from satchel.oci import oras
    if not oras.is_oras(uri):
        raise UsageError(f"cannot push to {uri!r}: a SIF goes to oras://REGISTRY/REPO:TAG",
                         hint="to export it as an OCI image (docker://, oci-archive:, oci:), "
                              "add --oci")
    digest = oras.push(image, uri, fetch, chunk_size)
    log.info(f"Uploaded {image} to {uri} (manifest {digest})")
    return 0


def _size(text: str) -> int:
    from satchel.errors import UsageError
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = text.strip().lower().rstrip("ib")
    scale = units.get(value[-1:], 1) if value else 1
    number = value[:-1] if value[-1:] in units else value
    if not number.isdigit() or int(number) * scale <= 0:
        raise UsageError(f"--chunk-size {text!r}: expected a positive size such as 5M")
    return int(number) * scale
