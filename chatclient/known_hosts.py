"""Server key pinning: trust on first use, refuse a changed key.

The file holds one line per server, ``host:port SHA256:...``, like
OpenSSH's ``known_hosts``.  A server seen for the first time is added
(accept-new); a server whose key differs from the pinned one is refused
with both fingerprints named; ``--fingerprint`` pins a key up front.
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

    def check(self, server: str, fingerprint: str, pinned: str | None = None) -> bool:
        """True if the key is new (and now added), False if already known;
        raises :class:`HostKeyMismatch` if it differs from the pin."""
        if pinned is not None:
            if fingerprint != pinned:
                raise HostKeyMismatch(server, pinned, fingerprint, "--fingerprint")
            known = self.lookup(server)
            if known is None:
                self.add(server, fingerprint)
            return False
        known = self.lookup(server)
        if known is None:
            self.add(server, fingerprint)
            return True
        if known != fingerprint:
            raise HostKeyMismatch(server, known, fingerprint, str(self.path))
        return False
