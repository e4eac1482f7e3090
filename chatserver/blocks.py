"""Flood blocks: an address, or a network, that keeps being refused has its
connections closed as soon as they are accepted, for a while.

Refusing one connection the ordinary way (read its hello, answer ALERT
``busy``, close) costs the reactor about 0.3 ms; a flood of hellos that
the handshake budget refuses could still take the whole core that way,
and everyone connected would wait behind it.  Closing a socket without
reading it costs a small fraction of that.  A client is blocked only after
many refusals in one second, far more than an honest one meets (it backs
off after the first); the block lasts ``seconds`` after the last of them,
and connections closed while blocked count as refusals too, so a flood
stays blocked for as long as it goes on and no longer.

A COOKIE sent instead of a SERVER_HELLO (under load) counts as a refusal
of the address: a flooder that echoes every cookie is never refused by a
budget it still has, but costs the server a hello's work each time.

Networks are /24 (IPv4) and /64 (IPv6), as for the other limits: one IPv6
host holds a whole /64 of addresses.  Only refusals of the network (its
handshake budget, its connection limit) count towards a network's block,
so one address, however much it is refused, cannot get its neighbours
blocked.  Peers that are not IP addresses (a unix socket) are never
blocked: they all share one name.
"""

from __future__ import annotations

from typing import Any

from chatserver.ratelimit import network_prefix


def _is_ip(address: str) -> bool:
    # network_prefix gives anything that is not an IP address back as it
    # is, and remembers its answers: no second parse on the refusal path.
    return network_prefix(address) != address


class Blocks:
    """``per_address`` and ``per_network`` refusals in one second block
    the address or network for ``seconds`` (0 refusals: never)."""

    #: Blocks remembered at most; past it, the expired ones are forgotten
    #: first, then the oldest (a block is a courtesy to the reactor).
    MAX_BLOCKS = 65536

    def __init__(self, clock: Any, per_address: int, per_network: int, seconds: float) -> None:
        self._clock = clock
        self._second = -1
        #: Refusals in the current second, by address and by network.
        self._counts: dict[str, int] = {}
        #: Until when each blocked address or network is blocked.
        self._until: dict[str, float] = {}
        self.configure(per_address, per_network, seconds)

    def configure(self, per_address: int, per_network: int, seconds: float) -> None:
        """Set the thresholds (a reload); blocks in place end no later
        than ``seconds`` from now."""
        self.per_address = per_address
        self.per_network = per_network
        self.seconds = seconds
        latest = self._clock.seconds() + seconds
        for key, end in self._until.items():
            if end > latest:
                self._until[key] = latest

    def _count(self, key: str, threshold: int, now: float) -> None:
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        if threshold and n >= threshold:
            until = self._until
            if key not in until and len(until) >= self.MAX_BLOCKS:
                self._forget(now)
            until.pop(key, None)  # re-inserted: the order is the age of the last renewal
            until[key] = now + self.seconds

    def _tick(self) -> float:
        now = self._clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._counts.clear()
        return now

    def refused(self, address: str, network: bool = False) -> None:
        """A connection from ``address`` was refused: for its network's
        sake (``network``: the network's budget or connection limit) or
        for its own."""
        if not _is_ip(address):
            return
        now = self._tick()
        self._count(address, self.per_address, now)
        if network:
            self._count("net:" + network_prefix(address), self.per_network, now)

    def blocked(self, address: str) -> bool:
        """Whether a connection from ``address`` is to be closed unread;
        if so it counts as a refusal of what is blocked (the address, or
        its network), which a flood that goes on renews."""
        until = self._until
        if not until:
            return False
        now = self._clock.seconds()
        for key in (address, "net:" + network_prefix(address)):
            end = until.get(key)
            if end is None:
                continue
            if end - now > self.seconds:
                # The clock went back, or block_seconds was lowered: no
                # block lasts longer than block_seconds from now.
                end = until[key] = now + self.seconds
            if now < end:
                self._tick()
                self._count(key, self.per_address if key == address else self.per_network, now)
                return True
            del until[key]
        return False

    def active(self) -> int:
        """How many addresses and networks are blocked now."""
        now = self._clock.seconds()
        return sum(1 for end in self._until.values() if end > now)

    def _forget(self, now: float) -> None:
        """Room for new blocks: the expired ones go, and if that is not
        enough, the tenth least recently renewed (one scan per tenth,
        not one per new block)."""
        until = self._until
        for key in [key for key, end in until.items() if end <= now]:
            del until[key]
        if len(until) >= self.MAX_BLOCKS:
            for key in list(until)[: max(1, self.MAX_BLOCKS // 10)]:
                del until[key]
