"""The admin "Server statistics" panel: charts, a summary row and the
server's process table, fed by the answer to a ``stats`` request and by
the ``stats`` events pushed after ``subscribe: true``.

Everything shown comes from the server as JSON, so every member is read
defensively: a missing, null or non-numeric value leaves its point out
(or shows a dash) instead of raising.

Where the points come from:

* History samples (the monitor's last hour) carry no application data.
  They give the CPU and memory points, and the ``connections`` point from
  the server's ESTABLISHED TCP sockets, which is what the app's
  ``connections`` gauge counts as well.  ``authenticated`` and the
  message rates have no history and start with the first live frame.
* A live frame gives one point per series at the time it was received.
  Its sample is the monitor's latest, which the server keeps after the
  monitor child died; a sample the monitor's health calls stale is left
  out rather than drawn as a flat line of old values.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable
from typing import Any

import pyqtgraph as pg
from PyQt6.QtCore import QEvent, Qt
from PyQt6.QtGui import QColor, QPalette
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from chatclient.gui.present import present

#: The server's default ``[monitor] interval``, until a frame tells.
DEFAULT_INTERVAL = 5.0

#: Points kept per series: an hour at the default 5 s monitor interval.
MAX_POINTS = 720

MIB = 1024 * 1024

#: A live sample older than this many monitor intervals (and at least
#: STALE_SECONDS) is not plotted; the floor keeps a short interval's
#: ordinary jitter from dropping points.
STALE_INTERVALS = 3
STALE_SECONDS = 10.0

DASH = "\u2014"

# chart key -> title; the order is the 2x2 grid's, row by row.
_CHARTS = {
    "cpu": "CPU %",
    "memory": "Memory (server RSS, MiB)",
    "connections": "Connections",
    "messages": "Messages per second",
}

# series name -> (chart, legend label, pen index)
_SERIES = {
    "cpu": ("cpu", "server", 0),
    "system_cpu": ("cpu", "system", 1),
    "memory": ("memory", "server RSS", 0),
    "connections": ("connections", "connections", 0),
    "authenticated": ("connections", "authenticated", 1),
    "messages_in": ("messages", "in", 0),
    "messages_out": ("messages", "out", 1),
}

# The least y range of a chart: an idle server's zeros still get a scale.
_Y_FLOOR = {"cpu": 10.0, "memory": 1.0, "connections": 1.0, "messages": 1.0}

_RESTYLE_EVENTS = (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange)
# Qt 6.6 and later announce a new device pixel ratio.
_DPR_CHANGE = getattr(QEvent.Type, "DevicePixelRatioChange", None)

_COLUMNS = ("PID", "Role", "Name", "Status", "CPU %", "RSS MiB", "Threads", "FDs", "Conns", "In/s", "Out/s")
#: The columns of text, left-aligned; the others are numbers.
TEXT_COLUMNS = (1, 2, 3)
CPU_COLUMN = 4


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None for anything else (bools too:
    JSON ``true`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def member(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _nice_step(span: float) -> float:
    """The 1, 2 or 5 times a power of ten nearest above ``span``."""
    if span <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(span))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= span)


def format_uptime(seconds: Any) -> str:
    """``"2h 03m"``; days and seconds only where the hours are not the
    interesting unit."""
    value = number(seconds)
    if value is None or value < 0:
        return DASH
    total = int(value)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _count_text(value: Any) -> str:
    n = number(value)
    return DASH if n is None else f"{n:.0f}"


def monitor_text(monitor: Any) -> str:
    if not isinstance(monitor, dict):
        return f"monitor {DASH}"
    if monitor.get("enabled") is False:
        return "monitor off"
    restarts = _count_text(monitor.get("restarts"))
    if monitor.get("up") is True:
        return f"monitor up, pid {_count_text(monitor.get('pid'))}, restarts {restarts}"
    return f"monitor down, restarts {restarts}"


def workers_text(workers: Any) -> str:
    """``"Workers 2/2 up, restarts 3"`` from a frame's ``workers``."""
    entries = [w for w in workers if isinstance(w, dict)] if isinstance(workers, list) else []
    up = sum(1 for w in entries if w.get("up") is True)
    restarts = sum(int(n) for n in (number(w.get("restarts")) for w in entries) if n is not None)
    return f"Workers {up}/{len(entries)} up, restarts {restarts}"


def process_roles(stats: Any) -> dict[int, dict[str, Any]]:
    """pid -> what the frame says of that process: its role (``server``,
    or with workers ``main`` and ``worker N``) and, for a process that
    serves clients, its connections and message rates.  (The monitor
    leaves itself out of its samples.)"""
    roles: dict[int, dict[str, Any]] = {}
    workers = member(stats, "workers")
    workers = [w for w in workers if isinstance(w, dict)] if isinstance(workers, list) else []
    server = number(member(stats, "sample", "server_pid"))
    if server is not None:
        app = member(stats, "app")
        roles[int(server)] = (
            {"role": "main"}
            if workers
            else {
                "role": "server",
                "connections": member(app, "connections"),
                "in": member(app, "per_second", "messages_in"),
                "out": member(app, "per_second", "messages_out"),
            }
        )
    for worker in workers:
        pid, index = number(worker.get("pid")), number(worker.get("index"))
        if pid is not None and index is not None:
            roles[int(pid)] = {
                "role": f"worker {index:.0f}",
                "connections": worker.get("connections"),
                "in": worker.get("messages_in"),
                "out": worker.get("messages_out"),
            }
    return roles


class _SortItem(QTableWidgetItem):
    """A cell that sorts by its number, not its text ("10" after "9");
    empty cells sort below every number."""

    def __init__(self, text: str, key: float | None) -> None:
        super().__init__(text)
        self.key = key

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _SortItem):
            if self.key is None or other.key is None:
                return self.key is None and other.key is not None
            return self.key < other.key
        return super().__lt__(other)


class StatsPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points_added = 0
        #: The monitor interval as last reported: the x axis shows at
        #: least ten of them.
        self._interval = DEFAULT_INTERVAL
        self._data: dict[str, collections.deque[tuple[float, float]]] = {
            name: collections.deque(maxlen=MAX_POINTS) for name in _SERIES
        }
        self._plots: dict[str, pg.PlotWidget] = {}
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._legends: list[pg.LegendItem] = []

        grid_host = QWidget()
        grid = QGridLayout(grid_host)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(6)
        for index, (key, title) in enumerate(_CHARTS.items()):
            plot = pg.PlotWidget(axisItems={"bottom": pg.DateAxisItem(orientation="bottom")})
            # Per widget, not pg.setConfigOptions: other plots in the
            # process keep their own settings.
            plot.setAntialiasing(True)
            plot.setMinimumSize(200, 120)
            # A dashboard that rescales itself on every frame: zooming by
            # hand would be undone at the next one.
            plot.hideButtons()
            plot.setMenuEnabled(False)
            plot.setMouseEnabled(x=False, y=False)
            item = plot.getPlotItem()
            item.showGrid(x=True, y=True, alpha=0.2)
            item.setTitle(title)
            self._plots[key] = plot
            grid.addWidget(plot, index // 2, index % 2)
        for key in _CHARTS:
            names = [n for n, (chart, _, _) in _SERIES.items() if chart == key]
            for name in names:
                self._curves[name] = self._plots[key].plot([], [], antialias=True)
            if len(names) > 1:
                # In the title row, right of the (left-aligned) title: a
                # legend inside the plot would hide the newest points.
                item = self._plots[key].getPlotItem()
                legend = pg.LegendItem(colCount=len(names), horSpacing=14)
                legend.setParentItem(item)
                legend.anchor(itemPos=(1, 0), parentPos=(1, 0), offset=(-4, -2))
                for name in names:
                    legend.addItem(self._curves[name], _SERIES[name][1])
                self._legends.append(legend)

        self._labels: dict[str, QLabel] = {}
        summary = QHBoxLayout()
        summary.setSpacing(18)
        for key in ("uptime", "users_online", "rooms", "db_commit", "crypto_queue", "monitor", "workers"):
            label = QLabel()
            label.setObjectName(key)
            # Values come from the network: never let them be markup.
            label.setTextFormat(Qt.TextFormat.PlainText)
            self._labels[key] = label
            summary.addWidget(label)
        summary.addStretch(1)

        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setObjectName("processes")
        self.table.setHorizontalHeaderLabels(list(_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        present(self.table.verticalHeader()).setVisible(False)
        header = present(self.table.horizontalHeader())
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.setSortingEnabled(True)
        # The busiest process first until the user picks another order.
        self.table.sortByColumn(CPU_COLUMN, Qt.SortOrder.DescendingOrder)

        bottom = QWidget()
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addLayout(summary)
        bottom_layout.addWidget(self.table)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(grid_host)
        splitter.addWidget(bottom)
        # Relative sizes: the charts get about 60 % of whatever height
        # the panel has, the table enough for several processes.
        splitter.setSizes([620, 380])
        splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

        self._built = True
        self.apply_palette()
        self.clear()

    # --- feeding ----------------------------------------------------------------------

    def load(self, answer: dict) -> None:
        """Start over from the answer to a ``stats`` request: its history,
        then the frame itself."""
        self.clear()
        if not isinstance(answer, dict):
            return
        history = answer.get("history")
        if not isinstance(history, list):
            history = []
        samples = sorted((s for s in history if number(member(s, "ts")) is not None), key=lambda s: s["ts"])
        if samples:
            offset = self._clock_offset(answer, samples[-1])
            for sample in samples:
                x = sample["ts"] + offset
                self._append_sample(x, sample)
                self._append("connections", x, member(sample, "tcp", "states", "ESTABLISHED"))
        self.add(answer)

    def add(self, stats: dict) -> None:
        """One live ``stats`` frame: a point per series, as of now."""
        if not isinstance(stats, dict):
            return
        x = time.time()
        app = stats.get("app")
        sample = stats.get("sample")
        interval = number(member(stats, "monitor", "interval"))
        if interval is not None and interval > 0:
            self._interval = interval
        if isinstance(sample, dict) and not self._stale(stats.get("monitor")):
            self._append_sample(x, sample)
        for name in ("connections", "authenticated"):
            self._append(name, x, member(app, name))
        for name in ("messages_in", "messages_out"):
            self._append(name, x, member(app, "per_second", name))
        self.points_added += 1
        self._redraw()
        self._show_summary(app, stats.get("monitor"), stats.get("workers"))
        self._show_processes(
            sample.get("processes") if isinstance(sample, dict) else None, process_roles(stats)
        )

    def clear(self) -> None:
        for points in self._data.values():
            points.clear()
        self.points_added = 0
        self._redraw()
        self._show_summary({}, None, None)
        self._show_processes(None, {})

    def series(self, name: str) -> list[float]:
        """The y values of a series, oldest first (KeyError for an unknown name)."""
        return [y for _, y in self._data[name]]

    def _append(self, name: str, x: float, value: Any, scale: float = 1.0) -> None:
        y = number(value)
        if y is not None:
            self._data[name].append((x, y / scale))

    def _append_sample(self, x: float, sample: Any) -> None:
        self._append("cpu", x, member(sample, "tree", "cpu_percent"))
        self._append("system_cpu", x, member(sample, "system", "cpu_percent"))
        self._append("memory", x, member(sample, "tree", "rss_bytes"), MIB)

    @staticmethod
    def _clock_offset(answer: dict, newest: dict) -> float:
        """Local time minus the server's: sample ``ts`` are the server
        host's clock, live points are ours, and the two need not agree.
        The server's "now" is its latest sample's ``ts`` plus that
        sample's age; without a usable age the newest sample stands in
        for "now"."""
        ts = number(member(answer, "sample", "ts"))
        age = number(member(answer, "monitor", "last_sample_age"))
        if ts is None or age is None:
            ts, age = newest["ts"], 0.0
        return time.time() - (ts + age)

    @staticmethod
    def _stale(monitor: Any) -> bool:
        if not isinstance(monitor, dict):
            return False
        if monitor.get("up") is False:
            return True
        age = number(monitor.get("last_sample_age"))
        interval = number(monitor.get("interval"))
        return (
            age is not None and interval is not None and age > max(STALE_INTERVALS * interval, STALE_SECONDS)
        )

    # --- showing ----------------------------------------------------------------------

    def _redraw(self) -> None:
        for name, curve in self._curves.items():
            points = self._data[name]
            # A lone point has no line to show it: mark it until the
            # second one comes.
            symbol = "o" if len(points) == 1 else None
            curve.setData([x for x, _ in points], [y for _, y in points], symbol=symbol)
        xs = [x for points in self._data.values() for x, _ in points]
        # One time span for all four charts, so that a moment lines up
        # across them (the message rates have no history, the CPU has).
        right = max(xs, default=time.time())
        left = min(min(xs, default=right), right - 10 * self._interval)
        margin = (right - left) * 0.02  # room for a lone point's mark
        for key, plot in self._plots.items():
            ys = [y for name, (chart, _, _) in _SERIES.items() if chart == key for _, y in self._data[name]]
            # From zero, as counts and percentages should be read.
            top = max(max(ys, default=0.0), _Y_FLOOR[key]) * 1.1
            # Room below zero: the axis leaves out a label that would
            # stick out of the chart, which "0" otherwise does, and a
            # flat zero line stays off the frame.
            plot.setYRange(-0.06 * top, top, padding=0)
            if key == "connections":
                # Connections are whole: no 0.5 ticks.
                step = max(1.0, _nice_step(top / 4))
                plot.getAxis("left").setTickSpacing(step, step)
            plot.setXRange(left - margin, right + margin, padding=0)

    def _show_summary(self, app: Any, monitor: Any, workers: Any) -> None:
        db = number(member(app, "db_commit_ms_avg"))
        texts = {
            "uptime": f"Uptime {format_uptime(member(app, 'uptime'))}",
            "users_online": f"Users online {_count_text(member(app, 'users_online'))}",
            "rooms": f"Rooms {_count_text(member(app, 'rooms'))}",
            "db_commit": f"DB commit avg {DASH if db is None else f'{db:.1f} ms'}",
            "crypto_queue": f"Crypto queue {_count_text(member(app, 'crypto_queue'))}",
            "monitor": monitor_text(monitor),
            "workers": workers_text(workers),
        }
        for key, text in texts.items():
            self._labels[key].setText(text)
        # One process serves alone unless the frame lists workers.
        self._labels["workers"].setVisible(isinstance(workers, list))

    def _show_processes(self, processes: Any, roles: dict[int, dict[str, Any]]) -> None:
        rows = [p for p in processes if isinstance(p, dict)] if isinstance(processes, list) else []
        table = self.table
        # Sorting while filling would move rows under the loop's feet.
        table.setSortingEnabled(False)
        table.setRowCount(len(rows))
        for row, process in enumerate(rows):
            pid = number(process.get("pid"))
            role = roles.get(int(pid), {}) if pid is not None else {}
            for column, item in enumerate(self._process_cells(process, role)):
                table.setItem(row, column, item)
        table.setSortingEnabled(True)

    @staticmethod
    def _process_cells(process: dict, role: dict[str, Any]) -> Iterable[QTableWidgetItem]:
        def text(value: Any) -> QTableWidgetItem:
            return QTableWidgetItem(value if isinstance(value, str) else "")

        def numeric(value: Any, scale: float = 1.0, digits: int = 0) -> QTableWidgetItem:
            n = number(value)
            key = None if n is None else n / scale
            item = _SortItem("" if key is None else f"{key:.{digits}f}", key)
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            return item

        cells = [
            numeric(process.get("pid")),
            text(role.get("role")),
            text(process.get("name")),
            text(process.get("status")),
            numeric(process.get("cpu_percent"), digits=1),
            numeric(process.get("rss_bytes"), MIB, 1),
            numeric(process.get("threads")),
            numeric(process.get("fds")),
            numeric(role.get("connections")),
            numeric(role.get("in"), digits=1),
            numeric(role.get("out"), digits=1),
        ]
        for cell in cells:
            cell.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
        return cells

    # --- colours ----------------------------------------------------------------------

    def pen_colors(self) -> tuple[QColor, QColor]:
        """The two series colours: the palette's highlight hue and its
        complement, lightened on a dark background and darkened on a light
        one so both stay readable on it."""
        palette = self.palette()
        background = palette.color(QPalette.ColorRole.Base)
        hue = palette.color(QPalette.ColorRole.Highlight).hslHueF()
        if hue < 0:  # a grey highlight has no hue: blue
            hue = 0.58
        lightness = 0.68 if background.lightnessF() < 0.5 else 0.40
        return (
            QColor.fromHslF(hue, 0.80, lightness),
            QColor.fromHslF((hue + 0.5) % 1.0, 0.85, lightness),
        )

    def apply_palette(self) -> None:
        """Colour the charts from ``self.palette()`` (called on palette changes)."""
        palette = self.palette()
        background = palette.color(QPalette.ColorRole.Base)
        foreground = palette.color(QPalette.ColorRole.Text)
        pens = self.pen_colors()
        # Cosmetic pens are measured in device pixels: without the ratio
        # a line is half as thick on a 2x screen.
        width = 2 * max(1.0, self.devicePixelRatioF())
        for key, plot in self._plots.items():
            plot.setBackground(background)
            item = plot.getPlotItem()
            item.setTitle(_CHARTS[key], color=foreground, size="10pt", justify="left")
            for side in ("left", "bottom"):
                axis = item.getAxis(side)
                axis.setPen(foreground)
                axis.setTextPen(foreground)
        for name, curve in self._curves.items():
            index = _SERIES[name][2]
            # The second series is dashed as well: it stays told apart
            # without colour vision, and where both have the same values
            # (connections all authenticated) the first shows through.
            style = Qt.PenStyle.DashLine if index else Qt.PenStyle.SolidLine
            curve.setPen(pg.mkPen(pens[index], width=width, cosmetic=True, style=style))
            curve.setSymbolPen(pens[index])
            curve.setSymbolBrush(pens[index])
            curve.setSymbolSize(7)
        for legend in self._legends:
            legend.setLabelTextColor(foreground)
            # A label bakes its colour into its HTML: set the text again.
            for _, label in legend.items:
                label.setText(label.text, color=foreground)

    def changeEvent(self, event: QEvent | None) -> None:
        super().changeEvent(event)
        if event is not None and event.type() in _RESTYLE_EVENTS and getattr(self, "_built", False):
            self.apply_palette()

    def event(self, event: QEvent | None) -> bool:
        # Not a changeEvent: moving to a screen of another pixel ratio
        # only reaches QWidget.event.
        if event is not None and event.type() == _DPR_CHANGE and getattr(self, "_built", False):
            self.apply_palette()
        return super().event(event)
