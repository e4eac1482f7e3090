"""Settings: defaults, the shipped INI file, overrides and clear errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from twisted.python import usage
from twisted.trial import unittest

from chatserver import tap
from chatserver.config import ConfigError, Settings, load_settings
from tests.support import ROOT


class SettingsTests(unittest.TestCase):
    def write(self, text: str) -> Path:
        path = Path(self.mktemp())
        path.write_text(text, encoding="utf-8")
        return path

    def test_shipped_file_documents_the_defaults(self) -> None:
        """etc/chatserver.ini sets every setting to its built-in default;
        its directories, relative to the file, are the default ones of a
        server started at the top of the checkout (``make run``)."""
        settings = load_settings(ROOT / "etc" / "chatserver.ini")
        self.assertEqual(
            settings,
            dataclasses.replace(
                Settings(), data_dir=str(ROOT / "var" / "lib"), log_dir=str(ROOT / "var" / "log")
            ),
        )
        self.assertEqual(
            (ROOT / Settings().data_dir, ROOT / Settings().log_dir), (settings.data_path, settings.log_path)
        )

    def test_relative_directories_in_the_file_are_relative_to_the_file(self) -> None:
        """Not to the working directory, where chatserver-admin may run."""
        folder = Path(self.mktemp()).resolve()
        folder.mkdir()
        path = folder / "chatserver.ini"
        path.write_text("[server]\ndata_dir = data\nlog_dir = ../logs\n")
        settings = load_settings(path)
        self.assertEqual(settings.data_dir, str(folder / "data"))
        self.assertEqual(settings.log_dir, str(folder.parent / "logs"))
        # Given with a relative name, from elsewhere: the same.
        relative = Path(os.path.relpath(path))
        self.assertEqual(load_settings(relative).data_dir, str(folder / "data"))
        # Absolute ones stay; the command line stays relative to the
        # working directory, as for any command.
        path.write_text("[server]\ndata_dir = /srv/chat\n")
        self.assertEqual(load_settings(path).data_dir, "/srv/chat")
        self.assertEqual(load_settings(path, data_dir="here").data_dir, "here")

    def test_the_database_setting(self) -> None:
        self.assertEqual(Settings().database_path, Path("var/lib") / "chatserver.sqlite3")
        self.assertFalse(Settings().uses_postgres)
        path = self.write("[store]\ndatabase = sqlite:db/chat.sqlite3\npassword_file = secret\n")
        settings = load_settings(path)
        self.assertEqual(settings.database_path, path.parent.resolve() / "db" / "chat.sqlite3")
        url = "postgresql://db.example:5433/chat?user=chat"
        settings = load_settings(database=url)
        self.assertTrue(settings.uses_postgres)
        self.assertEqual(settings.database, url)
        for bad in ("mysql://h/chat", "chat.sqlite3"):
            self.assertIn(
                "sqlite:PATH or a postgresql://",
                str(self.assertRaises(ConfigError, load_settings, database=bad)),
            )

    def test_the_hub_settings(self) -> None:
        self.assertEqual(Settings().hub_url, "")  # the in-process hub
        for url in ("redis://127.0.0.1:6379/2", "redis://localhost", "unix:///run/redis/redis.sock?db=1"):
            self.assertEqual(load_settings(hub_url=url).hub_url, url)
        for bad, why in (
            ("http://h/", "must be redis://HOST:PORT/DB or unix:///PATH"),
            ("redis://h/two", "the database after the host must be a number"),
            ("unix://", "needs the socket's path"),
        ):
            error = str(self.assertRaises(ConfigError, load_settings, hub_url=bad))
            self.assertIn(why, error)
            self.assertEqual(len(error.splitlines()), 1)
        error = str(self.assertRaises(ConfigError, load_settings, hub_url="redis://:hunter2@h:6379/0"))
        self.assertIn("must not hold a password", error)
        self.assertNotIn("hunter2", error)
        for field in ("hub_name", "hub_prefix"):
            self.assertIn(
                "letters, digits", str(self.assertRaises(ConfigError, load_settings, **{field: "a b"}))
            )

    def test_workers_need_postgresql_and_redis(self) -> None:
        self.assertEqual(Settings().workers, 1)
        for overrides in ({}, {"database": "postgresql://h/chat"}, {"hub_url": "redis://h"}):
            error = str(self.assertRaises(ConfigError, load_settings, workers="2", **overrides))
            self.assertIn("[server] workers = 2 needs [store] database = postgresql://", error)
        both = {"database": "postgresql://h/chat", "hub_url": "redis://h"}
        self.assertEqual(load_settings(workers="3", **both).workers, 3)
        # The main process serves /metrics for all of them.
        path = self.write("[metrics]\nenabled = true\n")
        self.assertTrue(load_settings(path, workers="2", **both).metrics_enabled)
        self.assertIn("must be", str(self.assertRaises(ConfigError, load_settings, workers="0")))

    def test_a_database_password_is_never_taken_from_the_settings(self) -> None:
        for url in ("postgresql://chat:hunter2@h/chat", "postgresql://h/chat?password=hunter2"):
            error = str(self.assertRaises(ConfigError, load_settings, database=url))
            self.assertIn("password_file", error)
            self.assertNotIn("hunter2", error)
            path = self.write(f"[store]\ndatabase = {url}\n")
            self.assertNotIn("hunter2", str(self.assertRaises(ConfigError, load_settings, path)))

    def test_the_database_password_comes_from_its_file_or_the_environment(self) -> None:
        secret = Path(self.mktemp())
        secret.write_text("s3cret\n", encoding="utf-8")
        url = "postgresql://h/chat"
        self.assertEqual(
            load_settings(database=url, database_password_file=str(secret)).database_password(), "s3cret"
        )
        self.patch(os, "environ", {**os.environ, "CHATSERVER_DATABASE_PASSWORD": "from-env"})
        self.assertEqual(load_settings(database=url).database_password(), "from-env")
        missing = load_settings(database=url, database_password_file=str(secret) + ".gone")
        self.assertIn("cannot read it", str(self.assertRaises(ConfigError, missing.database_password)))

    def test_shipped_file_names_every_setting(self) -> None:
        from chatserver.config import SCHEMA

        text = (ROOT / "etc" / "chatserver.ini").read_text()
        for section, key, _, _ in SCHEMA:
            self.assertRegex(text, rf"\n{key} =( |\n)", f"[{section}] {key} is not in etc/chatserver.ini")

    def test_file_then_overrides(self) -> None:
        path = self.write("[server]\nendpoint = tcp:9000\nidle_timeout = 12.5\n[log]\nlevel = DEBUG\n")
        settings = load_settings(path, endpoint="tcp:9001", data_dir=None)
        self.assertEqual(settings.endpoint, "tcp:9001")
        self.assertEqual(settings.idle_timeout, 12.5)
        self.assertEqual(settings.log_level, "debug")
        self.assertEqual(settings.data_dir, "var/lib")

    def assertConfigError(self, text: str, *fragments: str) -> None:
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_settings, path)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_unknown_key(self) -> None:
        self.assertConfigError("[server]\nendpiont = tcp:1\n", "unknown setting [server] endpiont")

    def test_bad_values_name_the_setting(self) -> None:
        self.assertConfigError("[server]\nmax_line_length = 10\n", "[server] max_line_length", "between")
        self.assertConfigError("[server]\nhandshake_timeout = -1\n", "handshake_timeout", "greater than zero")
        for odd in ("nan", "inf", "-inf"):  # float() takes them; no duration is any of them
            self.assertConfigError(f"[limits]\nblock_seconds = {odd}\n", "block_seconds", "finite")
        self.assertConfigError("[server]\ncrypto_threads = many\n", "crypto_threads", "'many'")
        self.assertConfigError("[server]\ncrypto_threads = -1\n", "crypto_threads", "between 0 and 64")
        self.assertConfigError(
            "[accounts]\nallow_registration = maybe\n", "[accounts] allow_registration", "yes, no or invite"
        )
        self.assertConfigError("[log]\nlevel = loud\n", "must be one of")
        self.assertConfigError("[chat]\ndefault_room = Not A Room\n", "default_room")
        self.assertConfigError("[server]\nendpoint = nonsense:1\n", "endpoint")

    def test_allow_registration_is_yes_no_or_invite(self) -> None:
        for text, mode in [
            ("invite", "invite"),
            (" Invite ", "invite"),
            ("yes", "yes"),
            ("on", "yes"),
            ("true", "yes"),
            ("no", "no"),
            ("off", "no"),
            ("0", "no"),
        ]:
            path = self.write(f"[accounts]\nallow_registration = {text}\n")
            self.assertEqual(load_settings(path).allow_registration, mode, text)
        self.assertEqual(load_settings(None, allow_registration="invite").allow_registration, "invite")
        self.assertEqual(Settings().allow_registration, "yes")
        # Code that passes a boolean, as before the invite mode, still means yes or no ...
        self.assertEqual(Settings(allow_registration=False).allow_registration, "no")  # type: ignore[arg-type]
        self.assertEqual(Settings(allow_registration=True).allow_registration, "yes")  # type: ignore[arg-type]
        # ... and nothing else slips through unparsed.
        self.assertRaises(ConfigError, Settings, allow_registration="invites")

    def test_missing_file(self) -> None:
        error = self.assertRaises(ConfigError, load_settings, Path(self.mktemp()))
        self.assertIn("cannot read", str(error))

    def test_settings_are_frozen(self) -> None:
        settings = Settings()
        with self.assertRaises(dataclasses.FrozenInstanceError):
            settings.endpoint = "tcp:1"  # type: ignore[misc]

    def test_twistd_options(self) -> None:
        options = tap.Options()
        options.parseOptions(["--endpoint", "tcp:7071", "--data-dir", "/tmp/d", "--log-dir", "/tmp/l"])
        settings = options["settings"]
        self.assertEqual(
            (settings.endpoint, settings.data_dir, settings.log_dir), ("tcp:7071", "/tmp/d", "/tmp/l")
        )

    def test_twistd_options_reject_bad_config(self) -> None:
        """One line naming the setting (SystemExit, which twistd lets
        through to a plain message and status 1), not UsageError, after
        which twistd prints its whole usage text."""
        path = self.write("[server]\nidle_timeout = soon\n")
        options = tap.Options()
        error = self.assertRaises(SystemExit, options.parseOptions, ["--config", str(path)])
        self.assertIn("idle_timeout", str(error))
        self.assertTrue(str(error).startswith("chatserver: "), str(error))
        self.assertNotIn("\n", str(error))

    def test_twistd_options_still_reject_unknown_options(self) -> None:
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--endpiont", "tcp:1"])

    def test_endpoint_mistakes_are_named(self) -> None:
        self.assertConfigError(
            "[server]\nendpoint = tcp:7070:interfce=127.0.0.1\n", "unknown parameter 'interfce'"
        )
        self.assertConfigError("[server]\nendpoint = tcp:70000\n", "port 70000 is not between 0 and 65535")
        self.assertConfigError("[metrics]\nendpoint = tcp:1:backlg=5\n", "[metrics] endpoint", "'backlg'")
