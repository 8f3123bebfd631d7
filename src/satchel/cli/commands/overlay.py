"""satchel overlay create: a writable ext3 overlay image, or an overlay partition in a SIF.

Wiring only: the layout and the checks live in satchel.image.overlay.
"""

from __future__ import annotations

from satchel.cli import options as o

SPECS = {
    "overlay": o.Spec(
        "overlay", "overlay create [options...] IMAGE",
        "Manage an EXT3 writable overlay image",
        description=(
            "create  make IMAGE an EXT3 overlay image (upper/ and work/ at its top, Apptainer's\n"
            "        layout); when IMAGE is an existing SIF, add the overlay to it as a partition"),
        options=(
            o.Opt("-s --size", "size", o.VALUE, metavar="int", default="64",
                  help="size of the EXT3 writable overlay in MiB (default 64, at least 64)"),
            o.Opt("-S --sparse", "sparse", env=("APPTAINER_SPARSE", "SINGULARITY_SPARSE"),
                  help="create a sparse overlay"),
            o.Opt("--create-dir", "create_dir", o.LIST,
                  help="directory to create as part of the overlay layout"),
            o.Opt("-f --fakeroot", "fakeroot", env=("APPTAINER_FAKEROOT", "SINGULARITY_FAKEROOT"),
                  help="make overlay layout usable by actions run with --fakeroot"),
        ),
        min_args=2, max_args=2,
        examples="  satchel overlay create --size 1024 overlay.img\n"
                 "  satchel overlay create --size 512 image.sif",
    ),
}


def run(name: str, parsed) -> int:
    from satchel.errors import UsageError
    from satchel.image import overlay

    action, image = parsed.args
    if action != "create":
        raise UsageError(f"unknown command {action!r} for satchel overlay",
                         hint="satchel overlay create [options...] IMAGE")
    try:
        size = int(parsed.size)
    except ValueError:
        raise UsageError(f"invalid argument {parsed.size!r} for --size: not a number of MiB") \
            from None
    dirs = []
    for item in parsed.create_dir or ():
        dirs += [d for d in item.split(",") if d]
    overlay.create(image, size, parsed.sparse, dirs, parsed.fakeroot)
    return 0
