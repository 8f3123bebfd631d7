"""satchel inspect: show the metadata of an image (SIF, SquashFS or sandbox), Apptainer-style."""

from __future__ import annotations

from satchel.cli import options as o

SPECS = {
    "inspect": o.Spec(
        "inspect", "inspect [inspect options...] <image path>",
        "Show metadata for an image",
        description=("Show the labels (default), definition file, runscript, environment, help,\n"
                     "test or startscript of an image; --json prints Apptainer's JSON document."),
        options=(
            o.Opt("-l --labels", "labels", help="show the labels for the image (default)"),
            o.Opt("-d --deffile", "deffile", help="show the definition file that was used to generate the image"),
            o.Opt("-r --runscript", "runscript", help="show the runscript for the image"),
            o.Opt("-s --startscript", "startscript", help="show the startscript for the image"),
            o.Opt("-t --test", "test", help="show the test script for the image"),
            o.Opt("-e --environment", "environment", help="show the environment settings for the image"),
            o.Opt("-H --helpfile", "helpfile", help="inspect the runscript helpfile, if it exists"),
            o.Opt("--list-apps", "list_apps", help="list all apps in a container"),
            o.Opt("--app", "app", o.VALUE, help="inspect a specific app"),
            o.Opt("--all", "all", help="show all available data (imply --json option)"),
            o.Opt("-j --json", "json", help="print structured json instead of sections"),
        ),
        min_args=1, max_args=1,
        examples="  satchel inspect image.sif\n  satchel inspect --json --runscript image.sif",
    ),
}

_CHOICES = ("deffile", "runscript", "startscript", "test", "environment", "helpfile")


def run(name: str, parsed) -> int:
    import sys
    from satchel.image import metadata
    image = parsed.args[0]
    if parsed.all:
        want = set(metadata.ALL)
    else:
        want = {c for c in _CHOICES if getattr(parsed, c)}
        if parsed.list_apps:
            want.add("apps")
        if parsed.labels or not (want or parsed.list_apps):
            want.add("labels")
        if parsed.app:
            want.add("apps")
    from satchel.runtime.launch import resolve_image
    path, temporary = resolve_image(image, parsed)  # docker://..., oci-archive:... pulled
    try:
        attrs = metadata.inspect(path, want)
    finally:
        if temporary:
            from satchel.runtime import reaper
            for temp in temporary:
                reaper.remove_tree(temp)
    if parsed.app and not parsed.all:
        app = attrs.get("apps", {}).get(parsed.app)
        attrs = {k: v for k, v in attrs.items() if k != "apps"}
        if app is None:
            from satchel.errors import ImageError
            raise ImageError(f"no app {parsed.app!r} in {image}")
        for key, value in app.items():
            if key in want or (key == "labels" and "labels" in want):
                attrs.setdefault(key, value)
        if parsed.list_apps:
            attrs["apps"] = {parsed.app: app}
    if parsed.json or parsed.all:
        sys.stdout.write(metadata.to_json(attrs) + "\n")
    else:
        sys.stdout.write(metadata.format_text(attrs, list_apps=parsed.list_apps))
    return 0
