"""Remembered servers: host, port and username, most recent first.

Only those three are stored (``gui_servers.json`` beside known_hosts).
Never a password, and never the session token: a token is as good as
the password, and a plain file is no place for either.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

MAX_REMEMBERED = 10


@dataclasses.dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "chatserver" / "gui_servers.json"


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
                servers.append(Server(str(item["host"]), int(item["port"]), str(item["user"])))
            except (KeyError, TypeError, ValueError):
                continue
        return servers

    def remember(self, server: Server) -> None:
        servers = [server] + [s for s in self.load() if s != server]
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"servers": [dataclasses.asdict(s) for s in servers[:MAX_REMEMBERED]]}, f, indent=1)
        os.replace(tmp, self.path)
