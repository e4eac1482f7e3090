"""The connect dialog: where to connect, as whom, log in or register."""

from __future__ import annotations

import dataclasses
import os

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from chatclient.gui.present import present
from chatclient.gui.servers import RememberedServers, Server
from chatclient.hosts import BadHostList, parse_hosts

DEFAULT_PORT = 7070


@dataclasses.dataclass(frozen=True)
class LoginRequest:
    server: Server
    password: str
    register: bool
    #: The invite code a server that registers by invitation asks for.
    invite: str | None = None


class ConnectDialog(QDialog):
    def __init__(self, remembered: RememberedServers, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("connect-dialog")
        self.setWindowTitle("Connect to a chat server")
        self.remembered = remembered
        self.servers = remembered.load()

        self.recent = QComboBox()
        self.recent.setObjectName("recent")
        self.recent.addItem("New server…")
        for server in self.servers:
            self.recent.addItem(server.label)
        self.host = QLineEdit("127.0.0.1")
        self.host.setObjectName("host")
        self.host.setToolTip(
            "The server's host name or address; for a deployment of several nodes, "
            "a list to fail over between: host1:7070, host2:7070"
        )
        self.port = QSpinBox()
        self.port.setObjectName("port")
        self.port.setRange(1, 65535)
        self.port.setValue(DEFAULT_PORT)
        # TLS under the channel, for a server that listens with ssl:.
        self.tls = QCheckBox("Use &TLS")
        self.tls.setObjectName("tls")
        self.tls.setToolTip(
            "For a server that listens with TLS (an ssl: endpoint). The server's key "
            "is checked either way; TLS also checks its certificate."
        )
        self.tls_ca = QLineEdit()
        self.tls_ca.setObjectName("tls-ca")
        self.tls_ca.setPlaceholderText("the system's CAs")
        self.tls_ca.setToolTip(
            "The CA certificates to trust for this server: a PEM file, or a directory of "
            "*.pem files; blank for the system's"
        )
        self.tls_ca_choose = QPushButton("C&hoose")
        self.tls_ca_choose.setObjectName("tls-ca-choose")
        self.tls_ca_choose.setAutoDefault(False)  # Enter in the fields connects
        choices = QMenu(self.tls_ca_choose)
        choices.addAction("A certificate file (PEM)…", lambda: self.choose_ca(directory=False))
        choices.addAction("A directory of certificates…", lambda: self.choose_ca(directory=True))
        self.tls_ca_choose.setMenu(choices)
        #: The file dialog :meth:`choose_ca` opened, while it is open.
        self.ca_dialog: QFileDialog | None = None
        self.user = QLineEdit()
        self.user.setObjectName("user")
        self.user.setPlaceholderText("2 to 32 of a-z 0-9 _ -")
        self.password = QLineEdit()
        self.password.setObjectName("password")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        # Asked twice when registering: a typo there would lock the new
        # account out.  The label says whether they match as one types.
        self.password_again = QLineEdit()
        self.password_again.setObjectName("password-again")
        self.password_again.setEchoMode(QLineEdit.EchoMode.Password)
        self.password_match = QLabel()
        self.password_match.setObjectName("password-match")
        self.password_match.setTextFormat(Qt.TextFormat.PlainText)
        # Only a server with [accounts] allow_registration = invite asks for
        # one; the field is a single-use secret, so it is never remembered.
        self.invite = QLineEdit()
        self.invite.setObjectName("invite")
        self.invite.setPlaceholderText("if the server registers by invitation")
        self.login_mode = QRadioButton("Log in")
        self.register_mode = QRadioButton("Create an account")
        self.login_mode.setChecked(True)
        modes = QButtonGroup(self)
        modes.addButton(self.login_mode)
        modes.addButton(self.register_mode)
        self.error = QLabel()
        self.error.setObjectName("error")
        self.error.setWordWrap(True)
        self.error.setTextFormat(Qt.TextFormat.PlainText)  # it may quote the server
        self.error.setStyleSheet("color: palette(link-visited); font-weight: bold")
        self.error.hide()

        form = QFormLayout()
        form.addRow("&Recent:", self.recent)
        host_row = QHBoxLayout()
        host_row.addWidget(self.host, 1)
        host_row.addWidget(QLabel("Port:"))
        host_row.addWidget(self.port)
        host_label = QLabel("&Server:")
        host_label.setBuddy(self.host)
        form.addRow(host_label, host_row)
        tls_row = QHBoxLayout()
        tls_row.addWidget(self.tls)
        tls_row.addStretch(1)
        form.addRow("", tls_row)
        ca_row = QHBoxLayout()
        ca_row.addWidget(self.tls_ca, 1)
        ca_row.addWidget(self.tls_ca_choose)
        self.tls_ca_label = QLabel("Trust certificates &from:")
        self.tls_ca_label.setBuddy(self.tls_ca)
        form.addRow(self.tls_ca_label, ca_row)
        form.addRow("&Username:", self.user)
        form.addRow("&Password:", self.password)
        mode_row = QHBoxLayout()
        mode_row.addWidget(self.login_mode)
        mode_row.addWidget(self.register_mode)
        mode_row.addStretch(1)
        form.addRow("", mode_row)
        form.addRow("Pass&word again:", self.password_again)
        form.addRow("", self.password_match)
        form.addRow("&Invite code:", self.invite)
        self.form = form
        note = QLabel("Passwords are never stored. The server's key is checked against the one you trusted.")
        note.setWordWrap(True)
        note.setEnabled(False)  # the palette's dimmed text: a hint, not a warning

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        present(self.buttons.button(QDialogButtonBox.StandardButton.Ok)).setText("&Connect")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(note)
        layout.addWidget(self.buttons)

        self.recent.currentIndexChanged.connect(self._recent_chosen)
        self.tls.toggled.connect(self._tls_changed)
        self._tls_changed(False)
        self.register_mode.toggled.connect(self._mode_changed)
        self.password.textChanged.connect(self._show_match)
        self.password_again.textChanged.connect(self._show_match)
        self._mode_changed(False)
        if self.servers:
            self.recent.setCurrentIndex(1)
            self.password.setFocus()
        else:
            self.user.setFocus()
        self.setMinimumWidth(self.fontMetrics().horizontalAdvance("M") * 34)

    def _tls_changed(self, on: bool) -> None:
        """The CA to trust is asked only with TLS (kept as typed without)."""
        for widget in (self.tls_ca_label, self.tls_ca, self.tls_ca_choose):
            widget.setEnabled(on)

    def choose_ca(self, directory: bool) -> QFileDialog:
        """Open a file dialog for the CA certificates (a PEM file, or a
        directory of them); what is chosen fills in the field."""
        dialog = QFileDialog(
            self, "A directory of CA certificates" if directory else "A file of CA certificates"
        )
        dialog.setObjectName("tls-ca-dialog")
        if directory:
            dialog.setFileMode(QFileDialog.FileMode.Directory)
            dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        else:
            dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
            dialog.setNameFilters(["PEM certificates (*.pem *.crt *.cer)", "All files (*)"])
        current = os.path.expanduser(self.tls_ca.text().strip())
        if current:
            dialog.setDirectory(current if os.path.isdir(current) else os.path.dirname(current))
        dialog.fileSelected.connect(self.tls_ca.setText)
        dialog.finished.connect(lambda _: setattr(self, "ca_dialog", None))
        self.ca_dialog = dialog
        dialog.open()
        return dialog

    def _mode_changed(self, registering: bool) -> None:
        self.form.setRowVisible(self.password_again, registering)
        self.form.setRowVisible(self.password_match, registering)
        self.form.setRowVisible(self.invite, registering)
        if not registering:
            self.password_again.clear()
            self.invite.clear()
        self._show_match()

    def _show_match(self) -> None:
        again = self.password_again.text()
        if not again:
            self.password_match.setText("")
        elif again == self.password.text():
            self.password_match.setText("✓ The passwords match.")
        else:
            self.password_match.setText("✗ The passwords differ.")

    def prefill(
        self,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        tls: bool | None = None,
        tls_ca: str | None = None,
        register: bool | None = None,
    ) -> None:
        """Values from the command line (or the connection that just
        failed) win over the remembered ones."""
        if register:
            self.register_mode.setChecked(True)
        if host is None and port is None and user is None and tls is None and tls_ca is None:
            return
        self.recent.setCurrentIndex(0)
        if host is not None:
            self.host.setText(host)
        if port is not None:
            self.port.setValue(port)
        if tls is not None:
            self.tls.setChecked(tls)
        if tls_ca is not None:
            self.tls_ca.setText(tls_ca)
        if user is not None:
            self.user.setText(user)
            self.password.setFocus()

    def _recent_chosen(self, index: int) -> None:
        if index <= 0 or index > len(self.servers):
            return
        server = self.servers[index - 1]
        self.host.setText(server.host)
        self.port.setValue(server.port)
        self.user.setText(server.user)
        self.tls.setChecked(server.tls)
        self.tls_ca.setText(server.tls_ca)
        self.password.clear()
        self.password_again.clear()
        self.password.setFocus(Qt.FocusReason.OtherFocusReason)

    def show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()

    def _accept(self) -> None:
        host = self.host.text().strip()
        user = self.user.text().strip()
        password = self.password.text()
        if not host:
            return self.show_error("Enter the server's host name or address.")
        try:
            parse_hosts(host, self.port.value())
        except BadHostList as e:
            return self.show_error(f"Server: {e}.")
        ca = os.path.expanduser(self.tls_ca.text().strip())
        if self.tls.isChecked() and ca and not os.path.exists(ca):
            return self.show_error(f"Trust certificates from: {ca}: no such file or directory.")
        if not user:
            return self.show_error("Enter your username.")
        if len(password) < (8 if self.register_mode.isChecked() else 1):
            return self.show_error(
                "A new password needs at least 8 characters."
                if self.register_mode.isChecked()
                else "Enter your password."
            )
        if self.register_mode.isChecked() and self.password_again.text() != password:
            return self.show_error("Type the same new password twice.")
        self.error.hide()
        self.accept()

    def result_request(self) -> LoginRequest:
        server = Server(
            self.host.text().strip(),
            self.port.value(),
            self.user.text().strip().lower(),
            tls=self.tls.isChecked(),
            tls_ca=self.tls_ca.text().strip(),
        )
        registering = self.register_mode.isChecked()
        invite = self.invite.text().strip() if registering else ""
        return LoginRequest(server, self.password.text(), registering, invite or None)


class StorePassphraseDialog(QDialog):
    """The passphrase of this device's key store, where there is no
    keyring: asked once per start (twice, to be sure, for a new device).
    ``passphrase()`` once accepted."""

    def __init__(self, user: str, new: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("store-passphrase")
        self.setWindowTitle("Device keys")
        self.new = new
        text = (
            f"A new device for {user}: choose a passphrase for its end-to-end encryption keys "
            "(there is no keyring on this desktop to keep them in)."
            if new
            else f"The passphrase of {user}'s end-to-end encryption keys on this computer:"
        )
        intro = QLabel(text)
        intro.setWordWrap(True)
        self.first = QLineEdit()
        self.first.setObjectName("store-passphrase-first")
        self.first.setEchoMode(QLineEdit.EchoMode.Password)
        self.second = QLineEdit()
        self.second.setObjectName("store-passphrase-second")
        self.second.setEchoMode(QLineEdit.EchoMode.Password)
        self.error = QLabel()
        self.error.setStyleSheet("color: #d04040")
        self.error.hide()
        form = QFormLayout(self)
        form.addRow(intro)
        form.addRow("&Passphrase:", self.first)
        if new:
            form.addRow("&Again:", self.second)
        form.addRow(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _accept(self) -> None:
        if self.new and len(self.first.text()) < 8:
            self.error.setText("At least 8 characters.")
        elif self.new and self.first.text() != self.second.text():
            self.error.setText("The two passphrases differ.")
        else:
            self.accept()
            return
        self.error.show()

    def passphrase(self) -> str:
        return self.first.text()
