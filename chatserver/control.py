"""The control socket: how ``chatserver-admin`` tells a running server
what it changed in the database.

The admin tool changes accounts in the database directly (one
transaction, with its audit row), as it always has; what the server keeps
in memory of them (who is an admin, the rooms' members, the live
sessions) it then learns here.  Each serving process listens on a UNIX
socket in ``<data_dir>/control/`` (``main.sock``, or ``worker-N.sock``),
made 0600 in a 0700 directory: only the server's own user (and root) can
connect, which is the authorisation.  One JSON object per line each way:

* ``{"op": "ping"}`` -> ``{"ok": true, "process": NAME}``
* ``{"op": "account_changed", "user": U, "close": CODE or null,
  "rooms": [ROOM, ...]}``: read U's account again (its server role), end
  its sessions with CLOSE ``CODE`` on every process (the hub carries it to
  the others), and read each ROOM again (a deleted account's
  memberships) here and on every other process.  -> ``{"ok": true}``

* ``{"op": "set_owner", "room": R, "user": U, "actor": A}``: make U the
  owner of R (``ChatService.admin_set_owner``: the members get ``joined``
  and ``role`` events) -> ``{"ok": true, "result": {...}}``
* ``{"op": "delete_room", "room": R, "actor": A}``: delete R (a
  ``deleted`` event, committed with the deletion) -> ``{"ok": true,
  "result": {...}}``

The last two are done by the one process asked (the tool asks one), the
others learn from the hub; a refusal of the chat core (no such room, the
default room ...) is ``{"ok": false, "error": TEXT, "code": CODE}``.
Anything else is answered ``{"ok": false, "error": TEXT}``.  A process
with a shared hub passes what it learns on, so telling one process of a
cluster is enough; the tool tells every socket it finds.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from chatserver.chat import CLOSINGS
from chatserver.wire import validation
from chatserver.wire.errors import Refused

log = Logger(namespace="chatserver.control")

# Twisted's UNIX port compares its path with both b"\0" and "\0" (is it
# abstract?), which ``python -b`` reports every time a socket listens.
warnings.filterwarnings("ignore", category=BytesWarning, module="twisted.internet.unix")

#: The longest request line (a deleted account's rooms: bounded by
#: max_rooms_per_user).
MAX_LINE = 1 << 20
#: The longest path a UNIX socket may have (sun_path, less its NUL).
MAX_PATH = 107
#: The longest actor name of an audit row the tool asks for.
MAX_ACTOR = 200
#: Seconds the admin tool waits for a server's answer.
TIMEOUT = 10.0


def control_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "control"


def socket_path(data_dir: Path, worker_index: int | None) -> Path:
    name = "main.sock" if worker_index is None else f"worker-{worker_index}.sock"
    return control_dir(data_dir) / name


def endpoint_string(path: Path) -> str:
    """The Twisted endpoint of a control socket.  ``lockfile``: a socket
    left by a process that died is replaced, a live one's is refused."""
    escaped = str(path).replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:address={escaped}:mode=600:lockfile=1"


def prepare_dir(data_dir: Path) -> Path:
    directory = control_dir(data_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)  # an existing one keeps its mode otherwise
    return directory


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, chat: Any, process: str) -> None:
        self.chat = chat
        self.process = process

    def lineReceived(self, line: bytes) -> None:
        d = defer.maybeDeferred(self._answer, line)
        d.addErrback(self._failed)
        d.addCallback(self._reply)

    def _failed(self, failure: Any) -> dict[str, Any]:
        if failure.check(Refused):
            return {"ok": False, "error": failure.value.message, "code": failure.value.code}
        if failure.check(ValueError):  # the request's fault (JSONDecodeError, UnicodeError too)
            return {"ok": False, "error": str(failure.value)}
        log.failure("a control request failed", failure)
        return {"ok": False, "error": "internal error (see chatserver.log)"}

    def _reply(self, answer: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(answer).encode("utf-8") + b"\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    @defer.inlineCallbacks
    def _answer(self, line: bytes) -> Any:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "process": self.process}
        if op == "account_changed":
            user, code, rooms = request.get("user"), request.get("close"), request.get("rooms", [])
            if not isinstance(user, str) or not (code is None or isinstance(code, str)):
                raise ValueError("user is a string, close a string or null")
            if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
                raise ValueError("rooms is a list of strings")
            if code is not None and code not in CLOSINGS:
                raise ValueError(f"close is one of {', '.join(sorted(CLOSINGS))}, or null")
            yield self.chat.account_changed(user, code, rooms)
            log.info(
                "control: account {user} changed by the admin tool (close={code}, {count} rooms read again)",
                user=user,
                code=code or "-",
                count=len(rooms),
            )
            return {"ok": True}
        if op in ("set_owner", "delete_room"):
            actor = request.get("actor")
            if not isinstance(actor, str) or not 0 < len(actor) <= MAX_ACTOR or not actor.isprintable():
                raise ValueError(f"actor is a printable string of 1 to {MAX_ACTOR} characters")
            try:
                room = validation.room(request.get("room"))
                user = validation.username(request.get("user")) if op == "set_owner" else None
            except validation.RequestError as e:
                raise ValueError(e.message) from None
            if user is not None:
                result = yield self.chat.admin_set_owner(room, user, actor)
            else:
                result = yield self.chat.admin_delete_room(room, actor)
            log.info("control: {op} {room} by {actor}", op=op, room=room, actor=actor)
            return {"ok": True, "result": result}
        raise ValueError(f"unknown op {op!r}")


class ControlFactory(Factory):
    def __init__(self, chat: Any, process: str) -> None:
        self.chat = chat
        self.process = process

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        protocol = ControlProtocol(self.chat, self.process)
        protocol.factory = self
        return protocol


# --- the admin tool's side (blocking) -------------------------------------


def tell_servers(data_dir: Path, request: dict[str, Any], timeout: float = TIMEOUT) -> list[str]:
    """Send ``request`` to every running server process of ``data_dir``;
    the names of those that confirmed.  A socket nobody listens on (a
    stopped server's) is skipped; a server that answers with an error, or
    not in time, raises RuntimeError (its change is in the database, and
    it applies at the user's next login)."""
    told: list[str] = []
    line = json.dumps(request).encode("utf-8") + b"\n"
    for path in _sockets(data_dir):
        answer = _ask(path, line, timeout)
        if answer is None:
            continue  # no server there now
        if not answer.get("ok"):
            raise RuntimeError(f"the server at {path} refused: {answer.get('error')}")
        told.append(path.stem)
    return told


def ask_server(data_dir: Path, request: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any] | None:
    """Send ``request`` to one running server process of ``data_dir`` (the
    main process first) and return its answer, with ``process`` its name;
    None if none runs.  Raises RuntimeError as ``tell_servers`` does, but
    a refusal (``{"ok": false, ...}``) is returned."""
    line = json.dumps(request).encode("utf-8") + b"\n"
    for path in sorted(_sockets(data_dir), key=lambda p: p.name != "main.sock"):
        answer = _ask(path, line, timeout)
        if answer is not None:
            answer["process"] = path.stem
            return answer
    return None


def ping_all(data_dir: Path, timeout: float = TIMEOUT) -> dict[str, bool]:
    """Every control socket of ``data_dir`` by process name: whether a
    server answers on it (False: a stopped server's socket).  Raises
    RuntimeError for a socket this user may not use, or a server that
    does not answer in time."""
    line = json.dumps({"op": "ping"}).encode("utf-8") + b"\n"
    found = {}
    for path in _sockets(data_dir):
        answer = _ask(path, line, timeout)
        found[path.stem] = bool(answer and answer.get("ok"))
    return found


def _sockets(data_dir: Path) -> list[Path]:
    directory = control_dir(data_dir)
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == ".sock")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RuntimeError(f"cannot read {directory}: {e.strerror}") from None


def _ask(path: Path, line: bytes, timeout: float) -> dict[str, Any] | None:
    """One request and its answer; None if no server listens at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            _connect(sock, path)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except PermissionError:
            raise RuntimeError(
                f"cannot connect to {path}: permission denied (run as the server's user, or root)"
            ) from None
        sock.sendall(line)
        return _read_line(sock, path)
    except OSError as e:
        raise RuntimeError(f"the server at {path} did not answer: {e.strerror or e}") from None
    finally:
        sock.close()


def _connect(sock: socket.socket, path: Path) -> None:
    """Connect to ``path`` even when it is longer than a socket address
    may be (a deep data directory): by its name, from its directory."""
    if len(os.fsencode(path)) <= MAX_PATH:
        sock.connect(str(path))
        return
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        sock.connect(path.name)
    finally:
        os.chdir(here)


def _read_line(sock: socket.socket, path: Path) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError(f"{path} closed the connection")
        data += chunk
        if len(data) > MAX_LINE:
            raise OSError(f"{path} sent too long an answer")
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise OSError(f"{path} sent no JSON object")
    return answer
