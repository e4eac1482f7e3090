"""Parts dying under steady traffic, with every acknowledged message
counted: nothing acknowledged is lost, nothing is stored twice, order is
kept, and service comes back by itself.  Each test has servers of its own
(a private PostgreSQL cluster, when that is what dies)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.trial import unittest

from chatclient.reconnect import ReconnectingClient
from chatclient.session import ServerError
from tests import backends
from tests.support import PASSWORD, RunningServer, logged_in, make_settings, postgres_only, until


class Sender:
    """A reconnecting client that says numbered messages in a room, one
    after another, and keeps the acknowledgements."""

    def __init__(
        self, testcase: unittest.TestCase, port: int, user: str, register: bool = True, endpoint: Any = None
    ) -> None:
        """``endpoint``: instead of loopback ``port`` (a failover list)."""
        if endpoint is None:
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self.client = ReconnectingClient(
            reactor,
            endpoint,
            lambda fp: True,
            user,
            PASSWORD,
            register=register,
            initial_delay=0.1,
            max_delay=1.0,
        )
        self.user = user
        self.acked: list[tuple[int, str]] = []
        self.received: list[tuple[int, str]] = []
        self.running = True
        self.client.add_listener(self._event)
        self.client.start()
        testcase.addCleanup(self.client.stop)

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "msg" and event.get("room") == "lobby":
            self.received.append((event["id"], event["body"]))

    async def send(self, count: int | None = None, pause: float = 0.01) -> None:
        n = 0
        while self.running and (count is None or n < count):
            body = f"{self.user} {n}"
            ack = await self.client.say("lobby", body)
            self.acked.append((ack["id"], body))
            n += 1
            await task.deferLater(reactor, pause, lambda: None)


class PostgresRestartTests(unittest.TestCase):
    skip = backends.missing() or postgres_only("a PostgreSQL server restarted")
    timeout = 120

    async def test_a_restart_mid_traffic_loses_nothing_and_service_comes_back(self) -> None:
        cluster = backends.Postgres().start()
        self.addCleanup(cluster.stop)
        url = cluster.fresh_database("faults")
        server = RunningServer(make_settings(Path(self.mktemp()), database=url))
        await server.start()
        self.addCleanup(server.stop)
        alice = Sender(self, server.port, "alice")
        bob = Sender(self, server.port, "bob")
        await alice.client.when_online()
        await bob.client.when_online()
        sending = defer.ensureDeferred(alice.send())
        await until(lambda: len(alice.acked) >= 20, timeout=20)

        # A plain session (no resending) sees what the outage looks like.
        probe = await logged_in(self, server, "carol")
        outage = threads.deferToThread(cluster.restart, 2.0)
        refusals: list[dict[str, Any]] = []
        started = time.monotonic()
        while not outage.called and time.monotonic() - started < 30:
            try:
                await probe.say("lobby", "probe")
            except ServerError as e:
                refusals.append(e.event)
            await task.deferLater(reactor, 0.2, lambda: None)
        await outage
        restarted_at = len(alice.acked)
        await until(lambda: len(alice.acked) >= restarted_at + 20, timeout=30)  # service is back
        alice.running = False
        await sending

        self.assertTrue(refusals, "no request was refused while the database was down")
        self.assertEqual({(e["code"], e["retry_after"]) for e in refusals}, {("unavailable", 2)})
        # Every acknowledged message is stored once, in order of its ids.
        page = await probe.request({"type": "history", "stream": "room:lobby", "limit": 1000})
        stored = [(e["id"], e["body"]) for e in page["events"] if e.get("from") == "alice"]
        self.assertEqual(stored, alice.acked)
        self.assertEqual([b for _, b in alice.acked], [f"alice {n}" for n in range(len(alice.acked))])
        # And bob saw each of them once, in order.
        await until(lambda: set(alice.acked) <= set(bob.received), timeout=10)
        mine = [m for m in bob.received if m[1].startswith("alice ")]
        self.assertEqual(mine, alice.acked)
        print(f"\n{len(alice.acked)} messages, {len(refusals)} refusals while the database was down")


class RedisFaultTests(unittest.TestCase):
    """Two nodes on one PostgreSQL database and a Redis of the test's own:
    alice sends on node 1, bob listens on node 2."""

    skip = backends.missing() or postgres_only("two nodes over Redis")
    timeout = 120

    async def nodes(self) -> tuple[Any, Sender, Sender]:
        self.redis = backends.Redis().start()
        self.addCleanup(lambda: self.redis.stop())
        url = backends.postgres_url()
        nodes = []
        for n in (1, 2):
            settings = make_settings(
                Path(self.mktemp()),
                database=url,
                hub_url=self.redis.url,
                hub_name=f"node{n}",
                hub_prefix="f:",
            )
            node = RunningServer(settings)
            await node.start()
            self.addCleanup(node.stop)
            nodes.append(node)
        alice = Sender(self, nodes[0].port, "alice")
        bob = Sender(self, nodes[1].port, "bob")
        await alice.client.when_online()
        await bob.client.when_online()
        return nodes, alice, bob

    async def check(self, alice: Sender, bob: Sender) -> None:
        await until(lambda: set(alice.acked) <= set(bob.received), timeout=20)
        mine = [m for m in bob.received if m[1].startswith("alice ")]
        self.assertEqual(mine, alice.acked)  # each once, in order

    async def test_redis_restarted_mid_traffic(self) -> None:
        nodes, alice, bob = await self.nodes()
        sending = defer.ensureDeferred(alice.send())
        await until(lambda: len(alice.acked) >= 20, timeout=20)
        socket = self.redis.socket
        await threads.deferToThread(self.redis.stop)
        await task.deferLater(reactor, 1.0, lambda: None)  # alice goes on: her node has its own clients
        again = backends.Redis()
        again.base.rmdir()
        again.base, again.socket, again.log = socket.parent, socket, socket.parent / "redis.log"
        again.base.mkdir(parents=True, exist_ok=True)
        self.redis = again
        await threads.deferToThread(again.start)
        count = len(alice.acked)
        await until(lambda: len(alice.acked) >= count + 20, timeout=20)
        alice.running = False
        await sending
        await self.check(alice, bob)
        hub: Any = nodes[1].factory.chat.hub
        self.assertGreaterEqual(hub.stats["reconnects"], 1)

    async def test_redis_paused_for_ten_seconds(self) -> None:
        import os
        import signal

        nodes, alice, bob = await self.nodes()
        sending = defer.ensureDeferred(alice.send(pause=0.05))
        await until(lambda: len(alice.acked) >= 20, timeout=20)
        assert self.redis.pid is not None
        os.kill(self.redis.pid, signal.SIGSTOP)
        try:
            await task.deferLater(reactor, 10.0, lambda: None)
        finally:
            os.kill(self.redis.pid, signal.SIGCONT)
        during = len(alice.acked)
        await until(lambda: len(alice.acked) >= during + 10, timeout=20)
        alice.running = False
        await sending
        await self.check(alice, bob)
        hub: Any = nodes[1].factory.chat.hub
        self.assertGreaterEqual(hub.stats["reconnects"], 1)
        self.assertGreater(hub.stats["outage_seconds"], 5)
        # The delay is in the metrics as well as the log.
        from chatserver.prometheus import ChatCollector

        scraped = {m.name: m.samples[0].value for m in ChatCollector(nodes[1].factory).collect()}
        self.assertGreater(scraped["chatserver_hub_outage_seconds"], 5)
        self.assertEqual(scraped["chatserver_hub_up"], 1)
        print(f"\n{len(alice.acked)} messages; the hub was away {hub.stats['outage_seconds']:.1f} s")


class NodeKillTests(unittest.TestCase):
    """Two real twistd nodes on one PostgreSQL database and Redis; node 1
    is SIGKILLed mid-traffic."""

    skip = backends.missing() or postgres_only("two twistd nodes on PostgreSQL and Redis")
    timeout = 120

    async def test_a_killed_nodes_clients_fail_over_and_lose_nothing(self) -> None:
        from chatclient.endpoints import FailoverEndpoint
        from tests.processes import start_twistd
        from tests.support import install_identity

        url = backends.postgres_url()
        config = Path(self.mktemp()).resolve()
        config.mkdir()
        ini = config / "chatserver.ini"
        ini.write_text(f"[hub]\nurl = {backends.redis_url()}\nprefix = kill{id(self)}:\n")
        nodes = []
        for _ in (1, 2):
            base = Path(self.mktemp()).resolve()
            base.mkdir()
            install_identity(base / "data")
            process, port, _ = await start_twistd(self, base, "--config", str(ini), "--database", url)
            nodes.append((process, port))
        (one, one_port), (_, two_port) = nodes
        failover = FailoverEndpoint(
            [
                (f"node{n}", endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", p))
                for n, p in ((1, one_port), (2, two_port))
            ]
        )
        alice = Sender(self, one_port, "alice", endpoint=failover)
        bob = Sender(self, two_port, "bob")
        await alice.client.when_online()
        await bob.client.when_online()
        sending = defer.ensureDeferred(alice.send(pause=0.25))  # under the 5/s limit
        await until(lambda: len(alice.acked) >= 8, timeout=20)
        one.signal("KILL")
        killed = time.monotonic()
        before = len(alice.acked)
        await until(lambda: len(alice.acked) > before, timeout=20)  # acknowledged by node 2 now
        back = time.monotonic() - killed
        await until(lambda: len(alice.acked) >= before + 8, timeout=20)
        alice.running = False
        await sending
        self.assertEqual(failover.name, "node2")
        await until(lambda: set(alice.acked) <= set(bob.received), timeout=20)
        self.assertEqual([m for m in bob.received if m[1].startswith("alice ")], alice.acked)
        page = await alice.client.request({"type": "history", "stream": "room:lobby", "limit": 1000})
        stored = [(e["id"], e["body"]) for e in page["events"] if e.get("from") == "alice"]
        self.assertEqual(stored, alice.acked)  # each once: the resent one too
        print(f"\nnode 1 killed: alice sending again through node 2 after {back:.2f} s")
        self.assertLess(back, 5.0)
