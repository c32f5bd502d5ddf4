"""The OpenSSL ABI stud uses, as stud/_openssl.h declares it for the C modules.

That header is the one list of the constants and functions (with prototypes) that stud calls
without OpenSSL's own headers; stud.sslext binds the same functions with ctypes from what
:func:`parse` reads there, so C and Python cannot disagree. Pure text processing, no I/O but
:func:`load`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HEADER = Path(__file__).with_name("_openssl.h")

_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_CONSTANT = re.compile(r"^#define ([A-Za-z_]\w*)[ \t]+(0x[0-9A-Fa-f]+|\d+)[ \t]*$", re.M)
_LIST = re.compile(r"^#define STUD_OPENSSL_([A-Z]+)\(X\)(.*)$", re.M)
_CALLBACK = re.compile(r"^typedef [^;]*\(\*(\w+)\)\s*\(", re.M)


class AbiError(ValueError):
    """The header is not in the form this parser reads."""


@dataclass(frozen=True)
class Function:
    name: str
    restype: str             # C type, e.g. "const char *"
    params: tuple[str, ...]  # C types; () for (void)
    group: str               # the list it is in: LIBSSL, LIBCRYPTO or ENGINE


@dataclass(frozen=True)
class Abi:
    constants: dict[str, int]
    functions: dict[str, Function]
    callbacks: frozenset[str]  # typedef'd function pointer types

    def group(self, name: str) -> list[Function]:
        return [f for f in self.functions.values() if f.group == name]


def _split_top(text: str) -> list[str]:
    """text split at the commas outside parentheses, each part stripped."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise AbiError(f"unbalanced ')' in {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise AbiError(f"unbalanced '(' in {text!r}")
    parts.append(text[start:].strip())
    return parts


def _entries(body: str) -> list[str]:
    """The argument text of each X(...) in a list's body."""
    out, i = [], 0
    while (i := body.find("X(", i)) >= 0:
        depth, j = 0, i + 1
        for j in range(i + 1, len(body)):
            depth += {"(": 1, ")": -1}.get(body[j], 0)
            if depth == 0:
                break
        else:
            raise AbiError(f"unterminated entry at {body[i:i + 40]!r}")
        out.append(body[i + 2:j])
        i = j + 1
    return out


def _function(entry: str, group: str) -> Function:
    parts = _split_top(entry)
    if len(parts) != 3 or not parts[2].startswith("(") or not parts[2].endswith(")"):
        raise AbiError(f"not X(return type, name, (parameters)): {entry!r}")
    ret, name, params = parts
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise AbiError(f"bad function name {name!r}")
    inner = params[1:-1].strip()
    types = () if inner in ("", "void") else tuple(_split_top(inner))
    return Function(name, " ".join(ret.split()), tuple(" ".join(t.split()) for t in types), group)


def parse(text: str) -> Abi:
    """The constants, functions and callback types of a header in _openssl.h's form."""
    text = _COMMENT.sub("", text)
    joined = re.sub(r"\\\n", " ", text)
    constants = {name: int(value, 0) for name, value in _CONSTANT.findall(joined)}
    functions: dict[str, Function] = {}
    for group, body in _LIST.findall(joined):
        for entry in _entries(body):
            f = _function(entry, group)
            if f.name in functions:
                raise AbiError(f"{f.name} is listed twice")
            functions[f.name] = f
    if not functions:
        raise AbiError("no STUD_OPENSSL_*(X) function list found")
    return Abi(constants, functions, frozenset(_CALLBACK.findall(text)))


def load() -> Abi:
    """The ABI of the header installed with stud."""
    return parse(HEADER.read_text(encoding="ascii"))
