"""SquashFS images through the system tools (squashfs-tools' mksquashfs and unsquashfs).

Compression: satchel writes zstd by default, not Apptainer's gzip. Every cold launch of a SIF
through squashfuse decompresses the pages the program touches; on this kind of machine ch-run
on the same image took 22 ms with gzip and 11 ms with zstd (lz4 7 ms, xz 94 ms; see
shared/FACTS.md), and zstd images are also smaller than gzip ones. Apptainer >= 1.1, squashfuse
and Linux >= 4.14 all read zstd. The level is 3 rather than mksquashfs' default 15: decompression
speed hardly depends on the level while compression at 15 is several times slower. Choose with
SATCHEL_SQUASHFS_COMP=gzip|zstd|lz4|xz|lzo|none (or `--mksquashfs-args '-comp gzip'`).
"""

from __future__ import annotations

import os
import shutil

from satchel.errors import BuildError, ImageError

DEFAULT_COMPRESSION = "zstd"
ZSTD_LEVEL = "3"
COMPRESSIONS = ("gzip", "zstd", "lz4", "xz", "lzo", "lzma", "none")
ENV_COMPRESSION = "SATCHEL_SQUASHFS_COMP"


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
        None)
    if path is None:
        raise BuildError(f"{name} not found", hint="install Debian's squashfs-tools package")
    return path


def compression_args(compression: str | None = None) -> list[str]:
    """mksquashfs arguments for a compression name (None: $SATCHEL_SQUASHFS_COMP or zstd)."""
    comp = (compression or os.environ.get(ENV_COMPRESSION) or DEFAULT_COMPRESSION).lower()
    if comp not in COMPRESSIONS:
        raise BuildError(f"unknown SquashFS compression {comp!r}",
                         hint="choose one of " + ", ".join(COMPRESSIONS))
    if comp == "none":
        return ["-noI", "-noD", "-noF", "-noX"]
    if comp == "zstd":
        return ["-comp", "zstd", "-Xcompression-level", ZSTD_LEVEL]
    return ["-comp", comp]


def mksquashfs_argv(source: str, dest: str, compression: str | None = None,
                    extra_args: list[str] | None = None, processors: int | None = None) -> list[str]:
    """The exact mksquashfs command a build runs (the benchmark reuses it)."""
    extra = list(extra_args or [])
    argv = [tool("mksquashfs"), source, dest, "-noappend", "-no-progress", "-quiet"]
    if "-comp" not in extra and not {"-noI", "-noD"} & set(extra):
        argv += compression_args(compression)
    if processors:
        argv += ["-processors", str(processors)]
    return argv + extra


def _run(argv: list[str], what: str, on_terminal: bool = False) -> None:
    """Run a squashfs tool in its own process group (killed whole if we are interrupted);
    BuildError with the tail of its output on failure. With on_terminal its output (progress
    bar, errors) goes straight to our stderr instead of being collected."""
    import signal
    import subprocess
    from satchel import log
    log.verbose("running: " + " ".join(argv))
    output = 2 if on_terminal else subprocess.PIPE
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as err:
        raise BuildError(f"{what}: cannot run {argv[0]}: {err.strerror}") from None
    try:
        out, _ = proc.communicate()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        raise
    if proc.returncode != 0:
        text = (out or b"").decode(errors="replace").strip()[-2000:].replace("\n", " | ")
        raise BuildError(f"{what}: {os.path.basename(argv[0])} failed (exit status "
                         f"{proc.returncode}){': ' + text if text else ''}")


def make(source: str, dest: str, compression: str | None = None,
         extra_args: list[str] | None = None, processors: int | None = None,
         progress: bool = False) -> None:
    """Pack directory `source` into a new SquashFS file `dest` (owners as this process sees them).

    progress: show mksquashfs's own progress bar on stderr (callers pass True only when stderr
    is a terminal and messages are not silenced)."""
    argv = mksquashfs_argv(source, dest, compression, extra_args, processors)
    if progress:
        argv.remove("-no-progress")
    _run(argv, f"while creating SquashFS image from {source}", on_terminal=progress)


def extract(image: str, dest: str, offset: int = 0, skip_devices: bool = False) -> int:
    """Unpack the SquashFS file system at `offset` in `image` into the new directory `dest`.

    skip_devices: leave out character and block devices (a user namespace cannot mknod them:
    unsquashfs fails with "create_inode: failed to create character device"). Apptainer
    leaves out the whole /dev as a non-root user; only the nodes are left out here, so the
    rest of /dev (symlinks, directories) survives. Returns how many nodes were left out.
    """
    argv = [tool("unsquashfs"), "-no-progress", "-quiet", "-f", "-d", dest]
    if offset:
        argv += ["-o", str(offset)]
    devices = device_nodes(image, offset) if skip_devices else []
    exclude = None
    if devices:
        # names are shell-style patterns in an exclude file: escape what fnmatch would read
        exclude = os.path.join(os.path.dirname(os.path.abspath(dest)),
                               f".{os.path.basename(dest)}.exclude-devices")
        with open(exclude, "w", encoding="utf-8", errors="surrogateescape") as fh:
            for path in devices:
                fh.write("".join("\\" + c if c in _PATTERN_CHARS else c for c in path) + "\n")
        argv += ["-exclude-file", exclude]
    argv.append(image)
    try:
        _run(argv, f"while extracting the SquashFS file system of {image}")
    finally:
        if exclude:
            os.unlink(exclude)
    return len(devices)


_PATTERN_CHARS = frozenset("\\*?[]+@!( \t")


def device_nodes(image: str, offset: int = 0) -> list[str]:
    """Paths (relative to the root) of the character and block devices in the SquashFS."""
    import re
    import subprocess
    argv = [tool("unsquashfs"), "-lln", "-no-progress"]
    if offset:
        argv += ["-o", str(offset)]
    argv.append(image)
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BuildError(f"while listing the devices in {image}: {err}") from None
    if proc.returncode != 0:
        raise BuildError(f"while listing the devices in {image}: "
                         + proc.stderr.decode(errors="replace").strip()[-300:])
    # "crw-rw-rw- 0/0   1,  3 2024-01-01 00:00 squashfs-root/dev/null"
    line_re = re.compile(rb"^[cb]\S+\s+\S+\s+\d+,\s*\d+\s+\S+\s+\S+\s+squashfs-root/(.+)$")
    found = []
    for line in proc.stdout.splitlines():
        match = line_re.match(line)
        if match:
            found.append(match.group(1).decode(errors="surrogateescape"))
    return found


def cat(image: str, path: str, offset: int = 0) -> bytes | None:
    """Content of the regular file `path` inside the SquashFS at `offset`; None if absent.

    A symlink is not followed (None). Used by inspect for SIFs that have no
    inspect-metadata.json object: no mount needed.
    """
    import subprocess
    argv = [tool("unsquashfs"), "-cat"]
    if offset:
        argv += ["-o", str(offset)]
    argv += [image, path.lstrip("/")]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ImageError(f"while reading {path} from {image}: {err}") from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace")
        if "does not exist" in message or "not found" in message.lower() or "No such" in message:
            return None
        if "Can't find a SQUASHFS superblock" in message or "superblock" in message:
            raise ImageError(f"{image}: no SquashFS file system at offset {offset}")
        return None
    return proc.stdout


def list_paths(image: str, offset: int = 0, under: str = "/") -> list[str]:
    """Paths (absolute, as in the image) below `under`, from `unsquashfs -l`."""
    import subprocess
    argv = [tool("unsquashfs"), "-l", "-no-progress"]
    if offset:
        argv += ["-o", str(offset)]
    argv += [image, under.lstrip("/") or "/"]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ImageError(f"while listing {image}: {err}") from None
    if proc.returncode != 0:
        raise ImageError(f"while listing {image}: " + proc.stderr.decode(errors="replace").strip()[-300:])
    out = []
    for line in proc.stdout.decode(errors="surrogateescape").splitlines():
        if line.startswith("squashfs-root"):
            out.append(line[len("squashfs-root"):] or "/")
    return out
