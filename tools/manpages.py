"""Man pages for the commands, made from their own ``--help``.

    python tools/manpages.py --out DIR     # DIR/man1/*.1 and DIR/man8/*.8

Each page is what the command prints for ``--help`` (and, for
chatserver-admin, each of its commands' ``--help``), laid out as a man
page: NAME, SYNOPSIS, DESCRIPTION, OPTIONS, COMMANDS, SEE ALSO.  Nothing is
written by hand, so a page cannot drift from the command.  ``make`` writes
them into the virtualenv's share/man, where ``man`` finds them when the
virtualenv's bin is on PATH (man-db maps .../bin to .../share/man).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: name -> (section, one line for NAME, where the help comes from)
PAGES: dict[str, tuple[int, str]] = {
    "chatserver": (8, "the chatserver server (twistd chatserver, python -m chatserver)"),
    "chatserver-admin": (8, "administer a chatserver: accounts, rooms, invites, backups, certificates"),
    "chatclient-cli": (1, "the chatserver terminal client"),
    "chatclient": (1, "the chatserver desktop client"),
}
SEE_ALSO = {
    "chatserver": "chatserver-admin(8), chatclient-cli(1), chatclient(1), twistd(1)",
    "chatserver-admin": "chatserver(8), chatclient-cli(1)",
    "chatclient-cli": "chatclient(1), chatserver(8)",
    "chatclient": "chatclient-cli(1), chatserver(8)",
}
FILES = {
    "chatserver": [
        (
            "/etc/chatserver/chatserver.ini",
            "the configuration, unless --config or $CHATSERVER_CONFIG names one",
        ),
        ("/var/lib/chatserver", "the database and the server key (as a service)"),
        ("/var/log/chatserver", "chatserver.log, connections.log, audit.log (as a service)"),
    ],
    "chatserver-admin": [
        ("/etc/chatserver/chatserver.ini", "the server's configuration, read the same way"),
    ],
    "chatclient-cli": [
        ("~/.config/chatserver/known_hosts", "the fingerprints of the servers this user trusts"),
    ],
    "chatclient": [
        ("~/.config/chatserver/gui_servers.json", "the remembered servers"),
        ("~/.config/chatserver/known_hosts", "the fingerprints of the servers this user trusts"),
    ],
}


def help_of(parse: Callable[[list[str]], object], argv: list[str]) -> str:
    """What ``parse(argv + ["--help"])`` prints (argparse exits after)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parse([*argv, "--help"])
    return out.getvalue()


def server_help() -> str:
    from chatserver import tap

    text = str(tap.Options()).lstrip()
    # Twisted's usage begins with the synopsis alone, its options right
    # under it: laid out as argparse's.
    synopsis, rest = text.split("\n", 1)
    return f"usage: twistd [twistd options] chatserver {synopsis}\n\n{rest}"


def helps(name: str) -> list[tuple[str, str]]:
    """(command words, help text) of a command and of its commands."""
    if name == "chatserver":
        return [("", server_help())]
    if name == "chatserver-admin":
        from chatserver.admin import parse_args as parse
    elif name == "chatclient-cli":
        from chatclient.cli import parse_args as parse
    else:
        from chatclient.gui.app import parse_args as parse
    found: list[tuple[str, str]] = []

    def walk(argv: list[str]) -> None:
        text = help_of(parse, argv)
        found.append((" ".join(argv), text))
        usage = text.split("\n\n", 1)[0]
        choices = re.search(r"\{([a-z0-9,-]+)\}", usage)
        if choices is not None and usage.rstrip().endswith("..."):
            for sub in choices.group(1).split(","):
                walk([*argv, sub])

    walk([])
    return found


# --- help text to roff -----------------------------------------------------------


def roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # A break may come after a comma of {a,b,c}: a long list of commands.
    text = re.sub(r",(?=\S)", ",\\:", text)
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _options(lines: list[str]) -> list[str]:
    """An argparse section's entries, as .TP paragraphs."""
    out: list[str] = []
    entry: list[str] = []
    invocation = ""

    def flush() -> None:
        if invocation:
            out.extend([".TP", f"\\fB{roff(invocation)}\\fR", roff(" ".join(entry)) if entry else ""])

    for line in lines:
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if not body:
            continue
        if indent < 20:  # an entry (or a command of a group) starts
            flush()
            parts = re.split(r"\s{2,}", body, maxsplit=1)
            invocation, entry = parts[0], parts[1:]
        else:
            entry.append(body)
    flush()
    return [line for line in out if line != ""]


def _sections(text: str) -> tuple[str, list[str], list[tuple[str, list[str]]]]:
    """usage, description paragraphs, and (title, lines) of the sections."""
    blocks = text.strip("\n").split("\n\n")
    usage = " ".join(blocks[0].replace("usage:", "", 1).split())
    description: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for block in blocks[1:]:
        lines = block.split("\n")
        if re.match(r"^\S.*:$", lines[0]) and (len(lines) == 1 or lines[1].startswith(" ")):
            sections.append((lines[0][:-1], lines[1:]))
        elif sections and lines[0].startswith(" "):
            sections[-1][1].extend(lines)  # a section's entries after a blank line
        else:
            description.append(" ".join(line.strip() for line in lines))
    return usage, description, sections


def page(name: str, version: str) -> str:
    section, summary = PAGES[name]
    parts = helps(name)
    usage, description, sections = _sections(parts[0][1])
    out = [
        f'.TH {name.upper()} {section} "" "chatserver {version}" "chatserver"',
        # Left-aligned, unhyphenated: option names and paths stay whole.
        ".ad l",
        ".nh",
        ".SH NAME",
        f"{roff(name)} \\- {roff(summary)}",
        ".SH SYNOPSIS",
        f"\\fB{roff(usage)}\\fR",
        ".SH DESCRIPTION",
    ]
    for paragraph in description or [summary]:
        out += [".PP", roff(paragraph)]
    for title, lines in sections:
        out += [f".SH {roff(title.upper())}", *_options(lines)]
    if len(parts) > 1:
        out.append(".SH COMMANDS")
        for words, text in parts[1:]:
            sub_usage, sub_description, sub_sections = _sections(text)
            out += [f".SS {roff(words)}", f"\\fB{roff(sub_usage)}\\fR"]
            for paragraph in sub_description:
                out += [".PP", roff(paragraph)]
            for title, lines in sub_sections:
                entries = _options(lines)
                if entries:
                    out += [".PP", f"\\fI{roff(title)}\\fR", ".RS", *entries, ".RE"]
    out.append(".SH FILES")
    for path, what in FILES[name]:
        out += [".TP", f"\\fI{roff(path)}\\fR", roff(what)]
    out += [".SH SEE ALSO", roff(SEE_ALSO[name])]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="a man directory (man1/ and man8/ are made in it)")
    args = p.parse_args(argv)
    os.environ["COLUMNS"] = "80"  # argparse wraps to the terminal: the same pages everywhere
    from chatserver import __version__

    for name, (section, _) in PAGES.items():
        directory = args.out / f"man{section}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.{section}").write_text(page(name, __version__), encoding="utf-8")
        print(directory / f"{name}.{section}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
