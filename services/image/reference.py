"""Image references: parsing and normalisation as Docker does it (distribution/reference).

Grammar (distribution/reference ``reference.go``)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path-component ("/" path-component)*
    domain     := host [":" port]   (host: dns labels joined by ".", or "[" ipv6 "]")
    path-comp  := [a-z0-9]+ ((\\.|_|__|-+) [a-z0-9]+)*
    tag        := [\\w][\\w.-]{0,127}
    digest     := "sha256:" 64 lowercase hex (the only algorithm we register)

Normalisation (``ParseNormalizedNamed``, CASES.md C29): the first path component is a
registry iff it contains ``.`` or ``:``, equals ``localhost``, or has an uppercase letter;
otherwise the registry is ``docker.io``. ``index.docker.io`` becomes ``docker.io``, and
single-component docker.io names get ``library/``. A reference without tag and digest gets
``:latest``. ``name:tag@digest`` keeps both; the digest pins the content. Uppercase in the
repository, a 64-hex string alone (an image id) and anything else outside the grammar are
``InvalidArgument``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised reference. ``tag`` and ``digest`` may be empty, not both."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path``, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        """The repository path at the registry, e.g. ``library/busybox``."""
        return self.path

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, "")

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, "", digest)

    def familiar_name(self) -> str:
        """The short form Docker shows: ``busybox``, ``user/app``, ``localhost:5000/app``."""
        if self.domain == DEFAULT_DOMAIN:
            if self.path.startswith(OFFICIAL_REPO_PREFIX) and self.path.count("/") == 1:
                return self.path[len(OFFICIAL_REPO_PREFIX) :]
            return self.path
        return self.name

    def familiar(self) -> str:
        """``familiar_name`` plus ``:tag`` / ``@digest`` (``busybox:latest``)."""
        out = self.familiar_name()
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out


def _split_domain(name: str) -> tuple[str, str]:
    i = name.find("/")
    first = name[:i] if i >= 0 else ""
    if i == -1 or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, name[i + 1 :]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text`` as Docker does (see the module docstring).

    ``default_tag``: add ``:latest`` when there is neither tag nor digest.
    Raises ``InvalidArgument`` (``invalid reference format: ...``) on malformed input.
    """
    if not isinstance(text, str) or not text:
        raise InvalidArgument("invalid reference format: empty reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidArgument(f"invalid reference format: {text!r} contains whitespace")
    if _HEX64_RE.match(text):
        raise InvalidArgument(
            f"invalid repository name {text!r}: cannot specify 64-byte hexadecimal strings (use the image id)"
        )
    rest, digest = text, ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST_RE.match(digest):
            raise InvalidArgument(f"invalid reference format: bad digest {digest!r} in {text!r}")
        if not _SHA256_RE.match(digest):
            raise InvalidArgument(f"invalid reference format: unsupported digest {digest!r} (only sha256:<64 hex>)")
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"invalid reference format: bad tag {tag!r} in {text!r}")
    if not rest:
        raise InvalidArgument(f"invalid reference format: {text!r} has no repository name")
    domain, path = _split_domain(rest)
    if not _DOMAIN_RE.match(domain):
        raise InvalidArgument(f"invalid reference format: bad registry host {domain!r} in {text!r}")
    if path.lower() != path:
        raise InvalidArgument(f"invalid reference format: repository name {path!r} must be lowercase")
    if not _PATH_RE.match(path):
        raise InvalidArgument(f"invalid reference format: bad repository name {path!r} in {text!r}")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(f"invalid reference format: repository name longer than {NAME_TOTAL_LENGTH_MAX}")
    if default_tag and not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def try_parse(text: str) -> Reference | None:
    """``parse`` that returns None instead of raising."""
    try:
        return parse(text)
    except InvalidArgument:
        return None


def parse_repository(text: str) -> Reference:
    """Parse a repository name without tag or digest (``busybox`` -> ``docker.io/library/busybox``)."""
    ref = parse(text, default_tag=False)
    if ref.tag or ref.digest:
        raise InvalidArgument(f"invalid repository name {text!r}: a tag or digest is not allowed here")
    return ref


def familiar(name: str) -> str:
    """Return the familiar form of a stored record name, or ``name`` itself when it is not a reference."""
    ref = try_parse(name)
    return ref.familiar() if ref is not None else name


def registry_endpoint_host(domain: str) -> str:
    """The host:port to speak HTTP to for ``domain`` (docker.io is served by registry-1.docker.io)."""
    return "registry-1.docker.io" if domain == DEFAULT_DOMAIN else domain
