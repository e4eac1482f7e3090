"""``chatclient.gui.bridge``: the client library's events, states and
answers as Qt signals and callbacks, against a real server on loopback.

Qt signals with direct connections need no event loop, so this runs in
trial's own reactor with no window."""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints, reactor
from twisted.trial import unittest

from tests.gui_support import GUI_MISSING
from tests.support import PASSWORD, logged_in, start_server, until


class BridgeTests(unittest.TestCase):
    if GUI_MISSING:
        skip = GUI_MISSING

    async def test_events_states_answers_and_problems_reach_the_widgets_side(self) -> None:
        from chatclient.gui.bridge import ClientBridge
        from chatclient.gui.rules import Problem
        from chatclient.reconnect import ReconnectingClient

        server = await start_server(self)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
        client = ReconnectingClient(reactor, endpoint, lambda fp: True, "alice", PASSWORD, register=True)
        bridge = ClientBridge(reactor, client)
        states: list[str] = []
        events: list[dict[str, Any]] = []
        answers: list[dict[str, Any]] = []
        problems: list[Problem] = []
        bridge.state_changed.connect(lambda state, detail: states.append(state))
        bridge.event_arrived.connect(events.append)
        client.start()
        self.addCleanup(client.stop)
        await client.when_online()
        self.assertEqual(states[-1], "online")
        self.assertTrue(bridge.online)
        self.assertEqual(bridge.user, "alice")
        self.assertEqual(bridge.fingerprint, server.identity.fingerprint)
        self.assertIsNone(bridge.retry_in())

        bridge.request({"type": "rooms"}, answers.append, problems.append)
        bridge.request({"type": "join", "room": "nosuch"}, answers.append, problems.append)
        await until(lambda: len(answers) + len(problems) == 2)
        self.assertEqual([a["type"] for a in answers], ["rooms"])
        self.assertEqual(problems[0].kind, "refused")
        self.assertIn("nosuch", problems[0].message)
        self.assertEqual((problems[0].event or {}).get("type"), "error")

        bob = await logged_in(self, server, "bob")
        await bob.say("lobby", "hello alice")
        await until(lambda: any(e.get("body") == "hello alice" for e in events))

        # Once the window goes away nothing reaches it: no event, no answer.
        bridge.shut_down()
        seen = len(events)
        underneath: list[dict[str, Any]] = []
        client.add_listener(underneath.append)
        bridge.request({"type": "rooms"}, answers.append, problems.append)
        await client.request({"type": "rooms"})  # answered in order: the bridge's came first
        await bob.say("lobby", "after the window closed")
        await until(lambda: any(e.get("body") == "after the window closed" for e in underneath))
        self.assertEqual(len(events), seen)
        self.assertEqual(len(answers), 1)
        self.assertEqual(len(problems), 1)
