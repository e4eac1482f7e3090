"""Where a device keeps its secrets at rest: its account, its Olm and
Megolm sessions, what it decrypted, and what it knows of other devices.

One SQLite file per device (``device.db``, mode 0600).  Every value is
sealed with AES-256-GCM under the *store key*, with a fresh random nonce,
and with the value's name as associated data, so a value cannot be moved
to another name or changed without the open failing.  vodozemac's own
pickles are sealed the same way (they are also encrypted by vodozemac
under the store key).

The store key is kept in one of two places, chosen when the store is
made and remembered in ``store.json``:

``keyring``
   The desktop's secret service (GNOME Keyring, KWallet, macOS Keychain,
   Windows Credential Locker) through ``keyring``: nothing to type, and the
   key is locked with the user's session.  Preferred wherever one exists.
``passphrase``
   Where there is none (a server, a headless machine), the key is derived
   from a passphrase with scrypt (2^17, r=8, p=1) and a random salt kept
   in ``store.json``; a sealed check value there tells a wrong passphrase
   from a damaged store.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator

from chatserver.wire import crypto, e2e

#: The keyring service name of store keys.
KEYRING_SERVICE = "chatclient-e2e"
#: scrypt's cost for a passphrase (about 0.3 s here: once per start).
PASSPHRASE_LOG2_N = 17
_AAD = b"chatclient-store-v1\x00"
_CHECK = "store-key-check"


class StoreError(Exception):
    """The store cannot be opened: a wrong passphrase, no key in the
    keyring, a damaged file.  The message is one line for the user."""


def open_store(
    directory: Path, passphrase: Callable[[], str] | None = None, prefer: str = "auto", **options: Any
) -> DeviceStore:
    """The device store in ``directory``, made if there is none."""
    key, _ = StoreKey(directory, passphrase, **options).open_or_make(prefer)
    return DeviceStore(directory, key)


def default_root() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "chatclient" / "devices"


def store_dir(root: Path, server: str, user: str) -> Path:
    """The directory of this user's device on ``server`` (the name of the
    deployment, as the known hosts file has it: its first node)."""
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in server)
    return root / f"{user}@{safe}"


def keyring_usable() -> bool:
    """Whether a real secret service is there (not keyring's fail backend)."""
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        return not isinstance(backend, fail.Keyring) and getattr(backend, "priority", 1) > 0
    except Exception:
        return False


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StoreKey:
    """Finds, or makes, the key of the store in ``directory``."""

    def __init__(
        self, directory: Path, passphrase: Callable[[], str] | None = None, log2_n: int = PASSPHRASE_LOG2_N
    ) -> None:
        """``passphrase()`` is asked only if the store uses one (or a new
        store must, having no keyring).  ``log2_n``: scrypt's cost for a
        new store (an existing one keeps its own)."""
        self.directory = directory
        self._passphrase = passphrase
        self._log2_n = log2_n

    @property
    def _meta_path(self) -> Path:
        return self.directory / "store.json"

    def method(self) -> str | None:
        """``keyring`` or ``passphrase`` for an existing store, else None."""
        try:
            return str(json.loads(self._meta_path.read_text())["method"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{self._meta_path} is damaged") from None

    def open_or_make(self, prefer: str = "auto") -> tuple[bytes, str]:
        """(the key, how it is kept).  ``prefer``: ``auto`` (the keyring if
        there is one), ``keyring`` or ``passphrase``, for a new store."""
        method = self.method()
        if method is not None:
            return self._open(method), method
        if prefer == "auto":
            prefer = "keyring" if keyring_usable() else "passphrase"
        return self._make(prefer), prefer

    def _account(self) -> str:
        return str(self.directory.resolve())

    def _make(self, method: str) -> bytes:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = crypto.random_bytes(32)
        meta: dict[str, Any] = {"version": 1, "method": method}
        if method == "keyring":
            import keyring

            try:
                keyring.set_password(KEYRING_SERVICE, self._account(), e2e.b64encode(key))
            except Exception as e:
                raise StoreError(f"the keyring refused the store key: {e}") from None
        elif method == "passphrase":
            salt = crypto.random_bytes(16)
            key = crypto.passphrase_key(self._ask(new=True), salt, self._log2_n)
            meta.update(salt=e2e.b64encode(salt), log2_n=self._log2_n)
        else:
            raise StoreError(f"unknown way to keep the store key: {method}")
        nonce = crypto.random_bytes(12)
        check = crypto.AEAD(key).seal(nonce, b"ok", _AAD + _CHECK.encode())
        meta["check"] = e2e.b64encode(nonce + check)
        _write_private(self._meta_path, json.dumps(meta).encode())
        return key

    def _open(self, method: str) -> bytes:
        meta = json.loads(self._meta_path.read_text())
        if method == "keyring":
            import keyring

            text = keyring.get_password(KEYRING_SERVICE, self._account())
            if text is None:
                raise StoreError("the keyring holds no key for this device's store")
            key = e2e.b64decode(text)
        else:
            key = crypto.passphrase_key(
                self._ask(new=False), e2e.b64decode(meta["salt"]), int(meta["log2_n"])
            )
        sealed = e2e.b64decode(meta["check"])
        try:
            crypto.AEAD(key).open(sealed[:12], sealed[12:], _AAD + _CHECK.encode())
        except crypto.CryptoError:
            raise StoreError(
                "wrong passphrase for this device's store"
                if method == "passphrase"
                else "the keyring's key does not open this store"
            ) from None
        return key

    def _ask(self, new: bool) -> str:
        if self._passphrase is None:
            raise StoreError("this device's store needs a passphrase, and none can be asked for")
        phrase = self._passphrase()
        if new and len(phrase) < 8:
            raise StoreError("a store passphrase is at least 8 characters")
        return phrase


class DeviceStore:
    """Named values, sealed at rest.  Names are ``kind:...`` (``account``,
    ``olm:<curve key>``, ``inbound:<session id>`` ...); values are JSON."""

    def __init__(self, directory: Path, key: bytes) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.key = key
        self._aead = crypto.AEAD(key)
        path = directory / "device.db"
        fresh = not path.exists()
        if fresh:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the client's crash; power
        # lost may cost the last moments (a message decrypted again, a
        # one-time key topped up again), and each write costs no fsync.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS sealed (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._batch = 0

    def close(self) -> None:
        self._db.close()

    def _seal(self, name: str, value: Any) -> bytes:
        nonce = crypto.random_bytes(12)
        plain = json.dumps(value, separators=(",", ":")).encode("utf-8")
        return nonce + self._aead.seal(nonce, plain, _AAD + name.encode("utf-8"))

    def _open(self, name: str, sealed: bytes) -> Any:
        try:
            plain = self._aead.open(sealed[:12], sealed[12:], _AAD + name.encode("utf-8"))
        except crypto.CryptoError:
            raise StoreError(f"the stored value {name!r} does not open: the store is damaged") from None
        return json.loads(plain)

    def get(self, name: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM sealed WHERE name = ?", (name,)).fetchone()
        return default if row is None else self._open(name, row[0])

    def put(self, name: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO sealed (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, self._seal(name, value)),
        )

    def delete(self, name: str) -> None:
        self._db.execute("DELETE FROM sealed WHERE name = ?", (name,))

    def items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every (name, value) whose name starts with ``prefix``."""
        rows = self._db.execute(
            "SELECT name, value FROM sealed WHERE name >= ? AND name < ? ORDER BY name",
            (prefix, prefix + "\uffff"),
        ).fetchall()
        for name, sealed in rows:
            yield name, self._open(name, sealed)

    def transaction(self) -> _Transaction:
        """``with store.transaction():`` several changes, committed together."""
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")
