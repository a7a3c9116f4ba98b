"""A registry client for the OCI distribution spec (and Docker Registry HTTP API v2).

One ``RegistryClient`` per service: it owns the HTTP connection pools (httpx, async),
the Bearer token cache and the scheme each registry answered on. What it does:

- hosts: ``docker.io`` is served by ``registry-1.docker.io``; plain HTTP is allowed only
  for loopback hosts and ``insecure_registries`` entries (exact ``host:port``, a bare host
  meaning any port, or a CIDR); those try HTTPS without verification first and fall
  back to HTTP (every operation, CASES.md C29). Everything else is HTTPS with the
  system CAs. ``registry_mirrors`` are tried first for pulls.
- auth (C28): a 401 is answered once from its ``WWW-Authenticate`` challenge: Bearer ->
  GET the realm with ``service`` and one ``scope`` per scope token (the challenge's, plus
  ours; ``repository:<name>:pull`` when the challenge names none), sending Basic
  credentials for the registry host, or POST an identity token; ``token`` or
  ``access_token`` honoured with ``expires_in``; Basic -> the registry's own credentials.
  ``insufficient_scope`` gets one more token for the union of scopes; a second 401 fails
  with ``Unauthenticated`` naming the registry.
- redirects (to blob storage) are followed by hand, and the Authorization header is only
  sent to the origin it was meant for.
- manifests (C26): resolve a tag with HEAD and an Accept list of every supported type;
  when ``Docker-Content-Digest`` is missing or HEAD is refused (405), GET and hash the
  exact body; a header that disagrees with the body fails; a body over 4 MiB fails
  before it is read whole. A blobs-endpoint response never types a manifest.
- blobs: GET with ``Range`` to resume; 206 continues, 200 restarts, 416 restarts.

- tags (distribution spec "Listing Tags"): ``GET /v2/<name>/tags/list``, following the
  ``Link: <...?n=&last=>; rel="next"`` header page after page (``next_tags_page``).

Errors are ``common.errors``: NotFound (404) carrying the registry's error code and message
the way dockerd words them (``manifest for x:t not found: manifest unknown: manifest
unknown``, ``repository x not found: name unknown: ...``; ``details`` has
``registry_code``/``registry_message``), Unauthenticated (401/403), Unavailable
(connection, 5xx), InvalidArgument (bad documents, digest mismatch).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from common.errors import (
    DockyardError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.image import oci
from services.image.auth import Challenge, Credentials, CredentialStore, TokenCache, parse_challenges
from services.image.blobfetch import BlobRequest
from services.image.reference import Reference, registry_endpoint_host

log = logging.getLogger(__name__)

USER_AGENT = "dockyard/0.1 (+https://github.com/dockyard)"
_MAX_REDIRECTS = 5
_ERROR_BODY_MAX = 64 * 1024
_TAG_PAGE_MAX = 4 * 1024 * 1024
_MAX_TAG_PAGES = 10_000


def _is_loopback_host(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_is_insecure(host: str, insecure: list[str]) -> bool:
    """True when ``host`` (host[:port]) may be spoken to over plain HTTP.

    Loopback always; an entry ``host:port`` matches exactly, a bare ``host`` any port of it,
    a CIDR any address in it.
    """
    if _is_loopback_host(host):
        return True
    bare = host
    if host.startswith("["):
        bare = host[1 : host.find("]")]
    elif host.count(":") == 1:
        bare = host.split(":", 1)[0]
    for entry in insecure:
        e = entry.strip().lower()
        for prefix in ("http://", "https://"):
            e = e.removeprefix(prefix)
        e = e.rstrip("/")
        if not e:
            continue
        if e == host.lower() or e == bare.lower():
            return True
        if "/" in e:
            try:
                net = ipaddress.ip_network(e, strict=False)
                if ipaddress.ip_address(bare) in net:
                    return True
            except ValueError:
                continue
    return False


@dataclass
class Endpoint:
    """Where to send requests for one registry (or mirror)."""

    domain: str  # the reference's registry, e.g. docker.io
    host: str  # HTTP host[:port], e.g. registry-1.docker.io
    schemes: list[str]  # "https", "https+insecure", "http" in the order to try
    mirror: bool = False
    path_prefix: str = ""  # mirrors may live under a path

    def url(self, scheme: str, path: str) -> str:
        real = "https" if scheme.startswith("https") else "http"
        return f"{real}://{self.host}{self.path_prefix}{path}"


def _registry_error(resp: httpx.Response, body: bytes) -> str:
    try:
        obj = json.loads(body)
        errs = obj.get("errors") if isinstance(obj, dict) else None
        if isinstance(errs, list) and errs:
            parts = []
            for e in errs[:3]:
                if isinstance(e, dict):
                    code = str(e.get("code") or "").lower().replace("_", " ")
                    msg = str(e.get("message") or "")
                    parts.append(f"{code}: {msg}" if code and msg and code != msg else (msg or code))
            if parts:
                return "; ".join(parts)
        if isinstance(obj, dict) and obj.get("details"):
            return str(obj["details"])
    except (ValueError, UnicodeDecodeError):
        pass
    text = body[:200].decode(errors="replace").strip()
    return f"{resp.status_code} {resp.reason_phrase}" + (f": {text}" if text and "<html" not in text.lower() else "")


def registry_errors(body: bytes) -> list[tuple[str, str]]:
    """The ``(code, message)`` pairs of a distribution-spec error body
    (``{"errors": [{"code", "message", "detail"}]}``); empty when it is not one."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errs = obj.get("errors") if isinstance(obj, dict) else None
    if not isinstance(errs, list):
        return []
    return [
        (str(e.get("code") or "UNKNOWN"), str(e.get("message") or ""))
        for e in errs
        if isinstance(e, dict) and (e.get("code") or e.get("message"))
    ]


def errcode_text(code: str, message: str) -> str:
    """One registry error as Docker prints it (distribution's ``errcode.Error``):
    the code in lower case with spaces, a colon, the message (``manifest unknown: manifest unknown``)."""
    return f"{code.lower().replace('_', ' ')}: {message}"


def not_found_error(resp: httpx.Response, body: bytes, *, manifest_of: str, repository: str) -> NotFound:
    """A registry's 404 as dockerd words it (distribution/errors.go ``notFoundError``):

    - ``MANIFEST_UNKNOWN`` -> ``manifest for <manifest_of> not found: manifest unknown: <message>``
    - ``NAME_UNKNOWN`` -> ``repository <repository> not found: name unknown: <message>``
    - any other code -> ``<code text>: <message>``; a body that is no error document ->
      ``manifest for <manifest_of> not found: <status and text>``.

    ``details``: ``registry_code``, ``registry_message`` (the first error's), ``ref``.
    """
    errs = registry_errors(body)
    if not errs:
        return NotFound(
            f"manifest for {manifest_of} not found: {_registry_error(resp, body)}",
            {"registry_code": "", "registry_message": "", "ref": manifest_of},
        )
    code, message = errs[0]
    text = errcode_text(code, message)
    if code == "MANIFEST_UNKNOWN":
        text = f"manifest for {manifest_of} not found: {text}"
    elif code == "NAME_UNKNOWN":
        text = f"repository {repository} not found: {text}"
    return NotFound(text, {"registry_code": code, "registry_message": message, "ref": manifest_of})


def next_tags_page(current_url: str, link: str) -> str | None:
    """The URL of the next page of a tag list, from the response's ``Link`` header
    (RFC 8288, as the distribution spec uses it: ``</v2/<name>/tags/list?n=2&last=b>; rel="next"``).

    ``current_url`` is the absolute URL just fetched; a relative target is resolved against
    it. None when there is no ``rel="next"`` link. Raises InvalidArgument for a link that is
    not ``<URL>; params`` or that points at another origin (its credentials would leak).
    """
    if not link.strip():
        return None
    for part in _split_links(link):
        target, sep, params = part.partition(">")
        target = target.strip()
        if not sep or not target.startswith("<"):
            raise InvalidArgument(f"registry tag list: malformed Link header {link!r}")
        rels: list[str] = []
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "rel":
                rels += value.strip().strip('"').lower().split()
        if rels and "next" not in rels:
            continue
        url = urllib.parse.urljoin(current_url, target[1:].strip())
        if urllib.parse.urlsplit(url)[:2] != urllib.parse.urlsplit(current_url)[:2]:
            raise InvalidArgument(f"registry tag list: the next page {url!r} is on another origin")
        return url
    return None


def _split_links(value: str) -> list[str]:
    """Split a Link header at the commas between links (not those inside ``<...>`` or quotes)."""
    parts: list[str] = []
    buf: list[str] = []
    in_url = in_quote = False
    for ch in value:
        if ch == "<" and not in_quote:
            in_url = True
        elif ch == ">" and not in_quote:
            in_url = False
        elif ch == '"' and not in_url:
            in_quote = not in_quote
        if ch == "," and not in_url and not in_quote:
            parts.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    if "".join(buf).strip():
        parts.append("".join(buf).strip())
    return [p for p in parts if p]


class _Auth:
    """Authorization state for one registry host within the client."""

    def __init__(self) -> None:
        self.challenge: Challenge | None = None


class RegistryClient:
    """See the module docstring. ``credentials`` looks up config.json entries."""

    def __init__(
        self,
        *,
        insecure: list[str] | None = None,
        mirrors: dict[str, list[str]] | None = None,
        credentials: CredentialStore | None = None,
        timeout_s: float = 60.0,
        max_connections: int = 32,
    ) -> None:
        self.insecure = list(insecure or [])
        self.mirrors = dict(mirrors or {})
        self.credentials = credentials or CredentialStore()
        self.tokens = TokenCache()
        self._auth: dict[str, _Auth] = {}
        self._schemes: dict[str, str] = {}  # host -> scheme that answered
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        timeout = httpx.Timeout(timeout_s, connect=15.0)
        ctx = ssl.create_default_context()
        self._http = httpx.AsyncClient(
            verify=ctx,
            timeout=timeout,
            limits=limits,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            trust_env=True,
        )
        self._http_noverify = httpx.AsyncClient(
            verify=False,
            timeout=timeout,
            limits=limits,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            trust_env=True,
        )
        self._token_locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        await self._http.aclose()
        await self._http_noverify.aclose()

    # -- endpoints ---------------------------------------------------------------------------------
    def endpoint(self, domain: str) -> Endpoint:
        host = registry_endpoint_host(domain)
        if host_is_insecure(host, self.insecure) or host_is_insecure(domain, self.insecure):
            schemes = ["https+insecure", "http"]
            if host in self._schemes:
                schemes = [self._schemes[host]]
        else:
            schemes = ["https"]
        return Endpoint(domain, host, schemes)

    def pull_endpoints(self, domain: str) -> list[Endpoint]:
        """Mirrors of ``domain`` (configured URLs) first, then the registry itself."""
        out = []
        for mirror in self.mirrors.get(domain, []):
            url = mirror if "://" in mirror else f"https://{mirror}"
            parsed = urllib.parse.urlsplit(url)
            if not parsed.netloc:
                continue
            schemes = ["http"] if parsed.scheme == "http" else ["https"]
            if parsed.scheme == "https" and host_is_insecure(parsed.netloc, self.insecure):
                schemes = ["https+insecure", "http"]
            out.append(Endpoint(domain, parsed.netloc, schemes, mirror=True, path_prefix=parsed.path.rstrip("/")))
        out.append(self.endpoint(domain))
        return out

    # -- requests ----------------------------------------------------------------------------------
    def _client_for(self, scheme: str) -> httpx.AsyncClient:
        return self._http_noverify if scheme == "https+insecure" else self._http

    async def _send(
        self,
        ep: Endpoint,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: Any = None,
        stream: bool = False,
        auth_header: str | None = None,
    ) -> httpx.Response:
        """Send one request, trying the endpoint's schemes in order (HTTPS->HTTP fallback for
        insecure hosts), following redirects by hand (Authorization only to the same origin)."""
        last_exc: Exception | None = None
        for scheme in ep.schemes:
            url = ep.url(scheme, path)
            origin = urllib.parse.urlsplit(url)[:2]
            hdrs = dict(headers or {})
            if auth_header:
                hdrs["Authorization"] = auth_header
            client = self._client_for(scheme)
            try:
                for _hop in range(_MAX_REDIRECTS + 1):
                    req = client.build_request(method, url, headers=hdrs, content=content)
                    resp = await client.send(req, stream=True)
                    if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                        await resp.aclose()
                        url = urllib.parse.urljoin(url, resp.headers["location"])
                        new = urllib.parse.urlsplit(url)
                        if new[:2] != origin:
                            hdrs.pop("Authorization", None)
                            if new.scheme == "https":
                                client = self._http
                            elif not host_is_insecure(new.netloc, self.insecure) and origin[0] == "https":
                                raise InvalidArgument(f"registry {ep.host}: refusing a redirect from HTTPS to {url}")
                        if resp.status_code == 303:
                            method, content = "GET", None
                        continue
                    break
                else:
                    await resp.aclose()
                    raise Unavailable(f"registry {ep.host}: too many redirects")
            except httpx.ConnectError as exc:
                last_exc = exc
                continue
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # "server gave HTTP response to HTTPS client" shows up as a protocol/TLS error
                last_exc = exc
                if scheme.startswith("https") and len(ep.schemes) > 1:
                    continue
                raise Unavailable(f"registry {ep.host}: {method} {path}: {exc}") from None
            except httpx.TimeoutException as exc:
                raise Unavailable(f"registry {ep.host}: {method} {path} timed out ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise Unavailable(f"registry {ep.host}: {method} {path}: {exc}") from None
            if len(ep.schemes) > 1:
                self._schemes[ep.host] = scheme
                ep.schemes = [scheme]
            if not stream:
                try:
                    await resp.aread()
                except httpx.HTTPError as exc:
                    await resp.aclose()
                    raise Unavailable(f"registry {ep.host}: {method} {path}: {exc}") from None
            return resp
        reason = str(last_exc) if last_exc else "no usable scheme"
        if "CERTIFICATE_VERIFY_FAILED" in reason or "SSL" in reason or "ssl" in reason:
            raise Unavailable(
                f"registry {ep.host}: TLS handshake failed ({reason}); if it serves plain HTTP or a "
                "self-signed certificate, add it to insecure_registries"
            )
        raise Unavailable(f"registry {ep.host}: cannot connect: {reason}")

    async def _token(self, ep: Endpoint, challenge: Challenge, scopes: list[str], creds: Credentials | None) -> str:
        realm = challenge.params.get("realm", "")
        if not realm:
            raise Unauthenticated(f"registry {ep.domain}: Bearer challenge without a realm")
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https"):
            raise Unauthenticated(f"registry {ep.domain}: token realm {realm!r} is not an http(s) URL")
        if parsed.scheme == "http" and not host_is_insecure(parsed.netloc, self.insecure):
            # never send credentials over plain HTTP to a non-loopback, non-insecure host
            creds = None
        key = frozenset(scopes)
        lock = self._token_locks.setdefault(ep.host, asyncio.Lock())
        async with lock:
            cached = self.tokens.get(ep.host, key)
            if cached:
                return cached
            params: list[tuple[str, str | int | float | bool | None]] = []
            if challenge.params.get("service"):
                params.append(("service", challenge.params["service"]))
            params.extend(("scope", s) for s in scopes)
            client = self._http if parsed.scheme == "https" else self._http_noverify
            try:
                if creds is not None and creds.identity_token:
                    form = {
                        "grant_type": "refresh_token",
                        "refresh_token": creds.identity_token,
                        "client_id": "dockyard",
                        "scope": " ".join(scopes),
                    }
                    if challenge.params.get("service"):
                        form["service"] = challenge.params["service"]
                    resp = await client.post(realm, data=form)
                else:
                    headers = {"Authorization": creds.basic_header()} if creds is not None and creds.password else {}
                    resp = await client.get(realm, params=params, headers=headers)
            except httpx.HTTPError as exc:
                raise Unavailable(f"registry {ep.domain}: token server {parsed.netloc}: {exc}") from None
            if resp.status_code in (401, 403):
                if creds is None:
                    raise Unauthenticated(
                        f"registry {ep.domain}: authentication required (the token server refused anonymous "
                        f"access: {_registry_error(resp, resp.content)}); run 'dockyard login {ep.domain}'"
                    )
                who = f" for user '{creds.username}'" if creds.username else ""
                raise Unauthenticated(
                    f"registry {ep.domain}: authentication failed{who}: token server answered "
                    f"{_registry_error(resp, resp.content)}"
                )
            if resp.status_code != 200:
                raise Unavailable(f"registry {ep.domain}: token server answered {_registry_error(resp, resp.content)}")
            try:
                obj = resp.json()
            except ValueError:
                raise Unauthenticated(f"registry {ep.domain}: token server sent invalid JSON") from None
            token = obj.get("token") or obj.get("access_token")
            if not isinstance(token, str) or not token:
                raise Unauthenticated(f"registry {ep.domain}: token server sent no token")
            expires = obj.get("expires_in")
            expires_s = float(expires) if isinstance(expires, (int, float)) and expires > 0 else 60.0
            self.tokens.put(ep.host, key, token, expires_s)
            return token

    async def _creds(self, ep: Endpoint, override: Credentials | None) -> Credentials | None:
        if override is not None and not ep.mirror:
            return override
        domain = ep.host if ep.mirror else ep.domain
        return await self.credentials.get(domain)

    async def request(
        self,
        ep: Endpoint,
        method: str,
        path: str,
        *,
        scopes: list[str],
        headers: dict[str, str] | None = None,
        content: Any = None,
        stream: bool = False,
        creds: Credentials | None = None,
        what: str = "",
    ) -> httpx.Response:
        """Send an authorised request (see the module docstring for the 401 dance).

        Returns the response for any status but 401; raises Unauthenticated after a second
        401. ``content`` must be re-sendable (bytes) when a retry may happen.
        """
        state = self._auth.setdefault(ep.host, _Auth())
        scopes = list(dict.fromkeys(scopes))
        user_creds = await self._creds(ep, creds)
        tried_fresh = False
        auth_header = await self._auth_header(ep, state, scopes, user_creds, fetch=True)
        for _attempt in range(3):
            body = content() if callable(content) else content
            resp = await self._send(
                ep, method, path, headers=headers, content=body, stream=stream, auth_header=auth_header
            )
            if resp.status_code != 401:
                return resp
            await resp.aclose()
            challenges = parse_challenges(*resp.headers.get_list("www-authenticate"))
            bearer = next((c for c in challenges if c.scheme == "bearer"), None)
            basic = next((c for c in challenges if c.scheme == "basic"), None)
            if tried_fresh or (bearer is None and basic is None):
                break
            tried_fresh = True
            if bearer is not None:
                state.challenge = bearer
                wanted = list(dict.fromkeys([*bearer.scopes, *scopes])) if bearer.scopes else scopes
                self.tokens.drop(ep.host)  # the token we sent (if any) was refused
                scopes = wanted
                auth_header = "Bearer " + await self._token(ep, bearer, scopes, user_creds)
            else:
                assert basic is not None
                state.challenge = basic
                if user_creds is None or not user_creds.password:
                    raise Unauthenticated(
                        f"registry {ep.domain}: authentication required{f' for {what}' if what else ''}; "
                        f"run 'dockyard login {ep.domain}'"
                    )
                auth_header = user_creds.basic_header()
        who = f" as '{user_creds.username}'" if user_creds is not None and user_creds.username else ""
        if state.challenge is not None and state.challenge.scheme == "basic" and user_creds is not None:
            raise Unauthenticated(f"registry {ep.domain}: authentication failed{who}: invalid username or password")
        target = f"{what}: " if what else ""
        raise Unauthenticated(
            f"registry {ep.domain}: {target}access denied{who}: the repository does not exist or may require "
            f"'dockyard login {ep.domain}'"
        )

    async def _auth_header(
        self, ep: Endpoint, state: _Auth, scopes: list[str], creds: Credentials | None, *, fetch: bool
    ) -> str | None:
        ch = state.challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return creds.basic_header() if creds is not None and creds.password else None
        if ch.scheme == "bearer":
            scopes = list(dict.fromkeys([*ch.scopes, *scopes]))
            token = self.tokens.get(ep.host, frozenset(scopes))
            if token is None and fetch:
                token = await self._token(ep, ch, scopes, creds)
            return f"Bearer {token}" if token else None
        return None

    # -- API ---------------------------------------------------------------------------------------
    async def ping(self, ep: Endpoint, creds: Credentials | None = None) -> None:
        """GET /v2/: learn the auth challenge; Unavailable when it is not a registry."""
        resp = await self._send(ep, "GET", "/v2/")
        if resp.status_code == 401:
            challenges = parse_challenges(*resp.headers.get_list("www-authenticate"))
            state = self._auth.setdefault(ep.host, _Auth())
            state.challenge = next((c for c in challenges if c.scheme == "bearer"), None) or next(
                (c for c in challenges if c.scheme == "basic"), None
            )
            return
        if resp.status_code == 200:
            return
        if resp.status_code == 404:
            raise Unavailable(f"registry {ep.host}: /v2/ not found: not a registry (v2 API)")
        raise Unavailable(f"registry {ep.host}: ping answered {_registry_error(resp, resp.content)}")

    async def login(self, domain: str, creds: Credentials) -> None:
        """Check ``creds`` against ``domain``: Basic or a token fetch for the registry scope.

        Raises Unauthenticated naming the registry when refused.
        """
        ep = self.endpoint(domain)
        resp = await self._send(ep, "GET", "/v2/")
        if resp.status_code == 200:
            return  # no auth at all: accepted like docker does
        if resp.status_code != 401:
            raise Unavailable(f"registry {domain}: /v2/ answered {_registry_error(resp, resp.content)}")
        challenges = parse_challenges(*resp.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            self.tokens.drop(ep.host)
            await self._token(ep, bearer, bearer.scopes, creds)
            return
        resp = await self._send(ep, "GET", "/v2/", auth_header=creds.basic_header())
        if resp.status_code == 401:
            raise Unauthenticated(
                f"registry {domain}: authentication failed for user '{creds.username}': invalid username or password"
            )
        if resp.status_code != 200:
            raise Unavailable(f"registry {domain}: login answered {_registry_error(resp, resp.content)}")

    async def _read_limited(self, resp: httpx.Response, limit: int, what: str) -> bytes:
        length = resp.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            await resp.aclose()
            raise InvalidArgument(f"{what}: {int(length)} bytes is over the {limit} byte manifest limit")
        buf = bytearray()
        try:
            async for chunk in resp.aiter_bytes():
                buf += chunk
                if len(buf) > limit:
                    raise InvalidArgument(f"{what}: more than the {limit} byte manifest limit")
        finally:
            await resp.aclose()
        return bytes(buf)

    def _status_error(self, resp: httpx.Response, body: bytes, what: str, ep: Endpoint) -> DockyardError:
        text = _registry_error(resp, body)
        if resp.status_code == 404:
            return NotFound(f"{what} not found: {text}")
        if resp.status_code == 403:
            return PermissionDenied(f"registry {ep.domain}: {what}: denied: {text}")
        if resp.status_code == 429:
            return ResourceExhausted(f"registry {ep.domain}: {what}: too many requests: {text}")
        if resp.status_code >= 500:
            return Unavailable(f"registry {ep.domain}: {what}: {text}")
        return InvalidArgument(f"registry {ep.domain}: {what}: {text}")

    async def resolve(
        self, ep: Endpoint, ref: Reference, creds: Credentials | None = None
    ) -> tuple[oci.Descriptor, bytes]:
        """Resolve ``ref`` (tag or digest) to its root descriptor and the exact document bytes."""
        repo = ref.repository
        scope = [f"repository:{repo}:pull"]
        what = f"manifest for {ref.familiar()}"
        target = ref.digest or ref.tag
        path = f"/v2/{repo}/manifests/{target}"
        headers = {"Accept": oci.ACCEPT_MANIFESTS}
        header_digest = ""
        if not ref.digest:
            resp = await self.request(ep, "HEAD", path, scopes=scope, headers=headers, creds=creds, what=what)
            if resp.status_code == 200:
                header_digest = resp.headers.get("docker-content-digest", "")
            elif resp.status_code not in (404, 405, 400, 501):
                raise self._status_error(resp, b"", what, ep)
            # a HEAD error has no body: the GET below fetches the registry's words (as dockerd does)
        resp = await self.request(ep, "GET", path, scopes=scope, headers=headers, stream=True, creds=creds, what=what)
        if resp.status_code != 200:
            body = await self._read_limited(resp, _ERROR_BODY_MAX, what)
            if resp.status_code == 404:
                raise not_found_error(resp, body, manifest_of=ref.familiar(), repository=ref.familiar_name())
            raise self._status_error(resp, body, what, ep)
        get_header = resp.headers.get("docker-content-digest", "")
        content_type = resp.headers.get("content-type", "").split(";")[0].strip()
        body = await self._read_limited(resp, oci.MAX_MANIFEST_SIZE, what)
        actual = oci.sha256_digest(body)
        if ref.digest:
            if actual != ref.digest:
                raise InvalidArgument(f"{what}: digest mismatch: the registry sent content hashing to {actual}")
        else:
            for claimed in (header_digest, get_header):
                if claimed and claimed.startswith("sha256:") and claimed != actual:
                    raise InvalidArgument(
                        f"{what}: digest mismatch: Docker-Content-Digest says {claimed}, the body hashes to {actual}"
                    )
        doc = oci.parse_document(body, content_type, where=what)
        media_type = doc.media_type
        return oci.Descriptor(media_type, actual, len(body)), body

    async def fetch_manifest(
        self, ep: Endpoint, ref: Reference, desc: oci.Descriptor, creds: Credentials | None = None
    ) -> bytes:
        """GET a manifest by digest (child of an index); verified against ``desc``."""
        what = f"manifest {desc.digest} of {ref.familiar_name()}"
        if desc.size > oci.MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"{what}: {desc.size} bytes is over the {oci.MAX_MANIFEST_SIZE} byte limit")
        resp = await self.request(
            ep,
            "GET",
            f"/v2/{ref.repository}/manifests/{desc.digest}",
            scopes=[f"repository:{ref.repository}:pull"],
            headers={"Accept": desc.media_type or oci.ACCEPT_MANIFESTS},
            stream=True,
            creds=creds,
            what=what,
        )
        if resp.status_code != 200:
            body = await self._read_limited(resp, _ERROR_BODY_MAX, what)
            if resp.status_code == 404:
                raise not_found_error(
                    resp, body, manifest_of=f"{ref.familiar_name()}@{desc.digest}", repository=ref.familiar_name()
                )
            raise self._status_error(resp, body, what, ep)
        body = await self._read_limited(resp, oci.MAX_MANIFEST_SIZE, what)
        actual = oci.sha256_digest(body)
        if actual != desc.digest or len(body) != desc.size:
            raise InvalidArgument(f"{what}: digest mismatch: the registry sent content hashing to {actual}")
        return body

    async def list_tags(self, ep: Endpoint, ref: Reference, creds: Credentials | None = None) -> list[str]:
        """Every tag of ``ref``'s repository, in the registry's order (distribution spec
        ``GET /v2/<name>/tags/list``, following ``Link`` rel="next" pages).

        Raises NotFound (``repository x not found: name unknown: ...``) for an unknown
        repository, InvalidArgument for a malformed answer, Unauthenticated / Unavailable as
        ``request`` does.
        """
        repo = ref.repository
        what = f"tags of {ref.familiar_name()}"
        path = f"/v2/{repo}/tags/list"
        tags: list[str] = []
        for _page in range(_MAX_TAG_PAGES):
            resp = await self.request(
                ep, "GET", path, scopes=[f"repository:{repo}:pull"], stream=True, creds=creds, what=what
            )
            if resp.status_code != 200:
                body = await self._read_limited(resp, _ERROR_BODY_MAX, what)
                if resp.status_code == 404:
                    raise not_found_error(resp, body, manifest_of=ref.familiar(), repository=ref.familiar_name())
                raise self._status_error(resp, body, what, ep)
            link = resp.headers.get("link", "")
            current = str(resp.request.url)  # the URL that answered (after redirects)
            body = await self._read_limited(resp, _TAG_PAGE_MAX, what)
            tags += parse_tag_list(body, what)
            nxt = next_tags_page(current, link)
            if nxt is None:
                return list(dict.fromkeys(tags))
            parsed = urllib.parse.urlsplit(nxt)
            path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
            if ep.path_prefix and path.startswith(ep.path_prefix):
                path = path[len(ep.path_prefix) :]
        raise InvalidArgument(f"registry {ep.domain}: {what}: more than {_MAX_TAG_PAGES} pages")

    async def read_blob(
        self, ep: Endpoint, repo: str, desc: oci.Descriptor, creds: Credentials | None = None, *, limit: int
    ) -> bytes:
        """GET a small blob (an image config) into memory, verified against ``desc``;
        InvalidArgument when it is over ``limit`` bytes or does not match its digest."""
        what = f"blob {desc.digest} of {repo}"
        if desc.size > limit:
            raise InvalidArgument(f"{what}: {desc.size} bytes is over the {limit} byte limit")
        async with self.open_blob(ep, repo, desc, 0, creds) as (_start, resp):
            data = await self._read_limited(resp, limit, what)
        if oci.sha256_digest(data) != desc.digest or len(data) != desc.size:
            raise InvalidArgument(f"{what}: digest mismatch: the registry sent other content")
        return data

    @contextlib.asynccontextmanager
    async def open_blob(
        self, ep: Endpoint, repo: str, desc: oci.Descriptor, offset: int = 0, creds: Credentials | None = None
    ) -> AsyncIterator[tuple[int, httpx.Response]]:
        """Open a blob download; yields ``(start offset, response)``: the body starts at that offset
        (0 when the server ignored our Range). Never uses a descriptor's foreign ``urls``."""
        headers = {"Accept": "*/*"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        what = f"blob {desc.digest} of {repo}"
        resp = await self.request(
            ep,
            "GET",
            f"/v2/{repo}/blobs/{desc.digest}",
            scopes=[f"repository:{repo}:pull"],
            headers=headers,
            stream=True,
            creds=creds,
            what=what,
        )
        try:
            if resp.status_code == 416 and offset:
                await resp.aclose()
                resp = await self.request(
                    ep,
                    "GET",
                    f"/v2/{repo}/blobs/{desc.digest}",
                    scopes=[f"repository:{repo}:pull"],
                    headers={"Accept": "*/*"},
                    stream=True,
                    creds=creds,
                    what=what,
                )
            if resp.status_code == 206:
                start = _content_range_start(resp.headers.get("content-range", ""))
                if start != offset:
                    raise Unavailable(f"{what}: server answered a range starting at {start}, asked {offset}")
            elif resp.status_code == 200:
                start = 0
            else:
                body = await self._read_limited(resp, _ERROR_BODY_MAX, what)
                raise self._status_error(resp, body, what, ep)
            yield start, resp
        finally:
            await resp.aclose()

    async def blob_request(
        self, ep: Endpoint, repo: str, desc: oci.Descriptor, creds: Credentials | None = None, *, renew: bool = False
    ) -> BlobRequest:
        """What a worker thread needs to GET a blob (``blobfetch.fetch_blob``): URL, scheme, and
        the Authorization header for this repository (a token is fetched if needed).

        ``renew=True`` after a 401: runs the challenge dance again (a HEAD of the blob) first;
        raises Unauthenticated when the registry still refuses.
        """
        path = f"/v2/{repo}/blobs/{desc.digest}"
        scopes = [f"repository:{repo}:pull"]
        what = f"blob {desc.digest} of {repo}"
        if renew:
            self.tokens.drop(ep.host)
            resp = await self.request(ep, "HEAD", path, scopes=scopes, creds=creds, what=what)
            if resp.status_code == 404:
                raise NotFound(f"{what} not found: blob unknown")
        state = self._auth.setdefault(ep.host, _Auth())
        user_creds = await self._creds(ep, creds)
        authorization = await self._auth_header(ep, state, scopes, user_creds, fetch=True)
        scheme = ep.schemes[0]
        return BlobRequest(
            url=ep.url(scheme, path),
            authorization=authorization,
            verify_tls=scheme == "https",
            user_agent=USER_AGENT,
            what=what,
            insecure_host=lambda host: host_is_insecure(host, self.insecure),
        )

    # -- push ----------------------------------------------------------------------------------------
    async def blob_exists(self, ep: Endpoint, repo: str, desc: oci.Descriptor, creds: Credentials | None) -> bool:
        resp = await self.request(
            ep,
            "HEAD",
            f"/v2/{repo}/blobs/{desc.digest}",
            scopes=[f"repository:{repo}:pull,push"],
            creds=creds,
            what=f"blob {desc.digest}",
        )
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._status_error(resp, resp.content, f"blob {desc.digest} of {repo}", ep)

    async def upload_blob(
        self,
        ep: Endpoint,
        repo: str,
        desc: oci.Descriptor,
        body_factory: Callable[[], AsyncIterator[bytes]],
        creds: Credentials | None,
    ) -> None:
        """POST an upload session then PUT the whole blob (monolithic upload, distribution spec)."""
        scopes = [f"repository:{repo}:pull,push"]
        what = f"upload of {desc.digest} to {repo}"
        resp = await self.request(
            ep,
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scopes=scopes,
            creds=creds,
            headers={"Content-Length": "0"},
            content=b"",
            what=what,
        )
        if resp.status_code == 201:
            return  # mounted or already there
        if resp.status_code != 202 or "location" not in resp.headers:
            raise self._status_error(resp, resp.content, what, ep)
        location = resp.headers["location"]
        url = urllib.parse.urljoin(ep.url(ep.schemes[0], f"/v2/{repo}/blobs/uploads/"), location)
        parsed = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
        query.append(("digest", desc.digest))
        put_path = parsed.path + "?" + urllib.parse.urlencode(query)
        if parsed.netloc != ep.host:
            raise InvalidArgument(
                f"registry {ep.domain}: upload location on another host ({parsed.netloc}) is not supported"
            )
        if ep.path_prefix and put_path.startswith(ep.path_prefix):
            put_path = put_path[len(ep.path_prefix) :]
        resp = await self.request(
            ep,
            "PUT",
            put_path,
            scopes=scopes,
            creds=creds,
            what=what,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)},
            content=body_factory,
        )
        if resp.status_code not in (201, 204):
            raise self._status_error(resp, resp.content, what, ep)

    async def put_manifest(
        self, ep: Endpoint, repo: str, reference: str, media_type: str, body: bytes, creds: Credentials | None
    ) -> str:
        """PUT a manifest under a tag or digest; returns the digest the registry reports (or ours)."""
        what = f"manifest {reference} of {repo}"
        resp = await self.request(
            ep,
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            scopes=[f"repository:{repo}:pull,push"],
            creds=creds,
            what=what,
            headers={"Content-Type": media_type},
            content=body,
        )
        if resp.status_code not in (200, 201, 202):
            raise self._status_error(resp, resp.content, what, ep)
        return resp.headers.get("docker-content-digest") or oci.sha256_digest(body)


def parse_tag_list(body: bytes, what: str = "tag list") -> list[str]:
    """The ``tags`` of one tag-list page (``{"name": "<name>", "tags": [...]}``; ``null``
    tags mean none). Raises InvalidArgument naming ``what`` for anything else."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"{what}: the registry sent invalid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what}: the registry sent no tag list object")
    tags = obj.get("tags")
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidArgument(f"{what}: 'tags' is not a list of strings")
    return list(tags)


def _content_range_start(value: str) -> int:
    # "bytes 100-199/200"
    try:
        unit, _, rng = value.partition(" ")
        if unit.strip().lower() != "bytes":
            return -1
        return int(rng.split("-", 1)[0])
    except ValueError:
        return -1


def basic_from_auth(auth: dict[str, str] | None) -> Credentials | None:
    """Credentials from a request's ``auth`` (Docker X-Registry-Auth fields), or None."""
    if not auth:
        return None
    if auth.get("identitytoken"):
        return Credentials(username=auth.get("username", ""), identity_token=auth["identitytoken"])
    if auth.get("auth") and not auth.get("username"):
        try:
            user, _, password = base64.b64decode(auth["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(user, password)
    if auth.get("username") and auth.get("password"):
        return Credentials(auth["username"], auth["password"])
    return None
