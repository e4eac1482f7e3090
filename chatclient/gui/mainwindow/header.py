"""The line above the messages: the conversation's name and topic."""

from __future__ import annotations

import html

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QLabel, QWidget

from chatclient.gui.model import Conversation
from chatclient.gui.render import peer


class ConversationHeader(QLabel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("header")
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

    def show_conversation(self, conversation: Conversation | None, encrypted: bool = False) -> None:
        lock = (
            ' <span title="End-to-end encrypted: the server cannot read what is said here">🔒</span>'
            if encrypted
            else ""
        )
        if conversation is None:
            self.setText("")
        elif conversation.kind == "room":
            # Names and topics come from the network: escaped, never markup.
            title = f"<b>#{html.escape(peer(conversation.name))}</b>"
            if conversation.topic:
                title += f" — {html.escape(peer(conversation.topic))}"
            if not conversation.joined:
                title += " <i>(you are no longer a member)</i>"
            self.setText(title + lock)
        else:
            self.setText(f"<b>{html.escape(peer(conversation.name))}</b> — direct messages{lock}")
