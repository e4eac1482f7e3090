"""Properties of the whole server, in process: the real service tree
(``tests.support.start_server``) on loopback, driven by the blocking
client of ``tests.fuzzing`` from a thread while the reactor serves.

* Sessions of valid, mutated and arbitrary requests after a real
  handshake, with or without a login: one answer per request, in order,
  with its ref; validation errors exactly as predicted; no
  ``internal_error``; the connection ends only for a reason the session
  gave (a logout, a record that is no event list).
* The handshake, with one bad line at any step: the server goes on only
  for a valid record, else at most one ALERT of the spec's table, then
  the end of the connection.

In both, no failure and no error may reach the server's log, and the
server still serves a fresh client and the one that stayed connected.
Bounded in ``make test``, long in ``make fuzz`` (see ``tests.fuzzing``).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import threads
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from chatserver.wire import channel
from tests import fuzzing
from tests.fuzzing import BlockingClient, check
from tests.support import PASSWORD, RunningServer, add_admin, logged_in, start_server

SETTINGS = {
    # Out of the way of a fuzzer that fails logins on purpose; the
    # rate limits are already (see tests.support.make_settings).
    "login_failures_per_account": 1_000_000,
    "login_failures_per_address": 1_000_000,
    "synchronous": "normal",
}


class LogWatch:
    """The log events that must never happen: failures (tracebacks) and
    anything at level error or critical."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.bad: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if event.get("log_failure") is not None or level in (LogLevel.error, LogLevel.critical):
            self.bad.append(event)

    def describe(self, start: int = 0) -> str:
        out = []
        for event in self.bad[start:]:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            out.append(text)
        return "\n".join(out)


def _settle(server: RunningServer, connections: int, seconds: float = 5.0) -> None:
    """From the fuzzing thread: wait until the server has seen our
    connection go (its bookkeeping and any log line about it are done)."""
    deadline = time.monotonic() + seconds
    while len(server.factory.connections) > connections:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(server.factory.connections)} connections still open")
        time.sleep(0.002)


class ServerProperties(unittest.TestCase):
    timeout = fuzzing.TEST_TIMEOUT

    async def _server(self) -> tuple[RunningServer, Any, LogWatch]:
        server = await start_server(self, **SETTINGS)
        watch = LogWatch(self)
        # Accounts the sessions use: ``fuzzer`` and the server admin
        # ``admin`` log in; ``friend`` stays connected throughout and must
        # still be served at the end.
        await threads.deferToThread(fuzzing.seed, server.port)
        add_admin(server, "admin")
        friend = await logged_in(self, server, "friend", register=False)
        return server, friend, watch

    async def _still_serving(self, server: RunningServer, friend: Any, watch: LogWatch) -> None:
        await friend.ping()

        def fresh() -> None:
            with BlockingClient(server.port) as client:
                client.login("fuzzer", PASSWORD)
                self.assertEqual(client.request({"type": "ping"})["type"], "pong")

        await threads.deferToThread(fresh)
        self.assertEqual(watch.bad, [], watch.describe())

    async def test_sessions_get_one_answer_per_request(self) -> None:
        server, friend, watch = await self._server()
        baseline = len(server.factory.connections)

        def prop(plan: dict[str, Any]) -> None:
            seen = len(watch.bad)
            fuzzing.run_session(server.port, plan)
            _settle(server, baseline)
            assert len(watch.bad) == seen, watch.describe(seen)

        await threads.deferToThread(check, prop, fuzzing.sessions(), scale=0.5, name="server: sessions")
        await self._still_serving(server, friend, watch)

    async def test_handshake_with_one_bad_line(self) -> None:
        server, friend, watch = await self._server()
        baseline = len(server.factory.connections)

        def prop(plan: dict[str, Any]) -> None:
            seen = len(watch.bad)
            fuzzing.run_handshake_attack(server.port, plan)
            _settle(server, baseline)
            assert len(watch.bad) == seen, watch.describe(seen)

        await threads.deferToThread(
            check, prop, fuzzing.handshake_attacks(), scale=0.5, name="server: handshake"
        )
        await self._still_serving(server, friend, watch)


class FoundByFuzzing(unittest.TestCase):
    """Examples the properties found, kept as tests of their own."""

    async def test_unknown_member_with_an_empty_name_is_named_in_the_error(self) -> None:
        """``{"type":"ping","":1}`` gets ``unknown_field``, and the spec's
        error carries ``field``, the member at fault: here ``""`` (found
        when the server left it out, testing the name for truth)."""
        server = await start_server(self)

        def ask() -> dict[str, Any]:
            with BlockingClient(server.port) as client:
                client.handshake()
                return client.request({"type": "ping", "": 1, "ref": 1})

        answer = await threads.deferToThread(ask)
        self.assertEqual((answer["code"], answer.get("field")), ("unknown_field", ""))

    async def test_an_alert_from_the_client_is_not_echoed(self) -> None:
        """A client that refuses the handshake with ALERT 200 (a code the
        spec does not define) once got ALERT 200 back, its own text quoted
        in the server's.  The spec: the receiver of an ALERT sends nothing
        in reply."""
        server = await start_server(self)

        def refuse() -> list[bytes]:
            with BlockingClient(server.port) as client:
                client.send_record(bytes((channel.ALERT, 200)) + b"no thanks")
                return client.read_to_end()

        self.assertEqual(await threads.deferToThread(refuse), [])

    async def test_logout_behind_a_message_answers_both_before_closing(self) -> None:
        """``[say, logout]`` in one record: the say waits for its commit,
        the logout's token revocation is done first; the CLOSE once came
        then, so neither the ``ack`` nor ``logged_out`` was sent.  The
        spec: answers leave in request order, and logout "answers
        logged_out and then closes"."""
        server = await start_server(self)
        await logged_in(self, server, "fuzzer")

        def say_and_leave() -> tuple[list[str], Any]:
            with BlockingClient(server.port) as client:
                client.login("fuzzer", PASSWORD)
                client.send_events(
                    [{"type": "say", "room": "lobby", "body": "bye", "ref": 1}, {"type": "logout", "ref": 2}]
                )
                answers = []
                while (events := client.read_events()) is not None:
                    answers += [e["type"] for e in events if "ref" in e]
                return answers, client.closed_by

        answers, closed_by = await threads.deferToThread(say_and_leave)
        self.assertEqual(closed_by.code, "logout")
        self.assertEqual(answers, ["ack", "logged_out"])
