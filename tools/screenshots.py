"""``make screenshots``: pictures of the desktop client for the README.

Starts a real server (``twistd chatserver``, monitor on), fills it with a small, real chat
through the client library (several users, rooms, a direct message, a
moderator), then drives the real desktop client offscreen
(``tests.gui_remote``) and saves ``docs/screenshots/*.png``: the connect
dialog, the main window (light and dark), the statistics panel, an
end-to-end encrypted room and the verification dialog.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task, utils  # noqa: E402

from tests.gui_support import start_gui  # noqa: E402
from tests.processes import start_twistd, stop_twistd  # noqa: E402
from tests.support import PASSWORD, PYTHON, python_env  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


class Server:
    def __init__(self, port: int) -> None:
        self.port = port


class Scope:
    """What ``start_gui`` and ``spawn`` need of a test case."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="chat-shots-"))
        self.cleanups: list[Callable[[], Any]] = []
        self.count = 0

    def mktemp(self) -> str:
        self.count += 1
        return str(self.base / f"t{self.count}")

    def addCleanup(self, f: Callable[..., Any], *args: Any) -> None:  # noqa: N802 (trial's name)
        self.cleanups.append(lambda: f(*args))

    async def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                await defer.maybeDeferred(cleanup)
            except Exception as e:  # a screenshot run reports, it does not stop
                print("cleanup:", e)


async def session_for(scope: Scope, server: Server, user: str, register: bool = True) -> Any:
    from twisted.internet import reactor

    from chatclient.session import connect

    session = await connect(
        reactor,
        f"tcp:host=127.0.0.1:port={server.port}",
        lambda fingerprint: True,
    )
    if register:
        await session.register(user, PASSWORD)
    else:
        await session.login(user, PASSWORD)
    scope.addCleanup(session.close)
    return session


async def pause(seconds: float) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


async def populate(scope: Scope, server: Server) -> dict[str, Any]:
    bob = await session_for(scope, server, "bob")
    carol = await session_for(scope, server, "carol")
    dave = await session_for(scope, server, "dave")
    await dave.close()  # a member who is offline
    erin = await session_for(scope, server, "erin")
    await bob.request({"type": "create", "room": "design", "kind": "public", "topic": "Mock-ups and reviews"})
    await carol.request({"type": "join", "room": "design"})
    await bob.request({"type": "create", "room": "ops", "kind": "private", "topic": "On call"})
    await bob.request({"type": "create", "room": "announcements", "kind": "readonly", "topic": "News"})
    alice = await session_for(scope, server, "alice", register=False)
    await alice.request({"type": "join", "room": "design"})
    await bob.request({"type": "invite", "room": "ops", "user": "alice"})
    await alice.request({"type": "join", "room": "ops"})
    await alice.close()
    lobby = [
        (bob, "Morning all! The new build is on the staging server."),
        (carol, "Nice. Did the reconnect fix make it in?"),
        (bob, "It did: a server restart now resumes with no gap, and no duplicates."),
        (erin, "Release notes are here: https://example.org/chatserver/releases/0.5"),
        (carol, "Reading them now.\nThe key pinning section is much clearer."),
    ]
    for who, body in lobby:
        await who.say("lobby", body)
        await pause(0.05)
    return {"bob": bob, "carol": carol, "erin": erin}


async def shoot(scope: Scope) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = scope.base / "server"
    (base / "data").mkdir(parents=True)
    (base / "chatserver.ini").write_text("[monitor]\ninterval = 1\n")
    (base / "password").write_text(PASSWORD + "\n")
    # The admin account, made with the admin tool as an operator would.
    admin = await utils.getProcessOutputAndValue(
        PYTHON,
        [
            "-m",
            "chatserver.admin",
            "--data-dir",
            str(base / "data"),
            "--create",  # a new installation: the tool makes no database unless told to
            "add-user",
            "alice",
            "--admin",
            "--password-file",
            str(base / "password"),
        ],
        env=python_env(),
    )
    assert admin[2] == 0, admin
    twistd, port, _ = await start_twistd(scope, base, "--config", str(base / "chatserver.ini"))
    scope.addCleanup(stop_twistd, twistd)
    server = Server(port)
    people = await populate(scope, server)
    bob, carol, erin = people["bob"], people["carol"], people["erin"]

    home = scope.base / "gui"
    home.mkdir()
    (home / "servers.json").write_text(
        json.dumps({"servers": [{"host": "127.0.0.1", "port": server.port, "user": "alice"}]})
    )
    gui = await start_gui(scope, home, theme="light")
    await gui.exec("d = controller.dialog\nd.resize(d.sizeHint())\ntype_text(d.password, 'password')")
    await pause(0.3)
    print("connect dialog:", await gui.eval(f"shot(controller.dialog, {str(OUT / 'connect-dialog.png')!r})"))
    await gui.exec("d = controller.dialog\nd.password.clear()")
    await gui.connect(server.port, "alice", PASSWORD, register=False)
    await gui.wait("controller.trust.dialog")
    await gui.exec("click(controller.trust.dialog.button(QMessageBox.StandardButton.Yes))")
    await gui.wait("window().client.state == 'online'")
    await gui.wait("'release notes' in window().view.toPlainText().lower()")
    await gui.exec("window().resize(1180, 720)")
    await gui.exec(
        "type_text(window().input, 'Thanks @bob, the catch-up after my laptop slept was seamless.')"
    )
    await gui.exec("press(window().input, 'Return')")
    await bob.request({"type": "op", "room": "design", "user": "carol"})
    await carol.say("design", "Here is the new room list mock-up, @alice what do you think?")
    await bob.say("design", "Unread counts look good.")
    await bob.request(
        {"type": "dm", "to": "alice", "body": "Can you look at the ops alerts when you have a minute?"}
    )
    await erin.say("lobby", "Welcome back, alice!")
    await gui.wait("'Welcome back' in window().view.toPlainText()")
    await gui.wait("window().members and len(window().members) >= 4")
    await gui.exec("type_text(window().input, 'Typing a reply…')")
    await pause(0.5)
    print("main window:", await gui.eval(f"shot(window(), {str(OUT / 'main-window.png')!r})"))

    await gui.exec("window().toggle_stats()")
    for i in range(12):
        await bob.say("lobby", f"load {i}")
        await pause(0.5)
    await gui.wait("window().stats_panel.points_added >= 5")
    await gui.exec("window().stats_dock.setFloating(True)\nwindow().stats_dock.resize(1000, 760)\n")
    await pause(0.5)
    print("stats panel:", await gui.eval(f"shot(window().stats_dock, {str(OUT / 'stats-panel.png')!r})"))

    dark = await start_gui(scope, scope.base / "gui-dark", theme="dark")
    (scope.base / "gui-dark" / "known_hosts").write_text((home / "known_hosts").read_text())
    await dark.connect(server.port, "alice", PASSWORD, register=False)
    await dark.wait("window() and window().client.state == 'online'")
    await dark.wait("'Welcome back' in window().view.toPlainText()")
    await dark.exec("window().resize(1180, 720)\nwindow().open_conversation('room:design')")
    await dark.wait("'Unread counts' in window().view.toPlainText()")
    await dark.wait("window().members and len(window().members) >= 3")
    await pause(0.5)
    print("main window, dark:", await dark.eval(f"shot(window(), {str(OUT / 'main-window-dark.png')!r})"))
    await shoot_e2e(scope, server, gui)


async def shoot_e2e(scope: Scope, server: Server, gui: Any) -> None:
    """An encrypted room, and verifying a device by its emoji."""
    from tests.e2e_support import e2e_client

    frank, frank_e2e, frank_events = await e2e_client(scope, server, "frank", scope.base / "frank")  # type: ignore[arg-type]
    await frank_e2e.devices_of(["alice"])
    await frank.request({"type": "create", "room": "board", "encrypted": True, "topic": "Acquisition talks"})
    await frank.request({"type": "invite", "room": "board", "user": "alice"})
    await gui.exec("window().join('board')")
    await gui.wait("window().model.current == 'room:board'")
    # As after a first conversation: alice's device knows frank's.
    await gui.exec("window().bridge.e2e.devices_of(['frank'])")
    await gui.wait("window().bridge.e2e.book.known('frank')")
    await gui.exec("window().input.clear()")
    await frank.say("board", "The term sheet is in; nothing leaves this room.")
    await gui.wait("'term sheet' in window().view.toPlainText()")
    await gui.exec("type_text(window().input, 'Understood. Only our devices can read this.')")
    await gui.exec("press(window().input, 'Return')")
    await frank.say("board", "Exactly: the server stores ciphertext only.")
    await gui.wait("'ciphertext only' in window().view.toPlainText()")
    await pause(0.5)
    print("encrypted room:", await gui.eval(f"shot(window(), {str(OUT / 'encrypted-room.png')!r})"))
    await gui.exec("window().verify('frank', None)")
    await gui.wait("window().verification is not None and window().verification.emoji")
    await gui.exec("window().verification.adjustSize()")
    await pause(0.5)
    print(
        "verification:",
        await gui.eval(f"shot(window().verification, {str(OUT / 'verification-dialog.png')!r})"),
    )
    del frank_events


def main() -> None:
    async def run(reactor: Any) -> None:
        scope = Scope()
        try:
            await shoot(scope)
        finally:
            await scope.close()

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
