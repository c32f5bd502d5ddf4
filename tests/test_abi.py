"""The OpenSSL ABI in one place: stud/_openssl.h, parsed by stud.opensslabi for sslext and
compiled into the C modules; and what stud does where that ABI is not the one it may use."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import client_ctx, free_port, tls_connect, wait_for

from stud import opensslabi

PKG = Path(__file__).resolve().parent.parent / "stud"
C_SOURCES = sorted(PKG.glob("*.c"))

HEADER = """\
#define ONE 1
#define MASK 0x4000 /* a comment */
#define NOT_A_NUMBER (1 << 2)
typedef int (*my_cb)(SSL *, int);
#define STUD_OPENSSL_LIBSSL(X)                    \\
    X(int, SSL_read, (SSL *, void *, int))        \\
    X(const char *, SSL_get_version, (const SSL *)) \\
    X(void, SSL_CTX_sess_set_new_cb, (SSL_CTX *, my_cb))
#define STUD_OPENSSL_LIBCRYPTO(X)                 \\
    X(unsigned long, ERR_get_error, (void))       \\
    X(unsigned char *, HMAC,                      \\
      (const EVP_MD *, const void *, int,          \\
       size_t))
"""


def test_parse_reads_constants_functions_and_callbacks():
    abi = opensslabi.parse(HEADER)
    assert abi.constants == {"ONE": 1, "MASK": 0x4000}
    assert abi.callbacks == {"my_cb"}
    assert abi.functions["SSL_read"] == opensslabi.Function(
        "SSL_read", "int", ("SSL *", "void *", "int"), "LIBSSL")
    assert abi.functions["SSL_get_version"].restype == "const char *"
    assert abi.functions["ERR_get_error"].params == ()
    assert abi.functions["HMAC"] == opensslabi.Function(
        "HMAC", "unsigned char *", ("const EVP_MD *", "const void *", "int", "size_t"),
        "LIBCRYPTO")
    assert [f.name for f in abi.group("LIBCRYPTO")] == ["ERR_get_error", "HMAC"]


@pytest.mark.parametrize("bad", [
    "#define STUD_OPENSSL_LIBSSL(X) X(int, SSL_read, (SSL *)",            # unterminated
    "#define STUD_OPENSSL_LIBSSL(X) X(int, SSL_read)",                     # no parameters
    "#define STUD_OPENSSL_LIBSSL(X) X(int, SSL read, (SSL *))",           # bad name
    "#define STUD_OPENSSL_LIBSSL(X) X(int, f, (int)) X(int, f, (int))",   # twice
    "#define ONE 1",                                                       # no function list
])
def test_parse_refuses_what_it_cannot_read(bad):
    with pytest.raises(opensslabi.AbiError):
        opensslabi.parse(bad)


def test_sslext_binds_every_function_of_the_header():
    from stud import sslext

    abi = opensslabi.load()
    wanted = {f.name for f in abi.functions.values() if f.group != "ENGINE"}
    assert set(sslext.addresses()) == wanted
    assert all(isinstance(a, int) and a for a in sslext.addresses().values())
    assert sslext.ABI.constants["STUD_OPENSSL_MAJOR"] == ssl.OPENSSL_VERSION_INFO[0]


def test_every_function_of_the_header_is_used():
    """The list is what stud calls: no function is declared and left unused."""
    text = "".join(p.read_text() for p in C_SOURCES) + (PKG / "sslext.py").read_text()
    for f in opensslabi.load().functions.values():
        if f.group == "ENGINE":
            continue  # (sslext binds the group by its name)
        assert re.search(rf"\b{f.name}_\(|_F\[\"{f.name}\"\]", text), f.name


def test_the_c_modules_declare_no_openssl_function_or_number_of_their_own():
    checked = 0
    for path in C_SOURCES:
        text = path.read_text()
        assert not re.search(r"\(\*\s*(SSL|ERR|HMAC|EVP|CRYPTO|RAND|i2d|d2i)\w*\)\s*\(", text), \
            path
        calls = re.findall(r"\b(?:SSL|SSL_CTX)_\w*(?:ctrl|servername|shutdown|ex_data)_\(([^;]*)",
                           text)
        checked += len(calls)
        for args in calls:  # the command, flag or index: by name
            assert not re.match(r"[^,]+,\s*\d", args), f"{path.name}: a literal in ({args}"
        assert '"_addresses.h"' not in text and '#include "_openssl.h"' in text
    assert checked >= 10  # (the pattern finds the calls it is about)


def test_the_c_modules_take_all_functions_or_none():
    from stud import relay, sslext

    if relay._flow is None:
        pytest.skip("stud._flow is not built")
    fns = sslext.addresses()
    del fns["SSL_read"]
    with pytest.raises(KeyError, match="SSL_read"):
        relay._flow.init(fns, sslext.flow_layout())


# -- where sslext refuses the OpenSSL it finds ------------------------------------------------
# The interpreter is told OpenSSL is 1.1.1 before stud is imported: sslext must refuse it, and
# stud must then still parse options, check a configuration and serve (pure Python, one line).
AS_IF_OPENSSL_1 = ("import runpy, ssl, sys; ssl.OPENSSL_VERSION_INFO = (1, 1, 1, 23, 15); "
                   "sys.argv[0] = 'stud'; runpy.run_module('stud', run_name='__main__')")
OTHER_OPENSSL = [sys.executable, "-c", AS_IF_OPENSSL_1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*OTHER_OPENSSL, *args], capture_output=True, text=True, timeout=60)


def test_sslext_refuses_another_openssl_major_version_naming_it():
    r = subprocess.run([sys.executable, "-c", AS_IF_OPENSSL_1.split("; sys.argv")[0]
                        + "; import stud.sslext"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "ImportError: stud.sslext: " in r.stderr
    assert "is not OpenSSL 3, whose ABI stud's OpenSSL calls are written for" in r.stderr


def test_help_and_check_work_without_sslext(pem):
    r = run("--help")
    assert r.returncode == 0 and "Usage: stud" in r.stdout and "Traceback" not in r.stderr
    r = run("-t", "-f", "127.0.0.1,1", pem)
    assert r.returncode == 0 and "configuration looks ok" in r.stdout, r.stderr
    r = run("-t", "--ciphersuites=TLS_AES_128_GCM_SHA256", pem)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1].startswith("stud: ciphersuites: not available here (")


def test_serves_on_the_pure_python_path_without_sslext(procs, backend, pem, tmp_path):
    from helpers import Proc

    port = free_port()
    p = Proc([*OTHER_OPENSSL, "-f", f"127.0.0.1,{port}", "-b", f"127.0.0.1,{backend()}",
              "-L", "conn", pem], tmp_path / "stud.out")
    procs.append(p)
    wait_for(lambda: "online" in p.output() or p.proc.poll() is not None)
    assert p.proc.poll() is None, p.output()
    for _ in range(3):
        with tls_connect(port, ctx=client_ctx()) as c:
            c.sendall(b"ping")
            assert c.recv(16) == b"ping"
    out = p.output()
    assert out.count("is not OpenSSL 3") == 1
    assert "connections run on the pure-Python path" in out
    assert "Traceback" not in out
