"""The test side of ``tests.gui_remote``: a real desktop client in a
child process, driven over its stdin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.processes import LineProcess, spawn
from tests.support import PYTHON

try:
    import PyQt6  # noqa: F401
    import pyqtgraph  # noqa: F401
    import qasync  # noqa: F401

    GUI_MISSING = None
except ImportError:  # pragma: no cover - the gui extra is part of make test
    GUI_MISSING = "PyQt6, qasync and pyqtgraph are not installed (pip install -e '.[gui]')"


class RemoteError(AssertionError):
    pass


class Gui:
    def __init__(self, process: LineProcess, home: Path) -> None:
        self.process = process
        self.home = home
        self._ids = 0

    async def _call(self, op: str, code: str, timeout: float = 30.0) -> Any:
        self._ids += 1
        request_id = self._ids
        self.process.write_line(json.dumps({"id": request_id, "op": op, "code": code, "timeout": timeout}))
        found = await self.process.wait_for(rf'^@@\{{"id": {request_id}, ', timeout=timeout + 15)
        reply = json.loads(found.string[2:])
        if not reply["ok"]:
            raise RemoteError(f"{op} {code!r} failed in the GUI:\n{reply['error']}")
        return reply["value"]

    async def eval(self, code: str) -> Any:
        return await self._call("eval", code)

    async def exec(self, code: str) -> None:
        await self._call("exec", code)

    async def wait(self, code: str, timeout: float = 30.0) -> Any:
        """Until ``code`` is true in the GUI; its value."""
        return await self._call("wait", code, timeout)

    async def connect(self, port: int, user: str, password: str, register: bool = True) -> None:
        await self.exec(
            "d = controller.dialog\n"
            "d.host.setText('127.0.0.1')\n"
            "d.user.clear()\n"
            "d.password.clear()\n"
            f"d.port.setValue({port})\n"
            f"type_text(d.user, {user!r})\n"
            f"type_text(d.password, {password!r})\n"
            f"d.register_mode.setChecked({register!r})\n"
            "d.password_again.clear()\n"
            + (f"type_text(d.password_again, {password!r})\n" if register else "")
            + "press(d.password, 'Return')\n"
        )

    async def log_in(self, port: int, user: str, password: str, register: bool = True) -> None:
        """Connect, trust the key on first use, and wait to be online."""
        await self.connect(port, user, password, register)
        await self.wait(
            "controller.trust and controller.trust.dialog and controller.trust.dialog.isVisible()"
        )
        await self.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
        await self.wait("window() and window().client.state == 'online'")
        await self.wait("window().model.current")
        # As a person would have it: the window in front, with the focus
        # (window shortcuts need that).
        await self.exec("window().activateWindow()")
        await self.wait("window().isActiveWindow()")

    async def view_text(self) -> str:
        return await self.eval("window().view.toPlainText()")


def _passphrase_file(home: Path) -> Path:
    path = home / "store-passphrase"
    path.write_text("a store passphrase\n")
    return path


async def start_gui(
    testcase: Any,
    home: Path | None = None,
    theme: str = "light",
    scale: str = "1",
    verbose: bool = False,
    e2e: bool = True,
) -> Gui:
    """``verbose``: the application logs to its stderr (``--verbose``)."""
    home = home or Path(testcase.mktemp()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    argv = [
        PYTHON,
        "-m",
        "tests.gui_remote",
        "--known-hosts",
        str(home / "known_hosts"),
        # Its devices' keys in the test's directory, under a passphrase
        # (no keyring here).
        "--device-dir",
        str(home / "devices"),
        "--store-passphrase-file",
        str(_passphrase_file(home)),
        "--servers",
        str(home / "servers.json"),
        "--theme",
        theme,
    ]
    if verbose:
        argv.append("--verbose")
    if not e2e:
        argv.append("--no-e2e")
    if scale != "1":
        argv = ["/usr/bin/env", f"QT_SCALE_FACTOR={scale}", *argv]
    process = spawn(testcase, "gui", argv)
    await process.wait_for(r"^remote ready", timeout=60)
    return Gui(process, home)
