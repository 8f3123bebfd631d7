"""The reference SIF corpus: images the reference implementation wrote, and siftool's printed
output (goldens) for some of them. It lives beside the checkout in ../shared/sif-testdata;
$SATCHEL_SIF_CORPUS points elsewhere. A missing corpus fails test_sif.py::test_corpus_present
with its path; the parametrized corpus tests then have no cases."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.environ.get("SATCHEL_SIF_CORPUS") or os.path.join(ROOT, "..", "shared",
                                                             "sif-testdata")
IMAGES = os.path.join(CORPUS, "images")
GOLDEN = os.path.join(CORPUS, "golden")
ROOT_SQUASHFS = os.path.join(CORPUS, "root.squashfs")

# Info goldens name an object, not an image (sif-testdata/README.md): image, object id
INFO_SOURCES = {
    "GenericJSON": ("one-object-generic-json.sif", 1),
    "DataPartitionSquashFS": ("two-groups-signed-pgp.sif", 2),
    "DataSignature": ("two-groups-signed-pgp.sif", 4),
}


def kebab(name: str) -> str:
    """OneGroupSignedPGP -> one-group-signed-pgp (how the corpus names images)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def goldens() -> list[tuple[str, str]]:
    """(kind, name) of every golden file: kind is Header, List or Info."""
    out = []
    for kind in ("Header", "List", "Info"):
        directory = os.path.join(GOLDEN, kind)
        if os.path.isdir(directory):
            out.extend((kind, f[:-len(".golden")]) for f in sorted(os.listdir(directory))
                       if f.endswith(".golden"))
    return out


def golden_path(kind: str, name: str) -> str:
    return os.path.join(GOLDEN, kind, name + ".golden")


def golden_source(kind: str, name: str) -> tuple[str, int | None]:
    """The image a golden was printed from, and the object id for Info goldens."""
    if kind == "Info":
        image, ident = INFO_SOURCES[name]
        return os.path.join(IMAGES, image), ident
    return os.path.join(IMAGES, kebab(name) + ".sif"), None


def read_image(name: str) -> bytes:
    with open(os.path.join(IMAGES, name), "rb") as fh:
        return fh.read()
