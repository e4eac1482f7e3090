"""The main window's dialogs.  None starts a nested event loop: each is
opened and answers through a signal or a callback."""

from __future__ import annotations

from typing import Any, Callable

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from chatclient.gui.mainwindow.conversations import STREAM_ROLE
from chatclient.gui.present import present

ROOM_KINDS = (
    ("Public: anyone may join", "public"),
    ("Private: by invitation only", "private"),
    ("Read-only: only moderators speak", "readonly"),
)


class CreateRoomDialog(QDialog):
    """The New room dialog: OK (or Return) emits ``create_requested`` with
    the request, and the dialog closes only once the room exists
    (:meth:`created`); a refusal (:meth:`refuse`) leaves it open, as typed,
    with the reason in it."""

    create_requested = pyqtSignal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("create-room")
        self.setWindowTitle("New room")
        self.name = QLineEdit()
        self.name.setObjectName("room-name")
        self.name.setPlaceholderText("a-z 0-9 _ -")
        self.kind = QComboBox()
        self.kind.setObjectName("room-kind")
        for label, value in ROOM_KINDS:
            self.kind.addItem(label, value)
        self.topic = QLineEdit()
        self.topic.setObjectName("room-topic")
        self.error = QLabel()
        self.error.setObjectName("create-error")
        self.error.setTextFormat(Qt.TextFormat.PlainText)  # it quotes the server
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #d04040")
        self.error.hide()
        form = QFormLayout(self)
        form.addRow("&Name:", self.name)
        form.addRow("&Kind:", self.kind)
        form.addRow("&Topic:", self.topic)
        form.addRow(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.ok = present(buttons.button(QDialogButtonBox.StandardButton.Ok))

    def accept(self) -> None:
        room = self.name.text().strip()
        if not room:
            self.refuse("Enter a name for the room.")
            return
        request = {"type": "create", "room": room, "kind": self.kind.currentData()}
        if self.topic.text().strip():
            request["topic"] = self.topic.text().strip()
        self.ok.setEnabled(False)
        self.error.hide()
        self.create_requested.emit(request)

    def refuse(self, text: str) -> None:
        """Stay open with everything as typed, the reason shown here."""
        self.error.setText(text)
        self.error.show()
        self.ok.setEnabled(True)
        self.name.setFocus(Qt.FocusReason.OtherFocusReason)
        self.name.selectAll()

    def created(self) -> None:
        super().accept()


class RoomDirectory(QDialog):
    """Join a room: the rooms the server lists (:meth:`show_rooms`);
    ``chosen`` gives the one picked."""

    chosen = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("browse-rooms")
        self.setWindowTitle("Join a room")
        self.listing = QListWidget()
        self.listing.setObjectName("room-directory")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Rooms you can join (private ones only if you are invited):"))
        layout.addWidget(self.listing)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        present(buttons.button(QDialogButtonBox.StandardButton.Ok)).setText("&Join")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.listing.itemActivated.connect(lambda _: self.accept())
        self.accepted.connect(self._accepted)

    def show_rooms(self, rooms: list[dict[str, Any]]) -> None:
        for room in rooms:
            label = f"#{room['room']}  [{room['kind']}, {room['members']} members]"
            if room.get("member"):
                label += "  ✓ joined"
            if room.get("topic"):
                label += f" — {room['topic']}"
            item = QListWidgetItem(label)
            item.setData(STREAM_ROLE, room["room"])
            self.listing.addItem(item)

    def _accepted(self) -> None:
        item = self.listing.currentItem()
        if item is not None:
            self.chosen.emit(item.data(STREAM_ROLE))


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
