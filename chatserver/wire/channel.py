"""The secure channel, shared by server and client: handshake and records.

This module is sans-IO: it turns bytes into bytes and raises
:class:`ChannelError` on anything it does not like.  The Twisted protocols on
both sides feed it lines and write what it returns, so every rule of the
protocol lives here once.  ``docs/protocol.rst`` is the specification; the
names below follow it.

Wire form: every record is one line, ``base64(record) + b"\\n"``.  A record
starts with a one-byte type.  Handshake records are in the clear; after the
handshake every record is sealed with AES-256-GCM under a per-direction key;
the nonce is implicit (the per-direction IV XOR the 64-bit sequence number)
and the type byte is the associated data.
"""

from __future__ import annotations

import binascii
import contextlib
import enum
import json
import struct
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]  # C accelerator
from json.encoder import encode_basestring as _encode_basestring
from typing import Any, Callable, Iterator

from chatserver.wire import crypto

PROTOCOL_VERSION = 1
#: X25519 + RSA-OAEP-SHA256 transport + HKDF-SHA256 + AES-256-GCM.
SUITE_X25519_RSAOAEP_SHA256_AES256GCM = 0x0001
SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)
SUPPORTED_SUITES = (SUITE_X25519_RSAOAEP_SHA256_AES256GCM,)

# Record types.
CLIENT_HELLO = 0x01
SERVER_HELLO = 0x02
KEY_EXCHANGE = 0x03
FINISHED = 0x04
RESUME_HELLO = 0x05
SERVER_RESUME = 0x06
COOKIE = 0x07
ALERT = 0x15
CLOSE = 0x16
DATA = 0x17
KEY_UPDATE = 0x18

SEALED_TYPES = frozenset((CLOSE, DATA, KEY_UPDATE))

# Alert codes (plaintext, handshake phase only).
ALERT_PROTOCOL_VERSION = 1
ALERT_HANDSHAKE_FAILURE = 2
ALERT_DECODE_ERROR = 3
ALERT_BUSY = 4
ALERT_TIMEOUT = 5
ALERT_INTERNAL_ERROR = 6

RANDOM_SIZE = 32
SHARE_SIZE = 32
PREMASTER_SIZE = 32
MAC_SIZE = 32
TAG_SIZE = crypto.AEAD.TAG_SIZE

LABEL_HANDSHAKE = b"chatserver/1 handshake"
LABEL_KEY = b"chatserver/1 key"
LABEL_IV = b"chatserver/1 iv"
LABEL_UPDATE = b"chatserver/1 update"
LABEL_RESUMED = b"chatserver/1 resumed"
LABEL_RESUMPTION = b"chatserver/1 resumption"
LABEL_BINDER = b"chatserver/1 binder"

#: Bytes of the nonce that makes each ticket's PSK distinct.
TICKET_NONCE_SIZE = 16
#: Bounds of a ticket's length in a RESUME_HELLO (it is opaque to clients).
MAX_TICKET_SIZE = 1024
COOKIE_SIZE = 32

#: Records sealed under one key before the sender must send KEY_UPDATE.
#: RFC 8446 section 5.5 allows 2**24.5 records of 2**14 bytes per AES-GCM key;
#: our records can be 4x that long, so we stay a factor of 4 below.
REKEY_AFTER_RECORDS = 1 << 22
#: A peer that seals more than this under one key is misbehaving.
RECEIVE_LIMIT_RECORDS = 1 << 23
#: The sequence number is 64 bits and must never wrap.
MAX_SEQUENCE = (1 << 64) - 1


class ChannelError(Exception):
    """The peer broke the protocol; the connection must be closed.

    ``reason`` is short, fixed text that is safe to log: it never contains
    key material or plaintext.
    """

    def __init__(self, reason: str, alert: int = ALERT_HANDSHAKE_FAILURE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert


class PeerClosed(Exception):
    """The peer sent an authenticated CLOSE record: a clean goodbye."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AlertReceived(ChannelError):
    """The peer refused the handshake with a plaintext alert."""

    def __init__(self, code: int, text: str) -> None:
        # Raw: whoever logs or shows the reason makes it safe (safetext).
        super().__init__(f"peer alert {code}: {text}", code)
        self.code = code
        self.text = text


# --- the transport --------------------------------------------------------


def send_without_delay(transport: Any) -> bool:
    """Turn off Nagle's algorithm on a TCP transport (TLS passes it on).

    Both ends already coalesce what they write per reactor turn, so a
    write is a whole batch that should leave now.  With Nagle on, a small
    record waits for the ACK of the previous one, and the peer may delay
    that ACK by up to 40 ms: measured, it put 35-40 ms into the 99th
    percentile of delivery latency at 1,000 messages a second.  Returns
    whether the transport took the option."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return False
    try:
        set_no_delay(True)
    except OSError:  # not a TCP socket after all (e.g. a UNIX one)
        return False
    return True


# --- lines ----------------------------------------------------------------


pybase64: Any
try:  # SIMD base64, 20 to 30 times faster than binascii (pip install 'chatserver[fast]')
    import pybase64
except ImportError:  # pragma: no cover - exercised by the tests through both backends
    pybase64 = None


def _encode_line_binascii(record: bytes) -> bytes:
    return binascii.b2a_base64(record)  # newline=True: the LF comes in the same copy


def _encode_line_pybase64(record: bytes) -> bytes:
    encoded: bytes = pybase64.b64encode(record)  # typed Any: pybase64 may be absent
    return encoded + b"\n"


#: The value of each base64 alphabet byte (others are refused before use).
_b64_values = bytearray(256)
for _value, _char in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
    _b64_values[_char] = _value
_B64_VALUE = bytes(_b64_values)


def _line_decoder(strict_decode: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """decode_line over a base64 decoder that refuses characters outside
    the alphabet; the rest of the rules are checked here, the same for
    every decoder."""

    def decode_line(line: bytes) -> bytes:
        """The record carried by one line (delimiter already removed)."""
        if len(line) % 4:
            raise ChannelError("line is not valid base64", ALERT_DECODE_ERROR)
        try:
            record = strict_decode(line)
        except (binascii.Error, ValueError):
            raise ChannelError("line is not valid base64", ALERT_DECODE_ERROR) from None
        if not record:
            raise ChannelError("empty record", ALERT_DECODE_ERROR)
        # Only the canonical encoding is accepted (the unused bits before
        # the padding are zero), so every record has exactly one wire form.
        if line[-1] == 0x3D and (
            _B64_VALUE[line[-3]] & 0x0F if line[-2] == 0x3D else _B64_VALUE[line[-2]] & 0x03
        ):
            raise ChannelError("line is not canonical base64", ALERT_DECODE_ERROR)
        return record

    return decode_line


#: Every base64 backend available here: name -> (encode_line, decode_line).
#: Both sides encode and decode every line they exchange, so this is on
#: the hot path; the first one is used.
BASE64_BACKENDS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {}
if pybase64 is not None:
    BASE64_BACKENDS["pybase64"] = (
        _encode_line_pybase64,
        _line_decoder(lambda line: pybase64.b64decode(line, validate=True)),
    )
BASE64_BACKENDS["binascii"] = (
    _encode_line_binascii,
    _line_decoder(lambda line: binascii.a2b_base64(line, strict_mode=True)),
)
BASE64_BACKEND = next(iter(BASE64_BACKENDS))
#: A record as one wire line, delimiter included.
encode_line = BASE64_BACKENDS[BASE64_BACKEND][0]
#: The record carried by one line (delimiter already removed).
decode_line = BASE64_BACKENDS[BASE64_BACKEND][1]


# --- events ---------------------------------------------------------------


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# The compact encoding of everything the server sends (and stores): no
# spaces, UTF-8 as is, no NaN.  json.dumps with these options builds an
# encoder per call (3.5 µs for a message event, measured); the C encoder
# made once takes 1.7 µs, and every message is encoded twice (the event,
# once for all recipients, and its ack).  Same output; without the C
# accelerator the reused Python encoder gives it.
if _c_make_encoder is not None:
    _C_ENCODER = _c_make_encoder(None, _not_json, _encode_basestring, None, ":", ",", False, False, False)

    def json_text(value: Any) -> str:
        """``value`` as compact JSON text."""
        return "".join(_C_ENCODER(value, 0))

else:  # pragma: no cover - CPython always has the accelerator
    _ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def json_text(value: Any) -> str:
        """``value`` as compact JSON text."""
        return _ENCODER.encode(value)


def _compact_json(value: Any) -> bytes:
    return json_text(value).encode("utf-8")


def encode_events(events: list[dict[str, Any]]) -> bytes:
    """The plaintext of a DATA record: a JSON array of event objects."""
    return _compact_json(events)


#: The reference client's padding block (the server's is [server] pad_block).
PAD_BLOCK = 32


def pad(plaintext: bytes, block: int, limit: int) -> bytes:
    """``plaintext`` (a JSON text) with trailing spaces up to a multiple of
    ``block`` bytes, but not past ``limit``: a record's length then tells
    only roughly how long its content is.  Spaces are JSON whitespace, so
    every receiver reads the same events.  ``block`` 0: no padding."""
    if block <= 1:
        return plaintext
    extra = -len(plaintext) % block
    if len(plaintext) + extra > limit:
        extra = max(0, limit - len(plaintext))
    return plaintext + b" " * extra if extra else plaintext


def encode_event(event: dict[str, Any]) -> bytes:
    """One event, to be joined with others into a DATA record's array."""
    return _compact_json(event)


def max_plaintext(max_line_length: int) -> int:
    """The largest DATA plaintext whose line fits in ``max_line_length``
    bytes: base64 of type + ciphertext + tag (49135 for 65536)."""
    return (max_line_length // 4) * 3 - 1 - TAG_SIZE


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_events(plaintext: bytes) -> list[dict[str, Any]]:
    try:
        text = plaintext.decode("utf-8")
        events = json.loads(text, parse_constant=_no_constants)
        if "\\u" in text:
            # An escape may encode a lone surrogate, which is no Unicode
            # text at all and could not be sent on to anyone.
            _compact_json(events)
    except UnicodeError:
        raise ChannelError("data is not UTF-8", ALERT_DECODE_ERROR) from None
    except RecursionError:
        raise ChannelError("data is nested too deeply", ALERT_DECODE_ERROR) from None
    except ValueError:
        raise ChannelError("data is not JSON", ALERT_DECODE_ERROR) from None
    if not isinstance(events, list) or not events:
        raise ChannelError("data is not a non-empty list", ALERT_DECODE_ERROR)
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ChannelError("event is not an object with a type", ALERT_DECODE_ERROR)
    return events


# --- the record layer -----------------------------------------------------


class _Direction:
    """Key state of one direction: secret, key, IV, sequence, and the AEAD
    context, which is made when needed and may be dropped while idle."""

    __slots__ = ("secret", "key", "aead", "iv", "seq", "seq_at_sweep")

    def __init__(self, secret: bytes) -> None:
        self._install(secret)

    def _install(self, secret: bytes) -> None:
        self.secret = secret
        self.key = crypto.hkdf_expand(secret, LABEL_KEY, 32)
        self.aead: crypto.AEAD | None = None
        self.iv = int.from_bytes(crypto.hkdf_expand(secret, LABEL_IV, 12), "big")
        self.seq = 0
        self.seq_at_sweep = -1

    def cipher(self) -> crypto.AEAD:
        """The AEAD context, made again if it was dropped (under 1 µs)."""
        aead = self.aead
        if aead is None:
            aead = self.aead = crypto.AEAD(self.key)
        return aead

    def drop_if_idle(self) -> bool:
        """Drop the AEAD context if no record went this way since the
        previous call: OpenSSL's context for one AES-GCM key takes about
        2.6 KiB, more than the rest of an idle connection's Python state.
        True if it was dropped now."""
        idle = self.seq == self.seq_at_sweep and self.aead is not None
        if idle:
            self.aead = None
        self.seq_at_sweep = self.seq
        return idle

    def update(self) -> None:
        self._install(crypto.hkdf_expand(self.secret, LABEL_UPDATE, 32))

    def next_nonce(self) -> bytes:
        seq = self.seq
        if seq >= MAX_SEQUENCE:
            raise ChannelError("sequence number exhausted")
        self.seq = seq + 1
        return (self.iv ^ seq).to_bytes(12, "big")


_DATA_HEADER = bytes((DATA,))


class SecureChannel:
    """Seals outgoing and opens incoming records after the handshake."""

    __slots__ = ("_send", "_recv", "rekey_after", "receive_limit", "closed", "resumption_secret", "resumed")

    def __init__(
        self,
        send_secret: bytes,
        recv_secret: bytes,
        rekey_after: int = REKEY_AFTER_RECORDS,
        receive_limit: int = RECEIVE_LIMIT_RECORDS,
        resumption_secret: bytes | None = None,
        resumed: bool = False,
    ) -> None:
        self._send = _Direction(send_secret)
        self._recv = _Direction(recv_secret)
        self.rekey_after = rekey_after
        self.receive_limit = receive_limit
        self.closed = False
        #: What the PSKs of the tickets issued on this channel come from
        #: (see :func:`ticket_psk`); None for a channel made without a
        #: handshake (tests).
        self.resumption_secret = resumption_secret
        #: Whether the handshake was a resumption (no RSA).
        self.resumed = resumed

    def _seal_record(self, rtype: int, plaintext: bytes) -> bytes:
        send = self._send
        header = bytes((rtype,))
        return encode_line(header + (send.aead or send.cipher()).seal(send.next_nonce(), plaintext, header))

    def seal(self, rtype: int, plaintext: bytes) -> bytes:
        """Wire bytes for one sealed record, preceded by a KEY_UPDATE if due."""
        if self.closed:
            raise ChannelError("channel is closed")
        if self._send.seq >= self.rekey_after:
            update = self._seal_record(KEY_UPDATE, b"")
            self._send.update()
            return update + self._seal_record(rtype, plaintext)
        return self._seal_record(rtype, plaintext)

    def seal_events(self, events: list[dict[str, Any]]) -> bytes:
        return self.seal(DATA, encode_events(events))

    def seal_plaintext(self, plaintext: bytes) -> bytes:
        """Seal an already-encoded event list (see :func:`encode_events`).

        The server's path for every record it sends, so :meth:`seal` is
        written out here for the common case (no KEY_UPDATE due): the same
        bytes with five fewer Python calls per record."""
        send = self._send
        seq = send.seq
        if self.closed or seq >= self.rekey_after:
            return self.seal(DATA, plaintext)
        send.seq = seq + 1
        nonce = (send.iv ^ seq).to_bytes(12, "big")
        return encode_line(_DATA_HEADER + (send.aead or send.cipher()).seal(nonce, plaintext, _DATA_HEADER))

    def seal_close(self, code: str, message: str) -> bytes:
        wire = self.seal(CLOSE, _compact_json({"code": code, "message": message}))
        self.closed = True
        return wire

    def drop_idle_contexts(self) -> int:
        """Give back the AEAD context of each direction that carried no
        record since the previous call (see ``_Direction.drop_if_idle``);
        the next record makes it again.  Returns how many were dropped."""
        return self._send.drop_if_idle() + self._recv.drop_if_idle()

    def open(self, line: bytes) -> list[dict[str, Any]] | None:
        """Open one line.  Returns the events of a DATA record, or None for
        a KEY_UPDATE.  Raises :class:`PeerClosed` for a CLOSE record and
        :class:`ChannelError` for anything that fails to authenticate or
        parse; after either the channel is unusable."""
        plaintext = self.open_data(line)
        if plaintext is None:
            return None
        try:
            return decode_events(plaintext)
        except ChannelError:
            self.closed = True
            raise

    def open_data(self, line: bytes) -> bytes | None:
        """As :meth:`open`, but a DATA record's plaintext is returned
        undecoded (authenticated, not parsed): for a reader that only
        counts, like the bench's load generator."""
        if self.closed:
            raise ChannelError("record after close")
        try:
            return self._open(line)
        except ChannelError:
            self.closed = True  # whatever failed, the stream is out of step now
            raise

    def _open(self, line: bytes) -> bytes | None:
        record = decode_line(line)
        rtype = record[0]
        if rtype not in SEALED_TYPES:
            raise ChannelError("unexpected record type after handshake", ALERT_DECODE_ERROR)
        if len(record) < 1 + TAG_SIZE:
            raise ChannelError("sealed record too short", ALERT_DECODE_ERROR)
        recv = self._recv
        if recv.seq >= self.receive_limit:
            raise ChannelError("peer exceeded the per-key record limit")
        try:
            plaintext = (recv.aead or recv.cipher()).open(recv.next_nonce(), record[1:], record[:1])
        except crypto.CryptoError:
            raise ChannelError("record failed authentication") from None
        if rtype == DATA:
            return plaintext
        if rtype == KEY_UPDATE:
            if plaintext:
                raise ChannelError("KEY_UPDATE with a body", ALERT_DECODE_ERROR)
            recv.update()
            return None
        self.closed = True
        try:
            body = json.loads(plaintext.decode("utf-8"))
            code, message = str(body["code"]), str(body["message"])
        except (ValueError, KeyError, TypeError, RecursionError):
            code, message = "malformed", "malformed close record"
        raise PeerClosed(code, message)


# --- the handshake --------------------------------------------------------


class HandshakeState(enum.Enum):
    AWAIT_HELLO = "await hello"
    HELLO_READ = "hello read"
    AWAIT_KEY_EXCHANGE = "await key exchange"
    DERIVING = "deriving keys"
    AWAIT_FINISHED = "await finished"
    ESTABLISHED = "established"
    FAILED = "failed"


#: The most bytes of text an ALERT carries (and a receiver reads).
MAX_ALERT_TEXT = 200


def alert_record(code: int, text: str) -> bytes:
    """An ALERT whose text is at most MAX_ALERT_TEXT bytes of UTF-8, cut
    at a character boundary."""
    data = text.encode("utf-8")
    if len(data) > MAX_ALERT_TEXT:
        data = data[:MAX_ALERT_TEXT].decode("utf-8", "ignore").encode("utf-8")
    return bytes((ALERT, code)) + data


def _parse_alert(record: bytes) -> AlertReceived:
    if len(record) < 2:
        return AlertReceived(0, "malformed alert")
    # A receiver reads no more than a sender may write: a longer text is
    # cut, whoever sent it, before it goes anywhere (a log, a screen).
    return AlertReceived(record[1], record[2 : 2 + MAX_ALERT_TEXT].decode("utf-8", "replace"))


class _Reader:
    """Bounds-checked reads from one handshake record."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ChannelError("handshake record truncated", ALERT_DECODE_ERROR)
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u16_list(self) -> list[int]:
        count = self.u8()
        if count == 0:
            raise ChannelError("empty list in hello", ALERT_DECODE_ERROR)
        return list(struct.unpack(f">{count}H", self.take(2 * count)))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ChannelError("trailing bytes in handshake record", ALERT_DECODE_ERROR)


def _expect(record: bytes, rtype: int) -> _Reader:
    if record[0] == ALERT:
        raise _parse_alert(record)
    if record[0] != rtype:
        raise ChannelError(f"unexpected record type 0x{record[0]:02x}", ALERT_DECODE_ERROR)
    reader = _Reader(record)
    reader.take(1)
    return reader


def _require_state(handshake: Any, state: HandshakeState) -> None:
    """Any step out of its state fails the handshake for good."""
    current = handshake.state
    if current is not state:
        handshake.state = HandshakeState.FAILED
        raise ChannelError(f"handshake step out of order (state: {current.value})")


class HandshakeSecrets:
    """What HKDF yields from a handshake (section "Key schedule"): the
    traffic and FINISHED keys, and the secret that resumption tickets
    issued on the channel come from.  A full handshake's ``ikm`` is
    ``shared || premaster`` under LABEL_HANDSHAKE; a resumed one's is
    ``shared || psk`` under LABEL_RESUMED."""

    __slots__ = (
        "client_secret",
        "server_secret",
        "client_finished_key",
        "server_finished_key",
        "resumption_secret",
    )

    def __init__(self, ikm: bytes, transcript_hash: bytes, label: bytes = LABEL_HANDSHAKE) -> None:
        # HKDF's output for 160 bytes starts with its output for 128: the
        # resumption secret was added after the first four without changing
        # them (or the test vector).
        okm = crypto.hkdf(ikm, transcript_hash, label, 160)
        self.client_secret = okm[0:32]
        self.server_secret = okm[32:64]
        self.client_finished_key = okm[64:96]
        self.server_finished_key = okm[96:128]
        self.resumption_secret = okm[128:160]


def ticket_psk(resumption_secret: bytes, nonce: bytes) -> bytes:
    """The PSK of the ticket issued with ``nonce`` on a channel (both sides
    derive it; it never travels)."""
    return crypto.hkdf_expand(resumption_secret, LABEL_RESUMPTION + nonce, 32)


def resume_binder(psk: bytes, hello_without_binder: bytes) -> bytes:
    """The RESUME_HELLO's last field: proof that the sender holds the
    ticket's PSK, over everything before it in the record."""
    return crypto.hmac_sha256(crypto.hkdf_expand(psk, LABEL_BINDER, 32), crypto.sha256(hello_without_binder))


class Ticket:
    """A resumption ticket as the client keeps it: the opaque bytes the
    server sealed, and the PSK the client derived for them."""

    __slots__ = ("ticket", "psk", "expires_at", "server_fingerprint")

    def __init__(
        self, ticket: bytes, psk: bytes, expires_at: float, server_fingerprint: str | None = None
    ) -> None:
        self.ticket = ticket
        self.psk = psk
        self.expires_at = expires_at
        #: The key of the server that issued it (only that server can
        #: take it back, so a resumption proves the same identity).
        self.server_fingerprint = server_fingerprint

    @classmethod
    def from_event(
        cls, event: dict[str, Any], channel: SecureChannel, now: float, server_fingerprint: str | None = None
    ) -> "Ticket":
        """The ticket of a ``ticket`` event received on ``channel``."""
        if channel.resumption_secret is None:
            raise ChannelError("ticket on a channel without a resumption secret")
        ticket_text, nonce_text, lifetime = event.get("ticket"), event.get("nonce"), event.get("lifetime")
        # Exactly the types the spec gives: a string is not a number here,
        # nor is a bool (an int to Python), a float, NaN or infinity.
        if not (
            isinstance(ticket_text, str)
            and isinstance(nonce_text, str)
            and type(lifetime) is int
            and lifetime > 0
        ):
            raise ChannelError("malformed ticket event", ALERT_DECODE_ERROR)
        try:
            ticket = binascii.a2b_base64(ticket_text.encode("ascii"), strict_mode=True)
            nonce = binascii.a2b_base64(nonce_text.encode("ascii"), strict_mode=True)
        except (UnicodeError, binascii.Error):
            raise ChannelError("malformed ticket event", ALERT_DECODE_ERROR) from None
        if not 0 < len(ticket) <= MAX_TICKET_SIZE or len(nonce) != TICKET_NONCE_SIZE:
            raise ChannelError("malformed ticket event", ALERT_DECODE_ERROR)
        return cls(ticket, ticket_psk(channel.resumption_secret, nonce), now + lifetime, server_fingerprint)


def _cookie_echo(record: bytes) -> bytes:
    """The cookie of a COOKIE record."""
    reader = _expect(record, COOKIE)
    cookie = reader.take(COOKIE_SIZE)
    reader.end()
    return cookie


def cookie_record(cookie: bytes) -> bytes:
    return bytes((COOKIE,)) + cookie


def _hello_body(versions: tuple[int, ...], suites: tuple[int, ...], random: bytes, share: bytes) -> bytes:
    return (
        bytes((len(versions),))
        + struct.pack(f">{len(versions)}H", *versions)
        + bytes((len(suites),))
        + struct.pack(f">{len(suites)}H", *suites)
        + random
        + share
    )


class ClientHandshake:
    """The client's side.  Call in order: :meth:`hello`, then for the
    server's answer either :meth:`receive_server_hello` (a full handshake:
    check the returned key against the pin, then :meth:`key_exchange` and
    :meth:`receive_finished`) or :meth:`receive_server_resume` (the ticket
    was taken: then :meth:`receive_resumed_finished`).  A COOKIE in place
    of the answer goes to :meth:`receive_cookie`."""

    def __init__(
        self,
        *,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        suites: tuple[int, ...] = SUPPORTED_SUITES,
        ephemeral: bytes | None = None,
        random: bytes | None = None,
        premaster: bytes | None = None,
        rekey_after: int = REKEY_AFTER_RECORDS,
        encrypt: Any = None,
        ticket: Ticket | None = None,
    ) -> None:
        # Fixed ephemeral, random and premaster, and a deterministic OAEP
        # ``encrypt(public_der, plaintext)``, exist for the spec's test
        # vector; real connections always draw fresh ones.
        self._encrypt = encrypt
        if ephemeral is None:
            self._eph, self._share = crypto.x25519_keypair()
        else:
            self._eph, self._share = crypto.x25519_private_from_bytes(ephemeral)
        self._random = random if random is not None else crypto.random_bytes(RANDOM_SIZE)
        self._premaster = premaster if premaster is not None else crypto.random_bytes(PREMASTER_SIZE)
        self._versions = versions
        self._suites = suites
        self._rekey_after = rekey_after
        self._ticket = ticket
        self._hello = b""
        self._cookie_answered = False
        self._transcript = b""
        self._secrets: HandshakeSecrets | None = None
        self.server_key_der: bytes | None = None
        self.server_fingerprint: str | None = None
        #: True once the server took the ticket (no RSA, no pin check:
        #: only the server that sealed the ticket can know its PSK).
        self.resumed = False
        self.state = HandshakeState.AWAIT_HELLO

    def _require(self, state: HandshakeState) -> None:
        _require_state(self, state)

    @contextlib.contextmanager
    def _failing_on_error(self) -> Iterator[None]:
        """A record that does not parse or check fails the handshake: the
        ChannelError goes on (a CryptoError becomes one), FAILED stays."""
        try:
            yield
        except crypto.CryptoError as e:
            self.state = HandshakeState.FAILED
            raise ChannelError(str(e)) from None
        except ChannelError:
            self.state = HandshakeState.FAILED
            raise

    def hello(self) -> bytes:
        """CLIENT_HELLO, or RESUME_HELLO when there is a ticket."""
        self._require(HandshakeState.AWAIT_HELLO)
        body = _hello_body(self._versions, self._suites, self._random, self._share)
        if self._ticket is None:
            record = bytes((CLIENT_HELLO,)) + body
        else:
            ticket = self._ticket.ticket
            partial = bytes((RESUME_HELLO,)) + body + struct.pack(">H", len(ticket)) + ticket
            record = partial + resume_binder(self._ticket.psk, partial)
        self._hello = self._transcript = record
        self.state = HandshakeState.AWAIT_KEY_EXCHANGE
        return record

    def receive_cookie(self, record: bytes) -> list[bytes]:
        """The server is under load and wants its cookie back first: the
        COOKIE to echo and the same hello again (once per connection)."""
        self._require(HandshakeState.AWAIT_KEY_EXCHANGE)
        with self._failing_on_error():
            if self._cookie_answered:
                raise ChannelError("a second cookie", ALERT_DECODE_ERROR)
            cookie = _cookie_echo(record)
        self._cookie_answered = True
        return [cookie_record(cookie), self._hello]

    def receive_server_hello(self, record: bytes) -> str:
        """Parse the server hello; return the server key's fingerprint.

        The caller must check that fingerprint against its pin before it
        calls :meth:`key_exchange`, which is the first thing that depends on
        the server's identity.  After a RESUME_HELLO this is the server
        declining the ticket: a full handshake follows, with the
        RESUME_HELLO at the start of its transcript.
        """
        self._require(HandshakeState.AWAIT_KEY_EXCHANGE)
        with self._failing_on_error():
            reader = _expect(record, SERVER_HELLO)
            version = reader.u16()
            suite = reader.u16()
            reader.take(RANDOM_SIZE)
            share = reader.take(SHARE_SIZE)
            der = reader.take(reader.u16())
            reader.end()
            self._check_choice(version, suite)
            self._server_public = crypto.rsa_public_from_der(der)
            self._shared = crypto.dh(self._eph, share)
        self._transcript += record
        self.server_key_der = der
        self.server_fingerprint = crypto.fingerprint(der)
        self.state = HandshakeState.DERIVING
        return self.server_fingerprint

    def _check_choice(self, version: int, suite: int) -> None:
        if version not in self._versions:
            raise ChannelError("server chose a version we did not offer", ALERT_PROTOCOL_VERSION)
        if suite not in self._suites:
            raise ChannelError("server chose a suite we did not offer")

    def receive_server_resume(self, record: bytes) -> None:
        """The server took the ticket; its FINISHED comes next."""
        self._require(HandshakeState.AWAIT_KEY_EXCHANGE)
        with self._failing_on_error():
            if self._ticket is None:
                raise ChannelError("SERVER_RESUME without a ticket offered", ALERT_DECODE_ERROR)
            reader = _expect(record, SERVER_RESUME)
            version = reader.u16()
            suite = reader.u16()
            reader.take(RANDOM_SIZE)
            share = reader.take(SHARE_SIZE)
            reader.end()
            self._check_choice(version, suite)
            shared = crypto.dh(self._eph, share)
        self._transcript += record
        self._secrets = HandshakeSecrets(
            shared + self._ticket.psk, crypto.sha256(self._transcript), LABEL_RESUMED
        )
        self.resumed = True
        self.state = HandshakeState.AWAIT_FINISHED

    def key_exchange(self) -> list[bytes]:
        """The KEY_EXCHANGE and client FINISHED records."""
        self._require(HandshakeState.DERIVING)
        if self._encrypt is None:
            encrypted = crypto.rsa_encrypt(self._server_public, self._premaster)
        else:
            encrypted = self._encrypt(self.server_key_der, self._premaster)
        kex = bytes((KEY_EXCHANGE,)) + struct.pack(">H", len(encrypted)) + encrypted
        self._transcript += kex
        self._secrets = HandshakeSecrets(self._shared + self._premaster, crypto.sha256(self._transcript))
        finished = bytes((FINISHED,)) + crypto.hmac_sha256(
            self._secrets.client_finished_key, crypto.sha256(self._transcript)
        )
        self._transcript += finished
        self.state = HandshakeState.AWAIT_FINISHED
        return [kex, finished]

    def _server_mac(self, record: bytes) -> None:
        """Check the server's FINISHED against the transcript so far."""
        assert self._secrets is not None
        with self._failing_on_error():
            reader = _expect(record, FINISHED)
            mac = reader.take(MAC_SIZE)
            reader.end()
        expected = crypto.hmac_sha256(self._secrets.server_finished_key, crypto.sha256(self._transcript))
        if not crypto.hmac_equal(mac, expected):
            self.state = HandshakeState.FAILED
            raise ChannelError("server finished MAC is wrong")

    def _channel(self) -> SecureChannel:
        assert self._secrets is not None
        self.state = HandshakeState.ESTABLISHED
        return SecureChannel(
            self._secrets.client_secret,
            self._secrets.server_secret,
            rekey_after=self._rekey_after,
            resumption_secret=self._secrets.resumption_secret,
            resumed=self.resumed,
        )

    def receive_finished(self, record: bytes) -> SecureChannel:
        """The server's FINISHED of a full handshake."""
        self._require(HandshakeState.AWAIT_FINISHED)
        if self.resumed:
            self.state = HandshakeState.FAILED
            raise ChannelError("handshake step out of order (resumed)")
        self._server_mac(record)
        return self._channel()

    def receive_resumed_finished(self, record: bytes) -> tuple[bytes, SecureChannel]:
        """The server's FINISHED of a resumption: our FINISHED to send
        (before any sealed record) and the channel."""
        self._require(HandshakeState.AWAIT_FINISHED)
        if not self.resumed:
            self.state = HandshakeState.FAILED
            raise ChannelError("handshake step out of order (not resumed)")
        self._server_mac(record)
        assert self._secrets is not None
        self._transcript += record
        finished = bytes((FINISHED,)) + crypto.hmac_sha256(
            self._secrets.client_finished_key, crypto.sha256(self._transcript)
        )
        return finished, self._channel()


class Hello:
    """A client's hello as the server read it."""

    __slots__ = ("record", "version", "suite", "client_share", "ticket", "binder_at")

    def __init__(
        self,
        record: bytes,
        version: int,
        suite: int,
        client_share: bytes,
        ticket: bytes | None,
        binder_at: int,
    ) -> None:
        self.record = record
        self.version = version
        self.suite = suite
        self.client_share = client_share
        #: The ticket of a RESUME_HELLO (None for a CLIENT_HELLO).
        self.ticket = ticket
        self.binder_at = binder_at


def read_hello(record: bytes) -> Hello:
    """Parse and negotiate a CLIENT_HELLO or RESUME_HELLO (section
    "Negotiation"); raises ChannelError with the spec's alert."""
    if record[0] == ALERT:
        raise _parse_alert(record)
    if record[0] not in (CLIENT_HELLO, RESUME_HELLO):
        raise ChannelError(f"unexpected record type 0x{record[0]:02x}", ALERT_DECODE_ERROR)
    reader = _Reader(record)
    reader.take(1)
    versions = reader.u16_list()
    suites = reader.u16_list()
    reader.take(RANDOM_SIZE)
    client_share = reader.take(SHARE_SIZE)
    ticket = None
    binder_at = len(record)
    if record[0] == RESUME_HELLO:
        size = reader.u16()
        if not 0 < size <= MAX_TICKET_SIZE:
            raise ChannelError("ticket length out of range", ALERT_DECODE_ERROR)
        ticket = reader.take(size)
        binder_at = reader.pos
        reader.take(MAC_SIZE)
    reader.end()
    version = next((v for v in SUPPORTED_VERSIONS if v in versions), None)
    if version is None:
        raise ChannelError("no protocol version in common", ALERT_PROTOCOL_VERSION)
    suite = next((s for s in SUPPORTED_SUITES if s in suites), None)
    if suite is None:
        raise ChannelError("no cipher suite in common")
    return Hello(record, version, suite, client_share, ticket, binder_at)


class ServerHandshake:
    """The server's side.  :meth:`receive_client_hello` reads the client's
    hello; then either :meth:`server_hello` (a full handshake:
    :meth:`receive_key_exchange` stores the client's key exchange,
    :meth:`derive` does the RSA decryption and key derivation, pure and
    thread-safe, so the server runs it in a thread pool) or, for a
    RESUME_HELLO whose ticket the caller accepted, :meth:`resume`.  Last,
    :meth:`receive_finished` checks the client's MAC and returns the
    server's FINISHED record (None after a resumption, whose FINISHED went
    first) and the channel.

    The caller decides between the two, and whether to ask for a cookie
    first (:meth:`receive_cookie`): those are policies of the server
    (tickets, load), not of the channel."""

    def __init__(
        self,
        identity: Any,
        identity_der: bytes,
        *,
        ephemeral: bytes | None = None,
        random: bytes | None = None,
        rekey_after: int = REKEY_AFTER_RECORDS,
    ) -> None:
        self._identity = identity
        self._identity_der = identity_der
        self._fixed_ephemeral = ephemeral
        self._random = random
        self._rekey_after = rekey_after
        self._transcript = b""
        self._secrets: HandshakeSecrets | None = None
        self._hello: Hello | None = None
        #: The PSK whose binder was found valid for the current hello.
        self._binder_checked: bytes | None = None
        #: The cookie the client echoed, if it did (once per connection).
        self.cookie: bytes | None = None
        self._cookie_seen = False
        self.resumed = False
        self.state = HandshakeState.AWAIT_HELLO

    def _require(self, state: HandshakeState) -> None:
        _require_state(self, state)

    def _failing(self, e: ChannelError) -> ChannelError:
        self.state = HandshakeState.FAILED
        return e

    def receive_cookie(self, record: bytes) -> None:
        """The client's echo of our cookie; its hello comes next."""
        self._require(HandshakeState.AWAIT_HELLO)
        try:
            if self._cookie_seen:
                raise ChannelError("a second cookie", ALERT_DECODE_ERROR)
            self.cookie = _cookie_echo(record)
        except ChannelError as e:
            raise self._failing(e) from None
        self._cookie_seen = True

    def read_hello(self, record: bytes) -> Hello:
        """Read the client's hello; the answer is the caller's choice."""
        self._require(HandshakeState.AWAIT_HELLO)
        try:
            hello = read_hello(record)
        except ChannelError as e:
            raise self._failing(e) from None
        self._hello = hello
        self._binder_checked = None
        self.state = HandshakeState.HELLO_READ
        return hello

    def hello_record(self) -> bytes:
        """The raw hello read last (what a cookie is bound to)."""
        assert self._hello is not None
        return self._hello.record

    def retry_with_cookie(self) -> None:
        """We answered the hello with a COOKIE: the hello comes again."""
        self._require(HandshakeState.HELLO_READ)
        self._hello = None
        self._binder_checked = None
        self.state = HandshakeState.AWAIT_HELLO

    def _ephemeral_shared(self, client_share: bytes) -> tuple[bytes, bytes]:
        if self._fixed_ephemeral is None:
            eph, share = crypto.x25519_keypair()
        else:
            eph, share = crypto.x25519_private_from_bytes(self._fixed_ephemeral)
        try:
            return share, crypto.dh(eph, client_share)
        except crypto.CryptoError as e:
            raise self._failing(ChannelError(str(e))) from None

    def _random_bytes(self) -> bytes:
        return self._random if self._random is not None else crypto.random_bytes(RANDOM_SIZE)

    def server_hello(self) -> bytes:
        """SERVER_HELLO: a full handshake (a RESUME_HELLO's ticket ignored)."""
        self._require(HandshakeState.HELLO_READ)
        hello = self._hello
        assert hello is not None
        share, self._shared = self._ephemeral_shared(hello.client_share)
        record = (
            struct.pack(">BHH", SERVER_HELLO, hello.version, hello.suite)
            + self._random_bytes()
            + share
            + struct.pack(">H", len(self._identity_der))
            + self._identity_der
        )
        self._transcript = hello.record + record
        self.state = HandshakeState.AWAIT_KEY_EXCHANGE
        return record

    def receive_client_hello(self, record: bytes) -> bytes:
        """A hello answered with a full handshake's SERVER_HELLO."""
        self.read_hello(record)
        return self.server_hello()

    def binder_valid(self, psk: bytes) -> bool:
        """Whether the RESUME_HELLO's binder proves knowledge of ``psk``."""
        hello = self._hello
        if hello is None or hello.ticket is None:
            return False
        expected = resume_binder(psk, hello.record[: hello.binder_at])
        valid = crypto.hmac_equal(hello.record[hello.binder_at :], expected)
        self._binder_checked = psk if valid else None
        return valid

    def resume(self, psk: bytes) -> list[bytes]:
        """SERVER_RESUME and the server's FINISHED, for a RESUME_HELLO
        whose ticket the caller opened, checked (:meth:`binder_valid`
        first) and redeemed; the client's FINISHED comes next."""
        self._require(HandshakeState.HELLO_READ)
        hello = self._hello
        assert hello is not None and hello.ticket is not None
        # The caller checked the binder before redeeming; checked again
        # only if that was for another PSK (the HMAC costs ~20 µs).
        if psk is not self._binder_checked and not self.binder_valid(psk):
            raise self._failing(ChannelError("resumption binder is wrong"))
        share, shared = self._ephemeral_shared(hello.client_share)
        record = struct.pack(">BHH", SERVER_RESUME, hello.version, hello.suite) + self._random_bytes() + share
        self._transcript = hello.record + record
        self._secrets = HandshakeSecrets(shared + psk, crypto.sha256(self._transcript), LABEL_RESUMED)
        finished = bytes((FINISHED,)) + crypto.hmac_sha256(
            self._secrets.server_finished_key, crypto.sha256(self._transcript)
        )
        self._transcript += finished
        self.resumed = True
        self.state = HandshakeState.AWAIT_FINISHED
        return [record, finished]

    def receive_key_exchange(self, record: bytes) -> None:
        self._require(HandshakeState.AWAIT_KEY_EXCHANGE)
        try:
            reader = _expect(record, KEY_EXCHANGE)
            self._encrypted = reader.take(reader.u16())
            reader.end()
        except ChannelError as e:
            raise self._failing(e) from None
        self._transcript += record
        self.state = HandshakeState.DERIVING

    def derive(self) -> None:
        """RSA-decrypt the premaster secret and derive the handshake secrets.

        Touches only this object's own fields, so it may run in a thread
        while the reactor holds the connection paused.
        """
        if self.state is not HandshakeState.DERIVING:
            raise ChannelError("derive called out of order")
        try:
            premaster = crypto.rsa_decrypt(self._identity, self._encrypted)
        except crypto.CryptoError:
            self.state = HandshakeState.FAILED
            raise ChannelError("key exchange did not decrypt") from None
        if len(premaster) != PREMASTER_SIZE:
            self.state = HandshakeState.FAILED
            raise ChannelError("premaster secret has the wrong size")
        self._secrets = HandshakeSecrets(self._shared + premaster, crypto.sha256(self._transcript))
        self.state = HandshakeState.AWAIT_FINISHED

    def receive_finished(self, record: bytes) -> tuple[bytes | None, SecureChannel]:
        self._require(HandshakeState.AWAIT_FINISHED)
        assert self._secrets is not None
        try:
            reader = _expect(record, FINISHED)
            mac = reader.take(MAC_SIZE)
            reader.end()
        except ChannelError as e:
            raise self._failing(e) from None
        expected = crypto.hmac_sha256(self._secrets.client_finished_key, crypto.sha256(self._transcript))
        if not crypto.hmac_equal(mac, expected):
            raise self._failing(ChannelError("client finished MAC is wrong"))
        finished: bytes | None = None
        if not self.resumed:
            self._transcript += record
            finished = bytes((FINISHED,)) + crypto.hmac_sha256(
                self._secrets.server_finished_key, crypto.sha256(self._transcript)
            )
        self.state = HandshakeState.ESTABLISHED
        channel = SecureChannel(
            self._secrets.server_secret,
            self._secrets.client_secret,
            rekey_after=self._rekey_after,
            resumption_secret=self._secrets.resumption_secret,
            resumed=self.resumed,
        )
        return finished, channel
