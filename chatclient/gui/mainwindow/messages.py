"""The message view: one conversation as rich text, kept in place while it
grows at either end."""

from __future__ import annotations

from urllib.parse import unquote

from PyQt6.QtCore import Qt, QUrl, pyqtSignal
from PyQt6.QtGui import QDesktopServices
from PyQt6.QtWidgets import QTextBrowser, QWidget

from chatclient.gui.present import present
from chatclient.gui.render import JOIN_LINK


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

    def show_all(self, html: str) -> None:
        """Everything anew, as far from the bottom as it was."""
        bar = present(self.verticalScrollBar())
        from_bottom = bar.maximum() - bar.value()
        self.setHtml(html)
        bar.setValue(bar.maximum() - from_bottom)

    def prepend_html(self, html: str, same_day: bool) -> None:
        """Older events above what is shown, the view staying where the
        reader is.  ``same_day``: the oldest shown event's day separator
        moves up to the new events (they end on that day)."""
        bar = present(self.verticalScrollBar())
        from_bottom = bar.maximum() - bar.value()
        cursor = self.textCursor()
        cursor.movePosition(cursor.MoveOperation.Start)
        if same_day:
            cursor.movePosition(cursor.MoveOperation.EndOfBlock, cursor.MoveMode.KeepAnchor)
            cursor.removeSelectedText()
            cursor.deleteChar()
        cursor.insertHtml(html)
        cursor.insertBlock()
        bar.setValue(bar.maximum() - from_bottom)

    def append_html(self, html: str, own: bool = False) -> None:
        """A new event at the bottom; the view follows if it was at the
        bottom, or if the user sent it (``own``)."""
        stay = self.at_bottom() or own
        cursor = self.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        if cursor.block().length() > 1:
            cursor.insertBlock()  # after setHtml the last paragraph is not empty
        cursor.insertHtml(html)
        cursor.insertBlock()
        if stay:
            self.scroll_to_bottom()
