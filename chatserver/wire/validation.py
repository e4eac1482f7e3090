"""Schemas of the requests a client may send, and the checks behind them.

A request that fails its schema gets an ``error`` event naming the request
type and field; the connection stays usable.  The rules here are also the
reference for the "Application events" section of ``docs/protocol.rst``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from chatserver.wire import e2e
from chatserver.wire.errors import Refused

USERNAME = re.compile(r"[a-z0-9][a-z0-9_-]{1,31}")
ROOM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# C0 controls other than tab and newline, DEL, and C1 controls: they can
# rewrite a terminal's screen, so no body may carry them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_REF = 64
MAX_SAFE_INTEGER = (1 << 53) - 1


class RequestError(Refused):
    """A request is malformed; ``code`` and ``field`` go to the client."""


Check = Callable[[Any, "Limits"], Any]


class Limits:
    """The configured limits that checks depend on."""

    __slots__ = ("max_body_length",)

    def __init__(self, max_body_length: int) -> None:
        self.max_body_length = max_body_length


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RequestError("bad_field", f"{field} must be a string", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("bad_field", f"{field} is not valid Unicode", field) from None
    return value


def username(value: Any, limits: Limits | None = None) -> str:
    name = _string(value, "user")
    if name.isascii():
        name = name.lower()
    if not USERNAME.fullmatch(name):
        raise RequestError(
            "bad_username",
            "usernames are 2-32 characters of a-z, 0-9, _ and -, starting with a letter or digit",
            "user",
        )
    return name


def _password(minimum: int) -> Callable[[Any, Limits | None], str]:
    def check(value: Any, limits: Limits | None = None) -> str:
        password = _string(value, "password")
        if not minimum <= len(password) <= MAX_PASSWORD:
            raise RequestError(
                "bad_password",
                f"passwords are {minimum} to {MAX_PASSWORD} characters",
                "password",
            )
        return password

    return check


_new_password = _password(MIN_PASSWORD)


def new_password(value: Any, limits: Limits | None = None) -> str:
    """A password for a new account (registration, the admin tool)."""
    return _new_password(value, limits)


def room(value: Any, limits: Limits | None = None) -> str:
    name = _string(value, "room")
    if not ROOM_NAME.fullmatch(name):
        raise RequestError("bad_room", "room names are 1-32 characters of a-z, 0-9, _ and -", "room")
    return name


def body(value: Any, limits: Limits) -> str:
    text = _string(value, "body")
    if not text.strip():
        raise RequestError("bad_body", "message body is empty", "body")
    if len(text) > limits.max_body_length:
        raise RequestError(
            "bad_body", f"message body is longer than {limits.max_body_length} characters", "body"
        )
    if _CONTROL.search(text):
        raise RequestError("bad_body", "message body contains control characters", "body")
    return text


def ref(value: Any, limits: Limits | None = None) -> Any:
    """A client's correlation id, echoed back in the answer."""
    if isinstance(value, bool):
        raise RequestError("bad_field", "ref must be a string or an integer", "ref")
    if isinstance(value, int) and 0 <= value <= MAX_SAFE_INTEGER:
        return value
    if isinstance(value, str) and len(value) <= MAX_REF:
        return value
    raise RequestError("bad_field", "ref must be a short string or a non-negative integer", "ref")


def token(value: Any, limits: Limits | None = None) -> str:
    text = _string(value, "token")
    if not 16 <= len(text) <= 128 or not text.isascii():
        raise RequestError("bad_field", "token is not a session token", "token")
    return text


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]{1,128}")


_TXN_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def txn_id(value: Any, limits: Limits | None = None) -> str:
    """A client's id for one message it sends (resent with the same id)."""
    text = _string(value, "txn_id")
    if not _TXN_ID.fullmatch(text):
        raise RequestError("bad_field", "txn_id is 8 to 64 letters, digits, - or _", "txn_id")
    return text


def invite_code(value: Any, limits: Limits | None = None) -> str:
    """An invite code's form only: whether it is usable is the server's
    business (``invite_invalid``)."""
    text = _string(value, "invite")
    if not _PRINTABLE_ASCII.fullmatch(text):
        raise RequestError("bad_field", "invite is 1 to 128 printable ASCII characters", "invite")
    return text


def stream(value: Any, limits: Limits | None = None) -> str:
    text = _string(value, "stream")
    parts = text.split(":")
    ok = (len(parts) == 2 and parts[0] == "room" and ROOM_NAME.fullmatch(parts[1])) or (
        len(parts) == 3 and parts[0] == "dm" and all(USERNAME.fullmatch(p) for p in parts[1:])
    )
    if not ok:
        raise RequestError("bad_field", "stream is room:NAME or dm:USER:USER", "stream")
    return text


def event_id(name: str) -> Check:
    def check(value: Any, limits: Limits) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INTEGER:
            raise RequestError("bad_field", f"{name} must be a non-negative integer", name)
        return value

    return check


def _list_limit(value: Any, limits: Limits | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 200:
        raise RequestError("bad_field", "limit must be an integer from 1 to 200", "limit")
    return value


def count(value: Any, limits: Limits | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise RequestError("bad_field", "limit must be an integer from 1 to 1000", "limit")
    return value


def duration(value: Any, limits: Limits | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 10 * 365 * 86400:
        raise RequestError("bad_field", "duration is a number of seconds, at most ten years", "duration")
    return float(value)


def _short_text(field: str, maximum: int) -> Check:
    def check(value: Any, limits: Limits) -> str:
        text = _string(value, field)
        if len(text) > maximum or _CONTROL.search(text):
            raise RequestError(
                "bad_field", f"{field} is at most {maximum} characters, no control characters", field
            )
        return text

    return check


def _choice(field: str, choices: tuple[str, ...]) -> Check:
    def check(value: Any, limits: Limits) -> str:
        if value not in choices:
            raise RequestError("bad_field", f"{field} is one of " + ", ".join(choices), field)
        return str(value)

    return check


def _held_in(check: Check, field: str) -> Check:
    """``check`` for a value held in the member ``field``: its errors name
    that member (a username in ``to``, a room name in ``after`` ...)."""

    def renamed(value: Any, limits: Limits | None = None) -> Any:
        try:
            return check(value, limits)  # type: ignore[arg-type]
        except RequestError as e:
            raise RequestError(e.code, e.message, field) from None

    return renamed


_target = _held_in(username, "user")
_recipient = _held_in(username, "to")
_after_room = _held_in(room, "after")
_after_user = _held_in(username, "after")


_REASON = (_short_text("reason", 200), False)


def _flag(field: str) -> Check:
    def check(value: Any, limits: Limits) -> bool:
        if not isinstance(value, bool):
            raise RequestError("bad_field", f"{field} is true or false", field)
        return value

    return check


# --- end-to-end encryption: the device directory and the ciphertexts --------


def _bad(field: str, what: str) -> RequestError:
    return RequestError("bad_field", f"{field}: {what}", field)


def _object(value: Any, field: str, members: dict[str, bool]) -> dict[str, Any]:
    """A JSON object with exactly these members (name -> required)."""
    if not isinstance(value, dict):
        raise _bad(field, "must be an object")
    for name, required in members.items():
        if required and name not in value:
            raise _bad(field, f"needs the member {name!r}")
    extra = value.keys() - members.keys()
    if extra:
        raise _bad(field, f"has no member {sorted(extra)[0][:40]!r}")
    return value


def _key(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) != e2e.KEY_LENGTH or not e2e.B64.fullmatch(value):
        raise _bad(field, "a key is 43 characters of unpadded base64")
    return value


def _signature(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) != e2e.SIGNATURE_LENGTH or not e2e.B64.fullmatch(value):
        raise _bad(field, "a signature is 86 characters of unpadded base64")
    return value


def _ciphertext(value: Any, field: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > e2e.MAX_CIPHERTEXT
        or not e2e.B64.fullmatch(value)
    ):
        raise _bad(field, f"ciphertext is 1 to {e2e.MAX_CIPHERTEXT} characters of unpadded base64")
    return value


def e2e_device_id(value: Any, limits: Limits | None = None, field: str = "device") -> str:
    if not isinstance(value, str) or not e2e.DEVICE_ID.fullmatch(value):
        raise _bad(field, "a device id is 1 to 32 letters, digits, - or _")
    return value


def device_name(value: Any, limits: Limits | None = None) -> str:
    if (
        not isinstance(value, str)
        or len(value) > e2e.MAX_DEVICE_NAME
        or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
    ):
        raise _bad("name", f"a device name is at most {e2e.MAX_DEVICE_NAME} characters, no controls")
    return value


def identity(value: Any, limits: Limits | None = None) -> dict[str, str]:
    """A device's identity keys with its signature (checked against the
    user and device later, by who knows them)."""
    value = _object(value, "identity", {"curve25519": True, "ed25519": True, "signature": True})
    return {
        "curve25519": _key(value["curve25519"], "identity"),
        "ed25519": _key(value["ed25519"], "identity"),
        "signature": _signature(value["signature"], "identity"),
    }


def proof(value: Any, limits: Limits | None = None) -> str:
    """The signature of ``keys`` over the welcome's device challenge."""
    return _signature(value, "proof")


def _signed_key(value: Any, field: str) -> dict[str, str]:
    value = _object(value, field, {"key_id": True, "key": True, "signature": True})
    if not isinstance(value["key_id"], str) or not e2e.KEY_ID.fullmatch(value["key_id"]):
        raise _bad(field, "a key id is 1 to 32 characters of base64")
    return {
        "key_id": value["key_id"],
        "key": _key(value["key"], field),
        "signature": _signature(value["signature"], field),
    }


def one_time_keys(value: Any, limits: Limits | None = None) -> list[dict[str, str]]:
    if not isinstance(value, list) or len(value) > e2e.MAX_ONE_TIME_KEYS:
        raise _bad("one_time_keys", f"a list of at most {e2e.MAX_ONE_TIME_KEYS} keys")
    keys = [_signed_key(item, "one_time_keys") for item in value]
    if len({key["key_id"] for key in keys}) != len(keys):
        raise _bad("one_time_keys", "two keys have the same id")
    return keys


def fallback_key(value: Any, limits: Limits | None = None) -> dict[str, str]:
    return _signed_key(value, "fallback_key")


def _user_in(value: Any, field: str) -> str:
    try:
        return username(value)
    except RequestError as e:
        raise RequestError(e.code, e.message, field) from None


def users(value: Any, limits: Limits | None = None) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= e2e.MAX_LISTED:
        raise _bad("users", f"a list of 1 to {e2e.MAX_LISTED} usernames")
    names = [_user_in(item, "users") for item in value]
    return list(dict.fromkeys(names))


def claims(value: Any, limits: Limits | None = None) -> list[tuple[str, str]]:
    """The devices whose one-time keys are claimed: [{"user", "device"}]."""
    if not isinstance(value, list) or not 1 <= len(value) <= e2e.MAX_LISTED:
        raise _bad("devices", f"a list of 1 to {e2e.MAX_LISTED} devices")
    wanted = []
    for item in value:
        item = _object(item, "devices", {"user": True, "device": True})
        wanted.append((_user_in(item["user"], "devices"), e2e_device_id(item["device"], field="devices")))
    return list(dict.fromkeys(wanted))


def to_device_messages(value: Any, limits: Limits | None = None) -> list[dict[str, Any]]:
    """[{"user", "device", "body": object}], each body opaque to the server."""
    if not isinstance(value, list) or not 1 <= len(value) <= e2e.MAX_LISTED:
        raise _bad("messages", f"a list of 1 to {e2e.MAX_LISTED} messages")
    messages = []
    for item in value:
        item = _object(item, "messages", {"user": True, "device": True, "body": True})
        body = item["body"]
        if not isinstance(body, dict) or len(e2e.canonical_json(body)) > e2e.MAX_TO_DEVICE_BODY:
            raise _bad("messages", f"a body is an object of at most {e2e.MAX_TO_DEVICE_BODY} bytes")
        messages.append(
            {
                "user": _user_in(item["user"], "messages"),
                "device": e2e_device_id(item["device"], field="messages"),
                "body": body,
            }
        )
    return messages


def olm_payload(value: Any, limits: Limits | None = None) -> dict[str, Any]:
    """A direct message's ``e2e``: one Olm ciphertext per device,
    ``ciphertext`` {user: {device: {"type": 0 | 1, "body": base64}}}."""
    value = _object(value, "e2e", {"algorithm": True, "sender_key": True, "device": True, "ciphertext": True})
    if value["algorithm"] != e2e.OLM:
        raise _bad("e2e", f"the algorithm of a direct message is {e2e.OLM!r}")
    per_user = value["ciphertext"]
    if not isinstance(per_user, dict) or not per_user:
        raise _bad("e2e", "ciphertext is an object of users")
    total = 0
    clean: dict[str, dict[str, dict[str, Any]]] = {}
    for user, per_device in per_user.items():
        name = _user_in(user, "e2e")
        if name != user or not isinstance(per_device, dict) or not per_device:
            raise _bad("e2e", "ciphertext maps usernames to objects of devices")
        for device, message in per_device.items():
            e2e_device_id(device, field="e2e")
            message = _object(message, "e2e", {"type": True, "body": True})
            if message["type"] not in (0, 1) or isinstance(message["type"], bool):
                raise _bad("e2e", "an Olm message's type is 0 (pre-key) or 1")
            total += len(_ciphertext(message["body"], "e2e"))
            clean.setdefault(name, {})[device] = {"type": message["type"], "body": message["body"]}
    if total > e2e.MAX_CIPHERTEXT:
        raise _bad("e2e", f"more than {e2e.MAX_CIPHERTEXT} characters of ciphertext")
    return {
        "algorithm": e2e.OLM,
        "sender_key": _key(value["sender_key"], "e2e"),
        "device": e2e_device_id(value["device"], field="e2e"),
        "ciphertext": clean,
    }


def megolm_payload(value: Any, limits: Limits | None = None) -> dict[str, Any]:
    """A room message's ``e2e``: one Megolm ciphertext, and the digest of
    the devices its session key went to."""
    value = _object(
        value,
        "e2e",
        {
            "algorithm": True,
            "sender_key": True,
            "device": True,
            "session_id": True,
            "ciphertext": True,
            "devices": True,
        },
    )
    if value["algorithm"] != e2e.MEGOLM:
        raise _bad("e2e", f"the algorithm of a room message is {e2e.MEGOLM!r}")
    if not isinstance(value["devices"], str) or not e2e.DIGEST.fullmatch(value["devices"]):
        raise _bad("e2e", "devices is a SHA-256 digest in lowercase hex")
    return {
        "algorithm": e2e.MEGOLM,
        "sender_key": _key(value["sender_key"], "e2e"),
        "device": e2e_device_id(value["device"], field="e2e"),
        "session_id": _key(value["session_id"], "e2e"),
        "ciphertext": _ciphertext(value["ciphertext"], "e2e"),
        "devices": value["devices"],
    }


# type -> {field: (check, required)}
REQUESTS: dict[str, dict[str, tuple[Check, bool]]] = {
    "register": {
        "user": (username, True),
        "password": (new_password, True),
        "invite": (invite_code, False),
    },
    "login": {"user": (username, True), "password": (_password(1), False), "token": (token, False)},
    "logout": {},
    "ping": {},
    "say": {
        "room": (room, True),
        "body": (body, False),
        "e2e": (megolm_payload, False),
        "txn_id": (txn_id, False),
        "resend": (_flag("resend"), False),
    },
    "who": {"room": (room, True), "after": (_after_user, False), "limit": (_list_limit, False)},
    "create": {
        "room": (room, True),
        "kind": (_choice("kind", ("public", "private", "readonly")), False),
        "topic": (_short_text("topic", 300), False),
        "encrypted": (_flag("encrypted"), False),
    },
    "join": {"room": (room, True)},
    "part": {"room": (room, True)},
    "rooms": {"after": (_after_room, False), "limit": (_list_limit, False)},
    "topic": {"room": (room, True), "topic": (_short_text("topic", 300), True)},
    "invite": {"room": (room, True), "user": (_target, True)},
    "dm": {
        "to": (_recipient, True),
        "body": (body, False),
        "e2e": (olm_payload, False),
        "txn_id": (txn_id, False),
        "resend": (_flag("resend"), False),
    },
    "history": {
        "stream": (stream, True),
        "after": (event_id("after"), False),
        "before": (event_id("before"), False),
        "limit": (count, False),
    },
    "kick": {"room": (room, True), "user": (_target, True), "reason": _REASON},
    "ban": {"room": (room, True), "user": (_target, True), "duration": (duration, False), "reason": _REASON},
    "unban": {"room": (room, True), "user": (_target, True)},
    "mute": {"room": (room, True), "user": (_target, True), "duration": (duration, False), "reason": _REASON},
    "unmute": {"room": (room, True), "user": (_target, True)},
    "op": {"room": (room, True), "user": (_target, True)},
    "deop": {"room": (room, True), "user": (_target, True)},
    "info": {},
    "stats": {"subscribe": (_flag("subscribe"), False)},
    "disable": {"user": (_target, True)},
    "enable": {"user": (_target, True)},
    # End-to-end encryption: the device directory and device inboxes.
    "keys": {
        "device": (e2e_device_id, True),
        "name": (device_name, False),
        "identity": (identity, False),
        "one_time_keys": (one_time_keys, False),
        "fallback_key": (fallback_key, False),
        "proof": (proof, False),
    },
    "devices": {"users": (users, False), "room": (room, False), "after": (_after_user, False)},
    "claim": {"devices": (claims, True)},
    "remove_device": {"device": (e2e_device_id, True)},
    "to_device": {"messages": (to_device_messages, True)},
    "to_device_ack": {"upto": (event_id("upto"), True)},
}

#: Requests accepted before login.
PRE_LOGIN = frozenset(("register", "login", "ping"))


#: Each request's members, "type" and "ref" included (made once: validate
#: runs for every request).
_ALLOWED: dict[str, frozenset[str]] = {
    kind: frozenset(schema) | {"type", "ref"} for kind, schema in REQUESTS.items()
}


def validate(event: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Return a cleaned copy of ``event`` or raise :class:`RequestError`."""
    kind = event["type"]
    clean: dict[str, Any] = {"type": kind}
    # The spec's order: ``ref`` first (so that every later error can
    # carry it), then the type, then the members.
    if "ref" in event:
        clean["ref"] = ref(event["ref"])
    schema = REQUESTS.get(kind)
    if schema is None:
        raise RequestError("unknown_type", f"unknown request type {kind[:40]!r}", "type")
    for field, (check, required) in schema.items():
        if field in event:
            clean[field] = check(event[field], limits)
        elif required:
            raise RequestError("missing_field", f"{kind} needs the field {field!r}", field)
    extra = event.keys() - _ALLOWED[kind]
    if extra:
        name = sorted(extra)[0]
        raise RequestError("unknown_field", f"{kind} has no field {name[:40]!r}", name[:40])
    return clean
