"""The terminal client.

Interactive in a terminal and scriptable in a pipe: each line of standard
input is sent as a message (or run as a ``/command``), each event received
is printed as one line of standard output (``--json``: one JSON object).
At end of input it waits until the server has acknowledged everything
sent, says goodbye and exits 0.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from twisted.internet import defer, stdio, task
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver

from chatclient.known_hosts import HostKeyMismatch, KnownHosts, server_id
from chatclient.session import ChatSession, ConnectionClosed, ServerError, connect

HELP = """commands:
  /who          list the users in the room
  /help         show this help
  /quit         say goodbye and exit
anything else is sent as a message to the room"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chatclient.cli", description="chatserver terminal client")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7070)
    p.add_argument("--user", required=True)
    p.add_argument("--password-file", type=Path, help="read the password from this file (first line)")
    p.add_argument("--register", action="store_true", help="create the account, then log in")
    p.add_argument(
        "--known-hosts", type=Path, help="known hosts file (default: ~/.config/chatserver/known_hosts)"
    )
    p.add_argument("--fingerprint", help="require this server key fingerprint (SHA256:...)")
    p.add_argument("--tls", action="store_true", help="connect with TLS under the channel")
    p.add_argument(
        "--tls-ca",
        metavar="DIR",
        help="with --tls: trust the CA certificates (PEM) in DIR instead of the system's",
    )
    p.add_argument("--room", default="lobby", help="room to talk in (default: lobby)")
    p.add_argument("--json", action="store_true", help="print one JSON object per event")
    return p.parse_args(argv)


def read_password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        lines = args.password_file.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""
    # getpass reads the terminal, not standard input, so piped messages
    # stay messages.
    return getpass.getpass(f"password for {args.user}: ")


def format_event(event: dict[str, Any]) -> str:
    kind = event.get("type")
    room = event.get("room", "")
    if kind == "msg":
        return f"[{room}] {event['from']}: {event['body']}"
    if kind == "joined":
        return f"[{room}] * {event['user']} joined"
    if kind == "left":
        return f"[{room}] * {event['user']} left"
    if kind == "who":
        return f"[{room}] users: {', '.join(event['users'])}"
    if kind == "welcome":
        return f"* logged in as {event['user']} ({event['role']}) on {event.get('server', '?')}"
    if kind == "error":
        return f"! {event.get('code')}: {event.get('message')}"
    return json.dumps(event, ensure_ascii=False)


class Printer:
    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            line = json.dumps(event, ensure_ascii=False, sort_keys=True)
        else:
            line = format_event(event)
        self.out.write(line + "\n")
        self.out.flush()


class InputLines(LineReceiver):
    """Standard input, one line at a time, into the session."""

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self, session: ChatSession, room: str, printer: Printer) -> None:
        self.session = session
        self.room = room
        self.printer = printer
        self.done: Deferred[None] = Deferred()
        self._outstanding: list[Deferred[Any]] = []

    def _track(self, d: Deferred[Any]) -> None:
        self._outstanding.append(d)

        def report(failure: Any) -> None:
            if failure.check(ServerError):
                self.printer(failure.value.event)
            # A lost connection is reported once, by the session's closed.

        d.addErrback(report)

    def lineReceived(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line.strip():
            return
        if line.startswith("/"):
            command = line.split()[0]
            if command == "/quit":
                self.finish()
            elif command == "/help":
                sys.stderr.write(HELP + "\n")
            elif command == "/who":
                self._track(
                    self.session.request({"type": "who", "room": self.room}).addCallback(self.printer)
                )
            else:
                sys.stderr.write(f"unknown command {command}; /help lists them\n")
            return
        self._track(self.session.say(self.room, line))

    def connectionLost(self, reason: Any = None) -> None:
        self.finish()

    def finish(self) -> None:
        """Wait for every outstanding answer, then fire ``done``."""
        if self.done.called:
            return
        outstanding, self._outstanding = self._outstanding, []
        waiting = defer.DeferredList(outstanding, consumeErrors=True)
        waiting.addCallback(lambda _: self.done.called or self.done.callback(None))


def endpoint_description(host: str, port: int, tls: bool = False, ca_dir: str | None = None) -> str:
    """A Twisted client endpoint string for the options given."""
    from twisted.internet.endpoints import quoteStringArgument as quote

    if not tls:
        return f"tcp:host={quote(host)}:port={port}"
    description = f"tls:host={quote(host)}:port={port}"
    if ca_dir is not None:
        description += f":trustRoots={quote(ca_dir)}"
    return description


async def run(reactor: Any, args: argparse.Namespace, password: str) -> int:
    known = KnownHosts(args.known_hosts)
    server = server_id(args.host, args.port)

    def verify(fingerprint: str) -> bool:
        if known.check(server, fingerprint, args.fingerprint):
            sys.stderr.write(f"* new server {server}: pinned key {fingerprint} in {known.path}\n")
        return True

    description = endpoint_description(args.host, args.port, args.tls, args.tls_ca)
    try:
        session = await connect(reactor, description, verify)
    except HostKeyMismatch as e:
        sys.stderr.write(f"error: {e}\n")
        return 3
    except ConnectionClosed as e:
        sys.stderr.write(f"error: handshake failed: {e.message}\n")
        return 1
    except Exception as e:  # connection refused, DNS, TLS ...
        sys.stderr.write(f"error: cannot connect to {server}: {e}\n")
        return 1

    printer = Printer(sys.stdout, args.json)
    try:
        if args.register:
            welcome = await session.register(args.user, password)
        else:
            welcome = await session.login(args.user, password)
    except ServerError as e:
        sys.stderr.write(f"error: {e.code}: {e.message}\n")
        await session.close()
        return 2
    except ConnectionClosed as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    printer(welcome)
    session.add_listener(printer)

    lines = InputLines(session, args.room, printer)
    stdio.StandardIO(lines, reactor=reactor)
    ended = await defer.DeferredList([lines.done, session.closed], fireOnOneCallback=True, consumeErrors=True)
    _, index = ended
    if index == 1:
        info = session.closed.result
        sys.stderr.write(f"error: connection {info}\n")
        return 0 if info.clean else 1
    await session.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        password = read_password(args)
    except (OSError, EOFError) as e:
        sys.exit(f"error: cannot read the password: {e}")

    def start(reactor: Any) -> Deferred[int]:
        d = Deferred.fromCoroutine(run(reactor, args, password))

        def exit_code(code: int) -> None:
            if code:
                raise SystemExit(code)

        return d.addCallback(exit_code)

    task.react(start)


if __name__ == "__main__":
    main()
