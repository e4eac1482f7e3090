"""Session resumption tickets: issued at login, redeemed once, instead of RSA.

A ticket is opaque to the client.  It is sealed here with AES-256-GCM
under the current *ticket key*; it carries its expiry, the hash of the
session token it was issued with, and its PSK.  The client derives the
same PSK from the channel it received the ticket on (``channel.ticket_psk``)
and proves it holds it with the RESUME_HELLO's binder; the PSK itself
never travels.

The keys live in the database (a restart must open what was sealed before
it) and rotate every ``rotation`` seconds; a key is kept until no ticket
sealed under it can still be valid.  A ticket is single-use: redeeming
records its hash, in the same transaction that checks that its session
token is still live, so a logout or a disabled account (both revoke the
token) ends its tickets too.  Any ticket that does not redeem gets a full
handshake, never an error: it may just be old.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from chatserver.accounts import token_hash
from chatserver.storage.interface import Storage, UserRecord
from chatserver.wire import channel, crypto

log = Logger(namespace="chatserver.tickets")

#: Associated data of a sealed ticket, followed by its key id.
TICKET_LABEL = b"chatserver/1 ticket"
KEY_ID = struct.Struct(">I")
EXPIRY = struct.Struct(">Q")
NONCE_SIZE = 12
#: expires_at, token hash, PSK.
PLAINTEXT_SIZE = EXPIRY.size + 32 + 32
TICKET_SIZE = KEY_ID.size + NONCE_SIZE + PLAINTEXT_SIZE + crypto.AEAD.TAG_SIZE


class Opened:
    """What an authentic, unexpired ticket says."""

    __slots__ = ("ticket_hash", "expires_at", "token_hash", "psk")

    def __init__(self, ticket_hash: bytes, expires_at: int, token_hash: str, psk: bytes) -> None:
        self.ticket_hash = ticket_hash
        self.expires_at = expires_at
        self.token_hash = token_hash
        self.psk = psk


class Tickets:
    """Issues, opens and redeems tickets; keeps and rotates the keys."""

    #: Seconds between the taking of a ticket and its commit.
    FLUSH_SECONDS = 0.05

    def __init__(
        self, db: Storage, clock: Any, lifetime: float, rotation: float, reactor: Any = None
    ) -> None:
        """``lifetime``: seconds a ticket is valid (0: no resumption);
        ``rotation``: seconds a ticket key seals new tickets; ``clock``
        tells the time, ``reactor`` (default: the clock) runs the flushes,
        which must happen whatever the clock says."""
        self._db = db
        self._clock = clock
        self._reactor = reactor if reactor is not None else clock
        self.lifetime = int(lifetime)
        self.rotation = int(rotation)
        #: key id -> (AEAD context, created_at)
        self._keys: dict[int, tuple[crypto.AEAD, int]] = {}
        self._current: int | None = None
        self._rotating: Deferred[None] | None = None
        #: Tickets taken and not yet written: hash -> expires_at.
        self._unsaved: dict[bytes, int] = {}
        self._flush_call: Any = None
        self._timer = task.LoopingCall(self.rotate_if_due)
        self._timer.clock = clock

    @property
    def enabled(self) -> bool:
        return self.lifetime > 0

    def _now(self) -> int:
        return int(self._clock.seconds())

    def load(self) -> Deferred[None]:
        """Read the keys (making the first, or a due one), then keep
        rotating them.  Before the server listens."""
        if not self.enabled:
            return succeed(None)
        d: Deferred[Any] = self._db.ticket_keys()
        d.addCallback(self._install)
        d.addCallback(lambda _: self.rotate_if_due())
        d.addCallback(lambda _: self._start_timer())
        return d

    def _start_timer(self) -> None:
        if not self._timer.running:
            # Often enough that a key seals for about ``rotation`` seconds.
            self._timer.start(max(1, min(self.rotation // 8, 3600)), now=False)

    def stop(self) -> Deferred[None]:
        """Stop rotating; the last taken tickets are written."""
        if self._timer.running:
            self._timer.stop()
        return self.flush()

    def _install(self, rows: list[tuple[int, bytes, int]]) -> None:
        self._keys = {key_id: (crypto.AEAD(secret), created) for key_id, secret, created in rows}
        self._current = max(self._keys) if self._keys else None

    def rotate_if_due(self) -> Deferred[None] | None:
        if self._rotating is not None:
            return None  # one at a time: the keys are installed when it commits
        now = self._now()
        if self._current is not None and now - self._keys[self._current][1] < self.rotation:
            return None
        # A key sealed for up to ``rotation`` seconds (plus a timer's
        # slack) and its tickets live ``lifetime`` more: keep it that long.
        drop_before = now - 2 * self.rotation - self.lifetime
        d: Deferred[Any] = self._db.rotate_ticket_keys(crypto.random_bytes(32), now, drop_before)
        d.addCallback(self._install)
        d.addCallback(lambda _: log.info("ticket key rotated"))
        d.addErrback(lambda f: log.failure("ticket key rotation failed; the current key stays", f))
        self._rotating = d

        def done(result: Any) -> Any:
            self._rotating = None
            return result

        return d.addBoth(done)

    # --- issue --------------------------------------------------------------

    def issue(self, on: channel.SecureChannel, token: str) -> dict[str, Any] | None:
        """A ``ticket`` event for the client of ``on``, bound to the
        session ``token`` it logged in with (None: resumption is off)."""
        if not self.enabled or self._current is None or on.resumption_secret is None:
            return None
        nonce = crypto.random_bytes(channel.TICKET_NONCE_SIZE)
        psk = channel.ticket_psk(on.resumption_secret, nonce)
        plaintext = EXPIRY.pack(self._now() + self.lifetime) + bytes.fromhex(token_hash(token)) + psk
        key_id = self._current
        header = KEY_ID.pack(key_id)
        seal_nonce = crypto.random_bytes(NONCE_SIZE)
        sealed = self._keys[key_id][0].seal(seal_nonce, plaintext, TICKET_LABEL + header)
        return {
            "type": "ticket",
            "ticket": base64.b64encode(header + seal_nonce + sealed).decode("ascii"),
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "lifetime": self.lifetime,
        }

    # --- redeem -------------------------------------------------------------

    def open(self, ticket: bytes) -> Opened | None:
        """The contents of an authentic ticket that has not expired; None
        for anything else (a key rotated away, tampering, age)."""
        if not self.enabled or len(ticket) != TICKET_SIZE:
            return None
        (key_id,) = KEY_ID.unpack_from(ticket)
        key = self._keys.get(key_id)
        if key is None:
            return None
        header = ticket[: KEY_ID.size]
        try:
            plaintext = key[0].open(
                ticket[KEY_ID.size : KEY_ID.size + NONCE_SIZE],
                ticket[KEY_ID.size + NONCE_SIZE :],
                TICKET_LABEL + header,
            )
        except crypto.CryptoError:
            return None
        (expires_at,) = EXPIRY.unpack_from(plaintext)
        if expires_at <= self._now():
            return None
        return Opened(
            crypto.sha256(ticket),
            expires_at,
            plaintext[EXPIRY.size : EXPIRY.size + 32].hex(),
            plaintext[EXPIRY.size + 32 :],
        )

    def redeem(self, opened: Opened) -> Deferred[UserRecord | None]:
        """Use the ticket up; the account of its session token if the
        ticket was unused and the token is still live, else None.

        A ticket counts as taken the moment this is called (a second
        attempt gets False at once), and the database learns of it in the
        next batch, within FLUSH_SECONDS: one commit, hence one fsync,
        for every ticket taken meanwhile, instead of one each.  A crash in
        that window could let one of those tickets be taken once more;
        that gives nobody anything, since taking a ticket is only useful
        with its PSK, which the ticket's owner alone has."""
        ticket_hash = opened.ticket_hash
        if ticket_hash in self._unsaved:
            return succeed(None)
        self._unsaved[ticket_hash] = opened.expires_at
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(self.FLUSH_SECONDS, self.flush)
        d = self._db.ticket_state(ticket_hash, opened.token_hash, self._now())
        return d.addCallback(lambda state: None if state[1] else state[0])

    def flush(self) -> Deferred[None]:
        """Write the tickets taken since the last flush."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if not self._unsaved:
            return succeed(None)
        rows = list(self._unsaved.items())
        d = self._db.add_redeemed_tickets(rows)

        def saved(_: Any) -> None:
            for ticket_hash, _expiry in rows:
                self._unsaved.pop(ticket_hash, None)

        def failed(failure: Any) -> None:
            # They stay unsaved (and refused here) until a flush succeeds.
            log.failure("recording taken tickets failed; retrying", failure)
            if self._flush_call is None and self._timer.running:
                self._flush_call = self._reactor.callLater(self.FLUSH_SECONDS, self.flush)

        return d.addCallbacks(saved, failed)
