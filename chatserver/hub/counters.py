"""Rate limits and login throttles that all processes count together, in
the hub's Redis.

Two kinds of shared state, each changed by one Lua script, so that a
change is atomic whoever else changes the key:

* token buckets (``ratelimit.Limits`` sends what it took here, in batches,
  and is told each bucket's tokens after every process's takes);
* failure windows (``accounts.Accounts``: the times of the last failed
  logins of an account or an address).

Times are the calling process's clock (the server's, a test's fake one),
which NTP keeps within milliseconds of the others' on any server; a
clock behind the others' reads no refill until it catches up (elapsed
time is never negative, and a bucket's stamp never moves back, so no
refill is counted twice), one ahead reads at most its lead times the rate.

Every key expires once it carries no state (a bucket full again, a
window's newest failure older than its period), so Redis holds only the
keys of the clients who are being limited.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred

#: KEYS: the buckets; ARGV: now, then rate, burst, tokens taken, per bucket.  A
#: bucket may go into debt (to -burst): a process takes from its own copy
#: first and tells Redis afterwards, and what two processes took at once
#: is paid back before the next take, so the rate holds over time.
_TAKE = """
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 1])
  local burst = tonumber(ARGV[3 * i])
  local taken = tonumber(ARGV[3 * i + 1])
  local tokens = burst
  local stamp = now
  local held = redis.call('HMGET', key, 't', 's')
  if held[1] then
    local elapsed = math.max(0, now - tonumber(held[2]))
    tokens = math.min(burst, tonumber(held[1]) + elapsed * rate)
    stamp = math.max(now, tonumber(held[2]))
  end
  tokens = math.max(tokens - taken, -burst)
  if tokens < burst then
    redis.call('HSET', key, 't', tostring(tokens), 's', tostring(stamp))
    redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
  else
    redis.call('DEL', key)
  end
  out[i] = tostring(tokens)
end
return out
"""

#: KEYS: the windows; ARGV: now, then limit, period, per window.  A window
#: is a list of failure times, newest first, at most ``limit`` long.
#: Answers the seconds until each key may try again (0: now).
_WAIT = """
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local wait = 0
  local times = redis.call('LRANGE', key, 0, limit - 1)
  if #times >= limit then
    wait = math.max(0, tonumber(times[limit]) + period - now)
  end
  out[i] = tostring(wait)
end
return out
"""

#: KEYS: the windows; ARGV: now, then limit, period, per window.  One
#: failure now in each.
_FAIL = """
local now = ARGV[1]
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local period_ms = math.ceil(tonumber(ARGV[2 * i + 1]) * 1000)
  redis.call('LPUSH', key, now)
  redis.call('LTRIM', key, 0, limit - 1)
  redis.call('PEXPIRE', key, period_ms)
end
return 0
"""

#: One bucket's change: (its name, rate per second, burst, tokens taken).
Take = tuple[str, float, float, int]
#: One failure window: (its name, how many failures, in how many seconds).
Window = tuple[str, int, float]


class RedisCounters:
    """Implements ``ratelimit.SharedBuckets`` and ``accounts.SharedFailures``
    over a hub's command link (``command`` runs one Redis command)."""

    def __init__(self, command: Callable[..., Deferred[Any]], prefix: str) -> None:
        self._command = command
        #: Every key starts with it: the hub's prefix and database.
        self.prefix = prefix

    def take(self, now: float, takes: Sequence[Take]) -> Deferred[list[float]]:
        keys = [f"{self.prefix}rl:{name}" for name, _, _, _ in takes]
        args: list[Any] = [repr(float(now))]
        for _, rate, burst, taken in takes:
            args += [repr(float(rate)), repr(float(burst)), str(int(taken))]
        d = self._command("EVAL", _TAKE, len(keys), *keys, *args)
        return d.addCallback(_floats)

    def retry_after(self, now: float, windows: Sequence[Window]) -> Deferred[list[float]]:
        return self._command("EVAL", _WAIT, *self._window_args(now, windows)).addCallback(_floats)

    def fail(self, now: float, windows: Sequence[Window]) -> Deferred[Any]:
        return self._command("EVAL", _FAIL, *self._window_args(now, windows))

    def _window_args(self, now: float, windows: Sequence[Window]) -> list[Any]:
        keys = [self._failures_key(name) for name, _, _ in windows]
        args: list[Any] = [repr(float(now))]
        for _, limit, period in windows:
            args += [str(int(limit)), repr(float(period))]
        return [len(keys), *keys, *args]

    def clear(self, name: str) -> Deferred[Any]:
        return self._command("DEL", self._failures_key(name))

    def _failures_key(self, name: str) -> str:
        return f"{self.prefix}lf:{name}"


def _floats(values: list[Any]) -> list[float]:
    return [float(v) for v in values]
