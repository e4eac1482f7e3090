"""What end-to-end encryption costs a client, per message and per device
(docs/performance.rst, "End-to-end encryption"): vodozemac's own costs,
and the client's (``chatclient.e2e``), which adds the envelope, its checks
and keeping what it decrypted in the sealed store.

    python bench/client_costs.py [--runs 5] [--messages 2000] [--devices 50]

Each figure is the median of the runs, in microseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vodozemac  # noqa: E402

from chatclient.e2e.device import Device  # noqa: E402
from chatclient.e2e.megolm import RoomKeys  # noqa: E402
from chatclient.e2e.olm import OlmSessions  # noqa: E402
from chatclient.e2e.store import DeviceStore  # noqa: E402
from chatserver.wire import crypto, e2e  # noqa: E402

BODY = "x" * 200


def timed(per: int, work: Callable[[], None]) -> float:
    """Microseconds per item of ``work`` (which does ``per`` items)."""
    t0 = time.perf_counter()
    work()
    return (time.perf_counter() - t0) * 1e6 / per


def store(directory: Path) -> DeviceStore:
    return DeviceStore(directory, crypto.random_bytes(32))


def one_run(messages: int, devices: int, base: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    # vodozemac alone: Megolm.
    outbound = vodozemac.GroupSession()
    inbound = vodozemac.InboundGroupSession(outbound.session_key)
    plaintext = e2e.canonical_json({"body": BODY, "room": "r", "type": "msg"})
    sealed: list[Any] = []
    figures["megolm_encrypt_us"] = timed(
        messages, lambda: sealed.extend(outbound.encrypt(plaintext) for _ in range(messages))
    )
    figures["megolm_decrypt_us"] = timed(messages, lambda: [inbound.decrypt(m) for m in sealed])
    # The client's path for a room message: checks, decryption, replay
    # mark and the plaintext kept (two sealed store writes).
    sender = Device.new("alice")
    keys = RoomKeys(Device.new("bob"), store(base / "bob"))
    keys_out = RoomKeys(sender, store(base / "alice"))
    keys_out.new_outbound("r", 0)
    share = keys_out.share("r")
    keys.receive(share, "alice", sender.device_id, sender.curve25519, sender.ed25519)
    events = []
    for i in range(messages):
        session_id, ciphertext = keys_out.encrypt("r", BODY)
        events.append(
            {
                "type": "msg",
                "room": "r",
                "from": "alice",
                "stream": "room:r",
                "id": i + 1,
                "e2e": {
                    "algorithm": e2e.MEGOLM,
                    "sender_key": sender.curve25519,
                    "device": sender.device_id,
                    "session_id": session_id,
                    "ciphertext": ciphertext,
                },
            }
        )
    figures["client_room_decrypt_us"] = timed(messages, lambda: [keys.decrypt(event) for event in events])
    # Olm: a session set up with one device (claim's key in hand): the
    # sender's outbound session and first message, the receiver's inbound
    # session from it; and the client's sessions and envelopes around it.
    receivers = [vodozemac.Account() for _ in range(devices)]
    one_time = []
    for account in receivers:
        account.generate_one_time_keys(1)
        one_time.append(next(iter(account.one_time_keys.values())))
    alice = vodozemac.Account()
    first: list[Any] = []

    def set_up() -> None:
        for account, key in zip(receivers, one_time, strict=True):
            first.append(alice.create_outbound_session(account.curve25519_key, key).encrypt(b"x" * 300))

    figures["olm_outbound_session_us"] = timed(devices, set_up)
    figures["olm_inbound_session_us"] = timed(
        devices,
        lambda: [
            account.create_inbound_session(alice.curve25519_key, message.to_pre_key())
            for account, message in zip(receivers, first, strict=True)
        ],
    )
    # The client: signature check of the claimed key, the session kept in
    # the store, and a signed envelope encrypted for the device.
    me = Device.new("alice")
    olm = OlmSessions(me, store(base / "olm"), lambda: None)
    peers = [Device.new("bob") for _ in range(devices)]
    claimed = [(peer, peer.one_time_keys(1)[0]) for peer in peers]

    def client_set_up() -> None:
        for peer, key in claimed:
            content = e2e.one_time_key_content(peer.user, peer.device_id, key["key_id"], key["key"], False)
            assert e2e.signed_by(peer.ed25519, key["signature"], content)
            olm.start(peer.curve25519, key["key"])
            olm.encrypt(
                peer.curve25519,
                olm.envelope("dm", {"body": BODY, "to": "bob"}, "bob", peer.device_id, peer.ed25519),
            )

    figures["client_olm_session_and_first_message_us"] = timed(devices, client_set_up)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="e2e-costs-") as tmp:
            runs.append(one_run(args.messages, args.devices, Path(tmp)))
    medians = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    for name, value in medians.items():
        print(f"{name:44s} {value:10.1f} µs   (runs: {', '.join(f'{r[name]:.1f}' for r in runs)})")
    if args.json is not None:
        args.json.write_text(json.dumps({"medians_us": medians, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
