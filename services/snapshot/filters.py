"""containerd-style filters for ``snapshot.list`` (containerd ``filters`` package, a subset).

A filter string is a conjunction of comma-separated terms; a list of strings is a
disjunction. A term is ``field==value``, ``field!=value``, ``field~=regexp`` or a bare
``field`` (present and non-empty). Fields of a snapshot: ``name``, ``parent``, ``kind``
and ``labels.<key>`` (``labels."<key>"`` when the key has dots or commas). A value
may be double-quoted. Example: ``kind==committed,labels."containerd.io/gc.root"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common.errors import InvalidArgument

_FIELD_RE = re.compile(r'\s*(name|parent|kind|labels\.(?:"(?:[^"\\]|\\.)*"|[^=!~,\s"]+))\s*')


@dataclass(frozen=True)
class Term:
    field: str
    op: str  # "==", "!=", "~=" or "" (presence)
    value: str
    regexp: re.Pattern[str] | None = None

    def matches(self, fields: Mapping[str, str]) -> bool:
        actual = fields.get(self.field)
        if self.op == "":
            return bool(actual)
        if self.op == "==":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regexp is not None
        return actual is not None and self.regexp.search(actual) is not None


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse(expr: str) -> list[Term]:
    """Parse one filter string into its terms; InvalidArgument on a syntax error."""
    terms: list[Term] = []
    pos = 0
    while pos < len(expr):
        m = _FIELD_RE.match(expr, pos)
        if not m:
            raise InvalidArgument(
                f"invalid filter {expr!r} at position {pos}: expected name, parent, kind or labels.<key>"
            )
        field = m.group(1)
        if field.startswith("labels."):
            field = "labels." + _unquote(field[len("labels.") :])
        pos = m.end()
        op = expr[pos : pos + 2]
        if op in ("==", "!=", "~="):
            pos += 2
            if pos < len(expr) and expr[pos] == '"':
                end = pos + 1
                while end < len(expr) and expr[end] != '"':
                    end += 2 if expr[end] == "\\" else 1
                if end >= len(expr):
                    raise InvalidArgument(f"invalid filter {expr!r}: unterminated quote")
                value = _unquote(expr[pos : end + 1])
                pos = end + 1
            else:
                end = expr.find(",", pos)
                end = len(expr) if end < 0 else end
                value = expr[pos:end].strip()
                pos = end
            regexp = None
            if op == "~=":
                try:
                    regexp = re.compile(value)
                except re.error as exc:
                    raise InvalidArgument(f"invalid filter {expr!r}: bad regular expression: {exc}") from None
            terms.append(Term(field, op, value, regexp))
        else:
            terms.append(Term(field, "", ""))
        while pos < len(expr) and expr[pos] == " ":
            pos += 1
        if pos < len(expr):
            if expr[pos] != ",":
                raise InvalidArgument(f"invalid filter {expr!r} at position {pos}: expected ','")
            pos += 1
    return terms


def compile_filters(exprs: list[str]) -> Callable[[Mapping[str, str]], bool]:
    """Return a predicate over a snapshot's fields (``name``, ``parent``, ``kind``,
    ``labels.<key>``) that is true when any filter string matches (all when none)."""
    parsed = [parse(e) for e in exprs if e.strip()]
    if not parsed:
        return lambda _fields: True

    def match(fields: Mapping[str, str]) -> bool:
        return any(all(t.matches(fields) for t in terms) for terms in parsed)

    return match
