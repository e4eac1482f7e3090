"""``twistd chatserver``: command-line options and the service tree."""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application import internet, service, strports
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python import usage

from chatserver.accounts import Accounts
from chatserver.chat import ChatService
from chatserver.config import ConfigError, Settings, load_settings
from chatserver.identity import IdentityError, load_or_create
from chatserver.journal import EventLog
from chatserver.logs import LogFiles
from chatserver.metrics import Metrics
from chatserver.monitoring import Monitoring
from chatserver.prometheus import metrics_service
from chatserver.protocol import ChatFactory, rate_rules
from chatserver.store import Store
from chatserver.workers import CryptoPool

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
        return load_settings(
            self["config"], endpoint=self["endpoint"], data_dir=self["data-dir"], log_dir=self["log-dir"]
        )

    optParameters = [
        ["config", "c", None, "Configuration file (INI); see etc/chatserver.ini."],
        ["endpoint", "e", None, "Where to listen (Twisted endpoint string)."],
        ["data-dir", "d", None, "Directory for the database and the server key."],
        ["log-dir", "l", None, "Directory for chatserver.log and connections.log."],
    ]

    def postOptions(self) -> None:
        try:
            self["settings"] = self.load()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class ChatCore(service.Service):
    """Loads rooms and stream ids from the store, then listens: no client
    is accepted before the state it will be checked against exists."""

    name = "chat-core"

    def __init__(self, chat: ChatService, listener: Any) -> None:
        self.chat = chat
        self.listener = listener
        #: Fires with the listening port once the server accepts clients.
        self.ready: Deferred[Any] = Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.chat.load()
        d.addCallback(lambda _: self._listen())
        d.addErrback(self._failed)

    def _listen(self) -> None:
        self.listener.startService()

        def listening(port: Any) -> Any:
            if not self.ready.called:
                self.ready.callback(port)
            return port  # the listener needs it again to stop

        self.listener._waitingForPort.addCallback(listening)

    def _failed(self, failure: Any) -> None:
        log.failure("start-up failed", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        from twisted.internet import reactor

        if reactor.running:
            reactor.stop()

    def stopService(self) -> Any:
        super().stopService()
        if self.listener.running:
            return self.listener.stopService()
        return None


class ChatServer(service.MultiService):
    """The whole server.  Stopping is ordered, because the services stop in
    parallel otherwise: no new connections; a CLOSE frame to every client
    (cut off after ``grace`` seconds); every event log commit finished;
    only then the store, the thread pool and the logs."""

    def __init__(self, grace: float, load: Any = None) -> None:
        super().__init__()
        self.grace = grace
        self._load = load  # () -> Settings, for a reload

    def reload(self) -> None:
        """Reopen the log files; apply the log level and the rate limits from
        the configuration file again.  Anything else needs a restart."""
        logs: LogFiles = self.getServiceNamed("log-files")  # type: ignore[assignment]
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
        log.info(
            "SIGHUP: log files reopened; reloaded log level {name} and rate limits", name=settings.log_level
        )

    @inlineCallbacks
    def stopService(self) -> Any:
        core: ChatCore = self.core  # type: ignore[attr-defined]
        factory: ChatFactory = self.factory  # type: ignore[attr-defined]
        log.info("shutting down: {count} connections", count=len(factory.connections))
        if core.listener.running:
            yield core.listener.stopService()
        yield factory.close_all("shutdown", "the server is shutting down", self.grace)
        yield core.chat.journal.idle()
        yield super().stopService()


def install_signal_handlers(reactor: Any, top: ChatServer) -> None:
    """SIGTERM: under twistd, the reactor stops and twistd then kills itself
    with SIGTERM again (exit status 143).  A service stopped on purpose has
    done nothing wrong, so it exits 0: stop the reactor without that.
    SIGHUP: reopen the log files and reload what is safe to reload."""

    def install() -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(reactor.stop))
        signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(top.reload))

    reactor.callWhenRunning(install)


def makeService(
    options: Any, reactor: Any = None, clock: Any = None, quiet: bool = False
) -> service.MultiService:
    """The service tree.  Tests inject ``reactor`` and a separate ``clock``
    (for timeouts) and pass ``quiet`` to skip the fingerprint banner; the
    SIGTERM handling is only for the real thing (no reactor injected)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
        real = True
    else:
        real = False
    if clock is None:
        clock = reactor
    settings: Settings = options["settings"]
    try:
        identity, created = load_or_create(settings.identity_key_path)
    except IdentityError as e:
        raise SystemExit(f"chatserver: {e}") from None
    if not quiet:
        print(
            f"chatserver: {'created' if created else 'loaded'} server key "
            f"{settings.identity_key_path}\n"
            f"chatserver: server key fingerprint {identity.fingerprint}",
            flush=True,
            file=sys.stdout,
        )

    top = ChatServer(grace=settings.shutdown_grace, load=getattr(options, "load", None))
    if real:
        install_signal_handlers(reactor, top)
    LogFiles(
        settings.log_path,
        settings.log_level,
        settings.log_rotate_bytes,
        settings.log_rotate_count,
        levels=settings.log_levels,
        json=settings.log_format == "json",
        daily=settings.log_rotate == "daily",
    ).setServiceParent(top)
    store = Store(settings.database_path, settings.synchronous.upper())
    store.setServiceParent(top)
    pool = CryptoPool(reactor, settings.crypto_threads, settings.max_pending_crypto)
    pool.setServiceParent(top)
    metrics = Metrics(reactor)
    chat = ChatService(
        store,
        EventLog(store, reactor, metrics),
        clock,
        default_room=settings.default_room,
        max_room_members=settings.max_room_members,
        max_rooms_per_user=settings.max_rooms_per_user,
    )
    factory = ChatFactory(
        settings,
        identity,
        chat,
        Accounts(settings, store, pool, clock),
        pool,
        clock,
        reactor,
        metrics=metrics,
    )
    listener = strports.service(settings.endpoint, factory, reactor=reactor)
    core = ChatCore(chat, listener)
    core.setServiceParent(top)
    if settings.monitor_enabled:
        monitoring = Monitoring(reactor, settings.monitor_interval)
        monitoring.setServiceParent(top)
        factory.monitoring = monitoring
    if settings.metrics_enabled:
        scrape = metrics_service(settings.metrics_endpoint, factory, reactor)
        scrape.setServiceParent(top)
        top.metrics_listener = scrape  # type: ignore[attr-defined]
    # Subscribed admins get a stats frame every interval, monitor or not.
    internet.TimerService(settings.monitor_interval, factory.push_stats).setServiceParent(top)
    top.factory = factory  # type: ignore[attr-defined]
    top.core = core  # type: ignore[attr-defined]
    top.identity = identity  # type: ignore[attr-defined]
    return top
