"""The message input with its Send button."""

from __future__ import annotations

from PyQt6.QtCore import QSize, Qt, pyqtSignal
from PyQt6.QtGui import QKeyEvent
from PyQt6.QtWidgets import QHBoxLayout, QPlainTextEdit, QPushButton, QSizePolicy, QWidget


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

    def give_back(self, text: str) -> None:
        """A message that did not go returns, ahead of anything typed since."""
        typed = self.toPlainText()
        self.setPlainText(text + ("\n" + typed if typed else ""))


class InputBar(QWidget):
    """The input and its Send button; both submit the text as typed."""

    submitted = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.input = ChatInput()
        self.input.submitted.connect(self.submitted)
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(lambda _=False: self.submitted.emit(self.input.toPlainText()))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.input, 1)
        row.addWidget(self.send_button, 0, Qt.AlignmentFlag.AlignBottom)
