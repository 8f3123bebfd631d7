"""OCI distribution client: manifests and blobs from a registry, with anonymous, Bearer-token
and Basic authentication.

Auth follows the distribution spec: send the request; on 401 read WWW-Authenticate. For Bearer,
fetch a token from the realm (with our credentials, if any, as Basic auth) for the scope
`repository:NAME:pull`, then retry; for Basic, retry with the credentials. The resulting
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
                 plain_http: bool = False, pool: transport.Pool | None = None):
        self.ref = ref
        self.credentials = credentials
        self.scheme = "http" if (plain_http or ref.scheme == "http") else "https"
        self.host = ref.api_host
        self.base = f"{self.scheme}://{self.host}/v2/{ref.repository}"
        self.pool = pool or transport.Pool()
        self._auth_header: str | None = None
        self._auth_lock = threading.Lock()

    # ---- requests with authentication
    def _request(self, method: str, url: str, headers: dict | None = None) -> transport.Response:
        headers = dict(headers or {})
        sent_auth = self._auth_header
        if sent_auth:
            headers["Authorization"] = sent_auth
        resp = transport.request(self.pool, method, url, headers, auth_for_host=self.host)
        if resp.status != 401:
            return resp
        challenge = resp.header("WWW-Authenticate")
        error_text = _error_text(resp)
        with self._auth_lock:
            if self._auth_header == sent_auth:  # nobody refreshed it meanwhile
                self._auth_header = self._authenticate(challenge, error_text, sent_auth)
            headers["Authorization"] = self._auth_header
        resp = transport.request(self.pool, method, url, headers, auth_for_host=self.host)
        if resp.status == 401:
            raise self._unauthorized(_error_text(resp))
        return resp

    def _unauthorized(self, detail: str) -> OCIError:
        who = (f"with the credentials from {self.credentials.origin}" if self.credentials
               else "anonymously")
        return OCIError(f"{self.ref}: unauthorized: access denied {who}"
                        + (f" ({detail})" if detail else ""),
                        hint="check --docker-username/--docker-password, "
                             "APPTAINER_DOCKER_USERNAME/PASSWORD or ~/.docker/config.json")

    def _authenticate(self, challenge: str, detail: str, previous: str | None) -> str:
        schemes = dict(auth.parse_challenges(challenge))
        if "bearer" in schemes:
            return "Bearer " + self._fetch_token(schemes["bearer"])
        if "basic" in schemes:
            if self.credentials is None or previous:
                raise self._unauthorized(detail)
            return self.credentials.basic_header()
        raise OCIError(f"{self.ref}: registry asks for unsupported authentication "
                       f"{challenge!r}")

    def _fetch_token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise OCIError(f"{self.ref}: Bearer challenge without a realm")
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
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
                           f"{_error_text(resp)}".rstrip())
        return _token_from(resp.read(1 << 20), realm)

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

    def _status_error(self, resp: transport.Response, what: str) -> OCIError:
        detail = _error_text(resp)
        codes = _error_codes(detail)
        status = resp.status
        if status == 404 or "MANIFEST_UNKNOWN" in codes or "NAME_UNKNOWN" in codes:
            if "NAME_UNKNOWN" in codes:
                return OCIError(f"{self.ref}: repository {self.ref.repository!r} not found "
                                f"on {self.ref.registry}")
            if "BLOB_UNKNOWN" in codes or what.startswith("blob"):
                return OCIError(f"{self.ref}: {what} not found on the registry (blob unknown)")
            return OCIError(f"{self.ref}: manifest unknown: no image {self.ref.reference!r} "
                            f"in {self.ref.registry}/{self.ref.repository}")
        if status == 403:
            return OCIError(f"{self.ref}: access to {what} denied ({_short(detail)})",
                            hint="your credentials do not allow pulling this image")
        if status == 429:
            return OCIError(f"{self.ref}: too many requests (rate limited by the registry)")
        return OCIError(f"{self.ref}: {what}: registry answered {status} {resp.raw.reason}"
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
