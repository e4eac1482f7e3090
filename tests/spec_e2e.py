"""A reference implementation of Olm (one pre-key message) and Megolm (one
group message), written from the public specifications.

The sources are libolm's ``docs/olm.md`` ("Olm: A Cryptographic Ratchet")
and ``docs/megolm.md`` ("Megolm group ratchet"); section names in the
docstrings below refer to those two documents.  Where the documents leave
something open or disagree with what deployed implementations put on the
wire, the choice made here is stated in the docstring and is the one that
vodozemac (the Rust implementation the chat client uses) is observed to
make; ``tests/test_e2e_vector.py`` cross-checks it against vodozemac.

Like ``tests/spec_impl.py`` this module shares no code with the real
implementation: it imports nothing from ``chatserver``, ``chatclient``,
``cryptography`` or ``vodozemac``.  AES, HMAC, SHA-256 and Ed25519 come from
pycryptodome (``Crypto.*``); X25519 and HKDF come from ``tests.spec_impl``
(written out there from RFC 7748 and RFC 5869).

Only what one vector needs is here: the first pre-key message of a new Olm
session, from Alice to Bob (no ratchet steps after it), and Megolm messages
of one session.  Clarity beats speed; nothing here is meant for production
(no constant-time comparisons, no zeroising).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from Crypto.Cipher import AES
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from tests.spec_impl import hkdf, hmac_sha256, sha256, x25519, x25519_public


class SpecError(Exception):
    """Input that the specifications say must be rejected (bad encoding,
    failed MAC or signature, unsupported version)."""


# --- base64 ------------------------------------------------------------------


def b64encode(data: bytes) -> str:
    """Unpadded standard base64 (RFC 4648 section 4 alphabet, no ``=``), the
    form vodozemac (and libolm) use for keys, messages and session keys."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    """Strict inverse of :func:`b64encode`: no padding, no whitespace, and the
    unused low bits of the last character must be zero (canonical form)."""
    if "=" in text:
        raise SpecError("padded base64")
    if len(text) % 4 == 1:
        raise SpecError("impossible base64 length")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SpecError("bad base64") from None
    if b64encode(data) != text:
        raise SpecError("non-canonical base64")
    return data


# --- the key-value payload encoding ------------------------------------------
#
# olm.md, "Normal Messages": the payload is key-value pairs; a key is a
# variable-length integer tag whose 3 lowest bits give the value's type
# (0: integer, 2: string); integers are little-endian base-128 with the high
# bit set on every byte but the last.  (This is the Protocol Buffers wire
# format restricted to varints and length-delimited strings; megolm.md,
# "Message format", says so.)

WIRE_INT = 0
WIRE_STRING = 2


def encode_varint(n: int) -> bytes:
    """olm.md "Normal Messages": seven bits per byte, least significant
    first, high bit set on all bytes but the last."""
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it."""
    n = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise SpecError("truncated varint")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos
        if shift > 63:
            raise SpecError("varint too long")


def int_field(tag: int, value: int) -> bytes:
    """One integer key-value pair (``tag`` already includes the type bits)."""
    assert tag & 7 == WIRE_INT
    return encode_varint(tag) + encode_varint(value)


def string_field(tag: int, value: bytes) -> bytes:
    """One string key-value pair: tag, length, the bytes."""
    assert tag & 7 == WIRE_STRING
    return encode_varint(tag) + encode_varint(len(value)) + value


def parse_fields(payload: bytes) -> dict[int, int | bytes]:
    """The key-value pairs of a payload, by tag.

    Pairs with an unknown tag are skipped (the payload format is extensible,
    like Protocol Buffers); if a tag repeats, the last value wins (again as in
    Protocol Buffers).  Types other than integer and string are refused."""
    fields: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(payload):
        tag, pos = decode_varint(payload, pos)
        wire_type = tag & 7
        if wire_type == WIRE_INT:
            value, pos = decode_varint(payload, pos)
            fields[tag] = value
        elif wire_type == WIRE_STRING:
            length, pos = decode_varint(payload, pos)
            if pos + length > len(payload):
                raise SpecError("truncated string value")
            fields[tag] = payload[pos : pos + length]
            pos += length
        else:
            raise SpecError(f"unsupported value type {wire_type} (tag 0x{tag:02x})")
    return fields


def _need(fields: dict[int, int | bytes], tag: int, kind: type, length: int | None = None) -> Any:
    value = fields.get(tag)
    if not isinstance(value, kind):
        raise SpecError(f"missing field 0x{tag:02x}")
    if length is not None and len(value) != length:  # type: ignore[arg-type]
        raise SpecError(f"field 0x{tag:02x} is not {length} bytes")
    return value


# --- AES-256-CBC with PKCS#7 padding -----------------------------------------
#
# olm.md "Olm Authenticated Encryption / Version 1" and megolm.md "Message
# encryption": AES-256 in CBC mode with PKCS#7 padding.


def pkcs7_pad(data: bytes, block: int = 16) -> bytes:
    """RFC 2315 section 10.3: 1 to ``block`` bytes, each the pad length."""
    n = block - len(data) % block
    return data + bytes((n,)) * n


def pkcs7_unpad(data: bytes, block: int = 16) -> bytes:
    if not data or len(data) % block:
        raise SpecError("ciphertext is not a whole number of blocks")
    n = data[-1]
    if not 1 <= n <= block or data[-n:] != bytes((n,)) * n:
        raise SpecError("bad PKCS#7 padding")
    return data[:-n]


def aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    assert len(key) == 32 and len(iv) == 16
    return AES.new(key, AES.MODE_CBC, iv=iv).encrypt(pkcs7_pad(plaintext))


def aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    assert len(key) == 32 and len(iv) == 16
    if not ciphertext or len(ciphertext) % 16:
        raise SpecError("ciphertext is not a whole number of blocks")
    return pkcs7_unpad(AES.new(key, AES.MODE_CBC, iv=iv).decrypt(ciphertext))


def expand_cipher_keys(secret: bytes, info: bytes) -> tuple[bytes, bytes, bytes]:
    """``AES_KEY || HMAC_KEY || AES_IV = HKDF(0, secret, info, 80)``.

    olm.md "Version 1" (info ``OLM_KEYS``, secret the message key) and
    megolm.md "Message encryption" (info ``MEGOLM_KEYS``, secret the whole
    128-byte ratchet).  "Salt 0" / "the default salt": RFC 5869's default is
    HashLen zero bytes; vodozemac passes a single zero byte, which is the
    same HMAC key (HMAC pads keys with zeros to the block size)."""
    okm = hkdf(secret, bytes(32), info, 80)
    return okm[0:32], okm[32:64], okm[64:80]


MAC_LEN = 8  # HMAC-SHA-256 truncated to 64 bits (both documents)


def truncated_mac(hmac_key: bytes, data: bytes) -> bytes:
    """The first 8 bytes of HMAC-SHA-256 over ``data``."""
    return hmac_sha256(hmac_key, data)[:MAC_LEN]


# --- Ed25519 (RFC 8032, via pycryptodome) ------------------------------------


def ed25519_public(seed: bytes) -> bytes:
    """The 32-byte public key of the RFC 8032 private key (seed) ``seed``."""
    key = ECC.construct(curve="Ed25519", seed=seed)
    return key.public_key().export_key(format="raw")


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """Pure Ed25519 (RFC 8032 section 5.1.6), deterministic, 64 bytes."""
    key = ECC.construct(curve="Ed25519", seed=seed)
    return eddsa.new(key, "rfc8032").sign(message)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`SpecError` unless ``signature`` is valid."""
    try:
        key = eddsa.import_public_key(public)
        eddsa.new(key, "rfc8032").verify(message, signature)
    except ValueError:
        raise SpecError("bad Ed25519 signature") from None


# --- Olm ---------------------------------------------------------------------

OLM_VERSION = 3  # olm.md "Normal Messages" / "Pre-Key Messages": b"\x03"
OLM_ROOT_INFO = b"OLM_ROOT"
OLM_KEYS_INFO = b"OLM_KEYS"
OLM_CHAIN_MESSAGE_SEED = b"\x01"
OLM_CHAIN_ADVANCE_SEED = b"\x02"

# olm.md "Normal Messages", the tag table
TAG_RATCHET_KEY = 0x0A  # field 1, string
TAG_CHAIN_INDEX = 0x10  # field 2, integer
TAG_CIPHERTEXT = 0x22  # field 4, string
# olm.md "Pre-Key Messages", the tag table
TAG_ONE_TIME_KEY = 0x0A  # field 1, string
TAG_BASE_KEY = 0x12  # field 2, string
TAG_IDENTITY_KEY = 0x1A  # field 3, string
TAG_MESSAGE = 0x22  # field 4, string


def olm_3dh_alice(
    alice_identity_private: bytes,
    alice_base_private: bytes,
    bob_identity_public: bytes,
    bob_one_time_public: bytes,
) -> tuple[bytes, bytes, bytes]:
    """Alice's three agreements of olm.md "Initial setup", in the order of
    ``S = ECDH(I_A, E_B) || ECDH(E_A, I_B) || ECDH(E_A, E_B)``.

    ``E_A`` is Alice's single-use *base* key (called "one-time key for
    Alice" in "Initial setup", "single-use key" in "Creating an outbound
    session"), ``E_B`` Bob's published one-time key."""
    return (
        x25519(alice_identity_private, bob_one_time_public),
        x25519(alice_base_private, bob_identity_public),
        x25519(alice_base_private, bob_one_time_public),
    )


def olm_3dh_bob(
    bob_identity_private: bytes,
    bob_one_time_private: bytes,
    alice_identity_public: bytes,
    alice_base_public: bytes,
) -> tuple[bytes, bytes, bytes]:
    """Bob's side of the same three agreements (olm.md "Notation": each party
    uses its private key and the other's public key), in the same order."""
    return (
        x25519(bob_one_time_private, alice_identity_public),
        x25519(bob_identity_private, alice_base_public),
        x25519(bob_one_time_private, alice_base_public),
    )


def olm_shared_secret(agreements: tuple[bytes, bytes, bytes]) -> bytes:
    """The 96-byte ``S``; an all-zero agreement (a low-order public key) is
    refused, as vodozemac does."""
    if any(a == bytes(32) for a in agreements):
        raise SpecError("low-order Curve25519 key")
    return b"".join(agreements)


def olm_root_and_chain(shared_secret: bytes) -> tuple[bytes, bytes]:
    """``R_0 || C_{0,0} = HKDF(0, S, "OLM_ROOT", 64)`` (olm.md "Initial setup")."""
    okm = hkdf(shared_secret, bytes(32), OLM_ROOT_INFO, 64)
    return okm[:32], okm[32:]


def olm_advance_chain(chain_key: bytes) -> bytes:
    """``C_{i,j} = HMAC(C_{i,j-1}, "\\x02")`` (olm.md "Advancing the chain key")."""
    return hmac_sha256(chain_key, OLM_CHAIN_ADVANCE_SEED)


def olm_message_key(chain_key: bytes) -> bytes:
    """``M_{i,j} = HMAC(C_{i,j}, "\\x01")`` (olm.md "Creating a message key")."""
    return hmac_sha256(chain_key, OLM_CHAIN_MESSAGE_SEED)


def olm_cipher_keys(message_key: bytes) -> tuple[bytes, bytes, bytes]:
    """``AES_KEY || HMAC_KEY || AES_IV = HKDF(0, M, "OLM_KEYS", 80)``
    (olm.md "Olm Authenticated Encryption / Version 1")."""
    return expand_cipher_keys(message_key, OLM_KEYS_INFO)


def olm_message_body(ratchet_key: bytes, chain_index: int, ciphertext: bytes) -> bytes:
    """Version byte and payload of a normal message: what the MAC covers
    (olm.md "Normal Messages").  The pairs are written in tag order, which is
    how libolm and vodozemac write them."""
    return (
        bytes((OLM_VERSION,))
        + string_field(TAG_RATCHET_KEY, ratchet_key)
        + int_field(TAG_CHAIN_INDEX, chain_index)
        + string_field(TAG_CIPHERTEXT, ciphertext)
    )


def olm_normal_message(hmac_key: bytes, ratchet_key: bytes, chain_index: int, ciphertext: bytes) -> bytes:
    """A complete normal message: body, then the 8-byte truncated
    HMAC-SHA-256 of the body under ``HMAC_KEY`` (olm.md "Normal Messages":
    "The MAC protects all of the bytes preceding the MAC"; "Version 1":
    "the entire message (including the Version Byte and all Payload Bytes)")."""
    body = olm_message_body(ratchet_key, chain_index, ciphertext)
    return body + truncated_mac(hmac_key, body)


def parse_olm_normal_message(message: bytes) -> dict[str, Any]:
    """Split a version-3 normal message into its parts (MAC not checked)."""
    if len(message) < 1 + MAC_LEN or message[0] != OLM_VERSION:
        raise SpecError("not a version 3 Olm message")
    body, mac = message[:-MAC_LEN], message[-MAC_LEN:]
    fields = parse_fields(body[1:])
    return {
        "body": body,
        "mac": mac,
        "ratchet_key": _need(fields, TAG_RATCHET_KEY, bytes, 32),
        "chain_index": _need(fields, TAG_CHAIN_INDEX, int),
        "ciphertext": _need(fields, TAG_CIPHERTEXT, bytes),
    }


def olm_prekey_message(one_time_key: bytes, base_key: bytes, identity_key: bytes, message: bytes) -> bytes:
    """A pre-key message (olm.md "Pre-Key Messages"): version byte, then the
    one-time key ``E_B``, base key ``E_A``, identity key ``I_A`` and the
    embedded normal message (with its own version and MAC), in tag order.
    There is no MAC of its own."""
    return (
        bytes((OLM_VERSION,))
        + string_field(TAG_ONE_TIME_KEY, one_time_key)
        + string_field(TAG_BASE_KEY, base_key)
        + string_field(TAG_IDENTITY_KEY, identity_key)
        + string_field(TAG_MESSAGE, message)
    )


def parse_olm_prekey_message(data: bytes) -> dict[str, bytes]:
    if not data or data[0] != OLM_VERSION:
        raise SpecError("not a version 3 Olm pre-key message")
    fields = parse_fields(data[1:])
    return {
        "one_time_key": _need(fields, TAG_ONE_TIME_KEY, bytes, 32),
        "base_key": _need(fields, TAG_BASE_KEY, bytes, 32),
        "identity_key": _need(fields, TAG_IDENTITY_KEY, bytes, 32),
        "message": _need(fields, TAG_MESSAGE, bytes),
    }


def olm_session_id(identity_key: bytes, base_key: bytes, one_time_key: bytes) -> str:
    """The session identifier libolm and vodozemac give a session: unpadded
    base64 of ``SHA-256(I_A || E_A || E_B)``.  (Not in olm.md; it is how
    implementations match a pre-key message to an existing session.)"""
    return b64encode(sha256(identity_key + base_key + one_time_key))


def olm_encrypt_prekey(
    alice_identity_private: bytes,
    alice_base_private: bytes,
    alice_ratchet_private: bytes,
    bob_identity_public: bytes,
    bob_one_time_public: bytes,
    plaintext: bytes,
    chain_index: int = 0,
) -> dict[str, Any]:
    """Alice's pre-key message ``chain_index`` of a new session, and every
    intermediate value, by name.

    olm.md "Creating an outbound session" and "Sending the first pre-key
    messages": ``S`` and ``R_0 || C_{0,0}`` from the 3DH; the chain key is
    advanced ``chain_index`` times; ``M_{0,j}`` from ``C_{0,j}``; the
    ciphertext ``X_{0,j}`` under the keys of "Version 1"; the normal message
    carrying ``T_0`` (Alice's ratchet key, a third fresh key pair), ``j`` and
    ``X_{0,j}``; then the pre-key message around it."""
    v: dict[str, Any] = {}
    v["alice_identity_public"] = alice_identity = x25519_public(alice_identity_private)
    v["alice_base_public"] = alice_base = x25519_public(alice_base_private)
    v["alice_ratchet_public"] = ratchet_key = x25519_public(alice_ratchet_private)
    agreements = olm_3dh_alice(
        alice_identity_private, alice_base_private, bob_identity_public, bob_one_time_public
    )
    v["ecdh_identity_one_time"], v["ecdh_base_identity"], v["ecdh_base_one_time"] = agreements
    v["shared_secret"] = shared = olm_shared_secret(agreements)
    root_key, chain_key = olm_root_and_chain(shared)
    v["root_key"] = root_key
    v["chain_key"] = chain_key
    for _ in range(chain_index):
        chain_key = olm_advance_chain(chain_key)
    v["chain_index"] = chain_index
    v["message_key"] = message_key = olm_message_key(chain_key)
    v["next_chain_key"] = olm_advance_chain(chain_key)  # Alice keeps C_{0,j+1}
    aes_key, hmac_key, iv = olm_cipher_keys(message_key)
    v["aes_key"], v["hmac_key"], v["iv"] = aes_key, hmac_key, iv
    v["plaintext"] = plaintext
    v["ciphertext"] = ciphertext = aes_cbc_encrypt(aes_key, iv, plaintext)
    v["message_body"] = body = olm_message_body(ratchet_key, chain_index, ciphertext)
    v["mac"] = mac = truncated_mac(hmac_key, body)
    v["message"] = message = body + mac
    v["prekey_message"] = prekey = olm_prekey_message(
        bob_one_time_public, alice_base, alice_identity, message
    )
    v["prekey_message_base64"] = b64encode(prekey)
    v["session_id"] = olm_session_id(alice_identity, alice_base, bob_one_time_public)
    return v


def olm_decrypt_prekey(
    bob_identity_private: bytes, bob_one_time_private: bytes, prekey_message: bytes
) -> dict[str, Any]:
    """Bob's side (olm.md "Creating an inbound session from a pre-key
    message"): parse, check the one-time key is his, recompute ``S``,
    ``R_0``, ``C_{0,0}``, advance to the message's chain index ``j``, derive
    ``M_{0,j}`` and its keys, check the MAC, then decrypt.  Returns the
    plaintext and the intermediate values by name; raises
    :class:`SpecError` on any failure."""
    pre = parse_olm_prekey_message(prekey_message)
    if pre["one_time_key"] != x25519_public(bob_one_time_private):
        raise SpecError("pre-key message for another one-time key")
    inner = parse_olm_normal_message(pre["message"])
    agreements = olm_3dh_bob(bob_identity_private, bob_one_time_private, pre["identity_key"], pre["base_key"])
    shared = olm_shared_secret(agreements)
    root_key, chain_key = olm_root_and_chain(shared)
    v: dict[str, Any] = {
        "alice_identity_public": pre["identity_key"],
        "alice_base_public": pre["base_key"],
        "alice_ratchet_public": inner["ratchet_key"],
        "shared_secret": shared,
        "root_key": root_key,
        "chain_key": chain_key,
        "chain_index": inner["chain_index"],
    }
    for _ in range(inner["chain_index"]):
        chain_key = olm_advance_chain(chain_key)
    message_key = olm_message_key(chain_key)
    aes_key, hmac_key, iv = olm_cipher_keys(message_key)
    if truncated_mac(hmac_key, inner["body"]) != inner["mac"]:
        raise SpecError("bad Olm MAC")
    v.update(message_key=message_key, aes_key=aes_key, hmac_key=hmac_key, iv=iv)
    v["ciphertext"] = inner["ciphertext"]
    v["plaintext"] = aes_cbc_decrypt(aes_key, iv, inner["ciphertext"])
    v["session_id"] = olm_session_id(pre["identity_key"], pre["base_key"], pre["one_time_key"])
    return v


# --- Megolm ------------------------------------------------------------------

MEGOLM_VERSION = 3  # megolm.md "Message format": b"\x03"
MEGOLM_KEYS_INFO = b"MEGOLM_KEYS"
MEGOLM_PART_LEN = 32
MEGOLM_RATCHET_LEN = 4 * MEGOLM_PART_LEN
SIGNATURE_LEN = 64

TAG_MESSAGE_INDEX = 0x08  # field 1, integer
TAG_MEGOLM_CIPHERTEXT = 0x12  # field 2, string

#: megolm.md "Session sharing format" gives version 2 (this is the format
#: vodozemac calls ``SessionKey``).
SESSION_KEY_VERSION = 2
#: megolm.md "Session export format" also says b"\x02", but libolm
#: (``OLM_SESSION_EXPORT_VERSION``) and vodozemac (``ExportedSessionKey``)
#: write and require b"\x01"; the cross-check with vodozemac settles it.
EXPORTED_KEY_VERSION = 1


def _split_ratchet(ratchet: bytes) -> list[bytes]:
    if len(ratchet) != MEGOLM_RATCHET_LEN:
        raise SpecError("a Megolm ratchet is 128 bytes")
    return [ratchet[k * 32 : (k + 1) * 32] for k in range(4)]


def megolm_hash(k: int, part: bytes) -> bytes:
    """``H_k(A) = HMAC(A, k)`` with ``k`` one byte 0..3 (megolm.md
    "Advancing the ratchet")."""
    return hmac_sha256(part, bytes((k,)))


def megolm_advance(ratchet: bytes, index: int) -> tuple[bytes, int]:
    """``R_{i+1}`` from ``R_i`` (megolm.md "The Megolm ratchet algorithm").

    Let ``h`` be the most significant part whose boundary ``i+1`` reaches:
    0 if ``2^24`` divides ``i+1``, 1 if ``2^16`` does, 2 if ``2^8`` does, 3
    otherwise.  Then every part ``k >= h`` becomes ``H_k(R_{i,h})`` (all
    computed from the *old* ``R_{i,h}``) and the parts above ``h`` stay."""
    if not 0 <= index < 2**32 - 1:
        raise SpecError("the Megolm counter is 32 bits")
    parts = _split_ratchet(ratchet)
    nxt = index + 1
    if nxt % 2**24 == 0:
        h = 0
    elif nxt % 2**16 == 0:
        h = 1
    elif nxt % 2**8 == 0:
        h = 2
    else:
        h = 3
    seed = parts[h]
    for k in range(h, 4):
        parts[k] = megolm_hash(k, seed)
    return b"".join(parts), nxt


def megolm_advance_to(ratchet: bytes, index: int, target: int) -> bytes:
    """``R_target`` from ``R_index`` with at most 1020 hashes, as megolm.md
    "The Megolm ratchet algorithm" promises.

    Write the counter as four bytes, most significant first; part ``k``
    changes each time the counter crosses a multiple of ``2^(8(3-k))``.  For
    ``k`` from 0 to 3, with the counter's bytes above ``k`` already equal to
    ``target``'s: part ``k`` must cross ``d`` = (byte ``k`` of ``target``) -
    (byte ``k`` of the counter) boundaries.  Each crossing replaces ``R_k``
    by ``H_k(R_k)`` and reseeds the parts below from the old ``R_k``; only
    the last reseed matters, so hash ``R_k`` ``d - 1`` times, reseed every
    part ``m > k`` with ``H_m`` of that value, hash ``R_k`` once more, and
    set the counter to ``target`` with the bytes below ``k`` zeroed.  The
    result equals ``target - index`` calls of :func:`megolm_advance`."""
    if not 0 <= index <= target < 2**32:
        raise SpecError("a Megolm ratchet only moves forwards (32-bit counter)")
    parts = _split_ratchet(ratchet)
    counter = index
    for k in range(4):
        shift = 8 * (3 - k)
        d = (target >> shift) - (counter >> shift)
        if d == 0:
            continue
        assert 0 < d < 256  # the bytes above k agree
        value = parts[k]
        for _ in range(d - 1):
            value = megolm_hash(k, value)
        for m in range(k + 1, 4):
            parts[m] = megolm_hash(m, value)
        parts[k] = megolm_hash(k, value)
        counter = (target >> shift) << shift
    assert counter == target
    return b"".join(parts)


def megolm_cipher_keys(ratchet: bytes) -> tuple[bytes, bytes, bytes]:
    """``AES_KEY_i || HMAC_KEY_i || AES_IV_i = HKDF(0, R_i, "MEGOLM_KEYS",
    80)``, the whole 128-byte ratchet as input (megolm.md "Message
    encryption")."""
    _split_ratchet(ratchet)
    return expand_cipher_keys(ratchet, MEGOLM_KEYS_INFO)


def megolm_message_body(index: int, ciphertext: bytes) -> bytes:
    """Version byte and payload (megolm.md "Message format"): the message
    index, then the ciphertext, in tag order.  This is what the MAC covers."""
    return (
        bytes((MEGOLM_VERSION,))
        + int_field(TAG_MESSAGE_INDEX, index)
        + string_field(TAG_MEGOLM_CIPHERTEXT, ciphertext)
    )


def megolm_encrypt(ratchet: bytes, index: int, signing_seed: bytes, plaintext: bytes) -> dict[str, Any]:
    """Megolm message ``index`` (the ratchet given is ``R_index``) and every
    intermediate value, by name (megolm.md "Message encryption"): keys from
    the ratchet, AES-256-CBC, the body, its 8-byte MAC appended, then the
    Ed25519 signature over body and MAC appended.  Also ``R_{index+1}``,
    the ratchet the sender keeps ("Advancing the ratchet")."""
    v: dict[str, Any] = {}
    aes_key, hmac_key, iv = megolm_cipher_keys(ratchet)
    v["aes_key"], v["hmac_key"], v["iv"] = aes_key, hmac_key, iv
    v["plaintext"] = plaintext
    v["ciphertext"] = ciphertext = aes_cbc_encrypt(aes_key, iv, plaintext)
    v["message_body"] = body = megolm_message_body(index, ciphertext)
    v["mac"] = mac = truncated_mac(hmac_key, body)
    v["signature"] = signature = ed25519_sign(signing_seed, body + mac)
    v["message"] = message = body + mac + signature
    v["message_base64"] = b64encode(message)
    v["next_ratchet"] = megolm_advance(ratchet, index)[0]
    return v


def parse_megolm_message(message: bytes) -> dict[str, Any]:
    """Split a version-3 Megolm message (MAC and signature not checked)."""
    if len(message) < 1 + MAC_LEN + SIGNATURE_LEN or message[0] != MEGOLM_VERSION:
        raise SpecError("not a version 3 Megolm message")
    signed, signature = message[:-SIGNATURE_LEN], message[-SIGNATURE_LEN:]
    body, mac = signed[:-MAC_LEN], signed[-MAC_LEN:]
    fields = parse_fields(body[1:])
    return {
        "signed": signed,
        "signature": signature,
        "body": body,
        "mac": mac,
        "message_index": _need(fields, TAG_MESSAGE_INDEX, int),
        "ciphertext": _need(fields, TAG_MEGOLM_CIPHERTEXT, bytes),
    }


def megolm_decrypt(ratchet: bytes, index: int, signing_public: bytes, message: bytes) -> dict[str, Any]:
    """Decrypt ``message`` with a known ratchet ``R_index`` of the session
    whose Ed25519 public key is ``signing_public``: check the signature over
    everything before it, advance the ratchet to the message's index (it may
    not be earlier), check the MAC over everything before it, decrypt."""
    parsed = parse_megolm_message(message)
    ed25519_verify(signing_public, parsed["signed"], parsed["signature"])
    target = parsed["message_index"]
    if target < index:
        raise SpecError("message index before the first known index")
    ratchet = megolm_advance_to(ratchet, index, target)
    aes_key, hmac_key, iv = megolm_cipher_keys(ratchet)
    if truncated_mac(hmac_key, parsed["body"]) != parsed["mac"]:
        raise SpecError("bad Megolm MAC")
    return {
        "message_index": target,
        "ratchet": ratchet,
        "plaintext": aes_cbc_decrypt(aes_key, iv, parsed["ciphertext"]),
    }


def _session_data(version: int, ratchet: bytes, index: int, signing_public: bytes) -> bytes:
    """``V || i || R_{i,0} || R_{i,1} || R_{i,2} || R_{i,3} || Kpub`` with
    ``i`` big-endian 32 bits (megolm.md "Session sharing format")."""
    _split_ratchet(ratchet)
    if len(signing_public) != 32:
        raise SpecError("an Ed25519 public key is 32 bytes")
    return bytes((version,)) + index.to_bytes(4, "big") + ratchet + signing_public


def megolm_exported_key(ratchet: bytes, index: int, signing_public: bytes) -> bytes:
    """The session export format (megolm.md "Session export format"): 165
    bytes, no signature, version byte 1 (see :data:`EXPORTED_KEY_VERSION`)."""
    return _session_data(EXPORTED_KEY_VERSION, ratchet, index, signing_public)


def megolm_session_key(ratchet: bytes, index: int, signing_seed: bytes) -> bytes:
    """The session sharing format (megolm.md "Session sharing format"), what
    vodozemac's ``GroupSession.session_key`` produces: version 2, the 165
    bytes, then the Ed25519 signature over them (229 bytes)."""
    data = _session_data(SESSION_KEY_VERSION, ratchet, index, ed25519_public(signing_seed))
    return data + ed25519_sign(signing_seed, data)


def _parse_session_data(data: bytes, version: int, length: int) -> dict[str, Any]:
    if len(data) != length:
        raise SpecError(f"a session key of version {version} is {length} bytes")
    if data[0] != version:
        raise SpecError(f"session key version {data[0]}, expected {version}")
    return {
        "message_index": int.from_bytes(data[1:5], "big"),
        "ratchet": data[5:133],
        "signing_public": data[133:165],
    }


def parse_megolm_session_key(data: bytes) -> dict[str, Any]:
    """Parse and verify a session-sharing key (version 2, signed)."""
    key = _parse_session_data(data, SESSION_KEY_VERSION, 165 + SIGNATURE_LEN)
    ed25519_verify(key["signing_public"], data[:165], data[165:])
    key["signature"] = data[165:]
    return key


def parse_megolm_exported_key(data: bytes) -> dict[str, Any]:
    """Parse an exported session key (version 1, unsigned)."""
    return _parse_session_data(data, EXPORTED_KEY_VERSION, 165)


# --- the test vectors --------------------------------------------------------


def label_key(label: str) -> bytes:
    """A fixed 32-byte input: SHA-256 of the ASCII ``label``."""
    return sha256(label.encode("ascii"))


#: Olm vector inputs: each is SHA-256 of its name prefixed by "olm vector ".
OLM_INPUT_NAMES = (
    "alice_identity_private",
    "alice_base_private",
    "alice_ratchet_private",
    "bob_identity_private",
    "bob_one_time_private",
    "alice_ed25519_seed",
    "bob_ed25519_seed",
)
OLM_INPUTS = {name: label_key("olm vector " + name).hex() for name in OLM_INPUT_NAMES}

#: Megolm vector inputs: the four ratchet parts are SHA-256 of
#: "megolm vector ratchet part 0" .. "3", the seed of "megolm vector ed25519_seed".
MEGOLM_INPUTS = {
    "ratchet": b"".join(label_key(f"megolm vector ratchet part {k}") for k in range(4)).hex(),
    "message_index": "0",
    "ed25519_seed": label_key("megolm vector ed25519_seed").hex(),
}


def olm_plaintext(alice_ed25519_public: bytes, bob_ed25519_public: bytes) -> bytes:
    """The vector's Olm plaintext: compact JSON with sorted keys, UTF-8."""
    payload = {
        "content": {"body": "hello bob", "to": "bob"},
        "keys": {"ed25519": b64encode(alice_ed25519_public)},
        "recipient": "bob",
        "recipient_device": "BOBDEVICE",
        "recipient_keys": {"ed25519": b64encode(bob_ed25519_public)},
        "sender": "alice",
        "sender_device": "ALICEDEVICE",
        "type": "dm",
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


MEGOLM_PLAINTEXT = b'{"body":"hello room","room":"secret","type":"msg"}'


def _as_text(v: dict[str, Any]) -> dict[str, str]:
    """Bytes as lowercase hex; strings (base64) and integers (decimal) as is."""
    return {name: value.hex() if isinstance(value, bytes) else str(value) for name, value in v.items()}


def make_olm_vector(inputs: dict[str, str] | None = None) -> dict[str, str]:
    """Every value of the Olm vector, in document order, from its inputs
    (the hex values named in :data:`OLM_INPUT_NAMES`).  The message is the
    session's first, chain index 0."""
    inputs = inputs or OLM_INPUTS
    x = {name: bytes.fromhex(inputs[name]) for name in OLM_INPUT_NAMES}
    v: dict[str, Any] = {}
    for who, names in (
        ("alice", ("identity", "base", "ratchet")),
        ("bob", ("identity", "one_time")),
    ):
        for name in names:
            private = x[f"{who}_{name}_private"]
            v[f"{who}_{name}_private"] = private
            v[f"{who}_{name}_public"] = x25519_public(private)
    for who in ("alice", "bob"):
        seed = x[f"{who}_ed25519_seed"]
        v[f"{who}_ed25519_seed"] = seed
        v[f"{who}_ed25519_public"] = public = ed25519_public(seed)
        v[f"{who}_ed25519_public_base64"] = b64encode(public)
    plaintext = olm_plaintext(v["alice_ed25519_public"], v["bob_ed25519_public"])
    out = olm_encrypt_prekey(
        x["alice_identity_private"],
        x["alice_base_private"],
        x["alice_ratchet_private"],
        v["bob_identity_public"],
        v["bob_one_time_public"],
        plaintext,
    )
    for name in ("alice_identity_public", "alice_base_public", "alice_ratchet_public"):
        assert out.pop(name) == v[name]
    v.update(out)
    back = olm_decrypt_prekey(x["bob_identity_private"], x["bob_one_time_private"], out["prekey_message"])
    assert back["plaintext"] == plaintext and back["shared_secret"] == out["shared_secret"]
    return _as_text(v)


def make_megolm_vector(inputs: dict[str, str] | None = None) -> dict[str, str]:
    """Every value of the Megolm vector, in document order, from its inputs."""
    inputs = inputs or MEGOLM_INPUTS
    ratchet = bytes.fromhex(inputs["ratchet"])
    index = int(inputs["message_index"])
    seed = bytes.fromhex(inputs["ed25519_seed"])
    v: dict[str, Any] = {"ratchet": ratchet, "message_index": index, "ed25519_seed": seed}
    v["ed25519_public"] = public = ed25519_public(seed)
    v["session_id"] = b64encode(public)
    v.update(megolm_encrypt(ratchet, index, seed, MEGOLM_PLAINTEXT))
    v["exported_session_key"] = exported = megolm_exported_key(ratchet, index, public)
    v["exported_session_key_base64"] = b64encode(exported)
    v["session_key"] = shared = megolm_session_key(ratchet, index, seed)
    v["session_key_base64"] = b64encode(shared)
    back = megolm_decrypt(ratchet, index, public, v["message"])
    assert back["plaintext"] == MEGOLM_PLAINTEXT
    return _as_text(v)


def vector_block(vector: dict[str, str]) -> str:
    """The vector as the indented ``name: value`` lines of a ``::`` block."""
    return "".join(f"   {name}: {value}\n" for name, value in vector.items())


if __name__ == "__main__":  # print the two literal blocks
    import sys

    if sys.argv[1:] == ["megolm"]:
        print(vector_block(make_megolm_vector()), end="")
    else:
        print(vector_block(make_olm_vector()), end="")
