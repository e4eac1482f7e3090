"""Server key pinning: trust on first use, refuse a changed key.

The file holds one line per server, ``host:port SHA256:...``, like
OpenSSH's ``known_hosts``.  A server seen for the first time is added
(accept-new); a server whose key differs from the pinned one is refused
with both fingerprints named; ``--fingerprint`` pins a key up front.

A new key is written only once the server has proven that it holds it
(its FINISHED verified): :meth:`KnownHosts.verify` when the key arrives,
:meth:`KnownHosts.pin` after the proof.  A key pinned any earlier could be
one bit off, and every later, genuine, connection would be refused.
"""

from __future__ import annotations

import os
from pathlib import Path


class HostKeyMismatch(Exception):
    """The server's key is not the one we pinned."""

    def __init__(self, server: str, expected: str, actual: str, source: str) -> None:
        self.server = server
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the key of {server} has CHANGED: expected {expected} ({source}), "
            f"but the server presented {actual}. This may be an attack, or the "
            f"server's key was replaced. Nothing was sent. If the change is "
            f"legitimate, remove the line for {server} from the known hosts file."
        )


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "chatserver" / "known_hosts"


def server_id(host: str, port: int) -> str:
    return f"{host}:{port}"


class KnownHosts:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_path()

    def _entries(self) -> dict[str, str]:
        entries: dict[str, str] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return entries
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                entries[parts[0]] = parts[1]
        return entries

    def lookup(self, server: str) -> str | None:
        return self._entries().get(server)

    def add(self, server: str, fingerprint: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(f"{server} {fingerprint}\n")

    def verify(self, server: str, fingerprint: str, pinned: str | None = None) -> bool:
        """Whether the key must still be pinned (with :meth:`pin`, once the
        server has proven it holds it); raises :class:`HostKeyMismatch` if
        it differs from the pin.  Writes nothing."""
        if pinned is not None:
            if fingerprint != pinned:
                raise HostKeyMismatch(server, pinned, fingerprint, "--fingerprint")
            return self.lookup(server) is None
        known = self.lookup(server)
        if known is not None and known != fingerprint:
            raise HostKeyMismatch(server, known, fingerprint, str(self.path))
        return known is None

    def pin(self, server: str, fingerprint: str) -> bool:
        """Add the key unless it is there already (another connection may
        have pinned it meanwhile); True if it was added.  Raises
        :class:`HostKeyMismatch` if another key was pinned meanwhile."""
        known = self.lookup(server)
        if known is None:
            self.add(server, fingerprint)
            return True
        if known != fingerprint:
            raise HostKeyMismatch(server, known, fingerprint, str(self.path))
        return False

    def check(self, server: str, fingerprint: str, pinned: str | None = None) -> bool:
        """:meth:`verify` and :meth:`pin` at once, for a caller that has
        the proof already: True if the key was new (and is now added),
        False if already known."""
        new = self.verify(server, fingerprint, pinned)
        if new:
            self.pin(server, fingerprint)
        return new and pinned is None
