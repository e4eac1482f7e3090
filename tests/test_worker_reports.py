"""What workers and their main process tell each other
(``chatserver.worker_reports``): the sums an admin sees and the monitor's
view in a worker, from reports and pictures as they come over the pipes."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest

from chatserver.metrics import COUNTERS
from chatserver.worker_reports import MonitorView, combine, worker_entry


def a_report(**overrides: object) -> dict:
    one: dict = {
        "totals": dict.fromkeys(COUNTERS, 0),
        "per_second": dict.fromkeys(COUNTERS, 0.0),
        "db_commit_seconds_total": 0.0,
        "db_commit_seconds_max": 0.0,
        "connections": 0,
        "authenticated": 0,
        "crypto_queue": 0,
        "users_online": 0,
        "rooms": 0,
    }
    one.update(overrides)
    return one


class CombineTests(unittest.TestCase):
    def test_counters_rates_and_gauges_add_up_and_community_numbers_do_not(self) -> None:
        first = a_report(connections=3, authenticated=2, users_online=5, rooms=2, db_commit_seconds_total=0.2)
        first["totals"].update(messages_in=10, db_commits=4)
        first["per_second"]["messages_out"] = 1.5
        second = a_report(connections=4, authenticated=4, users_online=6, rooms=3, db_commit_seconds_max=0.05)
        second["totals"].update(messages_in=7, db_commits=1)
        second["per_second"]["messages_out"] = 2.0
        app = combine([first, second], uptime=42.0)
        self.assertEqual(app["totals"]["messages_in"], 17)
        self.assertIsInstance(app["totals"]["messages_in"], int)  # JSON shows 17, not 17.0
        self.assertEqual(app["per_second"]["messages_out"], 3.5)
        self.assertEqual((app["connections"], app["authenticated"]), (7, 6))
        # The service's own numbers, the same in every report: the newest.
        self.assertEqual((app["users_online"], app["rooms"]), (6, 3))
        self.assertAlmostEqual(app["db_commit_ms_avg"], 1000 * 0.2 / 5)
        self.assertAlmostEqual(app["db_commit_ms_max"], 50.0)
        self.assertEqual(app["uptime"], 42.0)

    def test_junk_in_a_report_counts_as_nothing(self) -> None:
        junk = a_report(connections="many", authenticated=True, totals=None, per_second=[1])
        app = combine([a_report(connections=2), junk], uptime=1.0)
        self.assertEqual((app["connections"], app["authenticated"]), (2, 0))
        self.assertEqual(app["totals"]["messages_in"], 0)
        self.assertIsNone(app["db_commit_ms_avg"])
        self.assertEqual(combine([], uptime=0.0)["users_online"], 0)

    def test_a_worker_that_has_not_reported_is_listed_with_its_state_only(self) -> None:
        state = {"index": 2, "pid": None, "up": False, "restarts": 3}
        self.assertEqual(worker_entry(2, state, None), {"index": 2, "pid": None, "up": False, "restarts": 3})
        entry = worker_entry(1, {"pid": 7, "up": True}, a_report(connections=5, hub={"up": True}))
        self.assertEqual((entry["connections"], entry["hub_up"], entry["messages_in"]), (5, True, 0.0))


class MonitorViewTests(unittest.TestCase):
    def test_the_view_ages_the_last_sample_and_keeps_the_history_once(self) -> None:
        clock = task.Clock()
        view = MonitorView(clock)
        self.assertEqual(view.health(), {"up": False, "enabled": False})
        history = [{"ts": 1.0}, {"ts": 2.0}]
        view.seen(
            {"history": history, "sample": {"ts": 2.0}, "monitor": {"up": True, "last_sample_age": 0.5}}
        )
        self.assertEqual(list(view.history), history)  # the latest sample is the history's last
        clock.advance(3)
        self.assertEqual(view.health()["last_sample_age"], 3.5)
        view.seen({"sample": {"ts": 7.0}, "monitor": {"up": True, "last_sample_age": 0.1}})
        view.seen({"sample": {"ts": 7.0}, "monitor": {"up": True, "last_sample_age": 0.2}})
        self.assertEqual([s["ts"] for s in view.history], [1.0, 2.0, 7.0])
        self.assertEqual(view.latest, {"ts": 7.0})
        view.seen({"history": "not a list", "sample": 5, "monitor": None})
        self.assertEqual(view.latest, {"ts": 7.0})
