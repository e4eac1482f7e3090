"""``[server] workers = 2``: a real twistd main process with two worker
processes on PostgreSQL and Redis, clients spread over both."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests import backends
from tests.processes import chatserver_argv, spawn
from tests.support import install_identity, postgres_only, until
from tests.test_faults import Sender


class WorkerProcessTests(unittest.TestCase):
    skip = backends.missing() or postgres_only("worker processes on PostgreSQL and Redis")
    timeout = 120

    async def start(self, workers: int = 2) -> tuple[Any, int]:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        install_identity(base / "data")
        url = backends.postgres_url()
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
            await until(lambda member=member: set(acked) <= set(member.received), timeout=20)
            mine = sorted(m for m in member.received if m in set(acked))
            self.assertEqual(mine, acked)
            ids = [i for i, _ in member.received]
            self.assertEqual(ids, sorted(set(ids)), member.user)  # once each, in order
        text = "\n".join(main.lines[1])
        self.assertEqual(len(re.findall(r"worker \d ended \(killed by signal 9\)", text)), 10)
        # SIGTERM stops the workers and the main process, cleanly.
        main.signal("TERM")
        self.assertEqual(await main.ended.addTimeout(60, reactor), 0)

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
