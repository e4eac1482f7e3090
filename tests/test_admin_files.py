"""chatserver-admin's commands that write files: ``make-cert`` (a
certificate that the server listens with and the terminal client trusts,
end to end, and a key nobody else can read) and ``write-config`` (the
shipped files, adapted, that the server, logrotate and systemd read)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet import threads
from twisted.trial import unittest

from chatserver.config import load_settings
from tests.processes import cli
from tests.support import PASSWORD, PYTHON, python_env, start_server
from tests.test_packaging import logrotate_debug


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "chatserver.admin", *args],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


class MakeCertTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        (self.base / "tls").mkdir(parents=True)
        (self.base / "data").mkdir()
        (self.base / "password").write_text(PASSWORD + "\n")
        self.config = self.base / "chatserver.ini"
        self.config.write_text("[server]\ndata_dir = data\nlog_dir = log\n")

    def make(self, *extra: str, status: int = 0) -> dict:
        done = admin(
            "--config", str(self.config), "make-cert", "--dir", str(self.base / "tls"), "--json", *extra
        )
        self.assertEqual(done.returncode, status, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        return json.loads(done.stdout)

    async def test_the_server_listens_with_it_and_the_client_trusts_it(self) -> None:
        (self.base / "log").mkdir()
        made = await threads.deferToThread(self.make, "--name", "localhost", "--ip", "127.0.0.1")
        key, cert_path = Path(made["key"]), Path(made["certificate"])
        self.assertEqual((mode(key), mode(cert_path)), ("0o600", "0o644"))
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual([str(ip) for ip in names.get_values_for_type(x509.IPAddress)], ["127.0.0.1"])
        self.assertEqual(made["sha256"], cert.fingerprint(hashes.SHA256()).hex(":").upper())
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

        # The endpoint it prints, on an ephemeral loopback port.
        endpoint = made["endpoint"].replace("ssl:7443:", "ssl:0:interface=127.0.0.1:")
        server = await start_server(self, endpoint=endpoint)
        args = ["--host", "localhost", "--tls", "--tls-ca", str(cert_path), "--register"]
        args += ["--password-file", str(self.base / "password"), "--known-hosts", str(self.base / "known")]
        alice = cli(self, "alice", server.port, "alice", *args)
        await alice.wait_for(r"logged in as alice")
        alice.close_stdin()
        self.assertEqual(await alice.ended, 0, alice.errors())
        audit = (self.base / "log" / "audit.log").read_text()
        self.assertIn(f"make_cert room=- target={cert_path} sha256={made['sha256']}", audit)

    def test_an_existing_key_is_kept_unless_forced(self) -> None:
        first = self.make()
        key = Path(first["key"])
        before = key.read_bytes()
        refused = self.make(status=1)
        self.assertIn("--force", refused["error"])
        self.assertEqual(key.read_bytes(), before)
        again = self.make("--force")
        self.assertNotEqual(again["sha256"], first["sha256"])
        self.assertNotEqual(key.read_bytes(), before)
        self.assertEqual(mode(key), "0o600")
        # The defaults: this machine's names, and the loopback addresses.
        self.assertIn("localhost", again["names"])
        self.assertEqual(again["ips"], ["127.0.0.1", "::1"])

    def test_a_relative_directory_gives_absolute_paths_in_the_endpoint(self) -> None:
        # The server reads the endpoint from another working directory
        # (systemd starts it in its data directory), so the paths in it must not be relative.
        done = subprocess.run(
            [
                PYTHON,
                "-m",
                "chatserver.admin",
                "--config",
                str(self.config),
                "make-cert",
                "--dir",
                "tls",
                "--json",
            ],
            env=python_env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        made = json.loads(done.stdout)
        self.assertEqual(made["key"], str(self.base / "tls" / "tls.key"))
        self.assertIn(f"privateKey={self.base}/tls/tls.key:", made["endpoint"].replace("\\:", ":"))

    def test_bad_arguments_get_one_line_and_write_nothing(self) -> None:
        for extra, words in (
            (("--ip", "300.1.1.1"), "does not appear to be an IPv4 or IPv6 address"),
            (("--name", "bad name"), "is not a host name"),
            (("--days", "0"), "--days"),
            (("--dir", str(self.base / "nowhere")), "is not a directory"),
        ):
            done = admin("--config", str(self.config), "make-cert", "--dir", str(self.base / "tls"), *extra)
            self.assertEqual(done.returncode, 1, done.stderr)
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
            self.assertIn(words, done.stderr)
        self.assertEqual(list((self.base / "tls").iterdir()), [])
        self.assertFalse((self.base / "log").exists())  # nothing made, nothing audited


class WriteConfigTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir(parents=True)
        self.out = self.base / "etc"
        self.data, self.logs = self.base / "state", self.base / "logs"

    def write(self, *extra: str, status: int = 0) -> dict:
        dirs = ["--data-dir", str(self.data), "--log-dir", str(self.logs)]
        done = admin("write-config", str(self.out), *dirs, "--json", *extra)
        self.assertEqual(done.returncode, status, done.stderr)
        return json.loads(done.stdout)

    def test_the_files_are_the_shipped_ones_for_this_installation(self) -> None:
        written = self.write()
        ini, unit, rotate = (Path(written["files"][n]) for n in SHIPPED_NAMES)
        self.assertEqual({mode(p) for p in (ini, unit, rotate)}, {"0o644"})
        # The configuration: the server reads it, with the directories given.
        settings = load_settings(ini)
        self.assertEqual((settings.data_path, settings.log_path), (self.data, self.logs))
        root = Path(__file__).resolve().parent.parent
        shipped = (root / "etc" / "chatserver.ini").read_text().splitlines()
        changed = [line for line in ini.read_text().splitlines() if line not in shipped]
        self.assertEqual(changed, [f"data_dir = {self.data}", f"log_dir = {self.logs}"])
        # The unit starts this environment's twistd on that file.
        start = re.search(r"(?m)^ExecStart=(\S+) .* --config (\S+)$", unit.read_text())
        assert start is not None
        self.assertTrue(Path(start.group(1)).exists(), start.group(1))
        self.assertEqual(Path(start.group(2)), ini)
        self.assertIn(f"ReadWritePaths={self.data} {self.logs}", unit.read_text())
        self.assertIn(f"{self.logs}/audit.log", rotate.read_text())
        # Not again without --force.
        refused = self.write(status=1)
        self.assertIn("--force", refused["error"])
        self.assertEqual(Path(self.write("--force")["files"]["chatserver.ini"]), ini)

    def test_logrotate_reads_the_written_file(self) -> None:
        if shutil.which("logrotate") is None:
            raise unittest.SkipTest("logrotate is not installed (.ci/run installs it)")
        rotate = Path(self.write()["files"]["chatserver.logrotate"])
        self.logs.mkdir()
        (self.logs / "chatserver.log").write_text("a line\n")
        done = logrotate_debug(rotate, self.base / "state.txt")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"considering log {self.logs / 'chatserver.log'}", done.stderr)

    def test_a_relative_directory_is_refused(self) -> None:
        done = admin("write-config", str(self.out), "--data-dir", "var/lib")
        self.assertEqual(done.returncode, 1)
        self.assertIn("absolute", done.stderr)
        self.assertFalse(self.out.exists())


SHIPPED_NAMES = ("chatserver.ini", "chatserver.service", "chatserver.logrotate")
