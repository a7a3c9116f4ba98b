"""Go's ``text/template``, the subset docker users write in ``--format``.

``parse(text)`` gives a ``Template``; ``Template.execute(data)`` renders it. Data is
plain Python: a ``dict`` is a Go map (a missing key prints ``<no value>``, or fails
with ``missing_key="error"``, as ``docker inspect``'s fallback does), a ``GoStruct``
is a struct (a missing field is an error naming its Go type; a callable field is a
method and may take arguments), ``None`` is nil and ``NilSlice``/``NilMap`` a typed
nil. Values print as Go's ``fmt`` prints them: ``true``, ``<nil>``, ``[a b]``,
``map[k:v]`` (keys sorted), numbers plain, floats as ``%v``.

Supported: text, ``{{.A.B}}``, ``{{.}}``, ``$``/``$x`` variables (``:=``, ``=``),
literals, pipelines ``|``, parentheses, ``if``/``else if``/``else``, ``range``
(``$i, $v :=``, ``else``, ``break``, ``continue``), ``with``, comments, the trim
markers ``{{-`` / ``-}}``; Go's functions ``and or not len index slice print printf
println eq ne lt le gt ge`` and docker's ``json join split title lower upper pad
truncate`` (docker/cli ``templates/templates.go``). Not supported: ``define``,
``template``, ``block`` (a parse error says so). Errors read as Go's:
``template: :1: function "foo" not defined``,
``template: :1:2: executing "" at <.Nope>: can't evaluate field Nope in type T``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

NO_VALUE = "<no value>"


class TemplateError(Exception):
    """A template that does not parse or fails while executing; ``str()`` is Go's message."""


class ParseError(TemplateError):
    """The template does not parse: ``template: :LINE: message``."""


class ExecError(TemplateError):
    """Executing failed: ``template: :LINE:COL: executing "" at <node>: message``."""


class _Missing:
    """Go's invalid ``reflect.Value``: a missing map key or nil data; prints ``<no value>``."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class NilSlice:
    """A nil Go slice: prints ``[]``, JSON ``null``, empty when ranged over."""

    def __repr__(self) -> str:
        return "NilSlice()"


class NilMap:
    """A nil Go map: prints ``map[]``, JSON ``null``."""

    def __repr__(self) -> str:
        return "NilMap()"


class StrMap(dict[str, str]):
    """A typed Go ``map[string]string`` (labels): ``index`` of a missing key is ``""``, and
    ``.missing`` prints ``<no value>`` even where a plain map's missing key is an error."""


class GoStruct:
    """A Go struct (by pointer): ``fields`` in order; a callable value is a method.

    ``type_name`` shows in errors (``*formatter.ContainerContext``). A method is called
    with the template's arguments (``{{.Label "a"}}``); ``{{json .}}`` encodes the
    fields that are not methods taking arguments, keys sorted, as docker's contexts'
    ``MarshalJSON`` does (HTML characters escaped).
    """

    def __init__(self, type_name: str, fields: dict[str, Any]) -> None:
        self.type_name = type_name
        self.fields = fields

    def get(self, name: str, args: list[Any]) -> Any:
        """The value of field or method ``name``; raises KeyError if there is none."""
        value = self.fields[name]
        if callable(value):
            return value(*args)
        if args:
            raise _Fail(f"{name} has arguments but cannot be invoked as function")
        return value

    def marshal(self) -> dict[str, Any]:
        """The JSON object of this struct (methods without arguments called)."""
        out: dict[str, Any] = {}
        for name in sorted(self.fields):
            value = self.fields[name]
            if callable(value):
                if getattr(value, "takes_args", False):
                    continue
                value = value()
            out[name] = value
        return out


def method_with_args(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a ``GoStruct`` method that takes arguments (left out of its JSON)."""
    fn.takes_args = True  # type: ignore[attr-defined]
    return fn


class _Fail(Exception):
    """Raised by a function while executing; becomes an ``ExecError`` at the current node."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


# -- values as Go prints them ---------------------------------------------------------------------------


def go_type(value: Any) -> str:
    """Go's name of the dynamic type of ``value`` (as in ``can't evaluate field X in type T``)."""
    if isinstance(value, GoStruct):
        return value.type_name
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple, NilSlice)):
        return "[]interface {}"
    if isinstance(value, (dict, NilMap)):
        return "map[string]interface {}"
    return "interface {}"


def go_float(value: float, verb: str = "g", prec: int = -1) -> str:
    """``strconv.FormatFloat(value, verb, prec, 64)`` for verbs g, e, f (``%v`` is g, -1)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if verb == "f":
        return f"{value:.{prec}f}" if prec >= 0 else _shortest_f(value)
    if verb == "e":
        return _go_exp(f"{value:.{prec}e}") if prec >= 0 else _shortest_e(value)
    if prec >= 0:
        return _go_exp(f"{value:.{prec or 1}g}")
    exp10 = _digits(value)[1]
    if exp10 < -4 or exp10 >= 6:  # strconv: shortest %g switches to %e at precision 6
        return _shortest_e(value)
    return _shortest_f(value)


def _go_exp(text: str) -> str:
    """Python's exponent (``e+6``/``e+100``) written as Go's (at least two digits)."""
    if "e" not in text:
        return text
    mant, _, exp = text.partition("e")
    return f"{mant}e{exp[0]}{int(exp[1:]):02d}"


def _digits(value: float) -> tuple[str, int]:
    """Shortest decimal digits of ``value`` (as Go's shortest) and its exponent: d.ddd x 10^exp."""
    from decimal import Decimal

    t = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, t.digits))
    return digits, len(digits) - 1 + int(t.exponent)


def _shortest_e(value: float) -> str:
    digits, exp10 = _digits(value)
    sign = "-" if value < 0 else ""
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mant}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"


def _shortest_f(value: float) -> str:
    digits, exp10 = _digits(value)
    sign = "-" if value < 0 else ""
    if digits == "0":
        return sign + "0"
    if exp10 < 0:
        return f"{sign}0.{'0' * (-exp10 - 1)}{digits}"
    whole, frac = digits[: exp10 + 1], digits[exp10 + 1 :]
    return sign + whole.ljust(exp10 + 1, "0") + ("." + frac if frac else "")


def go_str(value: Any, top: bool = True) -> str:
    """``fmt.Sprint(value)``: Go's default format (``%v``)."""
    if value is MISSING:
        return NO_VALUE if top else "<nil>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, NilSlice):
        return "[]"
    if isinstance(value, NilMap):
        return "map[]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_str(v, False) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{go_str(k, False)}:{go_str(value[k], False)}" for k in _sorted_keys(value)) + "]"
    if isinstance(value, GoStruct):
        inner = " ".join(go_str(v, False) for v in value.fields.values() if not callable(v))
        return ("{" if top else "&{") + inner + "}"
    return str(value)


def _sorted_keys(m: dict[Any, Any]) -> list[Any]:
    try:
        return sorted(m)
    except TypeError:
        return sorted(m, key=str)


def go_json(value: Any, escape_html: bool = False) -> str:
    """``encoding/json`` of ``value``, compact; ``GoStruct`` as its ``marshal()`` (HTML-escaped,
    like ``json.Marshal`` inside a ``MarshalJSON``); Go's float format."""
    if isinstance(value, GoStruct):
        return go_json(value.marshal(), True)
    if value is None or value is MISSING or isinstance(value, (NilSlice, NilMap)):
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _Fail(f"json: unsupported value: {go_float(value)}")
        a = abs(value)
        if a != 0 and (a < 1e-6 or a >= 1e21):
            return re.sub(r"e([+-])0(\d)$", r"e\1\2", go_float(value, "e"))
        return _shortest_f(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        if escape_html:
            text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v, escape_html) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{go_json(str(k), escape_html)}:{go_json(v, escape_html)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    return go_json(str(value), escape_html)


def go_quote(text: str) -> str:
    """``strconv.Quote``."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out) + '"'


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def truth(value: Any) -> bool:
    """Go's ``truth``: false, 0, nil, empty string/slice/map and a missing value are false."""
    if value is MISSING or value is None or isinstance(value, (NilSlice, NilMap)):
        return False
    if isinstance(value, GoStruct):
        return True
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


# -- lexing ---------------------------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_KEYWORDS = {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


class _Tok:
    __slots__ = ("kind", "pos", "val")

    def __init__(self, kind: str, val: Any, pos: int) -> None:
        self.kind, self.val, self.pos = kind, val, pos

    def __str__(self) -> str:
        if self.kind == "eof":
            return "EOF"
        if self.kind == "keyword":
            return f"<{self.val}>"
        if self.kind == "right":
            return '"}}"'
        return json.dumps(str(self.val))


def _lex(text: str) -> list[_Tok]:
    """Go's lexer: text, ``left``, action tokens, ``right``, then ``eof``. Raises ParseError."""
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        start = text.find("{{", i)
        if start < 0:
            toks.append(_Tok("text", text[i:], i))
            break
        chunk = text[i:start]
        j = start + 2
        if text.startswith("-", j) and j + 1 < n and text[j + 1] in _SPACE:
            chunk = chunk.rstrip(_SPACE)
            j += 2
        if chunk:
            toks.append(_Tok("text", chunk, i))
        if text.startswith("/*", j):
            end = text.find("*/", j + 2)
            if end < 0:
                raise ParseError(f"template: :{_line(text, start)}: unclosed comment")
            k = end + 2
            trim = False
            if k < n and text[k] in _SPACE and text.startswith("-}}", k + 1):
                trim, k = True, k + 1
            if not text.startswith("}}" if not trim else "-}}", k):
                raise ParseError(f"template: :{_line(text, start)}: comment ends before closing delimiter")
            i = k + (3 if trim else 2)
            if trim:
                while i < n and text[i] in _SPACE:
                    i += 1
            continue
        toks.append(_Tok("left", "{{", start))
        i = _lex_action(text, j, toks, start)
    toks.append(_Tok("eof", "", n))
    return toks


def _lex_action(text: str, i: int, toks: list[_Tok], start: int) -> int:
    """Tokens of one action from ``i``; return the index after its ``}}`` (and trimmed space)."""
    n = len(text)
    depth = 0

    def fail(msg: str) -> ParseError:
        return ParseError(f"template: :{_line(text, start)}: {msg}")

    while True:
        if i >= n:
            raise fail("unclosed action")
        ch = text[i]
        if ch in _SPACE:
            k = i
            while k < n and text[k] in _SPACE:
                k += 1
            if text.startswith("-}}", k):  # " -}}": trim the space after the action
                if depth:
                    raise fail("unclosed left paren")
                toks.append(_Tok("right", "}}", k))
                i = k + 3
                while i < n and text[i] in _SPACE:
                    i += 1
                return i
            toks.append(_Tok("space", text[i:k], i))
            i = k
            continue
        if text.startswith("}}", i):
            if depth:
                raise fail("unclosed left paren")
            toks.append(_Tok("right", "}}", i))
            return i + 2
        if ch == "|":
            toks.append(_Tok("pipe", "|", i))
            i += 1
        elif ch == "(":
            depth += 1
            toks.append(_Tok("lparen", "(", i))
            i += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise fail("unexpected right paren")
            toks.append(_Tok("rparen", ")", i))
            i += 1
        elif ch == ",":
            toks.append(_Tok("comma", ",", i))
            i += 1
        elif text.startswith(":=", i):
            toks.append(_Tok("declare", ":=", i))
            i += 2
        elif ch == "=":
            toks.append(_Tok("assign", "=", i))
            i += 1
        elif ch == '"':
            m = _STRING.match(text, i)
            if m is None:
                raise fail("unterminated quoted string")
            try:
                value = json.loads(m.group(0))
            except ValueError:
                value = m.group(0)[1:-1].encode().decode("unicode_escape")
            toks.append(_Tok("string", (value, m.group(0)), i))
            i = m.end()
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise fail("unterminated raw quoted string")
            toks.append(_Tok("string", (text[i + 1 : end], text[i : end + 1]), i))
            i = end + 1
        elif ch == "'":
            m = re.compile(r"'(\\.|[^'\\])'").match(text, i)
            if m is None:
                raise fail("unterminated character constant")
            body = m.group(1)
            char = body if len(body) == 1 else body.encode().decode("unicode_escape")
            toks.append(_Tok("number", (ord(char), m.group(0)), i))
            i = m.end()
        elif ch == "$":
            m = _IDENT.match(text, i + 1)
            name = "$" + (m.group(0) if m else "")
            toks.append(_Tok("var", name, i))
            i += len(name)
        elif ch == ".":
            m = _IDENT.match(text, i + 1)
            if m is not None:
                toks.append(_Tok("field", m.group(0), i))
                i = m.end()
            elif i + 1 < n and text[i + 1].isdigit():
                i = _lex_number(text, i, toks, fail)
            else:
                toks.append(_Tok("dot", ".", i))
                i += 1
        elif ch.isdigit() or (ch in "+-" and i + 1 < n and (text[i + 1].isdigit() or text[i + 1] == ".")):
            i = _lex_number(text, i, toks, fail)
        elif ch.isalpha() or ch == "_":
            m = _IDENT.match(text, i)
            assert m is not None
            word = m.group(0)
            if word in ("true", "false"):
                toks.append(_Tok("bool", word == "true", i))
            elif word == "nil":
                toks.append(_Tok("nil", None, i))
            elif word in _KEYWORDS:
                toks.append(_Tok("keyword", word, i))
            else:
                toks.append(_Tok("ident", word, i))
            i = m.end()
        else:
            raise fail(f"unrecognized character in action: U+{ord(ch):04X} {ch!r}")


def _lex_number(text: str, i: int, toks: list[_Tok], fail: Callable[[str], ParseError]) -> int:
    m = _NUMBER.match(text, i)
    if m is None or (m.end() < len(text) and (text[m.end()].isalnum() or text[m.end()] == ".")):
        end = m.end() if m else i + 1
        raise fail(f"bad number syntax: {text[i : end + 1]!r}")
    src = m.group(0)
    clean = src.replace("_", "")
    value: int | float
    try:
        if re.fullmatch(r"[+-]?0\d+", clean):
            value = int(clean, 8)
        elif re.fullmatch(r"[+-]?(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|\d+)", clean):
            value = int(clean, 0)
        else:
            value = float(clean)
    except ValueError:
        raise fail(f"bad number syntax: {src!r}") from None
    toks.append(_Tok("number", (value, src), i))
    return m.end()


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


# -- parse tree -------------------------------------------------------------------------------------------------


class _Node:
    """A node of the parse tree; ``pos`` is its offset in the template text."""

    pos = 0


class _Text(_Node):
    def __init__(self, pos: int, text: str) -> None:
        self.pos, self.text = pos, text


class _Lit(_Node):
    """A constant: bool, number, string, nil (``value``) or dot (``is_dot``); ``src`` as written."""

    def __init__(self, pos: int, value: Any, src: str, kind: str) -> None:
        self.pos, self.value, self.src, self.kind = pos, value, src, kind

    def __str__(self) -> str:
        return self.src


class _Field(_Node):
    """``.A.B`` (``var`` empty), ``$x.A`` (``var`` = ``$x``), or a chain ``(pipe).A`` (``base``)."""

    def __init__(self, pos: int, idents: list[str], var: str = "", base: _Node | None = None) -> None:
        self.pos, self.idents, self.var, self.base = pos, idents, var, base

    def __str__(self) -> str:
        head = self.var if self.var else (f"({self.base})" if self.base is not None else "")
        return head + "".join("." + i for i in self.idents)


class _Ident(_Node):
    def __init__(self, pos: int, name: str) -> None:
        self.pos, self.name = pos, name

    def __str__(self) -> str:
        return self.name


class _Command(_Node):
    def __init__(self, pos: int, args: list[_Node]) -> None:
        self.pos, self.args = pos, args

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


class _Pipe(_Node):
    def __init__(self, pos: int, decl: list[str], is_assign: bool, cmds: list[_Command]) -> None:
        self.pos, self.decl, self.is_assign, self.cmds = pos, decl, is_assign, cmds

    def __str__(self) -> str:
        head = ", ".join(self.decl) + (" = " if self.is_assign else " := ") if self.decl else ""
        return head + " | ".join(str(c) for c in self.cmds)


class _Action(_Node):
    def __init__(self, pos: int, pipe: _Pipe) -> None:
        self.pos, self.pipe = pos, pipe


class _Control(_Node):
    """``if``, ``range`` or ``with`` (``kind``) with its pipeline, body and else body."""

    def __init__(self, pos: int, kind: str, pipe: _Pipe, body: list[_Node], orelse: list[_Node]) -> None:
        self.pos, self.kind, self.pipe, self.body, self.orelse = pos, kind, pipe, body, orelse


class _Jump(_Node):
    """``break`` or ``continue`` inside a range."""

    def __init__(self, pos: int, kind: str) -> None:
        self.pos, self.kind = pos, kind


class _Parser:
    """Go's ``text/template/parse``, recursive descent over ``_lex`` tokens."""

    def __init__(self, text: str, funcs: dict[str, Any]) -> None:
        self.text = text
        self.toks = _lex(text)
        self.i = 0
        self.funcs = funcs
        self.vars = ["$"]
        self.range_depth = 0

    def fail(self, msg: str, tok: _Tok | None = None) -> ParseError:
        pos = (tok or self.toks[max(self.i - 1, 0)]).pos
        return ParseError(f"template: :{_line(self.text, pos)}: {msg}")

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next_non_space(self) -> _Tok:
        tok = self.next()
        while tok.kind == "space":
            tok = self.next()
        return tok

    def peek_non_space(self) -> _Tok:
        j = self.i
        while self.toks[j].kind == "space":
            j += 1
        return self.toks[j]

    def parse(self) -> list[_Node]:
        nodes: list[_Node] = []
        while self.peek().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _Tok):
                raise self.fail(f"unexpected {{{{{node.val}}}}}", node)
            nodes.append(node)
        return nodes

    def item_list(self) -> tuple[list[_Node], _Tok]:
        """Nodes up to ``{{end}}`` or ``{{else}}`` (returned as its keyword token)."""
        nodes: list[_Node] = []
        while True:
            if self.peek().kind == "eof":
                raise self.fail("unexpected EOF", self.peek())
            node = self.text_or_action()
            if isinstance(node, _Tok):
                return nodes, node
            nodes.append(node)

    def text_or_action(self) -> _Node | _Tok:
        tok = self.next()
        if tok.kind == "text":
            return _Text(tok.pos, tok.val)
        return self.action()

    def action(self) -> _Node | _Tok:
        tok = self.peek_non_space()
        if tok.kind == "keyword":
            self.next_non_space()
            word = tok.val
            if word in ("end", "else"):
                if (
                    word == "else"
                    and self.peek_non_space().kind == "keyword"
                    and self.peek_non_space().val
                    in (
                        "if",
                        "with",
                    )
                ):
                    return tok  # "else if": the if follows, parsed by the caller
                self.expect_right(word)
                return tok
            if word in ("if", "range", "with"):
                return self.control(word, tok)
            if word in ("break", "continue"):
                if not self.range_depth:
                    raise self.fail(f"{{{{{word}}}}} outside {{{{range}}}}", tok)
                self.expect_right(word)
                return _Jump(tok.pos, word)
            raise self.fail(f"{{{{{word}}}}} is not supported in --format", tok)
        pos = tok.pos
        return _Action(pos, self.pipeline("command", "right"))

    def expect_right(self, context: str) -> None:
        tok = self.next_non_space()
        if tok.kind != "right":
            raise self.fail(f"unexpected {tok} in {context}", tok)

    def control(self, kind: str, tok: _Tok) -> _Control:
        mark = len(self.vars)
        pipe = self.pipeline(kind, "right")
        if kind == "range":
            self.range_depth += 1
        body, end = self.item_list()
        if kind == "range":
            self.range_depth -= 1
        orelse: list[_Node] = []
        if end.val == "else":
            follow = self.peek_non_space()
            if follow.kind == "keyword" and follow.val in ("if", "with"):
                if follow.val != kind:
                    raise self.fail(f"unexpected <{follow.val}> in else", follow)
                self.next_non_space()
                orelse = [self.control(kind, follow)]
            else:
                orelse, end = self.item_list()
                if end.val != "end":
                    raise self.fail(f"expected end; found {{{{{end.val}}}}}", end)
        del self.vars[mark:]
        return _Control(tok.pos, kind, pipe, body, orelse)

    def pipeline(self, context: str, end: str) -> _Pipe:
        decl: list[str] = []
        is_assign = False
        pos = self.peek_non_space().pos
        while self.peek_non_space().kind == "var":
            save = self.i
            var = self.next_non_space()
            follow = self.peek_non_space()
            if follow.kind in ("declare", "assign"):
                self.next_non_space()
                is_assign = follow.kind == "assign"
                decl.append(var.val)
                if is_assign and var.val not in self.vars:
                    raise self.fail(f"undefined variable {var.val!r}".replace("'", '"'), var)
                break
            if follow.kind == "comma":
                self.next_non_space()
                decl.append(var.val)
                if context == "range" and len(decl) < 2 and self.peek_non_space().kind == "var":
                    continue
                if context == "range":
                    raise self.fail("range can only initialize variables")
                raise self.fail(f"too many declarations in {context}")
            self.i = save
            break
        cmds: list[_Command] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                break
            if tok.kind in ("bool", "number", "dot", "field", "ident", "nil", "string", "var", "lparen"):
                self.i -= 1
                cmds.append(self.command())
            else:
                raise self.fail(f"unexpected {tok} in {context}", tok)
        if not cmds:
            raise self.fail(f"missing value for {context}")
        for k, cmd in enumerate(cmds[1:]):
            if isinstance(cmd.args[0], _Lit):
                raise self.fail(f"non executable command in pipeline stage {k + 2}")
        if not is_assign:
            self.vars.extend(decl)
        return _Pipe(pos, decl, is_assign, cmds)

    def command(self) -> _Command:
        pos = self.peek_non_space().pos
        args: list[_Node] = []
        while True:
            self.peek_non_space()
            while self.peek().kind == "space":
                self.next()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("right", "rparen"):
                self.i -= 1
            elif tok.kind != "pipe":
                raise self.fail(f"unexpected {tok} in operand", tok)
            break
        if not args:
            raise self.fail("empty command")
        return _Command(pos, args)

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        chain_pos = self.peek().pos
        idents = []
        while self.peek().kind == "field":
            idents.append(self.next().val)
        if isinstance(node, _Field) and node.base is None:
            return _Field(chain_pos, node.idents + idents, node.var)
        if isinstance(node, (_Lit, _Ident)):
            raise self.fail(f"unexpected . after term {str(node)!r}".replace("'", '"'))
        return _Field(chain_pos, idents, base=node)

    def term(self) -> _Node | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind == "ident":
            if tok.val not in self.funcs:
                raise self.fail(f'function "{tok.val}" not defined', tok)
            return _Ident(tok.pos, tok.val)
        if kind == "dot":
            return _Lit(tok.pos, None, ".", "dot")
        if kind == "nil":
            return _Lit(tok.pos, None, "nil", "nil")
        if kind == "var":
            if tok.val not in self.vars:
                raise self.fail(f'undefined variable "{tok.val}"', tok)
            return _Field(tok.pos, [], tok.val)
        if kind == "field":
            return _Field(tok.pos, [tok.val])
        if kind == "bool":
            return _Lit(tok.pos, tok.val, "true" if tok.val else "false", "bool")
        if kind in ("number", "string"):
            return _Lit(tok.pos, tok.val[0], tok.val[1], kind)
        if kind == "lparen":
            pipe = self.pipeline("parenthesized pipeline", "rparen")
            return pipe
        self.i -= 1
        return None


# -- execution ------------------------------------------------------------------------------------------------

_NO_FINAL: Any = object()


class _State:
    """One execution: variables, the output written so far and the node being evaluated."""

    def __init__(self, tmpl: Template, out: list[str], missing_key: str) -> None:
        self.tmpl = tmpl
        self.out = out
        self.missing_key = missing_key
        self.vars: list[tuple[str, Any]] = []
        self.node: _Node | None = None

    def fail(self, msg: str, node: _Node | None = None) -> ExecError:
        node = node or self.node
        text = self.tmpl.text
        if node is None:
            return ExecError(f'template: : executing "" {msg}')
        pos = len(text[: node.pos].encode())
        line_start = text.rfind("\n", 0, node.pos)
        col = pos if line_start < 0 else pos - len(text[: line_start + 1].encode())
        context = str(node) if not isinstance(node, _Control) else node.kind
        if len(context) > 20:
            context = context[:20] + "..."
        return ExecError(f'template: :{_line(text, node.pos)}:{col}: executing "" at <{context}>: {msg}')

    def lookup(self, name: str) -> Any:
        for var, value in reversed(self.vars):
            if var == name:
                return value
        raise self.fail(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for k in range(len(self.vars) - 1, -1, -1):
            if self.vars[k][0] == name:
                self.vars[k] = (name, value)
                return

    def walk(self, dot: Any, nodes: list[_Node]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipeline(dot, node.pipe)
                if not node.pipe.decl:
                    self.out.append(go_str(value))
            elif isinstance(node, _Control):
                self.control(dot, node)
            elif isinstance(node, _Jump):
                raise _Break() if node.kind == "break" else _Continue()

    def control(self, dot: Any, node: _Control) -> None:
        mark = len(self.vars)
        try:
            if node.kind == "range":
                self.range(dot, node)
                return
            value = self.pipeline(dot, node.pipe)
            if truth(value):
                self.walk(value if node.kind == "with" else dot, node.body)
            else:
                self.walk(dot, node.orelse)
        finally:
            del self.vars[mark:]

    def range(self, dot: Any, node: _Control) -> None:
        pipe = node.pipe
        value = self.pipeline(dot, _Pipe(pipe.pos, [], False, pipe.cmds))
        items: list[tuple[Any, Any]]
        if isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, dict):
            items = [(k, value[k]) for k in _sorted_keys(value)]
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(pipe.decl) > 1:
                raise self.fail("can't use a range over an integer with two variables", node)
            items = [(k, k) for k in range(value)]
        elif value is None or value is MISSING or isinstance(value, (NilSlice, NilMap)):
            items = []
        else:
            raise self.fail(f"range can't iterate over {go_str(value)}", node)
        if not items:
            self.walk(dot, node.orelse)
            return
        mark = len(self.vars)
        for key, elem in items:
            if len(pipe.decl) == 1:
                self.vars.append((pipe.decl[0], elem))
            elif len(pipe.decl) == 2:
                self.vars += [(pipe.decl[0], key), (pipe.decl[1], elem)]
            try:
                self.walk(elem, node.body)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]

    def pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        value = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value)
            else:
                self.vars.append((name, value))
        return value

    def command(self, dot: Any, cmd: _Command, final: Any) -> Any:
        first = cmd.args[0]
        self.node = first
        if isinstance(first, _Field):
            return self.field(dot, first, cmd.args, final)
        if isinstance(first, _Ident):
            return self.function(dot, first, cmd, cmd.args, final)
        if isinstance(first, _Pipe):
            self.not_a_function(cmd.args, final)
            return self.pipeline(dot, first)
        assert isinstance(first, _Lit)
        self.not_a_function(cmd.args, final)
        if first.kind == "nil":
            raise self.fail("nil is not a command", first)
        return dot if first.kind == "dot" else first.value

    def not_a_function(self, args: list[_Node], final: Any) -> None:
        if len(args) > 1 or final is not _NO_FINAL:
            raise self.fail(f"can't give argument to non-function {args[0]}", args[0])

    def arg(self, dot: Any, node: _Node) -> Any:
        self.node = node
        if isinstance(node, _Lit):
            return dot if node.kind == "dot" else node.value
        if isinstance(node, _Field):
            return self.field(dot, node, [node], _NO_FINAL)
        if isinstance(node, _Pipe):
            return self.pipeline(dot, node)
        if isinstance(node, _Ident):
            return self.function(dot, node, node, [node], _NO_FINAL)
        raise self.fail(f"can't handle {node}", node)

    def field(self, dot: Any, node: _Field, args: list[_Node], final: Any) -> Any:
        if node.var:
            receiver = self.lookup(node.var)
        elif node.base is not None:
            receiver = self.arg(dot, node.base)
            self.node = node
        else:
            receiver = dot
        if not node.idents:
            self.not_a_function(args, final)
            return receiver
        for name in node.idents[:-1]:
            receiver = self.field_of(dot, node, name, receiver, [node], _NO_FINAL)
        return self.field_of(dot, node, node.idents[-1], receiver, args, final)

    def field_of(self, dot: Any, node: _Node, name: str, receiver: Any, args: list[_Node], final: Any) -> Any:
        has_args = len(args) > 1 or final is not _NO_FINAL
        if receiver is MISSING:
            if self.missing_key == "error":
                raise self.fail(f"nil data; no entry for key {name!r}".replace("'", '"'), node)
            return MISSING
        if isinstance(receiver, GoStruct):
            if name not in receiver.fields:
                raise self.fail(f"can't evaluate field {name} in type {receiver.type_name}", node)
            values = [self.arg(dot, a) for a in args[1:]]
            if final is not _NO_FINAL:
                values.append(final)
            self.node = node
            try:
                return receiver.get(name, values)
            except _Fail as exc:
                raise self.fail(str(exc), node) from None
            except TypeError:
                raise self.fail(f"wrong number of args for {name}: got {len(values)}", node) from None
        if isinstance(receiver, (dict, NilMap)):
            if has_args:
                raise self.fail(f"{name} is not a method but has arguments", node)
            if isinstance(receiver, dict) and name in receiver:
                return receiver[name]
            if self.missing_key == "error" and not isinstance(receiver, (StrMap, NilMap)):
                raise self.fail(f"map has no entry for key {name!r}".replace("'", '"'), node)
            return MISSING
        if receiver is None:
            raise self.fail(f"nil pointer evaluating interface {{}}.{name}", node)
        raise self.fail(f"can't evaluate field {name} in type {go_type(receiver)}", node)

    def function(self, dot: Any, ident: _Ident, node: _Node, args: list[_Node], final: Any) -> Any:
        name = ident.name
        fn = self.tmpl.funcs[name]
        if name in ("and", "or"):  # Go 1.18: evaluated lazily, the deciding argument is the result
            nodes = args[1:]
            if not nodes and final is _NO_FINAL:
                raise self.fail(f"wrong number of args for {name}: want at least 1 got 0", node)
            value: Any = None
            for k, a in enumerate(nodes):
                value = self.arg(dot, a)
                if truth(value) != (name == "and") or (k == len(nodes) - 1 and final is _NO_FINAL):
                    return value
            return final
        values = [self.arg(dot, a) for a in args[1:]]
        if final is not _NO_FINAL:
            values.append(final)
        self.node = node
        low, high = _ARITY.get(name, (0, None))
        if len(values) < low or (high is not None and len(values) > high):
            want = f"at least {low}" if high is None else str(low)
            raise self.fail(f"wrong number of args for {name}: want {want} got {len(values)}", node)
        try:
            return fn(*values)
        except _Fail as exc:
            raise self.fail(f"error calling {name}: {exc}", node) from None


# -- functions ------------------------------------------------------------------------------------------------


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if item is None or item is MISSING:
            raise _Fail("index of untyped nil")
        if isinstance(item, (list, tuple, str, NilSlice)):
            if not isinstance(key, int) or isinstance(key, bool):
                raise _Fail(f"cannot index slice/array with type {go_type(key)}")
            seq: Any = item.encode() if isinstance(item, str) else ([] if isinstance(item, NilSlice) else item)
            if not 0 <= key < len(seq):
                raise _Fail(f"index out of range: {key}")
            item = seq[key]
        elif isinstance(item, dict) and key in item:
            item = item[key]
        elif isinstance(item, (dict, NilMap)):
            item = "" if isinstance(item, StrMap) else MISSING
        else:
            raise _Fail(f"can't index item of type {go_type(item)}")
    return item


def _slice(item: Any, *idx: Any) -> Any:
    if item is None or item is MISSING:
        raise _Fail("slice of untyped nil")
    if not isinstance(item, (list, tuple, str)):
        raise _Fail(f"can't slice item of type {go_type(item)}")
    if len(idx) > 2:
        raise _Fail("too many slice indexes")
    bounds = [0, len(item)]
    for k, v in enumerate(idx):
        if not isinstance(v, int) or not 0 <= v <= len(item):
            raise _Fail(f"index out of range: {v}")
        bounds[k] = v
    if bounds[0] > bounds[1]:
        raise _Fail(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    return item[bounds[0] : bounds[1]]


def _len(item: Any) -> int:
    if isinstance(item, str):
        return len(item.encode())
    if isinstance(item, (list, tuple, dict)):
        return len(item)
    if isinstance(item, (NilSlice, NilMap)):
        return 0
    raise _Fail(f"len of type {go_type(item) if item is not None and item is not MISSING else 'nil'}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None or value is MISSING or isinstance(value, (NilSlice, NilMap)):
        return "nil"
    return "other"


def _eq(arg1: Any, *args: Any) -> bool:
    k1 = _kind(arg1)
    if k1 == "other":
        raise _Fail("non-comparable type")
    for arg in args:
        k2 = _kind(arg)
        if k2 == "other":
            raise _Fail("non-comparable types")
        if "nil" in (k1, k2):
            if k1 == k2:
                return True
            continue
        if k1 != k2:
            raise _Fail("incompatible types for comparison")
        if arg1 == arg:
            return True
    return False


def _less(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka not in ("number", "string") or kb not in ("number", "string"):
        raise _Fail("invalid type for comparison")
    if ka != kb:
        raise _Fail("incompatible types for comparison")
    return bool(a < b)


def _sprint(*args: Any) -> str:
    """``fmt.Sprint``: a space between operands when neither is a string."""
    out = []
    for k, a in enumerate(args):
        if k and not isinstance(a, str) and not isinstance(args[k - 1], str):
            out.append(" ")
        out.append(go_str(a, top=False) if a is not MISSING else "<nil>")
    return "".join(out)


def _string_arg(value: Any) -> str:
    if not isinstance(value, str):
        raise _Fail(f"wrong type for value; expected string; got {go_type(value)}")
    return value


def _join(items: Any, sep: Any) -> str:
    if isinstance(items, NilSlice) or items is None:
        return ""
    if not isinstance(items, (list, tuple)):
        raise _Fail(f"wrong type for value; expected []string; got {go_type(items)}")
    return _string_arg(sep).join(v if isinstance(v, str) else go_str(v, top=False) for v in items)


def _title(value: Any) -> str:
    """``strings.Title``: the first letter of each word upper-cased."""
    out, prev = [], " "
    for ch in _string_arg(value):
        out.append(ch.upper() if not (prev.isalnum() or prev == "_") else ch)
        prev = ch
    return "".join(out)


def _truncate(value: Any, length: Any) -> str:
    text = _string_arg(value)
    return text[:length] if len(text) > length else text


_PRINTF_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+|\*)?)?(.)", re.S)


def _printf(fmt: Any, *args: Any) -> str:
    """``fmt.Sprintf`` for the verbs ``%v %s %q %d %t %x %X %o %b %c %e %f %g %%`` (flags, width, precision)."""
    text = _string_arg(fmt)
    out: list[str] = []
    pos = 0
    used = 0
    for m in _PRINTF_VERB.finditer(text):
        out.append(text[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        if width == "*" or prec == "*":
            out.append("%!(BADWIDTH)")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[used]
        used += 1
        out.append(_format_one(arg, flags, int(width) if width else None, prec, verb))
    out.append(text[pos:])
    if used < len(args):
        extra = ", ".join(f"{go_type(a)}={go_str(a, top=False)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_one(arg: Any, flags: str, width: int | None, prec: str | None, verb: str) -> str:
    def bad() -> str:
        if arg is None or arg is MISSING:
            return f"%!{verb}(<nil>)"
        return f"%!{verb}({go_type(arg)}={go_str(arg, top=False)})"

    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    numeric = False
    if verb in "vs":
        if verb == "s" and (isinstance(arg, (bool, int, float)) or arg is None):
            return bad()
        body = go_str(arg, top=False) if arg is not MISSING else "<nil>"
        if prec is not None:
            body = body[: int(prec)]
    elif verb == "q":
        if isinstance(arg, str):
            body = go_quote(arg)
        elif is_int:
            body = "'" + go_quote(chr(arg))[1:-1].replace("'", "\\'") + "'"
        else:
            return bad()
    elif verb == "t":
        if not isinstance(arg, bool):
            return bad()
        body = "true" if arg else "false"
    elif verb in "dxXobc":
        if verb in "xX" and isinstance(arg, str):
            body = arg.encode().hex()
            body = body.upper() if verb == "X" else body
        elif not is_int:
            return bad()
        elif verb == "c":
            body = chr(arg)
        else:
            spec = ("+" if "+" in flags else " " if " " in flags else "") + ("#" if "#" in flags else "")
            body = format(arg, spec + {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb])
            numeric = True
    elif verb in "eEfFgG":
        if not isinstance(arg, float):
            return bad()
        p = int(prec) if prec is not None else (-1 if verb in "gG" else 6)
        body = go_float(arg, verb.lower(), p)
        if verb.isupper():
            body = body.upper()
        if "+" in flags and arg >= 0:
            body = "+" + body
        numeric = True
    else:
        return bad()
    if width is not None and len(body) < width:
        if "-" in flags:
            body = body.ljust(width)
        elif "0" in flags and numeric:
            sign = body[0] if body[0] in "+- " else ""
            body = sign + body[len(sign) :].rjust(width - len(sign), "0")
        else:
            body = body.rjust(width)
    return body


def _json(value: Any) -> str:
    return go_json(value)


def _split(value: Any, sep: Any) -> list[str]:
    text, s = _string_arg(value), _string_arg(sep)
    if s == "":
        return list(text)
    return text.split(s)


FUNCS: dict[str, Callable[..., Any]] = {
    "and": lambda *a: a[-1],
    "or": lambda *a: a[-1],
    "not": lambda a: not truth(a),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _sprint,
    "printf": _printf,
    "println": lambda *a: " ".join(go_str(v, top=False) for v in a) + "\n",
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _less,
    "le": lambda a, b: _less(a, b) or _eq(a, b),
    "gt": lambda a, b: not (_less(a, b) or _eq(a, b)),
    "ge": lambda a, b: not _less(a, b),
    # docker/cli templates.basicFunctions
    "json": _json,
    "split": _split,
    "join": _join,
    "title": _title,
    "lower": lambda v: _string_arg(v).lower(),
    "upper": lambda v: _string_arg(v).upper(),
    "pad": lambda v, prefix, suffix: " " * prefix + _string_arg(v) + " " * suffix,
    "truncate": _truncate,
}
"""Go's builtins and docker's functions, by name."""

_ARITY: dict[str, tuple[int, int | None]] = {
    "not": (1, 1),
    "len": (1, 1),
    "index": (1, None),
    "slice": (1, None),
    "printf": (1, None),
    "eq": (1, None),
    "ne": (2, 2),
    "lt": (2, 2),
    "le": (2, 2),
    "gt": (2, 2),
    "ge": (2, 2),
    "json": (1, 1),
    "split": (2, 2),
    "join": (2, 2),
    "title": (1, 1),
    "lower": (1, 1),
    "upper": (1, 1),
    "pad": (3, 3),
    "truncate": (2, 2),
}

HEADER_FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda v: v,
    "split": lambda v, _sep: v,
    "join": lambda v, _sep: v,
    "title": lambda v: v,
    "lower": lambda v: v,
    "upper": lambda v: v,
    "pad": lambda v, _p, _s: v,
    "truncate": lambda v, _n: v,
}
"""docker's ``templates.HeaderFunctions``: what a table's header row is rendered with."""


class Template:
    """A parsed template; ``execute`` renders it (see the module docstring)."""

    def __init__(self, text: str, funcs: dict[str, Callable[..., Any]] | None = None) -> None:
        self.text = text
        self.funcs = dict(FUNCS)
        if funcs:
            self.funcs.update(funcs)
        self.nodes = _Parser(text, self.funcs).parse()

    def execute(self, data: Any, *, missing_key: str = "default", out: list[str] | None = None) -> str:
        """Render with ``data`` as dot and ``$``; raises ``ExecError``.

        ``missing_key="error"`` makes a missing key of a (plain) map an error, as Go's
        ``Option("missingkey=error")``. Output written before an error stays in ``out``.
        """
        buf = out if out is not None else []
        state = _State(self, buf, missing_key)
        state.vars.append(("$", data))
        try:
            state.walk(data, self.nodes)
        except RecursionError:
            raise state.fail("exceeded maximum template depth") from None
        return "".join(buf)

    def with_funcs(self, funcs: dict[str, Callable[..., Any]]) -> Template:
        """The same template calling ``funcs`` instead (as Go's ``Funcs`` on a parsed template)."""
        clone = Template.__new__(Template)
        clone.text, clone.nodes = self.text, self.nodes
        clone.funcs = {**self.funcs, **funcs}
        return clone


def parse(text: str) -> Template:
    """Parse ``text``; raises ``ParseError`` (``template: :LINE: message``)."""
    return Template(text)


def render(text: str, data: Any, *, missing_key: str = "default") -> str:
    """Parse and execute in one go; raises ``TemplateError``."""
    return parse(text).execute(data, missing_key=missing_key)
