"""Token buckets for rate limits, and the networks limits count by.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second;
each action takes one.  An action on an empty bucket is refused with the
time until a token is back.

Where several processes serve one community (workers, nodes), the buckets
of an account, an address and a network are shared (``Limits.share``): an
account's messages count the same on every process, and reconnecting to
another one refills nothing.  A check never waits for the network: it takes
from this process's copy of the bucket, and every SYNC_SECONDS what was
taken here goes to the shared bucket, whose answer (everyone's takes)
replaces the copy.  So processes may together let through up to one
burst more than the limit within SYNC_SECONDS, which the shared bucket
then holds as debt: the rate holds over time.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Protocol, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

log = Logger(namespace="chatserver.limits")

#: The kinds of key that are shared (a connection is only ever here).
SHARED_KINDS = frozenset({"user", "address", "prefix"})

#: How often what was taken here goes to the shared buckets.
SYNC_SECONDS = 0.1

#: Buckets with takes not yet shared, at most (a flood of addresses must
#: not grow it without bound: beyond it, takes are counted here only).
MAX_UNSYNCED = 10_000


class SharedBuckets(Protocol):
    """Buckets that all processes take from (``hub/counters.py``)."""

    def take(self, now: float, takes: Sequence[tuple[str, float, float, int]]) -> Deferred[list[float]]:
        """For each (bucket name, rate, burst, tokens taken here): take
        them at ``now``; fires with each bucket's tokens after every
        process's takes."""
        ...


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
        self._shared: SharedBuckets | None = None
        self._reactor: Any = None
        #: (action, key) -> tokens taken here since the last sync
        self._unsynced: dict[tuple[str, Any], int] = {}
        #: When the first of them was taken: the batch is counted in the
        #: shared buckets as of then.  Counted as of its sending, takes from
        #: a full bucket would lose the refill between (a bucket is never
        #: above its burst), and a late sync would leave every process
        #: short of tokens it has.
        self._unsynced_since = 0.0
        self._sync_call: Any = None
        self._syncing = False
        self._sync_failing = False
        #: For the tests and the metrics.
        self.stats = {"syncs": 0, "sync_failures": 0}

    def share(self, shared: SharedBuckets, reactor: Any) -> None:
        """Count the buckets of accounts, addresses and networks together
        with the other processes (``reactor`` times the syncs)."""
        self._shared = shared
        self._reactor = reactor

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
        wait = bucket.take(now)
        if not wait and self._shared is not None and type(key) is tuple and key[0] in SHARED_KINDS:
            self._taken_here((action, key), now)
        return wait

    # --- sharing -------------------------------------------------------------------

    def _taken_here(self, bucket_key: tuple[str, Any], now: float) -> None:
        if not self._unsynced:
            self._unsynced_since = now
        taken = self._unsynced.get(bucket_key)
        if taken is not None:
            self._unsynced[bucket_key] = taken + 1
        elif len(self._unsynced) < MAX_UNSYNCED:
            self._unsynced[bucket_key] = 1
        if self._sync_call is None and not self._syncing:
            self._sync_call = self._reactor.callLater(SYNC_SECONDS, self._sync)

    @property
    def settled(self) -> bool:
        """Whether everything taken here has been shared (or given up on)."""
        return not self._unsynced and not self._syncing

    def load(self, action_keys: Sequence[tuple[str, Any]]) -> Deferred[None]:
        """Read these buckets' shared state into this process's copies (an
        account logging in here: what it took elsewhere counts).  Fires
        when done, or at once without sharing; never fails (if the shared
        buckets cannot be read, this process's count goes on alone)."""
        if self._shared is None:
            return succeed(None)
        wanted = [k for k in action_keys if k[0] in self.rules]
        return self._exchange({k: 0 for k in wanted})

    def _sync(self) -> None:
        self._sync_call = None
        batch, self._unsynced = self._unsynced, {}
        if not batch:
            return
        since = self._unsynced_since
        self._syncing = True

        def done(_: Any) -> None:
            self._syncing = False
            if self._unsynced and self._sync_call is None and self._shared is not None:
                self._sync_call = self._reactor.callLater(SYNC_SECONDS, self._sync)

        self._exchange(batch, since).addCallback(done)

    def _exchange(self, batch: dict[tuple[str, Any], int], at: float | None = None) -> Deferred[None]:
        """Send ``batch``'s takes, counted as of ``at`` (now if None); the
        answer is each bucket as of then."""
        assert self._shared is not None
        keys = list(batch)
        takes = []
        for action, key in keys:
            rate, burst = self.rules[action]
            takes.append((f"{action}:{key[0]}:{key[1]}", rate, burst, batch[(action, key)]))
        sent = self._clock.seconds() if at is None else at
        d: Deferred[Any] = self._shared.take(sent, takes)
        return d.addCallbacks(self._synced, self._sync_failed, callbackArgs=(keys, sent))

    def _synced(self, tokens: list[float], keys: list[tuple[str, Any]], sent: float) -> None:
        self.stats["syncs"] += 1
        if self._sync_failing:
            self._sync_failing = False
            log.info("rate limits are shared again")
        now = self._clock.seconds()
        for bucket_key, shared_tokens in zip(keys, tokens, strict=True):
            rule = self.rules.get(bucket_key[0])
            if rule is None:
                continue  # no longer limited (a reload)
            bucket = self._buckets.get(bucket_key)
            if bucket is None:
                if shared_tokens >= rule[1]:
                    continue  # full: a new bucket would be the same
                bucket = self._buckets[bucket_key] = TokenBucket(rule[0], rule[1], now)
            # The answer is the bucket as it was when the exchange left: it
            # has refilled since, and what was taken here since is not in it.
            refilled = min(rule[1], shared_tokens + max(0.0, now - sent) * rule[0])
            bucket.tokens = refilled - self._unsynced.get(bucket_key, 0)
            bucket.stamp = now

    def _sync_failed(self, failure: Any) -> None:
        # What this batch took is counted here only: losing a sync costs
        # the limit a little precision, never a request.
        self.stats["sync_failures"] += 1
        if not self._sync_failing:
            self._sync_failing = True
            log.warn("rate limits counted per process while the shared counts fail: {why}", why=failure.value)

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled completely: they carry no state."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for key in full:
            del self._buckets[key]

    def forget(self, key: Any) -> None:
        for action in self.rules:
            self._buckets.pop((action, key), None)

    def replace_rules(self, rules: dict[str, tuple[float, float]]) -> None:
        """New limits (a reload): buckets start again, full, under them
        (the shared ones keep their state, refilled to the new bursts)."""
        self.rules = rules
        self._buckets.clear()
        self._unsynced = {k: n for k, n in self._unsynced.items() if k[0] in rules}

    def stop(self) -> None:
        """No more syncs (the server stopping)."""
        self._shared = None
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        self._sync_call = None
