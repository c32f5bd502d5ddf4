"""stud.hitchconf: hitch's configuration syntax, on hitch's own example and grammar, with the
errors hitch's lexer would have swallowed, and a round-trip property."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stud.hitchconf import HitchConfError, Item, looks_like_hitch, parse

EXAMPLE = Path("/usr/share/doc/hitch/examples/hitch.conf.example")
# hitch's hitch.conf.example (1.7.2), as Debian ships it.
HITCH_EXAMPLE = """\
# Run 'man hitch.conf' for a description of all options.


frontend = {
    host = "*"
    port = "443"
}
backend = "[127.0.0.1]:6086"    # 6086 is the default Varnish PROXY port.
workers = 4                     # number of CPU cores

daemon = on

# We strongly recommend you create a separate non-privileged hitch
# user and group
user = "hitch"
group = "hitch"

# Enable to let clients negotiate HTTP/2 with ALPN. (default off)
# alpn-protos = "h2, http/1.1"

# run Varnish as backend over PROXY; varnishd -a :80 -a localhost:6086,PROXY ..
write-proxy-v2 = on             # Write PROXY header
"""


def test_hitchs_example():
    if EXAMPLE.exists():
        assert EXAMPLE.read_text().rstrip() == HITCH_EXAMPLE.rstrip()
    assert parse(HITCH_EXAMPLE) == [
        Item("frontend", None, 4, (Item("host", "*", 5), Item("port", "443", 6))),
        Item("backend", "[127.0.0.1]:6086", 8),
        Item("workers", "4", 9),
        Item("daemon", "on", 11),
        Item("user", "hitch", 15),
        Item("group", "hitch", 16),
        Item("write-proxy-v2", "on", 22),
    ]
    assert looks_like_hitch(HITCH_EXAMPLE)


def test_free_form_lists_and_nested_blocks():
    text = ('tls-protos = TLSv1.2 TLSv1.3 ciphers = "EECDH+AESGCM"\n'
            'frontend = { host = "*" port = "443"\n'
            '  pem-file = { cert = "/a.pem" private-key = "/a.key" }\n'
            '  tls-protos = TLSv1.3 }\nocsp-dir = ""  # off\n')
    assert parse(text) == [
        Item("tls-protos", ("TLSv1.2", "TLSv1.3"), 1),
        Item("ciphers", "EECDH+AESGCM", 1),
        Item("frontend", None, 2, (
            Item("host", "*", 2), Item("port", "443", 2),
            Item("pem-file", None, 3,
                 (Item("cert", "/a.pem", 3), Item("private-key", "/a.key", 3))),
            Item("tls-protos", "TLSv1.3", 4))),
        Item("ocsp-dir", "", 5),
    ]


@pytest.mark.parametrize("text, line, message", [
    ("backend = /run/varnish.sock", 1, "unexpected '/' (quote values with such characters)"),
    ('\n\nbackend = "[::1]:80', 3, "a quote is not closed on its line"),
    ("workers", 1, "expected '=' after 'workers'"),
    ("workers =", 1, "workers: missing value"),
    ("frontend = {\n host = \"*\"\n", 2, "a block is not closed with '}'"),
    ("}", 1, "'}' without a block to close"),
    ("= 4", 1, "expected a key, got '='"),
    ("daemon = = on", 1, "daemon: missing value before '='"),
])
def test_errors_name_the_line(text, line, message):
    with pytest.raises(HitchConfError) as info:
        parse(text)
    assert (info.value.line, str(info.value)) == (line, f"line {line}: {message}")


@pytest.mark.parametrize("text, name, hitch", [
    ("frontend = {\n}\n", "stud.conf", True),
    ('log-filename = "/var/log/hitch.log"\n', "stud.conf", True),
    ("tcp-fastopen = on\n", "x", True),
    ("backend = 127.0.0.1,8080\nwrite-proxy = on\n", "/etc/stud/stud.conf", False),  # either
    ("backend = 127.0.0.1,8080\nwrite-proxy = on\n", "/etc/hitch/hitch.conf", True),
    ("pem-dir = /etc/stud/certs\n", "stud.conf", False),  # stud has pem-dir too
    ("# frontend = {\nworkers = 2\n", "", False),
])
def test_which_syntax(text, name, hitch):
    assert looks_like_hitch(text, name) is hitch


KEYS = st.from_regex(r"[a-z][a-z0-9\-]{0,15}", fullmatch=True)
TOKENS = st.from_regex(r"[A-Za-z0-9._\-]{1,12}", fullmatch=True)
TOKENS_RE = re.compile(r"[A-Za-z0-9._\-]+")
STRINGS = st.text(st.characters(blacklist_characters='"\n', blacklist_categories=("Cs",)),
                  max_size=20)


def items(depth: int) -> st.SearchStrategy[list[Item]]:
    scalar = st.one_of(STRINGS, TOKENS, st.lists(TOKENS, min_size=2, max_size=4).map(tuple))
    leaf = st.builds(lambda k, v: Item(k, v, 0), KEYS, scalar)
    if depth == 0:
        return st.lists(leaf, max_size=4)
    block = st.builds(lambda k, b: Item(k, None, 0, tuple(b)), KEYS, items(depth - 1))
    return st.lists(st.one_of(leaf, block), max_size=4)


def render(its: list[Item], rnd: st.DataObject) -> str:
    out = []
    for it in its:
        if it.block is not None:
            value = "{" + rnd.draw(st.sampled_from([" ", "\n"])) + render(list(it.block), rnd) + "}"
        elif isinstance(it.value, tuple):
            value = " ".join(it.value)
        elif rnd.draw(st.booleans()) and TOKENS_RE.fullmatch(it.value or ""):
            value = it.value
        else:
            value = f'"{it.value}"'
        out.append(f"{it.key} = {value}" + rnd.draw(st.sampled_from([" ", "\n", " # c\n"])))
    return "".join(out)




def strip_lines(its: list[Item]) -> list[Item]:
    return [Item(i.key, i.value, 0, None if i.block is None else tuple(strip_lines(list(i.block))))
            for i in its]


@given(items(2), st.data())
def test_what_is_written_reads_back(its, data):
    assert strip_lines(parse(render(its, data))) == its
