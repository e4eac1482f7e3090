"""``[server] workers = 2``: a real twistd main process with two worker
processes on PostgreSQL and Redis, clients spread over both."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial import unittest

from chatclient.session import connect
from tests import backends
from tests.processes import chatserver_argv, spawn
from tests.support import install_identity, postgres_only, until
from tests.test_faults import Sender
from tests.test_nodes import urlsafe


class WorkerProcessTests(unittest.TestCase):
    skip = backends.missing() or postgres_only("worker processes on PostgreSQL and Redis")
    timeout = 120

    async def start(self, workers: int = 2, config: str = "") -> tuple[Any, int]:
        """``config``: an INI file's text, given with ``--config``."""
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        install_identity(base / "data")
        url = self.database = backends.postgres_url()
        # A prefix of its own on the run's Redis: pub/sub channels are
        # shared by every database number, and other tests run alongside.
        (base / "chatserver.ini").write_text(f"[hub]\nprefix = {urlsafe(url)}\n{config}")
        extra = ["--config", str(base / "chatserver.ini")]
        argv = chatserver_argv(
            "--endpoint",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            str(base / "data"),
            "--log-dir",
            str(base / "log"),
            "--database",
            url,
            "--hub",
            backends.redis_url(),
            "--workers",
            str(workers),
            *extra,
        )
        main = spawn(self, "twistd-main", argv, cwd=str(base))
        port = int((await main.wait_for(r"listening on (\d+) with \d+ workers")).group(1))
        for index in range(1, workers + 1):
            await main.wait_for(rf"worker {index}: .*fingerprint")
        self.base = base
        return main, port

    async def listening(self, main: Any, port: int, count: int) -> None:
        """Until ``count`` workers listen on ``port``."""

        def ready() -> bool:
            try:
                return (
                    sum(
                        1
                        for w in self.workers(main)
                        if any(
                            c.status == "LISTEN" and c.laddr.port == port for c in w.net_connections("tcp")
                        )
                    )
                    == count
                )
            except psutil.Error:
                return False

        await until(ready, timeout=30)
        # Listening is not yet accepting: a worker whose reactor is still
        # busy starting leaves its share of new connections in its backlog,
        # and clients that give up on it reconnect to the other.  Probe
        # until every worker has accepted one (each probe lands on a worker
        # by the kernel's hash of its source port).
        accepted: set[int] = set()
        for _ in range(200):
            probe = await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
                protocol.Factory.forProtocol(protocol.Protocol)
            )
            source = probe.transport.getHost().port
            for _ in range(100):
                owner = [
                    w.pid
                    for w in self.workers(main)
                    if any(c.raddr and c.raddr.port == source for c in w.net_connections("tcp"))
                ]
                if owner:
                    accepted.update(owner)
                    break
                await task.deferLater(reactor, 0.02, lambda: None)
            probe.transport.loseConnection()
            if len(accepted) == count:
                return
        raise AssertionError(f"only {len(accepted)} of {count} workers accept connections")

    async def spread(self, main: Any, port: int, senders: list[Any]) -> None:
        """Until every worker serves at least one of ``senders``.  The
        kernel picks a worker by a hash of each connection's source port,
        so all of a few clients can land on one (6 on 2 workers: 1 in 32);
        a client of the busiest worker is moved by a reconnection, to
        wherever its new source port hashes."""

        def by_worker() -> dict[int, list[Any]]:
            ports = {
                w.pid: {c.raddr.port for c in w.net_connections("tcp") if c.raddr and c.laddr.port == port}
                for w in self.workers(main)
            }
            return {
                pid: [s for s in senders if s.client.session.protocol.transport.getHost().port in held]
                for pid, held in ports.items()
            }

        for _ in range(30):
            await until(lambda: sum(len(v) for v in by_worker().values()) == len(senders), timeout=10)
            served = by_worker()
            if all(served.values()):
                return
            moved = max(served.values(), key=len)[0]
            moved.client.session.protocol.transport.loseConnection()
            await until(lambda moved=moved: moved.client.state != "online", timeout=10)
            await moved.client.when_online()
        raise AssertionError("the clients stayed on one worker")

    def workers(self, main: Any) -> list[psutil.Process]:
        """The main process's live workers."""
        found = []
        for child in psutil.Process(main.transport.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "--worker-index" in child.cmdline():
                    found.append(child)
            except psutil.Error:
                pass  # gone meanwhile
        return found

    async def test_clients_on_both_workers_talk_and_a_killed_worker_comes_back(self) -> None:
        main, port = await self.start()
        await self.listening(main, port, 2)
        senders = [Sender(self, port, f"user{n}") for n in range(8)]
        for sender in senders:
            await sender.client.when_online()
        await self.spread(main, port, senders)

        # The kernel spread them over both workers.
        def connections() -> dict[int, int]:
            counts = {}
            for worker in self.workers(main):
                counts[worker.pid] = sum(
                    1
                    for c in worker.net_connections("tcp")
                    if c.status == "ESTABLISHED" and c.laddr.port == port
                )
            return counts

        await until(lambda: sum(connections().values()) == 8, timeout=10)
        self.assertTrue(all(n > 0 for n in connections().values()), connections())

        # Everyone sends; then worker 1 is killed, ten times in a row.
        sending = [defer.ensureDeferred(s.send(pause=0.25)) for s in senders[:4]]  # under the 5/s limit
        for kill in range(10):
            # Each worker in turn: one killed ten times running would wait
            # out the restart backoff (up to 30 s), which is right but slow.
            index = str(kill % 2 + 1)
            [victim] = [
                w for w in self.workers(main) if w.cmdline()[w.cmdline().index("--worker-index") + 1] == index
            ]
            victim.kill()
            await until(
                lambda pid=victim.pid: (
                    len(self.workers(main)) == 2 and pid not in [w.pid for w in self.workers(main)]
                ),
                timeout=40,
            )
            await task.deferLater(reactor, 0.3, lambda: None)
        for sender in senders[:4]:
            sender.running = False
        await defer.gatherResults(sending)
        # Every acknowledged message reached every member exactly once, in order.
        acked = sorted(m for s in senders[:4] for m in s.acked)
        self.assertGreater(len(acked), 40)
        for member in senders:
            try:
                await until(lambda member=member: set(acked) <= set(member.received), timeout=20)
            except AssertionError:
                missing = sorted(set(acked) - set(member.received))
                raise AssertionError(
                    f"{member.user} lacks {len(missing)} of {len(acked)}: {missing[:10]}; "
                    f"received {len(member.received)}, last {member.received[-3:]}"
                ) from None
            mine = sorted(m for m in member.received if m in set(acked))
            self.assertEqual(mine, acked)
            ids = [i for i, _ in member.received]
            self.assertEqual(ids, sorted(set(ids)), member.user)  # once each, in order
        text = "\n".join(main.lines[1])
        self.assertEqual(len(re.findall(r"worker \d ended \(killed by signal 9\)", text)), 10)
        # SIGTERM stops the workers and the main process, cleanly.
        main.signal("TERM")
        self.assertEqual(await main.ended.addTimeout(60, reactor), 0)

    async def test_stats_metrics_and_the_monitor_cover_every_worker(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families
        from twisted.web.client import Agent, readBody

        from chatserver import accounts
        from chatserver.storage.direct import open_direct
        from tests.support import PASSWORD, make_settings
        from tests.test_durability import free_port

        metrics_port = free_port()
        main, port = await self.start(
            config=(
                "[monitor]\nenabled = true\ninterval = 0.3\n"
                f"[metrics]\nenabled = true\nendpoint = tcp:{metrics_port}:interface=127.0.0.1\n"
            )
        )
        await self.listening(main, port, 2)
        db = open_direct(make_settings(self.base, database=self.database))
        try:
            self.assertTrue(accounts.add_user_now(db, "root", PASSWORD, "admin", 10))
        finally:
            db.close()
        senders = [Sender(self, port, f"user{n}") for n in range(6)]
        for sender in senders:
            await sender.client.when_online()
        await self.spread(main, port, senders)
        await defer.gatherResults([defer.ensureDeferred(s.send(count=5, pause=0.05)) for s in senders])
        sent = sum(len(s.acked) for s in senders)
        worker_pids = {w.pid for w in self.workers(main)}

        def serving(pid: int) -> int:
            return sum(
                1
                for c in psutil.Process(pid).net_connections("tcp")
                if c.status == "ESTABLISHED" and c.laddr.port == port
            )

        # The kernel spread the clients over both workers.
        self.assertTrue(all(serving(pid) for pid in worker_pids), {p: serving(p) for p in worker_pids})

        # An admin, on whichever worker, sees every worker's numbers.
        admin = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fp: True)
        self.addCleanup(admin.close)
        await admin.login("root", PASSWORD)
        frames = []

        async def covered() -> bool:
            frame = await admin.request({"type": "stats"})
            frames.append(frame)
            return (
                (frame["app"]["totals"]["messages_in"], frame["app"]["connections"]) == (sent, 7)
                and frame["app"]["totals"]["messages_out"] >= sent * 6
                and frame["sample"] is not None
                and ({p["pid"] for p in frame["sample"]["processes"]} >= worker_pids)
            )

        for _ in range(50):
            if await covered():
                break
            await task.deferLater(reactor, 0.2, lambda: None)
        frame = frames[-1]
        self.assertEqual(frame["app"]["totals"]["messages_in"], sent)
        # Every message went to the six senders' sessions (and the lobby's
        # admin), each delivered by the worker that holds the member.
        self.assertGreaterEqual(frame["app"]["totals"]["messages_out"], sent * 6)
        self.assertEqual(frame["app"]["connections"], 7)
        self.assertEqual(frame["app"]["users_online"], 7)
        workers = frame["workers"]
        self.assertEqual([w["index"] for w in workers], [1, 2])
        self.assertEqual({w["pid"] for w in workers}, worker_pids)
        self.assertTrue(all(w["up"] and w["hub_up"] for w in workers), workers)
        self.assertEqual(sorted(w["connections"] for w in workers), sorted(serving(p) for p in worker_pids))
        self.assertEqual(frame["sample"]["server_pid"], main.transport.pid)
        # The service's uptime is the main process's, which started first.
        self.assertGreaterEqual(frame["app"]["uptime"], max(w["uptime"] for w in workers))
        self.assertTrue(frame["monitor"]["up"])
        self.assertGreater(len(frame["history"]), 0)
        self.assertIsInstance(frame["workers"][0]["messages_out"], float)

        # The statistics panel names each process by its role.
        try:
            from tests.test_gui_stats_panel import StatsPanel, table_rows
        except ImportError:  # pragma: no cover - the gui extra is part of make test
            StatsPanel = None
        if StatsPanel is not None:
            from PyQt6.QtWidgets import QLabel

            panel = StatsPanel()
            self.addCleanup(panel.close)
            panel.resize(1000, 700)
            panel.load(frame)
            roles = {int(row[0]): row for row in table_rows(panel)}
            self.assertEqual(roles[main.transport.pid][1], "main")
            for worker in workers:
                row = roles[worker["pid"]]
                self.assertEqual(row[1], f"worker {worker['index']}")
                self.assertEqual(row[8], str(worker["connections"]))
            self.assertEqual(panel.findChild(QLabel, "workers").text(), "Workers 2/2 up, restarts 0")
            self.assertTrue(panel.grab().save(str(self.base / "panel.png")))

        # /metrics, from the main process: each worker's series by label.
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{metrics_port}/metrics".encode())
        self.assertEqual(response.code, 200)
        samples = [
            sample
            for family in text_string_to_metric_families((await readBody(response)).decode())
            for sample in family.samples
        ]
        messages_in = {
            s.labels["worker"]: s.value for s in samples if s.name == "chatserver_messages_in_total"
        }
        self.assertEqual(set(messages_in), {"1", "2"})
        self.assertEqual(sum(messages_in.values()), sent)
        up = {s.labels["worker"]: s.value for s in samples if s.name == "chatserver_worker_up"}
        self.assertEqual(up, {"1": 1, "2": 1})
        hub_up = {s.labels["worker"]: s.value for s in samples if s.name == "chatserver_hub_up"}
        self.assertEqual(hub_up, {"1": 1, "2": 1})
        self.assertIn("chatserver_process_resident_memory_bytes", {s.name for s in samples})
        self.assertEqual([s.value for s in samples if s.name == "chatserver_monitor_up"], [1])

        # A worker killed: the stats say so, and count its restart.
        # (The one the admin is not on.)
        admin_port = admin.protocol.transport.getHost().port
        victim = next(
            w
            for w in workers
            if not any(
                c.raddr and c.raddr.port == admin_port
                for c in psutil.Process(w["pid"]).net_connections("tcp")
            )
        )
        psutil.Process(victim["pid"]).kill()
        await until(
            lambda: len(self.workers(main)) == 2 and victim["pid"] not in {w.pid for w in self.workers(main)},
            timeout=30,
        )

        async def restarted() -> bool:
            frame = await admin.request({"type": "stats"})
            return [w["restarts"] for w in frame["workers"]] == [
                int(w["index"] == victim["index"]) for w in workers
            ] and all(w["up"] for w in frame["workers"])

        for _ in range(50):
            if await restarted():
                break
            await task.deferLater(reactor, 0.2, lambda: None)
        self.assertTrue(await restarted())

        # The main process SIGKILLed: its workers stop by themselves
        # rather than serve on outside any supervision.
        pids = {w.pid for w in self.workers(main)}
        main.signal("KILL")
        await main.ended.addTimeout(30, reactor)

        def gone() -> bool:
            alive = []
            for pid in pids:
                try:
                    alive.append(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
                except psutil.NoSuchProcess:
                    pass
            return not any(alive)

        await until(gone, timeout=20)

    def test_more_than_one_worker_needs_postgresql_and_redis(self) -> None:
        import subprocess

        from tests.processes import python_env

        base = Path(self.mktemp()).resolve()
        done = subprocess.run(
            chatserver_argv(
                "--data-dir", str(base / "data"), "--log-dir", str(base / "log"), "--workers", "2"
            ),
            capture_output=True,
            text=True,
            env=python_env(),
            timeout=60,
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertIn(
            "[server] workers = 2 needs [store] database = postgresql://", done.stderr + done.stdout
        )
        self.assertNotIn("Traceback", done.stderr + done.stdout)
