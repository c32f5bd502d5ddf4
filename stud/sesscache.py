"""The shared TLS session cache (-C NUM) and its UDP replication to peer studs (-U, -P, -M).

With -C, a session ID that any worker issued resumes on every worker: stud._sesscache keeps
the sessions in memory the master maps before it forks, and OpenSSL's per-process cache is
off. With -U, the master also takes in peers' updates, and each worker sends its new sessions
to every -P peer, in stud's packet format (HMAC-SHA1 keyed by the SHA-1 of the first PEM's
private key in DER), so a fleet of studs, old and new, shares sessions. Updates carry the
session's master secret in clear, as stud's did: only for a private network.

Without the compiled module, -C only warns: sessions are then cached per worker.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import socket
import ssl
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from stud import addr
from stud.config import OPTIONS, Config, ConfigError
from stud.log import log

try:
    from stud import _sesscache, sslext
except ImportError:  # (no C compiler at install time, or no sslext)
    _sesscache = None
else:
    _sesscache.init(sslext.addresses())

DEFAULT_SIZE = next(o.default for o in OPTIONS if o.name == "shared-cache")
_in_use: object | None = None  # this process's _sesscache.Cache: what workers are forked with
_size = 0  # its slots


@dataclass
class Plan:
    """What a generation's cache will be, prepared without touching the one in use: a new
    cache (when -C appears or changes size), and the replication's key and peers."""

    cache: object | None          # a new _sesscache.Cache to put in use, or None: keep
    size: int
    replication: tuple[int, bytes, list[tuple]] | None  # (-U's socket's fd, key, peers)


def plan(cfg: Config, contexts: list[ssl.SSLContext], updates: socket.socket | None) -> Plan:
    """Prepare the cache for cfg (raises ConfigError); the contexts, new and not yet serving,
    are attached to the cache in use after commit()."""
    replication = update_config(cfg, updates) if updates is not None else None
    if not cfg.shared_cache:
        return Plan(None, 0, replication)
    if _sesscache is None:  # (said as an error only when asked for: -C is on by default)
        say = log.info if cfg.shared_cache == DEFAULT_SIZE else log.error
        say("{core} shared-cache: stud's compiled module is not built; sessions are "
            "cached per worker.")
        return Plan(None, 0, replication)
    cache = None
    if cfg.shared_cache != _size:  # the sessions survive reloads that keep the size
        try:
            cache = _sesscache.Cache(cfg.shared_cache)
        except (OSError, ValueError) as e:
            raise ConfigError(f"shared-cache: {e}") from None
    for ctx in contexts:
        _sesscache.attach(sslext.ctx_pointer(ctx))
    return Plan(cache, cfg.shared_cache, replication)


def commit(p: Plan) -> None:
    """Put a prepared plan in use: for this process (the master takes peers' updates into it)
    and the workers forked from now on; those forked before keep theirs."""
    global _in_use, _size
    if p.cache is not None:
        _sesscache.use(p.cache)
        _in_use, _size = p.cache, p.size
    if p.replication is not None:
        _sesscache.replicate(*p.replication)


def update_key(pem: str) -> bytes:
    """The HMAC key of update packets: SHA-1 of the private key of pem in traditional DER
    (for RSA that is stud's i2d_RSAPrivateKey, so old studs accept our updates)."""
    with open(pem, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    der = key.private_bytes(serialization.Encoding.DER,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    return hashlib.sha1(der).digest()


def _multicast(sock: socket.socket, group: str, family: int, cfg: Config) -> None:
    """Join group on -M's interface (a name, an IPv4 address or an index), with its TTL."""
    iface, _, ttl = cfg.shared_cache_if.partition(",")
    if family == socket.AF_INET:
        local = "0.0.0.0"
        if iface and iface != "*":
            local = iface if "." in iface else _if_address(iface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton(group) + socket.inet_aton(local))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        if ttl:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, int(ttl))
    else:
        index = _if_index(cfg)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                        socket.inet_pton(socket.AF_INET6, group) + index.to_bytes(4, "little"))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        if ttl:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, int(ttl))


def _if_index(cfg: Config) -> int:
    """-M's interface as an index (0: any)."""
    iface = cfg.shared_cache_if.partition(",")[0]
    if not iface or iface == "*":
        return 0
    return socket.if_nametoindex(iface) if iface[0].isalpha() else int(iface)


def _if_address(name: str) -> str:
    """The IPv4 address of interface name (or index), for IP_ADD_MEMBERSHIP."""
    if not name[0].isalpha():
        name = socket.if_indextoname(int(name))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("256s", name.encode()[:15])
        return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR


def open_updates(cfg: Config) -> socket.socket | None:
    """-U: the bound UDP socket the master receives peers' updates on and the workers send
    theirs from (so the source port is the -U port, as stud's)."""
    if not cfg.shared_cache_listen or cfg.client or _sesscache is None:
        return None
    try:
        family, sockaddr = addr.resolve(cfg.shared_cache_listen, passive=True)
    except addr.AddrError as e:
        raise ConfigError(f"shared-cache-listen: {e}") from None
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        multicast = ipaddress.ip_address(sockaddr[0]).is_multicast
        if multicast and family == socket.AF_INET6:  # (a link-local group needs its scope)
            sockaddr = (*sockaddr[:3], _if_index(cfg))
        sock.bind(sockaddr)
        if multicast:
            _multicast(sock, sockaddr[0], family, cfg)
    except OSError as e:
        sock.close()
        raise ConfigError(f"shared-cache-listen {cfg.shared_cache_listen}: "
                          f"{e.strerror or e}") from None
    sock.setblocking(False)
    log.info(f"{{core}} Session cache updates on udp {cfg.shared_cache_listen}, "
             f"to {len(cfg.shared_cache_peer)} peer(s)")
    return sock


def update_config(cfg: Config, sock: socket.socket) -> tuple[int, bytes, list[tuple]]:
    """The updates sent from sock under cfg: its fd, the key and the peers (raises
    ConfigError)."""
    peers = []
    for peer in cfg.shared_cache_peer:
        try:
            family, sockaddr = addr.resolve(peer)
        except addr.AddrError as e:
            raise ConfigError(f"shared-cache-peer: {e}") from None
        if family != sock.family:
            raise ConfigError("Share host and peers inet family differs")
        peers.append(sockaddr)
    try:
        key = update_key(cfg.pem_file[0].key or cfg.pem_file[0].cert)
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(f"shared-cache: no update key from the first pem-file: {e}") from None
    return sock.fileno(), key, peers


def receive() -> tuple[int, int]:
    """Peers' waiting updates into the cache: (taken, rejected as bad or stale)."""
    return _sesscache.receive()


def stats() -> dict[str, int] | None:
    """The counters of the cache in use, or None without one."""
    return _sesscache.stats() if _sesscache is not None else None
