"""End-to-end encryption: the device directory and device inboxes."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from chatserver.chat import ChatError, ChatService, fit
from chatserver.session import Handler, Session
from chatserver.wire import e2e
from chatserver.wire.channel import json_text


class DeviceHandlers:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.requests: dict[str, Handler] = {
            "keys": self.keys,
            "devices": self.devices,
            "claim": self.claim,
            "remove_device": self.remove_device,
            "to_device": self.to_device,
            "to_device_ack": self.to_device_ack,
        }

    @defer.inlineCallbacks
    def keys(self, session: Session, request: dict[str, Any]) -> Any:
        device = request["device"]
        if session.device is not None and session.device != device:
            raise ChatError("bad_field", "this connection is another device", "device")
        user = session.user
        assert user is not None
        # Declaring the connection's device takes its key, not only its id
        # (else any session of the account could take a device's inbox).
        challenge = session.device_challenge if session.device is None else None
        count, added = yield self.chat.devices.upload(
            user,
            device,
            request.get("name"),
            request.get("identity"),
            request.get("one_time_keys", []),
            request.get("fallback_key"),
            challenge,
            request.get("proof"),
        )
        if added:
            self.chat.devices_changed(user)  # its rooms' devices digests are stale
        if session.device is None and not session.closed:
            session.device = device
            # The inbox's backlog follows the answer (it is sent after it:
            # it is produced once the answer has its slot filled).
            self.chat.inboxes.bind(session, device).addErrback(
                lambda f: session.close("internal_error", "inbox unavailable")
            )
        return {"type": "keys", "device": device, "one_time_keys": count}

    def devices(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        if ("users" in request) == ("room" in request):
            raise ChatError("missing_field", "devices needs users or a room (not both)", "users")
        extra: dict[str, Any] = {}
        if "room" in request:
            room = self.chat.room_of(session, request["room"])
            users = sorted(room.members)
            # Where the room's stream was when its members were taken: its
            # later events move the membership, in order (the client's
            # check of a message's sender needs both).
            extra["at"] = self.chat.last_ids.get(room.stream, 0)
        else:
            users = sorted(set(request["users"]))
        after = request.get("after")
        # A page in name order, of whole users: a room's members, with up
        # to 20 devices each, need not fit in one record.
        remaining = [u for u in users if after is None or u > after]
        wanted = remaining[: e2e.MAX_LISTED]
        more = len(remaining) > len(wanted)

        def page(found: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
            texts = [json_text(user) + ":" + json_text(found[user]) for user in wanted]
            count = fit(texts, session.answer_budget())
            listed = {user: found[user] for user in wanted[:count]}
            return {"type": "devices", "devices": listed, "more": more or count < len(wanted), **extra}

        return self.chat.devices.listing(wanted).addCallback(page)

    def claim(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.devices.claim(request["devices"]).addCallback(
            lambda keys: {"type": "claimed", "keys": keys}
        )

    @defer.inlineCallbacks
    def remove_device(self, session: Session, request: dict[str, Any]) -> Any:
        user = session.user
        assert user is not None
        device = request["device"]
        audit = self.chat.audit_of(user, "device_remove", None, user, device)
        removed = yield self.chat.devices.remove(user, device, audit.row())
        if not removed:
            raise ChatError("no_such_device", "you have no such device", "device")
        audit.logged(None)
        self.chat.device_removed(user, device, keep=session)
        if session.device == device:
            session.device = None
            self.chat.inboxes.unbind(session, device)
        return {"type": "device_removed", "device": device}

    @defer.inlineCallbacks
    def to_device(self, session: Session, request: dict[str, Any]) -> Any:
        if session.device is None:
            raise ChatError("no_device", "declare this connection's device (keys) first")
        user = session.user
        assert user is not None
        messages = request["messages"]
        found = yield self.chat.devices.keys_of(sorted({m["user"] for m in messages}))
        existing = {(u, d) for u, devices in found.items() for d in devices}
        sent, full = yield self.chat.inboxes.send(user, session.device, messages, existing)
        missing = [
            {"user": m["user"], "device": m["device"]}
            for m in messages
            if (m["user"], m["device"]) not in existing
        ]
        refused = [{"user": m["user"], "device": m["device"]} for m in full]
        return {"type": "to_device_sent", "sent": len(sent), "missing": missing, "full": refused}

    def to_device_ack(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        if session.device is None:
            raise ChatError("no_device", "declare this connection's device (keys) first")
        user = session.user
        assert user is not None
        d = self.chat.inboxes.acknowledge(user, session.device, request["upto"])
        return d.addCallback(lambda _: {"type": "to_device_acked", "upto": request["upto"]})
