"""Host lists: ``HOST[:PORT][,HOST[:PORT]...]``, the nodes of one deployment
(see chatclient/endpoints.py).  No Twisted here: the GUI's dialogs check
what is typed with it."""

from __future__ import annotations


class BadHostList(ValueError):
    """The text is not a list of HOST[:PORT] (the message says where)."""


def parse_hosts(text: str, default_port: int) -> list[tuple[str, int]]:
    """``"h1:7070, h2, [::1]:7071"`` -> [(host, port), ...] (``default_port``
    where an entry has none).  Raises BadHostList."""
    found: list[tuple[str, int]] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            raise BadHostList(f"empty entry in host list {text!r}")
        port: int | str = default_port
        if entry.startswith("["):  # [IPv6]:port
            close = entry.find("]")
            if close < 0:
                raise BadHostList(f"{entry!r}: no closing ]")
            host, rest = entry[1:close], entry[close + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise BadHostList(f"{entry!r}: expected :PORT after ]")
                port = rest[1:]
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        else:
            host = entry  # a name, an IPv4 address, or a bare IPv6 address
        try:
            number = int(port)
        except ValueError:
            raise BadHostList(f"{entry!r}: the port must be a number") from None
        if not host or not 1 <= number <= 65535:
            raise BadHostList(f"{entry!r}: needs a host and a port from 1 to 65535")
        found.append((host, number))
    return found


def format_hosts(hosts: list[tuple[str, int]]) -> str:
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in hosts)
