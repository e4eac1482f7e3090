"""What the server is and how busy: info for everyone, stats for admins."""

from __future__ import annotations

from typing import Any

from chatserver import __version__
from chatserver.chat import ChatError
from chatserver.session import Handler, Services, Session


class StatsHandlers:
    def __init__(self, factory: Services) -> None:
        """The factory knows the connections, the metrics and the monitor."""
        self.factory = factory
        self.requests: dict[str, Handler] = {"info": self.info, "stats": self.stats}

    def info(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        """Anyone logged in: what the server is and how busy."""
        return {
            "type": "info",
            "server": f"chatserver/{__version__}",
            "uptime": self.factory.metrics.uptime(),
            "users_online": self.factory.chat.hub.online_count(),
        }

    def stats(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        """Admins: one stats frame now (with the history), and with
        ``subscribe`` one every monitor interval until ``subscribe: false``."""
        if session.role != "admin":
            raise ChatError("forbidden", "only an admin may see server statistics", "type")
        factory = self.factory
        if request.get("subscribe") is True:
            factory.stats_subscribers[session] = None
        elif request.get("subscribe") is False:
            factory.stats_subscribers.pop(session, None)
        frame = factory.stats_frame()
        monitoring = factory.monitoring
        frame["history"] = list(monitoring.history) if monitoring is not None else []
        return frame
