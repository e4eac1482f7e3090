"""Small widgets of the main window: the input box, the message view and
dialogs that never start a nested event loop."""

from __future__ import annotations

from typing import Callable
from urllib.parse import unquote

from PyQt6.QtCore import QSize, Qt, QUrl, pyqtSignal
from PyQt6.QtGui import QDesktopServices, QKeyEvent
from PyQt6.QtWidgets import QInputDialog, QPlainTextEdit, QSizePolicy, QTextBrowser, QWidget

from chatclient.gui.present import present
from chatclient.gui.render import JOIN_LINK


class ChatInput(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line.  What is typed stays
    until the window takes it (a message is taken only when it can go)."""

    submitted = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("input")
        self.setTabChangesFocus(True)
        # The message view takes the height; the input grows no further.
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Maximum)
        self.setPlaceholderText("Message — Enter sends, Shift+Enter for a new line, /help for commands")

    def keyPressEvent(self, event: QKeyEvent | None) -> None:  # noqa: N802 (Qt's name)
        assert event is not None
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.insertPlainText("\n")
            elif self.toPlainText().strip():
                self.submitted.emit(self.toPlainText())
            return
        super().keyPressEvent(event)

    def sizeHint(self) -> QSize:  # noqa: N802
        lines = 3
        return QSize(super().sizeHint().width(), self.fontMetrics().lineSpacing() * lines + 12)


class MessageView(QTextBrowser):
    """Selectable rich text; links open in the browser; reaching the top
    asks for older history."""

    reached_top = pyqtSignal()
    #: A room to join, from an invitation's link.
    join_requested = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messages")
        # Links are opened here, not by Qt: only http(s) goes to the
        # browser, so no message can make the desktop open a file: or
        # other link.
        self.setOpenLinks(False)
        self.anchorClicked.connect(self._link)
        self.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextBrowserInteraction | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        bar = present(self.verticalScrollBar())
        bar.valueChanged.connect(self._scrolled)
        bar.rangeChanged.connect(self._range_changed)

    def _link(self, url: QUrl) -> None:
        if url.scheme() in ("http", "https"):
            QDesktopServices.openUrl(url)
        elif url.toString().startswith(JOIN_LINK):
            self.join_requested.emit(unquote(url.toString()[len(JOIN_LINK) :]))

    def _scrolled(self, value: int) -> None:
        bar = present(self.verticalScrollBar())
        if value == bar.minimum() and bar.maximum() > bar.minimum():
            self.reached_top.emit()

    def _range_changed(self, low: int, high: int) -> None:
        # A conversation shorter than the view cannot be scrolled: if older
        # history exists it must be asked for some other way.
        if high == low:
            self.reached_top.emit()

    def at_bottom(self) -> bool:
        bar = present(self.verticalScrollBar())
        return bar.value() >= bar.maximum() - 4

    def scroll_to_bottom(self) -> None:
        bar = present(self.verticalScrollBar())
        bar.setValue(bar.maximum())


def ask_text(
    parent: QWidget, title: str, label: str, done: Callable[[str], None], text: str = ""
) -> QInputDialog:
    """``QInputDialog.getText`` without its nested loop: ``done(text)`` is
    called if the user accepts a non-empty answer."""
    dialog = QInputDialog(parent)
    dialog.setWindowTitle(title)
    dialog.setLabelText(label)
    dialog.setTextValue(text)

    def selected(value: str) -> None:
        if value.strip():
            done(value.strip())

    dialog.textValueSelected.connect(selected)
    dialog.open()
    return dialog
