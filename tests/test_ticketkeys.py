"""stud.ticketkeys: the formats' byte layouts (vectors written from HAProxy's and nginx's
sources), HAProxy's choice of the encrypting key, seeds, epoch keys and rotation windows; then
stud._ticketkeys on real handshakes in-process: which keys open which tickets, and the counts."""

from __future__ import annotations

import base64
import ssl

import pytest
from helpers import client_ctx, server_ctx, tls_pair
from hypothesis import given
from hypothesis import strategies as st

from stud import ticketkeys, tickets
from stud.ticketkeys import KeyFileError, Ring

NAME, A16, B16, A32, B32 = b"N" * 16, b"a" * 16, b"b" * 16, b"A" * 32, b"B" * 32


# -- layouts -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout, raw, aes, hmac", [
    # HAProxy: struct tls_sess_key_128/256 { name; aes_key; hmac_key; }
    ("haproxy", NAME + A16 + B16, A16, B16), ("haproxy", NAME + A32 + B32, A32, B32),
    # nginx: 48 bytes name|aes|hmac, 80 bytes name|hmac|aes
    ("nginx", NAME + A16 + B16, A16, B16), ("nginx", NAME + A32 + B32, B32, A32),
    # Apache / OpenSSL's ticket-key ctrl: name|hmac|aes
    ("apache", NAME + A16 + B16, B16, A16), ("apache", NAME + A32 + B32, B32, A32),
])
def test_layouts_put_the_fields_where_their_owner_reads_them(layout, raw, aes, hmac):
    key = ticketkeys.from_bytes(raw, layout)
    assert (key.name, key.aes, key.hmac) == (NAME, aes, hmac)
    assert ticketkeys.to_bytes(key, layout) == raw


def test_the_same_80_bytes_are_different_keys_to_haproxy_and_nginx():
    raw = NAME + A32 + B32
    assert ticketkeys.from_bytes(raw, "haproxy") != ticketkeys.from_bytes(raw, "nginx")


@given(st.sampled_from(list(ticketkeys.LAYOUTS)), st.sampled_from(ticketkeys.SIZES),
       st.data())
def test_layout_round_trip(layout, size, data):
    raw = data.draw(st.binary(min_size=size, max_size=size))
    assert ticketkeys.to_bytes(ticketkeys.from_bytes(raw, layout), layout) == raw


def test_key_bytes_never_show_in_repr():
    key = ticketkeys.new_key(80, NAME + A32 + B32)
    assert repr(key) == f"Key({NAME.hex()})" and "41414141" not in repr(Ring((key,)))


# -- HAProxy's file ------------------------------------------------------------------------
def keys(n: int, size: int = 80) -> list[ticketkeys.Key]:
    return [ticketkeys.new_key(size, bytes([i]) * size) for i in range(1, n + 1)]


@pytest.mark.parametrize("n, kept, encrypting", [
    (1, [1], 1), (2, [2, 1], 1), (3, [3, 2, 1], 2), (5, [5, 4, 3], 4)])
def test_haproxy_keeps_the_last_three_and_the_one_before_the_last_encrypts(n, kept, encrypting):
    ring = ticketkeys.parse_haproxy(ticketkeys.format_haproxy(keys(n)), "f")
    assert [k.name[0] for k in ring.keys] == kept
    assert ring.encrypting.name[0] == encrypting


def test_haproxy_file_with_crlf_and_48_byte_keys():
    text = b"".join(base64.b64encode(ticketkeys.to_bytes(k, "haproxy")) + b"\r\n"
                    for k in keys(3, 48))
    assert ticketkeys.parse_haproxy(text, "f").encrypting.aes == bytes([2]) * 16


@pytest.mark.parametrize("text, error", [
    (b"", "f: no key"),
    (b"not base64!\n", "f:1: not a base64 key"),
    (base64.b64encode(b"x" * 47) + b"\n", "f:1: a key is 48 or 80 bytes, this one is 47"),
    (base64.b64encode(b"x" * 80) + b"\n\n", "f:2: a key is 48 or 80 bytes, this one is 0"),
    (base64.b64encode(b"x" * 80) + b"\n" + base64.b64encode(b"y" * 48),
     "f:2: 48-byte key after 80-byte ones"),
    (base64.b64encode(b"x" * 80) + b"\n" + base64.b64encode(b"x" * 80),
     "f: two ticket keys have the same name"),
])
def test_haproxy_file_errors_name_the_line(text, error):
    with pytest.raises(KeyFileError) as e:
        ticketkeys.parse_haproxy(text, "f")
    assert str(e.value) == error


# -- nginx's files -------------------------------------------------------------------------
def test_nginx_first_file_encrypts_all_decrypt():
    files = [(f"k{i}", ticketkeys.to_bytes(k, "nginx")) for i, k in enumerate(keys(3))]
    ring = ticketkeys.parse_raw(files)
    assert [k.name[0] for k in ring.keys] == [1, 2, 3] and ring.encrypt == 0


def test_nginx_file_of_the_wrong_size_is_named():
    with pytest.raises(KeyFileError, match=r"^k2: a key file holds 48 or 80 bytes, this one 81$"):
        ticketkeys.parse_raw([("k1", b"x" * 80), ("k2", b"y" * 81)])


# -- seeds and epochs ----------------------------------------------------------------------
def test_seed_file_is_64_hex_digits_whitespace_ignored():
    seed = bytes(range(32))
    text = seed.hex()[:20].encode() + b"\n  " + seed.hex()[20:].upper().encode() + b"\n"
    assert ticketkeys.parse_seed(text, "s") == seed
    assert ticketkeys.parse_seed(ticketkeys.format_seed(seed), "s") == seed


@pytest.mark.parametrize("text", [b"", b"zz" * 32, b"00" * 31, b"00" * 33, b"\xff" * 64])
def test_bad_seed_is_refused_naming_the_file(text):
    with pytest.raises(KeyFileError, match=r"^s: a seed is"):
        ticketkeys.parse_seed(text, "s")


def test_epoch_keys_are_deterministic_and_distinct():
    seed = bytes(32)
    k = ticketkeys.epoch_key(seed, 100, 3600)
    assert k == ticketkeys.epoch_key(seed, 100, 3600)
    others = {ticketkeys.epoch_key(seed, 101, 3600), ticketkeys.epoch_key(seed, 100, 1800),
              ticketkeys.epoch_key(b"\1" * 32, 100, 3600)}
    assert k not in others and len(others) == 3
    assert len({o.name for o in others | {k}}) == 4 and len(k.aes) == 32


@given(st.floats(0, 4e9), st.integers(60, 86400), st.integers(1, 86400 * 7))
def test_seed_ring_current_encrypts_next_and_previous_decrypt(now, lifetime, tickets):
    if ticketkeys.rotation_fits(lifetime, tickets):
        return
    seed = b"s" * 32
    ring = ticketkeys.seed_ring(seed, now, lifetime, tickets)
    epoch = int(now // lifetime)
    assert ring.encrypting == ticketkeys.epoch_key(seed, epoch, lifetime)
    assert ring.keys[0] == ticketkeys.epoch_key(seed, epoch + 1, lifetime)
    assert ring.keys[2] == ticketkeys.epoch_key(seed, epoch - 1, lifetime)
    # a node whose clock is up to half an epoch off still opens what this one issues
    for skew in (-lifetime / 2, lifetime / 2):
        other = ticketkeys.seed_ring(seed, now + skew, lifetime, tickets)
        assert ring.encrypting in other.keys and other.encrypting in ring.keys
    assert ticketkeys.seed_next_change(now, lifetime) > now


@given(st.integers(1, 7200), st.integers(1, 86400), st.lists(st.floats(0.1, 10000), max_size=30))
def test_rotation_keeps_each_key_as_long_as_its_tickets_live(lifetime, tickets, gaps):
    """Whatever the timing: the newest key encrypts, a key that stopped encrypting less than
    a ticket lifetime ago still decrypts, and none older does (nor more than MAX_KEYS)."""
    if ticketkeys.rotation_fits(lifetime, tickets):
        return
    now, ring, made, retired = 0.0, None, [], {}
    for gap in [0.0, *gaps]:
        now += gap
        if ring is not None:
            retired[ring.encrypting] = now
        ring, made = ticketkeys.rotate(ring, made, now, lifetime, tickets, ticketkeys.new_key())
        assert ring.encrypt == 0 and made[0] == now and len(ring.keys) == len(made)
        for key, when in retired.items():
            assert (key in ring.keys) == (when + tickets > now)


def test_rotation_that_would_need_too_many_keys_is_refused():
    assert "use at least 480 s" in ticketkeys.rotation_fits(60, 7200)
    assert ticketkeys.rotation_fits(3600, 7200) is None


# -- the ring on real handshakes -------------------------------------------------------------
built = pytest.mark.skipif(not tickets.AVAILABLE, reason="stud._ticketkeys not built")


def handshake(sctx, cctx, session=None) -> ssl.SSLSession:
    s, c = tls_pair(sctx, cctx, session=session)
    with s, c:
        s.sendall(b"x")  # (TLS 1.3 tickets arrive after the handshake)
        assert c.recv(1) == b"x"
        return c.session, c.session_reused


@pytest.fixture
def ring():
    """Sets this process's ring (shared with nothing: no stud is forked from here)."""
    from stud import _ticketkeys
    return lambda ks, enc=0: _ticketkeys.set([k.wire() for k in ks], enc)


@built
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("size", [48, 80])
def test_ring_opens_tickets_of_every_key_in_it_and_counts(pem, ring, version, size):
    from stud import _ticketkeys
    a, b = server_ctx(pem), server_ctx(pem)
    for ctx in (a, b):
        tickets.attach(ctx)
    cctx = client_ctx(maximum_version=version)
    old, new = ticketkeys.new_key(size), ticketkeys.new_key(size)
    ring([old])
    sess, reused = handshake(a, cctx)
    assert not reused
    assert handshake(b, cctx, sess)[1]  # another context, the same ring
    ring([new, old])  # rotated: the old key still opens, and the ticket is renewed
    renewed, reused = handshake(b, cctx, sess)
    assert reused
    ring([new])  # the old key gone: a full handshake; the renewed ticket resumes
    assert not handshake(b, cctx, sess)[1]
    assert handshake(b, cctx, renewed)[1]
    st_ = _ticketkeys.stats()
    counts = st_["keys"]
    assert counts[old.name]["decrypted_current"] == 1 and counts[old.name]["renewed"] == 1
    assert counts[old.name]["decrypted_older"] == 1
    assert counts[new.name]["decrypted_current"] == 1
    assert counts[new.name]["issued"] >= 2 and st_["ring"] == [new.name]
    assert st_["unknown"] >= 1


@built
def test_ticket_under_a_newer_key_opens_without_renewal(pem, ring):
    """Seed mode: a node whose clock is ahead already issues under the next epoch's key."""
    from stud import _ticketkeys
    a = server_ctx(pem)
    tickets.attach(a)
    cctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    nxt, cur = ticketkeys.new_key(), ticketkeys.new_key()
    ring([nxt])
    sess, _ = handshake(a, cctx)
    ring([nxt, cur], 1)
    assert handshake(a, cctx, sess)[1]
    counts = _ticketkeys.stats()["keys"][nxt.name]
    assert counts["decrypted_newer"] == 1 and counts["renewed"] == 0


@built
def test_set_refuses_what_is_not_a_ring():
    from stud import _ticketkeys
    with pytest.raises(ValueError):
        _ticketkeys.set([], 0)
    with pytest.raises(ValueError):
        _ticketkeys.set([b"x" * 80], 1)
    with pytest.raises(ValueError, match="48 or 80"):
        _ticketkeys.set([b"x" * 79], 0)


def test_epoch_key_is_rfc5869_hkdf_sha256_as_documented():
    """Nodes of different stud versions must derive the same keys: the derivation, written
    out with hmac (RFC 5869): salt "stud ticket-key seed v1", info "ticket key" + lifetime
    and epoch as 8-byte big-endian integers, 80 bytes cut name|AES|HMAC."""
    import hashlib
    import hmac
    import struct

    seed, lifetime, epoch = bytes(range(32)), 3600, 493_000
    prk = hmac.new(b"stud ticket-key seed v1", seed, hashlib.sha256).digest()
    info = b"ticket key" + struct.pack(">Qq", lifetime, epoch)
    okm, block = b"", b""
    for i in range(1, 4):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    key = ticketkeys.epoch_key(seed, epoch, lifetime)
    assert key.wire() == okm[:16] + okm[16:48] + okm[48:80]


@built
@pytest.mark.parametrize("version, new_ticket", [(ssl.TLSVersion.TLSv1_3, True),
                                                 (ssl.TLSVersion.TLSv1_2, False)])
def test_a_tls13_resumption_gets_a_new_ticket(pem, ring, version, new_ticket):
    """Clients use a TLS 1.3 ticket once (wrk, browsers): without a new one after each
    resumption, every other connection was a full handshake. TLS 1.2 keeps its ticket while
    the key is current, as OpenSSL does with its own keys."""
    from stud import _ticketkeys
    a = server_ctx(pem)
    tickets.attach(a)
    cctx = client_ctx(maximum_version=version, minimum_version=version)
    key = ticketkeys.new_key()
    ring([key])
    sess, _ = handshake(a, cctx)
    issued = _ticketkeys.stats()["keys"][key.name]["issued"]
    _, reused = handshake(a, cctx, sess)
    assert reused
    assert (_ticketkeys.stats()["keys"][key.name]["issued"] > issued) is new_ticket
