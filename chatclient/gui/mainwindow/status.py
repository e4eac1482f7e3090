"""The status bar: the connection's state (with the reconnect countdown)
and the server key's fingerprint."""

from __future__ import annotations

import html
from typing import Callable

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtWidgets import QLabel, QStatusBar, QWidget

MOODS = {"good": "#2e9d4f", "busy": "#d08a00", "bad": "#d04040"}


def fingerprint_text(fingerprint: object) -> str:
    """A fingerprint for the status bar: short enough to read at a glance
    (the tooltip has all of it)."""
    text = str(fingerprint)
    return text if len(text) <= 30 else text[:30] + "…"


class StatusBar(QStatusBar):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state_label = QLabel()
        self.state_label.setObjectName("state")
        self.state_label.setTextFormat(Qt.TextFormat.RichText)
        self.fingerprint_label = QLabel()
        self.fingerprint_label.setObjectName("fingerprint")
        self.fingerprint_label.setTextFormat(Qt.TextFormat.PlainText)
        self.fingerprint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.addWidget(self.state_label, 1)
        self.addPermanentWidget(self.fingerprint_label)
        self._retry_in: Callable[[], float | None] = lambda: None
        self._countdown = QTimer(self)
        self._countdown.setInterval(250)
        self._countdown.timeout.connect(self._show_countdown)

    def show_state(self, text: str, mood: str) -> None:
        """``mood``: good, busy or bad (the dot's colour)."""
        # The text may quote the server (a close reason): never markup.
        self.state_label.setText(f'<span style="color:{MOODS[mood]}">●</span> {html.escape(text)}')

    def show_fingerprint(self, fingerprint: str | None) -> None:
        self.fingerprint_label.setText(f"Server key {fingerprint_text(fingerprint)}")
        self.fingerprint_label.setToolTip(str(fingerprint))

    def count_down(self, retry_in: Callable[[], float | None], now: bool = True) -> None:
        """Show the seconds until the next attempt, as ``retry_in`` tells
        them (None: not waiting to reconnect), until :meth:`stop_countdown`;
        from the next tick only unless ``now``."""
        self._retry_in = retry_in
        self._countdown.start()
        if now:
            self._show_countdown()

    def stop_countdown(self) -> None:
        self._countdown.stop()

    def _show_countdown(self) -> None:
        left = self._retry_in()
        if left is None:
            return
        if left > 0:
            self.show_state(f"Connection lost — reconnecting in {left:.0f} s", "busy")
        else:
            self.show_state("Connection lost — reconnecting…", "busy")
