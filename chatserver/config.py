"""Settings: parsed once from ``etc/chatserver.ini`` into a frozen object.

Every setting has an embedded default, so the server runs with no file at
all.  Command-line options override the file.  Relative directories in the
file are relative to the file's directory; on the command line, and the
defaults, to the working directory.  A bad value fails at start-up
with a message naming the file, section, key and what was wrong.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from twisted.internet import endpoints

from chatserver import twisted_internals

__all__ = ["ConfigError", "Settings", "load_settings"]


class ConfigError(Exception):
    """A setting is missing, unknown or out of range."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # [server]
    endpoint: str = "tcp:7070:interface=127.0.0.1:backlog=4096"
    data_dir: str = "var/lib"
    log_dir: str = "var/log"
    max_line_length: int = 65536
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    #: Threads per kind of crypto work; 0: one per CPU this process may use.
    crypto_threads: int = 0
    max_pending_crypto: int = 256
    max_connections: int = 10000
    max_connections_per_address: int = 64
    #: Connections from one network: the /24 of an IPv4 address, the /64
    #: of an IPv6 one (see protocol.network_prefix).
    max_connections_per_prefix: int = 256
    #: Connections not logged in yet (in the handshake or before a
    #: successful login) at once; 0: a quarter of max_connections (see
    #: unauthenticated_slots).
    max_unauthenticated: int = 0
    slow_client_timeout: float = 30.0
    shutdown_grace: float = 5.0
    max_output_buffer: int = 4 * 1024 * 1024
    #: Bytes of unfinished input lines all connections together may hold.
    max_input_buffers: int = 32 * 1024 * 1024
    #: Seconds a logged-in connection may keep a line unfinished.
    partial_line_timeout: float = 15.0
    #: DATA plaintexts are padded to a multiple of this many bytes (0: not).
    pad_block: int = 32
    # [accounts]
    #: ``yes`` (anyone may register), ``no``, or ``invite`` (only with an
    #: invite code from ``chatserver-admin invite``).  True and False, as
    #: older code passes them, mean ``yes`` and ``no``.
    allow_registration: str = "yes"
    password_hash_cost: int = 15
    login_failures_per_account: int = 5
    login_failures_per_address: int = 20
    login_lockout: float = 60.0
    session_token_ttl: float = 30 * 86400.0
    #: Seconds a resumption ticket is valid (0: no resumption).
    ticket_lifetime: int = 7 * 86400
    #: Seconds a ticket key seals new tickets before the next one does.
    ticket_key_rotation: float = 86400.0
    # [chat]
    default_room: str = "lobby"
    max_body_length: int = 4000
    max_room_members: int = 1000
    max_rooms_per_user: int = 50
    # [limits]: rate per second and burst of each token bucket
    messages_rate: float = 5.0
    messages_burst: int = 20
    joins_rate: float = 0.5
    joins_burst: int = 10
    rooms_rate: float = 0.05
    rooms_burst: int = 3
    logins_rate: float = 0.5
    logins_burst: int = 5
    #: Requests that look up another user by name (invite, a first dm):
    #: per account and per address, so names cannot be enumerated fast.
    lookups_rate: float = 0.2
    lookups_burst: int = 20
    #: New accounts (register) per address, and per /24 or /64 prefix.
    registrations_rate: float = 0.05
    registrations_burst: int = 10
    registrations_prefix_rate: float = 0.2
    registrations_prefix_burst: int = 30
    #: Full handshakes (an RSA decryption each) per address, and per /24
    #: or /64 prefix; resumptions do not count.
    handshakes_rate: float = 5.0
    handshakes_burst: int = 30
    handshakes_prefix_rate: float = 20.0
    handshakes_prefix_burst: int = 100
    #: Full-handshake jobs queued or running from which a hello must
    #: bring back a cookie first (0: always).
    cookie_threshold: int = 16
    #: Refusals (handshake budget, per-address or per-network connection
    #: limit) in one second after which an address, or its /24 or /64,
    #: has its connections closed unread for block_seconds (0: never).
    block_after_refusals: int = 20
    block_after_refusals_prefix: int = 100
    block_seconds: float = 10.0
    abuse_strikes: int = 20
    #: Worker processes (more than 1 needs PostgreSQL and Redis).
    workers: int = 1
    # [store]
    synchronous: str = "full"
    #: "" (SQLite in data_dir), "sqlite:PATH" or a postgresql:// URL
    #: (with no password in it: see database_password_file).
    database: str = ""
    database_password_file: str = ""
    # [hub]
    #: "" (the in-process hub) or redis://HOST:PORT/DB or unix:///PATH.
    hub_url: str = ""
    #: This process's name among those sharing the hub ("": host:pid:random).
    hub_name: str = ""
    #: Before every Redis key and channel: deployments sharing one Redis
    #: must each have their own.
    hub_prefix: str = "chat:"
    # [log]
    log_level: str = "info"
    log_rotate_bytes: int = 10 * 1024 * 1024
    log_rotate_count: int = 5
    log_levels: tuple[tuple[str, str], ...] = ()
    log_format: str = "text"
    log_rotate: str = "size"
    # [monitor]
    monitor_enabled: bool = True
    monitor_interval: float = 5.0
    # [metrics]
    metrics_enabled: bool = False
    metrics_endpoint: str = "tcp:9464:interface=127.0.0.1"

    def __post_init__(self) -> None:
        mode = self.allow_registration
        if isinstance(mode, bool):
            object.__setattr__(self, "allow_registration", "yes" if mode else "no")
        elif mode not in REGISTRATION_MODES:
            raise ConfigError(f"allow_registration must be one of {REGISTRATION_MODES}, not {mode!r}")

    @property
    def unauthenticated_slots(self) -> int:
        """How many of the max_connections slots connections that are not
        logged in may hold.  The default, a quarter, is far more than
        honest clients need (they are unauthenticated for the second of a
        handshake and a login, logged in for hours; and no more than
        max_pending_crypto handshakes are computed at once), while three
        quarters of the slots stay out of reach of bare sockets."""
        share = self.max_unauthenticated or max(1, self.max_connections // 4)
        return min(share, self.max_connections)

    @property
    def listen_endpoint(self) -> str:
        """``endpoint`` as the server listens on it: with the backlog of the
        default (``LISTEN_BACKLOG``) unless the string sets its own.  An
        endpoint without it would get Twisted's 50, and the reconnections
        after a restart would overflow it (SYNs dropped, clients retrying
        seconds later)."""
        return with_backlog(self.endpoint)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def log_path(self) -> Path:
        return Path(self.log_dir)

    @property
    def identity_key_path(self) -> Path:
        return self.data_path / "server_key.pem"

    @property
    def database_path(self) -> Path:
        """The SQLite file (for a PostgreSQL database: where it would be)."""
        if self.database.startswith("sqlite:"):
            return Path(self.database[len("sqlite:") :])
        return self.data_path / "chatserver.sqlite3"

    @property
    def uses_postgres(self) -> bool:
        return self.database.startswith(POSTGRES_SCHEMES)

    def database_password(self) -> str | None:
        """The PostgreSQL password, read from ``[store] password_file`` or
        else the environment (``CHATSERVER_DATABASE_PASSWORD``), never from
        the INI itself; None: none (peer or trust authentication, or a
        ~/.pgpass).  Raises ConfigError if the file cannot be read."""
        if self.database_password_file:
            path = Path(self.database_password_file)
            try:
                return path.read_text(encoding="utf-8").strip("\r\n")
            except OSError as e:
                raise ConfigError(f"[store] password_file {path}: cannot read it: {e.strerror}") from None
        return os.environ.get(PASSWORD_ENV)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: Where the PostgreSQL password may come from instead of a file.
PASSWORD_ENV = "CHATSERVER_DATABASE_PASSWORD"


REGISTRATION_MODES = ("yes", "no", "invite")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        # "not >": nan compares false; inf is no duration or count either.
        if not value > 0 or value == math.inf:
            raise ValueError("must be a finite number greater than zero")
        return value

    return parse


def _ranged(kind: Callable[[str], Any], low: Any, high: Any) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError("must be yes or no")


def _registration(text: str) -> str:
    if text.strip().lower() == "invite":
        return "invite"
    try:
        return "yes" if _boolean(text) else "no"
    except ValueError:
        raise ValueError("must be yes, no or invite") from None


def _endpoint(text: str) -> str:
    # Parsing builds the endpoint object without listening, so a typo in
    # the endpoint string fails here rather than at bind time.  It is given
    # a stand-in reactor: importing the real one here would install the
    # default reactor before twistd has chosen one.
    try:
        endpoint = endpoints.serverFromString(_NO_REACTOR, text)
    except TypeError as e:
        # The parsers are plain functions, so a misspelt parameter surfaces
        # as "_parseTCP() got an unexpected keyword argument 'interfce'":
        # name the parameter, not our dependency's internals.
        unknown = re.search(r"unexpected keyword argument '([^']*)'", str(e))
        if unknown:
            raise ValueError(f"unknown parameter {unknown.group(1)!r} in the endpoint") from None
        missing = re.search(r"missing \d+ required positional argument", str(e))
        if missing:
            raise ValueError("the endpoint lacks a required part (a port?)") from None
        raise ValueError(f"not a valid endpoint ({e})") from None
    # A port out of range parses, and would only fail at bind time.
    port = twisted_internals.endpoint_port(endpoint)
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not between 0 and 65535")
    return text


_NO_REACTOR = object()


def _level(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return lowered


def _namespace_levels(text: str) -> tuple[tuple[str, str], ...]:
    """``chatserver.store=debug, chatserver.connections=warn``"""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        namespace, sep, level = item.partition("=")
        if not sep or not namespace.strip():
            raise ValueError("is a comma-separated list of namespace=level")
        pairs.append((namespace.strip(), _level(level)))
    return tuple(pairs)


def _format(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("text", "json"):
        raise ValueError("must be text or json")
    return lowered


def _rotate(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("size", "daily"):
        raise ValueError("must be size or daily")
    return lowered


def _room(text: str) -> str:
    from chatserver.wire.validation import ROOM_NAME

    if not ROOM_NAME.fullmatch(text):
        raise ValueError("must be 1-32 of a-z 0-9 _ - starting with a letter or digit")
    return text


def _synchronous(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("full", "normal"):
        raise ValueError("must be full or normal")
    return lowered


def _database(text: str) -> str:
    value = text.strip()
    if value == "" or value == "sqlite:":
        return ""
    if value.startswith("sqlite:"):
        return value
    if value.startswith(POSTGRES_SCHEMES):
        parts = urllib.parse.urlsplit(value)
        query = urllib.parse.parse_qs(parts.query)
        if parts.password is not None or "password" in query:
            # A password in the INI ends up in backups, diffs and ps output.
            raise SecretValue(
                "must not hold a password: put it in [store] password_file, "
                f"or in the environment as {PASSWORD_ENV}"
            )
        return value
    raise ValueError("must be sqlite:PATH or a postgresql://HOST/DATABASE URL")


def _hub_url(text: str) -> str:
    value = text.strip()
    if not value:
        return ""
    from chatserver.hub.redis import parse_url

    try:
        parse_url(value)
    except ValueError as e:
        if "password" in str(e):
            raise SecretValue(
                "must not hold a password: use a unix socket with its permissions, or Redis on loopback"
            ) from None
        raise
    return value


def _hub_name(text: str) -> str:
    value = text.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", value):
        raise ValueError("must be 1 to 64 letters, digits or . _ : -")
    return value


def _hub_prefix(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", value):
        raise ValueError("must be 1 to 64 letters, digits or . _ : -")
    return value


def check_database_url(text: str, where: str) -> str:
    """``text`` as a database URL, or ConfigError naming ``where`` (and
    never quoting a password)."""
    return str(_parse(_database, text, where))


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


# (section, key in the file, field, parser)
SCHEMA: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
    ("server", "endpoint", "endpoint", _endpoint),
    ("server", "data_dir", "data_dir", _nonempty),
    ("server", "log_dir", "log_dir", _nonempty),
    ("server", "max_line_length", "max_line_length", _ranged(int, 1024, 16 * 1024 * 1024)),
    ("server", "handshake_timeout", "handshake_timeout", _positive(float)),
    ("server", "idle_timeout", "idle_timeout", _positive(float)),
    ("server", "crypto_threads", "crypto_threads", _ranged(int, 0, 64)),
    ("server", "max_pending_crypto", "max_pending_crypto", _positive(int)),
    ("server", "max_connections", "max_connections", _positive(int)),
    ("server", "max_connections_per_address", "max_connections_per_address", _positive(int)),
    ("server", "max_connections_per_prefix", "max_connections_per_prefix", _positive(int)),
    ("server", "max_unauthenticated", "max_unauthenticated", _ranged(int, 0, 1 << 30)),
    ("server", "slow_client_timeout", "slow_client_timeout", _positive(float)),
    ("server", "shutdown_grace", "shutdown_grace", _positive(float)),
    ("server", "max_output_buffer", "max_output_buffer", _ranged(int, 65536, 1 << 34)),
    ("server", "max_input_buffers", "max_input_buffers", _ranged(int, 65536, 1 << 40)),
    ("server", "partial_line_timeout", "partial_line_timeout", _positive(float)),
    ("server", "pad_block", "pad_block", _ranged(int, 0, 4096)),
    ("accounts", "allow_registration", "allow_registration", _registration),
    ("accounts", "password_hash_cost", "password_hash_cost", _ranged(int, 10, 18)),
    ("accounts", "login_failures_per_account", "login_failures_per_account", _positive(int)),
    ("accounts", "login_failures_per_address", "login_failures_per_address", _positive(int)),
    ("accounts", "login_lockout", "login_lockout", _positive(float)),
    ("accounts", "session_token_ttl", "session_token_ttl", _positive(float)),
    ("accounts", "ticket_lifetime", "ticket_lifetime", _ranged(int, 0, 30 * 86400)),
    ("accounts", "ticket_key_rotation", "ticket_key_rotation", _ranged(float, 60, 30 * 86400)),
    ("chat", "default_room", "default_room", _room),
    ("chat", "max_body_length", "max_body_length", _ranged(int, 1, 60000)),
    ("chat", "max_room_members", "max_room_members", _positive(int)),
    ("chat", "max_rooms_per_user", "max_rooms_per_user", _positive(int)),
    ("limits", "messages_rate", "messages_rate", _positive(float)),
    ("limits", "messages_burst", "messages_burst", _positive(int)),
    ("limits", "joins_rate", "joins_rate", _positive(float)),
    ("limits", "joins_burst", "joins_burst", _positive(int)),
    ("limits", "rooms_rate", "rooms_rate", _positive(float)),
    ("limits", "rooms_burst", "rooms_burst", _positive(int)),
    ("limits", "logins_rate", "logins_rate", _positive(float)),
    ("limits", "logins_burst", "logins_burst", _positive(int)),
    ("limits", "lookups_rate", "lookups_rate", _positive(float)),
    ("limits", "lookups_burst", "lookups_burst", _positive(int)),
    ("limits", "registrations_rate", "registrations_rate", _positive(float)),
    ("limits", "registrations_burst", "registrations_burst", _positive(int)),
    ("limits", "registrations_prefix_rate", "registrations_prefix_rate", _positive(float)),
    ("limits", "registrations_prefix_burst", "registrations_prefix_burst", _positive(int)),
    ("limits", "handshakes_rate", "handshakes_rate", _positive(float)),
    ("limits", "handshakes_burst", "handshakes_burst", _positive(int)),
    ("limits", "handshakes_prefix_rate", "handshakes_prefix_rate", _positive(float)),
    ("limits", "handshakes_prefix_burst", "handshakes_prefix_burst", _positive(int)),
    ("limits", "cookie_threshold", "cookie_threshold", _ranged(int, 0, 1 << 20)),
    ("limits", "block_after_refusals", "block_after_refusals", _ranged(int, 0, 1 << 20)),
    ("limits", "block_after_refusals_prefix", "block_after_refusals_prefix", _ranged(int, 0, 1 << 20)),
    ("limits", "block_seconds", "block_seconds", _positive(float)),
    ("limits", "abuse_strikes", "abuse_strikes", _positive(int)),
    ("server", "workers", "workers", _ranged(int, 1, 64)),
    ("store", "synchronous", "synchronous", _synchronous),
    ("store", "database", "database", _database),
    ("store", "password_file", "database_password_file", str.strip),
    ("hub", "url", "hub_url", _hub_url),
    ("hub", "name", "hub_name", _hub_name),
    ("hub", "prefix", "hub_prefix", _hub_prefix),
    ("log", "level", "log_level", _level),
    ("log", "rotate_bytes", "log_rotate_bytes", _ranged(int, 4096, 1 << 40)),
    ("log", "rotate_count", "log_rotate_count", _ranged(int, 1, 1000)),
    ("log", "levels", "log_levels", _namespace_levels),
    ("log", "format", "log_format", _format),
    ("log", "rotate", "log_rotate", _rotate),
    ("monitor", "enabled", "monitor_enabled", _boolean),
    ("monitor", "interval", "monitor_interval", _ranged(float, 0.05, 3600)),
    ("metrics", "enabled", "metrics_enabled", _boolean),
    ("metrics", "endpoint", "metrics_endpoint", _endpoint),
)

_BY_FIELD = {field: (section, key, parse) for section, key, field, parse in SCHEMA}


#: The listen backlog of endpoints that do not set one.
LISTEN_BACKLOG = 4096
#: The server endpoint types that take a ``backlog`` argument.
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def with_backlog(endpoint: str, backlog: int = LISTEN_BACKLOG) -> str:
    """A Twisted server endpoint string with ``:backlog=N`` added, if its
    type takes one and it has none (``\\:`` is an escaped colon)."""
    parts = re.split(r"(?<!\\):", endpoint)
    kind = parts[0].strip().lower()
    if kind not in _BACKLOG_TYPES or any(p.strip().lower().startswith("backlog=") for p in parts[1:]):
        return endpoint
    return f"{endpoint}:backlog={backlog}"


#: Where the server and the admin tool look for their configuration file
#: when not given ``--config``: the file that ``$CHATSERVER_CONFIG`` names,
#: else the first of these that exists (the packaged layout, the one
#: ``chatserver-admin write-config`` writes), else none (the defaults).
CONFIG_ENV = "CHATSERVER_CONFIG"
CONFIG_SEARCH_PATH = (Path("/etc/chatserver/chatserver.ini"),)


def find_config(
    given: str | None,
    environ: Any = os.environ,
    search: tuple[Path, ...] = CONFIG_SEARCH_PATH,
) -> str | None:
    """The configuration file to read: ``given`` (``--config``), else the
    search path's; None for the embedded defaults."""
    if given:
        return given
    named = environ.get(CONFIG_ENV)
    if named:
        return str(named)  # a missing one is an error (load_settings says so), not a fallback
    for path in search:
        if path.is_file():
            return str(path)
    return None


def load_settings(path: str | Path | None = None, **overrides: str | None) -> Settings:
    """Read ``path`` (if given) over the defaults, then apply ``overrides``
    (field name -> text, as given on the command line; None means unset)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path)))
    for field, text in overrides.items():
        if text is None:
            continue
        if field not in _BY_FIELD:
            raise ConfigError(f"unknown setting {field!r}")
        section, key, parse = _BY_FIELD[field]
        values[field] = _parse(parse, text, f"command line option for [{section}] {key}")
    settings = Settings(**values)
    _check_together(settings, f"{path}: " if path is not None else "")
    return settings


def _check_together(settings: Settings, where: str) -> None:
    """Settings that are fine alone but not together."""
    if settings.workers > 1 and not (settings.uses_postgres and settings.hub_url):
        raise ConfigError(
            f"{where}[server] workers = {settings.workers} needs [store] database = postgresql://... "
            "and [hub] url = redis://... (the workers share them; see docs/deployment.rst)"
        )
    if settings.max_unauthenticated > settings.max_connections:
        raise ConfigError(
            f"{where}[server] max_unauthenticated = {settings.max_unauthenticated}: must not be more"
            f" than [server] max_connections ({settings.max_connections})"
        )


def _read_file(path: Path) -> dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except configparser.Error as e:
        raise ConfigError(f"{path}: {e}") from None
    known = {(section, key): (field, parse) for section, key, field, parse in SCHEMA}
    values: dict[str, Any] = {}
    for section in parser.sections():
        for key, text in parser.items(section):
            if (section, key) not in known:
                raise ConfigError(f"{path}: unknown setting [{section}] {key}")
            field, parse = known[(section, key)]
            values[field] = _parse(parse, text, f"{path}: [{section}] {key}")
    # A relative directory in the file means relative to the file, not to
    # whichever directory the server or the admin tool was started in:
    # both must find the same database from the same file.
    here = os.path.dirname(os.path.abspath(path))
    for field in _FILE_RELATIVE:
        if values.get(field) and not os.path.isabs(values[field]):
            values[field] = os.path.normpath(os.path.join(here, values[field]))
    database = values.get("database", "")
    if database.startswith("sqlite:") and not os.path.isabs(database[len("sqlite:") :]):
        values["database"] = "sqlite:" + os.path.normpath(os.path.join(here, database[len("sqlite:") :]))
    return values


#: Settings that are paths, resolved against the configuration file's
#: directory when given there (on the command line: the working directory).
_FILE_RELATIVE = ("data_dir", "log_dir", "database_password_file")


class SecretValue(ValueError):
    """A refused value that may hold a secret: the message does not quote it."""


def _parse(parse: Callable[[str], Any], text: str, where: str) -> Any:
    try:
        return parse(text)
    except SecretValue as e:
        raise ConfigError(f"{where}: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where} = {text!r}: {e}") from None
