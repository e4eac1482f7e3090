#!/usr/bin/env python3
"""A handshake flooder for the ``flood_49`` scenario, in a process of its own
(so it does not share the measuring event loop).

From each of the ``--source`` addresses (any of 127/8: Linux routes it
all to ``lo``) it opens connections to the server as fast as it can, with
``--concurrency`` hellos awaiting their answer in all (and at most
``--max-open`` connections open; ``--rate`` caps new connections a
second), and on each sends what an attacker who
wants the server's RSA decryptions sends: a CLIENT_HELLO, then, if the
server answers with SERVER_HELLO, a KEY_EXCHANGE with random ciphertext of
the modulus's size and a junk FINISHED.  It answers a COOKIE as a real
client would (a real attacker would too): the same 32 bytes echoed, then
the very same hello again.  It stops after ``--max-connections`` or
``--seconds``, whichever comes first, and prints one JSON object with its
counts: what the server answered to the hellos, and how many RSA-size
KEY_EXCHANGEs it got to send.

Wire format: one record per line, base64 (RFC 4648, with padding) and LF,
as ``chatserver.wire.channel.encode_line``.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chatserver.wire import channel  # noqa: E402


def line(record: bytes) -> bytes:
    return binascii.b2a_base64(record)  # with the LF


class Counts:
    def __init__(self) -> None:
        self.connections = 0  # opened
        self.connect_errors = 0
        self.hellos = 0  # hellos sent (a resent hello after a cookie counts)
        self.server_hellos = 0
        self.cookies = 0
        self.alerts_busy = 0
        self.alerts_other = 0
        self.key_exchanges = 0  # RSA-size ciphertexts sent
        self.closed_unanswered = 0
        self.timeouts = 0
        self.other_answers = 0
        self.open = 0  # connections open now
        self.most_open = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Flood(asyncio.Protocol):
    """One flooding connection."""

    def __init__(self, counts: Counts, hello: bytes, modulus_bytes: int, done: asyncio.Future) -> None:
        self.counts = counts
        self.hello = hello
        self.modulus_bytes = modulus_bytes
        self.done = done  # set at the first answer that is not a cookie, or the end
        self.buffer = b""
        self.cookie_answered = False
        self.answered = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.counts.open += 1
        self.counts.most_open = max(self.counts.most_open, self.counts.open)
        self.counts.hellos += 1
        transport.write(line(self.hello))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            try:
                record = binascii.a2b_base64(raw)
            except binascii.Error:
                record = b""
            self.record(record)

    def record(self, record: bytes) -> None:
        counts = self.counts
        kind = record[0] if record else -1
        if self.answered:
            return  # the server's FINISHED or ALERT after our junk: done soon
        if kind == channel.COOKIE and not self.cookie_answered:
            counts.cookies += 1
            self.cookie_answered = True
            counts.hellos += 1
            self.transport.write(line(record) + line(self.hello))
            return
        self.answered = True
        if not self.done.done():
            self.done.set_result(None)
        if kind == channel.SERVER_HELLO:
            counts.server_hellos += 1
            junk = os.urandom(self.modulus_bytes)
            self.transport.write(
                line(bytes((channel.KEY_EXCHANGE,)) + len(junk).to_bytes(2, "big") + junk)
                + line(bytes((channel.FINISHED,)) + os.urandom(32))
            )
            counts.key_exchanges += 1
            return  # the server fails the FINISHED (or the decryption) and closes
        if kind == channel.ALERT and len(record) > 1 and record[1] == channel.ALERT_BUSY:
            counts.alerts_busy += 1
        elif kind == channel.ALERT:
            counts.alerts_other += 1
        else:
            counts.other_answers += 1
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.counts.open -= 1
        if not self.answered:
            self.counts.closed_unanswered += 1
        if not self.done.done():
            self.done.set_result(None)


async def flood(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counts = Counts()
    # Real hellos (valid X25519 shares), made beforehand and reused: a
    # flooder would not pay for a key pair per connection either.
    hellos = [channel.ClientHandshake().hello() for _ in range(256)]
    started = time.perf_counter()
    deadline = started + args.seconds
    budget = [args.max_connections]
    sources = args.source
    n = [0]
    next_slot = [started]  # --rate: when the next connection may start

    async def worker(w: int) -> None:
        while budget[0] > 0 and time.perf_counter() < deadline:
            if counts.open >= args.max_open:
                await asyncio.sleep(0.005)
                continue
            if args.rate > 0:
                now = time.perf_counter()
                slot = max(now, next_slot[0])
                next_slot[0] = slot + 1.0 / args.rate
                if slot > now:
                    await asyncio.sleep(slot - now)
            budget[0] -= 1
            k = n[0]
            n[0] += 1
            source = sources[k % len(sources)]
            done: asyncio.Future = loop.create_future()
            protocol = Flood(counts, hellos[k % len(hellos)], args.modulus_bytes, done)
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda protocol=protocol: protocol,  # type: ignore[misc]
                        args.host,
                        args.port,
                        local_addr=(source, 0),
                    ),
                    args.timeout,
                )
            except (OSError, asyncio.TimeoutError):
                counts.connect_errors += 1
                await asyncio.sleep(0.01)
                continue
            counts.connections += 1
            # Once answered, the connection is left to the server (which
            # has our junk KEY_EXCHANGE to decrypt, or closes after its
            # ALERT); a slot is taken only until the answer.  Each is
            # aborted after --timeout seconds at the latest.
            loop.call_later(args.timeout, transport.abort)
            try:
                await asyncio.wait_for(asyncio.shield(done), args.timeout)
            except asyncio.TimeoutError:
                counts.timeouts += 1
                transport.abort()

    await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    elapsed = time.perf_counter() - started  # the flood's time; then the lingering ones end
    linger = time.perf_counter() + args.timeout
    while counts.open > 0 and time.perf_counter() < linger:
        await asyncio.sleep(0.05)
    out: dict[str, Any] = counts.as_dict()
    out.update(
        elapsed_s=elapsed,
        hellos_per_s=counts.hellos / elapsed if elapsed > 0 else 0.0,
        connections_per_s=counts.connections / elapsed if elapsed > 0 else 0.0,
        key_exchanges_per_s=counts.key_exchanges / elapsed if elapsed > 0 else 0.0,
        sources=len(sources),
        concurrency=args.concurrency,
    )
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/flooder.py", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source", action="append", required=True, help="a local address to flood from")
    p.add_argument("--modulus-bytes", type=int, default=384, help="RSA modulus size of the server key")
    p.add_argument("--concurrency", type=int, default=256, help="hellos awaiting an answer, in all")
    p.add_argument("--max-open", type=int, default=4000, help="connections open at once, at most")
    p.add_argument("--max-connections", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=0.0, help="new connections a second at most (0: no cap)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=10.0, help="per connection")
    p.add_argument("--nice", type=int, default=0, help="lower this process's priority by this much")
    p.add_argument("--ready-file", help="written once the flood has started")
    args = p.parse_args(argv)
    if not 1 <= args.concurrency <= 10_000 or not 0 < args.seconds <= 600:
        p.error("--concurrency must be 1..10000 and --seconds 0..600")
    return args


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.nice:
        os.nice(args.nice)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.ready_file:
        Path(args.ready_file).write_text("started\n", encoding="utf-8")
    result = asyncio.run(flood(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
