"""hitch's configuration syntax (hitch.conf(5)), read into items with their line numbers.

hitch's file is a free-form series of ``key = value``: newlines mean nothing, a value is a
quoted string, a bare token (``on``, ``4``, ``TLSv1.2``), several tokens (``tls-protos``) or
a ``{ ... }`` block of the same (``frontend``, ``pem-file``). Where hitch's lexer silently drops
a character it does not know (an unquoted path, a bracket), this parser stops with the line.
What the keys mean is stud.config's business; no I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<punct>[{}=])
  | "(?P<string>[^"\n]*)"
  | (?P<bare>[A-Za-z0-9._\-]+)
""", re.X)
# Keys as only hitch's syntax spells them (stud's own files say enable-tcp-fastopen and
# log-file): a file with one, or with a block, is read as hitch's (see looks_like_hitch()).
HITCH_ONLY = frozenset({"log-filename", "tcp-fastopen", "ring-slots", "ring-data-len"})


class HitchConfError(ValueError):
    """Text that is not in hitch's syntax: the message names the line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Token:
    kind: str  # "punct", "string" (quoted) or "bare"
    text: str
    line: int


@dataclass(frozen=True)
class Item:
    """``key = value``: one token (str), several (a tuple: tls-protos), or a block."""

    key: str
    value: str | tuple[str, ...] | None  # None for a block
    line: int
    block: tuple[Item, ...] | None = None


def tokens(text: str) -> list[Token]:
    out, pos, line = [], 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            raise HitchConfError(line, "a quote is not closed on its line" if ch == '"' else
                                 f"unexpected '{ch}' (quote values with such characters)")
        kind = m.lastgroup
        if kind in ("punct", "string", "bare"):
            out.append(Token(kind, m.group(kind), line))
        line += m.group(0).count("\n")
        pos = m.end()
    return out


def parse(text: str) -> list[Item]:
    """The items of a file in hitch's syntax (raises HitchConfError)."""
    return _items(tokens(text), 0, nested=False)[0]


def _items(toks: list[Token], pos: int, nested: bool) -> tuple[list[Item], int]:
    items: list[Item] = []
    while pos < len(toks):
        t = toks[pos]
        if t.kind == "punct" and t.text == "}":
            if not nested:
                raise HitchConfError(t.line, "'}' without a block to close")
            return items, pos + 1
        if t.kind == "punct":
            raise HitchConfError(t.line, f"expected a key, got '{t.text}'")
        if pos + 1 >= len(toks) or toks[pos + 1].text != "=" or toks[pos + 1].kind != "punct":
            raise HitchConfError(t.line, f"expected '=' after '{t.text}'")
        item, pos = _value(toks, pos + 2, t)
        items.append(item)
    if nested:
        raise HitchConfError(toks[-1].line if toks else 1, "a block is not closed with '}'")
    return items, pos


def _value(toks: list[Token], pos: int, key: Token) -> tuple[Item, int]:
    if pos >= len(toks):
        raise HitchConfError(key.line, f"{key.text}: missing value")
    t = toks[pos]
    if t.kind == "punct" and t.text == "{":
        inner, pos = _items(toks, pos + 1, nested=True)
        return Item(key.text, None, key.line, tuple(inner)), pos
    if t.kind == "punct":
        raise HitchConfError(t.line, f"{key.text}: missing value before '{t.text}'")
    # Several tokens (tls-protos = TLSv1.2 TLSv1.3) run up to the next `key =`.
    values = []
    while pos < len(toks) and toks[pos].kind != "punct" and not (
            values and pos + 1 < len(toks) and toks[pos + 1].text == "="):
        values.append(toks[pos].text)
        pos += 1
    return Item(key.text, values[0] if len(values) == 1 else tuple(values), key.line), pos


def looks_like_hitch(text: str, name: str = "") -> bool:
    """Whether a configuration file is in hitch's syntax: its name says hitch, or it has a
    block, or a key as only hitch spells it. (Both syntaxes read most files alike; the
    difference that matters is write-proxy: PROXY v2 in hitch's, v1 in stud's.)"""
    if "hitch" in name.rpartition("/")[2].lower():
        return True
    for line in text.splitlines():
        key, eq, value = line.split("#", 1)[0].partition("=")
        if eq and (value.strip().startswith("{") or key.strip() in HITCH_ONLY):
            return True
    return False
