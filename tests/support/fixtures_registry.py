"""Real OCI registries on loopback for the OCI tests, and the images they serve.

- `oci_registry`: Debian's docker-registry (distribution 2.8), plain HTTP, anonymous;
- `auth_registry`: the same behind TLS (a self-signed CA made with openssl; clients trust it
  through SSL_CERT_FILE) with htpasswd Basic auth (user `satchel`, password `s3cret`);
- `token_registry`: the same with Bearer-token auth; the token realm is a small http.server in
  this process that checks Basic credentials and issues RS256 JWTs (signed with `openssl dgst`)
  carrying an x5c certificate the registry trusts (its rootcertbundle).

Images are made with satchel.oci.writer (layers entry by entry, from Debian's busybox-static so
that pulled images run) and pushed with skopeo from an OCI layout, so what satchel pulls was
written by another implementation of the distribution protocol.

`test_images` (session) pushes the standard set into `oci_registry`; `push_image()` adds more.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from satchel.oci import writer

REGISTRY_BIN = "/usr/bin/docker-registry"
USERNAME, PASSWORD = "satchel", "s3cret"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "ls", "echo", "id", "env", "true", "false", "sleep", "stat", "pwd")
OS_RELEASE = 'NAME="Satchel Test OS"\nID=satcheltest\nVERSION_ID=4.2\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Registry:
    """A docker-registry process with its storage, config and log in a private directory."""

    def __init__(self, workdir: str, tls: tuple[str, str] | None = None,
                 htpasswd: str | None = None, token: dict | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = os.path.join(workdir, "storage")
        self.log_path = os.path.join(workdir, "registry.log")
        self.scheme = "https" if tls else "http"
        lines = ["version: 0.1", "log:", "  level: info", "  accesslog:", "    disabled: false",
                 "storage:", "  filesystem:", f"    rootdirectory: {self.storage}",
                 "  delete:", "    enabled: true", "http:", f"  addr: {self.host}"]
        if tls:
            lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: satchel-test", f"    path: {htpasswd}"]
        if token:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in token.items()]
        self.config = os.path.join(workdir, "config.yml")
        with open(self.config, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", self.config], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError("docker-registry did not start:\n" + self.log_text())

    def uri(self, repo_tag: str) -> str:
        return f"docker://{self.host}/{repo_tag}"

    def log_text(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")

    def blob_gets(self, repo: str, since: int = 0) -> int:
        """How many blob GETs for `repo` the access log shows after byte offset `since`."""
        text = self.log_text()[since:]
        return sum(1 for line in text.splitlines()
                   if f'"GET /v2/{repo}/blobs/' in line)

    def log_size(self) -> int:
        return os.path.getsize(self.log_path)

    def blob_file(self, digest: str) -> str:
        hexd = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256",
                            hexd[:2], hexd, "data")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------------- certificates
def make_ca(directory: str, name: str = "satchel-test") -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost (it is its own CA) and its key."""
    cert = os.path.join(directory, f"{name}.crt")
    key = os.path.join(directory, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    os.chmod(cert, 0o644)
    return cert, key


# ------------------------------------------------------------------------- token server
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Bearer token realm: checks Basic credentials, issues JWTs the registry accepts."""

    def __init__(self, workdir: str, service: str, issuer: str):
        self.cert, self.key = make_ca(workdir, "token-signer")
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.service = service
        self.issuer = issuer
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                header = self.headers.get("Authorization", "")
                user = None
                if header.startswith("Basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if (name, password) == (USERNAME, PASSWORD):
                        user = name
                server.requests.append({"query": query, "user": user,
                                        "authorization": bool(header)})
                if user is None:
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                scopes = query.get("scope", [])
                token = server.token(user, query.get("service", [""])[0], scopes)
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, user: str, service: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            for item in scope.split(" "):
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name,
                               "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": self.issuer, "sub": user, "aud": service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                                   input=signing_input.encode(), check=True,
                                   capture_output=True).stdout
        return signing_input + "." + _b64url(signature)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------------- images
def busybox_layer(os_release: str = OS_RELEASE, extra=None) -> writer.Layer:
    """A runnable base layer: busybox-static with a few applet links and /etc basics."""
    layer = writer.Layer()
    for d in ("bin", "etc", "usr", "usr/bin", "root", "var"):
        layer.dir(d)
    layer.dir("tmp", mode=0o1777)
    layer.host_file("bin/busybox", BUSYBOX, mode=0o755)
    for applet in APPLETS:
        layer.symlink(f"bin/{applet}", "busybox")
    layer.file("etc/os-release", os_release)
    layer.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    layer.file("etc/group", "root:x:0:\n")
    if extra:
        extra(layer)
    return layer


def standard_images() -> dict:
    """repo:tag -> writer.Image/Index for the session registry."""
    def base_extra(layer: writer.Layer) -> None:
        layer.file("etc/removed-later", "gone in layer 2\n")
        layer.dir("opt").dir("opt/opaque").file("opt/opaque/lower-a", "a").file(
            "opt/opaque/lower-b", "b")
        layer.dir("opt/opaque/sub").file("opt/opaque/sub/deep", "deep")
        layer.dir("home").dir("home/user", uid=1000, gid=1000).file(
            "home/user/owned", "mine\n", uid=1000, gid=1000)
        layer.file("bin/suid-tool", "#!/bin/sh\nid -u\n", mode=0o4755)
        layer.file("etc/old-mtime", "old\n", mtime=1000000000)
        layer.dir("var/lib").file("var/lib/replaced-by-dir", "file first")

    base = writer.compress_layer(busybox_layer(extra=base_extra).tar_bytes(), "gzip")
    layer2 = (writer.Layer()
              .whiteout("etc/removed-later")
              .dir("opt/opaque").opaque("opt/opaque").file("opt/opaque/upper-c", "c")
              .hardlink("bin/busybox-hardlink", "bin/busybox")
              .file("etc/layer2", "from the zstd layer\n")
              .dir("var/lib/replaced-by-dir").file("var/lib/replaced-by-dir/inside", "dir now"))
    layer2 = writer.compress_layer(layer2.tar_bytes(), "zstd")
    layer3 = writer.compress_layer(writer.Layer().file("etc/layer3", "plain tar\n")
                                   .symlink("etc/os-release-link", "/etc/os-release")
                                   .tar_bytes(), "")
    config = {"Env": ["PATH=/usr/bin:/bin", "FOO=bar baz", "EMPTY="],
              "Entrypoint": ["/bin/echo", "entry"], "Cmd": ["from-cmd"],
              "WorkingDir": "/tmp", "Labels": {"org.example.label": "yes",
                                               "org.example.quote": "it's"}}
    busybox = writer.Image([base, layer2, layer3], config)

    def arch_image(arch, variant="", docker=False):
        layer = busybox_layer(extra=lambda l: l.file("etc/arch", arch + "\n"))
        return writer.Image([writer.compress_layer(layer.tar_bytes(), "gzip", docker=docker)],
                            {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}, arch=arch,
                            variant=variant, docker=docker)

    multi = writer.Index([arch_image("amd64"), arch_image("arm64", "v8"),
                          arch_image("ppc64le")])
    dockerfmt = writer.Index([arch_image("amd64", docker=True), arch_image("arm64", "v8",
                                                                           docker=True)],
                             docker=True)
    single_docker = arch_image("amd64", docker=True)
    return {"busybox:latest": busybox, "busybox:v1": busybox, "multi:latest": multi,
            "dockerfmt:list": dockerfmt, "dockerfmt:single": single_docker}


def push_image(registry_uri_base: str, repo_tag: str, item, workdir: str,
               extra_args: list[str] = ()) -> None:
    """Write `item` into an OCI layout and push it with skopeo (all platforms, digests kept)."""
    layout = tempfile.mkdtemp(prefix="layout-", dir=workdir)
    writer.write_layout(layout, {"t": item})
    argv = ["skopeo", "copy", "--quiet", "--all", "--preserve-digests",
            "--dest-tls-verify=false", *extra_args, f"oci:{layout}:t",
            f"{registry_uri_base}/{repo_tag}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    shutil.rmtree(layout, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"skopeo push of {repo_tag} failed: {result.stderr}")


def push_direct(registry: "Registry", repo_tag: str, item) -> None:
    """Push with plain distribution-API calls (monolithic blob uploads, then the manifests).

    skopeo's oci: transport does not read Docker media types from a layout, so Docker-format
    images (schema 2 manifests, manifest lists) go up this way, exactly as written."""
    repo, _, tag = repo_tag.partition(":")
    base = f"http://{registry.host}/v2/{repo}"
    manifests = []
    for blob in item.blobs():
        if blob.media_type in (writer.mt.DOCKER_MANIFEST, writer.mt.OCI_MANIFEST,
                               writer.mt.DOCKER_LIST, writer.mt.OCI_INDEX):
            manifests.append(blob)
            continue
        request = urllib.request.Request(f"{base}/blobs/uploads/", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as resp:
            location = urllib.parse.urljoin(base, resp.headers["Location"])
        sep = "&" if "?" in location else "?"
        request = urllib.request.Request(f"{location}{sep}digest={blob.digest}", method="PUT",
                                         data=blob.data,
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 201, resp.status
    for blob in manifests:  # image manifests first, the index (last in blobs()) by tag
        ref = tag if blob is item.manifest else blob.digest
        request = urllib.request.Request(f"{base}/manifests/{ref}", method="PUT", data=blob.data,
                                         headers={"Content-Type": blob.media_type})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 201, resp.status


class TestImages:
    """What `test_images` pushed: digests and expectations for assertions."""

    def __init__(self, registry: Registry, items: dict):
        self.registry = registry
        self.items = items

    def uri(self, repo_tag: str) -> str:
        return self.registry.uri(repo_tag)

    def manifest_digest(self, repo_tag: str) -> str:
        return self.items[repo_tag].manifest.digest


def require_registry() -> None:
    """A missing registry is a broken test setup, not a reason to skip: CI installs it
    (scripts/install-deps), and a skip would silently drop every OCI test."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.fail(f"{REGISTRY_BIN} missing: run ./scripts/install-deps "
                    "(Debian package docker-registry)")


@pytest.fixture(scope="session")
def registry_workdir():
    path = tempfile.mkdtemp(prefix="satchel-registry-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def oci_registry(registry_workdir):
    require_registry()
    workdir = os.path.join(registry_workdir, "plain")
    os.makedirs(workdir)
    registry = Registry(workdir)
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def test_images(oci_registry, registry_workdir) -> TestImages:
    items = standard_images()
    for repo_tag, item in items.items():
        if repo_tag.startswith("dockerfmt"):
            push_direct(oci_registry, repo_tag, item)
        else:
            push_image(f"docker://{oci_registry.host}", repo_tag, item, registry_workdir)
    return TestImages(oci_registry, items)


@pytest.fixture(scope="session")
def registry_ca(registry_workdir) -> str:
    """A CA bundle file trusting the auth registry's self-signed certificate."""
    directory = os.path.join(registry_workdir, "tls")
    os.makedirs(directory, exist_ok=True)
    cert, key = make_ca(directory)
    return cert, key


@pytest.fixture(scope="session")
def auth_registry(registry_workdir, registry_ca):
    """TLS + htpasswd registry holding busybox:latest (pushed with credentials)."""
    require_registry()
    workdir = os.path.join(registry_workdir, "auth")
    os.makedirs(workdir)
    htpasswd = os.path.join(workdir, "htpasswd")
    subprocess.run(["htpasswd", "-Bbc", htpasswd, USERNAME, PASSWORD], check=True,
                   capture_output=True)
    registry = Registry(workdir, tls=registry_ca, htpasswd=htpasswd)
    push_image(f"docker://{registry.host}", "private/busybox:latest",
               standard_images()["busybox:latest"], registry_workdir,
               ["--dest-creds", f"{USERNAME}:{PASSWORD}"])
    registry.ca_file = registry_ca[0]
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def token_registry(registry_workdir):
    """Plain-HTTP registry with Bearer-token auth from a TokenServer in this process."""
    require_registry()
    workdir = os.path.join(registry_workdir, "token")
    os.makedirs(workdir)
    tokens = TokenServer(workdir, service="satchel-test-registry", issuer="satchel-test-issuer")
    registry = Registry(workdir, token={"realm": tokens.realm, "service": tokens.service,
                                        "issuer": tokens.issuer,
                                        "rootcertbundle": tokens.cert})
    push_image(f"docker://{registry.host}", "private/busybox:latest",
               standard_images()["busybox:latest"], registry_workdir,
               ["--dest-creds", f"{USERNAME}:{PASSWORD}"])
    registry.tokens = tokens
    yield registry
    registry.stop()
    tokens.stop()


# ------------------------------------------------------------------------- inspecting results
def sif_partition_offset(path: str) -> int:
    from satchel.image import sif
    with sif.SIFFile.open(path) as image:
        return image.primary_partition().offset


def sif_extract(path: str, dest: str) -> str:
    """Unpack the SIF's root file system into `dest` (root keeps owners) with unsquashfs."""
    subprocess.run(["unsquashfs", "-no-progress", "-quiet", "-f", "-d", dest, "-o",
                    str(sif_partition_offset(path)), path], check=True, capture_output=True)
    return dest


def sif_listing(path: str) -> dict[str, str]:
    """path -> 'MODE OWNER/GROUP' from `unsquashfs -lln` (numeric owners)."""
    out = subprocess.run(["unsquashfs", "-lln", "-o", str(sif_partition_offset(path)), path],
                         check=True, capture_output=True, text=True).stdout
    listing = {}
    for line in out.splitlines():
        fields = line.split()
        at = line.find(" squashfs-root")  # the name: after a size, or a device's numbers
        if len(fields) < 6 or at < 0:
            continue
        name = line[at + len(" squashfs-root"):] or "/"
        name = name.split(" -> ")[0]
        listing[name] = f"{fields[0]} {fields[1]}"
    return listing


class Proxy:
    """A TCP proxy in front of a registry: records what clients send (to see Range headers),
    can throttle what they receive (to kill a pull mid-download), can be closed (offline)."""

    def __init__(self, upstream_port: int, rate: int | None = None):
        self.upstream = upstream_port
        self.rate = rate  # bytes per second towards the client, None = unlimited
        self.sent_by_clients = bytearray()
        self.bytes_to_clients = 0
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self._open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, to_client):
        chunk = 16384 if (to_client and self.rate) else 65536
        try:
            while True:
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if to_client:
                        self.bytes_to_clients += len(data)
                    else:
                        self.sent_by_clients += data
                if to_client and self.rate:
                    time.sleep(len(data) / self.rate)  # the throttling itself
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def requests_text(self) -> str:
        with self._lock:
            return self.sent_by_clients.decode(errors="replace")

    def close(self):
        try:  # wakes the accept() of the listening thread (close() alone does not)
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        for sock in self._open:
            try:
                sock.close()
            except OSError:
                pass


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def http_get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
