"""The server never sends a line above the protocol's line limit.

A client written to docs/protocol.rst accepts lines of at most
``max_line_length`` bytes (65,536) and disconnects on a longer one.  So
every answer that lists things is paged, by count and by size: ``who``,
``rooms`` and ``history``.  The property: over randomized servers (rooms
of up to 1,500 members with names of every length, histories of events
whose JSON is as long as a body can make it), a client with exactly that
limit reads every page of everything, gets each member, room and event
exactly once, and never sees a longer line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from chatclient.session import ChatSession
from chatserver.storage import sqlite as store
from chatserver.storage.direct import open_direct
from chatserver.wire import crypto
from tests.support import PASSWORD, RunningServer, make_settings, open_session

#: A body whose JSON is as long as a body's can be: every character is
#: escaped to six bytes (U+2028 is sent as \\u2028).
WORST_BODY = "\u2028" * 4000

EXAMPLES = 3


def _name(rng: random.Random, length: int) -> str:
    """A valid name of ``length`` characters (starting with a letter)."""
    rest = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_-") for _ in range(length - 1))
    return rng.choice("abcdefghijklmnopqrstuvwxyz") + rest


def populate(settings: Any, rng: random.Random) -> dict[str, Any]:
    """A randomized database, written before the server starts (as an
    admin tool or a migration would): what it holds, for checking."""
    db = open_direct(settings, create=True)
    expected: dict[str, Any] = {"rooms": {}, "events": {}}

    def fill(cur: Any) -> None:
        store.add_user(cur, "root", crypto.hash_password(PASSWORD, 10), "admin")
        for r in range(rng.randint(1, 300)):
            room = f"{_name(rng, rng.randint(1, 28))}{r}"
            store.create_room(
                cur, room, rng.choice(["public", "private"]), None, "t" * rng.randint(0, 300), 0
            )
            members = {
                f"{_name(rng, rng.randint(2, 22))}{r}x{m}" for m in range(rng.choice([0, 3, 250, 1500]))
            }
            cur.executemany(
                "INSERT INTO room_members (room, user, role, joined_at) VALUES (?, ?, 'member', 0)",
                [(room, user) for user in members],
            )
            expected["rooms"][room] = members
        stream = "room:" + room
        count = rng.choice([1, 50, 450])
        rows = []
        for i in range(1, count + 1):
            body = WORST_BODY if rng.random() < 0.8 else "hi"
            event = {
                "type": "msg",
                "from": "root",
                "body": body,
                "room": room,
                "stream": stream,
                "id": i,
                "ts": 0,
            }
            rows.append((stream, i, 0, json.dumps(event, ensure_ascii=False, separators=(",", ":"))))
        store.append_events(cur, rows)
        expected["events"][stream] = count

    try:
        db.run(fill)
    finally:
        db.close()
    return expected


class LineLimitTests(unittest.TestCase):
    def watch(self, session: ChatSession, limit: int) -> list[int]:
        """Make ``session`` a client with exactly the spec's line limit,
        and record the length of every line it reads."""
        lengths: list[int] = []
        protocol = session.protocol
        protocol.MAX_LENGTH = limit
        original = protocol.lineReceived

        def received(line: bytes) -> None:
            lengths.append(len(line))
            original(line)

        protocol.lineReceived = received  # type: ignore[method-assign]
        return lengths

    async def test_no_line_above_the_limit_over_randomized_servers(self) -> None:
        for seed in range(EXAMPLES):
            await self.check_one(random.Random(seed))

    async def check_one(self, rng: random.Random) -> None:
        base = self.mktemp()
        settings = make_settings(Path(base))
        settings.data_path.mkdir(parents=True, exist_ok=True)
        expected = populate(settings, rng)
        server = RunningServer(settings)
        await server.start()
        try:
            session = await open_session(self, server)
            limit = settings.max_line_length
            lengths = self.watch(session, limit)
            await session.login("root", PASSWORD)
            rooms = await session.request({"type": "rooms"})  # every page, as the clients read it
            names = [r["room"] for r in rooms["rooms"]]
            self.assertEqual(sorted(names), sorted(set(expected["rooms"]) | {"lobby"}))
            for room, members in expected["rooms"].items():
                if len(members) > 100 or rng.random() < 0.1:
                    self.assertEqual(sorted(await session.who(room)), sorted(members))
            for stream, count in expected["events"].items():
                forward = await self.read_history(session, stream, forward=True)
                self.assertEqual(forward, list(range(1, count + 1)))
                backward = await self.read_history(session, stream, forward=False)
                self.assertEqual(backward, list(range(1, count + 1)))
            self.assertLessEqual(max(lengths), limit)
        finally:
            await server.stop()

    async def read_history(self, session: ChatSession, stream: str, forward: bool) -> list[int]:
        ids: list[int] = []
        cursor: dict[str, Any] = {"after": 0} if forward else {}
        for _ in range(1000):  # bounded
            page = await session.request(dict({"type": "history", "stream": stream, "limit": 200}, **cursor))
            page_ids = [e["id"] for e in page["events"]]
            self.assertEqual(page_ids, sorted(page_ids))
            ids = ids + page_ids if forward else page_ids + ids
            if not page["more"]:
                return ids
            cursor = {"after": page_ids[-1]} if forward else {"before": page_ids[0]}
        raise AssertionError("history did not end")
