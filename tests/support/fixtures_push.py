"""Helpers for push/export tests: a third-party ORAS client and an HTTP proxy that injects
registry failures.

- `oras_sdk(args)`: runs the `oras` Python SDK from PyPI, installed by scripts/install-deps in
  its own environment (.venv-oras), against a plain-HTTP registry: `push REF FILE MEDIATYPE` or
  `pull REF OUTDIR`.
- `FaultProxy`: an HTTP proxy in front of a real registry; `rule(method, path, n)` (n counts the
  requests of that method so far) returns a status to answer instead of forwarding, or None.
  What a failed request sent is read and dropped first, like a registry that broke down
  halfway through a PATCH.
"""

from __future__ import annotations

import http.client
import http.server
import os
import subprocess
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORAS_PYTHON = os.path.join(ROOT, ".venv-oras", "bin", "python3")

_SDK = r"""
import sys
import oras.client
action, ref = sys.argv[1], sys.argv[2]
client = oras.client.OrasClient(hostname=ref.split("/")[0], insecure=True)
if action == "push":
    client.push(target=ref, files=[sys.argv[3] + ":" + sys.argv[4]])
else:
    print("\n".join(client.pull(target=ref, outdir=sys.argv[3])))
"""


def require_oras_sdk() -> None:
    if not os.access(ORAS_PYTHON, os.X_OK):
        pytest.fail(f"{ORAS_PYTHON} missing: run ./scripts/install-deps (oras SDK from PyPI)")


def oras_sdk(*args: str, cwd: str | None = None) -> str:
    require_oras_sdk()
    result = subprocess.run([ORAS_PYTHON, "-c", _SDK, *args], capture_output=True, text=True,
                            timeout=120, cwd=cwd)
    if result.returncode != 0:
        raise AssertionError(f"oras SDK {args} failed:\n{result.stderr[-3000:]}")
    return result.stdout


class FaultProxy:
    """Forwards HTTP requests to 127.0.0.1:`upstream_port` unless `rule` says otherwise."""

    def __init__(self, upstream_port: int, rule):
        self.rule = rule
        self.counts: dict[str, int] = {}
        self.log: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.ranges: list[str] = []  # Content-Range of every PATCH, in order
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                method = self.command
                n = proxy.counts[method] = proxy.counts.get(method, 0) + 1
                body = self._body()
                if method == "PATCH":
                    proxy.ranges.append(self.headers.get("Content-Range", ""))
                status = proxy.rule(method, self.path, n)
                if status is not None:
                    data = b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}'
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(data)
                    proxy.log.append((method, self.path, status))
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                conn.request(method, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() in ("connection", "transfer-encoding", "content-length"):
                        continue
                    if name.lower() == "location":  # keep the client talking to us
                        value = value.replace(f"127.0.0.1:{upstream_port}", proxy.host)
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)
                conn.close()
                proxy.log.append((method, self.path, resp.status))

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.log]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
