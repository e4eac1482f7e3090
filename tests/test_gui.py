"""The desktop client, driven through its real window against real servers.

Each test runs the application in a child process (``tests.gui_remote``:
the asyncio reactor on the Qt loop cannot be installed in trial's
process), offscreen, and works it with real key presses and clicks.  The
server, and the second user, are real too.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from twisted.internet import endpoints, reactor, task
from twisted.trial import unittest

from chatclient.endpoints import endpoint_description
from chatclient.reconnect import ReconnectingClient
from chatclient.session import ServerError, connect
from chatserver.storage import queries
from tests.e2e_support import e2e_client
from tests.gui_support import GUI_MISSING, start_gui
from tests.processes import spawn, start_twistd
from tests.support import (
    PASSWORD,
    PYTHON,
    EventQueue,
    add_admin,
    direct,
    install_identity,
    logged_in,
    open_session,
    start_server,
    until,
)
from tests.test_cli import BitFlipProxy, HostileServer
from tests.test_tls import self_signed, tls_server


def user_exists(server: Any, name: str) -> bool:
    db = direct(server)
    try:
        return bool(db.run(queries.user_exists, name))
    finally:
        db.close()


class GuiTests(unittest.TestCase):
    if GUI_MISSING:
        skip = GUI_MISSING

    async def test_log_in_send_and_receive_from_a_second_client(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        bob_events = EventQueue(bob)
        gui = await start_gui(self)
        await gui.connect(server.port, "alice", PASSWORD)
        # First use: the key's fingerprint is shown and must be accepted.
        shown = await gui.wait(
            "controller.trust and controller.trust.dialog and controller.trust.dialog.informativeText()"
        )
        self.assertIn(server.identity.fingerprint, shown)
        await gui.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
        await gui.wait("window().client.state == 'online'")
        self.assertIn("Secure", await gui.eval("window().state_label.text()"))
        self.assertIn(server.identity.fingerprint[:20], await gui.eval("window().fingerprint_label.text()"))
        await gui.wait("'#lobby' in texts(window().room_list)")
        await gui.exec("type_text(window().input, 'hello from the window')\npress(window().input, 'Return')")
        got = await bob_events.next(lambda e: e.get("type") == "msg" and e["from"] == "alice", timeout=30)
        self.assertEqual(got["body"], "hello from the window")
        self.assertEqual(await gui.eval("window().input.toPlainText()"), "")
        await bob.say("lobby", "hi alice, see https://example.org/x")
        await gui.wait("'hi alice, see' in window().view.toPlainText()")
        html = await gui.eval("window().view.toHtml()")
        self.assertIn('href="https://example.org/x"', html)
        self.assertIn("alice (you)", await gui.eval("window().view.toPlainText()"))
        # Markup from the network is text, and only http(s) becomes a link.
        await bob.say(
            "lobby", "<b>bold?</b> <img src=x> <a href='javascript:alert(1)'>x</a> file:///etc/passwd"
        )
        await gui.wait("'<b>bold?</b> <img src=x>' in window().view.toPlainText()")
        html = await gui.eval("window().view.toHtml()")
        self.assertNotIn('href="javascript', html)
        self.assertNotIn('href="file', html)
        self.assertNotIn("<img", html)

    async def test_registration_asks_for_the_password_twice_and_shows_whether_they_match(self) -> None:
        server = await start_server(self)
        gui = await start_gui(self)
        await gui.wait("controller.dialog and controller.dialog.isVisible()")
        # Logging in: one password field.
        self.assertFalse(await gui.eval("controller.dialog.password_again.isVisible()"))
        await gui.exec(
            "d = controller.dialog\n"
            f"d.port.setValue({server.port})\n"
            "type_text(d.user, 'erin')\n"
            "type_text(d.password, 'a long new password')\n"
            "d.register_mode.setChecked(True)\n"
            "type_text(d.password_again, 'a long new passwore')\n"
        )
        self.assertTrue(await gui.eval("controller.dialog.password_again.isVisible()"))
        self.assertEqual(await gui.eval("controller.dialog.password_match.text()"), "✗ The passwords differ.")
        shot = Path(self.mktemp()).resolve().with_suffix(".png")
        self.assertGreater(await gui.eval(f"shot(controller.dialog, {str(shot)!r})"), 1000)
        await gui.exec("press(controller.dialog.password_again, 'Return')")
        self.assertEqual(
            await gui.eval("controller.dialog.error.text()"), "Type the same new password twice."
        )
        self.assertTrue(await gui.eval("controller.dialog.isVisible()"))  # nothing was sent
        self.assertFalse(user_exists(server, "erin"))
        await gui.exec("d.password_again.backspace()\ntype_text(d.password_again, 'd')")
        self.assertEqual(await gui.eval("controller.dialog.password_match.text()"), "✓ The passwords match.")
        await gui.exec("press(controller.dialog.password_again, 'Return')")
        await gui.wait("controller.trust and controller.trust.dialog and controller.trust.dialog.isVisible()")
        await gui.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
        await gui.wait("window() and window().client.state == 'online'")
        self.assertTrue(user_exists(server, "erin"))

    async def test_registration_with_an_invite_code(self) -> None:
        """On a server that registers by invitation: without a code the
        dialog comes back saying why, still registering; with the code the
        account is made, and the code is not remembered."""
        from tests.test_invites import make_invites

        server = await start_server(self, allow_registration="invite")
        (code,) = make_invites(server)
        gui = await start_gui(self)
        await gui.wait("controller.dialog and controller.dialog.isVisible()")
        self.assertFalse(await gui.eval("controller.dialog.invite.isVisible()"))  # logging in
        await gui.connect(server.port, "erin", PASSWORD, register=True)
        await gui.wait("controller.trust and controller.trust.dialog and controller.trust.dialog.isVisible()")
        await gui.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
        error = await gui.wait(
            "controller.dialog and controller.dialog.isVisible() and controller.dialog.error.isVisible()"
            " and controller.dialog.error.text()"
        )
        self.assertIn("by invitation only. Enter the invite code the server's admin gave you.", error)
        self.assertFalse(user_exists(server, "erin"))
        self.assertTrue(await gui.eval("controller.dialog.register_mode.isChecked()"))
        self.assertTrue(await gui.eval("controller.dialog.invite.isVisible()"))
        shot = Path(self.mktemp()).resolve().with_suffix(".png")
        self.assertGreater(await gui.eval(f"shot(controller.dialog, {str(shot)!r})"), 1000)
        await gui.exec(
            "d = controller.dialog\n"
            f"type_text(d.password, {PASSWORD!r})\n"
            f"type_text(d.password_again, {PASSWORD!r})\n"
            f"type_text(d.invite, {code!r})\n"
            "press(d.invite, 'Return')\n"
        )
        await gui.wait("window() and window().client.state == 'online'")
        self.assertTrue(user_exists(server, "erin"))
        remembered = (gui.home / "servers.json").read_text()
        self.assertIn('"erin"', remembered)
        self.assertNotIn(code, remembered)

    async def test_switch_rooms_send_a_dm_and_load_history_on_scroll_up(self) -> None:
        server = await start_server(self)
        # A client with a device: the GUI's direct messages are end to end.
        bob, _, bob_events = await e2e_client(self, server, "bob", Path(self.mktemp()))
        await bob.request({"type": "create", "room": "design", "kind": "public", "topic": "Mock-ups"})
        # More than one page of history, so the oldest must be scrolled for.
        for n in range(120):
            await bob.say("design", f"design note {n}")
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        await gui.exec("window().resize(900, 600)")

        # Join from the room directory dialog.
        await gui.exec("window().browse_rooms()")
        await gui.wait("modal() and modal().objectName() == 'browse-rooms'")
        await gui.wait("modal().findChild(QListWidget, 'room-directory').count() == 2")
        await gui.exec(
            "listing = modal().findChild(QListWidget, 'room-directory')\n"
            "rows = [i for i in range(listing.count()) if '#design' in listing.item(i).text()]\n"
            "listing.setCurrentRow(rows[0])\n"
            "modal().accept()"
        )
        await gui.wait("window().model.current == 'room:design'")
        self.assertIn(
            "Mock-ups", await gui.wait("'Mock-ups' in window().header.text() and window().header.text()")
        )
        await gui.wait("'design note 119' in window().view.toPlainText()")
        shown = await gui.view_text()
        self.assertNotIn("design note 10\n", shown + "\n")  # only the latest page so far
        await gui.exec("window().view.verticalScrollBar().setValue(0)")
        await gui.wait("'design note 69' in window().view.toPlainText()")
        await gui.exec("window().view.verticalScrollBar().setValue(0)")
        await gui.wait("'design note 0\\n' in window().view.toPlainText()")
        self.assertFalse(await gui.eval("window().current().more_before"))
        text = await gui.view_text()
        for n in (0, 1, 60, 119):
            self.assertEqual(text.count(f"design note {n}\n"), 1, f"note {n} once")
        self.assertEqual(text.count("──"), 2, "one day separator, however many pages were loaded")
        notes = [int(line.split()[-1]) for line in text.splitlines() if line.startswith("design note")]
        self.assertEqual(notes, list(range(120)), "in id order")

        # Switch rooms with the keyboard: Alt+Up goes back to the lobby.
        await gui.exec("window().input.setFocus()\nshortcut('Alt+Up')")
        await gui.wait("window().model.current == 'room:lobby'")
        await bob.say("design", "while you were away")
        await gui.wait("any('#design  (1)' == t for t in texts(window().room_list))")

        # A DM: Ctrl+D asks for the name, then the conversation opens.
        await gui.exec("shortcut('Ctrl+D')")
        await gui.wait("modal() and modal().labelText().startswith('Send a direct message')")
        await gui.exec("modal().setTextValue('bob')\nmodal().accept()")
        await gui.wait("window().model.current == 'dm:alice:bob'")
        await gui.exec("type_text(window().input, 'line one')\npress(window().input, 'Return', 'shift')")
        await gui.exec("type_text(window().input, 'line two')\npress(window().input, 'Return')")
        dm = await bob_events.next(lambda e: e.get("type") == "dm", timeout=30)
        self.assertEqual((dm["from"], dm["to"], dm["body"]), ("alice", "bob", "line one\nline two"))
        self.assertTrue(dm["e2e"]["ok"])
        await bob.dm("alice", "got it")
        await gui.wait("'got it' in window().view.toPlainText()")
        # The conversation and its messages carry the padlock.
        self.assertIn("🔒", await gui.eval("window().header.text()"))
        self.assertIn("🔒", await gui.eval("window().view.toPlainText()"))
        self.assertEqual(await gui.eval("texts(window().dm_list)"), ["bob"])

    async def test_room_creation_invitation_and_moderation_from_the_member_menu(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        bob_events = EventQueue(bob)
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        await gui.exec("shortcut('Ctrl+N')")
        await gui.wait("modal() and modal().objectName() == 'create-room'")
        await gui.exec(
            "d = modal()\n"
            "type_text(d.findChild(QLineEdit, 'room-name'), 'secret')\n"
            "kind = d.findChild(QComboBox, 'room-kind')\n"
            "kind.setCurrentIndex(kind.findData('private'))\n"
            "d.accept()"
        )
        await gui.wait("window().model.current == 'room:secret'")
        await gui.wait("window().my_room_role == 'owner'")
        await gui.exec("shortcut('Ctrl+I')")
        await gui.wait("modal() and 'Invite to #secret' in modal().labelText()")
        await gui.exec("modal().setTextValue('bob')\nmodal().accept()")
        invited = await bob_events.next(lambda e: e.get("type") == "invited", timeout=30)
        self.assertEqual((invited["room"], invited["by"]), ("secret", "alice"))
        await bob.request({"type": "join", "room": "secret"})
        await gui.wait("'bob' in [m['user'] for m in window().members]")

        # The other way round: bob invites alice to his private room, and
        # the link in the notice joins it.
        await bob.request({"type": "create", "room": "bobs", "kind": "private"})
        await bob.request({"type": "invite", "room": "bobs", "user": "alice"})
        await gui.wait("'bob invited you to #bobs' in window().view.toPlainText()")
        self.assertIn('href="chatclient:join/bobs"', await gui.eval("window().view.toHtml()"))
        await gui.exec(
            "window().view.anchorClicked.emit(__import__('PyQt6.QtCore').QtCore.QUrl('chatclient:join/bobs'))"
        )
        await gui.wait("window().model.current == 'room:bobs'")
        await gui.exec("window().open_conversation('room:secret')")
        await gui.wait("'bob' in [m['user'] for m in window().members]")

        # The owner's menu on bob offers moderation; it works through the server.
        labels = await gui.eval("[a.text() for a in window().member_menu('bob').actions() if a.text()]")
        self.assertIn("Remove from room (kick)", labels)
        self.assertIn("Make moderator", labels)
        self.assertEqual(
            await gui.eval("[a.text() for a in window().member_menu('alice').actions()]"),
            [],
            "nothing on oneself",
        )
        await gui.exec(
            "[a for a in window().member_menu('bob').actions() if a.text() == 'Make moderator'][0].trigger()"
        )
        await gui.wait("[m['role'] for m in window().members if m['user'] == 'bob'] == ['moderator']")
        await gui.exec(
            "[a for a in window().member_menu('bob').actions() if a.text().startswith('Remove')][0].trigger()"
        )
        kicked = await bob_events.next(lambda e: e.get("type") == "kicked", timeout=30)
        self.assertEqual((kicked["room"], kicked["user"], kicked["by"]), ("secret", "bob", "alice"))
        await gui.wait("'bob was removed by alice' in window().view.toPlainText()")

        # A plain member sees no moderation in the lobby (no owner there).
        await gui.exec("window().open_conversation('room:lobby')")
        await gui.wait("window().my_room_role == 'member'")
        self.assertEqual(
            await gui.eval("[a.text() for a in window().member_menu('bob').actions() if a.text()]"),
            ["Send a direct message"],
        )

    async def test_logout_revokes_the_session_and_returns_to_the_connect_dialog(self) -> None:
        server = await start_server(self)
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        token = await gui.eval("window().client.token")
        await gui.exec("type_text(window().input, '/logout')\npress(window().input, 'Return')")
        await gui.wait("controller.window is None and controller.dialog.isVisible()")
        self.assertEqual(await gui.eval("controller.dialog.user.text()"), "alice")
        self.assertEqual(await gui.eval("controller.client.state"), "stopped")
        probe = await open_session(self, server)
        with self.assertRaises(ServerError) as refused:
            await probe.request({"type": "login", "user": "alice", "token": token})
        self.assertEqual(refused.exception.code, "auth_failed")
        # And in again, with the password.
        await gui.connect(server.port, "alice", PASSWORD, register=False)
        await gui.wait("window() and window().client.state == 'online'")

    async def test_dms_sent_while_offline_arrive_at_login(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        await alice.close()
        bob = await logged_in(self, server, "bob")
        await bob.request({"type": "dm", "to": "alice", "body": "while you were out"})
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD, register=False)
        await gui.wait("texts(window().dm_list) == ['bob  (1)']")
        await gui.exec("window().open_dm('Bob')")  # as typed: the name is the server's lowercase one
        await gui.wait("'while you were out' in window().view.toPlainText()")
        self.assertEqual(await gui.eval("window().model.current"), "dm:alice:bob")
        self.assertEqual(await gui.eval("texts(window().dm_list)"), ["bob"])

    async def test_room_commands_need_a_room_and_rejoining_fills_the_gap(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        await bob.request({"type": "create", "room": "design"})
        await bob.say("design", "first")
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        await gui.exec("window().open_dm('bob')")
        await gui.exec("type_text(window().input, '/part')\npress(window().input, 'Return')")
        await gui.wait("'open the room first' in window().view.toPlainText()")
        self.assertEqual(await gui.eval("window().input.toPlainText()"), "/part", "kept to fix")
        await gui.exec("window().input.clear()")
        self.assertEqual(await gui.eval("sorted(window().client.rooms)"), ["lobby"])
        await gui.exec("type_text(window().input, '/switch nosuch')\npress(window().input, 'Return')")
        await gui.wait("'You are not in #nosuch' in window().view.toPlainText()")
        self.assertEqual(await gui.eval("texts(window().room_list)"), ["#lobby"])

        await gui.exec("type_text(window().input, '/join design')\npress(window().input, 'Return')")
        await gui.wait("window().model.current == 'room:design' and 'first' in window().view.toPlainText()")
        await gui.exec("type_text(window().input, '/part')\npress(window().input, 'Return')")
        await gui.wait("window().model.conversation('room:design').joined is False")
        for n in range(3):
            await bob.say("design", f"said while alice was out {n}")
        await gui.exec("type_text(window().input, '/join design')\npress(window().input, 'Return')")
        await gui.wait("window().model.current == 'room:design'")
        await gui.wait("'said while alice was out 2' in window().view.toPlainText()")
        text = await gui.view_text()
        self.assertEqual([text.count(f"said while alice was out {n}") for n in range(3)], [1, 1, 1])
        self.assertLess(text.index("alice left"), text.index("said while alice was out 0"))

    async def test_a_disabled_account_returns_to_the_connect_dialog_with_the_reason(self) -> None:
        server = await start_server(self)
        add_admin(server)
        root = await logged_in(self, server, "root", register=False)
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        await root.request({"type": "disable", "user": "alice"})
        await gui.wait("controller.window is None and controller.dialog.isVisible()")
        self.assertIn("disabled", (await gui.eval("controller.dialog.error.text()")).lower())
        self.assertEqual(await gui.eval("controller.client.state"), "stopped")

    async def test_a_dm_or_mention_notifies_only_when_the_window_is_not_focused(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        await gui.exec("window().activateWindow()")
        await gui.wait("window().isActiveWindow()")
        await bob.request({"type": "dm", "to": "alice", "body": "are you there?"})
        await gui.wait("any('bob  (1)' == t for t in texts(window().dm_list))")
        self.assertEqual(await gui.eval("window().notifier.shown"), [])
        # Another window takes the focus: now a mention pops up.
        await gui.exec(
            "from PyQt6.QtWidgets import QWidget\nother = QWidget()\nother.show()\nother.activateWindow()"
        )
        await gui.wait("not window().isActiveWindow()")
        await bob.say("lobby", "not for anyone")
        await bob.say("lobby", "@alice please look")
        await bob.request({"type": "dm", "to": "alice", "body": "ping"})
        shown = await gui.wait("len(window().notifier.shown) == 2 and window().notifier.shown")
        self.assertEqual(shown, [["bob — #lobby", "@alice please look"], ["bob — Direct message", "ping"]])

    async def test_a_changed_server_key_blocks_with_both_fingerprints_and_sends_nothing(self) -> None:
        server = await start_server(self)
        gui = await start_gui(self)
        pinned = "SHA256:" + "A" * 43
        (gui.home / "known_hosts").write_text(f"127.0.0.1:{server.port} {pinned}\n")
        await gui.connect(server.port, "victim", PASSWORD, register=True)
        warning = await gui.wait(
            "controller.trust.dialog and controller.trust.dialog.objectName() == 'key-changed'"
            " and controller.trust.dialog.isVisible() and controller.trust.dialog.informativeText()"
        )
        self.assertIn(pinned, warning)
        self.assertIn(server.identity.fingerprint, warning)
        self.assertIn("Nothing was sent", await gui.eval("controller.trust.dialog.text()"))
        self.assertTrue(await gui.eval("controller.trust.dialog.isModal()"))
        # Back at the connect dialog with the reason, and never logged in.
        await gui.wait(
            "controller.dialog.isVisible() and 'key has changed' in controller.dialog.error.text()"
        )
        self.assertIsNone(await gui.eval("controller.window"))
        probe = await open_session(self, server)
        with self.assertRaises(ServerError) as refused:
            await probe.login("victim", PASSWORD)
        self.assertEqual(refused.exception.code, "auth_failed")  # the register never reached the server
        self.assertEqual(
            (gui.home / "known_hosts").read_text(), f"127.0.0.1:{server.port} {pinned}\n", "pin unchanged"
        )

    async def test_a_first_contact_whose_finished_fails_pins_nothing(self) -> None:
        """The accepted key is pinned only once the server proves it holds
        it: a FINISHED with one bit flipped leaves known_hosts as it was,
        and the next, sound, connection pins the key."""
        server = await start_server(self)
        proxy = await BitFlipProxy(server.port, flips=1).start(self)
        known_hosts = Path(self.mktemp()).resolve() / "home"
        gui = await start_gui(self, home=known_hosts)
        await gui.connect(proxy.port, "alice", PASSWORD)
        await gui.wait("controller.trust.dialog and controller.trust.dialog.isVisible()")
        await gui.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
        error = await gui.wait(
            "controller.dialog.isVisible() and controller.window is None and controller.dialog.error.text()"
        )
        self.assertIn("Could not connect", error)
        self.assertFalse((gui.home / "known_hosts").exists(), "a key was pinned before FINISHED verified")
        self.assertEqual(proxy.connections, 1)

        await gui.log_in(proxy.port, "alice", PASSWORD)  # asked again, accepted again
        self.assertEqual(
            (gui.home / "known_hosts").read_text(), f"127.0.0.1:{proxy.port} {server.identity.fingerprint}\n"
        )

    async def test_peer_text_in_the_log_is_escaped(self) -> None:
        """A CLOSE, an ALERT or an error from a hostile server reaches the
        GUI's log (stderr, --verbose) as one escaped line: no CR to forge
        a line, no ESC or BEL for the terminal."""
        forged = "\r\n12:00 connected to bank.example as root\x1b[2J\x07\u202e"
        servers = [
            await HostileServer(close_message="bye" + forged).start(self),
            await HostileServer(alert="no" + forged).start(self),
            await HostileServer(login_error={"code": "odd" + forged, "message": "m" + forged}).start(self),
        ]
        # These servers speak no end-to-end encryption: the strings are the point.
        gui = await start_gui(self, verbose=True, e2e=False)
        for n, hostile in enumerate(servers):
            await gui.connect(hostile.port, "alice", PASSWORD)
            if hostile.alert is None:  # (an alert comes before the key)
                await gui.wait("controller.trust.dialog and controller.trust.dialog.isVisible()")
                await gui.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
            if n == 0:
                await gui.process.wait_for(r"connection lost \(bye", fd=2)
                await gui.exec("controller.client.stop()\nwindow().logged_out_callback()")
            await gui.wait("controller.dialog.isVisible() and controller.window is None")
        await gui.process.wait_for(r"not connected: .*no", fd=2)
        await gui.process.wait_for(r"session setup failed: odd", fd=2)
        errors = gui.process.errors()
        escaped = "\\r\\n12:00 connected to bank.example as root\\x1b[2J\\x07\\u202e"
        self.assertIn("bye" + escaped, errors)
        self.assertIn("no" + escaped, errors)
        self.assertIn("odd" + escaped, errors)
        for raw in ("\r", "\x1b", "\x07", "\u202e"):
            self.assertNotIn(raw, errors)
        self.assertFalse([line for line in gui.process.lines[2] if line.startswith("12:00")])

    async def test_the_new_room_dialog_stays_open_on_a_refused_name(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        await bob.request({"type": "create", "room": "taken"})
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        # The lobby's history comes in after the login: let it settle first.
        await gui.wait(
            "'bob joined' in window().view.toPlainText() and 'alice joined' in window().view.toPlainText()"
        )
        before = await gui.view_text()
        await gui.exec("shortcut('Ctrl+N')")
        await gui.wait("modal() and modal().objectName() == 'create-room'")
        await gui.exec(
            "d = modal()\n"
            "type_text(d.findChild(QLineEdit, 'room-name'), 'taken')\n"
            "type_text(d.findChild(QLineEdit, 'room-topic'), 'ours')\n"
            "click(d.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok))"
        )
        error = await gui.wait(
            "d.findChild(QLabel, 'create-error').isVisible() and d.findChild(QLabel, 'create-error').text()"
        )
        self.assertIn("taken", error)
        self.assertTrue(await gui.eval("d.isVisible() and modal() is d"), "the dialog closed")
        self.assertEqual(await gui.eval("d.findChild(QLineEdit, 'room-name').text()"), "taken")
        self.assertEqual(await gui.eval("d.findChild(QLineEdit, 'room-topic').text()"), "ours")
        self.assertEqual(await gui.view_text(), before, "the error went to the conversation")
        self.assertEqual(await gui.eval("window().model.current"), "room:lobby")
        await gui.eval(f"shot(d, {str(Path(self.mktemp()).resolve()) + '.png'!r})")

        # Another name: created, joined, and the dialog is gone.
        await gui.exec(
            "name = d.findChild(QLineEdit, 'room-name')\n"
            "name.selectAll()\n"
            "type_text(name, 'fresh')\n"
            "press(name, 'Return')"
        )
        await gui.wait("window().model.current == 'room:fresh'")
        await gui.wait("not d.isVisible() and modal() is None")
        await gui.wait("window().header.text() and 'ours' in window().header.text()")

    async def test_the_member_pane_of_a_dm_shows_the_peers_presence(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        await carol.close()  # carol exists, and is offline
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        await gui.exec("window().open_dm('bob')")
        await gui.wait("window().model.current == 'dm:alice:bob'")
        shown = await gui.wait("'● bob' in texts(window().member_list) and texts(window().member_list)")
        self.assertEqual(shown, ["● alice", "● bob"])
        await gui.eval(f"shot(window(), {str(Path(self.mktemp()).resolve()) + '.png'!r})")
        self.assertIn(
            "online",
            await gui.eval("window().member_list.item(1).toolTip()"),
        )
        await gui.exec("window().open_dm('carol')")
        await gui.wait("window().model.current == 'dm:alice:carol'")
        await gui.wait("'○ carol' in texts(window().member_list)")
        # bob leaves: the next refresh shows it.
        await bob.close()
        await gui.exec("window().open_dm('bob')")
        await gui.wait("'○ bob' in texts(window().member_list)")

    async def test_bidi_text_orders_only_itself(self) -> None:
        """An RLO (or right-to-left text) in a peer's name, body or topic is
        a bidi isolate in the view: it cannot reorder the time, the sender
        or the words around it, as laid out in the rendered document."""
        rlo = "\u202e"
        now = 1_700_000_000_000
        pushed = [
            {"type": "msg", "room": "lobby", "stream": "room:lobby", "id": 1, "ts": now,
             "from": "eve" + rlo, "body": "hello world"},
            {"type": "msg", "room": "lobby", "stream": "room:lobby", "id": 2, "ts": now,
             "from": "bob", "body": "abc" + rlo + " after"},
            {"type": "topic", "room": "lobby", "stream": "room:lobby", "id": 3, "ts": now,
             "by": "mallory\u2069" + rlo, "topic": "plain words"},
        ]  # fmt: skip
        hostile = await HostileServer(
            welcome={"streams": {"room:lobby": 3}}, pushed=pushed, close_message="bye" + rlo, close_after=1.0
        ).start(self)
        gui = await start_gui(self)
        await gui.log_in(hostile.port, "alice", PASSWORD)
        await gui.wait("'Reconnecting' in window().view.toPlainText()")
        # Where a character is drawn: its glyph's position in the laid out
        # block (cursorToX would give the logical order inside an override).
        await gui.exec(
            "def drawn_at(text, marker):\n"
            "    block = window().view.document().begin()\n"
            "    while block.isValid():\n"
            "        if marker in block.text():\n"
            "            at = block.text().index(text)\n"
            "            point = block.layout().glyphRuns(at, 1)[0].positions()[0]\n"
            "            return point.x(), point.y()\n"
            "        block = block.next()\n"
            "    raise LookupError(marker)\n"
        )
        wrong = []

        async def reads_in_order(marker: str, *texts: str) -> None:
            """``texts`` are drawn left to right on one line of the block
            that holds ``marker``."""
            drawn = [await gui.eval(f"drawn_at({t!r}, {marker!r})") for t in texts]
            if len({y for _, y in drawn}) != 1 or [x for x, _ in drawn] != sorted(x for x, _ in drawn):
                wrong.append((marker, texts, drawn))

        await reads_in_order("hello", ":", "eve")  # eve's message: time, then her name
        await reads_in_order("hello", "hello", "world")  # her body, as written
        await reads_in_order("abc", ":", "bob")  # an RLO in a body leaves time and sender be
        # The topic notice reads "mallory set the topic: plain words"
        # (mallory's stray PDI cannot close the isolate early).
        await reads_in_order("plain", "set", "topic:", "plain")
        # The server's goodbye, in a notice of our own.
        await reads_in_order("Reconnecting", ").", "Reconnecting")
        self.assertEqual(wrong, [], "reordered by an RLO from the network")
        await gui.eval(f"shot(window(), {str(Path(self.mktemp()).resolve()) + '.png'!r})")

    async def test_keyboard_search_switching_and_focus(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        for room in ("design", "devops"):
            await bob.request({"type": "create", "room": room})
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        for room in ("design", "devops"):
            await gui.exec(f"type_text(window().input, '/join {room}')\npress(window().input, 'Return')")
            await gui.wait(f"window().model.current == 'room:{room}'")
        self.assertEqual(await gui.eval("texts(window().room_list)"), ["#design", "#devops", "#lobby"])
        await gui.exec("shortcut('Ctrl+K')")
        self.assertTrue(await gui.eval("window().search.hasFocus()"))
        await gui.exec("type_text(window().search, 'lob')")
        hidden = await gui.eval(
            "[window().room_list.item(i).isHidden() for i in range(window().room_list.count())]"
        )
        self.assertEqual(hidden, [True, True, False])
        await gui.exec("press(window().search, 'Return')")
        await gui.wait("window().model.current == 'room:lobby' and window().input.hasFocus()")
        self.assertEqual(await gui.eval("window().search.text()"), "")
        await gui.exec("shortcut('Ctrl+1')")
        await gui.wait("window().model.current == 'room:design'")
        await gui.exec("shortcut('Alt+Down')")
        await gui.wait("window().model.current == 'room:devops'")
        await gui.exec("shortcut('Ctrl+K')\npress(window().search, 'Escape')")
        await gui.wait("window().input.hasFocus()")

    async def test_remembered_servers_keep_no_password(self) -> None:
        server = await start_server(self)
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        saved = (gui.home / "servers.json").read_text()
        self.assertEqual(
            json.loads(saved),
            {
                "servers": [
                    {"host": "127.0.0.1", "port": server.port, "user": "alice", "tls": False, "tls_ca": ""}
                ]
            },
        )
        self.assertNotIn(PASSWORD, saved)
        token = await gui.eval("window().client.token")
        self.assertNotIn(token, saved)
        self.assertEqual(oct((gui.home / "servers.json").stat().st_mode & 0o777), "0o600")
        again = await start_gui(self, gui.home)
        self.assertEqual(
            await again.eval(
                "(controller.dialog.user.text(), controller.dialog.port.value(), "
                "controller.dialog.password.text())"
            ),
            ["alice", server.port, ""],
        )
        self.assertTrue(await again.eval("controller.dialog.password.hasFocus()"))

    async def test_dark_palette_and_double_scale_render_readably(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        await bob.say("lobby", "hello in the dark")
        gui = await start_gui(self, theme="dark", scale="2")
        await gui.log_in(server.port, "alice", PASSWORD)
        await gui.wait("'hello in the dark' in window().view.toPlainText()")
        self.assertEqual(await gui.eval("window().devicePixelRatioF()"), 2.0)
        base, text = await gui.eval(
            "(window().palette().color(window().palette().ColorRole.Base).lightness(),"
            " window().palette().color(window().palette().ColorRole.Text).lightness())"
        )
        self.assertLess(base, 100)
        self.assertGreater(text, 180)
        png = str(gui.home / "dark.png")
        await gui.exec(f"window().resize(700, 450)\nshot(window(), {png!r})")
        width, height = await gui.eval(
            f"(lambda i: (i.width(), i.height()))(__import__('PyQt6.QtGui').QtGui.QImage({png!r}))"
        )
        self.assertEqual((width, height), (1400, 900))  # drawn at twice the pixels, not blown up

    async def test_admin_stats_charts_update_from_pushed_frames(self) -> None:
        server = await start_server(self, monitor_enabled=True, monitor_interval=0.2)
        add_admin(server)
        bob = await logged_in(self, server, "bob")
        gui = await start_gui(self)
        await gui.log_in(server.port, "root", PASSWORD, register=False)
        self.assertTrue(await gui.eval("window().stats_action.isEnabled()"))
        await gui.exec("shortcut('Ctrl+Shift+S')")
        await gui.wait("window().stats_panel is not None and window().stats_panel.points_added >= 1")
        before = await gui.eval("window().stats_panel.points_added")
        for n in range(20):
            await bob.say("lobby", f"traffic {n}")
        await gui.wait(f"window().stats_panel.points_added >= {before + 3}")
        self.assertTrue(await gui.wait("len(window().stats_panel.series('cpu')) >= 2"))
        self.assertTrue(await gui.wait("max(window().stats_panel.series('messages_in') or [0]) > 0"))
        self.assertGreaterEqual(max(await gui.eval("window().stats_panel.series('connections')")), 2)
        pids = await gui.eval(
            "(lambda t: [t.item(r, 0).text() for r in range(t.rowCount())])(window().stats_panel.table)"
        )
        self.assertIn(str(os.getpid()), pids)  # the server runs in this test's process
        # Floating the panel out of the window keeps its live points.
        # (Re-subscribing would start the charts again from history.)
        kept = await gui.wait("window().stats_panel.points_added >= 8 and window().stats_panel.points_added")
        await gui.exec("window().stats_dock.setFloating(True)")
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertGreaterEqual(await gui.eval("window().stats_panel.points_added"), kept)
        self.assertTrue(
            await gui.eval("window().stats_dock.isFloating() and window().stats_dock.isVisible()")
        )
        # Hiding the panel ends the subscription: no more points arrive.
        await gui.exec("shortcut('Ctrl+Shift+S')")
        await gui.wait("not window().stats_dock.isVisible()")
        await until(lambda: not server.factory.stats_subscribers, timeout=10)

    async def test_a_plain_user_has_no_statistics(self) -> None:
        server = await start_server(self)
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        self.assertFalse(await gui.eval("window().stats_action.isEnabled()"))
        await gui.exec("window().toggle_stats()")
        self.assertIsNone(await gui.eval("window().stats_dock"))


class GuiTLSTests(unittest.TestCase):
    """The connect dialog's TLS option, against a real server on TLS
    (tests/test_tls.py makes its certificate)."""

    if GUI_MISSING:
        skip = GUI_MISSING

    async def fill(self, gui: Any, host: str, port: int, user: str, register: bool = True) -> None:
        """The dialog's server and account, as typed (``d`` in the GUI);
        TLS is left as it is."""
        await gui.exec(
            "d = controller.dialog\n"
            "d.host.clear()\n"
            f"type_text(d.host, {host!r})\n"
            f"d.port.setValue({port})\n"
            "d.user.clear()\n"
            f"type_text(d.user, {user!r})\n"
            "d.password.clear()\n"
            f"type_text(d.password, {PASSWORD!r})\n"
            f"d.register_mode.setChecked({register!r})\n"
            + (f"type_text(d.password_again, {PASSWORD!r})\n" if register else "")
        )

    async def test_log_in_over_tls_with_a_chosen_ca_and_find_it_remembered(self) -> None:
        server, _, cert_path = await tls_server(self)
        description = endpoint_description("localhost", server.port, True, str(cert_path.parent))
        bob = await connect(reactor, description, lambda fingerprint: True)
        self.addCleanup(bob.close)
        await bob.register("bob", PASSWORD)
        bob_events = EventQueue(bob)
        gui = await start_gui(self)
        await gui.wait("controller.dialog and controller.dialog.isVisible()")
        # Off by default, and the CA to trust with it.
        enabled = "d.tls.isChecked(), d.tls_ca.isEnabled(), d.tls_ca_choose.isEnabled()"
        self.assertEqual(await gui.eval(f"(d := controller.dialog) and ({enabled})"), [False, False, False])
        await self.fill(gui, "localhost", server.port, "alice")
        await gui.exec("click(d.tls)")
        self.assertEqual(await gui.eval(enabled), [True, True, True])
        self.assertEqual(
            await gui.eval("[a.text() for a in d.tls_ca_choose.menu().actions()]"),
            ["A certificate file (PEM)…", "A directory of certificates…"],
        )
        # The chooser: a file dialog, whose choice fills in the field.
        await gui.exec("d.tls_ca_choose.menu().actions()[0].trigger()")
        await gui.wait("d.ca_dialog is not None and d.ca_dialog.isVisible()")
        await gui.exec(
            f"d.ca_dialog.setDirectory({str(cert_path.parent)!r})\n"
            "name = d.ca_dialog.findChild(QLineEdit, 'fileNameEdit')\n"
            f"type_text(name, {cert_path.name!r})"
        )
        await gui.wait(f"d.ca_dialog.selectedFiles() == [{str(cert_path)!r}]")
        await gui.exec("press(name, 'Return')")
        await gui.wait(f"d.tls_ca.text() == {str(cert_path)!r}")
        self.assertIsNone(await gui.eval("d.ca_dialog"))
        await gui.exec("d.resize(d.sizeHint())")
        shot = Path(self.mktemp()).resolve().with_suffix(".png")
        self.assertGreater(await gui.eval(f"shot(d, {str(shot)!r})"), 1000)
        await gui.exec("press(d.password_again, 'Return')")
        await gui.wait("controller.trust and controller.trust.dialog and controller.trust.dialog.isVisible()")
        await gui.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
        await gui.wait("window() and window().client.state == 'online'")
        transport = "type(window().client.session.protocol.transport).__name__"
        self.assertIn("TLS", await gui.eval(transport))
        await gui.wait("window().model.current")
        await gui.exec("type_text(window().input, 'hello over tls')\npress(window().input, 'Return')")
        got = await bob_events.next(lambda e: e.get("type") == "msg" and e["from"] == "alice", timeout=30)
        self.assertEqual(got["body"], "hello over tls")
        await bob.say("lobby", "and back")
        await gui.wait("'and back' in window().view.toPlainText()")
        saved = json.loads((gui.home / "servers.json").read_text())["servers"]
        remembered = {"host": "localhost", "port": server.port, "user": "alice"}
        self.assertEqual(saved, [{**remembered, "tls": True, "tls_ca": str(cert_path)}])

        # The next start: the server comes back with its TLS settings, and
        # connects with them.
        await gui.exec("window().close()")
        await gui.process.ended
        again = await start_gui(self, gui.home)
        self.assertEqual(
            await again.eval(
                "(d := controller.dialog) and (d.recent.currentText(), d.host.text(), d.tls.isChecked(), "
                "d.tls_ca.text(), d.tls_ca.isEnabled())"
            ),
            [f"alice@localhost:{server.port} (TLS)", "localhost", True, str(cert_path), True],
        )
        await again.exec(f"type_text(d.password, {PASSWORD!r})\npress(d.password, 'Return')")
        await again.wait("window() and window().client.state == 'online'")  # the key is pinned: no question
        self.assertIn("TLS", await again.eval(transport))

    async def test_a_refused_certificate_is_shown_in_the_dialog(self) -> None:
        server, tls_dir, cert_path = await tls_server(self)
        other = Path(self.mktemp()).resolve()
        self_signed(other, "Another CA")
        gui = await start_gui(self)
        await gui.wait("controller.dialog and controller.dialog.isVisible()")
        # A CA that did not sign the server's certificate.
        await self.fill(gui, "localhost", server.port, "alice")
        await gui.exec(
            f"d.tls.setChecked(True)\ntype_text(d.tls_ca, {str(other)!r})\npress(d.password, 'Return')"
        )
        shown = (
            "controller.dialog.isVisible() and controller.window is None and controller.dialog.error.text()"
        )
        self.assertEqual(
            await gui.wait(shown),
            "Could not connect: TLS: the server's certificate is not signed by a certificate authority "
            "this client trusts (certificate verify failed). "
            "Check “Trust certificates from” and the server's name.",
        )
        self.assertEqual(
            await gui.eval("controller.client.state"), "failed"
        )  # not retrying behind the dialog
        self.assertIsNone(await gui.eval("controller.trust.dialog"), "the key was asked for before TLS held")
        # Everything but the password is as it was, for another try.
        self.assertEqual(
            await gui.eval(
                "(d := controller.dialog) and "
                "(d.host.text(), d.tls.isChecked(), d.tls_ca.text(), d.user.text())"
            ),
            ["localhost", True, str(other), "alice"],
        )
        # The right CA, but a name the certificate is not for.
        await self.fill(gui, "127.0.0.1", server.port, "alice")
        await gui.exec(f"d.tls_ca.setText({str(tls_dir)!r})\npress(d.password, 'Return')")
        await gui.wait(f"controller.dialog is not d and {shown}")
        self.assertIn(
            "Could not connect: TLS: the server's certificate is not valid for 127.0.0.1.",
            await gui.eval("controller.dialog.error.text()"),
        )
        # A CA that is not there, or is no certificate: said before connecting.
        await self.fill(gui, "localhost", server.port, "alice")
        missing = str(Path(self.mktemp()).resolve())
        await gui.exec(f"d.tls_ca.setText({missing!r})\npress(d.password, 'Return')")
        self.assertEqual(
            await gui.eval("d is controller.dialog and d.isVisible() and d.error.text()"),
            f"Trust certificates from: {missing}: no such file or directory.",
        )
        not_pem = Path(self.mktemp()).resolve()
        not_pem.write_text("not a certificate\n")
        await gui.exec(f"d.tls_ca.setText({str(not_pem)!r})\npress(d.password, 'Return')")
        self.assertEqual(
            await gui.wait(f"controller.dialog is not d and {shown}"),
            f"Trust certificates from: {not_pem}: no PEM certificate in it",
        )
        # And with the server's CA: through TLS, to the server's key.
        await self.fill(gui, "localhost", server.port, "alice")
        await gui.exec(f"d.tls_ca.setText({str(cert_path)!r})\npress(d.password, 'Return')")
        await gui.wait("controller.trust and controller.trust.dialog and controller.trust.dialog.isVisible()")

    async def test_a_server_list_from_before_tls_loads_with_tls_off(self) -> None:
        server = await start_server(self)
        home = Path(self.mktemp()).resolve()
        home.mkdir()
        remembered = {"host": "127.0.0.1", "port": server.port, "user": "alice"}
        (home / "servers.json").write_text(json.dumps({"servers": [remembered]}))
        gui = await start_gui(self, home)
        self.assertEqual(
            await gui.eval(
                "(d := controller.dialog) and (d.recent.currentText(), d.user.text(), d.tls.isChecked(), "
                "d.tls_ca.text(), d.tls_ca.isEnabled())"
            ),
            [f"alice@127.0.0.1:{server.port}", "alice", False, "", False],
        )
        await gui.exec(
            f"type_text(d.password, {PASSWORD!r})\nd.register_mode.setChecked(True)\n"
            f"type_text(d.password_again, {PASSWORD!r})\npress(d.password, 'Return')"
        )
        await gui.wait("controller.trust and controller.trust.dialog and controller.trust.dialog.isVisible()")
        await gui.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
        await gui.wait("window() and window().client.state == 'online'")
        self.assertNotIn("TLS", await gui.eval("type(window().client.session.protocol.transport).__name__"))
        saved = json.loads((home / "servers.json").read_text())["servers"]
        self.assertEqual(saved, [{**remembered, "tls": False, "tls_ca": ""}])


class EndToEndGuiTests(unittest.TestCase):
    async def test_verify_a_device_with_the_emoji_dialog_and_an_encrypted_room(self) -> None:
        server = await start_server(self)
        bob, bob_e2e, bob_events = await e2e_client(self, server, "bob", Path(self.mktemp()))
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        await bob_e2e.devices_of(["alice"])
        # Security → Verify, from the DM with bob: the dialog shows the emoji.
        await gui.exec("window().open_dm('bob')")
        await gui.wait("window().model.current == 'dm:alice:bob'")
        await gui.exec("window().verify_peer()")
        await gui.wait("window().verification is not None and window().verification.emoji")
        theirs = await bob_events.next(lambda e: e.get("type") == "e2e_verify" and e.get("state") == "sas")
        shown = await gui.eval("[list(pair) for pair in window().verification.emoji]")
        self.assertEqual(shown, theirs["emoji"])
        self.assertEqual(len(shown), 7)
        # Each emoji with its name under it, as the other side shows them.
        self.assertEqual(await gui.eval("window().verification.grid.itemAt(1).widget().text()"), shown[0][1])
        await gui.exec("click(window().verification.match)")
        bob_e2e.confirm(theirs["txn"], True)
        await gui.wait("'is verified' in window().verification.state.text()")
        alice_device = await gui.eval("window().bridge.e2e.device_id")
        # Bob's side marks it once alice's MAC reaches it (it may come after).
        await until(lambda: bob_e2e.book.known("alice")[alice_device].get("verified"))
        # The devices dialog says so.
        await gui.exec("window().show_devices('bob')")
        await gui.wait("window().devices_dialog.listing.count() == 1")
        self.assertIn("verified", await gui.eval("window().devices_dialog.listing.item(0).text()"))
        # An encrypted room from the New room dialog: the padlock, and bob reads it.
        await gui.exec("window().create_room()")
        await gui.wait("modal() and modal().objectName() == 'create-room'")
        await gui.exec(
            "type_text(modal().name, 'vault')\nmodal().encrypted.setChecked(True)\nmodal().accept()"
        )
        await gui.wait("window().model.current == 'room:vault'")
        self.assertIn("🔒", await gui.eval("window().header.text()"))
        await bob.request({"type": "join", "room": "vault"})
        await gui.wait("'bob joined' in window().view.toPlainText()")
        await gui.exec("type_text(window().input, 'sealed')\npress(window().input, 'Return')")
        got = await bob_events.next(lambda e: e.get("type") == "msg" and e.get("room") == "vault")
        self.assertEqual((got["body"], got["e2e"]["ok"], got["e2e"]["trust"]), ("sealed", True, "verified"))
        await bob.say("vault", "read you")
        await gui.wait("'read you' in window().view.toPlainText()")

    async def test_a_mismatch_in_the_dialog_verifies_nothing(self) -> None:
        server = await start_server(self)
        _, bob_e2e, bob_events = await e2e_client(self, server, "bob", Path(self.mktemp()))
        gui = await start_gui(self)
        await gui.log_in(server.port, "alice", PASSWORD)
        await bob_e2e.devices_of(["alice"])
        await gui.exec("window().verify('bob', None)")
        await gui.wait("window().verification is not None and window().verification.emoji")
        await gui.exec("click(window().verification.mismatch)")
        cancelled = await bob_events.next(
            lambda e: e.get("type") == "e2e_verify" and e.get("state") == "cancelled"
        )
        self.assertEqual(cancelled["code"], "mismatch")
        await gui.wait("'Not verified' in window().verification.state.text()")
        self.assertFalse(
            await gui.eval("window().bridge.e2e.book.known('bob')[%r]['verified']" % bob_e2e.device_id)
        )


class StartTests(unittest.TestCase):
    if GUI_MISSING:
        skip = GUI_MISSING

    async def test_python_m_chatclient_opens_the_connect_dialog_and_stops_on_sigterm(self) -> None:
        home = Path(self.mktemp()).resolve()
        home.mkdir()
        argv = [PYTHON, "-m", "chatclient", "--verbose", "--known-hosts", str(home / "kh")]
        argv += ["--servers", str(home / "servers.json"), "--host", "chat.example", "--user", "alice"]
        process = spawn(self, "chatclient", ["/usr/bin/env", "QT_QPA_PLATFORM=offscreen", *argv])
        await process.wait_for(r"\[chatclient\.gui#info\] connect dialog open", fd=2, timeout=60)
        process.signal("TERM")
        self.assertEqual(await process.ended, 0, process.errors())

    async def test_the_chatclient_console_script_is_the_desktop_client(self) -> None:
        script = Path(PYTHON).parent / "chatclient"
        self.assertTrue(script.exists(), f"{script} is installed by pip install -e .")
        process = spawn(self, "chatclient", [str(script), "--help"])
        self.assertEqual(await process.ended, 0)
        self.assertIn("The chatserver desktop client.", process.output())


class GuiReconnectTests(unittest.TestCase):
    if GUI_MISSING:
        skip = GUI_MISSING
    timeout = 120

    async def test_a_killed_and_restarted_server_reconnects_with_no_gap_and_keeps_the_draft(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        install_identity(base / "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ("--endpoint", f"tcp:{port}:interface=127.0.0.1")
        server, _, _ = await start_twistd(self, base, *args)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        bob = ReconnectingClient(reactor, endpoint, lambda fp: True, "bob", PASSWORD, register=True)
        bob.start()
        self.addCleanup(bob.stop)
        await bob.when_online()
        await bob.request({"type": "create", "room": "design"})
        gui = await start_gui(self)
        await gui.log_in(port, "alice", PASSWORD)
        await gui.exec("type_text(window().input, '/join design')\npress(window().input, 'Return')")
        await gui.wait("window().model.current == 'room:design'")
        await gui.exec("window().open_conversation('room:lobby')")
        await bob.say("lobby", "before the crash")
        await gui.wait("'before the crash' in window().view.toPlainText()")
        await gui.exec("type_text(window().input, 'a draft, not sent yet')")

        server.signal("KILL")
        await server.ended
        await gui.wait("window().client.state == 'reconnecting'")
        status = await gui.wait(
            "'reconnecting in' in window().state_label.text() and window().state_label.text()"
        )
        self.assertRegex(status, r"reconnecting in \d+ s")
        self.assertRegex(await gui.view_text(), r"(?m)^• Disconnected \(")
        # Enter while offline keeps the text in the box.
        await gui.exec("press(window().input, 'Return')")
        self.assertEqual(await gui.eval("window().input.toPlainText()"), "a draft, not sent yet")

        server, _, _ = await start_twistd(self, base, *args)
        await bob.when_online()
        # Possibly before alice is back: she gets these by catch-up or live, once.
        for n in range(3):
            await bob.say("lobby", f"bob {n}")
            await bob.say("design", f"design {n}")
        await gui.wait("window().client.state == 'online'", timeout=60)
        await gui.wait("'bob 2' in window().view.toPlainText()")
        text = await gui.view_text()
        for line in ("before the crash", "bob 0", "bob 1", "bob 2"):
            self.assertEqual(text.count(line + "\n") + text.endswith(line), 1, f"{line!r} once in:\n{text}")
        self.assertLess(text.index("bob 0"), text.index("bob 1"))
        self.assertLess(text.index("bob 1"), text.index("bob 2"))
        # The room not on screen counted what it missed.
        self.assertIn("#design  (3)", await gui.eval("texts(window().room_list)"))
        self.assertEqual(await gui.eval("window().input.toPlainText()"), "a draft, not sent yet")
        self.assertIn("Secure", await gui.eval("window().state_label.text()"))
        bob_events = EventQueue(bob.session)
        await gui.exec("press(window().input, 'Return')")
        got = await bob_events.next(lambda e: e.get("type") == "msg" and e["from"] == "alice", timeout=30)
        self.assertEqual(got["body"], "a draft, not sent yet")
        await gui.exec("window().open_conversation('room:design')")
        await gui.wait("'design 2' in window().view.toPlainText()")
        design = await gui.view_text()
        self.assertEqual([design.count(f"design {n}") for n in range(3)], [1, 1, 1])
