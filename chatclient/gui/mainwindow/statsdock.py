"""The server statistics panel in a dock, subscribed to the server's
pushed frames while it is visible (server admins only)."""

from __future__ import annotations

from typing import Any, Callable

from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QDockWidget, QWidget

from chatclient.gui.history import Requester
from chatclient.gui.rules import Problem


class StatsDock(QDockWidget):
    def __init__(
        self, requester: Requester, report: Callable[[Problem, str], Any], parent: QWidget | None = None
    ) -> None:
        super().__init__("Server statistics", parent)
        # pyqtgraph is slow to import: only for the admins who open this.
        from chatclient.gui.stats_panel import StatsPanel

        self.setObjectName("stats-dock")
        self.requester = requester
        self.report = report
        self.panel = StatsPanel()
        self.setWidget(self.panel)
        #: The server pushes us stats frames (ends with each connection).
        self.subscribed = False
        self.stopped = False
        self.visibilityChanged.connect(self._visibility)

    def _visibility(self, visible: bool) -> None:
        # Floating or docking the panel hides and shows it at once: decide
        # when that is over, or the charts would start again from history.
        QTimer.singleShot(0, self._settled)

    def _settled(self) -> None:
        if self.stopped:
            return
        wanted = self.isVisible()
        if wanted != self.subscribed and self.requester.online:
            self.subscribe(wanted)

    def subscribe(self, on: bool) -> None:
        """Start (with the history so far) or stop the pushed frames."""
        self.subscribed = on

        def got(answer: dict[str, Any]) -> None:
            if on:
                self.panel.load(answer)

        self.requester.request(
            {"type": "stats", "subscribe": on}, got, lambda problem: self.report(problem, "stats")
        )

    def connection_lost(self) -> None:
        self.subscribed = False

    def online(self) -> None:
        """Back online: a subscription ends with its connection."""
        if self.isVisible():
            self.subscribe(True)

    def add(self, event: dict[str, Any]) -> None:
        """A pushed frame."""
        self.panel.add(event)

    def stop(self) -> None:
        self.stopped = True
