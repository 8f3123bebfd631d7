"""A small HTTP/1.1 client over http.client: kept-alive connections per thread, redirects,
and transport errors turned into one-line OCIErrors that say what to do.

TLS uses Python's default context, so the system CA store applies and SSL_CERT_FILE /
SSL_CERT_DIR add or replace trust anchors (that is how tests trust their self-signed registry).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import urllib.parse

from satchel import __version__
from satchel import log
from satchel.errors import OCIError

USER_AGENT = f"satchel/{__version__}"
TIMEOUT_S = 60.0
MAX_REDIRECTS = 5
SEND_BLOCK = 8 << 20  # a file body goes out with sendfile(2) in blocks of this size
_ssl_context = None
_ssl_lock = threading.Lock()


def ssl_context() -> ssl.SSLContext:
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = ssl.create_default_context()
        return _ssl_context


class Response:
    """A response whose body may still be streaming; `close()` returns or drops the connection."""

    def __init__(self, raw: http.client.HTTPResponse, url: str, pool: "Pool", key):
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers
        self.url = url
        self._pool = pool
        self._key = key

    def header(self, name: str, default: str = "") -> str:
        return self.raw.getheader(name, default) or default

    def read(self, limit: int = 16 << 20) -> bytes:
        """The whole body, refusing more than `limit` bytes (manifests, JSON, errors)."""
        length = self.raw.getheader("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            self.close(reuse=False)
            raise OCIError(f"{self.url}: response of {length} bytes is larger than expected")
        data = self.raw.read(limit + 1)
        if len(data) > limit:
            self.close(reuse=False)
            raise OCIError(f"{self.url}: response is larger than {limit} bytes")
        self.close()
        return data

    def readinto(self, buffer) -> int:
        return self.raw.readinto(buffer)

    def close(self, reuse: bool = True) -> None:
        """A fully read response leaves its connection ready for the next request; one
        abandoned halfway cannot be reused (unread bytes are in the way), so it is closed."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if not (reuse and self.raw.isclosed()):
            pool.drop(self._key)


class FileBody:
    """A request body read from `count` bytes of an open file at `offset`: sent with
    sendfile(2) (no copy through Python), re-sendable (a retry starts again at `offset`), and
    reporting progress per block to `progress(nbytes)`."""

    __slots__ = ("fileobj", "offset", "count", "progress")

    def __init__(self, fileobj, offset: int, count: int, progress=None):
        self.fileobj, self.offset, self.count, self.progress = fileobj, offset, count, progress


class Pool:
    """One kept-alive connection per (scheme, host) per thread."""

    def __init__(self, timeout: float = TIMEOUT_S):
        self.timeout = timeout
        self._local = threading.local()

    def _conns(self) -> dict:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def get(self, key) -> tuple[http.client.HTTPConnection, bool]:
        conns = self._conns()
        conn = conns.get(key)
        if conn is not None:
            return conn, True
        scheme, host = key
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, timeout=self.timeout, context=ssl_context())
        else:
            conn = http.client.HTTPConnection(host, timeout=self.timeout)
        conns[key] = conn
        return conn, False

    def drop(self, key) -> None:
        conn = self._conns().pop(key, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._conns().values():
            conn.close()
        self._conns().clear()


class TransientError(OCIError):
    """A failure that may pass if the request is sent again: the connection broke or timed
    out, or (raised by the registry client) the server answered 5xx."""


def describe_error(host: str, err: BaseException) -> OCIError:
    """A transport failure as a one-line error with a hint where one helps; a broken or
    timed-out connection is a TransientError (an upload resumes after it)."""
    what = f"connecting to {host}"
    if isinstance(err, ssl.SSLCertVerificationError):
        return OCIError(f"{what}: TLS certificate verification failed: {err.verify_message}",
                        hint="trust the registry's CA with SSL_CERT_FILE=/path/to/ca.pem, or "
                             "use --nohttps for a plain-HTTP registry")
    if isinstance(err, ssl.SSLError):
        if "WRONG_VERSION_NUMBER" in str(err) or "wrong version number" in str(err):
            return OCIError(f"{what}: the server does not speak TLS",
                            hint="for a plain-HTTP registry use --nohttps (or docker://http://HOST/...)")
        return OCIError(f"{what}: TLS error: {err.reason or err}")
    if isinstance(err, ConnectionRefusedError):
        return OCIError(f"{what}: connection refused", hint="is the registry running at that address?")
    if isinstance(err, socket.gaierror):
        return OCIError(f"{what}: cannot resolve host name ({err.strerror})")
    if isinstance(err, (socket.timeout, TimeoutError)):
        return TransientError(f"{what}: timed out")
    if isinstance(err, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                        http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return TransientError(f"{what}: connection lost ({type(err).__name__})")
    if isinstance(err, http.client.HTTPException):
        return OCIError(f"{what}: bad HTTP response ({type(err).__name__}: {err})")
    if isinstance(err, OSError):
        return OCIError(f"{what}: {err.strerror or err}")
    return OCIError(f"{what}: {err}")


def request(pool: Pool, method: str, url: str, headers: dict | None = None,
            body: "bytes | FileBody | None" = None, auth_for_host: str | None = None
            ) -> Response:
    """Send a request and follow redirects. Headers named Authorization are only sent to
    `auth_for_host` (a redirect to a blob store elsewhere must not receive our token)."""
    headers = dict(headers or {})
    headers.setdefault("User-Agent", USER_AGENT)
    if isinstance(body, FileBody):
        headers["Content-Length"] = str(body.count)
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OCIError(f"unsupported URL {url!r}")
        key = (parts.scheme, parts.netloc)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        send = dict(headers)
        if auth_for_host is not None and parts.netloc != auth_for_host:
            send.pop("Authorization", None)
        log.debug(f"{method} {url}")
        raw = _send(pool, key, method, path, send, body)
        resp = Response(raw, url, pool, key)
        if resp.status in (301, 302, 303, 307, 308) and resp.header("Location"):
            location = urllib.parse.urljoin(url, resp.header("Location"))
            resp.raw.read()
            resp.close()
            url = location
            if resp.status == 303:
                method, body = "GET", None
            continue
        return resp
    raise OCIError(f"{url}: too many redirects")


def _send(pool: Pool, key, method, path, headers, body) -> http.client.HTTPResponse:
    """One request on a kept-alive connection; a connection the server closed while idle is
    replaced once, transparently."""
    for attempt in (0, 1):
        conn, reused = pool.get(key)
        try:
            if isinstance(body, FileBody):
                _send_file(conn, method, path, headers, body)
            else:
                conn.request(method, path, body=body, headers=headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                http.client.CannotSendRequest, http.client.ResponseNotReady) as err:
            pool.drop(key)
            if reused and attempt == 0:
                continue
            raise describe_error(key[1], err) from None
        except (OSError, http.client.HTTPException) as err:
            pool.drop(key)
            raise describe_error(key[1], err) from None
    raise AssertionError("unreachable")


def _send_file(conn: http.client.HTTPConnection, method, path, headers, body: FileBody) -> None:
    """Headers through http.client, the body with socket.sendfile (a plain send loop on TLS)."""
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    offset, left = body.offset, body.count
    while left:
        sent = conn.sock.sendfile(body.fileobj, offset, min(left, SEND_BLOCK))
        if not sent:
            raise BrokenPipeError("file ended before the request body was sent")
        offset += sent
        left -= sent
        if body.progress:
            body.progress(sent)
