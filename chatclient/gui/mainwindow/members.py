"""The member list: who is in the conversation, their role and presence,
and the context menu of what the user may do to each."""

from __future__ import annotations

from typing import Any, Callable

from PyQt6.QtCore import QPoint, Qt, pyqtSignal
from PyQt6.QtGui import QPalette
from PyQt6.QtWidgets import QListWidget, QListWidgetItem, QMenu, QVBoxLayout, QWidget

from chatclient.gui.mainwindow.conversations import STREAM_ROLE, heading
from chatclient.gui.present import present
from chatclient.gui.render import peer
from chatclient.gui.rules import Action
from chatserver.wire.names import RANK


class MemberList(QWidget):
    #: A member was activated (double click, Return): message them.
    message_requested = pyqtSignal(str)
    #: A member's context menu is asked for, at this global position.
    menu_requested = pyqtSignal(str, QPoint)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.member_list = QListWidget()
        self.member_list.setObjectName("members")
        self.member_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.member_list.customContextMenuRequested.connect(self._menu_at)
        self.member_list.itemActivated.connect(self._activated)
        self.heading = heading("Members")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.heading)
        layout.addWidget(self.member_list)

    def _activated(self, item: QListWidgetItem) -> None:
        user = item.data(STREAM_ROLE)
        if isinstance(user, str):
            self.message_requested.emit(user)

    def _menu_at(self, point: QPoint) -> None:
        item = self.member_list.itemAt(point)
        if item is not None:
            self.menu_requested.emit(
                item.data(STREAM_ROLE), present(self.member_list.viewport()).mapToGlobal(point)
            )

    def clear(self) -> None:
        self.member_list.clear()

    def show_members(self, members: list[dict[str, Any]]) -> None:
        """Highest role first, then by name; a dot for presence (● online,
        ○ offline, ◌ unknown)."""
        online = sum(1 for m in members if m.get("online"))
        self.heading.setText(f"Members — {online} online of {len(members)}")
        self.member_list.clear()
        palette = self.palette()
        for member in sorted(members, key=lambda m: (-RANK.get(m.get("role") or "", 0), m.get("user", ""))):
            user = member.get("user", "?")
            role = member.get("role", "member")
            presence = member.get("online")
            dot = "◌" if presence is None else "●" if presence else "○"
            badge = {"owner": "  ★ owner", "moderator": "  ◆ moderator"}.get(role, "")
            item = QListWidgetItem(f"{dot} {peer(user)}{badge}")
            item.setData(STREAM_ROLE, user)
            state = "presence unknown" if presence is None else "online" if presence else "offline"
            item.setToolTip(f"{peer(user)}: {peer(role)}, {state}")
            colour = QPalette.ColorRole.Text if presence else QPalette.ColorRole.PlaceholderText
            item.setForeground(palette.color(colour))
            self.member_list.addItem(item)


def member_menu(
    parent: QWidget,
    user: str,
    actions: list[Action],
    message: Callable[[str], Any],
    moderate: Callable[[dict[str, Any]], Any],
) -> QMenu:
    """The context menu for ``user``: ``actions`` as rules.member_actions
    gives them; a direct message first, moderation after a separator."""
    menu = QMenu(parent)
    menu.setObjectName("member-menu")
    for label, request in actions:
        if request is None:
            present(menu.addAction(label)).triggered.connect(lambda _=False, u=user: message(u))
        else:
            if not menu.isEmpty() and len(menu.actions()) == 1:
                menu.addSeparator()
            present(menu.addAction(label)).triggered.connect(lambda _=False, r=request: moderate(r))
    return menu
