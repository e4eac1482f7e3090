"""The main window: conversations, messages, members and the status bar.

It draws what :class:`~chatclient.gui.model.ChatModel` holds and sends
requests through the same :class:`~chatclient.reconnect.ReconnectingClient`
as the terminal client.  Nothing here waits: every request is a Deferred
whose answer updates the widgets when it comes.
"""

from __future__ import annotations

import html
from typing import Any, Callable

from PyQt6.QtCore import QEvent, QPoint, Qt, QTimer
from PyQt6.QtGui import QAction, QColor, QFont, QKeySequence, QPalette, QShortcut
from PyQt6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from chatclient import commands
from chatclient.gui import rules
from chatclient.gui.model import ChatModel, Conversation
from chatclient.gui.notify import Notifier
from chatclient.gui.present import present
from chatclient.gui.render import Renderer, day, peer
from chatclient.gui.servers import Server
from chatclient.gui.trust import fingerprint_text
from chatclient.gui.widgets import ChatInput, MessageView, ask_text
from chatclient.reconnect import ReconnectingClient
from chatclient.session import ConnectionClosed, ServerError
from chatserver.wire.names import RANK, dm_stream, room_stream
from chatserver.wire.validation import USERNAME

HISTORY_PAGE = 50
#: Notices kept per conversation (errors, reconnects ...).
MAX_NOTES = 100
#: Room events after which the member list is read again.
MEMBERSHIP_EVENTS = ("joined", "left", "kicked", "banned", "role")
STREAM_ROLE = Qt.ItemDataRole.UserRole
#: Seconds between refreshes of the member list's presence dots.
PRESENCE_REFRESH = 30.0


class MainWindow(QMainWindow):
    def __init__(self, reactor: Any, client: ReconnectingClient, server: Server) -> None:
        super().__init__()
        self.setObjectName("main-window")
        self.reactor = reactor
        self.client = client
        self.server = server
        self.model = ChatModel(client.user)
        self.renderer = Renderer(self.palette(), client.user)
        self.members: list[dict[str, Any]] = []
        self.my_room_role: str | None = None
        self.loading_older: set[str] = set()
        self.stats_panel: Any = None
        self.stats_dock: QDockWidget | None = None
        self.closing = False
        #: This window's notices per conversation: (newest id then, HTML).
        self.notes: dict[str, list[tuple[int, str]]] = {}
        #: Messages whose send was cut off by a dropped connection,
        #: settled once back online and caught up (rules.SendRecovery).
        self.unconfirmed = rules.SendRecovery()
        #: The server pushes us stats frames (ends with each connection).
        self.stats_subscribed = False
        self.fingerprint: str | None = None
        #: Called when the user closes the window (the app ends).
        self.closed_callback: Callable[[], Any] | None = None
        #: Called after a logout (the app offers to connect again).
        self.logged_out_callback: Callable[[], Any] | None = None
        #: Called with the reason when reconnecting can never succeed.
        self.failed_callback: Callable[[str], Any] | None = None
        self.setWindowTitle(f"{client.user} on {server.host}:{server.port} — chatclient")
        self._build()
        self.notifier = Notifier(self)
        client.add_listener(self.on_event)
        client.add_state_listener(self.on_state)
        self._countdown = QTimer(self)
        self._countdown.setInterval(250)
        self._countdown.timeout.connect(self._show_countdown)
        self._presence = QTimer(self)
        self._presence.setInterval(int(PRESENCE_REFRESH * 1000))
        self._presence.timeout.connect(self.refresh_members)
        self._presence.start()
        self.on_state(client.state, None)

    # --- layout --------------------------------------------------------------

    def _build(self) -> None:
        self.search = QLineEdit()
        self.search.setObjectName("search")
        self.search.setPlaceholderText("Search rooms and people (Ctrl+K)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._filter)
        self.search.returnPressed.connect(self._open_first_match)
        self.room_list = QListWidget()
        self.room_list.setObjectName("rooms")
        self.dm_list = QListWidget()
        self.dm_list.setObjectName("dms")
        for listing in (self.room_list, self.dm_list):
            listing.itemActivated.connect(self._item_chosen)
            listing.itemClicked.connect(self._item_chosen)
        new_room = QPushButton("New room")
        new_room.clicked.connect(self.create_room)
        join_room = QPushButton("Join…")
        join_room.clicked.connect(self.browse_rooms)
        new_dm = QPushButton("Message…")
        new_dm.clicked.connect(self.start_dm)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(4, 4, 4, 4)
        side_layout.addWidget(self.search)
        side_layout.addWidget(_heading("Rooms"))
        side_layout.addWidget(self.room_list, 3)
        buttons = QHBoxLayout()
        buttons.addWidget(new_room)
        buttons.addWidget(join_room)
        side_layout.addLayout(buttons)
        side_layout.addWidget(_heading("Direct messages"))
        side_layout.addWidget(self.dm_list, 2)
        side_layout.addWidget(new_dm)

        self.header = QLabel()
        self.header.setObjectName("header")
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.header.setWordWrap(True)
        self.header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.view = MessageView()
        self.view.reached_top.connect(self.load_older)
        self.view.join_requested.connect(self.join)
        self.input = ChatInput()
        self.input.submitted.connect(self.submit)
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(lambda: self.submit(self.input.toPlainText()))
        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(4, 4, 4, 4)
        centre_layout.addWidget(self.header)
        centre_layout.addWidget(self.view, 1)
        input_row = QHBoxLayout()
        input_row.addWidget(self.input, 1)
        input_row.addWidget(self.send_button, 0, Qt.AlignmentFlag.AlignBottom)
        centre_layout.addLayout(input_row)

        self.member_list = QListWidget()
        self.member_list.setObjectName("members")
        self.member_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.member_list.customContextMenuRequested.connect(self._member_menu_at)
        self.member_list.itemActivated.connect(lambda item: self.open_dm(item.data(STREAM_ROLE)))
        self.members_heading = _heading("Members")
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(4, 4, 4, 4)
        right_layout.addWidget(self.members_heading)
        right_layout.addWidget(self.member_list)

        splitter = QSplitter()
        splitter.addWidget(side)
        splitter.addWidget(centre)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        em = self.fontMetrics().horizontalAdvance("M")
        splitter.setSizes([em * 16, em * 48, em * 14])
        self.setCentralWidget(splitter)
        self.resize(em * 80, em * 46)

        self.state_label = QLabel()
        self.state_label.setObjectName("state")
        self.state_label.setTextFormat(Qt.TextFormat.RichText)
        self.fingerprint_label = QLabel()
        self.fingerprint_label.setObjectName("fingerprint")
        self.fingerprint_label.setTextFormat(Qt.TextFormat.PlainText)
        self.fingerprint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        status = present(self.statusBar())
        status.addWidget(self.state_label, 1)
        status.addPermanentWidget(self.fingerprint_label)
        self._build_menus()
        self.setTabOrder(self.search, self.room_list)
        self.setTabOrder(self.room_list, self.dm_list)
        self.setTabOrder(self.dm_list, self.view)
        self.setTabOrder(self.view, self.input)
        self.setTabOrder(self.input, self.member_list)

    def _build_menus(self) -> None:
        def action(menu: QMenu, text: str, keys: str | None, slot: Callable[[], Any]) -> QAction:
            item = menu.addAction(text)
            assert item is not None
            if keys:
                item.setShortcut(QKeySequence(keys))
            item.triggered.connect(lambda _=False: slot())
            return item

        bar = present(self.menuBar())
        chat = present(bar.addMenu("&Chat"))
        action(chat, "&New room…", "Ctrl+N", self.create_room)
        action(chat, "&Join a room…", "Ctrl+J", self.browse_rooms)
        action(chat, "&Direct message…", "Ctrl+D", self.start_dm)
        chat.addSeparator()
        action(chat, "Log &out", None, self.log_out)
        action(chat, "&Quit", "Ctrl+Q", self.close)
        room = present(bar.addMenu("&Room"))
        self.invite_action = action(room, "&Invite someone…", "Ctrl+I", self.invite)
        self.topic_action = action(room, "Set the &topic…", "Ctrl+T", self.set_topic)
        self.leave_action = action(room, "&Leave this room", None, self.leave_room)
        go = present(bar.addMenu("&Go"))
        action(go, "&Search rooms and people", "Ctrl+K", self.focus_search)
        action(go, "&Message input", "Ctrl+L", self.focus_input)
        action(go, "&Previous conversation", "Alt+Up", lambda: self.step(-1))
        action(go, "&Next conversation", "Alt+Down", lambda: self.step(1))
        for number in range(1, 10):
            QShortcut(QKeySequence(f"Ctrl+{number}"), self, lambda n=number: self.open_nth(n - 1))
        QShortcut(QKeySequence("Ctrl+PgUp"), self, lambda: self.step(-1))
        QShortcut(QKeySequence("Ctrl+PgDown"), self, lambda: self.step(1))
        view = present(bar.addMenu("&View"))
        self.stats_action = action(view, "Server &statistics", "Ctrl+Shift+S", self.toggle_stats)
        self.stats_action.setEnabled(False)

    def request(self, event: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """A request whose answer is dropped if it comes after the window
        closed (its widgets are gone by then)."""
        answer: Deferred[dict[str, Any]] = Deferred()

        def forward(result: Any) -> None:
            if not self.closing:
                answer.callback(result) if not isinstance(result, Failure) else answer.errback(result)

        self.client.request(event).addBoth(forward)
        return answer

    def shut_down(self) -> None:
        """No more drawing: the window is going away."""
        self.closing = True
        self._countdown.stop()
        self._presence.stop()

    # --- connection state ------------------------------------------------------

    def on_state(self, state: str, detail: Any) -> None:
        if self.closing:
            return
        if state == "online":
            self._countdown.stop()
            session = self.client.session
            self.fingerprint = session.fingerprint if session is not None else None
            self.fingerprint_label.setText(f"Server key {fingerprint_text(self.fingerprint)}")
            self.fingerprint_label.setToolTip(str(self.fingerprint))
            self.online(detail or {})
        elif state == "reconnecting":
            self.stats_subscribed = False
            reason = peer(getattr(detail, "message", "") or str(detail or ""))
            self.notice(f"Disconnected ({reason}). Reconnecting…", error=True)
            self._countdown.start()
            self._show_countdown()
            self.member_list.setEnabled(False)
        elif state == "connecting":
            again = self.client.connections > 0
            self._set_state_text("Reconnecting…" if again else f"Connecting to {self.server.host}…", "busy")
            if again:
                self._countdown.start()  # a setup that fails waits for the next attempt
        elif state == "failed":
            self._countdown.stop()
            reason = peer(getattr(detail, "message", None) or str(detail))
            self._set_state_text(f"Disconnected: {reason}", "bad")
            if self.client.connections > 0:
                self.notice(f"Disconnected for good: {reason}", error=True)
                self.input.setReadOnly(True)
                if self.failed_callback is not None:
                    self.failed_callback(reason)
        elif state == "stopped":
            self._countdown.stop()
            self._set_state_text("Disconnected", "bad")

    def _set_state_text(self, text: str, mood: str) -> None:
        dot = {"good": "#2e9d4f", "busy": "#d08a00", "bad": "#d04040"}[mood]
        # The text may quote the server (a close reason): never markup.
        self.state_label.setText(f'<span style="color:{dot}">●</span> {html.escape(text)}')

    def _show_countdown(self) -> None:
        if self.client.state not in ("reconnecting", "connecting"):
            return
        at = self.client.retry_at
        left = at - self.reactor.seconds() if at is not None else 0.0
        if left > 0:
            self._set_state_text(f"Connection lost — reconnecting in {left:.0f} s", "busy")
        else:
            self._set_state_text("Connection lost — reconnecting…", "busy")

    def online(self, welcome: dict[str, Any]) -> None:
        role = welcome.get("role", self.client.role)
        admin = role == "admin"
        self._set_state_text(
            f"Secure (AES-256-GCM) — {self.client.user}{' (admin)' if admin else ''}", "good"
        )
        self.stats_action.setEnabled(admin)
        self.member_list.setEnabled(True)
        again = self.client.connections > 1
        rooms = set(welcome.get("rooms", []))
        for stream in welcome.get("streams", {}):
            self.model.conversation(stream)
        for conversation in self.model.conversations.values():
            if conversation.kind == "room":
                # Removed while away (and refused the catch-up that would
                # have said so): the welcome is the truth.
                conversation.joined = conversation.name in rooms
        self._seed_catch_up()
        self.refresh_lists()
        self.refresh_topics()
        if self.model.current is None:
            listed = self.model.rooms()
            first = next((c for c in listed if c.name == "lobby"), listed[0] if listed else None)
            if first is not None:
                self.open_conversation(first.stream)
        elif again:
            self.notice("Reconnected; caught up with what was missed.")
            current = self.current()
            if current is not None and not current.loaded:
                self._load_page(current, older=True)  # opened while offline
            self.refresh_members()
            self._check_unconfirmed()
        if self.stats_dock is not None and self.stats_dock.isVisible():
            self._subscribe_stats(True)  # a subscription ends with its connection

    # --- events -------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        if self.closing:
            return
        kind = event.get("type")
        if kind == "stats":
            if self.stats_panel is not None:
                self.stats_panel.add(event)
            return
        if kind == "invited" and "by" in event:
            by, room = str(event["by"]), str(event.get("room"))
            self._note(self.renderer.invitation(by, room))
            self.notifier.notify("Invitation", f"{peer(by)} invited you to #{peer(room)}")
            return
        added = self.model.add_event(event)
        if added is None:
            return
        conversation, at = added
        if kind == "joined" and event.get("user") == self.client.user and at > 0 and conversation.loaded:
            # Back in a room we had left: what was said meanwhile.
            self._fill_gap(conversation, conversation.events[at - 1]["id"], event["id"])
        if conversation.stream == self.model.current:
            if at == len(conversation.events) - 1:
                previous = conversation.events[at - 1] if at else None
                self._append(
                    self.renderer.event_html(event, previous), own=event.get("from") == self.client.user
                )
            else:
                self.render_current()
            if kind in MEMBERSHIP_EVENTS:
                self.refresh_members()
            if kind == "topic":
                self._update_header()
        if kind in MEMBERSHIP_EVENTS or conversation.unread or kind == "dm":
            self.refresh_lists()
        if event.get("user") == self.client.user and kind in ("kicked", "banned", "left"):
            if conversation.stream == self.model.current:
                self._update_header()
        from_other = event.get("from") not in (None, self.client.user)
        if from_other and (kind == "dm" or self.model.mentions_me(event)):
            where = "Direct message" if kind == "dm" else f"#{peer(conversation.name)}"
            self.notifier.notify(f"{peer(event.get('from'))} — {where}", peer(event.get("body", "")))

    # --- conversations ----------------------------------------------------------------

    def refresh_lists(self) -> None:
        for listing, conversations in (
            (self.room_list, self.model.rooms()),
            (self.dm_list, self.model.dms()),
        ):
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
                if conversation.stream == self.model.current:
                    item.setSelected(True)
                    listing.setCurrentItem(item)
            listing.blockSignals(False)
        self._filter(self.search.text())

    def _seed_catch_up(self) -> None:
        """Give the client a place to catch up from for rooms it has seen
        no event of yet, so what they miss while disconnected counts as
        unread.  From a history page, not from the welcome: an event being
        committed at the welcome is counted there but arrives live later,
        and must not be taken as seen.  (Direct messages need none of
        this: the server sends the ones a user missed after each login.)"""
        for conversation in self.model.rooms():
            stream = conversation.stream
            if stream in self.client.last_ids or stream == self.model.current:
                continue

            def got(page: dict[str, Any], stream: str = stream) -> None:
                if page["events"]:
                    self.client.note_seen(stream, page["events"][-1]["id"])

            self.request({"type": "history", "stream": stream, "limit": 1}).addCallbacks(got, lambda _: None)

    def refresh_topics(self) -> None:
        """Topics set at creation have no ``topic`` event: read them all."""

        def got(answer: dict[str, Any]) -> None:
            for room in answer.get("rooms", []):
                conversation = self.model.conversations.get(room_stream(room.get("room", "")))
                if conversation is not None and not any(
                    e.get("type") == "topic" for e in conversation.events
                ):
                    conversation.topic = room.get("topic", "")
            self._update_header()

        self.request({"type": "rooms"}).addCallbacks(got, self._report, errbackArgs=("rooms",))

    def conversations_in_order(self) -> list[Conversation]:
        return self.model.rooms() + self.model.dms()

    def open_conversation(self, stream: str) -> None:
        conversation = self.model.open(stream)
        self.members = []
        self.member_list.clear()
        self.render_current()
        self._update_header()
        self.refresh_lists()
        if not conversation.loaded and self.client.state == "online":
            self._load_page(conversation, older=True)
        self.refresh_members()
        self.input.setFocus()

    def open_dm(self, user: Any) -> None:
        if not isinstance(user, str):
            return
        name = user.strip().lstrip("@")
        name = name.lower() if name.isascii() else name  # as the server does
        if not USERNAME.fullmatch(name):
            self.notice(f"{user!r} is not a username (2 to 32 of a-z 0-9 _ -)", error=True)
        elif name != self.client.user:
            self.open_conversation(dm_stream(self.client.user, name))

    def open_nth(self, index: int) -> None:
        conversations = self.conversations_in_order()
        if 0 <= index < len(conversations):
            self.open_conversation(conversations[index].stream)

    def step(self, delta: int) -> None:
        conversations = self.conversations_in_order()
        if not conversations:
            return
        streams = [c.stream for c in conversations]
        at = streams.index(self.model.current) if self.model.current in streams else 0
        self.open_conversation(streams[(at + delta) % len(streams)])

    def _item_chosen(self, item: QListWidgetItem) -> None:
        stream = item.data(STREAM_ROLE)
        if stream and stream != self.model.current:
            self.open_conversation(stream)

    def _filter(self, text: str) -> None:
        needle = text.strip().lower().lstrip("#@")
        for listing in (self.room_list, self.dm_list):
            for row in range(listing.count()):
                item = present(listing.item(row))
                item.setHidden(bool(needle) and needle not in item.text().lower())

    def _open_first_match(self) -> None:
        for listing in (self.room_list, self.dm_list):
            for row in range(listing.count()):
                item = present(listing.item(row))
                if not item.isHidden():
                    self.search.clear()
                    self.open_conversation(item.data(STREAM_ROLE))
                    return

    def focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    def focus_input(self) -> None:
        self.input.setFocus()

    def keyPressEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        if event.key() == Qt.Key.Key_Escape and not self.input.hasFocus():
            self.search.clear()
            self.input.setFocus()
            return
        super().keyPressEvent(event)

    # --- the message view ----------------------------------------------------------------

    def current(self) -> Conversation | None:
        return self.model.conversations.get(self.model.current) if self.model.current else None

    def render_current(self) -> None:
        conversation = self.current()
        bar = present(self.view.verticalScrollBar())
        from_bottom = bar.maximum() - bar.value()
        if conversation is None:
            self.view.setHtml("")
        else:
            notes = self.notes.get(conversation.stream, [])
            self.view.setHtml(self.renderer.conversation_html(conversation.events, notes))
        bar.setValue(bar.maximum() - from_bottom)

    def _fill_gap(self, conversation: Conversation, after: int, before: int) -> None:
        if before - after <= 1:
            return

        def got(page: dict[str, Any]) -> None:
            if self.model.add_history(conversation.stream, page["events"], page["more"], older=False):
                if conversation.stream == self.model.current:
                    self.render_current()
            if page["more"] and page["events"]:
                self._fill_gap(conversation, page["events"][-1]["id"], before)

        request = {"type": "history", "stream": conversation.stream, "after": after, "before": before}
        self.request(dict(request, limit=200)).addCallbacks(got, self._report, errbackArgs=("history",))

    def _prepend(self, events: list[dict[str, Any]], first_shown: dict[str, Any]) -> None:
        bar = present(self.view.verticalScrollBar())
        from_bottom = bar.maximum() - bar.value()
        cursor = self.view.textCursor()
        cursor.movePosition(cursor.MoveOperation.Start)
        if day(events[-1].get("ts")) == day(first_shown.get("ts")):
            # The day's separator moves up to the new first event of that day.
            cursor.movePosition(cursor.MoveOperation.EndOfBlock, cursor.MoveMode.KeepAnchor)
            cursor.removeSelectedText()
            cursor.deleteChar()
        cursor.insertHtml(self.renderer.conversation_html(events))
        cursor.insertBlock()
        bar.setValue(bar.maximum() - from_bottom)

    def _append(self, html: str, own: bool = False) -> None:
        stay = self.view.at_bottom() or own
        cursor = self.view.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        if cursor.block().length() > 1:
            cursor.insertBlock()  # after setHtml the last paragraph is not empty
        cursor.insertHtml(html)
        cursor.insertBlock()
        if stay:
            self.view.scroll_to_bottom()

    def notice(self, text: str, error: bool = False) -> None:
        """A line for this window only: not an event, not kept."""
        if self.closing:
            return
        self._note(self.renderer.local_notice(text, error))

    def _note(self, note: str) -> None:
        conversation = self.current()
        if conversation is not None:
            # Kept with the conversation, so a re-render does not drop it.
            kept = self.notes.setdefault(conversation.stream, [])
            kept.append((conversation.newest_id, note))
            del kept[:-MAX_NOTES]
        self._append(note)

    def _update_header(self) -> None:
        conversation = self.current()
        if conversation is None:
            self.header.setText("")
            return
        if conversation.kind == "room":
            title = f"<b>#{html.escape(peer(conversation.name))}</b>"
            if conversation.topic:
                title += f" — {html.escape(peer(conversation.topic))}"
            if not conversation.joined:
                title += " <i>(you are no longer a member)</i>"
        else:
            title = f"<b>{html.escape(peer(conversation.name))}</b> — direct messages"
        self.header.setText(title)
        in_room = conversation.kind == "room" and conversation.joined
        self.leave_action.setEnabled(in_room)
        self.invite_action.setEnabled(in_room)
        self.topic_action.setEnabled(in_room)

    def load_older(self) -> None:
        conversation = self.current()
        if conversation is None or not conversation.more_before or self.client.state != "online":
            return
        self._load_page(conversation, older=True)

    def _load_page(self, conversation: Conversation, older: bool) -> None:
        if conversation.stream in self.loading_older:
            return
        request: dict[str, Any] = {"type": "history", "stream": conversation.stream, "limit": HISTORY_PAGE}
        if conversation.oldest_id is not None:
            request["before"] = conversation.oldest_id
        self.loading_older.add(conversation.stream)

        def loaded(page: dict[str, Any]) -> None:
            self.loading_older.discard(conversation.stream)
            first_page = not conversation.loaded
            oldest = conversation.oldest_id
            self.model.add_history(conversation.stream, page["events"], page["more"], older=True)
            if first_page and page["events"]:
                self.client.note_seen(conversation.stream, page["events"][-1]["id"])
            if conversation.stream != self.model.current:
                return
            older_events = [e for e in conversation.events if oldest is not None and e["id"] < oldest]
            if older_events and not first_page and len(older_events) == len(page["events"]):
                # Scrolling back: lay out only the new page, not everything
                # loaded so far (a full re-render costs ~0.1 ms per event).
                self._prepend(older_events, conversation.events[len(older_events)])
            else:
                self.render_current()
            if first_page:
                self.view.scroll_to_bottom()
            self._update_header()

        def failed(failure: Failure) -> None:
            self.loading_older.discard(conversation.stream)
            if failure.check(ConnectionClosed):
                return  # loaded when back online
            conversation.loaded = True
            conversation.more_before = False  # refused: asking again will not help
            self._report(failure, "history")

        self.request(request).addCallbacks(loaded, failed)

    # --- members -----------------------------------------------------------------------

    def refresh_members(self) -> None:
        conversation = self.current()
        if conversation is None or self.client.state != "online":
            return
        if conversation.kind == "dm":
            self._dm_members(conversation)
            return
        if not conversation.joined:
            self.members_heading.setText("Members")
            self._show_members([{"user": self.client.user, "role": "member", "online": True}])
            return
        stream = conversation.stream

        def got(answer: dict[str, Any]) -> None:
            if self.model.current == stream:
                self._show_members(answer.get("members", []))

        self.request({"type": "who", "room": conversation.name}).addCallbacks(
            got, lambda failure: self._report(failure, "who")
        )

    def _dm_members(self, conversation: Conversation) -> None:
        """Us and the peer, with the peer's presence as the server reports
        it in the member list of a room we share (the lobby, as a rule);
        with no room in common it is unknown, and shown so."""
        stream, peer = conversation.stream, conversation.name
        me = {"user": self.client.user, "role": "member", "online": True}
        rooms = sorted((c.name for c in self.model.rooms()), key=lambda r: (r != "lobby", r))

        def show(presence: bool | None) -> None:
            if self.model.current == stream:
                self._show_members([me, {"user": peer, "role": "member", "online": presence}])

        def ask(remaining: list[str]) -> None:
            if not remaining:
                return show(None)

            def got(answer: dict[str, Any]) -> None:
                found = [m for m in answer.get("members", []) if m.get("user") == peer]
                if found:
                    show(bool(found[0].get("online")))
                else:
                    ask(remaining[1:])

            def failed(failure: Failure) -> None:
                if not failure.check(ConnectionClosed):
                    ask(remaining[1:])

            self.request({"type": "who", "room": remaining[0]}).addCallbacks(got, failed)

        if self.model.current == stream and [m.get("user") for m in self.members] != [me["user"], peer]:
            show(None)  # until the server answers
        ask(rooms)

    def _show_members(self, members: list[dict[str, Any]]) -> None:
        self.members = members
        me = next((m for m in members if m.get("user") == self.client.user), None)
        self.my_room_role = me.get("role") if me else None
        online = sum(1 for m in members if m.get("online"))
        self.members_heading.setText(f"Members — {online} online of {len(members)}")
        self.member_list.clear()
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
            if presence:
                item.setForeground(self.palette().color(QPalette.ColorRole.Text))
            else:
                item.setForeground(self.palette().color(QPalette.ColorRole.PlaceholderText))
            self.member_list.addItem(item)

    def my_rank(self) -> int:
        return rules.my_rank(self.client.role, self.my_room_role)

    def member_actions(self, user: str) -> list[rules.Action]:
        """What the context menu offers for ``user``: (label, request);
        only what the server would allow us (see rules.py)."""
        conversation = self.current()
        room = conversation.name if conversation is not None and conversation.kind == "room" else None
        target = next((m for m in self.members if m.get("user") == user), {})
        return rules.member_actions(self.client.user, self.my_rank(), room, user, target.get("role"))

    def _member_menu_at(self, point: QPoint) -> None:
        item = self.member_list.itemAt(point)
        if item is None:
            return
        menu = self.member_menu(item.data(STREAM_ROLE))
        if not menu.isEmpty():
            menu.popup(present(self.member_list.viewport()).mapToGlobal(point))

    def member_menu(self, user: str) -> QMenu:
        menu = QMenu(self)
        menu.setObjectName("member-menu")
        for label, request in self.member_actions(user):
            if request is None:
                present(menu.addAction(label)).triggered.connect(lambda _=False, u=user: self.open_dm(u))
            else:
                if not menu.isEmpty() and len(menu.actions()) == 1:
                    menu.addSeparator()
                present(menu.addAction(label)).triggered.connect(lambda _=False, r=request: self.moderate(r))
        return menu

    def moderate(self, request: dict[str, Any]) -> None:
        self.request(request).addErrback(self._report, request["type"])

    # --- sending ---------------------------------------------------------------------

    def submit(self, text: str) -> None:
        text = text.rstrip("\n")
        if not text.strip():
            return
        conversation = self.current()
        if self.client.state != "online":
            # Kept in the box: it goes when the user presses Enter again online.
            self.notice("Not connected: your message is kept and can be sent once reconnected.", error=True)
            return
        if conversation is not None and conversation.kind == "dm" and not text.startswith("/"):
            self.input.clear()
            self._send({"type": "dm", "to": conversation.name, "body": text}, text)
            return
        room = conversation.name if conversation is not None and conversation.kind == "room" else ""
        try:
            command = commands.parse(text, room)
        except commands.CommandError as e:
            self.notice(str(e), error=True)
            return
        request = command.request or {}
        if (
            request.get("room") == ""
            or request.get("stream") == "room:"
            or command.action in ("topic",)
            and not room
        ):
            self.notice("That command acts on a room: open the room first, or name it.", error=True)
            return
        self.input.clear()
        if request.get("type") == "dm":
            self._send(request, text)
            return
        self.run_command(command, text)

    def _send(self, request: dict[str, Any], text: str) -> None:
        if request["type"] == "dm":
            stream = dm_stream(self.client.user, str(request["to"]).lower())
        else:
            stream = room_stream(request["room"])
        newest = self.model.conversation(stream).newest_id if stream in self.model.conversations else 0

        def failed(failure: Failure) -> None:
            if failure.check(ConnectionClosed):
                # It may have been stored before the connection dropped
                # (there is no idempotency key): decide once caught up.
                self.unconfirmed.cut_off(stream, request["body"], newest)
                self.notice("The connection dropped while sending; checking once reconnected.", error=True)
                return
            self._give_back(text)
            self._report(failure, request["type"])

        self.request(request).addErrback(failed)

    def _give_back(self, text: str) -> None:
        """A message that did not go returns to the input, ahead of
        anything typed since."""
        typed = self.input.toPlainText()
        self.input.setPlainText(text + ("\n" + typed if typed else ""))

    def _check_unconfirmed(self) -> None:
        conversations = self.model.conversations

        def events_of(stream: str) -> list[dict[str, Any]]:
            return conversations[stream].events if stream in conversations else []

        for body, arrived in self.unconfirmed.settle(self.client.user, events_of):
            if arrived:
                self.notice("A message sent as the connection dropped did arrive.")
            else:
                self._give_back(body)
                self.notice(
                    "A message sent as the connection dropped did not arrive: it is back in the input."
                )

    def run_command(self, command: commands.Command, text: str) -> None:
        action = command.action
        if action == "say":
            assert command.request is not None
            self._send(command.request, text)
        elif action == "help":
            for line in commands.HELP.splitlines():
                self.notice(line)
        elif action == "quit":
            self.close()
        elif action == "switch":
            target = self.model.conversations.get(room_stream(command.room or ""))
            if target is None or not target.joined:
                self.notice(f"You are not in #{command.room}: /join {command.room}", error=True)
            else:
                self.open_conversation(target.stream)
        elif action == "history":
            self.load_older()
        elif action == "topic":
            conversation = self.current()
            self.notice(f"Topic: {peer(conversation.topic) if conversation else ''}")
        elif action in ("join", "part", "request"):
            assert command.request is not None
            request = command.request

            def answered(answer: dict[str, Any]) -> None:
                if action == "join" and command.room:
                    self.model.conversation(room_stream(command.room)).joined = True
                    self.refresh_lists()
                    self.open_conversation(room_stream(command.room))
                    self.refresh_topics()
                elif request["type"] == "dm":
                    self.open_dm(request["to"])
                elif request["type"] == "logout":
                    self.log_out_done()
                elif answer.get("type") in ("rooms", "who", "info", "invited", "account"):
                    self.notice(_describe(answer))

            self.request(request).addCallbacks(answered, self._report, errbackArgs=(request["type"],))

    def log_out(self) -> None:
        self.run_command(commands.Command("request", {"type": "logout"}), "")

    def log_out_done(self) -> None:
        """The token is revoked: no reconnecting with it; back to the
        connect dialog."""
        self.client.stop()
        self._set_state_text("Logged out", "bad")
        if self.logged_out_callback is not None:
            self.logged_out_callback()

    def _report(self, failure: Failure, what: str) -> None:
        if failure.check(ConnectionClosed) and what in ("who", "rooms", "history", "stats"):
            return  # asked again once reconnected
        if isinstance(failure.value, ServerError):
            retry = failure.value.event.get("retry_after")
            extra = f" (try again in {retry} s)" if retry else ""
            self.notice(f"{what}: {peer(failure.value.message)}{extra}", error=True)
        else:
            self.notice(f"{what}: {peer(failure.getErrorMessage())}", error=True)

    # --- rooms and invitations -----------------------------------------------------------

    def create_room(self) -> QDialog:
        dialog = _CreateRoomDialog(self)
        dialog.setObjectName("create-room")
        dialog.setWindowTitle("New room")
        name = QLineEdit()
        name.setObjectName("room-name")
        name.setPlaceholderText("a-z 0-9 _ -")
        kind = QComboBox()
        kind.setObjectName("room-kind")
        for label, value in (
            ("Public: anyone may join", "public"),
            ("Private: by invitation only", "private"),
            ("Read-only: only moderators speak", "readonly"),
        ):
            kind.addItem(label, value)
        topic = QLineEdit()
        topic.setObjectName("room-topic")
        error = QLabel()
        error.setObjectName("create-error")
        error.setTextFormat(Qt.TextFormat.PlainText)  # it quotes the server
        error.setWordWrap(True)
        error.setStyleSheet("color: #d04040")
        error.hide()
        form = QFormLayout(dialog)
        form.addRow("&Name:", name)
        form.addRow("&Kind:", kind)
        form.addRow("&Topic:", topic)
        form.addRow(error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(dialog.accept)
        buttons.rejected.connect(dialog.reject)
        form.addRow(buttons)
        ok = present(buttons.button(QDialogButtonBox.StandardButton.Ok))

        def refused(text: str) -> None:
            """Stay open with everything as typed, the reason shown here."""
            error.setText(text)
            error.show()
            ok.setEnabled(True)
            name.setFocus(Qt.FocusReason.OtherFocusReason)
            name.selectAll()

        def create() -> None:
            room = name.text().strip()
            if not room:
                return refused("Enter a name for the room.")
            request = {"type": "create", "room": room, "kind": kind.currentData()}
            if topic.text().strip():
                request["topic"] = topic.text().strip()
            ok.setEnabled(False)
            error.hide()

            def created(_: Any) -> None:
                dialog.close_accepted()
                self.model.conversation(room_stream(room)).joined = True
                self.refresh_lists()
                self.open_conversation(room_stream(room))
                self.refresh_topics()

            def failed(failure: Failure) -> None:
                if isinstance(failure.value, ServerError):
                    retry = failure.value.event.get("retry_after")
                    extra = f" (try again in {retry} s)" if retry else ""
                    refused(f"{failure.value.message}{extra}")
                elif failure.check(ConnectionClosed):
                    refused("The connection dropped before the server answered; try again.")
                else:
                    refused(failure.getErrorMessage())

            self.request(request).addCallbacks(created, failed)

        dialog.submit = create
        dialog.open()
        return dialog

    def browse_rooms(self) -> QDialog:
        dialog = QDialog(self)
        dialog.setObjectName("browse-rooms")
        dialog.setWindowTitle("Join a room")
        listing = QListWidget()
        listing.setObjectName("room-directory")
        layout = QVBoxLayout(dialog)
        layout.addWidget(QLabel("Rooms you can join (private ones only if you are invited):"))
        layout.addWidget(listing)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        present(buttons.button(QDialogButtonBox.StandardButton.Ok)).setText("&Join")
        buttons.accepted.connect(dialog.accept)
        buttons.rejected.connect(dialog.reject)
        layout.addWidget(buttons)
        listing.itemActivated.connect(lambda _: dialog.accept())

        def got(answer: dict[str, Any]) -> None:
            for room in answer.get("rooms", []):
                label = f"#{room['room']}  [{room['kind']}, {room['members']} members]"
                if room.get("member"):
                    label += "  ✓ joined"
                if room.get("topic"):
                    label += f" — {room['topic']}"
                item = QListWidgetItem(label)
                item.setData(STREAM_ROLE, room["room"])
                listing.addItem(item)

        def accepted() -> None:
            item = listing.currentItem()
            if item is None:
                return
            room = item.data(STREAM_ROLE)
            if (
                self.model.conversations.get(room_stream(room))
                and self.model.conversation(room_stream(room)).joined
            ):
                self.open_conversation(room_stream(room))
            else:
                self.run_command(commands.Command("join", {"type": "join", "room": room}, room), "")

        dialog.accepted.connect(accepted)
        self.request({"type": "rooms"}).addCallbacks(got, self._report, errbackArgs=("rooms",))
        dialog.open()
        return dialog

    def join(self, room: str) -> None:
        self.run_command(commands.Command("join", {"type": "join", "room": room}, room), "")

    def start_dm(self) -> None:
        ask_text(self, "Direct message", "Send a direct message to (username):", self.open_dm)

    def current_room(self) -> str | None:
        """The name of the room on screen, or None (a DM, or nothing)."""
        conversation = self.current()
        return conversation.name if conversation is not None and conversation.kind == "room" else None

    def _room_request(self, request: dict[str, Any]) -> None:
        self.run_command(commands.Command("request", request), "")

    def invite(self) -> None:
        room = self.current_room()
        if room is not None:
            ask_text(
                self,
                "Invite",
                f"Invite to #{room} (username):",
                lambda user: self._room_request({"type": "invite", "room": room, "user": user}),
            )

    def set_topic(self) -> None:
        room = self.current_room()
        if room is not None:
            ask_text(
                self,
                "Topic",
                f"Topic of #{room}:",
                lambda topic: self._room_request({"type": "topic", "room": room, "topic": topic}),
                self.model.conversation(room_stream(room)).topic,
            )

    def leave_room(self) -> None:
        room = self.current_room()
        if room is not None:
            self.run_command(commands.Command("part", {"type": "part", "room": room}, room), "")

    # --- statistics -----------------------------------------------------------------------

    def toggle_stats(self) -> None:
        if self.client.role != "admin":
            return
        if self.stats_dock is None:
            from chatclient.gui.stats_panel import StatsPanel

            self.stats_panel = StatsPanel()
            self.stats_dock = QDockWidget("Server statistics", self)
            self.stats_dock.setObjectName("stats-dock")
            self.stats_dock.setWidget(self.stats_panel)
            self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.stats_dock)
            self.stats_dock.visibilityChanged.connect(self._stats_visibility)
            self._subscribe_stats(True)
        else:
            self.stats_dock.setVisible(not self.stats_dock.isVisible())

    def _stats_visibility(self, visible: bool) -> None:
        # Floating or docking the panel hides and shows it at once: decide
        # when that is over, or the charts would start again from history.
        self.reactor.callLater(0, self._stats_settled)

    def _stats_settled(self) -> None:
        wanted = self.stats_dock is not None and self.stats_dock.isVisible()
        if wanted != self.stats_subscribed and self.client.state == "online":
            self._subscribe_stats(wanted)

    def _subscribe_stats(self, on: bool) -> None:
        self.stats_subscribed = on

        def got(answer: dict[str, Any]) -> None:
            if on and self.stats_panel is not None:
                self.stats_panel.load(answer)

        self.request({"type": "stats", "subscribe": on}).addCallbacks(
            got, self._report, errbackArgs=("stats",)
        )

    # --- look --------------------------------------------------------------------------

    def changeEvent(self, event: QEvent | None) -> None:  # noqa: N802 (Qt's name)
        super().changeEvent(event)
        if event is not None and event.type() == QEvent.Type.PaletteChange:
            # Light or dark: the message colours are made from the palette.
            self.renderer = Renderer(self.palette(), self.client.user)
            self.render_current()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.shut_down()
        self.client.stop()
        super().closeEvent(event)
        if self.closed_callback is not None:
            self.closed_callback()


def _heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setBold(True)
    label.setFont(font)
    return label


def _describe(answer: dict[str, Any]) -> str:
    kind = answer.get("type")
    if kind == "rooms":
        return "Rooms: " + ", ".join(
            f"#{peer(r['room'])} ({peer(r['members'])})" for r in answer.get("rooms", [])
        )
    if kind == "who":
        return f"#{peer(answer.get('room'))}: " + ", ".join(map(peer, answer.get("users", [])))
    if kind == "info":
        return (
            f"{peer(answer.get('server'))}, up {answer.get('uptime', 0):.0f} s, "
            f"{peer(answer.get('users_online'))} users online"
        )
    if kind == "invited":
        return f"Invited {peer(answer.get('user'))} to #{peer(answer.get('room'))}"
    if kind == "account":
        return f"{peer(answer.get('user'))}: {'disabled' if answer.get('disabled') else 'enabled'}"
    return peer(str(answer))


class _CreateRoomDialog(QDialog):
    """The New room dialog: OK (or Return) asks the server, and the dialog
    closes only once the room exists; a refusal leaves it open, as typed,
    with the reason in it."""

    submit: Callable[[], None] | None = None

    def accept(self) -> None:
        if self.submit is not None:
            self.submit()

    def close_accepted(self) -> None:
        super().accept()
