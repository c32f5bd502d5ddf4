"""OpenSSL features the stdlib ``ssl`` module lacks, reached via ctypes over the SAME libssl.

Everything here pokes at CPython's private ``_ssl`` object layout, so it is deliberately
self-checking: it refuses to import (ImportError naming the reason) unless OpenSSL's major
version is the one stud/_openssl.h was written for, exactly one libssl is mapped and its version
matches ``ssl.OPENSSL_VERSION``, and the pointer extraction passes a check on throwaway objects;
every raw pointer is re-verified against what the stdlib reports before OpenSSL gets it. The
functions, their prototypes and the constants come from stud/_openssl.h (stud.opensslabi).
"""

from __future__ import annotations

import _ssl
import ctypes
import os
import re
import socket
import ssl
import sys
import sysconfig
import weakref

from stud import opensslabi

__all__ = [
    "ABI", "addresses", "adopt_verify", "ctx_pointer", "flow_layout", "get_ticket_keys",
    "keep_session", "load_engine", "openssl_version", "peer_certificate", "queued_error",
    "servername", "set_ciphersuites", "set_client_verify", "set_groups", "set_ocsp_staple",
    "set_session_id_context", "set_session_timeout", "set_ticket_keys", "set_verify_store",
    "shutdown_once", "ssl_pointer", "verify_result",
]

_P = ctypes.c_void_p
ABI = opensslabi.load()
_C = ABI.constants
# C types of _openssl.h as ctypes: pointers are addresses (char * is a C string), callbacks too.
_SCALARS = {"int": ctypes.c_int, "unsigned int": ctypes.c_uint, "long": ctypes.c_long,
            "unsigned long": ctypes.c_ulong, "uint64_t": ctypes.c_uint64,
            "size_t": ctypes.c_size_t, "char *": ctypes.c_char_p}


def _ctype(c_type: str) -> object:
    base = c_type.removeprefix("const ")
    if base == "void":
        return None
    if base in _SCALARS:
        return _SCALARS[base]
    if base.endswith("*") or base in ABI.callbacks:
        return _P
    raise ImportError(f"stud.sslext: no ctypes type for {c_type!r} in {opensslabi.HEADER.name}")


def _mapped_libs() -> tuple[str, str]:
    """Return the (libssl, libcrypto) paths mapped into this process by ``_ssl``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {p[5] for line in f if len(p := line.rstrip("\n").split(maxsplit=5)) == 6}
    except OSError as e:  # guessing via find_library could pick a different copy: fail loudly
        raise ImportError(f"stud.sslext: cannot read /proc/self/maps: {e}") from e
    ssls = sorted(p for p in paths if re.match(r"libssl[^/]*\.so", os.path.basename(p)))
    if len(ssls) != 1:
        raise ImportError(f"stud.sslext: need exactly one libssl mapped, found {ssls}")
    d = os.path.dirname(ssls[0])
    cryptos = sorted(p for p in paths if re.match(r"libcrypto[^/]*\.so", os.path.basename(p))
                     and os.path.dirname(p) == d)
    if len(cryptos) != 1:
        raise ImportError(f"stud.sslext: need exactly one libcrypto mapped in {d}, found {cryptos}")
    return ssls[0], cryptos[0]


if ssl.OPENSSL_VERSION_INFO[0] != _C["STUD_OPENSSL_MAJOR"]:
    raise ImportError(f"stud.sslext: {ssl.OPENSSL_VERSION} is not OpenSSL "
                      f"{_C['STUD_OPENSSL_MAJOR']}, whose ABI stud's OpenSSL calls are written for")
if hasattr(sys, "gettotalrefcount"):
    raise ImportError("stud.sslext: debug CPython build (object layout differs)")
if sysconfig.get_config_var("Py_GIL_DISABLED"):
    raise ImportError("stud.sslext: free-threaded CPython build (object layout differs)")
if sys.implementation.name != "cpython" or object.__basicsize__ != 2 * ctypes.sizeof(_P):
    raise ImportError("stud.sslext: needs a regular CPython build (id() == address, plain head)")
# struct PySSLContext { PyObject_HEAD; SSL_CTX *ctx; ... }
# struct PySSLSocket  { PyObject_HEAD; PyObject *Socket; SSL *ssl; ... }
_CTX_OFFSET = object.__basicsize__
_SSL_OFFSET = object.__basicsize__ + ctypes.sizeof(_P)

_SSL_PATH, _CRYPTO_PATH = _mapped_libs()
# RTLD_NOLOAD: only ever bind to the copies _ssl already uses, never load a second one.
try:
    _ssl_lib = ctypes.CDLL(_SSL_PATH, mode=os.RTLD_NOW | os.RTLD_NOLOAD, use_errno=True)
    _crypto = ctypes.CDLL(_CRYPTO_PATH, mode=os.RTLD_NOW | os.RTLD_NOLOAD)
except OSError as e:
    raise ImportError(f"stud.sslext: cannot bind to the mapped OpenSSL: {e}") from e


def _bind(lib: ctypes.CDLL, f: opensslabi.Function) -> ctypes._CFuncPtr:
    fn = getattr(lib, f.name)
    fn.restype, fn.argtypes = _ctype(f.restype), [_ctype(t) for t in f.params]
    return fn


try:
    _F = {f.name: _bind(lib, f) for group, lib in (("LIBSSL", _ssl_lib), ("LIBCRYPTO", _crypto))
          for f in ABI.group(group)}
except AttributeError as e:
    raise ImportError(f"stud.sslext: {e}") from e


def _pop_error() -> tuple[str, str | None, str | None]:
    """Pop the first queued OpenSSL error as (text, library, REASON) and clear the rest (stale
    errors confuse the stdlib's own error reporting later on this thread)."""
    code = _F["ERR_get_error"]()
    _F["ERR_clear_error"]()
    if not code:
        return "no OpenSSL error reported", None, None
    buf = ctypes.create_string_buffer(256)
    _F["ERR_error_string_n"](code, buf, len(buf))
    text = buf.value.decode("ascii", "replace")
    parts = text.split(":", 4)  # "error:0A000126:SSL routines::shutdown while in init"
    if len(parts) < 5:
        return text, None, None
    return text, parts[2].removesuffix(" routines"), parts[4].upper().replace(" ", "_")


def _reason() -> str:
    return _pop_error()[0]


def queued_error(what: str) -> ssl.SSLError:
    """The SSLError for the TLS error OpenSSL queued on this thread (its .reason as the stdlib
    names it), for an SSL* that has no _SSLSocket to raise it."""
    return _ssl_error(ssl.SSLError, _C["SSL_ERROR_SSL"], what)


def _ssl_error(cls: type[ssl.SSLError], err: int, what: str, queue: bool = True) -> ssl.SSLError:
    """An SSLError with .library/.reason set like the stdlib's (callers log e.reason)."""
    text, lib, reason = _pop_error() if queue else ("", None, None)
    e = cls(err, f"{what}: {text}" if queue else what)
    e.library, e.reason = lib, reason
    return e


def _cstr(s: str) -> bytes:
    if "\0" in s:  # C would silently stop at the NUL
        raise ValueError(f"embedded NUL in {s!r}")
    return s.encode()


def _ctx_ptr(ctx: ssl.SSLContext) -> int:
    if not isinstance(ctx, _ssl._SSLContext):
        raise TypeError(f"expected ssl.SSLContext, got {type(ctx).__name__}")
    p = _P.from_address(id(ctx) + _CTX_OFFSET).value
    if not p or _F["SSL_CTX_get_options"](p) != int(ctx.options) & 0xFFFFFFFFFFFFFFFF:
        raise RuntimeError("stud.sslext: SSL_CTX* pointer check failed (CPython layout changed?)")
    return p


def ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The checked SSL_CTX* of a context, remembered on it: a context is checked once."""
    p = getattr(ctx, "_stud_ctx_ptr", None)
    if p is None:
        p = ctx._stud_ctx_ptr = _ctx_ptr(ctx)
    return p


def ssl_pointer(obj: _ssl._SSLSocket) -> int:
    """The checked SSL* of a raw ``_ssl._SSLSocket`` (what ``SSLContext._wrap_socket`` returns).

    The relay drives those directly; it looks the pointer up once per connection and keeps
    ``obj`` alive while using it.
    """
    if type(obj) is not _ssl._SSLSocket:
        raise TypeError(f"expected _ssl._SSLSocket, got {type(obj).__name__}")
    p = _P.from_address(id(obj) + _SSL_OFFSET).value
    if not p or _F["SSL_get_SSL_CTX"](p) != ctx_pointer(obj.context):
        raise RuntimeError("stud.sslext: SSL* pointer check failed (CPython layout changed?)")
    return p


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Restrict key-exchange groups, e.g. ``"X25519:P-256"`` (SSL_CTX_set1_groups_list)."""
    p = _ctx_ptr(ctx)
    _F["ERR_clear_error"]()
    if _F["SSL_CTX_ctrl"](p, _C["SSL_CTRL_SET_GROUPS_LIST"], 0, _cstr(groups)) != 1:
        raise ValueError(f"invalid groups list {groups!r}: {_reason()}")


def set_session_timeout(ctx: ssl.SSLContext, seconds: int) -> None:
    """How long ctx's sessions resume: IDs in a cache, and tickets (their lifetime hint)."""
    _F["SSL_CTX_set_timeout"](_ctx_ptr(ctx), seconds)


def set_session_id_context(ctx: ssl.SSLContext, sid: bytes) -> None:
    """A session resumes only where it was made under the same context (at most 32 bytes)."""
    if _F["SSL_CTX_set_session_id_context"](_ctx_ptr(ctx), sid, len(sid)) != 1:
        raise ValueError(f"SSL_CTX_set_session_id_context: {_reason()}")


def set_ciphersuites(ctx: ssl.SSLContext, suites: str) -> None:
    """Set the TLS 1.3 ciphersuites ("" disables TLS 1.3 suites, as in OpenSSL)."""
    p, raw = _ctx_ptr(ctx), _cstr(suites)
    # OpenSSL 3.0 silently drops unknown names as long as one name is valid, so try the list
    # on a throwaway context first and insist that every requested name survived.
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _F["ERR_clear_error"]()
    if _F["SSL_CTX_set_ciphersuites"](_ctx_ptr(scratch), raw) != 1:
        raise ValueError(f"invalid TLS 1.3 ciphersuites {suites!r}: {_reason()}")
    known = {c["name"] for c in scratch.get_ciphers() if c["protocol"] == "TLSv1.3"}
    unknown = [s for s in suites.split(":") if s and s not in known]
    if unknown:
        raise ValueError(f"invalid TLS 1.3 ciphersuites {suites!r}: unknown {unknown}")
    if _F["SSL_CTX_set_ciphersuites"](p, raw) != 1:
        raise ValueError(f"invalid TLS 1.3 ciphersuites {suites!r}: {_reason()}")


def _ticket_keys_ctrl(ctx: ssl.SSLContext, cmd: str, buf: ctypes.Array) -> None:
    _F["ERR_clear_error"]()
    if _F["SSL_CTX_ctrl"](_ctx_ptr(ctx), _C[cmd], len(buf), buf) != 1:
        raise _ssl_error(ssl.SSLError, _C["SSL_ERROR_SSL"], f"{cmd} failed")


def set_ticket_keys(ctx: ssl.SSLContext, keys: bytes) -> None:
    """Install 80 bytes of session-ticket keys (16 name + 32 HMAC + 32 AES) so several
    servers/reloads accept each other's tickets. Set before serving: OpenSSL doesn't lock."""
    size = _C["SSL_TICKET_KEYS_LENGTH"]
    if len(keys) != size:
        raise ValueError(f"ticket keys must be exactly {size} bytes, got {len(keys)}")
    _ticket_keys_ctrl(ctx, "SSL_CTRL_SET_TLSEXT_TICKET_KEYS",
                      (ctypes.c_char * size).from_buffer_copy(keys))


def get_ticket_keys(ctx: ssl.SSLContext) -> bytes:
    """Return the context's 80-byte session-ticket keys (secret: handle like a private key)."""
    buf = (ctypes.c_char * _C["SSL_TICKET_KEYS_LENGTH"])()
    _ticket_keys_ctrl(ctx, "SSL_CTRL_GET_TLSEXT_TICKET_KEYS", buf)
    return bytes(buf)


# -- OCSP stapling: one status callback for every context, the staples by SSL_CTX* ------------
# A dict, not per-context callbacks: a refresh replaces the bytes while workers serve, and
# the SSL* a handshake runs on (_ssl's, or a Conn's own) leads to its SSL_CTX after any SNI
# switch, so the staple of the certificate actually sent is the one found.
# Per context, the staples by certificate (its DER; None: whichever it serves): a context may
# hold an RSA and an ECDSA certificate for the same names, each with its own response.
_staples: dict[int, dict[bytes | None, bytes]] = {}
_NOACK, _OK = _C["SSL_TLSEXT_ERR_NOACK"], _C["SSL_TLSEXT_ERR_OK"]
_GET_STATUS_TYPE, _OCSP = _C["SSL_CTRL_GET_TLSEXT_STATUS_REQ_TYPE"], _C["TLSEXT_STATUSTYPE_ocsp"]
_SET_OCSP_RESP = _C["SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP"]


@ctypes.CFUNCTYPE(ctypes.c_int, _P, _P)
def _status_cb(p: int, _arg: int) -> int:
    # OpenSSL calls this only when the client sent status_request; what it returns is final:
    # an exception would reach OpenSSL as 0 (OK) after a traceback on stderr, so none may leave.
    try:
        by_cert = _staples.get(_F["SSL_get_SSL_CTX"](p))
        if not by_cert or _F["SSL_ctrl"](p, _GET_STATUS_TYPE, 0, None) != _OCSP:
            return _NOACK
        der = by_cert.get(None) or by_cert.get(_served_cert(p))
        if not der:
            return _NOACK
        # OpenSSL takes the buffer and frees it with the SSL (OPENSSL_free): its own memory.
        buf = _F["CRYPTO_malloc"](len(der), None, 0)
        if not buf:
            return _NOACK
        ctypes.memmove(buf, der, len(der))
        if _F["SSL_ctrl"](p, _SET_OCSP_RESP, len(der), buf) != 1:
            _F["CRYPTO_free"](buf, None, 0)
            return _NOACK
        return _OK
    except BaseException:  # (see above)
        return _NOACK


def _served_cert(p: int) -> bytes:
    """The DER of the certificate SSL* p serves (OpenSSL chose it by what the client
    supports)."""
    return _der_of(_F["SSL_get_certificate"](p)) or b""


def _der_of(x: int | None) -> bytes | None:
    """An X509*'s DER encoding (None for NULL or a failed encoding)."""
    n = _F["i2d_X509"](x, None) if x else -1
    if n <= 0:
        return None
    buf = ctypes.create_string_buffer(n)
    out = _P(ctypes.addressof(buf))  # (i2d_X509 moves the pointer on: a copy of it)
    return buf.raw if _F["i2d_X509"](x, ctypes.addressof(out)) == n else None


def set_ocsp_staple(ctx: ssl.SSLContext, der: bytes | None, cert: bytes | None = None) -> None:
    """Staple the DER OCSP response ``der`` to ``ctx``'s certificate ``cert`` (its DER; None:
    whichever it serves) for clients that ask (status_request), from the next handshake on,
    replacing any before; None staples nothing.

    Stapling is the caller's word: check the response first (stud.ocsp.check). The status
    callback is installed once per context and forgotten with it.
    """
    if der is not None:
        der = bytes(der)
        if not der:
            raise ValueError("empty OCSP response (None removes the staple)")
    p = ctx_pointer(ctx)
    if p not in _staples:
        if der is None:
            return
        _F["ERR_clear_error"]()
        if _F["SSL_CTX_callback_ctrl"](p, _C["SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB"],
                                       ctypes.cast(_status_cb, _P).value) != 1:
            raise _ssl_error(ssl.SSLError, _C["SSL_ERROR_SSL"], "setting the status callback")
        # Before OpenSSL frees this SSL_CTX (and may hand its address to a new one).
        weakref.finalize(ctx, _staples.pop, p, None)
        _staples[p] = {}
    if der is None:
        _staples[p].pop(cert, None)
    else:
        _staples[p][cert] = der


# -- Client certificates: the trust store (CAs and CRLs) and what a handshake verified ---------
def _d2i(d2i: ctypes._CFuncPtr, der: bytes) -> int:
    """An OpenSSL object (X509 or X509_CRL) from its DER; the caller frees it."""
    src = ctypes.create_string_buffer(der, len(der))
    cursor = _P(ctypes.addressof(src))  # (d2i moves the pointer on: a copy of it)
    _F["ERR_clear_error"]()
    obj = d2i(None, ctypes.addressof(cursor), len(der))
    if not obj:
        raise ValueError(f"not a DER certificate or CRL: {_reason()}")
    return obj


def _add(store: int, obj: int, add: ctypes._CFuncPtr, free: ctypes._CFuncPtr) -> None:
    ok = add(store, obj)  # (the store takes its own reference)
    free(obj)
    if ok != 1:
        raise ValueError(f"adding to the trust store: {_reason()}")


def set_verify_store(ctx: ssl.SSLContext, cas: list[bytes], crls: list[bytes]) -> None:
    """Make ``ctx`` verify clients against a new store of the CA certificates ``cas`` and the
    CRLs ``crls`` (DER each), replacing the old one whole: a CRL that was replaced or
    withdrawn is gone from the next handshake on (the stdlib can only add to a store)."""
    store = _F["X509_STORE_new"]()
    if not store:
        raise MemoryError("X509_STORE_new")
    try:
        for der in cas:
            _add(store, _d2i(_F["d2i_X509"], der), _F["X509_STORE_add_cert"], _F["X509_free"])
        for der in crls:
            _add(store, _d2i(_F["d2i_X509_CRL"], der), _F["X509_STORE_add_crl"],
                 _F["X509_CRL_free"])
    except BaseException:
        _F["X509_STORE_free"](store)
        raise
    _F["SSL_CTX_set_cert_store"](ctx_pointer(ctx), store)  # frees the old store


def set_client_verify(ctx: ssl.SSLContext, cas: list[bytes], depth: int, sid: bytes) -> None:
    """What the stdlib cannot set for client verification: the CA names the certificate
    request lists (so a client picks the certificate that fits), the chain depth, and the
    session ID context ``sid`` (a session made under other verify settings cannot resume
    here). The mode and the store are set apart (verify_mode, set_verify_store())."""
    p = ctx_pointer(ctx)
    for der in cas:  # (the list keeps a copy of each subject name)
        _add(p, _d2i(_F["d2i_X509"], der), _F["SSL_CTX_add_client_CA"], _F["X509_free"])
    _F["SSL_CTX_set_verify_depth"](p, depth)
    set_session_id_context(ctx, sid)


def adopt_verify(p: int, ctx: ssl.SSLContext, sid: bytes) -> bool:
    """After SSL* ``p`` switched to ``ctx`` on its SNI name: take ctx's client verification
    (OpenSSL copies it from the first context only, when the connection is made). False when
    the connection resumes a session made under other verify settings (its session ID context
    is not ``sid``): it must be refused, or a session without a verified client certificate
    would pass where one is required."""
    if _F["SSL_session_reused"](p) == 1:
        sess = _F["SSL_get_session"](p)
        n = ctypes.c_uint(0)
        got = _F["SSL_SESSION_get0_id_context"](sess, ctypes.byref(n)) if sess else None
        if not got or ctypes.string_at(got, n.value) != sid:
            return False
    c = ctx_pointer(ctx)
    _F["SSL_set_verify"](p, _F["SSL_CTX_get_verify_mode"](c), None)
    return _F["X509_VERIFY_PARAM_set1"](_F["SSL_get0_param"](p), _F["SSL_CTX_get0_param"](c)) == 1


def peer_certificate(p: int) -> bytes | None:
    """The DER of the client certificate of SSL* ``p`` (presented on this connection, or
    carried by the session it resumed), or None."""
    return _der_of(_F["SSL_get0_peer_certificate"](p))


def verify_result(p: int) -> tuple[int, str]:
    """The X.509 verification result of SSL* ``p``: (code, OpenSSL's text); (0, "ok") when
    the client certificate verified (or none was asked for)."""
    code = _F["SSL_get_verify_result"](p)
    return code, _F["X509_verify_cert_error_string"](code).decode("ascii", "replace")


def addresses() -> dict[str, int]:
    """The address of every function of stud/_openssl.h's libssl and libcrypto lists, in the
    libraries _ssl uses: what stud's C modules call (their init())."""
    return {name: ctypes.cast(fn, _P).value for name, fn in _F.items()}


def flow_layout() -> tuple[type, int, type, int]:
    """Where CPython keeps the SSL* and SSL_CTX* (checked at import), for stud._flow:
    (_SSLSocket, its SSL* offset, _SSLContext, its SSL_CTX* offset)."""
    return _ssl._SSLSocket, _SSL_OFFSET, _ssl._SSLContext, _CTX_OFFSET


def keep_session(p: int) -> None:
    """Call before SSL* ``p`` is freed. OpenSSL drops from its cache the session of a
    connection freed without both close_notify alerts, so a client that resets the connection
    (browsers do) would cost its next connection the resumption. Mark it shut down both ways,
    as nginx does; fatal TLS errors already removed the session when they happened."""
    _F["SSL_set_shutdown"](p, _C["SSL_SENT_SHUTDOWN"] | _C["SSL_RECEIVED_SHUTDOWN"])


def servername(p: int) -> bytes | None:
    """The SNI host name the client sent on SSL* ``p`` (server side), or None."""
    return _F["SSL_get_servername"](p, _C["TLSEXT_NAMETYPE_host_name"])


def shutdown_once(p: int) -> None:
    """SSL_shutdown() once on SSL* ``p``: our close_notify, without reading the peer's.

    Raises ssl.SSLWantWriteError/SSLWantReadError (call again when ready), OSError or
    ssl.SSLError. Afterwards reads go on until the peer's close_notify, which the stdlib reports
    as SSLZeroReturnError since our own "sent" flag is set.
    """
    _F["ERR_clear_error"]()  # SSL_get_error() is only meaningful with an empty queue
    ctypes.set_errno(0)
    ret = _F["SSL_shutdown"](p)
    if ret >= 0:
        return
    err = _F["SSL_get_error"](p, ret)
    errno = ctypes.get_errno()
    if err in (_C["SSL_ERROR_WANT_WRITE"], _C["SSL_ERROR_WANT_READ"]):
        _F["ERR_clear_error"]()
        cls = (ssl.SSLWantWriteError if err == _C["SSL_ERROR_WANT_WRITE"]
               else ssl.SSLWantReadError)
        raise _ssl_error(cls, err, "close_notify not sent yet: retry when ready", queue=False)
    if err == _C["SSL_ERROR_SYSCALL"] and errno:
        _F["ERR_clear_error"]()
        raise OSError(errno, f"SSL_shutdown: {os.strerror(errno)}")
    raise _ssl_error(ssl.SSLError, err, "SSL_shutdown failed")


def load_engine(name: str) -> None:
    """stud's -e/--ssl-engine: "auto" registers all engines, else make ``name`` the default."""
    try:
        fn = {f.name.removeprefix("ENGINE_"): _bind(_crypto, f) for f in ABI.group("ENGINE")}
    except AttributeError as e:
        raise ValueError(f"OpenSSL engines are not supported by {_CRYPTO_PATH}") from e
    _F["ERR_clear_error"]()
    if name == "auto":
        if fn["register_all_complete"]() != 1:
            raise ValueError(f"OpenSSL engine 'auto' not available: {_reason()}")
        return
    e = fn["by_id"](_cstr(name))
    if not e:
        raise ValueError(f"OpenSSL engine {name!r} not available: {_reason()}")
    try:
        if fn["init"](e) != 1:
            raise ValueError(f"OpenSSL engine {name!r} not available: {_reason()}")
        try:  # set_default keeps its own references; ours are released either way
            if fn["set_default"](e, _C["ENGINE_METHOD_ALL"]) != 1:
                raise ValueError(f"OpenSSL engine {name!r} not available: {_reason()}")
        finally:
            fn["finish"](e)
    finally:
        fn["free"](e)


def openssl_version() -> str:
    """OpenSSL_version(OPENSSL_VERSION) of the library this module (and ``_ssl``) uses."""
    return _F["OpenSSL_version"](_C["OPENSSL_VERSION"]).decode()


def _selfcheck() -> None:
    """Verify the pointer extraction on throwaway objects; raises RuntimeError if it's off."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for _ in range(2):  # flip an option so a match can't be a coincidence
        _ctx_ptr(ctx)
        ctx.options ^= ssl.OP_NO_TICKET
    with socket.socket() as sock:
        tls = ctx._wrap_socket(sock, True)
        p = ssl_pointer(tls)
        # _ssl keeps its object as the SSL*'s app data, as a Conn's own SSL* keeps the Conn.
        if (_F["SSL_get_shutdown"](p) != 0 or
                _F["SSL_get_ex_data"](p, _C["SSL_APP_DATA_INDEX"]) != id(tls)):
            raise RuntimeError("stud.sslext: fresh SSL* looks wrong")
    if len(get_ticket_keys(ctx)) != _C["SSL_TICKET_KEYS_LENGTH"]:
        raise RuntimeError("stud.sslext: ticket key round trip failed")


if openssl_version() != ssl.OPENSSL_VERSION:
    raise ImportError(f"stud.sslext: mapped {_SSL_PATH} is {openssl_version()!r}, "
                      f"but ssl.OPENSSL_VERSION is {ssl.OPENSSL_VERSION!r}")
try:
    _selfcheck()
except RuntimeError as e:
    raise ImportError(str(e)) from e
