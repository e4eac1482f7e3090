"""The main window's dialogs.  None starts a nested event loop: each is
opened and answers through a signal or a callback."""

from __future__ import annotations

from typing import Any, Callable

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
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
        self.encrypted = QCheckBox("End-to-end &encrypted: the server cannot read it")
        self.encrypted.setObjectName("room-encrypted")
        self.encrypted.setToolTip("For good: a room cannot be made unencrypted later.")
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
        form.addRow(self.encrypted)
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
        if self.encrypted.isChecked():
            request["encrypted"] = True
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


def key_groups(key: str) -> str:
    """A key as people compare it: groups of four characters."""
    return " ".join(key[i : i + 4] for i in range(0, len(key), 4))


class DevicesDialog(QDialog):
    """A user's devices (:meth:`show_devices`): name, id, whether verified,
    and the Ed25519 key to compare; ``verify_requested`` gives the device
    picked for verification."""

    verify_requested = pyqtSignal(str)

    def __init__(self, user: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("devices")
        self.user = user
        self.setWindowTitle(f"Devices of {user}")
        self.listing = QListWidget()
        self.listing.setObjectName("device-list")
        self.where = QLabel()
        self.where.setObjectName("device-keys-kept")
        self.where.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"The devices of {user} that this device knows of:"))
        layout.addWidget(self.listing)
        layout.addWidget(self.where)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.verify = present(buttons.addButton("&Verify…", QDialogButtonBox.ButtonRole.ActionRole))
        self.verify.setObjectName("verify-device")
        self.verify.clicked.connect(self._verify)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.listing.itemActivated.connect(lambda _: self._verify())
        self.resize(self.fontMetrics().horizontalAdvance("M") * 44, self.sizeHint().height())

    def show_devices(self, rows: list[dict[str, Any]], kept: str = "") -> None:
        """``rows``: {"device", "name", "ed25519", "state"} with state
        ``verified``, ``unverified`` or ``this device``."""
        self.listing.clear()
        for row in rows:
            mark = {"verified": "✔ verified", "this device": "● this device"}.get(
                row["state"], "○ not verified"
            )
            item = QListWidgetItem(
                f"{row['name'] or '(no name)'} — {row['device']}   {mark}\n    {key_groups(row['ed25519'])}"
            )
            item.setData(STREAM_ROLE, row["device"])
            if row["state"] == "this device":
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)
            self.listing.addItem(item)
        self.where.setText(kept)
        self.verify.setEnabled(any(row["state"] != "this device" for row in rows))

    def _verify(self) -> None:
        item = self.listing.currentItem()
        if item is not None and item.flags() & Qt.ItemFlag.ItemIsSelectable:
            self.verify_requested.emit(item.data(STREAM_ROLE))


class VerificationDialog(QDialog):
    """One SAS verification: the 7 emoji with their names (and the 3
    numbers), and the user's answer (``answered``: True for a match)."""

    answered = pyqtSignal(bool)

    def __init__(self, user: str, device: str, txn: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("verification")
        self.txn = txn
        self.setWindowTitle(f"Verify {user}")
        self.user, self.device = user, device
        self.state = QLabel(f"Waiting for {user}'s device {device}…")
        self.state.setObjectName("verification-state")
        self.state.setWordWrap(True)
        self.state.setTextFormat(Qt.TextFormat.PlainText)
        self.grid = QGridLayout()
        self.numbers = QLabel()
        self.numbers.setObjectName("verification-numbers")
        self.numbers.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.match = QPushButton("They &match")
        self.match.setObjectName("sas-match")
        self.mismatch = QPushButton("They &don't match")
        self.mismatch.setObjectName("sas-mismatch")
        for button, value in ((self.match, True), (self.mismatch, False)):
            button.setEnabled(False)
            button.clicked.connect(lambda _=False, v=value: self._answer(v))
        close = QPushButton("&Close")
        close.clicked.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.mismatch)
        row.addStretch(1)
        row.addWidget(self.match)
        row.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.state)
        layout.addLayout(self.grid)
        layout.addWidget(self.numbers)
        layout.addLayout(row)
        self.emoji: list[tuple[str, str]] = []
        self.setMinimumWidth(self.fontMetrics().horizontalAdvance("M") * 40)

    def show_sas(self, emoji: list[tuple[str, str]], numbers: list[int]) -> None:
        self.emoji = [(str(symbol), str(name)) for symbol, name in emoji]
        self.state.setText(
            f"Compare with {self.user}: their screen shows the same emoji in the same order "
            f"if no one is in the middle (or compare the numbers)."
        )
        big = self.font()
        big.setPointSizeF(big.pointSizeF() * 2.6)
        for column, (symbol, name) in enumerate(self.emoji):
            picture = QLabel(symbol)
            picture.setFont(big)
            picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
            caption = QLabel(name)
            caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.grid.addWidget(picture, 0, column)
            self.grid.addWidget(caption, 1, column)
        self.numbers.setText("  ".join(str(n) for n in numbers))
        self.match.setEnabled(True)
        self.mismatch.setEnabled(True)

    def _answer(self, match: bool) -> None:
        self.match.setEnabled(False)
        self.mismatch.setEnabled(False)
        self.state.setText(f"Waiting for {self.user} to compare…" if match else "Not verified.")
        self.answered.emit(match)

    def finished_as(self, verified: bool, reason: str = "") -> None:
        self.match.setEnabled(False)
        self.mismatch.setEnabled(False)
        if verified:
            self.state.setText(f"✔ {self.user}'s device {self.device} is verified.")
        else:
            self.state.setText(f"✘ Not verified: {reason}.")
