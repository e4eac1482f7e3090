"""Server key pinning for the desktop client: the same known_hosts file
and rules as the terminal client, with people answering instead of flags.

A key seen for the first time is shown with its fingerprint and pinned
only if the user accepts it (trust on first use), and only once the
server has proven that it holds the key (its FINISHED verified: see
:meth:`Trust.proven`).  A key that differs from
the pinned one is refused before anything depending on it is sent, and a
modal warning names both fingerprints; nothing the user can click in it
connects anyway.  Dialogs are opened with ``open()``, never ``exec()``:
the reactor shares Qt's loop and a nested loop would stall the network.
"""

from __future__ import annotations

import html

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QMessageBox, QWidget
from twisted.internet import defer
from twisted.internet.defer import Deferred

from chatclient.gui.present import present
from chatclient.known_hosts import HostKeyMismatch, KnownHosts


class KeyChanged(Exception):
    """The server presented a key other than the pinned one."""

    def __init__(self, mismatch: HostKeyMismatch) -> None:
        super().__init__(str(mismatch))
        self.mismatch = mismatch


class Trust:
    """A verifier for ``chatclient.session``: ``trust(fingerprint)``, and
    ``trust.proven(fingerprint)`` for after the server's proof."""

    def __init__(self, known_hosts: KnownHosts, server: str, parent: QWidget | None) -> None:
        self.known_hosts = known_hosts
        self.server = server
        self.parent = parent
        #: The dialog on screen (tests and screenshots look at it).
        self.dialog: QMessageBox | None = None
        self.mismatch: HostKeyMismatch | None = None
        #: A new key the user accepted, pinned once the server proves it.
        self.accepted: str | None = None

    def __call__(self, fingerprint: str) -> Deferred[bool]:
        known = self.known_hosts.lookup(self.server)
        if known == fingerprint:
            return defer.succeed(True)
        if known is not None:
            self.mismatch = HostKeyMismatch(self.server, known, fingerprint, str(self.known_hosts.path))
            self._warn_changed(self.mismatch)
            # Refused now, not when the warning is closed: the connection
            # ends at once and nothing at all is sent under that key.
            return defer.fail(KeyChanged(self.mismatch))
        return self._ask_first_use(fingerprint)

    def _ask_first_use(self, fingerprint: str) -> Deferred[bool]:
        box = QMessageBox(self.parent)
        box.setObjectName("first-use")
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("New server key")
        box.setText(f"This is the first connection to <b>{html.escape(self.server)}</b>.")
        box.setInformativeText(
            "Its key fingerprint is:<br><br>"
            f"<tt>{html.escape(fingerprint)}</tt><br><br>"
            "If you can, compare it with the one the server's operator gives "
            "(the server prints it when it starts). Trust this key and remember it?"
        )
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        present(box.button(QMessageBox.StandardButton.Yes)).setText("Trust and connect")
        present(box.button(QMessageBox.StandardButton.No)).setText("Cancel")
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.setTextInteractionFlags(box.textInteractionFlags())
        answer: Deferred[bool] = Deferred()

        def finished(result: int) -> None:
            self.dialog = None
            trusted = result == QMessageBox.StandardButton.Yes.value
            if trusted:
                self.accepted = fingerprint
            if not answer.called:
                answer.callback(trusted)

        box.finished.connect(finished)
        self.dialog = box
        box.open()
        return answer

    def proven(self, fingerprint: str) -> None:
        """The server's FINISHED verified: pin the key the user accepted."""
        if fingerprint == self.accepted:
            self.known_hosts.pin(self.server, fingerprint)
            self.accepted = None

    def _warn_changed(self, mismatch: HostKeyMismatch) -> None:
        # No parent: the window that asked goes away with the refused
        # connection, and the warning must outlive it, blocking the whole
        # application until it is read.
        box = QMessageBox()
        box.setWindowModality(Qt.WindowModality.ApplicationModal)
        box.setObjectName("key-changed")
        box.setIcon(QMessageBox.Icon.Critical)
        box.setWindowTitle("Server key has CHANGED")
        server, expected, actual = (
            html.escape(x) for x in (mismatch.server, mismatch.expected, mismatch.actual)
        )
        box.setText(f"<b>The key of {server} has changed. Nothing was sent.</b>")
        box.setInformativeText(
            f"Pinned fingerprint:<br><tt>{expected}</tt><br><br>"
            f"Presented fingerprint:<br><tt>{actual}</tt><br><br>"
            "Someone may be intercepting the connection, or the server's key was "
            "replaced. If the operator confirms the new key, remove the line for "
            f"<tt>{server}</tt> from <tt>{html.escape(str(self.known_hosts.path))}</tt> and connect again."
        )
        box.setStandardButtons(QMessageBox.StandardButton.Close)
        box.finished.connect(lambda _: setattr(self, "dialog", None))
        self.dialog = box
        box.open()
