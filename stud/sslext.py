"""OpenSSL features the stdlib ``ssl`` module lacks, reached via ctypes over the SAME libssl.

Everything here pokes at CPython's private ``_ssl`` object layout, so it is deliberately
self-checking: it refuses to import unless exactly one libssl is mapped and its version matches
``ssl.OPENSSL_VERSION``, runs :func:`selfcheck` at import, and re-verifies every raw pointer
against what the stdlib reports before handing it to OpenSSL.
"""

from __future__ import annotations

import _ssl
import ctypes
import os
import re
import ssl
import sys
import sysconfig

__all__ = [
    "cache_functions", "ctx_pointer", "flow_functions", "flow_layout", "get_ticket_keys",
    "keep_session", "load_engine", "openssl_version", "queued_error", "selfcheck",
    "send_close_notify", "servername", "set_ciphersuites", "set_groups", "set_ticket_keys",
    "shutdown_once", "ssl_pointer",
]

_P, _INT, _LONG, _ULONG = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_ulong
_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_SENT_SHUTDOWN, _SSL_RECEIVED_SHUTDOWN = 1, 2
_SSL_ERROR_SSL, _SSL_ERROR_WANT_READ, _SSL_ERROR_WANT_WRITE, _SSL_ERROR_SYSCALL = 1, 2, 3, 5
_ENGINE_METHOD_ALL = 0xFFFF
_TICKET_KEYS_LEN = 80
# Our per-SSL marker (OpenSSL ex_data) for send_close_notify: a retry after WANT_WRITE must call
# SSL_shutdown again, but a call after success must not (it would then read from the socket).
_PENDING, _DONE = 1, 2


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


def _fn(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> ctypes._CFuncPtr:
    f = getattr(lib, name)
    f.restype, f.argtypes = restype, argtypes
    return f


_SSL_CTX_get_options = _fn(_ssl_lib, "SSL_CTX_get_options", ctypes.c_uint64, _P)  # uint64 in 3.x
_SSL_CTX_ctrl = _fn(_ssl_lib, "SSL_CTX_ctrl", _LONG, _P, _INT, _LONG, _P)
_SSL_CTX_set_ciphersuites = _fn(_ssl_lib, "SSL_CTX_set_ciphersuites", _INT, _P, ctypes.c_char_p)
_SSL_get_SSL_CTX = _fn(_ssl_lib, "SSL_get_SSL_CTX", _P, _P)
_SSL_shutdown = _fn(_ssl_lib, "SSL_shutdown", _INT, _P)
_SSL_get_shutdown = _fn(_ssl_lib, "SSL_get_shutdown", _INT, _P)
_SSL_set_shutdown = _fn(_ssl_lib, "SSL_set_shutdown", None, _P, _INT)
_SSL_get_error = _fn(_ssl_lib, "SSL_get_error", _INT, _P, _INT)
_SSL_set_ex_data = _fn(_ssl_lib, "SSL_set_ex_data", _INT, _P, _INT, _P)
_SSL_get_ex_data = _fn(_ssl_lib, "SSL_get_ex_data", _P, _P, _INT)
_SSL_get_servername = _fn(_ssl_lib, "SSL_get_servername", ctypes.c_char_p, _P, _INT)
_ERR_get_error = _fn(_crypto, "ERR_get_error", _ULONG)
_ERR_clear_error = _fn(_crypto, "ERR_clear_error", None)
_ERR_error_string_n = _fn(_crypto, "ERR_error_string_n", None, _ULONG, ctypes.c_char_p,
                          ctypes.c_size_t)
_OpenSSL_version = _fn(_crypto, "OpenSSL_version", ctypes.c_char_p, _INT)
# SSL_get_ex_new_index() is a macro for this; CRYPTO_EX_INDEX_SSL == 0.
_EX_INDEX = _fn(_crypto, "CRYPTO_get_ex_new_index", _INT, _INT, _LONG, _P, _P, _P, _P)(
    0, 0, None, None, None, None)
if _EX_INDEX < 0:
    raise ImportError("stud.sslext: CRYPTO_get_ex_new_index failed")


def _pop_error() -> tuple[str, str | None, str | None]:
    """Pop the first queued OpenSSL error as (text, library, REASON) and clear the rest (stale
    errors confuse the stdlib's own error reporting later on this thread)."""
    code = _ERR_get_error()
    _ERR_clear_error()
    if not code:
        return "no OpenSSL error reported", None, None
    buf = ctypes.create_string_buffer(256)
    _ERR_error_string_n(code, buf, len(buf))
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
    return _ssl_error(ssl.SSLError, _SSL_ERROR_SSL, what)


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
    if not p or _SSL_CTX_get_options(p) != int(ctx.options) & 0xFFFFFFFFFFFFFFFF:
        raise RuntimeError("stud.sslext: SSL_CTX* pointer check failed (CPython layout changed?)")
    return p


def _checked_ctx_ptr(ctx: ssl.SSLContext) -> int:
    """_ctx_ptr, remembered on the context: the per-connection path checks each one once."""
    p = getattr(ctx, "_stud_ctx_ptr", None)
    if p is None:
        p = ctx._stud_ctx_ptr = _ctx_ptr(ctx)
    return p


def _ssl_ptr(sock: ssl.SSLSocket | ssl.SSLObject) -> tuple[int, object]:
    """Return (SSL*, owner); keep ``owner`` alive while the pointer is in use."""
    if not isinstance(sock, ssl.SSLSocket | ssl.SSLObject):
        raise TypeError(f"expected ssl.SSLSocket or ssl.SSLObject, got {type(sock).__name__}")
    obj = sock._sslobj
    if obj is None:
        raise ValueError("TLS connection not established or already closed")
    if type(obj) is not _ssl._SSLSocket:
        raise TypeError(f"unexpected _sslobj type {type(obj).__name__}")
    p = _P.from_address(id(obj) + _SSL_OFFSET).value
    # obj.context is what _ssl itself tracks (updated on SNI context switches).
    if not p or _SSL_get_SSL_CTX(p) != _ctx_ptr(obj.context):
        raise RuntimeError("stud.sslext: SSL* pointer check failed (CPython layout changed?)")
    return p, obj


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Restrict key-exchange groups, e.g. ``"X25519:P-256"`` (SSL_CTX_set1_groups_list)."""
    p = _ctx_ptr(ctx)
    _ERR_clear_error()
    if _SSL_CTX_ctrl(p, _SSL_CTRL_SET_GROUPS_LIST, 0, _cstr(groups)) != 1:
        raise ValueError(f"invalid groups list {groups!r}: {_reason()}")


def set_ciphersuites(ctx: ssl.SSLContext, suites: str) -> None:
    """Set the TLS 1.3 ciphersuites ("" disables TLS 1.3 suites, as in OpenSSL)."""
    p, raw = _ctx_ptr(ctx), _cstr(suites)
    # OpenSSL 3.0 silently drops unknown names as long as one name is valid, so try the list
    # on a throwaway context first and insist that every requested name survived.
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _ERR_clear_error()
    if _SSL_CTX_set_ciphersuites(_ctx_ptr(scratch), raw) != 1:
        raise ValueError(f"invalid TLS 1.3 ciphersuites {suites!r}: {_reason()}")
    known = {c["name"] for c in scratch.get_ciphers() if c["protocol"] == "TLSv1.3"}
    unknown = [s for s in suites.split(":") if s and s not in known]
    if unknown:
        raise ValueError(f"invalid TLS 1.3 ciphersuites {suites!r}: unknown {unknown}")
    if _SSL_CTX_set_ciphersuites(p, raw) != 1:
        raise ValueError(f"invalid TLS 1.3 ciphersuites {suites!r}: {_reason()}")


def set_ticket_keys(ctx: ssl.SSLContext, keys: bytes) -> None:
    """Install 80 bytes of session-ticket keys (16 name + 32 HMAC + 32 AES) so several
    servers/reloads accept each other's tickets. Set before serving: OpenSSL doesn't lock."""
    if len(keys) != _TICKET_KEYS_LEN:
        raise ValueError(f"ticket keys must be exactly {_TICKET_KEYS_LEN} bytes, got {len(keys)}")
    p = _ctx_ptr(ctx)
    buf = (ctypes.c_char * _TICKET_KEYS_LEN).from_buffer_copy(keys)
    _ERR_clear_error()
    if _SSL_CTX_ctrl(p, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, _TICKET_KEYS_LEN, buf) != 1:
        raise _ssl_error(ssl.SSLError, _SSL_ERROR_SSL, "cannot set ticket keys")


def get_ticket_keys(ctx: ssl.SSLContext) -> bytes:
    """Return the context's 80-byte session-ticket keys (secret: handle like a private key)."""
    p = _ctx_ptr(ctx)
    buf = (ctypes.c_char * _TICKET_KEYS_LEN)()
    _ERR_clear_error()
    if _SSL_CTX_ctrl(p, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, _TICKET_KEYS_LEN, buf) != 1:
        raise _ssl_error(ssl.SSLError, _SSL_ERROR_SSL, "cannot get ticket keys")
    return bytes(buf)


def ssl_pointer(obj: _ssl._SSLSocket) -> int:
    """The checked SSL* of a raw ``_ssl._SSLSocket`` (what ``SSLContext._wrap_socket`` returns).

    The relay drives those directly; it looks the pointer up once per connection and keeps
    ``obj`` alive while using it.
    """
    if type(obj) is not _ssl._SSLSocket:
        raise TypeError(f"expected _ssl._SSLSocket, got {type(obj).__name__}")
    p = _P.from_address(id(obj) + _SSL_OFFSET).value
    if not p or _SSL_get_SSL_CTX(p) != _checked_ctx_ptr(obj.context):
        raise RuntimeError("stud.sslext: SSL* pointer check failed (CPython layout changed?)")
    return p


def _addresses(ssl_names: tuple[str, ...], crypto_names: tuple[str, ...]) -> dict[str, int]:
    return {name: ctypes.cast(getattr(lib, name), _P).value
            for lib, names in ((_ssl_lib, ssl_names), (_crypto, crypto_names)) for name in names}


def flow_functions() -> dict[str, int]:
    """Addresses of the OpenSSL functions stud._flow calls, in the libraries _ssl uses."""
    return _addresses(("SSL_read", "SSL_has_pending", "SSL_write", "SSL_get_error", "SSL_shutdown",
                       "SSL_do_handshake", "SSL_get_SSL_CTX", "SSL_get_servername",
                       "SSL_set_shutdown", "SSL_get_version", "SSL_get_current_cipher",
                       "SSL_CIPHER_get_name", "SSL_get0_alpn_selected", "SSL_session_reused",
                       "SSL_new", "SSL_free", "SSL_set_fd", "SSL_set_accept_state", "SSL_ctrl",
                       "SSL_set_SSL_CTX", "SSL_CTX_callback_ctrl", "SSL_set_ex_data",
                       "SSL_get_ex_data"),
                      ("ERR_get_error", "ERR_clear_error", "ERR_error_string_n"))


def cache_functions() -> dict[str, int]:
    """Addresses of the OpenSSL functions stud._sesscache calls."""
    return _addresses(("SSL_CTX_sess_set_new_cb", "SSL_CTX_sess_set_get_cb",
                       "SSL_CTX_sess_set_remove_cb", "SSL_CTX_ctrl", "i2d_SSL_SESSION",
                       "d2i_SSL_SESSION", "SSL_SESSION_get_id", "SSL_SESSION_get_time",
                       "SSL_SESSION_get_timeout", "SSL_SESSION_free", "SSL_version",
                       "SSL_get_options"),
                      ("HMAC", "EVP_sha1", "CRYPTO_memcmp"))


def ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The checked SSL_CTX* of a context."""
    return _checked_ctx_ptr(ctx)


def flow_layout() -> tuple[type, int, type, int]:
    """Where CPython keeps the SSL* and SSL_CTX* (checked by selfcheck() at import), for
    stud._flow.ssl_pointer: (_SSLSocket, its SSL* offset, _SSLContext, its SSL_CTX* offset)."""
    return _ssl._SSLSocket, _SSL_OFFSET, _ssl._SSLContext, _CTX_OFFSET


def keep_session(p: int) -> None:
    """Call before SSL* ``p`` is freed. OpenSSL drops from its cache the session of a
    connection freed without both close_notify alerts, so a client that resets the connection
    (browsers do) would cost its next connection the resumption. Mark it shut down both ways,
    as nginx does; fatal TLS errors already removed the session when they happened."""
    _SSL_set_shutdown(p, _SSL_SENT_SHUTDOWN | _SSL_RECEIVED_SHUTDOWN)


def servername(p: int) -> bytes | None:
    """The SNI host name the client sent on SSL* ``p`` (server side), or None."""
    return _SSL_get_servername(p, 0)  # TLSEXT_NAMETYPE_host_name


def shutdown_once(p: int) -> None:
    """SSL_shutdown() once on SSL* ``p``: our close_notify, without reading the peer's.

    Raises ssl.SSLWantWriteError/SSLWantReadError (call again when ready), OSError or
    ssl.SSLError. Afterwards reads go on until the peer's close_notify, which the stdlib reports
    as SSLZeroReturnError since our own "sent" flag is set.
    """
    _ERR_clear_error()  # SSL_get_error() is only meaningful with an empty queue
    ctypes.set_errno(0)
    ret = _SSL_shutdown(p)
    if ret >= 0:
        return
    err = _SSL_get_error(p, ret)
    errno = ctypes.get_errno()
    if err in (_SSL_ERROR_WANT_WRITE, _SSL_ERROR_WANT_READ):
        _ERR_clear_error()
        cls = ssl.SSLWantWriteError if err == _SSL_ERROR_WANT_WRITE else ssl.SSLWantReadError
        raise _ssl_error(cls, err, "close_notify not sent yet: retry when ready", queue=False)
    if err == _SSL_ERROR_SYSCALL and errno:
        _ERR_clear_error()
        raise OSError(errno, f"SSL_shutdown: {os.strerror(errno)}")
    raise _ssl_error(ssl.SSLError, err, "SSL_shutdown failed")


def send_close_notify(sock: ssl.SSLSocket | ssl.SSLObject) -> bool:
    """Send our close_notify without waiting for the peer's: a TLS half-close.

    Calls SSL_shutdown() once (unwrap() calls it twice and the second call reads, eating data
    the peer may still send). Returns True once the alert is written (repeat calls are no-ops).
    Raises ssl.SSLWantWriteError/SSLWantReadError: call again when the socket is ready.
    Finish any send() that raised SSLWantWriteError first (OpenSSL can't interleave them).
    Afterwards recv() still returns the peer's data, then b"" at its close_notify. Do not
    send() or unwrap() afterwards; just close().
    """
    p, _owner = _ssl_ptr(sock)
    state = _SSL_get_ex_data(p, _EX_INDEX)
    if state == _DONE:
        return True
    if state != _PENDING and _SSL_get_shutdown(p) & _SSL_SENT_SHUTDOWN:
        return True  # unwrap()/shutdown already started closing; calling again would read
    try:
        shutdown_once(p)
    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
        _SSL_set_ex_data(p, _EX_INDEX, _PENDING)
        raise
    _SSL_set_ex_data(p, _EX_INDEX, _DONE)
    # CPython's read() maps the peer's close_notify to b"" only if SSL_get_shutdown() is
    # *exactly* SSL_RECEIVED_SHUTDOWN, else raises SSLZeroReturnError. Drop our SENT flag
    # (the alert is already on the wire) so the half-closed read side ends with b"".
    _SSL_set_shutdown(p, _SSL_get_shutdown(p) & ~_SSL_SENT_SHUTDOWN)
    return True


def load_engine(name: str) -> None:
    """stud's -e/--ssl-engine: "auto" registers all engines, else make ``name`` the default."""
    try:
        by_id = _fn(_crypto, "ENGINE_by_id", _P, ctypes.c_char_p)
        init = _fn(_crypto, "ENGINE_init", _INT, _P)
        set_default = _fn(_crypto, "ENGINE_set_default", _INT, _P, ctypes.c_uint)
        finish = _fn(_crypto, "ENGINE_finish", _INT, _P)
        free = _fn(_crypto, "ENGINE_free", _INT, _P)
        register_all = _fn(_crypto, "ENGINE_register_all_complete", _INT)
    except AttributeError as e:
        raise ValueError(f"OpenSSL engines are not supported by {_CRYPTO_PATH}") from e
    _ERR_clear_error()
    if name == "auto":
        if register_all() != 1:
            raise ValueError(f"OpenSSL engine 'auto' not available: {_reason()}")
        return
    e = by_id(_cstr(name))
    if not e:
        raise ValueError(f"OpenSSL engine {name!r} not available: {_reason()}")
    try:
        if init(e) != 1:
            raise ValueError(f"OpenSSL engine {name!r} not available: {_reason()}")
        try:  # set_default keeps its own references; ours are released either way
            if set_default(e, _ENGINE_METHOD_ALL) != 1:
                raise ValueError(f"OpenSSL engine {name!r} not available: {_reason()}")
        finally:
            finish(e)
    finally:
        free(e)


def openssl_version() -> str:
    """OpenSSL_version(OPENSSL_VERSION) of the library this module (and ``_ssl``) uses."""
    return _OpenSSL_version(0).decode()


def selfcheck() -> None:
    """Verify the pointer extraction on throwaway objects; raises RuntimeError if it's off."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for _ in range(2):  # flip an option so a match can't be a coincidence
        _ctx_ptr(ctx)
        ctx.options ^= ssl.OP_NO_TICKET
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    p, _owner = _ssl_ptr(obj)
    if _SSL_get_shutdown(p) != 0 or _SSL_get_ex_data(p, _EX_INDEX):
        raise RuntimeError("stud.sslext: fresh SSL* looks wrong")
    if len(get_ticket_keys(ctx)) != _TICKET_KEYS_LEN:
        raise RuntimeError("stud.sslext: ticket key round trip failed")


if openssl_version() != ssl.OPENSSL_VERSION:
    raise ImportError(f"stud.sslext: mapped {_SSL_PATH} is {openssl_version()!r}, "
                      f"but ssl.OPENSSL_VERSION is {ssl.OPENSSL_VERSION!r}")
try:
    selfcheck()
except RuntimeError as e:
    raise ImportError(str(e)) from e
