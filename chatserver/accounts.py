"""Accounts: registration and login, with throttling of failed attempts.

Password hashes are checked in the crypto thread pool, in its ``login``
queue: a flood of handshakes cannot delay them (see workers.py).  An unknown user and
a wrong password take the same path, including one scrypt run against a
dummy hash, and end in the same error, so neither the answer nor its timing
tells whether a name exists.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import time
from typing import Any, Protocol, Sequence

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from chatserver.config import Settings
from chatserver.storage import queries, sqlite
from chatserver.storage.interface import Storage
from chatserver.wire import crypto
from chatserver.wire.errors import Refused
from chatserver.workers import CryptoPool

audit = Logger(namespace="chatserver.audit")
log = Logger(namespace="chatserver.accounts")

ROLES = ("user", "admin")


class AuthError(Refused):
    """Login or registration refused; ``code`` and message go to the client."""


def invalid_credentials() -> AuthError:
    return AuthError("auth_failed", "invalid username or password")


@dataclasses.dataclass(frozen=True)
class Account:
    name: str
    role: str


class FailureWindow:
    """Counts failures per key over a sliding window of ``period`` seconds.

    At most ``limit`` timestamps are kept per key and at most ``max_keys``
    keys (the oldest key goes first), so an attacker cycling through names
    or addresses cannot grow it without bound.
    """

    def __init__(self, clock: Any, limit: int, period: float, max_keys: int = 100_000) -> None:
        self._clock = clock
        self.limit = limit
        self.period = period
        self.max_keys = max_keys
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        times = self._failures.get(key)
        if not times:
            return 0.0
        now = self._clock.seconds()
        while times and times[0] <= now - self.period:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.period - now

    def fail(self, key: str) -> None:
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = collections.deque(maxlen=self.limit)
            if len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(self._clock.seconds())

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class SharedFailures(Protocol):
    """Failure windows that all processes count in (``hub/counters.py``);
    a window is (its name, failures allowed, within seconds)."""

    def retry_after(self, now: float, windows: Sequence[tuple[str, int, float]]) -> Deferred[list[float]]: ...

    def fail(self, now: float, windows: Sequence[tuple[str, int, float]]) -> Deferred[Any]: ...

    def clear(self, name: str) -> Deferred[Any]: ...


class LoginThrottle:
    """Failed logins (and registrations' refusals) per account and per
    address: counted here, and, where several processes serve one
    community, also where they all count (``share``), so that spreading
    the attempts over workers or nodes gains nothing.

    This process's windows stay the floor: if the shared ones cannot be
    read, what was seen here still throttles."""

    def __init__(self, clock: Any, settings: Settings) -> None:
        self.per_account = settings.login_failures_per_account
        self.per_address = settings.login_failures_per_address
        self.period = settings.login_lockout
        self._clock = clock
        self._by_account = FailureWindow(clock, self.per_account, self.period)
        self._by_address = FailureWindow(clock, self.per_address, self.period)
        self._shared: SharedFailures | None = None
        self._failing = False

    def share(self, shared: SharedFailures) -> None:
        self._shared = shared

    def _windows(self, account: str | None, address: str) -> list[tuple[str, int, float]]:
        windows = [(f"address:{address}", self.per_address, self.period)]
        if account is not None:
            windows.append((f"user:{account}", self.per_account, self.period))
        return windows

    def retry_after(self, account: str | None, address: str) -> Deferred[float]:
        """Seconds until this account (None: any) may try again from this
        address; 0 if it may now."""
        here = self._by_address.retry_after(address)
        if account is not None:
            here = max(here, self._by_account.retry_after(account))
        if self._shared is None or here > 0:
            return succeed(here)
        d = self._shared.retry_after(self._clock.seconds(), self._windows(account, address))
        return d.addCallbacks(lambda waits: max(waits), self._not_shared, errbackArgs=(here,))

    def _not_shared(self, failure: Any, here: float) -> float:
        if not self._failing:
            self._failing = True
            log.warn(
                "login throttles counted per process while the shared counts fail: {why}", why=failure.value
            )
        return here

    def fail(self, account: str | None, address: str) -> Deferred[Any]:
        """Count a failure; fires once it is counted everywhere (the
        caller need not wait: this process's count is at once)."""
        self._by_address.fail(address)
        if account is not None:
            self._by_account.fail(account)
        if self._shared is None:
            return succeed(None)
        d = self._shared.fail(self._clock.seconds(), self._windows(account, address))
        return d.addCallbacks(self._shared_again, self._not_shared, errbackArgs=(0.0,))

    def _shared_again(self, _: Any) -> None:
        if self._failing:
            self._failing = False
            log.info("login throttles are shared again")

    def succeeded(self, account: str) -> Deferred[Any]:
        self._by_account.clear(account)
        if self._shared is None:
            return succeed(None)
        return self._shared.clear(f"user:{account}").addErrback(self._not_shared, 0.0)


class Accounts:
    #: How old an account record read by a resumption may be for the token
    #: login that follows it (a disable in between is seen after this).
    KNOWN_SECONDS = 2.0

    def __init__(self, settings: Settings, store: Storage, pool: CryptoPool, clock: Any) -> None:
        self._clock = clock
        self._settings = settings
        self._store = store
        self._pool = pool
        self.throttle = LoginThrottle(clock, settings)
        # Verified against when the user does not exist, so that path costs
        # one scrypt run too.  Made lazily: start-up should not pay for it.
        self._dummy_hash: str | None = None
        #: ``[accounts] allow_registration``: yes, no or invite (a SIGHUP
        #: may change it, see tap.py).
        self.registration = settings.allow_registration

    @inlineCallbacks
    def _throttle(self, name: str, address: str) -> Any:
        wait = yield self.throttle.retry_after(name, address)
        if wait > 0:
            raise AuthError("throttled", "too many failed attempts; try again later", retry_after=wait)

    @inlineCallbacks
    def login(self, name: str, password: str, address: str) -> Any:
        """Fires with an :class:`Account` or fails with :class:`AuthError`."""
        yield self._throttle(name, address)
        record = yield self._store.get_user(name)
        if record is None:
            if self._dummy_hash is None:
                self._dummy_hash = yield self._pool.run(
                    crypto.hash_password, "dummy password", self._settings.password_hash_cost, kind="login"
                )
            stored = self._dummy_hash
        else:
            stored = record.password_hash
        ok = yield self._pool.run(crypto.verify_password, password, stored, kind="login")
        if record is None or not ok:
            self.throttle.fail(name, address)
            audit.warn("login failed for {user} from {address}", user=name, address=address)
            raise invalid_credentials()
        if record.disabled:
            audit.warn("login to disabled account {user} from {address}", user=name, address=address)
            raise AuthError("account_disabled", "this account is disabled")
        self.throttle.succeeded(name)
        audit.info("login {user} from {address}", user=name, address=address)
        self._logged_in(record.name)
        return Account(record.name, record.role)

    def issue_token(self, name: str) -> Any:
        """A new session token for ``name``; only its hash is stored."""
        token = base64.urlsafe_b64encode(crypto.random_bytes(32)).rstrip(b"=").decode("ascii")
        now = int(self._clock.seconds())
        d = self._store.add_token(token_hash(token), name, now, now + int(self._settings.session_token_ttl))
        return d.addCallback(lambda _: token)

    @inlineCallbacks
    def login_token(self, name: str, token: str, address: str, known: Any = None) -> Any:
        """Log in with a session token: no password hash, same throttling.

        ``known``: (token hash, account record, when read) from the
        resumption of this connection, read moments ago with the token's
        liveness; used instead of reading it again if it is of this token
        and at most KNOWN_SECONDS old."""
        yield self._throttle(name, address)
        hashed = token_hash(token)
        now = self._clock.seconds()
        if known is not None and known[0] == hashed and now - known[2] <= self.KNOWN_SECONDS:
            record = known[1]
        else:
            record = yield self._store.token_account(hashed, int(now))
        if record is None or record.name != name:
            self.throttle.fail(name, address)
            audit.warn("token login failed for {user} from {address}", user=name, address=address)
            raise AuthError("auth_failed", "invalid or expired session token")
        if record.disabled:
            raise AuthError("account_disabled", "this account is disabled")
        audit.info("token login {user} from {address}", user=name, address=address)
        self._logged_in(record.name)
        return Account(record.name, record.role)

    def _logged_in(self, name: str) -> None:
        # With the next group commit, not a commit of its own: a burst of
        # logins (a restart's reconnections) costs no extra transactions,
        # and a later login of the same account replaces one still waiting.
        self._store.note(("last_login", name), ("set_last_login", (name, int(self._clock.seconds()))))

    def revoke_token(self, token: str) -> Any:
        return self._store.revoke_token(token_hash(token))

    @inlineCallbacks
    def register(self, name: str, password: str, address: str, invite: str | None = None) -> Any:
        """Fires with the new :class:`Account` or fails with :class:`AuthError`.

        In ``invite`` mode the account is made only with a usable invite
        code, which is consumed in the same transaction; in ``yes`` mode an
        invite code is neither checked nor consumed."""
        mode = self.registration
        if mode == "no":
            raise AuthError("registration_closed", "registration is disabled on this server")
        # "username taken" necessarily tells that a name exists, so each one
        # counts as a failure of the address: registration cannot be used
        # to enumerate names faster than login could.  So does a bad invite
        # code, so that codes cannot be guessed faster either.
        wait = yield self.throttle.retry_after(None, address)
        if wait > 0:
            raise AuthError("throttled", "too many attempts; try again later", retry_after=wait)
        if mode == "invite" and invite is None:
            raise AuthError(
                "invite_required", "this server registers new accounts by invitation only", field="invite"
            )
        # The hash comes first on both paths, so the time of the answer does
        # not tell a usable code from another.
        password_hash = yield self._pool.run(
            crypto.hash_password, password, self._settings.password_hash_cost, kind="login"
        )
        if mode == "invite":
            assert invite is not None
            outcome, invite_id = yield self._store.register_with_invite(
                invite_hash(invite),
                name,
                password_hash,
                int(self._clock.seconds()),
            )
            if outcome == "invite_invalid":
                self.throttle.fail(None, address)
                audit.warn("registration with an unusable invite code from {address}", address=address)
                raise AuthError(
                    "invite_invalid",
                    "that invite code is not valid (unknown, used, expired or revoked)",
                    field="invite",
                )
        else:
            added = yield self._store.add_user(name, password_hash, "user")
            outcome, invite_id = ("ok" if added else "username_taken"), None
        if outcome == "username_taken":
            self.throttle.fail(None, address)
            raise AuthError("username_taken", "that username is taken")
        if invite_id is None:
            audit.info("registered {user} from {address}", user=name, address=address)
        else:
            audit.info(
                "registered {user} from {address} with invite {invite}",
                user=name,
                address=address,
                invite=invite_id,
            )
        return Account(name, "user")


def token_hash(token: str) -> str:
    return crypto.sha256(token.encode("ascii")).hex()


def invite_hash(code: str) -> str:
    """The stored form of an invite code.  Codes are base32, which people
    may retype in capitals or with spaces: those do not matter."""
    return crypto.sha256("".join(code.split()).lower().encode("utf-8")).hex()


#: Random bytes in an invite code: 128 bits, 26 characters of base32.
INVITE_BYTES = 16


def new_invite_code() -> str:
    return base64.b32encode(crypto.random_bytes(INVITE_BYTES)).decode("ascii").rstrip("=").lower()


def make_invites_now(
    conn: Any, count: int, ttl: float, by: str, now: float | None = None
) -> list[tuple[int, str, int]]:
    """The admin tool's invites: (id, code, expires_at) for ``count`` new
    single-use codes valid for ``ttl`` seconds, all in one transaction.  The
    codes are returned once and not kept."""
    now_s = int(time.time() if now is None else now)
    expires_at = now_s + int(ttl)
    codes = [new_invite_code() for _ in range(count)]
    ids = _run(conn, queries.add_registration_invites, [invite_hash(c) for c in codes], by, now_s, expires_at)
    return [(i, c, expires_at) for i, c in zip(ids, codes, strict=True)]


def add_user_now(conn: Any, name: str, password: str, role: str, cost: int) -> bool:
    """The admin tool's synchronous registration (no throttling)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    return bool(_run(conn, queries.add_user, name, crypto.hash_password(password, cost), role))


def _run(db: Any, query: Any, *args: Any) -> Any:
    """``query`` in one transaction on ``db``: a storage.direct.DirectDatabase
    (any backend), or a plain SQLite connection."""
    if hasattr(db, "run"):
        return db.run(query, *args)
    return sqlite.run_now(db, query, *args)


__all__ = [
    "Account",
    "Accounts",
    "AuthError",
    "FailureWindow",
    "LoginThrottle",
    "add_user_now",
    "invite_hash",
    "make_invites_now",
    "new_invite_code",
]
