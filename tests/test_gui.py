"""The desktop client, driven through its real window against real servers.

Each test runs the application in a child process (``tests.gui_remote``:
the asyncio reactor on the Qt loop cannot be installed in trial's
process), offscreen, and works it with real key presses and clicks.  The
server, and the second user, are real too.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests.gui_support import GUI_MISSING, start_gui
from tests.support import PASSWORD, EventQueue, logged_in, start_server


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
        shown = await gui.wait("controller.trust and controller.trust.dialog and controller.trust.dialog.informativeText()")
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
