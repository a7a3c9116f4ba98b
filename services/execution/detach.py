"""Detach keys: the byte sequence on a TTY stdin that ends an attach but leaves the container running.

Docker's syntax (``--detach-keys``, the API's ``detachKeys``): comma-separated keys, each
a single character or ``ctrl-<c>`` with ``c`` in ``a``-``z``, ``@``, ``[``, ``\\``,
``]``, ``^``, ``_``. The default is ``ctrl-p,ctrl-q``. As in dockerd, only TTY attaches
look for them (binary data piped into a non-TTY container passes untouched), and the
bytes of a partial match are held back until the match fails.
"""

from __future__ import annotations

from common.errors import InvalidArgument

DEFAULT = "ctrl-p,ctrl-q"
_CTRL_SPECIAL = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_keys(spec: str) -> bytes:
    """``ctrl-p,ctrl-q`` -> ``b"\\x10\\x11"``; InvalidArgument for anything else."""
    out = bytearray()
    for key in (spec or DEFAULT).split(","):
        key = key.strip()
        if len(key) == 1:
            out.append(ord(key))
            continue
        if key.lower().startswith("ctrl-") and len(key) == 6:
            c = key[5].lower()
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a") + 1)
                continue
            if c in _CTRL_SPECIAL:
                out.append(_CTRL_SPECIAL[c])
                continue
        raise InvalidArgument(f"invalid detach keys {spec!r}: unknown key {key!r}")
    return bytes(out)


class DetachScanner:
    """Feed stdin chunks; returns what to forward and whether the sequence was typed."""

    def __init__(self, spec: str = "") -> None:
        self.keys = parse_keys(spec)
        self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        for byte in data:
            candidate = self._held + bytes([byte])
            if self.keys.startswith(candidate):
                self._held = candidate
                if candidate == self.keys:
                    self._held = b""
                    return bytes(out), True
                continue
            out += self._held
            self._held = b""
            if self.keys.startswith(bytes([byte])):
                self._held = bytes([byte])
            else:
                out.append(byte)
        return bytes(out), False
