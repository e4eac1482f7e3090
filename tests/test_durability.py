"""Nothing acknowledged is lost, and reconnecting clients see every message
exactly once, in order: a real twistd killed with SIGKILL mid-burst."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, reactor
from twisted.trial import unittest

from chatclient.reconnect import ReconnectingClient
from chatclient.session import ConnectionClosed, ServerError
from tests.processes import start_twistd
from tests.support import PASSWORD, install_identity, until

MESSAGES_PER_SENDER = 300
WINDOW = 16  # unacknowledged messages per sender


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Member:
    """A reconnecting client that records what it receives."""

    def __init__(self, testcase: unittest.TestCase, port: int, user: str) -> None:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self.client = ReconnectingClient(
            reactor,
            endpoint,
            lambda fp: True,
            user,
            PASSWORD,
            register=True,
            initial_delay=0.1,
            max_delay=0.5,
        )
        self.received: list[tuple[int, str]] = []
        self.client.add_listener(self._event)
        self.client.start()
        testcase.addCleanup(self.client.stop)

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "msg" and event.get("room") == "lobby":
            self.received.append((event["id"], event["body"]))


class DurabilityTests(unittest.TestCase):
    timeout = 120

    async def send_burst(
        self, member: Member, name: str, acked: dict[int, str], kill_at: defer.Deferred
    ) -> None:
        """Send MESSAGES_PER_SENDER messages with a window; record acks.
        A message whose ack is lost with the connection is not retried: it
        may or may not have been committed, and only acks are promises."""
        sent = 0
        outstanding: list[defer.Deferred] = []

        def acknowledged(ack: dict[str, Any], body: str) -> None:
            acked[ack["id"]] = body
            if len(acked) >= 150 and not kill_at.called:
                kill_at.callback(None)

        while sent < MESSAGES_PER_SENDER:
            body = f"{name} {sent}"
            d = member.client.say("lobby", body)
            d.addCallback(acknowledged, body)
            d.addErrback(lambda f: f.trap(ConnectionClosed, ServerError))
            outstanding.append(d)
            sent += 1
            if len(outstanding) >= WINDOW:
                await outstanding.pop(0)
        for d in outstanding:
            await d

    async def test_sigkill_mid_burst_loses_nothing_acknowledged(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        install_identity(base / "data")
        port = free_port()
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        # The bursts are far over the default message rate; rate limits
        # have their own tests.
        config = base / "chatserver.ini"
        config.write_text("[limits]\nmessages_rate = 100000\nmessages_burst = 100000\n")
        args = ("--config", str(config), "--endpoint", endpoint)
        server, _, _ = await start_twistd(self, base, *args)

        members = [Member(self, port, name) for name in ("alice", "bob", "carol")]
        for member in members:
            await member.client.when_online()
        acked: dict[int, str] = {}
        kill_at: defer.Deferred = defer.Deferred()
        bursts = [
            defer.ensureDeferred(self.send_burst(members[0], "alice", acked, kill_at)),
            defer.ensureDeferred(self.send_burst(members[1], "bob", acked, kill_at)),
        ]

        await kill_at
        server.signal("KILL")
        self.assertEqual(await server.ended, -9)
        acked_before_kill = len(acked)
        server, _, _ = await start_twistd(self, base, *args)
        await defer.gatherResults(bursts)
        self.assertGreater(acked_before_kill, 100)
        self.assertGreater(len(acked), acked_before_kill, "sending went on after the restart")

        # Every member reconnected at least once and then caught up.
        for member in members:
            await member.client.when_online()
            self.assertGreaterEqual(member.client.connections, 2)
        history: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await members[2].client.request(
                {"type": "history", "stream": "room:lobby", "after": after, "limit": 200}
            )
            history += page["events"]
            if not page["more"]:
                break
            after = page["events"][-1]["id"]
        messages = {e["id"]: e["body"] for e in history if e["type"] == "msg"}
        for event_id, body in acked.items():
            self.assertEqual(messages.get(event_id), body, f"acknowledged message {event_id} lost")
        ids = [e["id"] for e in history]
        self.assertEqual(ids, sorted(set(ids)))
        for member in members:
            await until(lambda m=member: len(m.received) >= len(messages), timeout=20)
            self.assertEqual(
                member.received, sorted(messages.items()), f"{member.client.user} saw a gap or a duplicate"
            )
