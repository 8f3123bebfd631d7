"""satchel dropin DIR: install `apptainer`, `singularity` and `run-singularity` commands.

Wiring only: satchel.compat.install_dropins writes the entry scripts. A site puts DIR on PATH
(or installs straight into /usr/local/bin) and pipelines that call either name run satchel.
"""

from __future__ import annotations

from satchel.cli import options as o

SPECS = {
    "dropin": o.Spec(
        "dropin", "dropin [--force] [--name NAME]... <directory>",
        "Install apptainer/singularity commands that run satchel",
        description=(
            "Writes entry scripts named apptainer, singularity and run-singularity into\n"
            "<directory>. Called by those names, satchel behaves as the Apptainer/Singularity\n"
            "command line (`apptainer --version` prints an Apptainer release), so tools that\n"
            "drive either (Snakemake, cwltool, spython, Nextflow...) run unchanged. An\n"
            "existing file not written by satchel is kept unless --force is given."),
        options=(
            o.Opt("-F --force", "force", help="replace files that satchel did not write"),
            o.Opt("--name", "names", o.LIST, metavar="name",
                  help="install only these names (apptainer, singularity, run-singularity; "
                 "satchel-runc, the OCI runtime, only when named)"),
        ),
        min_args=1, max_args=1,
        examples="  satchel dropin /usr/local/bin\n  satchel dropin --name apptainer ~/bin\n"
                 "  satchel dropin --name satchel-runc /usr/local/bin"),
}


def run(name: str, parsed) -> int:
    from satchel import log
    from satchel.compat import DROPIN_NAMES, install_dropins

    names = []
    for value in parsed.names or ():
        names += [n.strip() for n in value.split(",") if n.strip()]
    written = install_dropins(parsed.args[0], tuple(names) or DROPIN_NAMES, force=parsed.force)
    for path in written:
        log.info(f"installed {path}")
    return 0
