"""The database schemas: SQLite's numbered files here, PostgreSQL's in
``postgres/``, with the same numbers for the same step."""

from __future__ import annotations

import importlib.resources
import re

_MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def numbered(package: str) -> list[tuple[int, str]]:
    """(version, SQL) of every ``NNNN_name.sql`` file in ``package``, in order."""
    found = []
    for entry in importlib.resources.files(package).iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return sorted(found)
