"""Identifiers: validation and generation.

- namespace: containerd's identifier rule (``[A-Za-z0-9]+`` groups joined by one of
  ``._-``, at most 76 characters), and never ``version``.
- container id / exec id: 64 lowercase hex characters, generated at random.
- container name: Docker's rule ``[a-zA-Z0-9][a-zA-Z0-9_.-]+`` (one leading ``/``
  accepted and dropped), at most 128 characters.
- digest: ``sha256:<64 hex>`` (OCI image-spec descriptor.md, the only algorithm we
  register).

Every check raises ``InvalidArgument`` naming the kind and the bad value.
"""

from __future__ import annotations

import os
import random
import re

from common.errors import InvalidArgument

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{1,64}$")


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if valid, else raise InvalidArgument."""
    if not isinstance(namespace, str) or len(namespace) > 76 or not _NAMESPACE_RE.match(namespace):
        raise InvalidArgument(f"invalid namespace {namespace!r}: use letters, digits and single . _ - (max 76)")
    if namespace == "version":
        raise InvalidArgument("invalid namespace 'version': the name is reserved")
    return namespace


def new_id() -> str:
    """Return a new random 64-hex identifier (container, exec, lease)."""
    return os.urandom(32).hex()


def is_full_id(value: str) -> bool:
    """Return True when ``value`` is a full 64-hex identifier."""
    return bool(_HEX64_RE.match(value))


def is_id_prefix(value: str) -> bool:
    """Return True when ``value`` could be a prefix of a 64-hex identifier."""
    return bool(_PREFIX_RE.match(value))


def validate_id(value: str, kind: str = "container id") -> str:
    """Return ``value`` if it is a full 64-hex id, else raise InvalidArgument."""
    if not isinstance(value, str) or not _HEX64_RE.match(value):
        raise InvalidArgument(f"invalid {kind} {value!r}: expected 64 lowercase hex characters")
    return value


def validate_name(name: str) -> str:
    """Return the container name without a leading ``/``; raise InvalidArgument if invalid."""
    if not isinstance(name, str):
        raise InvalidArgument(f"invalid container name {name!r}")
    bare = name[1:] if name.startswith("/") else name
    if len(bare) > 128:
        raise InvalidArgument(f"invalid container name {name[:40]!r}...: longer than 128 characters")
    if not _NAME_RE.match(bare):
        raise InvalidArgument(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return bare


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:<64 hex>``, else raise InvalidArgument."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 hex>")
    return digest


_ADJECTIVES = [
    "admiring",
    "adoring",
    "agitated",
    "amazing",
    "angry",
    "awesome",
    "blissful",
    "bold",
    "brave",
    "busy",
    "calm",
    "charming",
    "clever",
    "cool",
    "compassionate",
    "competent",
    "confident",
    "crazy",
    "dazzling",
    "determined",
    "eager",
    "ecstatic",
    "elastic",
    "elated",
    "elegant",
    "epic",
    "exciting",
    "fervent",
    "focused",
    "friendly",
    "frosty",
    "gallant",
    "gifted",
    "goofy",
    "gracious",
    "happy",
    "hardcore",
    "heuristic",
    "hopeful",
    "hungry",
    "infallible",
    "inspiring",
    "jolly",
    "jovial",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "magical",
    "modest",
    "musing",
    "mystifying",
    "naughty",
    "nervous",
    "nice",
    "nifty",
    "nostalgic",
    "objective",
    "optimistic",
    "peaceful",
    "pedantic",
    "pensive",
    "practical",
    "priceless",
    "quirky",
    "quizzical",
    "relaxed",
    "reverent",
    "romantic",
    "sad",
    "serene",
    "sharp",
    "silly",
    "sleepy",
    "stoic",
    "strange",
    "stupefied",
    "suspicious",
    "sweet",
    "tender",
    "thirsty",
    "trusting",
    "unruffled",
    "upbeat",
    "vibrant",
    "vigilant",
    "vigorous",
    "wizardly",
    "wonderful",
    "xenodochial",
    "youthful",
    "zealous",
    "zen",
]
_NOUNS = [
    "albattani",
    "allen",
    "archimedes",
    "babbage",
    "banach",
    "bardeen",
    "bell",
    "bhabha",
    "booth",
    "bose",
    "brahmagupta",
    "carson",
    "cerf",
    "chandrasekhar",
    "clarke",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euclid",
    "euler",
    "fermat",
    "feynman",
    "franklin",
    "galileo",
    "gauss",
    "goldberg",
    "goodall",
    "hamilton",
    "hawking",
    "heisenberg",
    "hopper",
    "hypatia",
    "jackson",
    "johnson",
    "kalam",
    "kepler",
    "knuth",
    "lamarr",
    "lamport",
    "leakey",
    "liskov",
    "lovelace",
    "mayer",
    "mcclintock",
    "meitner",
    "mendel",
    "mirzakhani",
    "morse",
    "newton",
    "noether",
    "pascal",
    "pasteur",
    "perlman",
    "pike",
    "poincare",
    "ptolemy",
    "raman",
    "ritchie",
    "rosalind",
    "sammet",
    "shannon",
    "sinoussi",
    "stonebraker",
    "swanson",
    "tesla",
    "thompson",
    "torvalds",
    "turing",
    "wiles",
    "williams",
    "wilson",
    "wozniak",
    "yalow",
]


def random_name() -> str:
    """Return a Docker-style ``adjective_surname`` container name."""
    return f"{random.choice(_ADJECTIVES)}_{random.choice(_NOUNS)}"
