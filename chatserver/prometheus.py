"""``/metrics`` for Prometheus, on its own endpoint (off unless enabled).

A custom collector reads the server's own counters and gauges at scrape
time, so nothing is counted twice and an unscraped server pays nothing.
With workers, the main process serves it from the workers' latest
reports (``worker_reports.py``, at most one monitor interval old), each
series with a ``worker`` label.
Names follow Prometheus conventions: a ``chatserver_`` prefix, ``_total``
for counters, base units (seconds, bytes).
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site

from chatserver import twisted_internals
from chatserver.metrics import COMMIT_BUCKETS, COUNTERS
from chatserver.worker_reports import report


class ChatCollector:
    """One process's numbers (``[server] workers = 1``)."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Any]:
        yield from families([({}, report(self.factory, rates=False))])
        yield from monitor_families(self.factory.monitoring)


class WorkersCollector:
    """A main process's: every worker's latest report, each series with a
    ``worker`` label, and the workers' own state."""

    def __init__(self, pool: Any, monitoring: Any) -> None:
        self.pool = pool
        self.monitoring = monitoring

    def collect(self) -> Iterator[Any]:
        states = self.pool.states()
        yield from families(
            [({"worker": str(s["index"])}, s["report"]) for s in states if s["report"] is not None]
        )
        up = GaugeMetricFamily("chatserver_worker_up", "1 if the worker process runs.", labels=["worker"])
        restarts = CounterMetricFamily(
            "chatserver_worker_restarts",
            "Times the worker was started again after it ended.",
            labels=["worker"],
        )
        for state in states:
            up.add_metric([str(state["index"])], int(state["up"]))
            restarts.add_metric([str(state["index"])], state["restarts"])
        yield up
        yield restarts
        yield from monitor_families(self.monitoring)


#: gauge name -> (help, the report's member)
_GAUGES = {
    "connections": ("Open connections.", "connections"),
    "authenticated_connections": ("Logged-in connections.", "authenticated"),
    "users_online": ("Users with at least one logged-in connection to this process.", "users_here"),
    "rooms": ("Rooms.", "rooms"),
    "crypto_queue": ("Expensive crypto jobs waiting or running.", "crypto_queue"),
    "blocks": ("Addresses and networks whose connections are closed unread now.", "blocks"),
    "uptime_seconds": ("Seconds since the process started.", "uptime"),
}

#: hub counter name -> (help, the member of the report's ``hub``)
_HUB_COUNTERS = {
    "hub_reconnects": ("Hub links back after a loss.", "reconnects"),
    "hub_outage_seconds": ("Seconds hub links were down, summed over links.", "outage_seconds"),
    "hub_replayed_events": ("Events read back from storage after a hub reconnection.", "replayed"),
}


def families(reports: list[tuple[dict[str, str], dict[str, Any]]]) -> Iterator[Any]:
    """The application's series from processes' reports
    (``worker_reports.report``), each with its labels (none for one
    process; the same label names for all)."""
    names = list(reports[0][0]) if reports else []
    for name, help_text in COUNTERS.items():
        family = CounterMetricFamily(f"chatserver_{name}", help_text, labels=names)
        for labels, one in reports:
            family.add_metric(list(labels.values()), one["totals"].get(name, 0))
        yield family
    yield commit_histogram(reports, names)
    for name, (help_text, key) in _GAUGES.items():
        gauge = GaugeMetricFamily(f"chatserver_{name}", help_text, labels=names)
        for labels, one in reports:
            gauge.add_metric(list(labels.values()), one.get(key, 0))
        yield gauge
    with_hub = [(labels, one["hub"]) for labels, one in reports if one.get("hub") is not None]
    if with_hub:  # a shared hub (Redis): its links' outages
        up = GaugeMetricFamily("chatserver_hub_up", "1 if both links to the hub are up.", labels=names)
        for labels, hub in with_hub:
            up.add_metric(list(labels.values()), int(hub["up"]))
        yield up
        for name, (help_text, key) in _HUB_COUNTERS.items():
            family = CounterMetricFamily(f"chatserver_{name}", help_text, labels=names)
            for labels, hub in with_hub:
                family.add_metric(list(labels.values()), hub[key])
            yield family


def monitor_families(monitoring: Any) -> Iterator[Any]:
    """The monitor child's: its latest sample of the server's process tree
    (every worker's too) and its own health."""
    if monitoring is None:
        return
    sample = monitoring.latest
    if sample is not None:
        tree = sample["tree"]
        for name, help_text, value in (
            ("process_cpu_percent", "CPU % of the server's process tree (monitor).", tree["cpu_percent"]),
            ("process_resident_memory_bytes", "RSS of the server's process tree.", tree["rss_bytes"]),
            ("process_threads", "Threads of the server's process tree.", tree["threads"]),
            ("process_open_fds", "Open file descriptors of the server's process tree.", tree["fds"]),
        ):
            yield GaugeMetricFamily(f"chatserver_{name}", help_text, value=value)
    yield GaugeMetricFamily(
        "chatserver_monitor_up", "1 if the monitor child runs.", value=int(monitoring.health()["up"])
    )
    restarts = CounterMetricFamily("chatserver_monitor_restarts", "Monitor child restarts.")
    restarts.add_metric([], monitoring.restarts)
    yield restarts


def metrics_service(endpoint: str, collector: Any, reactor: Any) -> Any:
    """A service serving ``/metrics`` on ``endpoint`` from ``collector``."""
    registry = CollectorRegistry()
    registry.register(collector)
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    return twisted_internals.listener(reactor, endpoint, Site(root))


def commit_histogram(reports: list[tuple[dict[str, str], dict[str, Any]]], names: list[str]) -> Any:
    """How long event log group commits took (each one an fsync); the
    delivery of every message waits for one."""
    family = HistogramMetricFamily(
        "chatserver_db_commit_seconds",
        "Duration of event log group commits (each one an fsync).",
        labels=names,
    )
    for labels, one in reports:
        cumulative, buckets = 0, []
        for bound, count in zip((*COMMIT_BUCKETS, float("inf")), one["db_commit_buckets"], strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric(list(labels.values()), buckets, sum_value=one["db_commit_seconds_total"])
    return family
