"""satchel cache: list or clean the image cache (blobs and converted SIFs)."""

from __future__ import annotations

from satchel.cli import options as o

# Apptainer's cache types; satchel stores only "blob" (OCI blobs) and "oci" (converted SIFs)
TYPES = ("all", "blob", "oci", "library", "shub", "net", "oras")

SPECS = {
    "cache": o.Spec(
        "cache", "cache list|clean [options...]",
        "Manage the local cache",
        description=(
            "Manage the cache of OCI blobs and of SIF images converted from OCI images, in\n"
            "$APPTAINER_CACHEDIR (or $SINGULARITY_CACHEDIR; default ~/.satchel/cache).\n"
            "  list    show what the cache holds and its size\n"
            "  clean   remove cached entries (asks first, unless --force)"),
        options=(
            o.Opt("-T --type", "types", o.LIST, metavar="strings",
                  help="cache types: all, blob, oci (library, shub, net, oras hold nothing)"),
            o.Opt("-v --verbose", "verbose", help="list every cached entry (list)"),
            o.Opt("-f --force", "force", help="clean without asking (clean)"),
            o.Opt("-n --dry-run", "dry_run", help="show what would be removed (clean)"),
            o.Opt("-D --days", "days", o.VALUE, metavar="int",
                  help="remove only entries older than this many days (clean)"),
        ),
        min_args=1, max_args=1,
        examples="  satchel cache list -v\n  satchel cache clean --force --type blob",
    ),
}


def _types(parsed) -> tuple[str, ...]:
    from satchel.errors import UsageError
    wanted = []
    for item in parsed.types or ["all"]:
        wanted += [t.strip().lower() for t in item.split(",") if t.strip()]
    for kind in wanted:
        if kind not in TYPES:
            raise UsageError(f"invalid cache type {kind!r}", hint="choose from " + ", ".join(TYPES))
    if "all" in wanted:
        return ("blob", "oci")
    return tuple(k for k in ("blob", "oci") if k in wanted)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} TiB"


def run(name: str, parsed) -> int:
    from satchel.errors import UsageError
    from satchel.oci.cache import Cache
    action = parsed.args[0]
    kinds = _types(parsed)
    cache = Cache.default()
    if action == "list":
        return _list(cache, kinds, parsed.verbose)
    if action == "clean":
        days = None
        if parsed.days is not None:
            try:
                days = float(parsed.days)
                if days < 0:
                    raise ValueError
            except ValueError:
                raise UsageError(f"invalid --days {parsed.days!r}: expected a number of days")
        return _clean(cache, kinds, parsed.force, parsed.dry_run, days)
    raise UsageError(f"unknown cache action {action!r}", hint="use 'cache list' or 'cache clean'")


def _list(cache, kinds, verbose: bool) -> int:
    import time
    entries = cache.entries(kinds)
    sifs = [e for e in entries if e.kind == "oci"]
    blobs = [e for e in entries if e.kind == "blob"]
    if verbose:
        print(f"{'NAME':<72} {'DATE CREATED':<20} {'SIZE':>12}  TYPE")
        for e in entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.mtime))
            print(f"{e.name:<72} {when:<20} {_size(e.size):>12}  {e.kind}")
        print()
    sif_size = sum(e.size for e in sifs)
    blob_size = sum(e.size for e in blobs)
    print(f"There are {len(sifs)} container file(s) using {_size(sif_size)} and "
          f"{len(blobs)} oci blob file(s) using {_size(blob_size)} of space")
    print(f"Total space used: {_size(sif_size + blob_size)}")
    return 0


def _clean(cache, kinds, force: bool, dry_run: bool, days) -> int:
    import os
    import sys
    from satchel import log
    if not os.path.isdir(cache.root):
        log.info(f"No cache found at {cache.root}")
        return 0
    if not force and not dry_run:
        what = "everything in your cache" if set(kinds) == {"blob", "oci"} else \
            "the " + " and ".join(kinds) + " entries of your cache"
        sys.stdout.write(f"This will delete {what} ({cache.root}).\n"
                         "Do you want to continue? [y/N] ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            log.info("Cache cleanup canceled")
            return 0
    removed = cache.clean(kinds, older_than_days=days, dry_run=dry_run)
    verb = "Would remove" if dry_run else "Removed"
    for entry in removed:
        log.verbose(f"{verb.lower()} {entry.kind} {entry.name}")
    total = sum(e.size for e in removed)
    log.info(f"{verb} {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'} "
             f"({_size(total)})")
    return 0
