"""``chatclient.gui.history`` and ``roster``: what the GUI loads, with no window.

The loader, the Qt-free model and the bridge run against a real server on
loopback; the view is a transcript of what the loader told it (a second
implementation of ``HistoryView``, beside the main window)."""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints, reactor
from twisted.trial import unittest

from tests.gui_support import GUI_MISSING
from tests.support import PASSWORD, logged_in, start_server, until


class Transcript:
    def __init__(self) -> None:
        self.pages: list[tuple[str, list[int] | None, bool]] = []
        self.gaps: list[str] = []
        self.topics = 0
        self.problems: list[tuple[str, str]] = []

    def page_loaded(
        self, conversation: Any, prepended: list[dict[str, Any]] | None, first_page: bool
    ) -> None:
        ids = [e["id"] for e in prepended] if prepended is not None else None
        self.pages.append((conversation.stream, ids, first_page))

    def gap_filled(self, conversation: Any) -> None:
        self.gaps.append(conversation.stream)

    def topics_loaded(self) -> None:
        self.topics += 1

    def report(self, problem: Any, what: str) -> None:
        self.problems.append((problem.kind, what))


class LoadingWithNoWindowTests(unittest.TestCase):
    if GUI_MISSING:
        skip = GUI_MISSING

    async def setUp(self) -> None:
        from chatclient.gui.bridge import ClientBridge
        from chatclient.gui.history import HistoryLoader
        from chatclient.gui.model import ChatModel
        from chatclient.reconnect import ReconnectingClient

        self.server = await start_server(self)
        self.bob = await logged_in(self, self.server, "bob")
        await self.bob.request({"type": "create", "room": "design", "kind": "public", "topic": "Mock-ups"})
        await self.bob.request({"type": "create", "room": "secret", "kind": "private"})
        for n in range(120):
            await self.bob.say("design", f"note {n}")
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port)
        self.client = ReconnectingClient(reactor, endpoint, lambda fp: True, "alice", PASSWORD, register=True)
        self.bridge = ClientBridge(reactor, self.client)
        self.client.start()
        self.addCleanup(self.client.stop)
        await self.client.when_online()
        await self.client.request({"type": "join", "room": "design"})
        self.model = ChatModel("alice")
        self.view = Transcript()
        self.loader = HistoryLoader(self.bridge, self.model, self.view)

    async def test_scrolling_back_loads_page_by_page_until_the_start(self) -> None:
        conversation = self.model.open("room:design")
        self.loader.load_page(conversation)
        self.loader.load_page(conversation)  # already on its way: not asked twice
        await until(lambda: len(self.view.pages) == 1)
        self.assertEqual(self.view.pages[0], ("room:design", None, True))
        self.assertTrue(conversation.more_before)
        first_batch = [e["id"] for e in conversation.events]
        self.assertEqual(len(first_batch), 50)
        self.assertTrue(self.bridge.has_seen("room:design"), "the first page is a place to catch up from")
        for _ in range(5):  # bounded: 122 events are three pages
            if not conversation.more_before:
                break
            before = len(self.view.pages)
            self.loader.load_older(conversation)
            await until(lambda before=before: len(self.view.pages) > before)
        _, prepended, first = self.view.pages[1]
        self.assertFalse(first)
        assert prepended is not None
        self.assertEqual(len(prepended), 50)
        self.assertLess(max(prepended), min(first_batch), "all older than what was shown")
        self.assertEqual(len(self.view.pages), 3)
        bodies = [e.get("body") for e in conversation.events if e["type"] == "msg"]
        self.assertEqual(bodies, [f"note {n}" for n in range(120)])
        self.assertFalse(conversation.more_before)
        pages = len(self.view.pages)
        self.loader.load_older(conversation)  # nothing before the start: nothing asked
        await self.client.request({"type": "rooms"})
        self.assertEqual(len(self.view.pages), pages)

    async def test_a_refused_page_stops_the_paging_and_is_reported(self) -> None:
        conversation = self.model.open("room:secret")
        self.loader.load_page(conversation)
        await until(lambda: self.view.problems)
        self.assertEqual(self.view.problems, [("refused", "history")])
        self.assertTrue(conversation.loaded)
        self.assertFalse(conversation.more_before, "asking again would not help")
        self.assertEqual(self.view.pages, [])

    async def test_a_gap_is_filled_and_topics_and_catch_up_places_are_read(self) -> None:
        conversation = self.model.open("room:design")
        ids = [
            e["id"]
            for e in (await self.client.request({"type": "history", "stream": "room:design", "limit": 300}))[
                "events"
            ]
        ]
        self.model.add_history(
            "room:design", [{"id": ids[0], "type": "joined", "user": "bob", "ts": 0}], True, older=True
        )
        self.loader.fill_gap(conversation, ids[0], ids[-1])
        await until(lambda: self.view.gaps)
        self.assertEqual(
            len(conversation.events), len(ids) - 1, "everything between the two ids, not the last"
        )

        self.model.conversation("room:lobby")
        self.model.current = None
        # As for a room joined before this login, with no event seen live yet.
        self.client.last_ids.pop("room:lobby", None)
        self.assertFalse(self.bridge.has_seen("room:lobby"))
        self.loader.seed_catch_up()
        self.loader.refresh_topics()
        await until(lambda: self.view.topics and self.bridge.has_seen("room:lobby"))
        self.assertEqual(self.model.conversation("room:design").topic, "Mock-ups")

    async def test_the_roster_finds_a_direct_message_peers_presence_in_a_shared_room(self) -> None:
        from chatclient.gui.roster import Roster
        from chatserver.wire.names import dm_stream

        shown: list[list[dict[str, Any]]] = []
        roster = Roster(self.bridge, self.model, shown.append, self.view.report)
        self.model.conversation("room:lobby").joined = True
        self.model.conversation("room:design").joined = True
        with_bob = self.model.open(dm_stream("alice", "bob"))
        roster.refresh(with_bob)
        await until(lambda: shown and shown[-1][1]["online"] is not None)
        self.assertIsNone(shown[0][1]["online"], "unknown until the server answers")
        self.assertEqual([m["user"] for m in shown[-1]], ["alice", "bob"])
        self.assertTrue(shown[-1][1]["online"])

        # Nobody by that name in any shared room: the presence stays unknown.
        count = len(shown)
        roster.refresh(self.model.open(dm_stream("alice", "ghost")))
        await until(lambda: len(shown) == count + 2)  # at once, then after asking both rooms
        self.assertEqual(shown[-1][1], {"user": "ghost", "role": "member", "online": None})

        # A room's members, as the server lists them...
        roster.refresh(self.model.open("room:design"))
        await until(lambda: len(shown) == count + 3)
        self.assertEqual(sorted(m["user"] for m in shown[-1]), ["alice", "bob"])
        self.assertEqual(roster.members, shown[-1])
        # ... for the conversation on screen only.
        roster.refresh(self.model.conversations["room:design"])
        self.model.open("room:lobby")  # moved on before the answer
        await self.client.request({"type": "rooms"})  # answered after the who
        self.assertEqual(len(shown), count + 3)
