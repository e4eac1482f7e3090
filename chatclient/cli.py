"""The terminal client.

Interactive in a terminal and scriptable in a pipe: each line of standard
input is sent as a message to the current room (or run as a ``/command``,
see ``chatclient.commands``), each event received is printed as one line
of standard output (``--json``: one JSON object).  Notices about the
connection go to standard error.  The connection is kept with
``ReconnectingClient``: after a drop it reconnects, catches up and goes
on; input typed meanwhile is sent once it is back.  At end of input it
waits until the server has answered everything sent, says goodbye and
exits 0.

Exit codes: 0 done, 1 cannot connect, 2 login refused, 3 server key not
trusted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, stdio, task
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver

from chatclient import commands
from chatclient.commands import Command
from chatclient.e2e.client import EndToEnd, SendBlocked
from chatclient.e2e.store import StoreError, default_root, store_dir
from chatclient.endpoints import (
    BadCA,
    BadHostList,
    FailoverEndpoint,
    endpoint_description,
    parse_hosts,
    tls_endpoint,
)
from chatclient.known_hosts import HostKeyMismatch, KnownHosts, server_id
from chatclient.output import Printer, notice, shown
from chatclient.reconnect import ReconnectingClient
from chatclient.session import ConnectionClosed, ServerError
from chatserver.wire.safetext import log_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chatclient-cli", description="chatserver terminal client")
    p.add_argument("--version", action="version", version=f"chatclient-cli {version('chatserver')}")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the server, or several nodes of one deployment to fail over between: "
        "HOST[:PORT][,HOST[:PORT]...] (the first one names the deployment in the known hosts file)",
    )
    p.add_argument("--port", type=int, default=7070, help="the port of a --host entry that gives none")
    p.add_argument("--user", required=True)
    p.add_argument("--password-file", type=Path, help="read the password from this file (first line)")
    p.add_argument("--register", action="store_true", help="create the account, then log in")
    p.add_argument(
        "--invite",
        metavar="CODE",
        help="with --register: the invite code a server that registers by invitation asks for",
    )
    p.add_argument(
        "--known-hosts", type=Path, help="known hosts file (default: ~/.config/chatserver/known_hosts)"
    )
    p.add_argument("--fingerprint", help="require this server key fingerprint (SHA256:...)")
    p.add_argument("--tls", action="store_true", help="connect with TLS under the channel")
    p.add_argument(
        "--tls-ca",
        metavar="DIR|FILE",
        help="with --tls: trust the CA certificates (PEM) in DIR, or in FILE, instead of the system's",
    )
    p.add_argument("--room", default="lobby", help="room to talk in first (default: lobby)")
    p.add_argument("--json", action="store_true", help="print one JSON object per event")
    p.add_argument(
        "--history",
        type=int,
        default=commands.DEFAULT_HISTORY,
        metavar="N",
        help=f"messages of history to show on joining a room (default: {commands.DEFAULT_HISTORY})",
    )
    p.add_argument(
        "--no-e2e",
        action="store_true",
        help="no end-to-end encryption: direct messages the server can read, and no encrypted rooms",
    )
    p.add_argument(
        "--device-dir",
        type=Path,
        metavar="DIR",
        help="where this client keeps its devices' keys (default: ~/.local/share/chatclient/devices)",
    )
    p.add_argument(
        "--store-key",
        choices=("auto", "keyring", "passphrase"),
        default="auto",
        help="for a new device: keep its store's key in the desktop keyring, or derive it from a "
        "passphrase (auto: the keyring if there is one)",
    )
    p.add_argument(
        "--store-passphrase-file",
        type=Path,
        metavar="FILE",
        help="the device store's passphrase (first line), where it has one; else it is asked for",
    )
    p.add_argument(
        "--connect-attempts",
        type=int,
        default=1,
        metavar="N",
        help="give up after N failed attempts to connect at start (default: 1); "
        "once connected, it reconnects for as long as it runs",
    )
    args = p.parse_args(argv)
    if args.invite is not None and not args.register:
        p.error("--invite is for --register")
    return args


def read_password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        lines = args.password_file.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""
    # getpass reads the terminal, not standard input, so piped messages
    # stay messages.
    password = getpass.getpass(f"{'new ' if args.register else ''}password for {args.user}: ")
    if args.register and getpass.getpass("the same password again: ") != password:
        # Asked twice: a typo made at registration would lock the account
        # out, with nothing but an admin's passwd to get it back.
        raise PasswordMismatch("the two passwords differ; nothing was sent")
    return password


class PasswordMismatch(Exception):
    """The password typed twice at registration was not the same."""


def open_device(args: argparse.Namespace, server: str, reactor: Any) -> EndToEnd:
    """This installation's device for ``args.user`` on ``server``: its
    store opened (or made), its key from the keyring or a passphrase."""
    directory = store_dir(args.device_dir or default_root(), server, args.user)
    new = not (directory / "store.json").exists()

    def passphrase() -> str:
        if args.store_passphrase_file is not None:
            lines = args.store_passphrase_file.read_text(encoding="utf-8").splitlines()
            return lines[0] if lines else ""
        if not sys.stdin.isatty():
            raise StoreError(
                "this device's keys need a passphrase (no keyring here): "
                "give --store-passphrase-file, or --no-e2e"
            )
        first = getpass.getpass(f"passphrase for {args.user}'s device keys: ")
        if new and getpass.getpass("the same passphrase again: ") != first:
            raise StoreError("the two passphrases differ")
        return first

    name = f"chatclient-cli on {socket.gethostname()}"
    device = EndToEnd.open(directory, args.user, reactor, passphrase, name, args.store_key)
    if new:
        notice(
            f"new device {device.device_id} for {args.user}; "
            f"its keys are kept under the {device.store_key_method}"
        )
    return device


class InputLines(LineReceiver):
    """Standard input, one line at a time, into the client."""

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self, client: ReconnectingClient, room: str, printer: Printer, history: int) -> None:
        self.client = client
        self.room = room
        self.printer = printer
        self.history_on_join = history  # messages shown on joining a room
        self.done: Deferred[None] = Deferred()
        self._outstanding: list[Deferred[Any]] = []
        self._quitting = False
        #: The verification whose emoji were shown last (``/match`` answers it).
        self._verifying: str | None = None
        #: Who takes the next line instead of sending it (a passphrase).
        self._secret: Any = None

    @property
    def wants_secret(self) -> bool:
        """The next line is a passphrase: not to be echoed or kept."""
        return self._secret is not None

    def _send(self, command: Command) -> Deferred[Any]:
        assert command.request is not None
        d = self.client.request(command.request)
        self._outstanding.append(d)
        d.addBoth(self._answered, d)
        return d

    def _answered(self, result: Any, d: Deferred[Any]) -> Any:
        if d in self._outstanding:
            self._outstanding.remove(d)
        return result

    def _report(self, failure: Any, command: Command) -> None:
        if failure.check(ServerError):
            self.printer(failure.value.event)
        elif failure.check(ConnectionClosed):
            what = (
                "message"
                if command.action == "say" or command.request is None
                else f"/{command.request['type']}"
            )
            # (Messages are sent again by themselves after a reconnection:
            # this is another request, or a message given up on.)
            self.printer.notice(f"{what} not confirmed: the connection dropped first; not sent again")
        else:
            self.printer.notice(log_text(failure.getErrorMessage()))

    def lineReceived(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if self._secret is not None:
            take, self._secret = self._secret, None
            take(line)
            return
        if not line.strip() or self._quitting:
            return
        commands.run(line, self.room, self)

    # --- commands.Frontend: how the terminal shows and sends each command ---

    def refuse(self, text: str) -> None:
        self.printer.notice(text)

    def is_member(self, room: str) -> bool:
        return room in self.client.rooms

    def room_number(self, number: int) -> str | None:
        rooms = self.numbered_rooms()
        return rooms[number - 1] if 1 <= number <= len(rooms) else None

    def numbered_rooms(self) -> list[str]:
        """The rooms the user is in, in the order ``/switch N`` counts
        them (their names', as the desktop client lists them)."""
        return sorted(self.client.rooms)

    def not_member(self, room: str) -> None:
        self.printer.notice(f"you are not in {log_text(room)}; /join it first")

    def switch(self, room: str) -> None:
        self._switch(room)

    def quit(self) -> None:
        self._quitting = True
        self.finish()

    def help(self, text: str) -> None:
        self.printer.help(text)

    def say(self, command: Command) -> None:
        self._send(command).addErrback(self._report, command)

    def join(self, command: Command) -> None:
        self._join_or_part(command, lambda: self._joined(command.room))

    def part(self, command: Command) -> None:
        self._join_or_part(command, lambda: self._parted(command.room))

    def _join_or_part(self, command: Command, then: Any) -> None:
        # What follows may depend on the room we end up in, so the next
        # line waits for the answer.
        self.pauseProducing()
        d = self._send(command)
        d.addCallback(lambda _: then())
        d.addErrback(self._report, command)
        d.addBoth(lambda _: self.resumeProducing())

    def history(self, command: Command) -> None:
        self._send(command).addCallback(self._show_history).addErrback(self._report, command)

    def topic(self, command: Command) -> None:
        self._send(command).addCallback(self._show_topic, command.room).addErrback(self._report, command)

    def request(self, command: Command) -> None:
        d = self._send(command)
        d.addCallback(lambda answer: None if answer.get("type") == "ack" else self.printer(answer))
        d.addErrback(self._report, command)

    def e2e(self, command: Command) -> None:
        device = self.client.e2e
        if device is None:
            self.printer.notice("end-to-end encryption is off (--no-e2e)")
            return
        op, args = command.e2e, command.args
        d: Deferred[Any]
        if op == "devices":
            user = args[0].lower() if args else self.client.user
            d = device.devices_of([user]).addCallback(
                lambda found: self._show_devices(device, user, found[user])
            )
        elif op == "verify":
            d = device.verify(args[0].lower(), args[1] if len(args) > 1 else None)
        elif op in ("match", "nomatch"):
            if self._verifying is None:
                self.printer.notice("no verification is waiting for an answer")
                return
            device.confirm(self._verifying, op == "match")
            return
        elif op == "safety":
            d = device.safety_number(args[0].lower()).addCallback(
                lambda number: self.printer.notice(f"safety number with {log_text(args[0])}: {number}")
            )
        elif op == "trust":
            device.book.acknowledge(args[0].lower())
            self.printer.notice(f"sending to {log_text(args[0])} again")
            return
        else:
            path = Path(args[0]).expanduser()
            self.printer.notice("passphrase for the keys file (the next line, not sent):")
            self._secret = lambda phrase: self._keys_file(device, op, path, phrase)
            return
        self._outstanding.append(d)
        d.addBoth(self._answered, d)
        d.addErrback(self._e2e_failed)

    def _e2e_failed(self, failure: Any) -> None:
        if failure.check(SendBlocked):
            self.printer.notice(log_text(str(failure.value)))
        elif failure.check(ServerError):
            self.printer(failure.value.event)
        else:
            self.printer.notice(log_text(failure.getErrorMessage()))

    def _keys_file(self, device: EndToEnd, op: str | None, path: Path, phrase: str) -> None:
        try:
            if op == "export":
                device.export_keys_file(path, phrase)
                self.printer.notice(f"room keys written to {log_text(str(path))}")
            else:
                count = device.import_keys_file(path, phrase)
                self.printer.notice(f"{count} room keys read from {log_text(str(path))}")
        except SendBlocked as e:
            self.printer.notice(log_text(str(e)))
        except OSError as e:
            self.printer.notice(f"cannot use {log_text(str(path))}: {log_text(e.strerror or str(e))}")

    def _show_devices(self, device: EndToEnd, user: str, found: dict[str, dict[str, Any]]) -> None:
        rows: list[tuple[str, dict[str, Any]]] = []
        if user == self.client.user:
            me = {"curve25519": device.device.curve25519, "ed25519": device.device.ed25519}
            rows.append((device.device_id, dict(me, name="this device", verified=True)))
        rows += sorted(found.items())
        if self.printer.as_json:
            entries = [
                {
                    "device": d,
                    "name": e.get("name", ""),
                    "ed25519": e["ed25519"],
                    "verified": bool(e.get("verified")),
                    "this_device": d == device.device_id,
                }
                for d, e in rows
            ]
            self.printer({"type": "devices", "user": user, "devices": entries})
            return
        lines = [f"* {shown(user)}: {len(rows)} devices"]
        for d, e in rows:
            state = (
                "this device"
                if d == device.device_id
                else ("verified" if e.get("verified") else "unverified")
            )
            key = " ".join(e["ed25519"][i : i + 4] for i in range(0, 43, 4))
            lines.append(f"  {shown(d)}  {shown(e.get('name', ''))}  [{state}]  {shown(key)}")
        self.printer.write("\n".join(lines))

    def event(self, event: dict[str, Any]) -> None:
        """Leave the current room behind when we are put out of it."""
        if event.get("type") == "e2e_verify":
            if event.get("state") == "sas":
                self._verifying = event.get("txn")
            elif event.get("state") in ("done", "cancelled") and self._verifying == event.get("txn"):
                self._verifying = None
        if (
            event.get("type") == "deleted"
            or (event.get("type") in ("kicked", "banned") and event.get("user") == self.client.user)
        ) and event.get("room") == self.room:
            self._parted(self.room)

    def _switch(self, room: str) -> None:
        self.room = room
        self.printer.notice(f"talking in {log_text(room)}")

    def _joined(self, room: str | None) -> Deferred[Any] | None:
        assert room is not None
        self._switch(room)
        if self.history_on_join <= 0:
            return None
        command = Command(
            "history", {"type": "history", "stream": f"room:{room}", "limit": self.history_on_join}
        )
        return self._send(command).addCallback(self._show_history, before_join=True)

    def _parted(self, room: str | None) -> None:
        if room == self.room:
            others = sorted(self.client.rooms - {room})
            if others:
                self._switch(others[0])
            else:
                self.printer.notice("you are in no room now; /join one")

    def _show_history(self, page: dict[str, Any], before_join: bool = False) -> None:
        events = page["events"]
        if before_join:
            # The join itself is already shown, live.
            events = [e for e in events if not (e["type"] == "joined" and e.get("user") == self.client.user)]
        if not self.printer.as_json:
            self.printer.notice(
                f"history of {log_text(page['stream'])}: {len(events)} events"
                f"{' (more before)' if page['more'] else ''}"
            )
        for event in events:
            self.printer(event, history=True)

    def _show_topic(self, answer: dict[str, Any], room: str | None) -> None:
        for summary in answer["rooms"]:
            if summary["room"] == room:
                self.printer.notice(f"topic of {log_text(room)}: {log_text(summary['topic'] or '(none)')}")
                return
        self.printer.notice(f"you cannot see room {log_text(room)}")

    def connectionLost(self, reason: Any = None) -> None:
        # A last line without a newline is a line too.
        rest, self._buffer = self._buffer, b""
        if rest.strip():
            self.lineReceived(rest)
        self.finish()

    def finish(self) -> None:
        """Fire ``done`` once every line read has been handled and every
        request answered (lines held back behind a join included)."""
        if self.done.called:
            return
        if self._outstanding:
            waiting = defer.DeferredList(list(self._outstanding), consumeErrors=True)
            waiting.addCallback(lambda _: self.finish())
        elif self.paused and not self._quitting:
            self.resumeProducing()  # nothing to wait for: go on reading
            self.finish()
        else:
            self.done.callback(None)


def at_a_terminal(args: argparse.Namespace) -> bool:
    """A person at a terminal gets the line editor (chatclient.terminal);
    a pipe, a file or ``--json`` gets lines as they are."""
    return not args.json and sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


async def run(reactor: Any, args: argparse.Namespace, password: str, interactive: bool = False) -> int:
    known = KnownHosts(args.known_hosts)
    try:
        hosts = parse_hosts(args.host, args.port)
    except BadHostList as e:
        print(f"error: --host: {e}", file=sys.stderr)
        return 2
    # The nodes of one deployment share its key: one pin, under the first.
    server = server_id(*hosts[0])

    unpinned: set[str] = set()

    def verify(fingerprint: str) -> bool:
        if known.verify(server, fingerprint, args.fingerprint):
            unpinned.add(fingerprint)  # pinned once the server proves it holds it
        return True

    def proven(fingerprint: str) -> None:
        if fingerprint in unpinned and known.pin(server, fingerprint) and args.fingerprint is None:
            printer.notice(f"new server {server}: pinned key {fingerprint} in {known.path}")
        unpinned.discard(fingerprint)

    try:
        nodes = [
            (
                f"{host}:{port}",
                tls_endpoint(reactor, host, port, args.tls_ca)
                if args.tls
                else endpoints.clientFromString(reactor, endpoint_description(host, port)),
            )
            for host, port in hosts
        ]
    except BadCA as e:
        print(f"error: --tls-ca: {e}", file=sys.stderr)
        return 2
    client = ReconnectingClient(
        reactor,
        nodes[0][1]
        if len(nodes) == 1
        else FailoverEndpoint(nodes, lambda name: printer.notice(f"now on {name}")),
        verify,
        args.user,
        password,
        register=args.register,
        invite=args.invite,
        connect_attempts=max(1, args.connect_attempts),
        proven=proven,
    )
    if not args.no_e2e:
        try:
            device = open_device(args, server, reactor)
        except StoreError as e:
            sys.stderr.write(f"error: {log_text(str(e))}\n")
            return 2
        device.attach(client)
    printer: Printer
    if interactive:
        from chatclient import terminal  # prompt_toolkit: only for a person

        printer = terminal.TerminalPrinter(
            args.user, terminal.Names(client), terminal.colours_wanted(sys.stdout), lambda: lines.room
        )
    else:
        printer = Printer(sys.stdout, args.json)
    client.add_listener(printer)
    lines = InputLines(client, args.room, printer, args.history)
    client.add_listener(lines.event)

    def state(name: str, detail: Any) -> None:
        if name == "online":
            if client.connections == 1:
                printer(detail)
            else:
                printer.notice(f"reconnected to {server}")
        elif name == "reconnecting":
            printer.notice(f"connection to {server} lost ({log_text(detail.message)}); reconnecting")

    client.add_state_listener(state)
    client.start()
    try:
        await client.when_online()
    except HostKeyMismatch as e:
        sys.stderr.write(f"error: {e}\n")
        return 3
    except ServerError as e:
        sys.stderr.write(f"error: {log_text(e.code)}: {log_text(e.message)}\n")
        return 2
    except ConnectionClosed as e:
        sys.stderr.write(f"error: cannot connect to {server}: {log_text(e.message)}\n")
        return 3 if e.code == "untrusted" else 1
    except Exception as e:  # connection refused, DNS, TLS ...
        sys.stderr.write(f"error: cannot connect to {server}: {log_text(str(e))}\n")
        return 1
    # Reading starts on the next reactor turn, after the /join below.
    screen = None
    if interactive:
        assert isinstance(printer, terminal.TerminalPrinter)
        screen = terminal.Terminal(lines, client, printer)
        screen.start()
    else:
        stdio.StandardIO(lines, reactor=reactor)
    if args.room not in client.rooms:
        # The room asked for on the command line: join it (or just talk in
        # it, if the server put us there already).
        lines.lineReceived(f"/join {args.room}".encode())
    failed: Deferred[Any] = Deferred()

    def on_state(name: str, detail: Any) -> None:
        if name == "failed" and not failed.called:
            failed.callback(detail)

    client.add_state_listener(on_state)
    _, index = await defer.DeferredList([lines.done, failed], fireOnOneCallback=True, consumeErrors=True)
    if screen is not None:
        await Deferred.fromFuture(asyncio.ensure_future(screen.close()))
    if index == 1:
        error = failed.result
        sys.stderr.write(f"error: {log_text(str(error))}\n")
        return 2 if isinstance(error, ServerError) else 1
    await client.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    interactive = at_a_terminal(args)
    try:
        password = read_password(args)
    except PasswordMismatch as e:
        sys.exit(f"error: {e}")
    except (OSError, EOFError) as e:
        sys.exit(f"error: cannot read the password: {e}")

    if interactive:
        # prompt_toolkit runs on asyncio: so does Twisted, with this
        # reactor, installed before anything imports the default one.
        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)

    def start(reactor: Any) -> Deferred[int]:
        d = Deferred.fromCoroutine(run(reactor, args, password, interactive))

        def exit_code(code: int) -> int:
            if code:
                raise SystemExit(code)
            return code

        return d.addCallback(exit_code)

    task.react(start)


if __name__ == "__main__":
    main()
