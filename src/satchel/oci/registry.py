"""OCI distribution client: manifests and blobs from a registry, with anonymous, Bearer-token
and Basic authentication.

Auth follows the distribution spec: send the request; on 401 read WWW-Authenticate. For Bearer,
fetch a token from the realm (with our credentials, if any, as Basic auth) for the scope the
challenge names (else `repository:NAME:pull`, or `pull,push` for a push), then retry; for Basic, retry with the credentials. The resulting
Authorization header is kept for the rest of the session (all threads).
"""

from __future__ import annotations

import json
import threading
import urllib.parse

from satchel import log
from satchel.errors import OCIError
from satchel.oci import auth, manifest, transport
from satchel.oci.reference import DockerRef


class Registry:
    def __init__(self, ref: DockerRef, credentials: auth.Credentials | None = None,
                 plain_http: bool = False, pool: transport.Pool | None = None,
                 actions: str = "pull"):
        self.ref = ref
        self.actions = actions  # what a token is asked for: "pull" or "pull,push"
        self.credentials = credentials
        self.scheme = "http" if (plain_http or ref.scheme == "http") else "https"
        self.host = ref.api_host
        self.base = f"{self.scheme}://{self.host}/v2/{ref.repository}"
        self.pool = pool or transport.Pool()
        self._auth_header: str | None = None
        self._auth_lock = threading.Lock()

    # ---- requests with authentication
    def _request(self, method: str, url: str, headers: dict | None = None,
                 body=None) -> transport.Response:
        """One request, authenticated; a body sent again after a 401 must be bytes or a
        transport.FileBody (both can be sent twice)."""
        headers = dict(headers or {})
        sent_auth = self._auth_header
        if sent_auth:
            headers["Authorization"] = sent_auth
        resp = transport.request(self.pool, method, url, headers, body, auth_for_host=self.host)
        if resp.status != 401:
            return resp
        challenge = resp.header("WWW-Authenticate")
        error_text = _error_text(resp)
        with self._auth_lock:
            if self._auth_header == sent_auth:  # nobody refreshed it meanwhile
                self._auth_header = self._authenticate(challenge, error_text, sent_auth)
            headers["Authorization"] = self._auth_header
        resp = transport.request(self.pool, method, url, headers, body, auth_for_host=self.host)
        if resp.status == 401:
            raise self._unauthorized(_error_text(resp))
        return resp

    def _unauthorized(self, detail: str) -> OCIError:
        who = (f"with the credentials from {self.credentials.origin}" if self.credentials
               else "anonymously")
        return OCIError(f"{self.ref}: unauthorized: access denied {who}"
                        + (f" ({detail})" if detail else ""),
                        hint="check --docker-username/--docker-password, "
                             "APPTAINER_DOCKER_USERNAME/PASSWORD, 'registry login' or "
                             "~/.docker/config.json", in_context=True)

    def _authenticate(self, challenge: str, detail: str, previous: str | None) -> str:
        schemes = dict(auth.parse_challenges(challenge))
        if "bearer" in schemes:
            return "Bearer " + self._fetch_token(schemes["bearer"])
        if "basic" in schemes:
            if self.credentials is None or previous:
                raise self._unauthorized(detail)
            return self.credentials.basic_header()
        raise OCIError(f"{self.ref}: registry asks for unsupported authentication "
                       f"{challenge!r}", in_context=True)

    def _fetch_token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise OCIError(f"{self.ref}: Bearer challenge without a realm", in_context=True)
        query = {"scope": self._scope(params.get("scope"))}
        if params.get("service"):
            query["service"] = params["service"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic_header()
            if self.credentials.identity_token:
                return self._refresh_token(realm, params, query)
        realm_host = urllib.parse.urlsplit(realm).netloc
        log.debug(f"requesting a token from {realm}")
        resp = transport.request(self.pool, "GET", url, headers, auth_for_host=realm_host)
        if resp.status in (401, 403):
            raise self._unauthorized(_error_text(resp))
        if resp.status != 200:
            raise OCIError(f"{self.ref}: token server {realm} answered {resp.status} "
                           f"{_error_text(resp)}".rstrip(), in_context=True)
        return _token_from(resp.read(1 << 20), realm)

    def _scope(self, challenged: str | None) -> str:
        """The token scope to ask for: the challenge's, widened to every action this client
        needs on its own repository. A registry challenges a blob HEAD with `pull` only; a
        push client that took that scope as it is would learn at its first upload (or never,
        if the registry has the blobs) that it needs `pull,push`, as docker asks up front."""
        own = f"repository:{self.ref.repository}:"
        if not challenged:
            return own + self.actions
        if not challenged.startswith(own):
            return challenged
        actions = challenged[len(own):].split(",")
        actions += [a for a in self.actions.split(",") if a not in actions]
        return own + ",".join(a for a in actions if a)

    def _refresh_token(self, realm, params, query) -> str:
        """OAuth2 refresh-token grant, for an identity token from `docker login`."""
        form = urllib.parse.urlencode({"grant_type": "refresh_token", "service": query.get("service", ""),
                                       "scope": query["scope"], "client_id": "satchel",
                                       "refresh_token": self.credentials.identity_token}).encode()
        resp = transport.request(self.pool, "POST", realm,
                                 {"Content-Type": "application/x-www-form-urlencoded"}, form,
                                 auth_for_host=urllib.parse.urlsplit(realm).netloc)
        if resp.status != 200:
            raise self._unauthorized(_error_text(resp))
        return _token_from(resp.read(1 << 20), realm)

    # ---- the API
    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, Docker-Content-Digest header or "") of a manifest or index."""
        url = f"{self.base}/manifests/{reference}"
        resp = self._request("GET", url, {"Accept": manifest.ACCEPT})
        if resp.status != 200:
            raise self._status_error(resp, f"manifest {reference}")
        media_type = resp.header("Content-Type").split(";")[0].strip()
        digest_header = resp.header("Docker-Content-Digest")
        return resp.read(), media_type, digest_header

    def open_blob(self, digest: str, offset: int = 0) -> transport.Response:
        """A streaming response for a blob, from `offset` (status 206) or from the start (200:
        the registry ignored the Range header; the caller must start over)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self._request("GET", f"{self.base}/blobs/{digest}", headers)
        if resp.status == 416 and offset:
            resp.read(1 << 20)
            return resp
        if resp.status not in (200, 206):
            raise self._status_error(resp, f"blob {digest}")
        return resp

    # ---- uploads (distribution spec, "pushing blobs" and "pushing manifests")
    def blob_exists(self, digest: str) -> bool:
        """HEAD the blob: True when the registry has it already (it is then not sent)."""
        resp = self._request("HEAD", f"{self.base}/blobs/{digest}")
        resp.raw.read()
        resp.close()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self._status_error(resp, f"blob {digest}")

    def start_upload(self) -> str:
        """POST a new upload session; its URL (absolute)."""
        resp = self._request("POST", f"{self.base}/blobs/uploads/", {"Content-Length": "0"},
                             b"")
        if resp.status != 202:
            raise self._status_error(resp, "blob upload")
        resp.read(1 << 16)  # an unread response would block the connection's next request
        return self._location(resp, "blob upload")

    def upload_chunk(self, location: str, body: transport.FileBody, start: int) -> str:
        """PATCH the body as bytes [start, start+count) of the blob; the next upload URL.
        Content-Range makes the registry refuse (416) bytes that do not follow what it has."""
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Range": f"{start}-{start + body.count - 1}"}
        resp = self._request("PATCH", location, headers, body)
        if resp.status != 202:
            raise self._status_error(resp, "blob upload")
        resp.read(1 << 16)
        return self._location(resp, "blob upload")

    def upload_status(self, location: str) -> tuple[int, str] | None:
        """(bytes the registry holds, upload URL) of an upload session; None when it is gone."""
        resp = self._request("GET", location)
        resp.read(1 << 16)
        if resp.status == 404:
            return None
        if resp.status != 204:
            raise self._status_error(resp, "blob upload status")
        start, _, end = resp.header("Range").partition("-")
        # distribution answers "0-0" for an empty upload: ambiguous with one byte, so it
        # counts as empty (a wrong guess is refused with 416 thanks to Content-Range)
        held = int(end) + 1 if start == "0" and end.isdigit() and int(end) > 0 else 0
        return held, self._location(resp, "blob upload", location)

    def finish_upload(self, location: str, digest: str, data: bytes = b"") -> None:
        """PUT ?digest= (with the last bytes, or all of a small blob, as `data`): the registry
        checks the digest of what it received and stores the blob."""
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}{urllib.parse.urlencode({'digest': digest})}"
        resp = self._request("PUT", url, {"Content-Length": str(len(data)),
                                          "Content-Type": "application/octet-stream"}, data)
        detail = _error_text(resp)
        if resp.status not in (201, 204):
            if "DIGEST_INVALID" in _error_codes(detail):
                raise OCIError(f"{self.ref}: the registry refused blob {digest}: what it "
                               "received has another digest (the file changed while it was "
                               "sent?)", in_context=True)
            raise self._status_error_text(resp.status, resp.raw.reason, detail,
                                          f"blob {digest}")

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; its digest as the registry computed it."""
        resp = self._request("PUT", f"{self.base}/manifests/{reference}",
                             {"Content-Type": media_type}, data)
        if resp.status not in (200, 201):
            raise self._status_error(resp, f"manifest {reference}")
        resp.read(1 << 16)
        return resp.header("Docker-Content-Digest")

    def _location(self, resp: transport.Response, what: str, default: str = "") -> str:
        location = resp.header("Location") or default
        if not location:
            raise OCIError(f"{self.ref}: {what}: registry answered {resp.status} without a "
                           "Location", in_context=True)
        return urllib.parse.urljoin(resp.url, location)

    def _status_error(self, resp: transport.Response, what: str) -> OCIError:
        return self._status_error_text(resp.status, resp.raw.reason, _error_text(resp), what)

    def _status_error_text(self, status: int, reason: str, detail: str, what: str) -> OCIError:
        codes = _error_codes(detail)
        if status == 404 or "MANIFEST_UNKNOWN" in codes or "NAME_UNKNOWN" in codes:
            if "NAME_UNKNOWN" in codes:
                return OCIError(f"{self.ref}: repository {self.ref.repository!r} not found "
                                f"on {self.ref.registry}", in_context=True)
            if "BLOB_UNKNOWN" in codes or what.startswith("blob"):
                return OCIError(f"{self.ref}: {what} not found on the registry (blob unknown)",
                                in_context=True)
            return OCIError(f"{self.ref}: manifest unknown: no image {self.ref.reference!r} "
                            f"in {self.ref.registry}/{self.ref.repository}", in_context=True)
        if status == 403:
            doing = "pushing to" if "push" in self.actions else "pulling"
            return OCIError(f"{self.ref}: access to {what} denied ({_short(detail)})",
                            hint=f"your credentials do not allow {doing} this image",
                            in_context=True)
        if status == 429:
            return OCIError(f"{self.ref}: too many requests (rate limited by the registry)",
                            in_context=True)
        # a server error may pass (an upload resumes after it); a 416 during an upload means
        # our idea of what the registry holds is wrong: ask it and resume from there
        cls = transport.TransientError if status >= 500 or status == 416 else OCIError
        return cls(f"{self.ref}: {what}: registry answered {status} {reason}"
                        + (f" ({_short(detail)})" if detail else ""))


def _error_text(resp: transport.Response) -> str:
    try:
        return resp.read(1 << 16).decode(errors="replace").strip()
    except OCIError:
        return ""


def _error_codes(text: str) -> set[str]:
    """Error codes of a distribution-spec error body {"errors": [{"code": ...}]}."""
    try:
        doc = json.loads(text)
        return {e.get("code", "") for e in doc.get("errors", []) if isinstance(e, dict)}
    except (ValueError, AttributeError):
        return set()


def _short(detail: str) -> str:
    try:
        doc = json.loads(detail)
        messages = [e.get("message", "") for e in doc.get("errors", []) if isinstance(e, dict)]
        if messages:
            return "; ".join(m for m in messages if m)
    except (ValueError, AttributeError):
        pass
    return detail.splitlines()[0][:200] if detail else ""


def _token_from(body: bytes, realm: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        raise OCIError(f"token server {realm} returned invalid JSON") from None
    token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise OCIError(f"token server {realm} returned no token")
    return token
