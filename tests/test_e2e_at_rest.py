"""What the server keeps of an end-to-end encrypted conversation: a
marker sent in a direct message and in an encrypted room, read by every
recipient, appears nowhere in the server's database (its files, or a
pg_dump), its logs, or a packet capture of its port."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

from twisted.trial import unittest

from tests import backends
from tests.e2e_support import e2e_client
from tests.processes import spawn, start_twistd, stop_twistd
from tests.support import backend


class _Server:
    """The running twistd, as the e2e clients of tests.e2e_support need it."""

    def __init__(self, port: int) -> None:
        self.port = port


def forms(text: str) -> list[bytes]:
    """The marker as bytes, in UTF-16 too, and as base64 at each alignment."""
    raw = text.encode()
    found = [raw, text.encode("utf-16-le")]
    for shift in range(3):
        found.append(base64.b64encode(b"x" * shift + raw)[4:-4])
    return found


class AtRestTests(unittest.TestCase):
    async def test_a_marker_is_nowhere_on_the_server_while_every_recipient_reads_it(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        extra: list[str] = []
        database = None
        if backend() == "postgres":
            database = backends.postgres_url()
            extra = ["--database", database]
        server, port, _ = await start_twistd(self, base, *extra)
        capture_file = base / "session.pcap"
        tcpdump = shutil.which("tcpdump")
        capture = None
        if tcpdump is not None and os.geteuid() == 0:
            capture = spawn(
                self,
                "tcpdump",
                [tcpdump, "-i", "lo", "-U", "--immediate-mode", "-n", "-s", "0", "-w", str(capture_file)]
                + [f"tcp port {port}"],
            )
            await capture.wait_for("listening on", fd=2)
        running = _Server(port)
        devices = base / "devices"
        alice, _, _ = await e2e_client(self, running, "alice", devices / "alice")  # type: ignore[arg-type]
        bob, _, bob_events = await e2e_client(self, running, "bob", devices / "bob")  # type: ignore[arg-type]
        carol, _, carol_events = await e2e_client(self, running, "carol", devices / "carol")  # type: ignore[arg-type]
        in_dm, in_room = "MARKER-dm-5e1f0c", "MARKER-room-a93b27"
        await alice.dm("bob", in_dm)
        await alice.request({"type": "create", "room": "vault", "encrypted": True})
        await bob.request({"type": "join", "room": "vault"})
        await carol.request({"type": "join", "room": "vault"})
        await alice.say("vault", in_room)
        got_dm = await bob_events.next(lambda e: e.get("type") == "dm")
        self.assertEqual((got_dm["body"], got_dm["e2e"]["ok"]), (in_dm, True))
        for events in (bob_events, carol_events):
            got = await events.next(lambda e: e.get("type") == "msg" and e.get("room") == "vault")
            self.assertEqual((got["body"], got["e2e"]["ok"]), (in_room, True))
        for client in (alice, bob, carol):
            await client.stop()
        if capture is not None:
            capture.signal("TERM")
            await capture.ended
        self.assertEqual(await stop_twistd(server), 0)

        places: dict[str, bytes] = {}
        for folder in ("data", "log"):
            for path in sorted((base / folder).rglob("*")):
                if path.is_file():
                    places[str(path.relative_to(base))] = path.read_bytes()
        self.assertTrue(any(name.startswith("log/") for name in places), sorted(places))
        if database is not None:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(database).query)
            pg_dump = backends._program("pg_dump", backends._PG_DIRS)
            dump = subprocess.run(
                [
                    pg_dump,
                    "-h",
                    query["host"][0],
                    "-U",
                    "chatserver",
                    urllib.parse.urlparse(database).path[1:],
                ],
                check=True,
                capture_output=True,
            ).stdout
            self.assertIn(b"COPY public.events", dump)
            places["pg_dump"] = dump
        else:
            self.assertTrue(any(name.endswith("chatserver.sqlite3") for name in places), sorted(places))
        if capture is not None:
            places["capture"] = capture_file.read_bytes()
            self.assertGreater(len(places["capture"]), 5000)
        stored = b"".join(places.values())
        # The ciphertexts are there (so this looks where they are) ...
        self.assertIn(b"megolm.v1", stored)
        self.assertIn(b"olm.v1", stored)
        # ... and the plaintexts are not, in any form.
        for marker in (in_dm, in_room):
            for form in forms(marker):
                for name, data in places.items():
                    self.assertNotIn(form, data, f"{marker!r} found in {name}")
