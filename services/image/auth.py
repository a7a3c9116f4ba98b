"""Registry authentication: challenge parsing, credentials, tokens (CASES.md C28, C13).

- ``parse_challenges``: RFC 7235 ``WWW-Authenticate`` parsing: case-insensitive scheme,
  ``key=value`` params with quoted strings (commas and escaped quotes inside), unquoted
  values, whitespace around ``=`` and after commas, several challenges in one header or
  several headers, token68.
- ``Credentials`` and ``CredentialStore``: Docker's ``config.json`` (``auths`` entries with
  ``auth`` = base64(user:password) or ``identitytoken``; ``credHelpers`` / ``credsStore``
  through ``docker-credential-<helper> get``). Credentials are bound to one registry host
  and only ever sent to it, or to the token realm its own challenge named.
- ``TokenCache``: Bearer tokens per (host, scopes), honouring ``expires_in``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import InvalidArgument

log = logging.getLogger(__name__)

_TOKEN_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
"""config.json keys under which Docker stores Docker Hub credentials."""


@dataclass(frozen=True)
class Challenge:
    """One challenge: ``scheme`` lower-cased, ``params`` keys lower-cased, or a ``token68``."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict, hash=False)
    token68: str = ""

    @property
    def scopes(self) -> list[str]:
        """The challenge's scope tokens (space-separated in the ``scope`` parameter)."""
        return [s for s in self.params.get("scope", "").split(" ") if s]


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _read_token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] in _TOKEN_CHARS:
        i += 1
    return text[start:i], i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    assert text[i] == '"'
    i += 1
    out = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted string")


def parse_challenges(*headers: str) -> list[Challenge]:
    """Parse every challenge of the given ``WWW-Authenticate`` header values.

    Malformed parts are skipped rather than raising (a registry's odd header must not hide
    a usable challenge next to it).
    """
    out: list[Challenge] = []
    for header in headers:
        try:
            out.extend(_parse_one(header))
        except ValueError as exc:
            log.debug("unparsable WWW-Authenticate %r: %s", header, exc)
    return out


def _parse_one(text: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    scheme = ""
    params: dict[str, str] = {}
    token68 = ""
    i = 0

    def flush() -> None:
        if scheme:
            challenges.append(Challenge(scheme.lower(), dict(params), token68))

    while i < len(text):
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        if i >= len(text):
            break
        word, j = _read_token(text, i)
        if not word:
            raise ValueError(f"unexpected {text[i]!r} at {i}")
        k = _skip_ws(text, j)
        if k < len(text) and text[k] == "=" and scheme and not (k + 1 < len(text) and text[k + 1] in "=,"):
            # auth-param of the current challenge
            k = _skip_ws(text, k + 1)
            if k < len(text) and text[k] == '"':
                value, k = _read_quoted(text, k)
            else:
                value, k = _read_token(text, k)
                # tolerate unquoted values with characters outside token (e.g. URLs with ':' and '/')
                while k < len(text) and text[k] not in ", \t":
                    value += text[k]
                    k += 1
            params[word.lower()] = value
            i = k
            continue
        # a new challenge: scheme [token68 | params]
        flush()
        scheme, params, token68 = word, {}, ""
        i = k
        if i < len(text) and text[i] not in ",":
            m = _TOKEN68_RE.match(text, i)
            if m:
                after = _skip_ws(text, m.end())
                candidate = m.group(0)
                is_param = "=" in candidate.rstrip("=") or (
                    not candidate.endswith("=") and after < len(text) and text[after] == "="
                )
                if not is_param and (after >= len(text) or text[after] == ","):
                    token68 = candidate
                    i = after
    flush()
    return challenges


# -- credentials -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    """Credentials for one registry host: username+password, or an identity (refresh) token."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never log secrets
        return f"Credentials(username={self.username!r})"


def _host_of_key(key: str) -> str:
    k = key.strip()
    for prefix in ("https://", "http://"):
        if k.startswith(prefix):
            k = k[len(prefix) :]
    return k.split("/", 1)[0].lower()


def config_keys_for(domain: str) -> list[str]:
    """Keys under which config.json may hold credentials for registry ``domain``."""
    if domain in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return list(DOCKER_HUB_KEYS)
    return [domain]


def default_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


class CredentialStore:
    """Credentials from a Docker-format ``config.json`` (re-read when it changes)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_config_path()
        self._cache: tuple[float, dict[str, object]] | None = None

    def _load(self) -> dict[str, object]:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return {}
        if self._cache and self._cache[0] == mtime:
            return self._cache[1]
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read registry credentials from %s: %s", self.path, exc)
            data = {}
        if not isinstance(data, dict):
            data = {}
        self._cache = (mtime, data)
        return data

    async def get(self, domain: str) -> Credentials | None:
        """Credentials stored for ``domain`` (host[:port]; docker.io for Docker Hub), or None."""
        data = self._load()
        wanted = {_host_of_key(k) for k in config_keys_for(domain)}
        helpers = data.get("credHelpers")
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if _host_of_key(key) in wanted and isinstance(helper, str):
                    return await _from_helper(helper, key)
        auths = data.get("auths")
        if isinstance(auths, dict):
            for key, entry in auths.items():
                if _host_of_key(key) not in wanted or not isinstance(entry, dict):
                    continue
                creds = _from_entry(entry)
                if creds is not None:
                    return creds
        store = data.get("credsStore")
        if isinstance(store, str) and store:
            for key in config_keys_for(domain):
                creds = await _from_helper(store, key)
                if creds is not None:
                    return creds
        return None


def _from_entry(entry: dict[str, object]) -> Credentials | None:
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        username, sep, password = decoded.partition(":")
        if not sep:
            return None
    if isinstance(token, str) and token:
        return Credentials(username=username, identity_token=token)
    if username and password:
        return Credentials(username=username, password=password)
    return None


async def _from_helper(helper: str, server: str) -> Credentials | None:
    binary = shutil.which(f"docker-credential-{helper}")
    if binary is None:
        log.warning("credential helper docker-credential-%s not found", helper)
        return None
    proc = await asyncio.create_subprocess_exec(
        binary, "get", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, _err = await asyncio.wait_for(proc.communicate(server.encode()), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return None
    if proc.returncode != 0:
        return None
    try:
        obj = json.loads(out)
    except ValueError:
        return None
    user, secret = str(obj.get("Username") or ""), str(obj.get("Secret") or "")
    if user == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(user, secret) if user and secret else None


def write_config_entry(path: Path, domain: str, creds: Credentials | None) -> None:
    """Store (``creds``) or remove (None) the ``auths`` entry of ``domain`` in a config.json.

    Written to a temp file, fsynced and renamed, mode 0600. Docker Hub uses the key
    ``https://index.docker.io/v1/`` like the docker CLI.
    """
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise InvalidArgument(f"{path} is not a JSON object")
    except FileNotFoundError:
        data = {}
    except ValueError as exc:
        raise InvalidArgument(f"{path}: not valid JSON ({exc})") from None
    auths = data.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    wanted = {_host_of_key(k) for k in config_keys_for(domain)}
    for key in list(auths):
        if _host_of_key(key) in wanted:
            del auths[key]
    if creds is not None:
        key = DOCKER_HUB_KEYS[0] if domain == "docker.io" else domain
        auths[key] = {"auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
    data["auths"] = auths
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent="\t") + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- tokens ----------------------------------------------------------------------------------------
class TokenCache:
    """Bearer tokens per (registry host, frozenset of scopes), until they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, frozenset[str]], tuple[str, float]] = {}

    def get(self, host: str, scopes: frozenset[str]) -> str | None:
        hit = self._tokens.get((host, scopes))
        if hit is None:
            # a token for a superset of scopes also does
            for (h, have), (token, exp) in self._tokens.items():
                if h == host and scopes <= have and exp > time.monotonic():
                    return token
            return None
        token, expires = hit
        if expires <= time.monotonic():
            del self._tokens[(host, scopes)]
            return None
        return token

    def put(self, host: str, scopes: frozenset[str], token: str, expires_in_s: float) -> None:
        # renew 10 s before the registry says the token ends
        self._tokens[(host, scopes)] = (token, time.monotonic() + max(1.0, expires_in_s - 10))

    def drop(self, host: str) -> None:
        for key in [k for k in self._tokens if k[0] == host]:
            del self._tokens[key]
