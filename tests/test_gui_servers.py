"""The desktop client's remembered servers, with no window
(chatclient/gui/servers.py)."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.trial import unittest

from chatclient.gui.servers import RememberedServers, Server


class RememberedServersTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp()).resolve() / "gui_servers.json"
        self.remembered = RememberedServers(self.path)

    def test_tls_and_its_ca_are_remembered_with_the_server(self) -> None:
        server = Server("chat.example", 7443, "alice", tls=True, tls_ca="/etc/chat/ca.pem")
        self.remembered.remember(server)
        self.assertEqual(RememberedServers(self.path).load(), [server])
        self.assertEqual(
            json.loads(self.path.read_text())["servers"],
            [
                {
                    "host": "chat.example",
                    "port": 7443,
                    "user": "alice",
                    "tls": True,
                    "tls_ca": "/etc/chat/ca.pem",
                }
            ],
        )

    def test_a_file_from_before_tls_loads_as_tls_off(self) -> None:
        self.path.parent.mkdir(parents=True)
        self.path.write_text(json.dumps({"servers": [{"host": "old.example", "port": 7070, "user": "bob"}]}))
        (server,) = self.remembered.load()
        self.assertEqual(server, Server("old.example", 7070, "bob"))
        self.assertIs(server.tls, False)
        self.assertEqual(server.tls_ca, "")

    def test_odd_tls_values_load_as_off_and_a_broken_entry_is_skipped(self) -> None:
        self.path.parent.mkdir(parents=True)
        entries = [
            {"host": "a.example", "port": 1, "user": "u", "tls": "yes", "tls_ca": 5},
            {"host": "b.example", "user": "u", "tls": True},  # no port
            ["not", "an", "entry"],
            {"host": "c.example", "port": 3, "user": "u", "tls": True},
        ]
        self.path.write_text(json.dumps({"servers": entries}))
        self.assertEqual(
            self.remembered.load(),
            [Server("a.example", 1, "u"), Server("c.example", 3, "u", tls=True)],
        )

    def test_connecting_again_with_other_tls_settings_replaces_the_entry(self) -> None:
        self.remembered.remember(Server("chat.example", 7070, "alice"))
        self.remembered.remember(Server("other.example", 7070, "alice"))
        self.remembered.remember(Server("chat.example", 7070, "alice", tls=True))
        self.assertEqual(
            self.remembered.load(),
            [Server("chat.example", 7070, "alice", tls=True), Server("other.example", 7070, "alice")],
        )

    def test_the_label_says_tls(self) -> None:
        self.assertEqual(Server("h", 1, "u", tls=True).label, "u@h:1 (TLS)")
        self.assertEqual(Server("h", 1, "u").label, "u@h:1")
