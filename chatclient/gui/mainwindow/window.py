"""The main window: puts the widgets together and keeps them in step with
the conversation model and the connection.

It draws what :class:`~chatclient.gui.model.ChatModel` holds and sends
requests through the :class:`~chatclient.gui.bridge.ClientBridge`.
Nothing here waits: every request names what to do with its answer, or
with its :class:`~chatclient.gui.rules.Problem`, when it comes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from PyQt6.QtCore import QEvent, QPoint, Qt, QTimer
from PyQt6.QtGui import QAction, QKeySequence, QShortcut
from PyQt6.QtWidgets import QMainWindow, QMenu, QSplitter, QVBoxLayout, QWidget

from chatclient.commands import Command
from chatclient.gui import rules
from chatclient.gui.history import HistoryLoader
from chatclient.gui.mainwindow.commandline import WindowCommands
from chatclient.gui.mainwindow.conversations import ConversationList
from chatclient.gui.mainwindow.dialogs import (
    CreateRoomDialog,
    DevicesDialog,
    RoomDirectory,
    VerificationDialog,
    ask_text,
)
from chatclient.gui.mainwindow.header import ConversationHeader
from chatclient.gui.mainwindow.input import InputBar
from chatclient.gui.mainwindow.members import MemberList, member_menu
from chatclient.gui.mainwindow.messages import MessageView
from chatclient.gui.mainwindow.statsdock import StatsDock
from chatclient.gui.mainwindow.status import StatusBar
from chatclient.gui.model import ChatModel, Conversation
from chatclient.gui.notify import Notifier
from chatclient.gui.present import present
from chatclient.gui.render import Renderer, day, peer
from chatclient.gui.roster import Roster
from chatclient.gui.servers import Server
from chatserver.wire.names import dm_stream, room_stream
from chatserver.wire.validation import USERNAME

if TYPE_CHECKING:  # the bridge is the one GUI module that imports Twisted
    from chatclient.gui.bridge import ClientBridge

#: Notices kept per conversation (errors, reconnects ...).
MAX_NOTES = 100
#: Room events after which the member list is read again.
MEMBERSHIP_EVENTS = ("joined", "left", "kicked", "banned", "role")
#: Seconds between refreshes of the member list's presence dots.
PRESENCE_REFRESH = 30.0
#: The device notices of the client library, as the window says them.
DEVICE_NOTICES = {
    "new_device": "{user} has a new device, {name} ({device}). Verify it from the Security menu.",
    "changed_device": "The keys of {user}'s device {device} changed: it is not used.",
    "removed_device": "{user} removed the device {name} ({device}).",
    "bad_signature": "The server listed a device {device} of {user} with a false signature: not used.",
}
#: Why a verification ended without one.
VERIFY_FAILURES = {
    "mismatch": "the emoji did not match",
    "key_mismatch": "the device's key is not the one this device was given: someone is in the middle",
    "commitment": "the other device changed its key during the exchange",
    "user": "cancelled",
    "malformed": "the other device sent something malformed",
    "unknown_device": "this device does not know that device",
}
#: Requests asked again once reconnected: a dropped one needs no word.
ASKED_AGAIN = ("who", "rooms", "history", "stats")


class MainWindow(QMainWindow):
    def __init__(self, bridge: ClientBridge, server: Server) -> None:
        super().__init__()
        self.setObjectName("main-window")
        self.bridge = bridge
        #: The client library's object, for reading its state (the app and
        #: the tests do); requests go through the bridge.
        self.client = bridge.client
        self.server = server
        self.me = bridge.user
        self.model = ChatModel(self.me)
        self.renderer = Renderer(self.palette(), self.me)
        self.commands = WindowCommands(self)
        self.history = HistoryLoader(bridge, self.model, self)
        self.roster = Roster(bridge, self.model, self._show_members, self.report)
        self.my_room_role: str | None = None
        self.stats_dock: StatsDock | None = None
        #: The verification on screen, and the exchange this device started.
        self.verification: VerificationDialog | None = None
        self.verifying: str | None = None
        self.devices_dialog: DevicesDialog | None = None
        self.safety_box: Any = None
        self.keys_dialog: Any = None
        #: This window's notices per conversation: (newest id then, HTML).
        self.notes: dict[str, list[tuple[int, str]]] = {}
        #: Called when the user closes the window (the app ends).
        self.closed_callback: Callable[[], Any] | None = None
        #: Called after a logout (the app offers to connect again).
        self.logged_out_callback: Callable[[], Any] | None = None
        #: Called with the reason when reconnecting can never succeed.
        self.failed_callback: Callable[[str], Any] | None = None
        self.setWindowTitle(f"{self.me} on {server.host}:{server.port} — chatclient")
        self._build()
        self.notifier = Notifier(self)
        bridge.event_arrived.connect(self.on_event)
        bridge.state_changed.connect(self.on_state)
        self._presence = QTimer(self)
        self._presence.setInterval(int(PRESENCE_REFRESH * 1000))
        self._presence.timeout.connect(self.refresh_members)
        self._presence.start()
        self.on_state(bridge.state, None)

    # --- layout --------------------------------------------------------------

    def _build(self) -> None:
        self.side = ConversationList()
        self.side.chosen.connect(self._chosen)
        self.side.new_room_clicked.connect(self.create_room)
        self.side.join_clicked.connect(self.browse_rooms)
        self.side.message_clicked.connect(self.start_dm)
        self.search, self.room_list, self.dm_list = self.side.search, self.side.room_list, self.side.dm_list

        self.header = ConversationHeader()
        self.view = MessageView()
        self.view.reached_top.connect(self.load_older)
        self.view.join_requested.connect(self.join)
        self.input_bar = InputBar()
        self.input_bar.submitted.connect(self.submit)
        self.input = self.input_bar.input
        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(4, 4, 4, 4)
        centre_layout.addWidget(self.header)
        centre_layout.addWidget(self.view, 1)
        centre_layout.addWidget(self.input_bar)

        self.member_panel = MemberList()
        self.member_panel.message_requested.connect(self.open_dm)
        self.member_panel.menu_requested.connect(self._member_menu_at)
        self.member_list = self.member_panel.member_list

        splitter = QSplitter()
        splitter.addWidget(self.side)
        splitter.addWidget(centre)
        splitter.addWidget(self.member_panel)
        splitter.setStretchFactor(1, 1)
        em = self.fontMetrics().horizontalAdvance("M")
        splitter.setSizes([em * 16, em * 48, em * 14])
        self.setCentralWidget(splitter)
        self.resize(em * 80, em * 46)

        self.status = StatusBar()
        self.setStatusBar(self.status)
        self.state_label, self.fingerprint_label = self.status.state_label, self.status.fingerprint_label
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
        action(go, "&Search rooms and people", "Ctrl+K", self.side.focus_search)
        action(go, "&Message input", "Ctrl+L", self.focus_input)
        action(go, "&Previous conversation", "Alt+Up", lambda: self.step(-1))
        action(go, "&Next conversation", "Alt+Down", lambda: self.step(1))
        for number in range(1, 10):
            QShortcut(QKeySequence(f"Ctrl+{number}"), self, lambda n=number: self.open_nth(n - 1))
        QShortcut(QKeySequence("Ctrl+PgUp"), self, lambda: self.step(-1))
        QShortcut(QKeySequence("Ctrl+PgDown"), self, lambda: self.step(1))
        security = present(bar.addMenu("&Security"))
        action(security, "My &devices…", None, lambda: self.show_devices(self.me))
        action(security, "Devices of this &person…", None, self.show_peer_devices)
        action(security, "&Verify a device of this person…", None, self.verify_peer)
        action(security, "&Safety number with this person…", None, self.show_safety_number)
        security.addSeparator()
        action(security, "&Export room keys…", None, self.export_keys)
        action(security, "&Import room keys…", None, self.import_keys)
        view = present(bar.addMenu("&View"))
        self.stats_action = action(view, "Server &statistics", "Ctrl+Shift+S", self.toggle_stats)
        self.stats_action.setEnabled(False)

    @property
    def closing(self) -> bool:
        """The window is going away: nothing more is drawn (nor reaches it
        through the bridge)."""
        return self.bridge.closed

    def shut_down(self) -> None:
        """No more drawing: the window is going away."""
        self.bridge.shut_down()
        self.status.stop_countdown()
        self._presence.stop()
        if self.stats_dock is not None:
            self.stats_dock.stop()

    # --- connection state ------------------------------------------------------

    def on_state(self, state: str, detail: Any) -> None:
        if self.closing:
            return
        if state == "online":
            self.status.stop_countdown()
            self.status.show_fingerprint(self.bridge.fingerprint)
            self.online(detail or {})
        elif state == "reconnecting":
            if self.stats_dock is not None:
                self.stats_dock.connection_lost()
            reason = peer(getattr(detail, "message", "") or str(detail or ""))
            self.notice(f"Disconnected ({reason}). Reconnecting…", error=True)
            self.status.count_down(self.bridge.retry_in)
            self.member_list.setEnabled(False)
        elif state == "connecting":
            again = self.bridge.connections > 0
            self.status.show_state("Reconnecting…" if again else f"Connecting to {self.server.host}…", "busy")
            if again:
                # A setup that fails waits for the next attempt.
                self.status.count_down(self.bridge.retry_in, now=False)
        elif state == "failed":
            self.status.stop_countdown()
            reason = peer(getattr(detail, "message", None) or str(detail))
            self.status.show_state(f"Disconnected: {reason}", "bad")
            if self.bridge.connections > 0:
                self.notice(f"Disconnected for good: {reason}", error=True)
                self.input.setReadOnly(True)
                if self.failed_callback is not None:
                    self.failed_callback(reason)
        elif state == "stopped":
            self.status.stop_countdown()
            self.status.show_state("Disconnected", "bad")

    def online(self, welcome: dict[str, Any]) -> None:
        role = welcome.get("role", self.bridge.role)
        admin = role == "admin"
        self.status.show_state(f"Secure (AES-256-GCM) — {self.me}{' (admin)' if admin else ''}", "good")
        self.stats_action.setEnabled(admin)
        self.member_list.setEnabled(True)
        again = self.bridge.connections > 1
        rooms = set(welcome.get("rooms", []))
        for stream in welcome.get("streams", {}):
            self.model.conversation(stream)
        for conversation in self.model.conversations.values():
            if conversation.kind == "room":
                # Removed while away (and refused the catch-up that would
                # have said so): the welcome is the truth.
                conversation.joined = conversation.name in rooms
        self.history.seed_catch_up()
        self.refresh_lists()
        self.history.refresh_topics()
        if self.model.current is None:
            listed = self.model.rooms()
            first = next((c for c in listed if c.name == "lobby"), listed[0] if listed else None)
            if first is not None:
                self.open_conversation(first.stream)
        elif again:
            self.notice("Reconnected; caught up with what was missed.")
            current = self.current()
            if current is not None and not current.loaded:
                self.history.load_page(current)  # opened while offline
            self.refresh_members()
        if self.stats_dock is not None:
            self.stats_dock.online()

    # --- events -------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        if self.closing:
            return
        kind = event.get("type")
        if kind == "stats":
            if self.stats_dock is not None:
                self.stats_dock.add(event)
            return
        if kind == "e2e_notice":
            self._device_notice(event)
            return
        if kind == "e2e_verify":
            self._verification_step(event)
            return
        if kind == "e2e_decrypted" and isinstance(event.get("event"), dict):
            # A message shown as unreadable until its room key came.
            inner = event["event"]
            conversation = self.model.conversations.get(str(inner.get("stream")))
            if (
                conversation is not None
                and conversation.replace(inner)
                and conversation.stream == self.model.current
            ):
                self.render_current()
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
        if kind == "joined" and event.get("user") == self.me and at > 0 and conversation.loaded:
            # Back in a room we had left: what was said meanwhile.
            self.history.fill_gap(conversation, conversation.events[at - 1]["id"], event["id"])
        if conversation.stream == self.model.current:
            if at == len(conversation.events) - 1:
                previous = conversation.events[at - 1] if at else None
                self.view.append_html(
                    self.renderer.event_html(event, previous), own=event.get("from") == self.me
                )
            else:
                self.render_current()
            if kind in MEMBERSHIP_EVENTS:
                self.refresh_members()
            if kind == "topic":
                self._update_header()
        if kind in MEMBERSHIP_EVENTS or conversation.unread or kind == "dm":
            self.refresh_lists()
        if event.get("user") == self.me and kind in ("kicked", "banned", "left"):
            if conversation.stream == self.model.current:
                self._update_header()
        from_other = event.get("from") not in (None, self.me)
        if from_other and (kind == "dm" or self.model.mentions_me(event)):
            where = "Direct message" if kind == "dm" else f"#{peer(conversation.name)}"
            self.notifier.notify(f"{peer(event.get('from'))} — {where}", peer(event.get("body", "")))

    # --- conversations ----------------------------------------------------------------

    def refresh_lists(self) -> None:
        self.side.show_conversations(self.model.rooms(), self.model.dms(), self.model.current)

    def conversations_in_order(self) -> list[Conversation]:
        return self.model.rooms() + self.model.dms()

    def open_conversation(self, stream: str) -> None:
        conversation = self.model.open(stream)
        self.roster.members = []  # a new conversation: nothing shown yet
        self.member_panel.clear()
        self.render_current()
        self._update_header()
        self.refresh_lists()
        if not conversation.loaded and self.bridge.online:
            self.history.load_page(conversation)
        self.refresh_members()
        self.input.setFocus()

    def joined(self, room: str) -> None:
        """The server let us into ``room``: show it."""
        self.model.conversation(room_stream(room)).joined = True
        self.refresh_lists()
        self.open_conversation(room_stream(room))
        self.history.refresh_topics()

    def open_dm(self, user: Any) -> None:
        if not isinstance(user, str):
            return
        name = user.strip().lstrip("@")
        name = name.lower() if name.isascii() else name  # as the server does
        if not USERNAME.fullmatch(name):
            self.notice(f"{user!r} is not a username (2 to 32 of a-z 0-9 _ -)", error=True)
        elif name != self.me:
            self.open_conversation(dm_stream(self.me, name))

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

    def _chosen(self, stream: str) -> None:
        if stream != self.model.current:
            self.open_conversation(stream)

    def focus_search(self) -> None:
        self.side.focus_search()

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

    def current_room(self) -> str | None:
        """The name of the room on screen, or None (a DM, or nothing)."""
        conversation = self.current()
        return conversation.name if conversation is not None and conversation.kind == "room" else None

    def render_current(self) -> None:
        conversation = self.current()
        if conversation is None:
            self.view.show_all("")
        else:
            notes = self.notes.get(conversation.stream, [])
            self.view.show_all(self.renderer.conversation_html(conversation.events, notes))

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
        self.view.append_html(note)

    def encrypted(self, conversation: Conversation | None) -> bool:
        """Whether what is said in ``conversation`` is end-to-end encrypted."""
        e2e = self.bridge.e2e
        if conversation is None or e2e is None:
            return False
        return conversation.kind == "dm" or e2e.is_encrypted(conversation.name)

    def _update_header(self) -> None:
        conversation = self.current()
        self.header.show_conversation(conversation, self.encrypted(conversation))
        in_room = conversation is not None and conversation.kind == "room" and conversation.joined
        for room_action in (self.leave_action, self.invite_action, self.topic_action):
            room_action.setEnabled(in_room)

    def load_older(self) -> None:
        self.history.load_older(self.current())

    # --- history.HistoryView: what the loader brought -------------------------------

    def page_loaded(
        self, conversation: Conversation, prepended: list[dict[str, Any]] | None, first_page: bool
    ) -> None:
        if prepended:
            first_shown = conversation.events[len(prepended)]
            self.view.prepend_html(
                self.renderer.conversation_html(prepended),
                same_day=day(prepended[-1].get("ts")) == day(first_shown.get("ts")),
            )
        else:
            self.render_current()
        if first_page:
            self.view.scroll_to_bottom()
        self._update_header()

    def gap_filled(self, conversation: Conversation) -> None:
        self.render_current()

    def topics_loaded(self) -> None:
        self._update_header()

    # --- members -----------------------------------------------------------------------

    def refresh_members(self) -> None:
        self.roster.refresh(self.current())

    def _show_members(self, members: list[dict[str, Any]]) -> None:
        mine = next((m for m in members if m.get("user") == self.me), None)
        self.my_room_role = mine.get("role") if mine else None
        self.member_panel.show_members(members)

    @property
    def members(self) -> list[dict[str, Any]]:
        """The members on screen."""
        return self.roster.members

    def my_rank(self) -> int:
        return rules.my_rank(self.bridge.role, self.my_room_role)

    def member_actions(self, user: str) -> list[rules.Action]:
        """What the context menu offers for ``user``: (label, request);
        only what the server would allow us (see rules.py)."""
        target = next((m for m in self.members if m.get("user") == user), {})
        return rules.member_actions(self.me, self.my_rank(), self.current_room(), user, target.get("role"))

    def _member_menu_at(self, user: str, at: QPoint) -> None:
        menu = self.member_menu(user)
        if not menu.isEmpty():
            menu.popup(at)

    def member_menu(self, user: str) -> QMenu:
        return member_menu(self, user, self.member_actions(user), self.open_dm, self.moderate)

    def moderate(self, request: dict[str, Any]) -> None:
        self.bridge.request(request, None, lambda problem: self.report(problem, request["type"]))

    # --- sending ---------------------------------------------------------------------

    def submit(self, text: str) -> None:
        text = text.rstrip("\n")
        if not text.strip():
            return
        conversation = self.current()
        if not self.bridge.online:
            # Kept in the box: it goes when the user presses Enter again online.
            self.notice("Not connected: your message is kept and can be sent once reconnected.", error=True)
            return
        if conversation is not None and conversation.kind == "dm" and not text.startswith("/"):
            self.input.clear()
            self.send({"type": "dm", "to": conversation.name, "body": text}, text)
            return
        self.commands.run_line(text, self.current_room() or "")

    def send(self, request: dict[str, Any], text: str) -> None:
        """A message (``say`` or ``dm``) as typed in ``text``.  The client
        library sends it exactly once, again after a reconnection if need
        be (the server knows it by its id), so only a refusal, or a
        client that gave up on it, puts the text back in the input."""

        def failed(problem: rules.Problem) -> None:
            self.input.give_back(text)
            if problem.dropped:
                self.notice("The message could not be sent: it is back in the input.", error=True)
                return
            self.report(problem, request["type"])

        self.bridge.request(request, None, failed)

    def log_out(self) -> None:
        self.commands.dispatch(Command("request", {"type": "logout"}))

    def logged_out(self) -> None:
        """The token is revoked: no reconnecting with it; back to the
        connect dialog."""
        self.bridge.stop()
        self.status.show_state("Logged out", "bad")
        if self.logged_out_callback is not None:
            self.logged_out_callback()

    def report(self, problem: rules.Problem, what: str) -> None:
        if problem.dropped and what in ASKED_AGAIN:
            return  # asked again once reconnected
        self.notice(f"{what}: {peer(problem.text())}", error=True)

    # --- rooms and invitations -----------------------------------------------------------

    def create_room(self) -> CreateRoomDialog:
        dialog = CreateRoomDialog(self)

        def create(request: dict[str, Any]) -> None:
            room = request["room"]

            def created(_: Any) -> None:
                dialog.created()
                self.joined(room)

            def failed(problem: rules.Problem) -> None:
                if problem.dropped:
                    dialog.refuse("The connection dropped before the server answered; try again.")
                else:
                    dialog.refuse(problem.text())

            self.bridge.request(request, created, failed)

        dialog.create_requested.connect(create)
        dialog.open()
        return dialog

    def browse_rooms(self) -> RoomDirectory:
        dialog = RoomDirectory(self)

        def chosen(room: str) -> None:
            conversation = self.model.conversations.get(room_stream(room))
            if conversation is not None and conversation.joined:
                self.open_conversation(room_stream(room))
            else:
                self.join(room)

        dialog.chosen.connect(chosen)
        self.bridge.request(
            {"type": "rooms"},
            lambda answer: dialog.show_rooms(answer.get("rooms", [])),
            lambda problem: self.report(problem, "rooms"),
        )
        dialog.open()
        return dialog

    def join(self, room: str) -> None:
        self.commands.dispatch(Command("join", {"type": "join", "room": room}, room))

    def start_dm(self) -> None:
        ask_text(self, "Direct message", "Send a direct message to (username):", self.open_dm)

    def _ask_for_room(self, kind: str, field: str, title: str, label: str, text: str = "") -> None:
        """Ask for one field of a request about the room on screen
        (``invite``'s user, ``topic``'s topic), then send it."""
        room = self.current_room()
        if room is None:
            return

        def send(value: str) -> None:
            self.commands.dispatch(Command("request", {"type": kind, "room": room, field: value}))

        ask_text(self, title, label.format(room=room), send, text)

    def invite(self) -> None:
        self._ask_for_room("invite", "user", "Invite", "Invite to #{room} (username):")

    def set_topic(self) -> None:
        room = self.current_room()
        topic = self.model.conversation(room_stream(room)).topic if room is not None else ""
        self._ask_for_room("topic", "topic", "Topic", "Topic of #{room}:", topic)

    def leave_room(self) -> None:
        room = self.current_room()
        if room is not None:
            self.commands.dispatch(Command("part", {"type": "part", "room": room}, room))

    # --- end-to-end encryption -----------------------------------------------------------

    def e2e_command(self, command: Command) -> None:
        """A slash command about devices and keys (see commands.parse)."""
        op, args = command.e2e, command.args
        if self.bridge.e2e is None:
            self.notice("End-to-end encryption is off for this connection.", error=True)
        elif op == "devices":
            self.show_devices(args[0].lower() if args else self.me)
        elif op == "verify":
            self.verify(args[0].lower(), args[1] if len(args) > 1 else None)
        elif op in ("match", "nomatch"):
            dialog = self.verification
            if dialog is None:
                self.notice("No verification is waiting for an answer.", error=True)
            else:
                dialog._answer(op == "match")
        elif op == "safety":
            self.show_safety_number(args[0].lower())
        elif op == "trust":
            self.bridge.e2e.book.acknowledge(args[0].lower())
            self.notice(f"Sending to {peer(args[0])} again.")
        elif op == "export":
            self.export_keys(args[0])
        elif op == "import":
            self.import_keys(args[0])

    def _dm_peer(self) -> str | None:
        conversation = self.current()
        return conversation.name if conversation is not None and conversation.kind == "dm" else None

    def _ask_peer(self, then: Callable[[str], Any]) -> None:
        name = self._dm_peer()
        if name is not None:
            then(name)
        else:
            ask_text(self, "Security", "Username:", lambda text: then(text.lower()))

    def show_peer_devices(self) -> None:
        self._ask_peer(self.show_devices)

    def verify_peer(self) -> None:
        self._ask_peer(lambda user: self.verify(user, None))

    def show_devices(self, user: str) -> DevicesDialog | None:
        e2e = self.bridge.e2e
        if e2e is None:
            return None
        dialog = DevicesDialog(user, self)
        self.devices_dialog = dialog
        dialog.verify_requested.connect(lambda device: self.verify(user, device))

        def listed(found: dict[str, dict[str, Any]]) -> None:
            rows = []
            if user == self.me:
                rows.append(
                    {
                        "device": e2e.device_id,
                        "name": "this device",
                        "ed25519": e2e.device.ed25519,
                        "state": "this device",
                    }
                )
            for device, entry in sorted(found.get(user, {}).items()):
                state = "verified" if entry.get("verified") else "unverified"
                rows.append(
                    {
                        "device": device,
                        "name": entry.get("name", ""),
                        "ed25519": entry["ed25519"],
                        "state": state,
                    }
                )
            kept = ""
            if user == self.me:
                kept = f"This device's keys are kept under its {e2e.store_key_method}."
            dialog.show_devices(rows, kept)

        self.bridge.call(
            lambda: e2e.devices_of([user]), listed, lambda problem: self.report(problem, "devices")
        )
        dialog.open()
        return dialog

    def verify(self, user: str, device: str | None) -> None:
        e2e = self.bridge.e2e
        if e2e is None:
            return

        def started(txn: str) -> None:
            self.verifying = txn

        self.bridge.call(
            lambda: e2e.verify(user, device), started, lambda problem: self.report(problem, "verify")
        )

    def _verification_step(self, event: dict[str, Any]) -> None:
        e2e = self.bridge.e2e
        txn, state = str(event.get("txn")), event.get("state")
        dialog = self.verification
        if state == "started" or dialog is None or dialog.txn != txn:
            if state not in ("started", "sas"):
                return
            dialog = self.verification = VerificationDialog(
                str(event.get("user")), str(event.get("device")), txn, self
            )
            dialog.answered.connect(lambda match: e2e.confirm(txn, match) if e2e is not None else None)
            dialog.open()
        if state == "sas":
            dialog.show_sas([tuple(pair) for pair in event.get("emoji", [])], list(event.get("decimals", [])))
        elif state == "done":
            dialog.finished_as(True)
            self.notice(f"{peer(event.get('user'))}'s device {peer(event.get('device'))} is verified.")
        elif state == "cancelled":
            dialog.finished_as(False, VERIFY_FAILURES.get(str(event.get("code")), peer(event.get("code"))))

    def _device_notice(self, event: dict[str, Any]) -> None:
        user, device, name = peer(event.get("user")), peer(event.get("device")), peer(event.get("name"))
        text = DEVICE_NOTICES.get(str(event.get("kind")), "{user}'s device {device} changed").format(
            user=user, device=device, name=name
        )
        if event.get("blocking"):
            text += f" Nothing is sent to {user} until you look (Security menu, or /trust {user})."
        note = self.renderer.local_notice(text, error=event.get("kind") != "new_device")
        stream = dm_stream(self.me, str(event.get("user"))) if event.get("user") != self.me else None
        if stream is not None and stream in self.model.conversations and stream != self.model.current:
            conversation = self.model.conversations[stream]
            kept = self.notes.setdefault(stream, [])
            kept.append((conversation.newest_id, note))
            del kept[:-MAX_NOTES]
        self._note(note)

    def show_safety_number(self, user: str | None = None) -> None:
        e2e = self.bridge.e2e
        if e2e is None:
            return
        if user is None:
            self._ask_peer(self.show_safety_number)
            return
        from PyQt6.QtWidgets import QMessageBox

        def shown(number: str) -> None:
            box = QMessageBox(self)
            box.setObjectName("safety-number")
            box.setWindowTitle(f"Safety number with {user}")
            box.setText(f"Compare this number with {peer(user)}, in person or on a call:\n\n{number}")
            box.open()
            self.safety_box = box

        self.bridge.call(
            lambda: e2e.safety_number(user), shown, lambda problem: self.report(problem, "safety")
        )

    def export_keys(self, path: str | None = None) -> None:
        self._keys_file("export", path)

    def import_keys(self, path: str | None = None) -> None:
        self._keys_file("import", path)

    def _keys_file(self, op: str, path: str | None) -> None:
        from PyQt6.QtWidgets import QFileDialog, QInputDialog, QLineEdit

        e2e = self.bridge.e2e
        if e2e is None:
            return
        if path is None:
            chooser = QFileDialog.getSaveFileName if op == "export" else QFileDialog.getOpenFileName
            path = chooser(self, "Room keys file", "room-keys.json")[0]
            if not path:
                return
        dialog = QInputDialog(self)
        dialog.setObjectName("keys-passphrase")
        dialog.setWindowTitle("Room keys")
        dialog.setLabelText("Passphrase of the keys file:")
        dialog.setTextEchoMode(QLineEdit.EchoMode.Password)

        def chosen(phrase: str) -> None:
            from pathlib import Path

            try:
                if op == "export":
                    e2e.export_keys_file(Path(path), phrase)
                    self.notice(f"Room keys written to {path}.")
                else:
                    count = e2e.import_keys_file(Path(path), phrase)
                    self.notice(f"{count} room keys read from {path}.")
                    self.render_current()
            except OSError as e:
                self.notice(f"Cannot use {path}: {e.strerror or e}", error=True)
            except Exception as e:  # SendBlocked: a wrong passphrase, not an export
                self.notice(str(e), error=True)

        dialog.textValueSelected.connect(chosen)
        dialog.open()
        self.keys_dialog = dialog

    # --- statistics -----------------------------------------------------------------------

    @property
    def stats_panel(self) -> Any:
        return self.stats_dock.panel if self.stats_dock is not None else None

    def toggle_stats(self) -> None:
        if self.bridge.role != "admin":
            return
        if self.stats_dock is None:
            self.stats_dock = StatsDock(self.bridge, self.report, self)
            self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.stats_dock)
            self.stats_dock.subscribe(True)
        else:
            self.stats_dock.setVisible(not self.stats_dock.isVisible())

    # --- look --------------------------------------------------------------------------

    def changeEvent(self, event: QEvent | None) -> None:  # noqa: N802 (Qt's name)
        super().changeEvent(event)
        if event is not None and event.type() == QEvent.Type.PaletteChange:
            # Light or dark: the message colours are made from the palette.
            self.renderer = Renderer(self.palette(), self.me)
            self.render_current()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.shut_down()
        self.bridge.stop()
        super().closeEvent(event)
        if self.closed_callback is not None:
            self.closed_callback()
