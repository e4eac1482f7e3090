"""The desktop client's start: the event loop, the connect dialog, then
the main window; back to the dialog if the first connection fails."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from chatclient.known_hosts import KnownHosts, server_id
from chatserver.wire.safetext import log_text

log = Logger(namespace="chatclient.gui")


def start_logging(verbose: bool) -> None:
    """Warnings (info with --verbose) to stderr; never message bodies."""
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info if verbose else LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [levels])], redirectStandardIO=False
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chatclient", description="The chatserver desktop client.")
    p.add_argument("--version", action="version", version=f"chatclient {version('chatserver')}")
    p.add_argument(
        "--known-hosts", type=Path, help="known hosts file (default: ~/.config/chatserver/known_hosts)"
    )
    p.add_argument(
        "--servers",
        type=Path,
        help="remembered servers file (default: ~/.config/chatserver/gui_servers.json)",
    )
    p.add_argument("--host", help="fill in the connect dialog with this server")
    p.add_argument("--port", type=int, help="... and port")
    p.add_argument("--user", help="... and username")
    p.add_argument("-v", "--verbose", action="store_true", help="log connection events to stderr")
    p.add_argument(
        "--no-e2e",
        action="store_true",
        help="no end-to-end encryption: direct messages the server can read, and no encrypted rooms",
    )
    p.add_argument("--device-dir", type=Path, help="where this client keeps its devices' keys")
    p.add_argument(
        "--store-passphrase-file",
        type=Path,
        help="the device store's passphrase (first line), where there is no keyring; else it is asked for",
    )
    p.add_argument(
        "--theme",
        choices=("system", "light", "dark"),
        default="system",
        help="colours: the system's palette (default), or force light or dark",
    )
    return p.parse_args(argv)


def prefill_of(server: Any) -> dict[str, Any]:
    """The connect dialog filled in as for ``server`` (all but the password)."""
    return {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "tls": server.tls,
        "tls_ca": server.tls_ca,
    }


class App:
    """Owns the dialogs and the window; one connection at a time."""

    def __init__(
        self,
        reactor: Any,
        known_hosts: KnownHosts,
        servers: Any,
        devices: Path | None = None,
        passphrase_file: Path | None = None,
        e2e: bool = True,
    ) -> None:
        from chatclient.gui.servers import RememberedServers

        self.reactor = reactor
        self.devices = devices
        self.passphrase_file = passphrase_file
        self.e2e = e2e
        self.device: Any = None
        self.passphrase_dialog: Any = None
        self.known_hosts = known_hosts
        self.remembered = RememberedServers(servers)
        self.dialog: Any = None
        self.window: Any = None
        self.trust: Any = None
        self.client: Any = None

    def show_connect(self, error: str | None = None, prefill: dict[str, Any] | None = None) -> Any:
        from chatclient.gui.connect_dialog import ConnectDialog

        self.dialog = ConnectDialog(self.remembered)
        self.dialog.prefill(**(prefill or {}))
        if error:
            self.dialog.show_error(error)
        self.dialog.accepted.connect(lambda: self.connect(self.dialog.result_request()))
        self.dialog.rejected.connect(self._quit_if_alone)
        self.dialog.show()
        return self.dialog

    def _quit_if_alone(self) -> None:
        if self.window is None or not self.window.isVisible():
            self.reactor.stop()

    def connect(self, login: Any) -> None:
        """Open this user's device (asking its passphrase first if need be),
        then connect."""
        from chatclient.e2e.store import StoreKey, default_root, keyring_usable, store_dir
        from chatclient.endpoints import parse_hosts
        from chatclient.gui.connect_dialog import StorePassphraseDialog

        if not self.e2e:
            self._connect(login, None)
            return
        server = login.server
        directory = store_dir(
            self.devices or default_root(), server_id(*parse_hosts(server.host, server.port)[0]), server.user
        )
        method = StoreKey(directory).method()
        if self.passphrase_file is not None or method == "keyring" or (method is None and keyring_usable()):
            self._connect(login, directory)
            return
        dialog = self.passphrase_dialog = StorePassphraseDialog(server.user, method is None)
        dialog.accepted.connect(lambda: self._connect(login, directory, dialog.passphrase()))
        dialog.rejected.connect(lambda: self.show_connect(prefill=prefill_of(server)))
        dialog.open()

    def _open_device(self, directory: Path, user: str, passphrase: str | None) -> Any:
        import socket

        from chatclient.e2e.client import EndToEnd

        def ask() -> str:
            if passphrase is not None:
                return passphrase
            assert self.passphrase_file is not None
            lines = self.passphrase_file.read_text(encoding="utf-8").splitlines()
            return lines[0] if lines else ""

        return EndToEnd.open(directory, user, self.reactor, ask, f"chatclient on {socket.gethostname()}")

    def _connect(self, login: Any, directory: Path | None, passphrase: str | None = None) -> None:
        from twisted.internet import endpoints

        from chatclient.e2e.store import StoreError
        from chatclient.endpoints import BadCA, FailoverEndpoint, parse_hosts, tls_endpoint
        from chatclient.gui.bridge import ClientBridge
        from chatclient.gui.mainwindow.window import MainWindow
        from chatclient.gui.trust import Trust
        from chatclient.reconnect import ReconnectingClient

        server = login.server
        if directory is not None:
            try:
                if self.device is not None:
                    self.device.store.close()
                self.device = self._open_device(directory, server.user, passphrase)
            except (StoreError, OSError) as e:
                self.device = None
                self.show_connect(f"End-to-end encryption: {e}", prefill=prefill_of(server))
                return
        log.info(
            "connecting to {host}:{port} as {user}{tls}",
            host=server.host,
            port=server.port,
            user=server.user,
            tls=" with TLS" if server.tls else "",
        )
        # Several nodes of one deployment: fail over between them, under
        # one pin (they share the key), the first one's.  With TLS, each
        # node's certificate is checked for its own name, as the terminal
        # client checks it (chatclient.endpoints.tls_endpoint).
        hosts = parse_hosts(server.host, server.port)
        ca = os.path.expanduser(server.tls_ca) if server.tls_ca else None
        try:
            nodes = [
                (
                    f"{host}:{port}",
                    tls_endpoint(self.reactor, host, port, ca, timeout=15)
                    if server.tls
                    else endpoints.HostnameEndpoint(self.reactor, host, port, timeout=15),
                )
                for host, port in hosts
            ]
        except BadCA as e:
            self.show_connect(f"Trust certificates from: {e}", prefill=prefill_of(server))
            return
        self.trust = Trust(self.known_hosts, server_id(*hosts[0]), None)
        endpoint: Any = nodes[0][1] if len(nodes) == 1 else FailoverEndpoint(nodes)
        self.client = ReconnectingClient(
            self.reactor,
            endpoint,
            self.trust,
            server.user,
            login.password,
            register=login.register,
            invite=login.invite,
            connect_attempts=1,
            proven=self.trust.proven,
        )
        if directory is not None and self.device is not None:
            self.device.attach(self.client)
        self.window = MainWindow(ClientBridge(self.reactor, self.client), server)
        self.trust.parent = self.window
        self.client.add_state_listener(self._state)
        self.client.add_state_listener(lambda state, detail: self._first_state(login, state, detail))
        self.window.closed_callback = self.reactor.stop
        self.window.logged_out_callback = lambda: self._back_to_connect(login)
        self.window.failed_callback = lambda reason: self._back_to_connect(login, f"Disconnected: {reason}")
        self.window.show()
        self.client.start()

    def _back_to_connect(self, login: Any, error: str | None = None) -> None:
        """After a logout, or when the session can never come back."""
        window, self.window = self.window, None
        if window is None:
            return
        window.closed_callback = None
        window.close()
        window.deleteLater()
        self.show_connect(error, prefill=prefill_of(login.server))

    def _state(self, state: str, detail: Any) -> None:
        if state == "reconnecting":
            why = log_text(str(getattr(detail, "message", detail)))
            log.info("connection lost ({why}); reconnecting", why=why)
        elif state == "online":
            log.info("online, secure; server key {fingerprint}", fingerprint=self.client.session.fingerprint)
        elif state == "failed":
            log.warn("not connected: {why}", why=log_text(str(getattr(detail, "message", None) or detail)))

    def _first_state(self, login: Any, state: str, detail: Any) -> None:
        if self.client is None or self.client.connections > 1:
            return
        if state == "online" and self.client.connections == 1:
            self.remembered.remember(login.server)
        elif state == "failed" and self.client.connections == 0:
            from chatclient.gui.trust import KeyChanged
            from chatclient.session import TLS_CERTIFICATE

            window, self.window = self.window, None
            window.shut_down()
            if isinstance(detail, KeyChanged):
                message = "The server's key has changed: not connected, nothing was sent."
            else:
                message = f"Could not connect: {getattr(detail, 'message', None) or detail}"
                code = getattr(detail, "code", None)
                if code == TLS_CERTIFICATE:
                    message += ". Check “Trust certificates from” and the server's name."
                elif code in ("invite_required", "invite_invalid"):
                    message += ". Enter the invite code the server's admin gave you."
            window.hide()
            window.deleteLater()
            # Try again with everything but the password as typed (and,
            # after a refused registration, still registering).
            self.show_connect(message, prefill={**prefill_of(login.server), "register": login.register})


def apply_theme(app: Any, theme: str) -> None:
    from PyQt6.QtCore import Qt

    app.setStyle("Fusion")  # the same widgets everywhere; it follows the palette
    hints = app.styleHints()
    if theme != "system" and hasattr(hints, "setColorScheme"):
        hints.setColorScheme(Qt.ColorScheme.Dark if theme == "dark" else Qt.ColorScheme.Light)
    if theme == "dark" and hints.colorScheme() != Qt.ColorScheme.Dark:
        app.setPalette(dark_palette())


def dark_palette() -> Any:
    from PyQt6.QtGui import QColor, QPalette

    palette = QPalette()
    role = QPalette.ColorRole
    for name, colour in (
        (role.Window, "#2b2d31"),
        (role.WindowText, "#e6e6e6"),
        (role.Base, "#1e1f22"),
        (role.AlternateBase, "#2b2d31"),
        (role.Text, "#e6e6e6"),
        (role.Button, "#35373c"),
        (role.ButtonText, "#e6e6e6"),
        (role.Highlight, "#4a7bd0"),
        (role.HighlightedText, "#ffffff"),
        (role.ToolTipBase, "#35373c"),
        (role.ToolTipText, "#e6e6e6"),
        (role.PlaceholderText, "#8a8d93"),
        (role.Link, "#7aa7ff"),
    ):
        palette.setColor(name, QColor(colour))
    palette.setColor(QPalette.ColorGroup.Disabled, role.Text, QColor("#6d7075"))
    palette.setColor(QPalette.ColorGroup.Disabled, role.WindowText, QColor("#6d7075"))
    palette.setColor(QPalette.ColorGroup.Disabled, role.ButtonText, QColor("#6d7075"))
    return palette


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        from PyQt6.QtWidgets import QApplication
    except ImportError:
        sys.exit(
            "chatclient: the desktop client needs PyQt6 (pip install 'chatserver[gui]'); "
            "the terminal client is chatclient-cli"
        )
    from chatclient.gui import loop as gui_loop

    start_logging(args.verbose)
    app = QApplication(sys.argv[:1])
    app.setApplicationName("chatclient")
    app.setDesktopFileName("chatclient")
    apply_theme(app, args.theme)
    reactor, loop = gui_loop.install(app)
    controller = App(
        reactor,
        KnownHosts(args.known_hosts),
        args.servers,
        devices=args.device_dir,
        passphrase_file=args.store_passphrase_file,
        e2e=not args.no_e2e,
    )
    prefill = {"host": args.host, "port": args.port, "user": args.user}
    controller.show_connect(prefill={k: v for k, v in prefill.items() if v is not None})
    # The reactor's end is the program's end: closing the main window, or
    # cancelling the connect dialog with no window open, stops it.
    app.setQuitOnLastWindowClosed(False)
    reactor.callWhenRunning(log.info, "connect dialog open")
    with loop:
        reactor.run()
