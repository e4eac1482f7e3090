"""A second, independent implementation of the chatserver wire protocol.

Written from ``docs/protocol.rst`` alone, to cross-check ``chatserver.wire.channel``
and to produce the specification's test vector.  It deliberately shares no
code with the real implementation: it imports nothing from ``chatserver`` and
nothing from ``cryptography`` (which ``chatserver.wire.crypto`` wraps).  Hashing,
HMAC, AES-GCM and RSA-OAEP come from pycryptodome (``Crypto.*``), which has
its own C code; X25519 and HKDF are written out here from RFC 7748 and
RFC 5869.

Clarity beats speed here: nothing in this module is meant for production.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from pathlib import Path
from typing import Any, Callable

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import HMAC, SHA256
from Crypto.PublicKey import RSA

# --- constants (section "Records" and "Key schedule" of the spec) ---------

VERSION_1 = 0x0001
SUITE_1 = 0x0001  # X25519 + RSA-OAEP-SHA256 + HKDF-SHA256 + AES-256-GCM

T_CLIENT_HELLO = 0x01
T_SERVER_HELLO = 0x02
T_KEY_EXCHANGE = 0x03
T_FINISHED = 0x04
T_RESUME_HELLO = 0x05
T_SERVER_RESUME = 0x06
T_COOKIE = 0x07
T_ALERT = 0x15
T_CLOSE = 0x16
T_DATA = 0x17
T_KEY_UPDATE = 0x18

INFO_HANDSHAKE = b"chatserver/1 handshake"
INFO_KEY = b"chatserver/1 key"
INFO_IV = b"chatserver/1 iv"
INFO_UPDATE = b"chatserver/1 update"
INFO_RESUMED = b"chatserver/1 resumed"
INFO_RESUMPTION = b"chatserver/1 resumption"
INFO_BINDER = b"chatserver/1 binder"
COOKIE_LABEL = b"chatserver/1 cookie"

BINDER_LEN = 32
MAX_TICKET_LEN = 1024
TICKET_NONCE_LEN = 16

TAG_LEN = 16


class SpecError(Exception):
    """Input that the specification says must be rejected."""


# --- hashes, HMAC, HKDF (RFC 5869) ----------------------------------------


def sha256(data: bytes) -> bytes:
    return SHA256.new(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return HMAC.new(key, data, digestmod=SHA256).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    if not salt:
        salt = bytes(32)
    return hmac_sha256(salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    if length > 255 * 32:
        raise ValueError("HKDF-Expand output too long")
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac_sha256(prk, block + info + bytes((counter,)))
        okm += block
        counter += 1
    return okm[:length]


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


# --- X25519 (RFC 7748 section 5), plain integer arithmetic ----------------

_P = 2**255 - 19
_A24 = 121665


def _clamp(scalar: bytes) -> int:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def x25519(scalar: bytes, u_bytes: bytes) -> bytes:
    """The X25519 function of RFC 7748: clamped scalar times u-coordinate."""
    if len(scalar) != 32 or len(u_bytes) != 32:
        raise SpecError("X25519 inputs are 32 bytes")
    k = _clamp(scalar)
    u = bytearray(u_bytes)
    u[31] &= 127  # the top bit of a u-coordinate is ignored
    x1 = int.from_bytes(u, "little") % _P
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = bit
        a = (x2 + z2) % _P
        aa = a * a % _P
        b = (x2 - z2) % _P
        bb = b * b % _P
        e = (aa - bb) % _P
        c = (x3 + z3) % _P
        d = (x3 - z3) % _P
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, x3 = x3, x2
        z2, z3 = z3, z2
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def x25519_public(private: bytes) -> bytes:
    return x25519(private, (9).to_bytes(32, "little"))


def x25519_shared(private: bytes, peer_share: bytes) -> bytes:
    """The shared secret; an all-zero result (low-order share) is refused."""
    shared = x25519(private, peer_share)
    if shared == bytes(32):
        raise SpecError("low-order X25519 share")
    return shared


# --- RSA-OAEP-SHA256 -------------------------------------------------------


def oaep_encrypt(public_der: bytes, plaintext: bytes, seed: bytes) -> bytes:
    """RSA-OAEP, SHA-256 and MGF1-SHA-256, empty label, with a fixed seed."""
    if len(seed) != 32:
        raise ValueError("the OAEP seed is one SHA-256 output long")

    def randfunc(n: int) -> bytes:
        if n != len(seed):
            raise AssertionError(f"OAEP asked for {n} random bytes")
        return seed

    key = RSA.import_key(public_der)
    return PKCS1_OAEP.new(key, hashAlgo=SHA256, randfunc=randfunc).encrypt(plaintext)


def deterministic_encrypt(seed: bytes) -> Callable[[bytes, bytes], bytes]:
    """``encrypt(public_der, plaintext)`` that always uses ``seed``."""

    def encrypt(public_der: bytes, plaintext: bytes) -> bytes:
        return oaep_encrypt(public_der, plaintext, seed)

    return encrypt


def oaep_decrypt(private_pem: bytes, ciphertext: bytes) -> bytes:
    key = RSA.import_key(private_pem)
    try:
        return PKCS1_OAEP.new(key, hashAlgo=SHA256).decrypt(ciphertext)
    except ValueError:
        raise SpecError("OAEP decryption failed") from None


def public_der_from_pem(private_pem: bytes) -> bytes:
    """DER SubjectPublicKeyInfo of the key in a PEM private key."""
    return RSA.import_key(private_pem).public_key().export_key(format="DER")


def fingerprint(public_der: bytes) -> str:
    return "SHA256:" + base64.b64encode(sha256(public_der)).decode("ascii").rstrip("=")


# --- lines -----------------------------------------------------------------


def to_line(record: bytes) -> str:
    """The wire line of a record, without the terminating LF."""
    return base64.b64encode(record).decode("ascii")


def from_line(line: str | bytes) -> bytes:
    if isinstance(line, str):
        line = line.encode("ascii")
    if line.endswith(b"\n"):
        line = line[:-1]
    try:
        record = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SpecError("bad base64") from None
    if base64.b64encode(record) != line:
        raise SpecError("non-canonical base64")
    if not record:
        raise SpecError("empty record")
    return record


# --- handshake records -----------------------------------------------------


class _Cursor:
    def __init__(self, data: bytes, rtype: int) -> None:
        if not data or data[0] != rtype:
            raise SpecError(f"expected record type 0x{rtype:02x}")
        self.data = data
        self.pos = 1

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise SpecError("truncated record")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SpecError("trailing bytes")


def build_client_hello(
    versions: list[int], suites: list[int], client_random: bytes, client_share: bytes
) -> bytes:
    assert len(client_random) == 32 and len(client_share) == 32
    out = bytes((T_CLIENT_HELLO, len(versions)))
    out += b"".join(v.to_bytes(2, "big") for v in versions)
    out += bytes((len(suites),))
    out += b"".join(s.to_bytes(2, "big") for s in suites)
    return out + client_random + client_share


def parse_client_hello(record: bytes) -> dict[str, Any]:
    c = _Cursor(record, T_CLIENT_HELLO)
    versions = [c.u16() for _ in range(c.u8())]
    suites = [c.u16() for _ in range(c.u8())]
    result = {"versions": versions, "suites": suites, "random": c.take(32), "share": c.take(32)}
    c.done()
    if not versions or not suites:
        raise SpecError("empty list")
    return result


def build_server_hello(
    version: int, suite: int, server_random: bytes, server_share: bytes, spki: bytes
) -> bytes:
    assert len(server_random) == 32 and len(server_share) == 32
    return (
        struct.pack(">BHH", T_SERVER_HELLO, version, suite)
        + server_random
        + server_share
        + struct.pack(">H", len(spki))
        + spki
    )


def parse_server_hello(record: bytes) -> dict[str, Any]:
    c = _Cursor(record, T_SERVER_HELLO)
    result = {
        "version": c.u16(),
        "suite": c.u16(),
        "random": c.take(32),
        "share": c.take(32),
    }
    result["spki"] = c.take(c.u16())
    c.done()
    return result


def build_key_exchange(ciphertext: bytes) -> bytes:
    return bytes((T_KEY_EXCHANGE,)) + len(ciphertext).to_bytes(2, "big") + ciphertext


def parse_key_exchange(record: bytes) -> bytes:
    c = _Cursor(record, T_KEY_EXCHANGE)
    ciphertext = c.take(c.u16())
    c.done()
    return ciphertext


def _build_32(rtype: int, value: bytes) -> bytes:
    """A record of a type byte and 32 bytes (FINISHED, COOKIE)."""
    assert len(value) == 32
    return bytes((rtype,)) + value


def _parse_32(record: bytes, rtype: int) -> bytes:
    c = _Cursor(record, rtype)
    value = c.take(32)
    c.done()
    return value


def _finished(v: dict[str, Any], side: str, key: bytes, transcript_hash: bytes) -> bytes:
    """``side``'s FINISHED over ``transcript_hash``, its MAC, record and
    line noted in ``v`` (in the vector's order)."""
    mac = hmac_sha256(key, transcript_hash)
    record = build_finished(mac)
    v[side + "_finished_mac"] = mac
    v[side + "_finished"] = record
    v[side + "_finished_line"] = to_line(record)
    return record


def build_finished(mac: bytes) -> bytes:
    return _build_32(T_FINISHED, mac)


def parse_finished(record: bytes) -> bytes:
    return _parse_32(record, T_FINISHED)


def _build_offer(versions: list[int], suites: list[int]) -> bytes:
    if not versions or not suites:
        raise SpecError("empty list")
    out = bytes((len(versions),)) + b"".join(v.to_bytes(2, "big") for v in versions)
    return out + bytes((len(suites),)) + b"".join(s.to_bytes(2, "big") for s in suites)


def build_resume_hello(
    versions: list[int],
    suites: list[int],
    client_random: bytes,
    client_share: bytes,
    ticket: bytes,
    psk: bytes,
) -> bytes:
    """RESUME_HELLO with its binder computed from ``psk``."""
    assert len(client_random) == 32 and len(client_share) == 32
    if not 1 <= len(ticket) <= MAX_TICKET_LEN:
        raise SpecError("ticket length out of range")
    partial = (
        bytes((T_RESUME_HELLO,))
        + _build_offer(versions, suites)
        + client_random
        + client_share
        + len(ticket).to_bytes(2, "big")
        + ticket
    )
    return partial + binder(psk, partial)


def parse_resume_hello(record: bytes) -> dict[str, Any]:
    c = _Cursor(record, T_RESUME_HELLO)
    versions = [c.u16() for _ in range(c.u8())]
    suites = [c.u16() for _ in range(c.u8())]
    result: dict[str, Any] = {
        "versions": versions,
        "suites": suites,
        "random": c.take(32),
        "share": c.take(32),
    }
    ticket_len = c.u16()
    if not 1 <= ticket_len <= MAX_TICKET_LEN:
        raise SpecError("ticket length out of range")
    result["ticket"] = c.take(ticket_len)
    result["binder"] = c.take(BINDER_LEN)
    c.done()
    if not versions or not suites:
        raise SpecError("empty list")
    return result


def build_server_resume(version: int, suite: int, server_random: bytes, server_share: bytes) -> bytes:
    assert len(server_random) == 32 and len(server_share) == 32
    return struct.pack(">BHH", T_SERVER_RESUME, version, suite) + server_random + server_share


def parse_server_resume(record: bytes) -> dict[str, Any]:
    c = _Cursor(record, T_SERVER_RESUME)
    result = {"version": c.u16(), "suite": c.u16(), "random": c.take(32), "share": c.take(32)}
    c.done()
    return result


def build_cookie(cookie: bytes) -> bytes:
    return _build_32(T_COOKIE, cookie)


def parse_cookie(record: bytes) -> bytes:
    return _parse_32(record, T_COOKIE)


def build_alert(code: int, text: str) -> bytes:
    return bytes((T_ALERT, code)) + text.encode("utf-8")


# --- key schedule ----------------------------------------------------------


def _split_okm(okm: bytes) -> dict[str, bytes]:
    return {
        "client_secret": okm[0:32],
        "server_secret": okm[32:64],
        "client_finished_key": okm[64:96],
        "server_finished_key": okm[96:128],
        "resumption_secret": okm[128:160],
    }


def handshake_secrets(shared: bytes, premaster: bytes, transcript_hash: bytes) -> dict[str, bytes]:
    """The five secrets of a full handshake (okm of 160 bytes)."""
    return _split_okm(hkdf(shared + premaster, transcript_hash, INFO_HANDSHAKE, 160))


def resumed_secrets(shared: bytes, psk: bytes, transcript_hash: bytes) -> dict[str, bytes]:
    """The five secrets of a resumed handshake; ``transcript_hash`` is its th1."""
    return _split_okm(hkdf(shared + psk, transcript_hash, INFO_RESUMED, 160))


def ticket_psk(resumption_secret: bytes, nonce: bytes) -> bytes:
    """The PSK of a ticket, from the issuing connection's resumption_secret
    and the ticket's 16-byte nonce (the raw bytes, not their base64)."""
    if len(nonce) != TICKET_NONCE_LEN:
        raise SpecError("a ticket nonce is 16 bytes")
    return hkdf_expand(resumption_secret, INFO_RESUMPTION + nonce, 32)


def binder_key(psk: bytes) -> bytes:
    return hkdf_expand(psk, INFO_BINDER, 32)


def binder(psk: bytes, resume_hello_without_binder: bytes) -> bytes:
    return hmac_sha256(binder_key(psk), sha256(resume_hello_without_binder))


def binder_valid(psk: bytes, resume_hello: bytes) -> bool:
    expected = binder(psk, resume_hello[:-BINDER_LEN])
    return (
        HMAC.new(expected, digestmod=SHA256).digest()
        == HMAC.new(resume_hello[-BINDER_LEN:], digestmod=SHA256).digest()
    )


def parse_ticket_notice(event: dict[str, Any]) -> dict[str, Any]:
    """The ``ticket`` notice (section Resumption), decoded; SpecError if malformed."""
    if event.get("type") != "ticket":
        raise SpecError("not a ticket notice")
    try:
        ticket = base64.b64decode(event["ticket"], validate=True)
        nonce_ = base64.b64decode(event["nonce"], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise SpecError("bad ticket notice") from None
    lifetime = event.get("lifetime")
    if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
        raise SpecError("bad ticket lifetime")
    if not 1 <= len(ticket) <= MAX_TICKET_LEN or len(nonce_) != TICKET_NONCE_LEN:
        raise SpecError("bad ticket or nonce length")
    return {"ticket": ticket, "nonce": nonce_, "lifetime": lifetime}


def cookie_mac(secret: bytes, address: str, hello: bytes) -> bytes:
    """The cookie of section Handshake admission."""
    addr = address.encode("utf-8")
    if len(addr) > 255:
        raise SpecError("address too long")
    return hmac_sha256(secret, COOKIE_LABEL + bytes((len(addr),)) + addr + sha256(hello))


def traffic_key(secret: bytes) -> bytes:
    return hkdf_expand(secret, INFO_KEY, 32)


def traffic_iv(secret: bytes) -> bytes:
    return hkdf_expand(secret, INFO_IV, 12)


def updated_secret(secret: bytes) -> bytes:
    return hkdf_expand(secret, INFO_UPDATE, 32)


def nonce(iv: bytes, seq: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")


def seal(key: bytes, iv: bytes, seq: int, rtype: int, plaintext: bytes) -> bytes:
    header = bytes((rtype,))
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce(iv, seq), mac_len=TAG_LEN)
    cipher.update(header)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return header + ciphertext + tag


def open_record(key: bytes, iv: bytes, seq: int, record: bytes) -> tuple[int, bytes]:
    if len(record) < 1 + TAG_LEN or record[0] not in (T_CLOSE, T_DATA, T_KEY_UPDATE):
        raise SpecError("not a sealed record")
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce(iv, seq), mac_len=TAG_LEN)
    cipher.update(record[:1])
    try:
        plaintext = cipher.decrypt_and_verify(record[1:-TAG_LEN], record[-TAG_LEN:])
    except ValueError:
        raise SpecError("authentication failed") from None
    return record[0], plaintext


def events_plaintext(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_events(plaintext: bytes) -> list[dict[str, Any]]:
    events = json.loads(plaintext.decode("utf-8"))
    if not isinstance(events, list) or not events:
        raise SpecError("DATA is not a non-empty array")
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise SpecError("event without a string type")
    return events


class Direction:
    """Record protection for one direction: a secret, its key/iv, a counter.

    The sender calls :meth:`seal`; ``update_after`` (if given) makes it send
    a KEY_UPDATE before any record once that many records used the key.
    The receiver calls :meth:`open`, which switches keys after a KEY_UPDATE.
    """

    def __init__(self, secret: bytes, update_after: int | None = None) -> None:
        self.update_after = update_after
        self.generation = 0
        self._install(secret)

    def _install(self, secret: bytes) -> None:
        self.secret = secret
        self.key = traffic_key(secret)
        self.iv = traffic_iv(secret)
        self.seq = 0

    def _seal_one(self, rtype: int, plaintext: bytes) -> bytes:
        record = seal(self.key, self.iv, self.seq, rtype, plaintext)
        self.seq += 1
        return record

    def key_update(self) -> bytes:
        """Seal a KEY_UPDATE under the current key, then switch keys."""
        record = self._seal_one(T_KEY_UPDATE, b"")
        self._install(updated_secret(self.secret))
        self.generation += 1
        return record

    def seal(self, rtype: int, plaintext: bytes) -> list[bytes]:
        records = []
        if self.update_after is not None and self.seq >= self.update_after:
            records.append(self.key_update())
        records.append(self._seal_one(rtype, plaintext))
        return records

    def seal_events(self, events: list[dict[str, Any]]) -> list[bytes]:
        return self.seal(T_DATA, events_plaintext(events))

    def open(self, record: bytes) -> tuple[int, bytes]:
        rtype, plaintext = open_record(self.key, self.iv, self.seq, record)
        self.seq += 1
        if rtype == T_KEY_UPDATE:
            if plaintext:
                raise SpecError("KEY_UPDATE with a body")
            self._install(updated_secret(self.secret))
            self.generation += 1
        return rtype, plaintext


# --- the test vector -------------------------------------------------------

VECTOR_RSA_PEM = Path(__file__).with_name("vector_rsa.pem")

#: The fixed inputs of the vector (the RSA key is ``vector_rsa.pem``).
FIXED_INPUTS = {
    "client_x25519_private": bytes(range(0x00, 0x20)).hex(),
    "server_x25519_private": bytes(range(0x20, 0x40)).hex(),
    "client_random": bytes(range(0x40, 0x60)).hex(),
    "server_random": bytes(range(0x60, 0x80)).hex(),
    "premaster": bytes(range(0x80, 0xA0)).hex(),
    "oaep_seed": bytes(range(0xA0, 0xC0)).hex(),
}

LOGIN_EVENTS = [{"type": "login", "user": "alice", "password": "correct horse"}]
WELCOME_EVENTS = [{"type": "welcome", "user": "alice", "role": "user"}]
SAY_EVENTS = [{"type": "say", "room": "lobby", "body": "hi"}]
#: The server's goodbye: a CLOSE, under its key after a KEY_UPDATE.
CLOSE_PLAINTEXT = b'{"code":"logout","message":"logged out"}'


def make_vector(inputs: dict[str, str] | None = None, rsa_pem: bytes | None = None) -> dict[str, str]:
    """Every value of the test vector, in document order: hex, or the
    base64 line (without LF) for names ending in ``_line``."""
    inputs = dict(FIXED_INPUTS if inputs is None else inputs)
    if rsa_pem is None:
        rsa_pem = VECTOR_RSA_PEM.read_bytes()
    x = {k: bytes.fromhex(v) for k, v in inputs.items()}
    v: dict[str, bytes | str] = dict(x)

    spki = public_der_from_pem(rsa_pem)
    v["server_spki"] = spki
    v["server_spki_sha256"] = sha256(spki)
    v["client_x25519_public"] = client_share = x25519_public(x["client_x25519_private"])
    v["server_x25519_public"] = server_share = x25519_public(x["server_x25519_private"])

    ch = build_client_hello([VERSION_1], [SUITE_1], x["client_random"], client_share)
    sh = build_server_hello(VERSION_1, SUITE_1, x["server_random"], server_share, spki)
    kex = build_key_exchange(oaep_encrypt(spki, x["premaster"], x["oaep_seed"]))
    for name, record in (("client_hello", ch), ("server_hello", sh), ("key_exchange", kex)):
        v[name] = record
        v[name + "_line"] = to_line(record)

    shared = x25519_shared(x["client_x25519_private"], server_share)
    assert shared == x25519_shared(x["server_x25519_private"], client_share)
    v["shared_secret"] = shared
    th1 = sha256(ch + sh + kex)
    v["transcript_hash_kex"] = th1
    secrets = handshake_secrets(shared, x["premaster"], th1)
    v.update(secrets)

    cf = _finished(v, "client", secrets["client_finished_key"], th1)
    th2 = sha256(ch + sh + kex + cf)
    v["transcript_hash_client_finished"] = th2
    _finished(v, "server", secrets["server_finished_key"], th2)

    for side in ("client", "server"):
        v[side + "_key"] = traffic_key(secrets[side + "_secret"])
        v[side + "_iv"] = traffic_iv(secrets[side + "_secret"])

    c2s = Direction(secrets["client_secret"])
    s2c = Direction(secrets["server_secret"])

    def frame(name: str, direction: Direction, rtype: int, plaintext: bytes) -> None:
        if rtype != T_KEY_UPDATE:
            v[name + "_plaintext"] = plaintext
        v[name + "_nonce"] = nonce(direction.iv, direction.seq)
        if rtype == T_KEY_UPDATE:
            record = direction.key_update()
        else:
            (record,) = direction.seal(rtype, plaintext)
        v[name] = record
        v[name + "_line"] = to_line(record)

    frame("client_data_login", c2s, T_DATA, events_plaintext(LOGIN_EVENTS))
    frame("server_data_welcome", s2c, T_DATA, events_plaintext(WELCOME_EVENTS))
    frame("client_key_update", c2s, T_KEY_UPDATE, b"")
    v["client_secret_next"] = c2s.secret
    v["client_key_next"] = c2s.key
    v["client_iv_next"] = c2s.iv
    frame("client_data_say", c2s, T_DATA, events_plaintext(SAY_EVENTS))
    frame("server_key_update", s2c, T_KEY_UPDATE, b"")
    v["server_secret_next"] = s2c.secret
    v["server_key_next"] = s2c.key
    v["server_iv_next"] = s2c.iv
    frame("server_close", s2c, T_CLOSE, CLOSE_PLAINTEXT)

    return {name: value if isinstance(value, str) else value.hex() for name, value in v.items()}


#: The fixed inputs of the resumption vector, a second connection that
#: resumes with a ticket received on the first (``first_resumption_secret``
#: is the ``resumption_secret`` of :func:`make_vector`, filled in there).
RESUMPTION_INPUTS = {
    "ticket_nonce": bytes(range(0xF0, 0x100)).hex(),
    "ticket": bytes(range(0x88, 0xF0)).hex(),
    "client_x25519_private": bytes(range(0x08, 0x28)).hex(),
    "server_x25519_private": bytes(range(0x28, 0x48)).hex(),
    "client_random": bytes(range(0x48, 0x68)).hex(),
    "server_random": bytes(range(0x68, 0x88)).hex(),
    "cookie_secret": bytes(range(0xC0, 0xE0)).hex(),
}
TICKET_LIFETIME = 604800
COOKIE_ADDRESS = "127.0.0.1"
TOKEN_LOGIN_EVENTS = [{"type": "login", "user": "alice", "token": "tok"}]


def ticket_notice(ticket: bytes, nonce_: bytes, lifetime: int) -> dict[str, Any]:
    return {
        "type": "ticket",
        "ticket": base64.b64encode(ticket).decode("ascii"),
        "nonce": base64.b64encode(nonce_).decode("ascii"),
        "lifetime": lifetime,
    }


def make_resumption_vector(
    inputs: dict[str, str] | None = None, first: dict[str, str] | None = None
) -> dict[str, str]:
    """Every value of the resumption vector, in document order.  ``first``
    is the first vector (its ``resumption_secret`` and ``client_hello``
    are used); by default :func:`make_vector`'s."""
    if inputs is None:
        inputs = RESUMPTION_INPUTS
    if first is None:
        first = make_vector()
    x = {k: bytes.fromhex(val) for k, val in inputs.items()}
    v: dict[str, bytes | str] = {"first_resumption_secret": bytes.fromhex(first["resumption_secret"])}
    for name in ("ticket_nonce", "ticket"):
        v[name] = x[name]
    notice = ticket_notice(x["ticket"], x["ticket_nonce"], TICKET_LIFETIME)
    v["ticket_notice_plaintext"] = events_plaintext([notice])
    psk = ticket_psk(v["first_resumption_secret"], x["ticket_nonce"])  # type: ignore[arg-type]
    v["psk"] = psk
    v["binder_key"] = binder_key(psk)
    for name in ("client_x25519_private", "server_x25519_private", "client_random", "server_random"):
        v[name] = x[name]
    v["client_x25519_public"] = client_share = x25519_public(x["client_x25519_private"])
    v["server_x25519_public"] = server_share = x25519_public(x["server_x25519_private"])

    rh = build_resume_hello([VERSION_1], [SUITE_1], x["client_random"], client_share, x["ticket"], psk)
    assert binder_valid(psk, rh)
    v["binder"] = rh[-BINDER_LEN:]
    v["resume_hello"] = rh
    v["resume_hello_line"] = to_line(rh)
    sr = build_server_resume(VERSION_1, SUITE_1, x["server_random"], server_share)
    v["server_resume"] = sr
    v["server_resume_line"] = to_line(sr)

    shared = x25519_shared(x["client_x25519_private"], server_share)
    assert shared == x25519_shared(x["server_x25519_private"], client_share)
    v["shared_secret"] = shared
    th1 = sha256(rh + sr)
    v["transcript_hash_server_resume"] = th1
    secrets = resumed_secrets(shared, psk, th1)
    v.update(secrets)

    sf = _finished(v, "server", secrets["server_finished_key"], th1)
    th2 = sha256(rh + sr + sf)
    v["transcript_hash_server_finished"] = th2
    _finished(v, "client", secrets["client_finished_key"], th2)

    for side in ("client", "server"):
        v[side + "_key"] = traffic_key(secrets[side + "_secret"])
        v[side + "_iv"] = traffic_iv(secrets[side + "_secret"])
    for name, secret, events in (
        ("client_data_login", secrets["client_secret"], TOKEN_LOGIN_EVENTS),
        ("server_data_welcome", secrets["server_secret"], WELCOME_EVENTS),
    ):
        direction = Direction(secret)
        v[name + "_plaintext"] = events_plaintext(events)
        v[name + "_nonce"] = nonce(direction.iv, direction.seq)
        (record,) = direction.seal_events(events)
        v[name] = record
        v[name + "_line"] = to_line(record)

    # Handshake admission: the cookie for the first vector's CLIENT_HELLO.
    v["cookie_secret"] = x["cookie_secret"]
    v["cookie_address"] = COOKIE_ADDRESS.encode("utf-8")
    cookie = cookie_mac(x["cookie_secret"], COOKIE_ADDRESS, bytes.fromhex(first["client_hello"]))
    v["cookie_mac"] = cookie
    v["cookie"] = build_cookie(cookie)
    v["cookie_line"] = to_line(build_cookie(cookie))
    return {name: value if isinstance(value, str) else value.hex() for name, value in v.items()}


def vector_block(vector: dict[str, str]) -> str:
    """The vector as the indented ``name: value`` lines of the spec's block."""
    return "".join(f"   {name}: {value}\n" for name, value in vector.items())


if __name__ == "__main__":  # print the literal blocks for docs/protocol.rst
    import sys

    first = make_vector()
    if sys.argv[1:] == ["resumption"]:
        print(vector_block(make_resumption_vector(first=first)), end="")
    else:
        print(vector_block(first), end="")
