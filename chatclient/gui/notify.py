"""Desktop notifications of direct messages and mentions.

Through the system tray where there is one (the desktop's notification
service); otherwise the window asks for attention (a flashing taskbar
entry).  Only while the window is not focused: whoever is looking at the
chat needs no pop-up.
"""

from __future__ import annotations

import html

from PyQt6.QtWidgets import QApplication, QStyle, QSystemTrayIcon, QWidget

from chatclient.gui.present import present


class Notifier:
    def __init__(self, window: QWidget) -> None:
        self.window = window
        #: Every notification shown, newest last (for tests and the log).
        self.shown: list[tuple[str, str]] = []
        self.tray: QSystemTrayIcon | None = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            icon = present(window.style()).standardIcon(QStyle.StandardPixmap.SP_MessageBoxInformation)
            self.tray = QSystemTrayIcon(icon, window)
            self.tray.setToolTip("chatclient")
            self.tray.messageClicked.connect(self._raise)
            self.tray.show()

    def wanted(self) -> bool:
        return not self.window.isActiveWindow()

    def notify(self, title: str, text: str) -> None:
        if not self.wanted():
            return
        preview = text if len(text) <= 120 else text[:119] + "…"
        self.shown.append((title, preview))
        if self.tray is not None:
            # Desktop notification services render a subset of HTML: what
            # someone else wrote must show as text, not as links or images.
            self.tray.showMessage(
                html.escape(title), html.escape(preview), QSystemTrayIcon.MessageIcon.Information, 8000
            )
        else:
            QApplication.alert(self.window, 0)

    def _raise(self) -> None:
        self.window.showNormal()
        self.window.raise_()
        self.window.activateWindow()
