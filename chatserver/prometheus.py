"""``/metrics`` for Prometheus, on its own endpoint (off unless enabled).

A custom collector reads the server's own counters and gauges at scrape
time, so nothing is counted twice and an unscraped server pays nothing.
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


class ChatCollector:
    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Any]:
        factory = self.factory
        metrics = factory.metrics
        for name, help_text in COUNTERS.items():
            family = CounterMetricFamily(f"chatserver_{name}", help_text)
            family.add_metric([], metrics.counters[name])
            yield family
        yield commit_histogram(metrics)
        gauges = {
            "connections": ("Open connections.", len(factory.connections)),
            "authenticated_connections": (
                "Logged-in connections.",
                sum(1 for c in factory.connections if c.account is not None),
            ),
            "users_online": ("Users with at least one logged-in connection.", len(factory.chat.online)),
            "rooms": ("Rooms.", len(factory.chat.rooms)),
            "crypto_queue": ("Expensive crypto jobs waiting or running.", factory.pool.pending),
            "blocks": (
                "Addresses and networks whose connections are closed unread now.",
                factory.blocks.active(),
            ),
            "uptime_seconds": ("Seconds since the server started.", metrics.uptime()),
        }
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(f"chatserver_{name}", help_text, value=value)
        monitoring = factory.monitoring
        sample = monitoring.latest if monitoring is not None else None
        if sample is not None:
            tree = sample["tree"]
            for name, help_text, value in (
                ("process_cpu_percent", "CPU % of the server's process tree (monitor).", tree["cpu_percent"]),
                ("process_resident_memory_bytes", "RSS of the server's process tree.", tree["rss_bytes"]),
                ("process_threads", "Threads of the server's process tree.", tree["threads"]),
                ("process_open_fds", "Open file descriptors of the server's process tree.", tree["fds"]),
            ):
                yield GaugeMetricFamily(f"chatserver_{name}", help_text, value=value)
        hub_stats = getattr(factory.chat.hub, "stats", None)
        if hub_stats is not None:  # a shared hub (Redis): its links' outages
            yield GaugeMetricFamily(
                "chatserver_hub_up",
                "1 if both links to the hub are up.",
                value=int(factory.chat.hub.connected),
            )
            for name, help_text, value in (
                ("hub_reconnects", "Hub links back after a loss.", hub_stats["reconnects"]),
                (
                    "hub_outage_seconds",
                    "Seconds hub links were down, summed over links.",
                    hub_stats["outage_seconds"],
                ),
                (
                    "hub_replayed_events",
                    "Events read back from storage after a hub reconnection.",
                    hub_stats["replayed"],
                ),
            ):
                family = CounterMetricFamily(f"chatserver_{name}", help_text)
                family.add_metric([], value)
                yield family
        if monitoring is not None:
            yield GaugeMetricFamily(
                "chatserver_monitor_up", "1 if the monitor child runs.", value=int(monitoring.health()["up"])
            )
            restarts = CounterMetricFamily("chatserver_monitor_restarts", "Monitor child restarts.")
            restarts.add_metric([], monitoring.restarts)
            yield restarts


def metrics_service(endpoint: str, factory: Any, reactor: Any) -> Any:
    """A service serving ``/metrics`` on ``endpoint``."""
    registry = CollectorRegistry()
    registry.register(ChatCollector(factory))
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    return twisted_internals.listener(reactor, endpoint, Site(root))


def commit_histogram(metrics: Any) -> HistogramMetricFamily:
    """How long event log group commits took (each one an fsync); the
    delivery of every message waits for one."""
    cumulative, buckets = 0, []
    for bound, count in zip((*COMMIT_BUCKETS, float("inf")), metrics.db_commit_buckets, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    family = HistogramMetricFamily(
        "chatserver_db_commit_seconds", "Duration of event log group commits (each one an fsync)."
    )
    family.add_metric([], buckets, sum_value=metrics.db_commit_seconds_total)
    return family
