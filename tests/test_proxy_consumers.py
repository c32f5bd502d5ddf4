"""Real PROXY v2 consumers read every kind of header proxyproto.v2 builds.

Debian's HAProxy and nginx, each on its own loopback ports with its own temporary files, get a
header and an HTTP request from a plain socket and answer with the client address they parsed
(and what else their version can show of the TLVs). Where a consumer refuses a header, the test
states the limit its source sets (see README: PROXY v2 TLVs) and finds the reason in its log.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_pki import self_signed
from helpers import free_port, wait_for

from stud import identity as stud_identity
from stud.proxyproto import ClientIdentity, _parse_tlvs, parse, v2

HAPROXY = "/usr/sbin/haproxy"
NGINX = "/usr/sbin/nginx"
REQUEST = b"GET / HTTP/1.1\r\nHost: consumer.test\r\nConnection: close\r\n\r\n"
V4 = (("192.0.2.1", 56324), ("198.51.100.7", 443))
V6 = (("2001:db8::1", 1234), ("2001:db8::2", 443))
CONN = (("127.0.0.1", 50000), ("127.0.0.1", 8443))  # the connection stud accepted
TLS = {"ssl_version": "TLSv1.3", "ssl_cipher": "TLS_AES_256_GCM_SHA384"}
# The answer both consumers give: what they parsed, as key=value words.
FIELDS = "src sport dst dport authority uid".split()


def identity(der: bytes, **kw: object) -> ClientIdentity:
    return stud_identity.of(der).for_proxy(**kw)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the PROXY spec asks for PP2_TYPE_CRC32C."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def with_crc32c(src: tuple[str, int], dst: tuple[str, int], tlvs: bytes) -> bytes:
    """A v2 header as an upstream proxy that checksums its headers sends it."""
    plain = v2(src, dst)
    body = plain[16:] + tlvs + b"\x03\x00\x04" + bytes(4)
    zeroed = plain[:14] + len(body).to_bytes(2, "big") + body
    return zeroed[:-4] + crc32c(zeroed).to_bytes(4, "big")


def top_tlvs(header: bytes) -> list[tuple[int, bytes]]:
    """A built header's TLVs, at any size (parse() stops at what stud accepts from a client)."""
    addr_len = 12 if header[13] == 0x11 else 36
    body = header[16 + addr_len:]
    return list(_parse_tlvs(body, len(body)))


# -- the headers -------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    header: bytes
    src: tuple[str, int]
    dst: tuple[str, int]
    authority: str = ""
    uid: str = ""
    cn: str = ""  # what a consumer that reads the SSL TLV's CN should see


def cases() -> dict[str, Case]:
    rsa_der, ec_der = self_signed(), self_signed(rsa_key=False)
    big_der = self_signed(uris=120)  # a certificate with many SANs: a header over 4096 bytes
    rsa_id, ec_id = identity(rsa_der), identity(ec_der)
    sni = {**TLS, "authority": "consumer.test"}
    out = {
        "v4 no TLVs": Case(v2(*V4), *V4),
        "v6 no TLVs": Case(v2(*V6), *V6),
        "TLS, no client certificate": Case(v2(*V4, alpn=b"h2", **sni), *V4, "consumer.test"),
        "all TLVs, RSA DER": Case(v2(*V4, **sni, client=rsa_id, identity_tlvs=True), *V4,
                                  "consumer.test", cn="client Zoë"),
        "all TLVs, EC DER, v6": Case(v2(*V6, **sni, client=ec_id, identity_tlvs=True), *V6,
                                     "consumer.test", cn="client Zoë"),
        "hitch PEM": Case(v2(*V4, **sni, client=rsa_id, cert="pem"), *V4, "consumer.test",
                          cn="client Zoë"),
        "identity TLVs, no certificate": Case(
            v2(*V6, **TLS, client=ec_id, cert=None, identity_tlvs=True), *V6, cn="client Zoë"),
        "unverified, resumed": Case(
            v2(*V4, **TLS, client=identity(ec_der, verify=20, on_connection=False)), *V4,
            cn="client Zoë"),
        "over 4096 bytes": Case(
            v2(*V4, **sni, client=identity(big_der), identity_tlvs=True), *V4, "consumer.test",
            cn="client Zoë"),
    }
    # --proxy-proxy with --write-proxy-v2: the client's header's addresses and foreign TLVs
    incoming = parse(b"PROXY TCP6 2001:db8::9 2001:db8::2 40000 443\r\n")
    out["from v1"] = Case(v2(*CONN, **TLS, passthrough=incoming), ("2001:db8::9", 40000),
                          ("2001:db8::2", 443))
    foreign = (b"\xea\x00\x09vpce-0123" + b"\x05\x00\x03abc" + b"\x02\x00\x05lb.ex"
               + b"\x04\x00\x02\x00\x00")
    incoming = parse(with_crc32c(("203.0.113.9", 40000), V4[1], foreign))
    out["from v2, foreign TLVs"] = Case(
        v2(*CONN, **sni, client=rsa_id, identity_tlvs=True, passthrough=incoming),
        ("203.0.113.9", 40000), V4[1], "consumer.test", "abc", cn="client Zoë")
    out["from v2, upstream's authority kept"] = Case(
        v2(*CONN, passthrough=incoming), ("203.0.113.9", 40000), V4[1], "lb.ex", "abc")
    # Over HAProxy's default buffer. Not much more: a consumer reads a header in one read, and
    # Linux pushes a write out in pieces past half the peer's window (32 KiB on loopback): at
    # 40000 bytes HAProxy or nginx then refused 7 and 13 headers in 100 (README).
    size = 30000 - len(v2(*V4, **sni, client=ec_id, cert=None)) - 3
    big = v2(*V4, **sni, client=dataclasses.replace(ec_id, der=b"\x30" * size))
    assert len(big) == 30000
    out["30000 bytes"] = Case(big, *V4, "consumer.test", cn="client Zoë")
    return out


CASES = cases()


# -- the consumers -----------------------------------------------------------------------
@dataclasses.dataclass
class Consumer:
    name: str
    port: int
    version: tuple[int, ...]
    limit: int  # the largest header it can read: it wants all of it in its first read
    log: Path
    refusal: str  # what its log says of a header it cannot read

    def accepts(self, header: bytes) -> bool:
        """What its source says it reads (see README: PROXY v2 TLVs)."""
        if len(header) > self.limit:
            return False
        # HAProxy 2.9+ keeps every TLV for fc_pp_tlv() and refuses a value over 1024 bytes
        # (HA_PP2_MAX_ALLOC, src/connection.c): an SSL TLV with the DER, hitch's PEM.
        return not (self.name.startswith("haproxy") and self.version >= (2, 9)
                    and any(len(value) > 1024 for _, value in top_tlvs(header)))


def program_version(args: list[str], pattern: str) -> tuple[int, ...]:
    r = subprocess.run(args, capture_output=True, text=True, timeout=20)
    m = re.search(pattern, r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return tuple(int(x) for x in m.group(1).split("."))


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False
    wait_for(up, timeout=15)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # both: fast shutdown
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def haproxy_conf(port: int, bufsize: int | None) -> str:
    echo = " ".join(f"{k}=%[{f}]" for k, f in zip(FIELDS, (
        "src", "src_port", "dst", "dst_port", "fc_pp_authority", "fc_pp_unique_id"),
        strict=True))
    return "\n".join([
        "global",
        "    log stdout format raw local0 info",
        f"    tune.bufsize {bufsize}" if bufsize else "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    timeout connect 5s",
        "    timeout client 5s",
        "    timeout server 5s",
        "frontend fe",
        f"    bind 127.0.0.1:{port} accept-proxy",
        f'    http-request return status 200 content-type text/plain lf-string "{echo}\\n"',
        "",
    ])


@pytest.fixture(scope="module")
def haproxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Consumer]]:
    if not Path(HAPROXY).exists():
        pytest.skip(f"{HAPROXY} is not installed")
    version = program_version([HAPROXY, "-v"], r"HAProxy version (\d+\.\d+(?:\.\d+)?)")
    started: list[subprocess.Popen] = []
    out = {}
    try:
        # Its first read (a MSG_PEEK) is one buffer, tune.bufsize (16384 by default).
        for name, bufsize in (("haproxy", None), ("haproxy bufsize 128k", 131072)):
            tmp = tmp_path_factory.mktemp(name.replace(" ", "-"))
            port = free_port()
            (tmp / "haproxy.cfg").write_text(haproxy_conf(port, bufsize))
            log = tmp / "haproxy.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp / "haproxy.cfg")],
                                        stdout=fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            started.append(proc)
            wait_listening(port, proc, log)
            out[name] = Consumer(name, port, version, bufsize or 16384, log,
                                 "Truncated PROXY protocol header received")
        yield out
    finally:
        for proc in started:
            stop(proc)


@pytest.fixture(scope="module")
def nginxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Consumer]]:
    if not Path(NGINX).exists():
        pytest.skip(f"{NGINX} is not installed")
    version = program_version([NGINX, "-v"], r"nginx/(\d+\.\d+\.\d+)")
    tmp = tmp_path_factory.mktemp("nginx")
    ports = {"nginx": free_port(), "nginx client_header_buffer_size 128k": free_port()}
    echo = " ".join(f"{k}=${v}" for k, v in zip(FIELDS, (
        "proxy_protocol_addr", "proxy_protocol_port", "proxy_protocol_server_addr",
        "proxy_protocol_server_port"), strict=False))
    if version >= (1, 23, 2):  # the TLV variables
        echo += (" authority=$proxy_protocol_tlv_authority uid=$proxy_protocol_tlv_unique_id"
                 " cn=$proxy_protocol_tlv_ssl_cn")
    servers = []
    for name, port in ports.items():
        # A plain (not ssl) http listener reads the header into the client header buffer, in
        # one read: client_header_buffer_size bounds it (1k by default).
        size = "    client_header_buffer_size 128k;\n" if "128k" in name else ""
        servers.append(f"  server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n{size}"
                       f'    location / {{ return 200 "{echo}\\n"; }}\n  }}\n')
    temp = "".join(f"  {kind}_temp_path {tmp}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp / "nginx.conf"
    conf.write_text("worker_processes 1;\nevents { worker_connections 64; }\n"
                    f"http {{\n  access_log {tmp}/access.log;\n{temp}{''.join(servers)}}}\n")
    log = tmp / "error.log"
    args = [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(log),
            "-g", f"daemon off; pid {tmp}/nginx.pid; error_log {log} info;"]
    with open(tmp / "nginx.out", "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        for port in ports.values():
            wait_listening(port, proc, tmp / "nginx.out")
        yield {name: Consumer(name, port, version, 128 * 1024 if "128k" in name else 1024, log,
                              "header is too large while reading PROXY protocol")
               for name, port in ports.items()}
    finally:
        stop(proc)


@pytest.fixture(params=["haproxy", "haproxy bufsize 128k", "nginx",
                        "nginx client_header_buffer_size 128k"])
def consumer(request: pytest.FixtureRequest) -> Consumer:
    group = "haproxies" if request.param.startswith("haproxy") else "nginxes"
    return request.getfixturevalue(group)[request.param]


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send data at once, read until the consumer closes: its answer, b"" if it refused."""
    deadline = time.monotonic() + timeout
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)  # at once, as stud writes its header
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk
        except (ConnectionResetError, BrokenPipeError):
            return out
    raise AssertionError(f"no end of answer within {timeout} s: {out!r}")


def logged(consumer: Consumer, mark: int) -> str:
    return consumer.log.read_bytes()[mark:].decode(errors="replace")


def answer(raw: bytes) -> dict[str, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:200]
    return dict(w.split("=", 1) for w in body.decode().split())


# -- tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_consumer_reads_the_header(consumer: Consumer, name: str) -> None:
    case = CASES[name]
    if not consumer.accepts(case.header):
        mark = consumer.log.stat().st_size
        assert exchange(consumer.port, case.header + REQUEST) == b""
        wait_for(lambda: consumer.refusal in logged(consumer, mark), timeout=10)
        return
    seen = answer(exchange(consumer.port, case.header + REQUEST))
    assert (seen["src"], int(seen["sport"])) == case.src
    assert (seen["dst"], int(seen["dport"])) == case.dst
    for key in ("authority", "uid", "cn"):  # where the consumer can show them
        if key in seen:
            assert seen[key] == getattr(case, key), key


def test_the_cases_cover_what_the_consumers_limit() -> None:
    sizes = sorted(len(c.header) for c in CASES.values())
    assert sizes[0] < 1024 < 4096 < sizes[-2] < 16384 < sizes[-1] <= 30000
    # and the SSL TLV with an RSA DER is over HAProxy 2.9's 1024 bytes per TLV
    assert len(dict(top_tlvs(CASES["all TLVs, RSA DER"].header))[0x20]) > 1024


def test_haproxy_checks_crc32c(haproxies: dict[str, Consumer]) -> None:
    """Why the pass-through drops an upstream's CRC32C: HAProxy checks it against the header,
    which stud rewrites."""
    port = haproxies["haproxy"].port
    upstream = with_crc32c(*V4, b"\x05\x00\x03abc")
    assert answer(exchange(port, upstream + REQUEST))["uid"] == "abc"
    out = v2(*CONN, **TLS, passthrough=parse(upstream))  # stud adds its SSL TLV
    assert answer(exchange(port, out + REQUEST))["uid"] == "abc"
    crc = upstream[-7:]  # the upstream's CRC32C TLV, kept as it was
    stale = out[:14] + (len(out) - 16 + len(crc)).to_bytes(2, "big") + out[16:] + crc
    assert [t for t, _ in parse(stale).tlvs] == [0x20, 0x05, 0x03]
    consumer = haproxies["haproxy"]
    mark = consumer.log.stat().st_size
    assert exchange(port, stale + REQUEST) == b""
    wait_for(lambda: "Received an invalid PROXY protocol header" in logged(consumer, mark), 10)
