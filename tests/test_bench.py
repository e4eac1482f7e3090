"""``make bench`` must not rot between the sessions that run it.

The lean scenarios (the peer harness's case names) run end to end, as
``make bench`` runs them, against a real ``twistd`` with tiny durations;
their JSON report must hold real figures and no failure.  Speed is not
asserted here: figures live in benchmarks, never in unit tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from tests.processes import spawn
from tests.support import PYTHON, ROOT


class BenchSmokeTests(unittest.TestCase):
    timeout = 240

    async def bench(self, *options: str) -> tuple[Any, dict[str, Any]]:
        """bench.py, one run of each scenario in ``options``, to its end
        (exit 0, no failure); the process and its JSON report."""
        results = Path(self.mktemp()).resolve()  # the bench runs in ROOT
        argv = [PYTHON, str(ROOT / "bench" / "bench.py"), "--runs", "1", *options]
        # --no-pin: other tests run beside this one.
        bench = spawn(self, "bench", argv + ["--no-pin", "--results-dir", str(results)], cwd=str(ROOT))
        code = await bench.ended.addTimeout(200, reactor)
        self.assertEqual(code, 0, f"{bench.output()}\n{bench.errors()}")
        (path,) = results.glob("*.json")
        report = json.loads(path.read_text(encoding="utf-8"))
        self.assertEqual(report["failures"], [])
        return bench, report

    async def test_lean_scenarios_run_and_report_checked_figures(self) -> None:
        bench, report = await self.bench(
            "--scenarios", "fanout_r10,fanout_r100_e2e,latency_r100_1k",
            "--duration", "0.5", "--warmup", "0.2",
            "--window-total", "50",  # no calibration
        )  # fmt: skip

        (fanout,) = report["runs"]["fanout_r10"]
        self.assertEqual(fanout["receivers"], 10)
        self.assertEqual(fanout["window"], 50)
        self.assertGreater(fanout["deliveries"], 0)
        # Every receiver got every message, each sender's in order.
        self.assertEqual(
            (fanout["order_errors"], fanout["lost_sessions"], fanout["stuck_after_drain"], fanout["errors"]),
            (0, 0, 0, 0),
        )
        self.assertGreater(fanout["commits"]["commits"], 0)
        self.assertGreater(fanout["server_cpu_s"], 0)

        # In an encrypted room: real Megolm ciphertext, read by the sampled receivers.
        (sealed,) = report["runs"]["fanout_r100_e2e"]
        self.assertEqual(sealed["receivers"], 100)
        self.assertGreater(sealed["deliveries"], 0)
        self.assertEqual(
            (
                sealed["order_errors"],
                sealed["unexpected_events"],
                sealed["stuck_after_drain"],
                sealed["errors"],
            ),
            (0, 0, 0, 0),
        )

        (latency,) = report["runs"]["latency_r100_1k"]
        # 10 sampled receivers time every message of the measured half second.
        self.assertGreater(latency["samples"], 1000)
        self.assertGreater(latency["latency"]["p99_ms"], 0)
        self.assertEqual((latency["order_errors"], latency["stuck_after_drain"]), (0, 0))
        self.assertIn("latency_r100_1k", bench.output())

    async def test_flood_49_runs_with_the_default_handshake_budgets(self) -> None:
        bench, report = await self.bench(
            "--scenarios", "flood_49",
            "--flood-duration", "1", "--flood-resumed-rate", "10", "--flood-full-rate", "4",
            "--flood-concurrency", "64", "--flood-max", "3000",
            # Capped, so the 3000 connections last past the ramp and the
            # window (2 s): uncapped, a fast machine opened them all in
            # under a second and the flooder had ended before the window.
            "--flood-rate", "1000",
        )  # fmt: skip
        (flood,) = report["runs"]["flood_49"]
        for phase in ("none", "one_prefix", "many_prefixes"):
            for kind in ("resumed", "full"):
                self.assertGreater(flood[phase][kind]["ok"], 0, (phase, kind, flood[phase][kind]))
            self.assertGreater(flood[phase]["server_cpu_s"], 0)
        for phase in ("one_prefix", "many_prefixes"):
            self.assertNotIn("error", flood[phase]["flood"])
            self.assertGreater(flood[phase]["flood"]["hellos"], 0)
        # The one-/24 flood ran into that network's default budget.
        self.assertGreater(flood["one_prefix"]["flood"]["alerts_busy"], 0)
        self.assertIn("flood_49", bench.output())
