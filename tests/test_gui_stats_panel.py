"""The admin statistics panel, fed with real ``stats`` frames from a real
server (with and without its monitor child), rendered offscreen."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from tests.processes import spawn
from tests.support import PYTHON, EventQueue, RunningServer, logged_in, start_server, until
from tests.test_moderation import admin_session

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

try:
    import pyqtgraph as pg
    from PyQt6.QtCore import QRect, Qt
    from PyQt6.QtGui import QColor, QImage, QPalette
    from PyQt6.QtWidgets import QApplication, QLabel, QTableWidget

    from chatclient.gui.stats_panel import MIB, TEXT_COLUMNS, StatsPanel
except ImportError:  # pragma: no cover - the gui extra is part of make test
    StatsPanel = None  # type: ignore[assignment,misc]
    APP = None
else:
    APP = QApplication.instance() or QApplication([])

INTERVAL = 0.2
#: An idle child that holds exactly argv[1] open file descriptors (the
#: listing counts its own descriptor too).
IDLE_WITH_FDS = (
    "import os, sys, time\n"
    "want, held = int(sys.argv[1]), []\n"
    "while len(os.listdir('/proc/self/fd')) - 1 < want:\n"
    "    held.append(open(os.devnull))\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)
SERIES = ("cpu", "system_cpu", "memory", "connections", "authenticated", "messages_in", "messages_out")


async def monitored_server(testcase: unittest.TestCase, samples: int = 3) -> RunningServer:
    """A server whose monitor child has taken ``samples`` samples."""
    server = await start_server(testcase, monitor_enabled=True, monitor_interval=INTERVAL)
    monitoring = server.service.getServiceNamed("monitoring")
    await until(lambda: len(monitoring.history) >= samples, timeout=15)
    return server


def label(panel: Any, name: str) -> str:
    return panel.findChild(QLabel, name).text()


def table_rows(panel: Any) -> list[list[str]]:
    table = panel.findChild(QTableWidget, "processes")
    return [
        [table.item(row, column).text() for column in range(table.columnCount())]
        for row in range(table.rowCount())
    ]


def dark_palette() -> Any:
    palette = QPalette()
    for role, colour in (
        (QPalette.ColorRole.Window, "#2b2b2b"),
        (QPalette.ColorRole.WindowText, "#e6e6e6"),
        (QPalette.ColorRole.Base, "#1e1e1e"),
        (QPalette.ColorRole.AlternateBase, "#262626"),
        (QPalette.ColorRole.Text, "#e6e6e6"),
        (QPalette.ColorRole.Button, "#353535"),
        (QPalette.ColorRole.ButtonText, "#e6e6e6"),
        (QPalette.ColorRole.Highlight, "#3d7dd8"),
        (QPalette.ColorRole.HighlightedText, "#ffffff"),
    ):
        palette.setColor(role, QColor(colour))
    return palette


def light_palette() -> Any:
    palette = QPalette()
    for role, colour in (
        (QPalette.ColorRole.Window, "#efefef"),
        (QPalette.ColorRole.WindowText, "#1a1a1a"),
        (QPalette.ColorRole.Base, "#ffffff"),
        (QPalette.ColorRole.AlternateBase, "#f5f5f5"),
        (QPalette.ColorRole.Text, "#1a1a1a"),
        (QPalette.ColorRole.Button, "#e0e0e0"),
        (QPalette.ColorRole.ButtonText, "#1a1a1a"),
        (QPalette.ColorRole.Highlight, "#3d7dd8"),
        (QPalette.ColorRole.HighlightedText, "#ffffff"),
    ):
        palette.setColor(role, QColor(colour))
    return palette


def near(a: Any, b: Any, tolerance: int = 40) -> bool:
    return abs(a.red() - b.red()) + abs(a.green() - b.green()) + abs(a.blue() - b.blue()) <= tolerance


def colour_share(image: Any, rect: Any, colour: Any, tolerance: int = 40) -> tuple[float, int]:
    """(share, count) of the pixels in ``rect`` of ``image`` near ``colour``."""
    hits = total = 0
    for y in range(rect.top(), rect.bottom(), 2):
        for x in range(rect.left(), rect.right(), 2):
            total += 1
            hits += near(image.pixelColor(x, y), colour, tolerance)
    return hits / max(total, 1), hits


class StatsPanelTests(unittest.TestCase):
    if StatsPanel is None:
        skip = "PyQt6 and pyqtgraph are not installed (pip install -e '.[gui]')"

    def make_panel(self, palette: Any = None) -> Any:
        panel = StatsPanel()
        if palette is not None:
            panel.setPalette(palette)
        self.addCleanup(panel.close)
        return panel

    async def test_load_plots_the_history_and_lists_the_server_process(self) -> None:
        server = await monitored_server(self)
        admin = await admin_session(self, server)
        answer = await admin.request({"type": "stats"})
        history = answer["history"]
        self.assertGreaterEqual(len(history), 3)
        panel = self.make_panel()
        panel.load(answer)

        # History samples, oldest first, then the frame's own sample.
        samples = [*history, answer["sample"]]
        self.assertEqual(panel.series("cpu"), [s["tree"]["cpu_percent"] for s in samples])
        self.assertEqual(panel.series("system_cpu"), [s["system"]["cpu_percent"] for s in samples])
        self.assertEqual(panel.series("memory"), [s["tree"]["rss_bytes"] / MIB for s in samples])
        self.assertTrue(all(mib > 1 for mib in panel.series("memory")))
        # Connections: the TCP count where a history sample has one, then the app's gauge.
        established = [
            s["tcp"]["states"]["ESTABLISHED"] for s in history if "ESTABLISHED" in s["tcp"]["states"]
        ]
        self.assertEqual(panel.series("connections"), [*established, answer["app"]["connections"]])
        # The app's own counters have no history.
        self.assertEqual(panel.series("authenticated"), [1])
        self.assertEqual(panel.series("messages_in"), [answer["app"]["per_second"]["messages_in"]])
        self.assertEqual(panel.series("messages_out"), [answer["app"]["per_second"]["messages_out"]])
        self.assertEqual(panel.points_added, 1)

        rows = {int(row[0]): row for row in table_rows(panel)}
        self.assertIn(os.getpid(), rows)
        own = next(p for p in answer["sample"]["processes"] if p["pid"] == os.getpid())
        # One process serves alone: it is the server, with the app's numbers.
        self.assertEqual(rows[os.getpid()][1:3], ["server", own["name"]])
        self.assertEqual(float(rows[os.getpid()][5]), round(own["rss_bytes"] / MIB, 1))
        self.assertEqual(rows[os.getpid()][8], str(answer["app"]["connections"]))
        self.assertFalse(panel.findChild(QLabel, "workers").isVisibleTo(panel))
        self.assertEqual(label(panel, "monitor"), f"monitor up, pid {answer['monitor']['pid']}, restarts 0")
        self.assertEqual(label(panel, "users_online"), "Users online 1")
        self.assertRegex(label(panel, "uptime"), r"^Uptime \d+s$")
        self.assertRegex(label(panel, "db_commit"), r"^DB commit avg \d+\.\d ms$")

        # Loading again starts over instead of appending.
        panel.load(answer)
        self.assertEqual(len(panel.series("cpu")), len(samples))
        self.assertEqual(panel.points_added, 1)
        panel.clear()
        self.assertEqual([panel.series(name) for name in SERIES], [[]] * len(SERIES))
        self.assertEqual((table_rows(panel), panel.points_added), ([], 0))

    async def test_the_process_table_sorts_numbers_as_numbers_and_is_read_only(self) -> None:
        server = await monitored_server(self)
        monitoring = server.service.getServiceNamed("monitoring")
        # Two more processes in the server's tree, with 9 and 10 open
        # files: as text "10" sorts before "9", whatever the server holds.
        children = [spawn(self, "idle", [PYTHON, "-c", IDLE_WITH_FDS, str(n)]) for n in (9, 10)]
        for child in children:
            await child.wait_for("^up$")
        pids = {child.transport.pid for child in children}

        def listed() -> bool:
            return pids <= {p["pid"] for p in monitoring.latest["processes"]}

        await until(listed, timeout=15)
        admin = await admin_session(self, server)
        panel = self.make_panel()
        panel.load(await admin.request({"type": "stats"}))
        table = panel.findChild(QTableWidget, "processes")
        rows = table_rows(panel)
        self.assertLessEqual(pids | {os.getpid()}, {int(row[0]) for row in rows})
        # The busiest process first by default.
        cpu = [float(row[4]) for row in rows]
        self.assertEqual(cpu, sorted(cpu, reverse=True))

        table.sortByColumn(7, Qt.SortOrder.AscendingOrder)
        fds = [row[7] for row in table_rows(panel)]
        self.assertEqual(fds, sorted(fds, key=int))
        self.assertNotEqual(fds, sorted(fds))  # the order as text would differ
        table.sortByColumn(5, Qt.SortOrder.DescendingOrder)
        rss = [float(row[5]) for row in table_rows(panel)]
        self.assertEqual(rss, sorted(rss, reverse=True))
        for column in range(table.columnCount()):
            item = table.item(0, column)
            self.assertFalse(item.flags() & Qt.ItemFlag.ItemIsEditable)
            right = bool(item.textAlignment() & Qt.AlignmentFlag.AlignRight.value)
            self.assertEqual(right, column not in TEXT_COLUMNS, column)

    async def test_a_pushed_frame_adds_one_point_to_every_series(self) -> None:
        server = await monitored_server(self)
        admin = await admin_session(self, server)
        alice = await logged_in(self, server, "alice")
        events = EventQueue(admin)
        panel = self.make_panel()
        panel.load(await admin.request({"type": "stats", "subscribe": True}))
        before = {name: len(panel.series(name)) for name in SERIES}
        for n in range(3):
            await alice.say("lobby", f"counted {n}")

        pushed = await events.next(lambda e: e["type"] == "stats" and e["sample"] is not None, timeout=15)
        panel.add(pushed)
        self.assertEqual(
            {name: len(panel.series(name)) for name in SERIES}, {n: c + 1 for n, c in before.items()}
        )
        self.assertEqual(panel.points_added, 2)
        app, sample = pushed["app"], pushed["sample"]
        self.assertEqual(
            [panel.series(name)[-1] for name in SERIES],
            [
                sample["tree"]["cpu_percent"],
                sample["system"]["cpu_percent"],
                sample["tree"]["rss_bytes"] / MIB,
                app["connections"],
                app["authenticated"],
                app["per_second"]["messages_in"],
                app["per_second"]["messages_out"],
            ],
        )
        self.assertEqual((app["connections"], label(panel, "users_online")), (2, "Users online 2"))

    async def test_without_the_monitor_connections_and_messages_are_still_plotted(self) -> None:
        server = await start_server(self, monitor_interval=INTERVAL)  # the monitor child is off
        admin = await admin_session(self, server)
        alice = await logged_in(self, server, "alice")
        events = EventQueue(admin)
        answer = await admin.request({"type": "stats", "subscribe": True})
        self.assertIsNone(answer["sample"])
        panel = self.make_panel()
        panel.load(answer)
        self.assertEqual((panel.series("connections"), panel.series("authenticated")), ([2], [2]))
        self.assertEqual(len(panel.series("messages_in")), 1)
        self.assertEqual(label(panel, "monitor"), "monitor off")
        self.assertEqual(table_rows(panel), [])

        await alice.say("lobby", "while nobody measures the CPU")
        pushed = await events.next(lambda e: e["type"] == "stats", timeout=5)
        self.assertIsNone(pushed["sample"])
        panel.add(pushed)
        self.assertEqual(panel.points_added, 2)
        self.assertEqual(panel.series("connections"), [2, 2])
        self.assertEqual(panel.series("messages_out")[-1], pushed["app"]["per_second"]["messages_out"])
        self.assertEqual(
            (panel.series("cpu"), panel.series("system_cpu"), panel.series("memory")), ([], [], [])
        )
        self.assertEqual(label(panel, "monitor"), "monitor off")

    async def test_malformed_members_are_left_out_without_raising(self) -> None:
        server = await monitored_server(self)
        admin = await admin_session(self, server)
        answer = await admin.request({"type": "stats"})
        real = answer["history"][-1]
        broken = copy.deepcopy(answer)
        # What a buggy or hostile server could send, built on a real frame.
        broken["app"].update(uptime="long", connections=None, authenticated=True, per_second=[1, 2])
        broken["app"]["users_online"] = float("nan")
        broken["sample"]["tree"] = None
        broken["sample"]["system"]["cpu_percent"] = "12"
        broken["sample"]["processes"] = [None, 7, {"pid": "x", "name": 3}, real["processes"][0]]
        broken["monitor"] = "up"
        broken["history"] = [None, 5, {"ts": "yesterday"}, {"ts": real["ts"], "tree": {}}, real]
        panel = self.make_panel()
        panel.load(broken)

        self.assertEqual(panel.series("cpu"), [real["tree"]["cpu_percent"]])
        self.assertEqual(panel.series("system_cpu"), [real["system"]["cpu_percent"]])
        self.assertEqual(panel.series("memory"), [real["tree"]["rss_bytes"] / MIB])
        # Only the real history sample had a TCP count; the broken app gauges add nothing.
        self.assertEqual(len(panel.series("connections")), 1 if "ESTABLISHED" in real["tcp"]["states"] else 0)
        self.assertEqual([panel.series(n) for n in ("authenticated", "messages_in")], [[], []])
        self.assertEqual(panel.points_added, 1)
        self.assertEqual(
            (label(panel, "uptime"), label(panel, "users_online")), ("Uptime \u2014", "Users online \u2014")
        )
        self.assertEqual(label(panel, "monitor"), "monitor \u2014")
        rows = table_rows(panel)
        self.assertEqual(len(rows), 2)
        self.assertIn([""] * 11, rows)
        for junk in (None, "stats", [], {"app": 5, "sample": "x", "monitor": None}):
            panel.add(junk)
        self.assertEqual(panel.points_added, 2)
        panel.load(None)
        self.assertEqual(panel.series("memory"), [])

    async def test_renders_a_readable_dashboard_in_light_and_dark_palettes(self) -> None:
        server = await monitored_server(self)
        admin = await admin_session(self, server)
        alice = await logged_in(self, server, "alice")
        events = EventQueue(admin)
        panel = self.make_panel(light_palette())
        panel.resize(900, 700)
        panel.show()
        panel.load(await admin.request({"type": "stats", "subscribe": True}))
        for n in range(4):
            for m in range(n * 5 + 1):
                await alice.say("lobby", f"traffic {n}.{m}")
            panel.add(
                await events.next(lambda e: e["type"] == "stats" and e["sample"] is not None, timeout=15)
            )

        plots = panel.findChildren(pg.PlotWidget)
        self.assertEqual(len(plots), 4)
        messages = plots[3]
        # The data area of the messages chart (the legend is outside it).
        view = messages.mapFromScene(messages.getPlotItem().getViewBox().sceneBoundingRect()).boundingRect()
        area = QRect(messages.mapTo(panel, view.topLeft()), view.size())
        self.assertGreater(area.width() * area.height(), 300 * 150)

        def render() -> Any:
            APP.processEvents()
            path = Path(self.mktemp()).with_suffix(".png")
            self.assertTrue(panel.grab().save(str(path)))
            self.assertGreater(path.stat().st_size, 20_000)
            image = QImage(str(path))
            self.assertEqual((image.width(), image.height()), (900, 700))
            return image

        light = render()
        base = light_palette().color(QPalette.ColorRole.Base)
        share, _ = colour_share(light, area, base)
        self.assertGreater(share, 0.5)  # the chart is drawn on the palette's base colour
        light_pens = panel.pen_colors()
        for pen in light_pens:
            self.assertGreater(colour_share(light, area, pen)[1], 10)  # both series are drawn

        panel.setPalette(dark_palette())
        dark = render()
        share, _ = colour_share(dark, area, dark_palette().color(QPalette.ColorRole.Base))
        self.assertGreater(share, 0.5)
        dark_pens = panel.pen_colors()
        self.assertNotEqual([c.name() for c in dark_pens], [c.name() for c in light_pens])
        for pen in dark_pens:
            self.assertGreater(colour_share(dark, area, pen)[1], 10)
            # Readable: much lighter than the dark background.
            self.assertGreater(pen.lightnessF(), 0.55)
        self.assertEqual(colour_share(dark, area, base)[1], 0)  # nothing of the light look is left
