"""What an installation gives people: ``python -m chatserver``, ``--version``
on every command, the LICENSE the metadata names, and the shipped
logrotate file (read by logrotate itself), the wheel, the container recipe
and the man pages."""

from __future__ import annotations

import configparser
import re
import shutil
import sqlite3
import subprocess
import zipfile
from pathlib import Path

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

import chatserver
from chatserver.config import LISTEN_BACKLOG, load_settings
from chatserver.storage import sqlite as store
from tests.processes import LOOPBACK, spawn, stop_twistd
from tests.support import PYTHON, python_env

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, *argv], env=python_env(), capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def logrotate_debug(config: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """What logrotate would do with ``config`` (it says so on stderr), doing
    nothing."""
    return subprocess.run(
        ["logrotate", "--debug", "--state", str(state), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


class CommandTests(unittest.TestCase):
    def test_every_command_has_version(self) -> None:
        for argv, name in (
            (("-m", "chatserver", "--version"), "chatserver"),
            (("-m", "chatserver.admin", "--version"), "chatserver-admin"),
            (("-m", "chatclient.cli", "--version"), "chatclient-cli"),
            (("-m", "chatclient", "--version"), "chatclient"),
        ):
            done = run(*argv)
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(done.stdout.split()[:2], [name, chatserver.__version__], done.stdout)

    async def test_python_m_chatserver_runs_the_server_in_the_foreground(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        server = spawn(
            self,
            "python -m chatserver",
            [
                PYTHON,
                "-m",
                "chatserver",
                *LOOPBACK,
                "--data-dir",
                str(base / "data"),
                "--log-dir",
                str(base / "log"),
            ],
            cwd=str(base),
        )
        await server.wait_for(r"fingerprint (SHA256:\S+)")
        await server.wait_for(r"ChatFactory starting on (\d+)")
        self.assertEqual(await stop_twistd(server), 0)
        self.assertFalse((base / "twistd.pid").exists())  # the foreground: no pid file

    def test_usage_lines_name_the_installed_commands(self) -> None:
        self.assertIn("usage: chatclient-cli", run("-m", "chatclient.cli", "--help").stdout)
        self.assertIn("usage: chatserver-admin", run("-m", "chatserver.admin", "--help").stdout)


class BacklogTests(unittest.TestCase):
    """An endpoint string without a backlog gets the server's, not
    Twisted's 50 (what ``ss`` shows as a listener's Send-Q); one that sets
    its own keeps it."""

    skip = None if shutil.which("ss") else "ss is not installed (.ci/run installs iproute2)"

    def backlog_of(self, port: int) -> int:
        done = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=30)
        fields = done.stdout.split()
        self.assertGreaterEqual(len(fields), 3, done.stdout + done.stderr)
        return int(fields[2])  # State Recv-Q Send-Q: Send-Q is the backlog

    async def test_the_server_sets_the_backlog_unless_the_endpoint_does(self) -> None:
        from tests.support import start_server

        server = await start_server(self, endpoint="tcp:0:interface=127.0.0.1")
        # The kernel caps any backlog at net.core.somaxconn.
        cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
        self.assertEqual(self.backlog_of(server.port), min(LISTEN_BACKLOG, cap))
        own = await start_server(self, endpoint="tcp:0:interface=127.0.0.1:backlog=77")
        self.assertEqual(self.backlog_of(own.port), 77)


class WheelTests(unittest.TestCase):
    def test_the_wheel_ships_the_configuration_unit_and_logrotate_file(self) -> None:
        out = Path(self.mktemp()).resolve()
        # setuptools builds in the checkout's build/: removed after, unless a developer's.
        if not (ROOT / "build").exists():
            self.addCleanup(shutil.rmtree, ROOT / "build", True)
        done = subprocess.run(
            [PYTHON, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
            env=dict(python_env(), TMPDIR=str(out.parent)),
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        (wheel,) = out.glob("chatserver-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            shipped = archive.read("chatserver/etc/chatserver.ini").decode()
        for name in ("chatserver.ini", "systemd/chatserver.service", "logrotate.d/chatserver"):
            self.assertIn(f"chatserver/etc/{name}", names)
        self.assertEqual(shipped, (ROOT / "etc" / "chatserver.ini").read_text())


class ContainerTests(unittest.TestCase):
    """The container recipe cannot be built here (no registry), so what
    can be checked without it is: hadolint passes it (make check), and
    compose.yaml's parts fit together."""

    def test_compose_runs_the_image_on_its_config_with_postgres_and_redis(self) -> None:
        import yaml

        compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
        services = compose["services"]
        self.assertEqual(set(services), {"chatserver", "postgres", "redis"})
        server = services["chatserver"]
        (config,) = server["configs"]
        source = ROOT / compose["configs"][config["source"]]["file"]
        self.assertEqual(server["command"], ["--config", config["target"]])
        settings = load_settings(source)
        self.assertEqual((settings.workers, settings.allow_registration), (2, "invite"))
        self.assertTrue(settings.database.startswith("postgresql://chatserver@postgres:"))
        self.assertTrue(settings.hub_url.startswith("redis://redis:"))
        self.assertEqual(settings.database_password_file, "/run/secrets/" + server["secrets"][0])
        self.assertEqual(
            services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"], settings.database_password_file
        )
        # The database and the hub are on the internal network only.
        self.assertTrue(compose["networks"]["backend"]["internal"])
        for name in ("postgres", "redis"):
            self.assertEqual(services[name]["networks"], ["backend"])
            self.assertNotIn("ports", services[name])
        # The secret's file is never committed.
        self.assertIn("secrets/", (ROOT / ".gitignore").read_text().splitlines())
        dockerfile = (ROOT / "Dockerfile").read_text()
        self.assertIn('VOLUME ["/var/lib/chatserver", "/var/log/chatserver"]', dockerfile)
        self.assertIn("HEALTHCHECK", dockerfile)


class LicenseTests(unittest.TestCase):
    def test_the_license_file_is_the_one_the_metadata_names(self) -> None:
        metadata = configparser.ConfigParser()
        metadata.read(ROOT / "setup.cfg")
        self.assertEqual(metadata["metadata"]["license"], "MIT")
        self.assertTrue((ROOT / "LICENSE").read_text().startswith("MIT License\n"))


class LogrotateTests(unittest.TestCase):
    skip = None if shutil.which("logrotate") else "logrotate is not installed (.ci/run installs it)"

    def test_logrotate_reads_the_shipped_file_without_complaint(self) -> None:
        # The shipped file, pointed at a log directory with a worker's
        # files in it too: each file must be named by one entry only.
        logs = Path(self.mktemp()).resolve()
        (logs / "worker-1").mkdir(parents=True)
        for directory in (logs, logs / "worker-1"):
            for name in ("chatserver.log", "connections.log", "audit.log"):
                (directory / name).write_text("a line\n")
        shipped = (ROOT / "etc" / "logrotate.d" / "chatserver").read_text()
        self.assertIn("/var/log/chatserver/audit.log", shipped)
        config = logs.parent / "logrotate.conf"
        config.write_text(shipped.replace("/var/log/chatserver", str(logs)))
        done = logrotate_debug(config, logs.parent / "state")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn("error", done.stderr.lower(), done.stderr)
        for directory in (logs, logs / "worker-1"):
            for name in ("chatserver.log", "connections.log", "audit.log"):
                self.assertIn(f"considering log {directory / name}", done.stderr)


class MigrationLogTests(unittest.TestCase):
    def test_an_upgrade_is_logged_once_with_the_old_and_new_versions(self) -> None:
        path = Path(self.mktemp())
        conn = sqlite3.connect(str(path))
        self.addCleanup(conn.close)
        store.migrate(conn, target=3)
        seen: list[dict] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        newest = store.migrate(conn)
        upgrades = [e for e in seen if "schema upgraded" in e.get("log_format", "")]
        self.assertEqual([(e["old"], e["new"]) for e in upgrades], [(3, newest)])
        store.migrate(conn)  # nothing to do: nothing said
        self.assertEqual(len([e for e in seen if "schema upgraded" in e.get("log_format", "")]), 1)


class ManPageTests(unittest.TestCase):
    """The man pages tools/manpages.py makes from the commands' --help (make
    writes them into the virtualenv): valid roff, every option there."""

    skip = None if shutil.which("groff") and shutil.which("man") else "groff or man is not installed"

    def setUp(self) -> None:
        self.out = Path(self.mktemp()).resolve()
        done = run("tools/manpages.py", "--out", str(self.out))
        self.assertEqual(done.returncode, 0, done.stderr)

    def rendered(self, path: Path) -> str:
        done = subprocess.run(
            ["man", "-l", str(path)],
            env={**python_env(), "MANWIDTH": "100", "MANPAGER": "cat", "MAN_KEEP_FORMATTING": ""},
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        # man -l with a pager of cat still overstrikes bold text on some systems.
        return re.sub(r".\x08", "", done.stdout)

    def test_each_command_has_a_page_groff_reads_without_warnings(self) -> None:
        pages = sorted(str(p.relative_to(self.out)) for p in self.out.rglob("*.[18]"))
        self.assertEqual(
            pages,
            [
                "man1/chatclient-cli.1",
                "man1/chatclient.1",
                "man8/chatserver-admin.8",
                "man8/chatserver.8",
            ],
        )
        for name in pages:
            done = subprocess.run(
                ["groff", "-ww", "-z", "-man", str(self.out / name)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual((done.returncode, done.stderr), (0, ""), name)

    def test_every_option_of_every_command_is_on_its_page(self) -> None:
        for page, argvs in (
            ("man8/chatserver.8", [("-m", "chatserver", "--help")]),
            (
                "man8/chatserver-admin.8",
                [
                    ("-m", "chatserver.admin", "--help"),
                    ("-m", "chatserver.admin", "make-cert", "--help"),
                    ("-m", "chatserver.admin", "room", "set-owner", "--help"),
                    ("-m", "chatserver.admin", "user", "delete", "--help"),
                    ("-m", "chatserver.admin", "backup", "--help"),
                ],
            ),
            ("man1/chatclient-cli.1", [("-m", "chatclient.cli", "--help")]),
            ("man1/chatclient.1", [("-m", "chatclient", "--help")]),
        ):
            text = self.rendered(self.out / page)
            for argv in argvs:
                done = run(*argv)
                self.assertEqual(done.returncode, 0, done.stderr)
                options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", done.stdout))
                self.assertTrue(options, argv)
                for option in options:
                    self.assertIn(option, text, f"{page}: {' '.join(argv)}")
        admin = self.rendered(self.out / "man8" / "chatserver-admin.8")
        for words in ("room set-owner", "user revoke-tokens", "make-cert", "write-config", "--offline"):
            self.assertIn(words, admin)
        self.assertIn("--tls-ca", self.rendered(self.out / "man1" / "chatclient-cli.1"))
