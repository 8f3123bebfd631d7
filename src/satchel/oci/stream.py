"""Layer byte streams: decompression (gzip, zstd, none — sniffed from the magic bytes, since
media types lie more often than magic numbers), optional hashing, and a forward-only reader that
tarfile can use in its ordinary (non-stream) mode.

Why not tarfile's "r|gz" stream mode: its buffer slices the whole pending buffer on every
512-byte header read, so a large buffer turns small files quadratic and a small one makes big
files slow. Here tarfile sees a file object whose seek() only moves forward (it never needs
more when members are read in order), and file data is read straight from the decoder.
"""

from __future__ import annotations

import io
import sys
import zlib

from satchel.errors import OCIError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class TapReader:
    """Reads from `raw`, feeding every byte to `hasher` (to check a digest once the stream is
    consumed) and counting it for a progress bar."""

    def __init__(self, raw, hasher=None, progress=None):
        self.raw = raw
        self.hasher = hasher
        self.progress = progress
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if self.hasher is not None:
            self.hasher.update(data)
        if self.progress is not None and data:
            self.progress(len(data))
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class CheckedReader:
    """A layer stream for extraction: read() from `reader`; verify() (called once extraction
    has consumed it) drains the rest and raises OCIError if digest or size do not match."""

    def __init__(self, reader, check):
        self.reader = reader
        self.verify = check

    def read(self, n: int = -1) -> bytes:
        return self.reader.read(n)


class _Prefixed:
    """`head` (bytes already read to sniff the format) followed by the rest of `raw`."""

    def __init__(self, head: bytes, raw):
        self.head = head
        self.raw = raw

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0 or n >= len(self.head):
                data, self.head = self.head, b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.raw.read(n)


class GzipReader:
    """gzip decompression with bounded output per call (a 1 KiB bomb can hold gigabytes) and
    support for concatenated members, which `gzip` and pigz may write."""

    def __init__(self, raw):
        self.raw = raw
        self.dec = zlib.decompressobj(31)
        self.pending = b""  # compressed input not yet given to the decompressor
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        while not self.eof:
            if self.dec.eof:
                rest = self.dec.unused_data + self.pending
                self.pending = b""
                if not rest:
                    rest = self.raw.read(CHUNK)
                if not rest or not rest.startswith(GZIP_MAGIC[:1]):
                    # end of input, or trailing padding after the last member (gzip(1) also
                    # ignores it)
                    self.eof = True
                    break
                self.dec = zlib.decompressobj(31)
                self.pending = rest
            data = self.dec.unconsumed_tail or self.pending
            self.pending = b""
            if not data:
                data = self.raw.read(CHUNK)
                if not data:
                    raise OCIError("gzip layer is truncated")
            try:
                out = self.dec.decompress(data, n)
            except zlib.error as err:
                raise OCIError(f"gzip layer is corrupt: {err}") from None
            if out:
                return out
        return b""


def import_zstandard():
    """The zstandard module. satchel's launcher runs Python with -S (no site import: it costs
    milliseconds on the exec path), so the environment's site-packages is added on demand."""
    try:
        import zstandard
    except ModuleNotFoundError:
        import site
        if not sys.flags.no_site:
            raise OCIError("zstd-compressed layers need the Python package 'zstandard'",
                           hint="pip install zstandard (a satchel dependency)") from None
        site.main()  # what -S skipped: the virtual environment's site-packages
        try:
            import zstandard
        except ModuleNotFoundError:
            raise OCIError("zstd-compressed layers need the Python package 'zstandard'",
                           hint="pip install zstandard (a satchel dependency)") from None
    return zstandard


class ZstdReader:
    def __init__(self, raw):
        zstandard = import_zstandard()
        self._error = zstandard.ZstdError
        self.reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True)

    def read(self, n: int = -1) -> bytes:
        try:
            return self.reader.read(CHUNK if n is None or n < 0 else n)
        except self._error as err:
            raise OCIError(f"zstd layer is corrupt: {err}") from None


def decoder(raw, compression: str | None = None):
    """A reader of the uncompressed tar stream from `raw` (anything with read(n)).
    `compression` is the media type's word; the magic bytes decide."""
    head = b""
    while len(head) < 4:
        more = raw.read(CHUNK)
        if not more:
            break
        head += more
    source = _Prefixed(head, raw)
    if head.startswith(GZIP_MAGIC):
        return GzipReader(source)
    if head.startswith(ZSTD_MAGIC):
        return ZstdReader(source)
    if compression and head:
        from satchel import log
        log.debug(f"layer declared as {compression} has no {compression} header: reading it as tar")
    return source


class ForwardReader(io.RawIOBase):
    """A read-only file over a stream, seekable forward only: what TarFile needs to parse
    members in order. Reading or seeking backwards raises."""

    def __init__(self, source):
        super().__init__()
        self.source = source
        self.pos = 0
        self.chunk = b""
        self.chunk_pos = 0
        self.name = None
        self.mode = "rb"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def _fill(self) -> bool:
        self.chunk = self.source.read(CHUNK)
        self.chunk_pos = 0
        return bool(self.chunk)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self.chunk[self.chunk_pos:]]
            while self._fill():
                parts.append(self.chunk)
            self.chunk, self.chunk_pos = b"", 0
            data = b"".join(parts)
            self.pos += len(data)
            return data
        avail = len(self.chunk) - self.chunk_pos
        if avail >= n:
            data = self.chunk[self.chunk_pos:self.chunk_pos + n]
            self.chunk_pos += n
            self.pos += n
            return data
        parts = [self.chunk[self.chunk_pos:]] if avail else []
        got = avail
        while got < n and self._fill():
            take = min(n - got, len(self.chunk))
            parts.append(self.chunk[:take] if take < len(self.chunk) else self.chunk)
            self.chunk_pos = take
            got += take
        data = b"".join(parts)
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read_chunks(self, n: int):
        """Yield the next `n` bytes in chunks without joining them (file contents)."""
        while n > 0:
            avail = len(self.chunk) - self.chunk_pos
            if not avail:
                if not self._fill():
                    raise OCIError("layer is truncated (unexpected end of data)")
                continue
            take = min(avail, n)
            if take == len(self.chunk) and self.chunk_pos == 0:
                piece = self.chunk
            else:
                piece = memoryview(self.chunk)[self.chunk_pos:self.chunk_pos + take]
            self.chunk_pos += take
            self.pos += take
            n -= take
            yield piece

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence != io.SEEK_SET:
            raise OSError("ForwardReader cannot seek from the end")
        if offset < self.pos:
            back = self.pos - offset
            if back <= self.chunk_pos:  # still inside the current chunk
                self.chunk_pos -= back
                self.pos = offset
                return self.pos
            raise OSError(f"cannot seek backwards from {self.pos} to {offset}")
        skip = offset - self.pos
        for _ in self.read_chunks(skip):
            pass
        return self.pos

    def drain(self) -> None:
        """Read to the end of the source (so a hashing layer below sees every byte)."""
        self.chunk, self.chunk_pos = b"", 0
        while self._fill():
            self.pos += len(self.chunk)
        self.chunk, self.chunk_pos = b"", 0
