"""The side bar: a search box, the rooms, the direct messages, and the
buttons that make or find more of them."""

from __future__ import annotations

from typing import Iterable

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont
from PyQt6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from chatclient.gui.model import Conversation
from chatclient.gui.present import present
from chatclient.gui.render import peer

#: Where a list item keeps its stream (or a member's name).
STREAM_ROLE = Qt.ItemDataRole.UserRole


def heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setBold(True)
    label.setFont(font)
    return label


class ConversationList(QWidget):
    #: The user chose this conversation (a stream).
    chosen = pyqtSignal(str)
    new_room_clicked = pyqtSignal()
    join_clicked = pyqtSignal()
    message_clicked = pyqtSignal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.search = QLineEdit()
        self.search.setObjectName("search")
        self.search.setPlaceholderText("Search rooms and people (Ctrl+K)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.filter)
        self.search.returnPressed.connect(self.open_first_match)
        self.room_list = QListWidget()
        self.room_list.setObjectName("rooms")
        self.dm_list = QListWidget()
        self.dm_list.setObjectName("dms")
        for listing in (self.room_list, self.dm_list):
            listing.itemActivated.connect(self._item_chosen)
            listing.itemClicked.connect(self._item_chosen)
        new_room = QPushButton("New room")
        new_room.clicked.connect(lambda _=False: self.new_room_clicked.emit())
        join_room = QPushButton("Join…")
        join_room.clicked.connect(lambda _=False: self.join_clicked.emit())
        new_dm = QPushButton("Message…")
        new_dm.clicked.connect(lambda _=False: self.message_clicked.emit())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.search)
        layout.addWidget(heading("Rooms"))
        layout.addWidget(self.room_list, 3)
        buttons = QHBoxLayout()
        buttons.addWidget(new_room)
        buttons.addWidget(join_room)
        layout.addLayout(buttons)
        layout.addWidget(heading("Direct messages"))
        layout.addWidget(self.dm_list, 2)
        layout.addWidget(new_dm)

    def show_conversations(
        self, rooms: Iterable[Conversation], dms: Iterable[Conversation], current: str | None
    ) -> None:
        """Both lists again, with unread counts (bold) and mentions (red);
        ``current`` (a stream) is selected."""
        for listing, conversations in ((self.room_list, rooms), (self.dm_list, dms)):
            listing.blockSignals(True)
            listing.clear()
            for conversation in conversations:
                label = ("#" if conversation.kind == "room" else "") + peer(conversation.name)
                if conversation.unread:
                    label += f"  ({conversation.unread})"
                item = QListWidgetItem(label)
                item.setData(STREAM_ROLE, conversation.stream)
                if conversation.unread:
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                if conversation.mentioned:
                    item.setForeground(QColor("#d04040"))
                listing.addItem(item)
                if conversation.stream == current:
                    item.setSelected(True)
                    listing.setCurrentItem(item)
            listing.blockSignals(False)
        self.filter(self.search.text())

    def _item_chosen(self, item: QListWidgetItem) -> None:
        stream = item.data(STREAM_ROLE)
        if stream:
            self.chosen.emit(stream)

    def filter(self, text: str) -> None:
        """Hide what does not contain ``text`` (a leading # or @ aside)."""
        needle = text.strip().lower().lstrip("#@")
        for listing in (self.room_list, self.dm_list):
            for row in range(listing.count()):
                item = present(listing.item(row))
                item.setHidden(bool(needle) and needle not in item.text().lower())

    def open_first_match(self) -> None:
        for listing in (self.room_list, self.dm_list):
            for row in range(listing.count()):
                item = present(listing.item(row))
                if not item.isHidden():
                    self.search.clear()
                    self.chosen.emit(item.data(STREAM_ROLE))
                    return

    def focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()
