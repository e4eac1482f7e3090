"""``twistd chatserver``: command-line options and the service tree."""

from __future__ import annotations

import atexit
import dataclasses
import errno
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.application import internet, service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.python.failure import Failure

import chatserver
import twisted
from chatserver import control, twisted_internals
from chatserver.accounts import Accounts
from chatserver.chat import ChatService
from chatserver.config import SCHEMA, ConfigError, Settings, find_config, load_settings
from chatserver.hub.local import LocalHub
from chatserver.identity import IdentityError, load_or_create
from chatserver.logs import LogFiles
from chatserver.metrics import Metrics
from chatserver.monitoring import Monitoring, health_of
from chatserver.prometheus import ChatCollector, WorkersCollector, metrics_service
from chatserver.protocol import ChatFactory, rate_rules
from chatserver.ratelimit import Limits as RateLimits
from chatserver.storage.sqlite import SqliteStorage, UnusableDatabase, had_database
from chatserver.supervisor import WorkerPool, worker_argv
from chatserver.tickets import Tickets
from chatserver.worker_reports import WorkerLink
from chatserver.workers import CryptoPool, threads_per_kind

log = Logger(namespace="chatserver.tap")


class Options(usage.Options):
    synopsis = "[--config FILE] [--endpoint ENDPOINT] [--data-dir DIR] [--log-dir DIR]"
    longdesc = (
        "Run the chatserver.  Settings come from embedded defaults, then the "
        "config file, then these options.  ENDPOINT is a Twisted server endpoint "
        "string, e.g. tcp:7070:interface=127.0.0.1 or "
        "ssl:7443:privateKey=key.pem:certKey=cert.pem."
    )

    def load(self) -> Settings:
        """The settings: defaults, the file, these options (again at SIGHUP)."""
        # Found once, so that SIGHUP and the workers read the same file.
        self["config"] = find_config(self["config"])
        settings = load_settings(
            self["config"],
            endpoint=self["endpoint"],
            data_dir=self["data-dir"],
            log_dir=self["log-dir"],
            database=self["database"],
            hub_url=self["hub"],
            workers=self["workers"],
        )
        index = self["worker-index"]
        if index is None:
            return settings
        # A worker of a main process (chatserver/supervisor.py): its own
        # log directory, and a name on the hub that its restarts reuse.
        name = settings.hub_name or f"{socket.gethostname()}:{os.getppid()}"
        return dataclasses.replace(
            settings,
            workers=1,
            log_dir=str(Path(settings.log_dir) / f"worker-{index}"),
            hub_name=f"{name}:w{index}",
            # The main process runs the monitor and serves /metrics, for
            # all workers (worker_reports.py).
            monitor_enabled=False,
            metrics_enabled=False,
        )

    optParameters = [
        [
            "config",
            "c",
            None,
            "Configuration file (INI; see etc/chatserver.ini); default: $CHATSERVER_CONFIG, "
            "else /etc/chatserver/chatserver.ini if it exists, else the built-in defaults.",
        ],
        ["endpoint", "e", None, "Where to listen (Twisted endpoint string)."],
        ["data-dir", "d", None, "Directory for the database and the server key."],
        ["log-dir", "l", None, "Directory for chatserver.log and connections.log."],
        ["database", None, None, "[store] database: sqlite:PATH or a postgresql:// URL (no password)."],
        ["hub", None, None, "[hub] url: redis://HOST:PORT/DB or unix:///PATH (empty: in-process)."],
        [
            "workers",
            None,
            None,
            "[server] workers: worker processes (more than 1 needs PostgreSQL and Redis).",
        ],
        # Set by the main process for its workers (chatserver/supervisor.py).
        ["worker-index", None, None, "(internal) this worker's number.", int],
        ["worker-port", None, None, "(internal) the port the main process holds.", int],
    ]

    def opt_version(self) -> None:
        """Print chatserver's version and exit."""
        print(f"chatserver {chatserver.__version__} (Twisted {twisted.__version__})")
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            self["settings"] = self.load()
        except ConfigError as e:
            # A bad value is not a misuse of the command line: one line
            # naming it, without twistd's whole usage text (UsageError).
            raise SystemExit(f"chatserver: {e}") from None


def open_storage(settings: Settings, reactor: Any) -> Any:
    """The storage the settings name, checked (and migrated) now, so that
    a bad or unreachable database stops the start with one line."""
    try:
        if settings.uses_postgres:
            from chatserver.storage.postgres import PostgresStorage

            store: Any = PostgresStorage(
                settings.database, password=settings.database_password(), reactor=reactor
            )
        else:
            # A missing database is created only in a directory that never held one.
            db = settings.database_path
            store = SqliteStorage(
                db, settings.synchronous.upper(), create=not had_database(db), reactor=reactor
            )
        store.check()
    except (UnusableDatabase, ConfigError) as e:
        raise SystemExit(f"chatserver: {e}") from None
    return store


def make_hub(settings: Settings, store: Any, reactor: Any) -> Any:
    """The hub the settings name: in process, or over Redis (whose
    reconnections happen by themselves, so an unreachable Redis delays
    cross-process delivery and does not stop the start)."""
    if not settings.hub_url:
        return LocalHub(store.history)
    try:
        import txredisapi  # noqa: F401
    except ImportError:
        raise SystemExit(
            "chatserver: a Redis hub needs txredisapi: pip install 'chatserver[scale]'"
        ) from None
    from chatserver.hub.redis import RedisHub

    # A restarted process is a new one to the others (the old one's keys
    # expire), and two in one process (the tests' nodes) are two.
    name = settings.hub_name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    return RedisHub(settings.hub_url, store.history, name, reactor=reactor, prefix=settings.hub_prefix)


class StartupError(Exception):
    """The server cannot start; the message is the one line to show."""


def _reason(error: BaseException) -> str:
    """Why a listen failed, as the end of a sentence."""
    cause: Any = getattr(error, "socketError", None) or error
    text = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
    return text[:1].lower() + text[1:].rstrip(".")


class ChatCore(service.Service):
    """Loads rooms and stream ids from the store, then listens: no client
    is accepted before the state it will be checked against exists.

    Every listener (the chat endpoint first, then e.g. the metrics one)
    starts here, so that a failure to listen anywhere takes the one path
    in ``_failed``: one line and, under twistd, a non-zero exit."""

    name = "chat-core"

    def __init__(
        self,
        chat: ChatService,
        listener: Any,
        description: str = "",
        on_fatal: Any = None,
        tickets: Tickets | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.chat = chat
        self.tickets = tickets
        self.rate_limits = rate_limits
        self.listener = listener
        self.description = description
        self.listeners: list[tuple[str, Any]] = [(description, listener)]
        self._on_fatal = on_fatal  # () -> None, after a start-up failure
        #: Fires with the listening port once the server accepts clients.
        self.ready: Deferred[Any] = Deferred()

    def add_listener(self, description: str, listener: Any) -> None:
        self.listeners.append((description, listener))

    def startService(self) -> None:
        super().startService()
        d = self.chat.load()
        tickets = self.tickets
        if tickets is not None:
            d.addCallback(lambda _: tickets.load())
        d.addCallback(lambda _: self._listen())
        d.addErrback(self._failed)

    def _listen(self) -> None:
        for description, listener in self.listeners:
            try:
                # strports services raise here, synchronously, when the
                # endpoint cannot listen (busy port, foreign address).
                listener.startService()
            except Exception as e:
                raise StartupError(f"cannot listen on {description}: {_reason(e)}") from e

        def listening(port: Any) -> None:
            if not self.ready.called:
                self.ready.callback(port)

        def not_listening(failure: Any) -> None:
            self._failed(
                Failure(StartupError(f"cannot listen on {self.description}: {_reason(failure.value)}"))
            )

        self.listener.listening.addCallbacks(listening, not_listening)

    def _failed(self, failure: Any) -> None:
        if failure.check(StartupError):
            message = str(failure.value)
        else:
            # Not an operator's mistake we know of: the line says what,
            # the traceback is there for whoever turns on debug.
            message = f"start-up failed: {failure.type.__name__}: {failure.getErrorMessage()}"
            log.failure("start-up failed", failure, level=LogLevel.debug)
        log.critical("{message}", message=message)
        if not self.ready.called:
            self.ready.errback(failure)
        if self._on_fatal is not None:
            self._on_fatal()

    def stopService(self) -> Any:
        super().stopService()
        stopping = [listener.stopService() for _, listener in self.listeners if listener.running]
        if self.tickets is not None:
            stopping.append(self.tickets.stop())
        if self.rate_limits is not None:
            self.rate_limits.stop()  # before the hub they sync through
        # The hub after the listeners: a process leaving a shared hub says
        # goodbye, so its users go offline everywhere at once.
        stopping.append(self.chat.hub.stop())
        return DeferredList(stopping)


def _exit_failed() -> None:
    """End the process with status 1.  twistd's ``run()`` returns normally
    once the reactor has stopped, whatever stopped it, so the process would
    exit 0 and systemd's Restart=on-failure would never fire.  Registered
    with atexit, this runs after twistd has finished (pid file removed,
    logs written); what is buffered is flushed first."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    os._exit(1)


def _stop_failed(reactor: Any) -> None:
    atexit.register(_exit_failed)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


def _usable_directory(path: Path, what: str, mode: int, probe: str | None = None) -> None:
    """Make ``path`` if need be and check that it is a directory we can
    write (``probe``: a file in it to open for appending, as the server
    will); else one line and exit status 1 (an operator's mistake)."""
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        if probe is not None:
            os.close(os.open(path / probe, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
        elif not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as e:
        text = e.strerror or str(e)
        raise SystemExit(f"chatserver: cannot use {what} {path}: {text[:1].lower() + text[1:]}") from None


class ChatServer(service.MultiService):
    """The whole server.  Stopping is ordered, because the services stop in
    parallel otherwise: no new connections; a CLOSE frame to every client
    (cut off after ``grace`` seconds); every event log commit finished;
    only then the store, the thread pool and the logs."""

    def __init__(self, grace: float, load: Any = None, settings: Settings | None = None) -> None:
        super().__init__()
        self.grace = grace
        self._load = load  # () -> Settings, for a reload
        #: The settings in force: those of the start, with what SIGHUP
        #: reloaded since.
        self.settings = settings

    def reload(self) -> None:
        """Reopen the log files; apply the log level, the rate limits and
        ``[accounts] allow_registration`` from the configuration file
        again.  Anything else needs a restart."""
        logs: LogFiles = self.getServiceNamed("log-files")
        logs.reopen()
        if self._load is None:
            log.info("SIGHUP: log files reopened")
            return
        try:
            settings: Settings = self._load()
        except ConfigError as e:
            log.error("SIGHUP: configuration not reloaded, keeping the old one: {error}", error=str(e))
            return
        logs.set_level(settings.log_level, settings.log_levels)
        factory: ChatFactory = self.factory  # type: ignore[attr-defined]
        factory.rate_limits.replace_rules(rate_rules(settings))
        factory.cookies.threshold = settings.cookie_threshold
        factory.blocks.configure(
            settings.block_after_refusals, settings.block_after_refusals_prefix, settings.block_seconds
        )
        # Switching to invite (or no) must not need a restart, which would
        # drop every connection: it is what an operator does when a wave of
        # registrations starts.
        factory.accounts.registration = settings.allow_registration
        log.info(
            "SIGHUP: log files reopened; reloaded log level {name}, rate limits "
            "and allow_registration = {registration}",
            name=settings.log_level,
            registration=settings.allow_registration,
        )
        if self.settings is None:
            return
        self.settings = dataclasses.replace(
            self.settings, **{field: getattr(settings, field) for field in RELOADABLE}
        )
        # Anything else that differs from what runs is not applied: say so,
        # or the operator believes the new value is in force.
        pending = needs_restart(self.settings, settings)
        if pending:
            log.warn(
                "SIGHUP: changed in the configuration but applied only at a restart: {settings}",
                settings=", ".join(pending),
            )

    @inlineCallbacks
    def stopService(self) -> Any:
        core: ChatCore = self.core  # type: ignore[attr-defined]
        factory: ChatFactory = self.factory  # type: ignore[attr-defined]
        log.info("shutting down: {count} connections", count=len(factory.connections))
        if core.listener.running:
            yield core.listener.stopService()
        yield factory.close_all("shutdown", "the server is shutting down", self.grace)
        yield core.chat.storage.idle()
        yield super().stopService()


#: Settings that a SIGHUP applies (see ChatServer.reload); the others are
#: read once, at start-up.
RELOADABLE = (
    "allow_registration",
    "log_level",
    "log_levels",
    "messages_rate",
    "messages_burst",
    "joins_rate",
    "joins_burst",
    "rooms_rate",
    "rooms_burst",
    "logins_rate",
    "logins_burst",
    "lookups_rate",
    "lookups_burst",
    "registrations_rate",
    "registrations_burst",
    "registrations_prefix_rate",
    "registrations_prefix_burst",
    "handshakes_rate",
    "handshakes_burst",
    "handshakes_prefix_rate",
    "handshakes_prefix_burst",
    "cookie_threshold",
    "block_after_refusals",
    "block_after_refusals_prefix",
    "block_seconds",
)


#: Endpoint types whose port calls the factory's buildProtocol itself.
DIRECT_ENDPOINTS = ("tcp", "tcp6", "unix", "systemd")


def needs_restart(running: Settings, loaded: Settings) -> list[str]:
    """``[section] key`` of every setting that differs and that a reload
    does not apply, in the order of the configuration file."""
    return [
        f"[{section}] {key}"
        for section, key, field, _ in SCHEMA
        if field not in RELOADABLE and getattr(running, field) != getattr(loaded, field)
    ]


def install_signal_handlers(reactor: Any, top: ChatServer) -> None:
    """SIGTERM: under twistd, the reactor stops and twistd then kills itself
    with SIGTERM again (exit status 143).  A service stopped on purpose has
    done nothing wrong, so it exits 0: stop the reactor without that.
    SIGHUP: reopen the log files and reload what is safe to reload."""

    def install() -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(reactor.stop))
        signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(top.reload))

    reactor.callWhenRunning(install)


def _directories_and_key(settings: Settings) -> tuple[Any, bool]:
    """The data and log directories checked, and the identity key (made
    if there is none): before anything else writes there, so that a
    directory that cannot be used gets one clear line, not a traceback
    from deep inside."""
    _usable_directory(settings.data_path, "data directory", 0o700)
    _usable_directory(settings.log_path, "log directory", 0o750, probe="chatserver.log")
    try:
        return load_or_create(settings.identity_key_path)
    except IdentityError as e:
        raise SystemExit(f"chatserver: {e}") from None


def log_files(settings: Settings) -> LogFiles:
    """The log files the settings ask for (a worker's main process too)."""
    return LogFiles(
        settings.log_path,
        settings.log_level,
        settings.log_rotate_bytes,
        settings.log_rotate_count,
        levels=settings.log_levels,
        json=settings.log_format == "json",
        daily=settings.log_rotate == "daily",
    )


class MainProcess(service.MultiService):
    """The main process of ``[server] workers = N``: logs, the workers, the
    monitor child (whose process tree holds them all) and ``/metrics``."""

    def __init__(self, pool: WorkerPool, reactor: Any) -> None:
        super().__init__()
        self.pool = pool
        self.reactor = reactor
        self.started = reactor.seconds()
        self.monitoring: Monitoring | None = None
        #: /metrics, listening from the build on (not a child service:
        #: started early, so a busy port stops the start with one line).
        self.metrics_listener: Any = None

    def stopService(self) -> Any:
        stopping = super().stopService()
        if self.metrics_listener is not None and self.metrics_listener.running:
            return DeferredList([stopping, maybeDeferred(self.metrics_listener.stopService)])
        return stopping

    def tell_workers(self) -> None:
        """Every worker's numbers and the monitor's, to every worker."""
        monitoring = self.monitoring
        picture = {
            "type": "picture",
            "uptime": self.reactor.seconds() - self.started,
            "workers": self.pool.states(),
            "sample": monitoring.latest if monitoring is not None else None,
            "monitor": health_of(monitoring),
        }
        self.pool.tell(picture, list(monitoring.history) if monitoring is not None else [])

    def reload(self) -> None:
        logs: LogFiles = self.getServiceNamed("log-files")
        logs.reopen()
        self.pool.signal_all(signal.SIGHUP)
        log.info("SIGHUP: log files reopened, passed on to {count} workers", count=len(self.pool.workers))


def build_main_process(
    options: Any, reactor: Any, quiet: bool = False, real: bool = False
) -> service.MultiService:
    """Bind the endpoint, check the database, and start the workers."""
    settings: Settings = options["settings"]
    identity, created = _directories_and_key(settings)
    # Reachable, and migrated once, before any worker starts.
    open_storage(settings, reactor)
    try:
        family, interface, wanted, backlog = twisted_internals.tcp_parts(reactor, settings.listen_endpoint)
        held = twisted_internals.reuseport_socket(family, interface, wanted, backlog, listen=False)
    except ValueError as e:
        raise SystemExit(f"chatserver: [server] endpoint {settings.endpoint}: {e}") from None
    except OSError as e:
        raise SystemExit(f"chatserver: cannot listen on {settings.endpoint}: {e.strerror or e}") from None
    port_number = held.getsockname()[1]
    if not quiet:
        print(
            f"chatserver: server key fingerprint {identity.fingerprint}\n"
            f"chatserver: listening on {port_number} with {settings.workers} workers",
            flush=True,
            file=sys.stdout,
        )
    pool = WorkerPool(
        reactor,
        settings.workers,
        lambda index: worker_argv(options, index, port_number),
        stop_grace=settings.shutdown_grace + 5.0,
    )
    top = MainProcess(pool, reactor)
    log_files(settings).setServiceParent(top)
    pool.setServiceParent(top)
    top.held = held  # type: ignore[attr-defined]  # holds the port (an ephemeral one too)
    if settings.monitor_enabled:
        top.monitoring = Monitoring(reactor, settings.monitor_interval)
        top.monitoring.setServiceParent(top)
    if settings.metrics_enabled:
        scrape = metrics_service(settings.metrics_endpoint, WorkersCollector(pool, top.monitoring), reactor)
        try:
            scrape.startService()  # now: a busy port is an operator's mistake, said at start
        except Exception as e:
            raise SystemExit(
                f"chatserver: cannot listen on {settings.metrics_endpoint}: {_reason(e)}"
            ) from None
        top.metrics_listener = scrape
    internet.TimerService(settings.monitor_interval, top.tell_workers).setServiceParent(top)
    if real:
        reactor.callWhenRunning(
            lambda: (
                signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(reactor.stop)),
                signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(top.reload)),
            )
        )
    return top


def makeService(options: Any) -> service.MultiService:
    """twistd's entry point: the service tree on the global reactor, with
    the signal handling of a real server."""
    from twisted.internet import reactor

    return build_service(options, reactor, real=True)


def build_service(
    options: Any, reactor: Any, clock: Any = None, quiet: bool = False, real: bool = False
) -> service.MultiService:
    """The service tree on ``reactor``.  Tests pass a separate ``clock``
    (for timeouts) and ``quiet`` to skip the fingerprint banner; ``real``
    (twistd) adds the SIGTERM and SIGHUP handling and exits on a fatal
    start-up error."""
    if clock is None:
        clock = reactor
    settings: Settings = options["settings"]
    if settings.workers > 1:
        return build_main_process(options, reactor, quiet=quiet, real=real)
    identity, created = _directories_and_key(settings)
    if not quiet:
        print(
            f"chatserver: {'created' if created else 'loaded'} server key "
            f"{settings.identity_key_path}\n"
            f"chatserver: server key fingerprint {identity.fingerprint}",
            flush=True,
            file=sys.stdout,
        )

    top = ChatServer(grace=settings.shutdown_grace, load=getattr(options, "load", None), settings=settings)
    if real:
        install_signal_handlers(reactor, top)
    log_files(settings).setServiceParent(top)
    store = open_storage(settings, reactor)
    store.setServiceParent(top)
    pool = CryptoPool(reactor, threads_per_kind(settings.crypto_threads), settings.max_pending_crypto)
    pool.setServiceParent(top)
    metrics = Metrics(reactor)
    store.events.metrics = metrics
    chat = ChatService(
        store,
        make_hub(settings, store, reactor),
        clock,
        default_room=settings.default_room,
        max_room_members=settings.max_room_members,
        max_rooms_per_user=settings.max_rooms_per_user,
    )
    tickets = Tickets(store, clock, settings.ticket_lifetime, settings.ticket_key_rotation, reactor=reactor)
    factory = ChatFactory(
        settings,
        identity,
        chat,
        Accounts(settings, store, pool, clock),
        pool,
        clock,
        reactor,
        metrics=metrics,
        tickets=tickets,
    )
    counters = chat.hub.counters
    if counters is not None:
        # Several processes: an account's (an address's) limits and failed
        # logins count the same wherever it connects.
        factory.rate_limits.share(counters, reactor)
        factory.accounts.throttle.share(counters)
    # Listeners that hand the factory's protocol to the socket directly;
    # others (ssl:, tls:) wrap it and need a protocol for every connection.
    factory.close_blocked_at_accept = settings.endpoint.split(":", 1)[0].strip().lower() in DIRECT_ENDPOINTS
    if options.get("worker-port") is not None:
        # A worker: its own socket on the main process's port, bound with
        # SO_REUSEPORT beside the other workers' (the kernel spreads the
        # connections); adopted by the reactor.
        family, interface, _, backlog = twisted_internals.tcp_parts(reactor, settings.listen_endpoint)
        try:
            sock = twisted_internals.reuseport_socket(
                family, interface, int(options["worker-port"]), backlog, listen=True
            )
        except OSError as e:
            raise SystemExit(f"chatserver: cannot listen on {settings.endpoint}: {e.strerror or e}") from None
        adopted = twisted_internals.AdoptedEndpoint(reactor, sock.fileno(), family)
        listener = twisted_internals.Listener(adopted, factory)
        listener.socket = sock  # type: ignore[attr-defined]  # closed with the process (adopt dups it)
    else:
        listener = twisted_internals.listener(reactor, settings.listen_endpoint, factory)
    core = ChatCore(
        chat,
        listener,
        settings.endpoint,
        on_fatal=(lambda: _stop_failed(reactor)) if real else None,
        tickets=tickets,
        rate_limits=factory.rate_limits,
    )
    core.setServiceParent(top)
    # Where chatserver-admin tells this process what it changed (control.py).
    worker_index = options.get("worker-index")
    control_path = control.socket_path(settings.data_path, worker_index)
    if len(os.fsencode(control_path)) <= control.MAX_PATH:
        control.prepare_dir(settings.data_path)
        core.add_listener(
            f"the control socket {control_path}",
            twisted_internals.listener(
                reactor, control.endpoint_string(control_path), control.ControlFactory(chat, chat.hub.name)
            ),
        )
    else:
        log.warn(
            "no control socket: {path} is longer than a UNIX socket path may be ({limit} bytes); "
            "what chatserver-admin changes applies to live sessions only at their next login",
            path=str(control_path),
            limit=control.MAX_PATH,
        )
    if settings.monitor_enabled:
        monitoring = Monitoring(reactor, settings.monitor_interval)
        monitoring.setServiceParent(top)
        factory.monitoring = monitoring
    if settings.metrics_enabled:
        scrape = metrics_service(settings.metrics_endpoint, ChatCollector(factory), reactor)
        core.add_listener(settings.metrics_endpoint, scrape)
        top.metrics_listener = scrape  # type: ignore[attr-defined]
    if options.get("worker-index") is not None:
        # Its numbers go to the main process and everyone's come back; it
        # pushes its subscribers' stats frames right after each report.
        link = WorkerLink(factory, reactor, int(options["worker-index"]), settings.monitor_interval)
        link.setServiceParent(top)
        factory.worker_link = link
        factory.monitoring = link.monitor
    else:
        # Subscribed admins get a stats frame every interval, monitor or not.
        internet.TimerService(settings.monitor_interval, factory.push_stats).setServiceParent(top)
    top.factory = factory  # type: ignore[attr-defined]
    top.core = core  # type: ignore[attr-defined]
    top.identity = identity  # type: ignore[attr-defined]
    return top
