"""satchel run-help: print the %help text of an image."""

from __future__ import annotations

from satchel.cli import options as o

SPECS = {
    "run-help": o.Spec(
        "run-help", "run-help <image path>",
        "Show the user-defined help for an image",
        options=(o.Opt("--app", "app", o.VALUE, help="show the help for an app"),),
        min_args=1, max_args=1,
        examples="  satchel run-help image.sif",
    ),
}


def run(name: str, parsed) -> int:
    import sys
    from satchel.image import metadata
    image = parsed.args[0]
    want = {"helpfile", "apps"} if parsed.app else {"helpfile"}
    attrs = metadata.inspect(image, want)
    text = attrs.get("helpfile", "")
    if parsed.app:
        text = attrs.get("apps", {}).get(parsed.app, {}).get("helpfile", "")
    if text:
        sys.stdout.write(text + "\n")
    else:
        sys.stdout.write("No help sections were defined for this image\n")
    return 0
