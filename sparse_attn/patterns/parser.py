"""Spec-string parser (docs/spec.md).

Grammar (whitespace between tokens is ignored)::

    spec   := term ("|" term)*
    term   := NAME [ "(" [ param ("," param)* ] ")" ]
    param  := NAME "=" value
    value  := INT | "[" [ INT ("," INT)* ] "]" | NAME

``INT`` is a non-negative ASCII decimal integer without sign or leading zeros, at most
:data:`sparse_attn.limits.MAX_INT`; a spec string is at most
:data:`sparse_attn.limits.MAX_SPEC_CHARS` characters. ``NAME`` is an atom (``band``, ``global``, ...), a preset (``bigbird``, ...; parameters are
overrides of its defaults) or the modifier ``causal`` (no parentheses). The union is
commutative; ``causal`` applies to the whole union. Errors raise
:class:`~sparse_attn.errors.PatternSyntaxError` on one line, quoting the bad token and its
column, e.g. ``unknown atom 'bnd' at column 13 of 'band(w=4) | bnd(w=2)'``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparse_attn.errors import InvalidInputError, PatternSyntaxError
from sparse_attn.limits import MAX_INT, MAX_SPEC_CHARS, parse_int, shorten
from sparse_attn.patterns.atoms import ATOMS, Atom
from sparse_attn.patterns.pattern import Pattern
from sparse_attn.patterns.presets import PRESETS

_TOKEN = re.compile(r"(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<int>[0-9]+)|(?P<op>[()\[\],=|]))")
#: Whitespace allowed between tokens (ASCII only).
_SPACE = " \t\r\n"


@dataclass
class _Tok:
    kind: str  # name | int | op | end
    text: str
    pos: int


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = self._lex(text)
        self.k = 0

    def error(self, msg: str, tok: _Tok, hint: str = "") -> PatternSyntaxError:
        shown = "end of spec" if tok.kind == "end" else shorten(tok.text, 40)
        err = PatternSyntaxError(
            f"{msg} {shown} at column {tok.pos + 1} of {shorten(self.text)}"
            + (f"; {hint}" if hint else "")
        )
        err.position = tok.pos
        err.caret = self.text + "\n" + " " * tok.pos + "^"
        return err

    def located(self, msg: str, tok: _Tok) -> PatternSyntaxError:
        """An error whose message is complete, with the token's location appended."""
        err = PatternSyntaxError(
            f"{msg} (at {shorten(tok.text, 40)}, column {tok.pos + 1} of {shorten(self.text)})"
        )
        err.position = tok.pos
        err.caret = self.text + "\n" + " " * tok.pos + "^"
        return err

    def _lex(self, text: str) -> list[_Tok]:
        toks, pos = [], 0
        while True:
            while pos < len(text) and text[pos] in _SPACE:
                pos += 1
            if pos >= len(text):
                break
            m = _TOKEN.match(text, pos)
            if not m:
                bad = _Tok("op", text[pos], pos)
                hint = "allowed: ASCII names, integers 0-9, ( ) [ ] , = | and spaces"
                if text[pos] in "+-":
                    hint = "integers are written without a sign, e.g. w=3"
                raise self.error("unexpected character", bad, hint)
            kind = m.lastgroup or "op"
            toks.append(_Tok(kind, m.group(kind), m.start(kind)))
            pos = m.end()
        toks.append(_Tok("end", "", len(text)))
        return toks

    def peek(self) -> _Tok:
        return self.toks[self.k]

    def take(self) -> _Tok:
        t = self.toks[self.k]
        self.k += 1
        return t

    def expect(self, text: str, what: str) -> _Tok:
        t = self.take()
        if t.text != text or t.kind != "op":
            raise self.error(f"expected {what}, found", t)
        return t

    # ------------------------------------------------------------------ grammar
    def parse(self) -> Pattern:
        if self.peek().kind == "end":
            raise self.error(
                "empty pattern spec:", self.peek(), "give an atom or preset, e.g. band(w=64)"
            )
        atoms: list[Atom] = []
        causal = False
        names = []
        while True:
            a, c, label = self.term()
            atoms.extend(a)
            causal = causal or c
            names.append(label)
            t = self.take()
            if t.kind == "end":
                break
            if t.text != "|":
                if t.text == ")":
                    raise self.error("unbalanced parentheses: unexpected", t)
                raise self.error("expected '|' or end of spec, found", t, "combine atoms with |")
        if not atoms:
            raise self.error(
                "pattern has no atom, only", self.toks[0], "add one, e.g. band(w=64) | causal"
            )
        uses_preset = any(n not in (None, "causal") for n in names)
        return Pattern(atoms, causal, name=" ".join(self.text.split()) if uses_preset else None)

    def term(self) -> tuple[list[Atom], bool, str | None]:
        t = self.take()
        if t.kind != "name":
            if t.text == "(":
                raise self.error("expected an atom or preset name before", t)
            raise self.error("expected an atom or preset name, found", t)
        name = t.text
        if name == "causal":
            if self.peek().text == "(":
                raise self.error(
                    "causal takes no parameters, found", self.peek(), "write just 'causal'"
                )
            return [], True, "causal"
        if name not in ATOMS and name not in PRESETS:
            raise self.error(
                "unknown atom",
                t,
                f"atoms: {', '.join(ATOMS)}; presets: {', '.join(PRESETS)}; modifier: causal",
            )
        values, positions = {}, {}
        if self.peek().text == "(":
            open_tok = self.take()
            values, positions = self.params(open_tok)
        try:
            if name in ATOMS:
                return [ATOMS[name](**values)], False, None
            pat = PRESETS[name](**values)
            return list(pat.atoms), pat.causal, pat.name
        except PatternSyntaxError as exc:
            if hasattr(exc, "position"):
                raise
            bad = positions.get(getattr(exc, "param", None), t)
            raise self.located(str(exc), bad) from None

    def params(self, open_tok: _Tok) -> tuple[dict, dict]:
        values: dict = {}
        positions: dict = {}
        if self.peek().text == ")":
            self.take()
            return values, positions
        while True:
            key = self.take()
            if key.kind == "end":
                raise self.error(
                    "unbalanced parentheses: '(' at column "
                    f"{open_tok.pos + 1} is never closed, reached",
                    key,
                )
            if key.kind != "name":
                raise self.error("expected a parameter name (like w=4), found", key)
            eq = self.take()
            if eq.text != "=":
                raise self.error(f"expected '=' after parameter {key.text!r}, found", eq)
            if key.text in values:
                raise self.error("duplicate parameter", key)
            values[key.text] = self.value()
            positions[key.text] = key
            t = self.take()
            if t.text == ")":
                return values, positions
            if t.kind == "end":
                raise self.error(
                    "unbalanced parentheses: '(' at column "
                    f"{open_tok.pos + 1} is never closed, reached",
                    t,
                )
            if t.text != ",":
                raise self.error("expected ',' or ')', found", t)

    def integer(self, t: _Tok) -> int:
        """The value of an integer token (ASCII decimal, no leading zeros, <= MAX_INT)."""
        try:
            return parse_int(t.text, "an integer", 0, MAX_INT)
        except InvalidInputError as exc:
            raise self.located(str(exc), t) from None

    def value(self):
        t = self.take()
        if t.kind == "int":
            return self.integer(t)
        if t.kind == "name":
            return t.text
        if t.text == "[":
            items = []
            if self.peek().text == "]":
                self.take()
                return items
            while True:
                v = self.take()
                if v.kind != "int":
                    if v.kind == "end":
                        raise self.error(
                            "unbalanced brackets: '[' at column "
                            f"{t.pos + 1} is never closed, reached",
                            v,
                        )
                    raise self.error("expected an integer in the list, found", v)
                items.append(self.integer(v))
                sep = self.take()
                if sep.text == "]":
                    return items
                if sep.text != ",":
                    raise self.error("expected ',' or ']' in the list, found", sep)
        raise self.error("expected a value (integer, [list] or name), found", t)


def parse_pattern(spec) -> Pattern:
    """Parse a spec string (or pass through a Pattern / Atom) into a :class:`Pattern`.

    Args:
        spec: spec string such as ``"band(w=256) | global(n=64)"``,
            ``"dilated(w=4, d=8) | global(tokens=[0,5]) | causal"``, a preset name with optional
            overrides (``"bigbird(block=64, r=3)"``), a :class:`Pattern` or an :class:`Atom`.

    Returns:
        The expanded pattern; ``str(pattern)`` is its canonical spec string.

    Raises:
        PatternSyntaxError: unknown atom/preset/parameter, missing parameter, negative or zero
            size, unbalanced parentheses or brackets, trailing garbage. The one-line message
            quotes the bad token and its column; ``.position`` holds the 0-based offset and
            ``.caret`` a two-line rendering with a caret under it.
    """
    if isinstance(spec, Pattern):
        return spec
    if isinstance(spec, Atom):
        return Pattern([spec])
    if not isinstance(spec, str):
        raise PatternSyntaxError(
            f"pattern spec must be a string, Pattern or Atom, got {type(spec).__name__}"
        )
    if len(spec) > MAX_SPEC_CHARS:
        raise PatternSyntaxError(
            f"pattern spec is {len(spec)} characters long; the limit is {MAX_SPEC_CHARS}: "
            f"{shorten(spec)}"
        )
    return _Parser(spec).parse()
