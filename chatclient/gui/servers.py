"""Remembered servers: host, port, username and how to connect (TLS and
the CA certificates to trust), most recent first.

Only those are stored (``gui_servers.json`` beside known_hosts).  Never a
password, and never the session token: a token is as good as the
password, and a plain file is no place for either.  An entry written
before TLS was remembered has no ``tls``: it loads as TLS off.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

MAX_REMEMBERED = 10


@dataclasses.dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    #: TLS under the channel, its certificate checked against ``tls_ca``.
    tls: bool = False
    #: The CA certificates to trust: a directory of ``*.pem`` or one PEM
    #: file; empty for the system's.
    tls_ca: str = ""

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"

    @property
    def key(self) -> tuple[str, int, str]:
        """Which server and account: one remembered entry each."""
        return (self.host, self.port, self.user)


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "chatserver" / "gui_servers.json"


def _server(item: dict[str, Any]) -> Server:
    """Raises KeyError, TypeError or ValueError for an entry that is not one."""
    tls_ca = item.get("tls_ca", "")
    return Server(
        str(item["host"]),
        int(item["port"]),
        str(item["user"]),
        tls=item.get("tls", False) is True,
        tls_ca=tls_ca if isinstance(tls_ca, str) else "",
    )


class RememberedServers:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_path()

    def load(self) -> list[Server]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []  # none yet, or unreadable: start afresh rather than fail
        servers = []
        for item in data.get("servers", []) if isinstance(data, dict) else []:
            try:
                servers.append(_server(item))
            except (AttributeError, KeyError, TypeError, ValueError):
                continue
        return servers

    def remember(self, server: Server) -> None:
        """First in the list, in place of the entry for the same server and
        user (whose TLS settings it replaces)."""
        servers = [server] + [s for s in self.load() if s.key != server.key]
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"servers": [dataclasses.asdict(s) for s in servers[:MAX_REMEMBERED]]}, f, indent=1)
        os.replace(tmp, self.path)
