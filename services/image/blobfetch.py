"""Blob bodies straight into an ingest, in a worker thread (the fast path of a pull).

``RegistryClient`` (httpx, asyncio) settles everything about a registry: scheme, auth
challenge, token. Moving the bytes of a large blob through httpx's async stack costs
about a third of a millisecond of event-loop time per 32 KiB read; ``fetch_blob`` instead
runs the GET in a worker thread with the standard library's ``http.client`` and reads
1 MiB at a time directly into a buffer that is hashed and written to the ingest, with
the GIL released for the socket read, the hash and the write. The event loop only sees
a progress callback every 0.1 s.

It follows redirects (to blob storage) itself, sending the Authorization header only to
the origin it was meant for, and resumes with ``Range``. A 401 is returned to the
caller (``BlobAuthError``) so the async side can renew the token and try again; a
broken connection is ``BlobTransportError`` (retryable, the ingest keeps what arrived).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import DockyardError, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable
from services.image.content import Ingest

_BUFFER = 1024 * 1024
_MAX_REDIRECTS = 5
_PROGRESS_INTERVAL_S = 0.1


class BlobAuthError(Exception):
    """The registry answered 401: renew the credentials/token and retry."""


class BlobTransportError(Exception):
    """The connection broke or timed out: retry (with Range from the ingest's offset)."""


@dataclass
class BlobRequest:
    """Everything the worker thread needs; built on the event loop."""

    url: str  # http(s)://host[:port]/v2/<repo>/blobs/<digest>
    authorization: str | None
    verify_tls: bool
    user_agent: str
    what: str  # for messages: "blob sha256:... of repo"
    insecure_host: Callable[[str], bool]  # may plain HTTP be used for this host[:port]?
    timeout_s: float = 60.0


class Cancel:
    """Lets the event loop stop a running fetch at once (shuts its socket down)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.event.is_set() and sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def set(self) -> None:
        self.event.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)


def _error_text(status: int, reason: str, body: bytes) -> str:
    try:
        obj = json.loads(body)
        errs = obj.get("errors") if isinstance(obj, dict) else None
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            code = str(errs[0].get("code") or "").lower().replace("_", " ")
            msg = str(errs[0].get("message") or "")
            return f"{code}: {msg}" if code and msg and code != msg else (msg or code)
    except (ValueError, UnicodeDecodeError):
        pass
    return f"{status} {reason}"


def _status_error(status: int, reason: str, body: bytes, what: str) -> DockyardError:
    text = _error_text(status, reason, body)
    if status == 404:
        return NotFound(f"{what} not found: {text}")
    if status == 403:
        return PermissionDenied(f"{what}: denied: {text}")
    if status == 429:
        return ResourceExhausted(f"{what}: too many requests: {text}")
    if status >= 500:
        return Unavailable(f"{what}: {text}")
    return InvalidArgument(f"{what}: {text}")


def _connect(url: str, verify_tls: bool, timeout_s: float) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        ctx = ssl.create_default_context() if verify_tls else ssl._create_unverified_context()
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout_s, context=ctx)
    return http.client.HTTPConnection(parts.netloc, timeout=timeout_s)


def fetch_blob(req: BlobRequest, ingest: Ingest, size: int, cancel: Cancel, progress: Callable[[int], None]) -> int:
    """Download the rest of a blob into ``ingest`` (from ``ingest.offset``); return the bytes read.

    Blocking; run it in a worker thread. Raises BlobAuthError (401), BlobTransportError
    (connection trouble), FailedPrecondition from the ingest (more bytes than ``size``) or
    a ``common.errors`` error for other statuses.
    """
    url = req.url
    origin = urllib.parse.urlsplit(url)[:2]
    verify = req.verify_tls
    authorization = req.authorization
    received = 0
    last = 0.0
    for _hop in range(_MAX_REDIRECTS + 1):
        if cancel.event.is_set():
            raise BlobTransportError("cancelled")
        parts = urllib.parse.urlsplit(url)
        conn = _connect(url, verify, req.timeout_s)
        try:
            headers = {"User-Agent": req.user_agent, "Accept": "*/*", "Accept-Encoding": "identity"}
            if authorization and parts[:2] == origin:
                headers["Authorization"] = authorization
            if ingest.offset:
                headers["Range"] = f"bytes={ingest.offset}-"
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                conn.connect()
                cancel.attach(conn.sock)
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, ssl.SSLCertVerificationError):
                    raise Unavailable(f"{req.what}: TLS verification of {parts.netloc} failed: {exc}") from None
                raise BlobTransportError(f"{parts.netloc}: {exc}") from None
            status = resp.status
            if status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location") or ""
                resp.read()
                if not location:
                    raise Unavailable(f"{req.what}: redirect without a Location")
                new_url = urllib.parse.urljoin(url, location)
                new = urllib.parse.urlsplit(new_url)
                if new.scheme not in ("http", "https"):
                    raise InvalidArgument(f"{req.what}: refusing a redirect to {new_url}")
                if new.scheme == "http" and parts.scheme == "https" and not req.insecure_host(new.netloc):
                    raise InvalidArgument(f"{req.what}: refusing a redirect from HTTPS to {new_url}")
                if new[:2] != origin and new.scheme == "https":
                    verify = not req.insecure_host(new.netloc)
                url = new_url
                continue
            if status == 401:
                resp.read()
                raise BlobAuthError(f"{req.what}: 401 Unauthorized")
            if status == 416 and ingest.offset:
                # Not read: Go's http.ServeContent (docker-registry) answers 416 with the blob's
                # Content-Length and a short body, so reading it raises IncompleteRead. The
                # connection is closed below; the next hop starts from byte 0.
                ingest.restart()
                continue
            if status not in (200, 206):
                raise _status_error(status, resp.reason, resp.read(64 * 1024), req.what)
            if status == 200 and ingest.offset:
                ingest.restart()
            elif status == 206:
                rng = resp.getheader("Content-Range") or ""
                try:
                    start = int(rng.split(" ", 1)[1].split("-", 1)[0])
                except (IndexError, ValueError):
                    start = -1
                if start != ingest.offset:
                    raise Unavailable(f"{req.what}: server sent a range starting at {start}, asked {ingest.offset}")
            buf = bytearray(_BUFFER)
            view = memoryview(buf)
            while True:
                if cancel.event.is_set():
                    raise BlobTransportError("cancelled")
                try:
                    n = resp.readinto(view)
                except (OSError, http.client.HTTPException) as exc:
                    raise BlobTransportError(f"{parts.netloc}: {exc}") from None
                if not n:
                    break
                ingest.write(view[:n])
                received += n
                now = time.monotonic()
                if now - last >= _PROGRESS_INTERVAL_S:
                    last = now
                    progress(ingest.offset)
            if ingest.offset < size:
                raise BlobTransportError(f"{parts.netloc}: connection closed at byte {ingest.offset} of {size}")
            progress(ingest.offset)
            return received
        finally:
            cancel.attach(None)
            conn.close()
    raise Unavailable(f"{req.what}: too many redirects")
