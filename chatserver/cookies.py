"""Handshake cookies: under load, RSA only for a client that answers.

When the queue of full-handshake work is long, the server answers a hello
with a COOKIE instead of its SERVER_HELLO, and does the RSA decryption
only for a client that sends the cookie back, followed by the same hello.
The cookie is an HMAC, under a secret that changes every
``SECRET_SECONDS``, of the client's address and its hello: the server
keeps nothing per client to check it, and a cookie is worth nothing from
another address, for another hello or after two periods (the idea of
WireGuard's cookie reply, section 5.4.7 of its paper).

Over TCP the address is already proven by the TCP handshake; what the
round trip adds is that a flood must read and answer what the server
says, connection by connection, before it costs the server anything.
"""

from __future__ import annotations

from typing import Any

from chatserver.wire import crypto

LABEL = b"chatserver/1 cookie"


class Cookies:
    #: Seconds a cookie secret is used; a cookie stays valid up to twice this.
    SECRET_SECONDS = 120.0

    def __init__(self, clock: Any, threshold: int) -> None:
        """``threshold``: full-handshake jobs queued or running from which
        a cookie is required (0: always)."""
        self._clock = clock
        self.threshold = threshold
        self._epoch = -1
        self._secrets: tuple[bytes, bytes] = (b"", b"")

    def required(self, pool: Any) -> bool:
        return bool(pool.pending_by_kind["handshake"] >= self.threshold)

    def _current(self) -> tuple[bytes, bytes]:
        """(this period's secret, the previous one's)."""
        epoch = int(self._clock.seconds() // self.SECRET_SECONDS)
        if epoch != self._epoch:
            previous = self._secrets[0] if epoch == self._epoch + 1 else crypto.random_bytes(32)
            self._secrets = (crypto.random_bytes(32), previous)
            self._epoch = epoch
        return self._secrets

    @staticmethod
    def _mac(secret: bytes, peer: str, hello: bytes) -> bytes:
        address = peer.encode("utf-8", "replace")
        return crypto.hmac_sha256(
            secret, LABEL + bytes((len(address) & 0xFF,)) + address + crypto.sha256(hello)
        )

    def make(self, peer: str, hello: bytes) -> bytes:
        return self._mac(self._current()[0], peer, hello)

    def valid(self, cookie: bytes | None, peer: str, hello: bytes) -> bool:
        if cookie is None:
            return False
        return any(crypto.hmac_equal(cookie, self._mac(secret, peer, hello)) for secret in self._current())
