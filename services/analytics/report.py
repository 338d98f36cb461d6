"""`listenpost report OUT.html`: one self-contained HTML page of figures over an export (docs/report.md).

The input is what `listenpost export` writes: ``EXPORT_DIR/<table>/date=YYYY-MM-DD/*.parquet`` (or
``.jsonl``, ``.csv``, read back with their schemas by :mod:`services.analytics.reader`) for the
tables ``calls``, ``windows``, ``facets``, ``decisions`` and ``dead_letters``. Any of them may be missing
or empty; its sections then say so ("No data: ...") instead of drawing.

Three layers, each testable alone:

- reading: :class:`Export` runs DuckDB over the export's files (hive partitions) and returns plain rows;
- drawing: ``_plot_*`` turn plain rows into PNG images with :class:`matplotlib.figure.Figure` (the Agg
  canvas, no pyplot and no global backend switch, so it is safe in threads and in a server process);
- rendering: :func:`render_html` fills a Jinja2 template with autoescaping on. Captions, spans, queue
  names, rule ids and dead-letter reasons are untrusted text: they reach the page escaped, and the page's
  Content-Security-Policy runs no script at all even if something slipped through.

The page needs nothing else: images are ``data:`` URIs, the CSS is inline, there is no JavaScript.
Every chart and table is bounded (the top categories plus "other"), so a large export makes a page of
the same size.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb
import jinja2
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel

from services.analytics.reader import export_files, read_table
from services.analytics.tables import TABLES, TableName
from services.analytics.writer import Format
from services.files import write_atomically

#: The tables of an export, in the order the header lists them.
#: Categories drawn on their own in a legend or on an axis; the rest are summed as :data:`OTHER`.
TOP_CATEGORIES: Final = 8
#: Rules drawn in the decisions chart (and listed in its table).
TOP_RULES: Final = 15
#: Facet labels listed in the phrases table, and phrases per label.
TOP_LABELS: Final = 24
TOP_PHRASES: Final = 5
#: Rows of the dead-letter reasons table.
TOP_REASONS: Final = 10
#: Longest text shown for a span, a reason or any other cell of untrusted text.
MAX_TEXT: Final = 160
#: Days drawn one bar each; a longer range draws only the days that have calls.
MAX_DAYS: Final = 366
OTHER: Final = "other"
NONE_LABEL: Final = "(none)"
DEFAULT_TITLE: Final = "listenpost report"
_OTHER_COLOUR: Final = "#b4b4b4"
_DPI: Final = 96


class ReportSummary(BaseModel):
    """What :func:`render_report` wrote."""

    out: Path
    calls: int
    hours: float
    windows: int
    facets: int
    decisions: int
    alerts: int
    dead_letters: int
    #: Sections drawn with data, and the ids of those that only say "No data".
    sections: int
    empty_sections: list[str]
    #: Images in the page, and the page's size in bytes.
    images: int
    bytes: int


@dataclass(frozen=True)
class Plot:
    """One chart: a PNG as base64, its title (also the image's alt text) and a one-line caption."""

    title: str
    caption: str
    png_base64: str


@dataclass(frozen=True)
class Table:
    """A small table of text cells (escaped when rendered)."""

    caption: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """A part of the page: an anchor id, a heading, a line of introduction, then plots, tables and notes."""

    id: str
    title: str
    intro: str
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return bool(self.plots or self.tables)


@dataclass(frozen=True)
class Totals:
    """The header's numbers."""

    calls: int = 0
    hours: float = 0.0
    windows: int = 0
    facets: int = 0
    decisions: int = 0
    alerts: int = 0
    dead_letters: int = 0
    first_day: str | None = None
    last_day: str | None = None


def no_data(table: str) -> str:
    """The note a section shows when the table it draws from is missing or empty."""
    return f"No data: the export has no {table} rows."


# -- reading ----------------------------------------------------------------------------------------


class Export:
    """An export folder opened with DuckDB: one view per table that has files (Parquet, JSON lines or
    CSV: one format per folder, :func:`services.analytics.reader.export_files`).

    Queries return plain rows (lists of tuples); nothing here draws or formats.
    """

    def __init__(self, export_dir: Path) -> None:
        self.dir = export_dir
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")  # a timestamp's day is its UTC day, as the partitions are
        self.columns: dict[str, set[str]] = {}
        try:
            found = export_files(export_dir)
            if found is not None:  # else no table file at all: every section says "No data"
                for table, files in found.tables.items():
                    self._open(table, files, found.format)
        except BaseException:
            self.con.close()
            raise

    def _open(self, table: TableName, files: list[Path], fmt: Format) -> None:
        if fmt == "parquet":
            relation = self.con.read_parquet([str(f) for f in files], hive_partitioning=True, union_by_name=True)
            relation.create_view(table)
            self.columns[table] = set(relation.columns)
        else:  # JSON lines or CSV: typed by the export's schema (services/analytics/reader.py)
            arrow = read_table(files, table, fmt)
            self.con.register(table, arrow)  # the connection holds the table while it is open
            self.columns[table] = set(arrow.column_names)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Export:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, table: str, *columns: str) -> bool:
        """Whether the table exists and has these columns (its rows may still be none)."""
        return table in self.columns and all(c in self.columns[table] for c in columns)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, list(params)).fetchall()

    def count(self, table: str) -> int:
        if not self.has(table):
            return 0
        return int(self.rows(f"SELECT count(*) FROM {table}")[0][0])

    def day(self, table: str) -> str:
        """SQL for a row's day as 'YYYY-MM-DD': the partition's date, else the UTC date of its time."""
        if self.has(table, "date"):
            return "CAST(CAST(date AS DATE) AS VARCHAR)"
        return "CAST(CAST(time AS DATE) AS VARCHAR)"

    def totals(self) -> Totals:
        hours = 0.0
        if self.has("calls", "duration_s"):
            hours = float(self.rows("SELECT coalesce(sum(duration_s), 0) FROM calls")[0][0]) / 3600.0
        alerts = 0
        if self.has("decisions", "kind"):
            alerts = int(self.rows("SELECT count(*) FROM decisions WHERE kind = 'alert'")[0][0])
        days: list[str] = []
        for table in TABLES:
            if self.has(table, "date") or self.has(table, "time"):
                low, high = self.rows(f"SELECT min({self.day(table)}), max({self.day(table)}) FROM {table}")[0]
                days += [d for d in (low, high) if d is not None]
        return Totals(
            calls=self.count("calls"),
            hours=hours,
            windows=self.count("windows"),
            facets=self.count("facets"),
            decisions=self.count("decisions"),
            alerts=alerts,
            dead_letters=self.count("dead_letters"),
            first_day=min(days) if days else None,
            last_day=max(days) if days else None,
        )

    def calls_per_day_queue(self) -> list[tuple[str, str, int]]:
        queue = "coalesce(queue, ?)" if self.has("calls", "queue") else "?"
        return self.rows(f"SELECT {self.day('calls')} AS d, {queue} AS q, count(*) FROM calls GROUP BY ALL ORDER BY d, q", [NONE_LABEL])

    def hours_per_queue(self) -> dict[str, float]:
        if not self.has("calls", "duration_s"):
            return {}
        queue = "coalesce(queue, ?)" if self.has("calls", "queue") else "?"
        rows = self.rows(f"SELECT {queue}, coalesce(sum(duration_s), 0) FROM calls GROUP BY ALL", [NONE_LABEL])
        return {str(q): float(s) / 3600.0 for q, s in rows}

    def emotions(self) -> list[tuple[str, str, str, int]]:
        """(role, queue, label, count) of the emotion facets; the queue comes from the call."""
        if not self.has("facets", "kind", "label"):
            return []
        role = "coalesce(f.role, ?)" if self.has("facets", "role") else "?"
        if self.has("calls", "event_id", "queue") and self.has("facets", "event_id"):
            source = "facets f LEFT JOIN (SELECT DISTINCT event_id, queue FROM calls) c ON f.event_id = c.event_id"
            queue = "coalesce(c.queue, ?)"
        else:
            source, queue = "facets f", "?"
        return self.rows(
            f"SELECT {role}, {queue}, f.label, count(*) FROM {source} WHERE f.kind = 'emotion' AND f.label IS NOT NULL GROUP BY ALL",
            [NONE_LABEL, NONE_LABEL],
        )

    def values(self, table: str, column: str) -> np.ndarray:
        """A numeric column's finite values, as floats."""
        if not self.has(table, column):
            return np.zeros(0)
        got = self.con.execute(
            f"SELECT CAST({column} AS DOUBLE) AS v FROM {table} WHERE {column} IS NOT NULL AND isfinite(CAST({column} AS DOUBLE))"
        ).fetchnumpy()["v"]
        return np.asarray(got, dtype=float)

    def decisions_by_rule(self) -> list[tuple[str, str, int]]:
        rule = "coalesce(rule_id, ?)" if self.has("decisions", "rule_id") else "?"
        kind = "coalesce(kind, ?)" if self.has("decisions", "kind") else "?"
        return self.rows(f"SELECT {rule}, {kind}, count(*) FROM decisions GROUP BY ALL", [NONE_LABEL, NONE_LABEL])

    def dead_letters_by_stage(self) -> list[tuple[str, str, int]]:
        stage = "coalesce(stage, ?)" if self.has("dead_letters", "stage") else "?"
        reason = "coalesce(reason, ?)" if self.has("dead_letters", "reason") else "?"
        return self.rows(f"SELECT {stage}, {reason}, count(*) FROM dead_letters GROUP BY ALL", [NONE_LABEL, NONE_LABEL])

    def facet_labels(self) -> list[tuple[str, str, int]]:
        """(kind, label, facets) of the most frequent facet labels."""
        if not self.has("facets", "kind", "label"):
            return []
        return self.rows(
            "SELECT kind, label, count(*) AS n FROM facets WHERE label IS NOT NULL GROUP BY ALL ORDER BY n DESC, kind, label LIMIT ?",
            [TOP_LABELS],
        )

    def facet_phrases(self) -> list[tuple[str, str, str, int]]:
        """(kind, label, phrase, count): a label's most frequent phrases (the cue, else the span), lower case."""
        texts = [f"nullif(trim({c}), '')" for c in ("cue", "span") if self.has("facets", c)]
        if not texts or not self.has("facets", "kind", "label"):
            return []
        phrase = f"lower(coalesce({', '.join(texts)}))"
        return self.rows(
            f"""
            SELECT kind, label, phrase, n FROM (
                SELECT kind, label, {phrase} AS phrase, count(*) AS n FROM facets
                WHERE label IS NOT NULL GROUP BY ALL
            ) WHERE phrase IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY kind, label ORDER BY n DESC, phrase) <= ?
            """,
            [TOP_PHRASES],
        )

    def facet_examples(self) -> dict[tuple[str, str], str]:
        """A label's most frequent span (a sentence of a caption): untrusted text."""
        if not self.has("facets", "kind", "label", "span"):
            return {}
        rows = self.rows(
            """
            SELECT kind, label, span FROM (
                SELECT kind, label, trim(span) AS span, count(*) AS n FROM facets
                WHERE label IS NOT NULL AND nullif(trim(span), '') IS NOT NULL GROUP BY ALL
            ) QUALIFY row_number() OVER (PARTITION BY kind, label ORDER BY n DESC, span) = 1
            """
        )
        return {(str(k), str(lab)): str(s) for k, lab, s in rows}


# -- pure helpers -----------------------------------------------------------------------------------


def top_categories(totals: Mapping[str, float], n: int = TOP_CATEGORIES) -> list[str]:
    """The ``n`` largest keys (ties by name), then :data:`OTHER` when some are left over."""
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    return ranked if len(ranked) <= n else [*ranked[:n], OTHER]


def fold(key: str, kept: Sequence[str]) -> str:
    """``key`` when it is one of ``kept``, else :data:`OTHER`."""
    return key if key in kept else OTHER


def sums(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for key, value in pairs:
        out[key] += value
    return dict(out)


def day_axis(days: Iterable[str]) -> list[str]:
    """Every day from the first to the last (at most :data:`MAX_DAYS`), else only the days given."""
    present = sorted(set(days))
    if not present:
        return []
    first, last = dt.date.fromisoformat(present[0]), dt.date.fromisoformat(present[-1])
    span = (last - first).days + 1
    if span > MAX_DAYS:
        return present
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(span)]


def clip(text: str, limit: int = MAX_TEXT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str) -> str:
    """'1 queue', '2 queues'."""
    return f"{fmt_int(n)} {word}" if n == 1 else f"{fmt_int(n)} {word}s"


def fmt_hours(hours: float) -> str:
    return f"{hours:,.2f}"


def fmt_seconds(seconds: float) -> str:
    if seconds >= 60:
        return f"{int(seconds // 60)} min {seconds % 60:.0f} s"
    return f"{seconds:.1f} s"


def percentile_line(values: np.ndarray, unit: Any) -> str:
    """'n=…, median …, p90 …' with ``unit`` a formatter of one value."""
    median, p90 = np.percentile(values, [50, 90])
    return f"n={fmt_int(len(values))}, median {unit(float(median))}, p90 {unit(float(p90))}"


# -- drawing ----------------------------------------------------------------------------------------


def _colours(keys: Sequence[str]) -> dict[str, Any]:
    palette = colormaps["tab10"]
    out: dict[str, Any] = {}
    i = 0
    for key in keys:
        if key == OTHER:
            out[key] = _OTHER_COLOUR
        else:
            out[key] = palette(i % 10)
            i += 1
    return out


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(text: str, limit: int = 28) -> str:
    """An axis or legend label: one line, bounded (matplotlib draws it as text, not markup)."""
    return clip(text, limit).replace("$", r"\$")


def _plot_volume(days: Sequence[str], counts: Mapping[tuple[str, str], int], queues: Sequence[str]) -> str:
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(days))
    bottom = np.zeros(len(days))
    colours = _colours(queues)
    for queue in queues:
        heights = np.array([counts.get((d, queue), 0) for d in days], dtype=float)
        ax.bar(x, heights, bottom=bottom, label=_label(queue), color=colours[queue], width=0.8)
        bottom += heights
    step = max(1, math.ceil(len(days) / 16))
    ax.set_xticks(x[::step], [d[5:] if len(days) > 1 else d for d in days[::step]], rotation=0)
    ax.set_title("Calls per day, by queue")
    ax.set_xlabel("day (UTC, MM-DD)" if len(days) > 1 else "day (UTC)")
    ax.set_ylabel("calls")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="queue", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)


def _stacked_shares(
    ax: Axes, rows: Sequence[str], labels: Sequence[str], counts: Mapping[tuple[str, str], int], colours: Mapping[str, Any]
) -> None:
    totals = {r: sum(counts.get((r, lab), 0) for lab in labels) for r in rows}
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for label in labels:
        widths = np.array([100.0 * counts.get((r, label), 0) / totals[r] if totals[r] else 0.0 for r in rows])
        ax.barh(y, widths, left=left, color=colours[label], label=_label(label), height=0.7)
        left += widths
    ax.set_yticks(y, [f"{_label(r, 20)} (n={totals[r]})" for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of emotion facets (%)")


def _plot_emotions(
    by_role: Mapping[tuple[str, str], int],
    roles: Sequence[str],
    by_queue: Mapping[tuple[str, str], int],
    queues: Sequence[str],
    labels: Sequence[str],
) -> str:
    height = 1.2 + 0.38 * max(len(roles), len(queues))
    fig = Figure(figsize=(11, max(2.8, height)), layout="constrained")
    left, right = fig.subplots(1, 2)
    colours = _colours(labels)
    _stacked_shares(left, roles, labels, by_role, colours)
    left.set_title("by party (role)")
    left.set_ylabel("party")
    _stacked_shares(right, queues, labels, by_queue, colours)
    right.set_title("by queue")
    right.set_ylabel("queue")
    fig.suptitle("Emotion mix")
    handles, names = left.get_legend_handles_labels()
    fig.legend(handles, names, title="emotion", loc="outside right upper", frameon=False)
    return _png(fig)


def _plot_histogram(values: np.ndarray, *, title: str, xlabel: str, bins: Any, colour: str) -> str:
    fig = Figure(figsize=(5.4, 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, color=colour, edgecolor="white", linewidth=0.5)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("calls")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def _plot_hbar(
    rows: Sequence[str], stacks: Sequence[str], counts: Mapping[tuple[str, str], int], *, title: str, xlabel: str, ylabel: str, legend: str
) -> str:
    fig = Figure(figsize=(11, max(2.4, 1.1 + 0.36 * len(rows))), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    colours = _colours(stacks)
    for stack in stacks:
        widths = np.array([counts.get((r, stack), 0) for r in rows], dtype=float)
        ax.barh(y, widths, left=left, color=colours[stack], label=_label(stack), height=0.7)
        left += widths
    ax.set_yticks(y, [_label(r, 40) for r in rows])
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(stacks) > 1:
        ax.legend(title=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)


# -- sections ---------------------------------------------------------------------------------------


def volume_section(export: Export) -> Section:
    section = Section("volume", "Volume over time", "Calls captioned per day (UTC), stacked by queue.")
    rows = export.calls_per_day_queue() if export.has("calls") else []
    if not rows:
        section.notes.append(no_data("calls"))
        return section
    per_queue = sums((str(q), float(n)) for _, q, n in rows)
    queues = top_categories(per_queue)
    days = day_axis(str(d) for d, _, _ in rows)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for d, q, n in rows:
        counts[(str(d), fold(str(q), queues))] += int(n)
    per_day = sums((str(d), float(n)) for d, _, n in rows)
    busiest = max(per_day, key=lambda d: (per_day[d], d))
    total = sum(per_queue.values())
    section.plots.append(
        Plot(
            "Calls per day, by queue",
            f"{plural(int(total), 'call')} over {plural(len(days), 'day')} ({plural(len(per_queue), 'queue')}); "
            f"busiest day {busiest} with {plural(int(per_day[busiest]), 'call')}.",
            _plot_volume(days, counts, queues),
        )
    )
    hours = export.hours_per_queue()
    ranked = sorted(per_queue, key=lambda q: (-per_queue[q], q))
    table_rows = [[q, fmt_int(int(per_queue[q])), fmt_hours(hours.get(q, 0.0))] for q in ranked[:TOP_RULES]]
    if len(ranked) > TOP_RULES:
        rest = ranked[TOP_RULES:]
        table_rows.append(
            [f"{len(rest)} more", fmt_int(int(sum(per_queue[q] for q in rest))), fmt_hours(sum(hours.get(q, 0.0) for q in rest))]
        )
    section.tables.append(Table("Calls by queue", ["queue", "calls", "hours of audio"], table_rows))
    return section


def emotion_section(export: Export) -> Section:
    section = Section(
        "emotions",
        "Emotion mix",
        "The emotion facets the captions carry, as shares per party (the channel's role) and per queue.",
    )
    rows = export.emotions()
    if not rows:
        section.notes.append(no_data("facets") if not export.count("facets") else "No data: the export has no emotion facets.")
        return section
    labels = top_categories(sums((str(lab), float(n)) for _, _, lab, n in rows))
    roles = top_categories(sums((str(r), float(n)) for r, _, _, n in rows))
    queues = top_categories(sums((str(q), float(n)) for _, q, _, n in rows))
    by_role: dict[tuple[str, str], int] = defaultdict(int)
    by_queue: dict[tuple[str, str], int] = defaultdict(int)
    for role, queue, label, n in rows:
        by_role[(fold(str(role), roles), fold(str(label), labels))] += int(n)
        by_queue[(fold(str(queue), queues), fold(str(label), labels))] += int(n)
    total = sum(int(n) for *_, n in rows)
    top = labels[0]
    section.plots.append(
        Plot(
            "Emotion mix by party and by queue",
            f"{plural(total, 'emotion facet')}; the most frequent is {top}. Each bar is 100 %; n is the bar's facets.",
            _plot_emotions(by_role, roles, by_queue, queues, labels),
        )
    )
    if not export.has("calls"):
        section.notes.append(no_data("calls") + " Queues show as (none).")
    return section


#: (column, title, x label, bins, value formatter) of the acoustics histograms.
_ACOUSTICS: Final = (
    ("duration_s", "Call duration", "duration (s)", "auto", fmt_seconds),
    ("silence_ratio", "Silence ratio", "share of the call that is silence", np.linspace(0, 1, 21), lambda v: f"{v:.2f}"),
    ("dead_air_s", "Dead air", "dead air (s)", "auto", fmt_seconds),
    ("overtalk_ratio", "Overtalk ratio", "share of talk time both parties talk", np.linspace(0, 1, 21), lambda v: f"{v:.2f}"),
    ("loudness_lufs", "Loudness", "integrated loudness (LUFS)", "auto", lambda v: f"{v:.1f} LUFS"),
    ("snr_db", "Signal-to-noise ratio", "SNR (dB)", "auto", lambda v: f"{v:.1f} dB"),
)


def acoustics_section(export: Export) -> Section:
    section = Section("acoustics", "Acoustics", "How the calls sound: distributions over the calls of the export.")
    if not export.count("calls"):
        section.notes.append(no_data("calls"))
        return section
    colours = _colours([c for c, *_ in _ACOUSTICS])
    for column, title, xlabel, bins, unit in _ACOUSTICS:
        values = export.values("calls", column)
        if not len(values):
            section.notes.append(f"No data: no call has a {column} value.")
            continue
        edges = np.histogram_bin_edges(values, bins=bins)
        if len(edges) > 41:  # "auto" on a long tail: bounded
            edges = np.histogram_bin_edges(values, bins=40)
        png = _plot_histogram(values, title=title, xlabel=xlabel, bins=edges, colour=colours[column])
        section.plots.append(Plot(title, f"{title}: {percentile_line(values, unit)}.", png))
    return section


def decisions_section(export: Export) -> Section:
    section = Section("decisions", "Decisions and alerts by rule", "The decisions the rules made, per rule, split into routes and alerts.")
    rows = export.decisions_by_rule() if export.has("decisions") else []
    if not rows:
        section.notes.append(no_data("decisions"))
        return section
    per_rule = sums((str(r), float(n)) for r, _, n in rows)
    rules = top_categories(per_rule, TOP_RULES)
    kinds = sorted({str(k) for _, k, _ in rows}, key=lambda k: ({"route": 0, "alert": 1}.get(k, 2), k))
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for rule, kind, n in rows:
        counts[(fold(str(rule), rules), str(kind))] += int(n)
    per_kind = sums((str(k), float(n)) for _, k, n in rows)
    kinds_line = ", ".join(f"{fmt_int(int(per_kind[k]))} {k}" for k in kinds)
    section.plots.append(
        Plot(
            "Decisions by rule",
            f"{plural(int(sum(per_rule.values())), 'decision')} ({kinds_line}) from {plural(len(per_rule), 'rule')}.",
            _plot_hbar(rules, kinds, counts, title="Decisions by rule", xlabel="decisions", ylabel="rule", legend="kind"),
        )
    )
    table_rows = [[r, *(fmt_int(counts.get((r, k), 0)) for k in kinds), fmt_int(sum(counts.get((r, k), 0) for k in kinds))] for r in rules]
    section.tables.append(Table("Decisions per rule", ["rule", *kinds, "total"], table_rows))
    return section


def dead_letters_section(export: Export) -> Section:
    section = Section("dead-letters", "Dead letters by stage", "Events the pipeline gave up on, by the stage that dead-lettered them.")
    rows = export.dead_letters_by_stage() if export.has("dead_letters") else []
    if not rows:
        section.notes.append(no_data("dead_letters"))
        return section
    per_stage = sums((str(s), float(n)) for s, _, n in rows)
    stages = top_categories(per_stage)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for stage, _, n in rows:
        counts[(fold(str(stage), stages), "dead letters")] += int(n)
    section.plots.append(
        Plot(
            "Dead letters by stage",
            f"{plural(int(sum(per_stage.values())), 'dead letter')} at {plural(len(per_stage), 'stage')}.",
            _plot_hbar(stages, ["dead letters"], counts, title="Dead letters by stage", xlabel="dead letters", ylabel="stage", legend=""),
        )
    )
    ranked = sorted(rows, key=lambda r: (-int(r[2]), str(r[0]), str(r[1])))[:TOP_REASONS]
    section.tables.append(
        Table("Most frequent reasons", ["stage", "reason", "dead letters"], [[str(s), clip(str(r)), fmt_int(int(n))] for s, r, n in ranked])
    )
    return section


def phrases_section(export: Export) -> Section:
    section = Section(
        "phrases",
        "Top caption phrases per facet",
        "For each facet label, the caption words that most often produced it (the cue), and the sentence that carried it most often.",
    )
    labels = export.facet_labels()
    if not labels:
        section.notes.append(no_data("facets"))
        return section
    phrases: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for kind, label, phrase, n in export.facet_phrases():
        phrases[(str(kind), str(label))].append((str(phrase), int(n)))
    examples = export.facet_examples()
    table_rows = []
    for kind, label, n in labels:
        key = (str(kind), str(label))
        top = sorted(phrases.get(key, []), key=lambda p: (-p[1], p[0]))
        table_rows.append(
            [
                str(kind),
                str(label),
                fmt_int(int(n)),
                "; ".join(f"{clip(p, 60)} ({fmt_int(c)})" for p, c in top) or "—",
                clip(examples.get(key, "")) or "—",
            ]
        )
    section.tables.append(
        Table(
            f"Facet labels, most frequent first ({len(labels)} shown, at most {TOP_LABELS})",
            ["kind", "label", "facets", "top phrases (count)", "example span"],
            table_rows,
        )
    )
    return section


# -- rendering --------------------------------------------------------------------------------------

_TEMPLATE: Final = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="generator" content="listenpost report">
<title>{{ title }}</title>
<style>
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; margin: 0 auto; max-width: 1180px; padding: 16px 24px 48px;
       color: #1d2430; background: #fff; line-height: 1.4; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin: 36px 0 6px; font-size: 20px; border-bottom: 2px solid #dfe3ea; padding-bottom: 4px; }
.meta { color: #5a6472; margin: 0 0 14px; }
.totals { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 0; }
.totals div { background: #f3f5f9; border-radius: 6px; padding: 10px 12px; }
.totals dt { color: #5a6472; font-size: 13px; }
.totals dd { margin: 2px 0 0; font-size: 22px; font-weight: bold; }
nav { margin: 14px 0 0; font-size: 14px; }
nav a { margin-right: 14px; color: #2456a6; }
.intro { color: #3b4452; margin: 4px 0 10px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px 18px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #3b4452; font-size: 13px; margin-top: 2px; }
table { border-collapse: collapse; margin: 14px 0 4px; font-size: 13px; width: 100%; }
caption { text-align: left; font-weight: bold; margin-bottom: 4px; }
th, td { border-bottom: 1px solid #e3e6ec; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f9; }
.nodata { color: #8a4b00; background: #fff6e5; border-left: 4px solid #f0b44c; padding: 6px 10px; }
footer { margin-top: 40px; color: #7a8390; font-size: 12px; }
</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p class="meta">{% if since_label %}Since {{ since_label }} &middot; {% endif -%}
{% if totals.first_day %}{{ totals.first_day }} to {{ totals.last_day }} (UTC){% else %}no dated rows{% endif -%}
{{ " " }}&middot; generated {{ generated }}</p>
<dl class="totals">
<div><dt>Calls</dt><dd id="total-calls">{{ fmt_int(totals.calls) }}</dd></div>
<div><dt>Hours of audio</dt><dd id="total-hours">{{ fmt_hours(totals.hours) }}</dd></div>
<div><dt>Windows captioned</dt><dd id="total-windows">{{ fmt_int(totals.windows) }}</dd></div>
<div><dt>Decisions</dt><dd id="total-decisions">{{ fmt_int(totals.decisions) }}</dd></div>
<div><dt>Alerts</dt><dd id="total-alerts">{{ fmt_int(totals.alerts) }}</dd></div>
<div><dt>Dead letters</dt><dd id="total-dead-letters">{{ fmt_int(totals.dead_letters) }}</dd></div>
</dl>
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
</header>
<main>
{% for s in sections %}
<section id="{{ s.id }}">
<h2>{{ s.title }}</h2>
<p class="intro">{{ s.intro }}</p>
{% for note in s.notes %}<p class="nodata">{{ note }}</p>
{% endfor %}
{% if s.plots %}<div class="plots">
{% for p in s.plots %}<figure><img src="data:image/png;base64,{{ p.png_base64 }}" alt="{{ p.title }}">
<figcaption>{{ p.caption }}</figcaption></figure>
{% endfor %}</div>{% endif %}
{% for t in s.tables %}<table>
<caption>{{ t.caption }}</caption>
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% endfor %}
</section>
{% endfor %}
</main>
<footer>listenpost report: the tables of <code>listenpost export</code>; charts show the top {{ top }} categories
and fold the rest into "other".</footer>
</body>
</html>
"""

#: Autoescaping on: every value is untrusted text unless the template says otherwise (it never does).
_ENV: Final = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_PAGE: Final = _ENV.from_string(_TEMPLATE)


def render_html(
    *,
    title: str,
    since_label: str | None,
    totals: Totals,
    sections: Sequence[Section],
    generated: str,
) -> str:
    """The page (pure): every value reaches it escaped."""
    return _PAGE.render(
        title=title,
        since_label=since_label,
        totals=totals,
        sections=sections,
        generated=generated,
        top=TOP_CATEGORIES,
        fmt_int=fmt_int,
        fmt_hours=fmt_hours,
    )


def build_sections(export: Export) -> list[Section]:
    return [
        volume_section(export),
        emotion_section(export),
        acoustics_section(export),
        decisions_section(export),
        dead_letters_section(export),
        phrases_section(export),
    ]


def render_report(
    export_dir: Path,
    out: Path,
    *,
    title: str = DEFAULT_TITLE,
    since_label: str | None = None,
    now: dt.datetime | None = None,
) -> ReportSummary:
    """Read the export in ``export_dir``, draw its figures and write one self-contained HTML page to ``out``.

    ``since_label`` (e.g. "7d") is shown in the header; the export already holds only that range.
    Missing or empty tables give "No data" notes, never an error.
    """
    with Export(Path(export_dir)) as export:
        totals = export.totals()
        sections = build_sections(export)
    stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    html = render_html(title=title, since_label=since_label, totals=totals, sections=sections, generated=stamp)
    size = write_atomically(Path(out), html.encode("utf-8"))
    return ReportSummary(
        out=Path(out),
        calls=totals.calls,
        hours=round(totals.hours, 4),
        windows=totals.windows,
        facets=totals.facets,
        decisions=totals.decisions,
        alerts=totals.alerts,
        dead_letters=totals.dead_letters,
        sections=sum(1 for s in sections if s.has_data),
        empty_sections=[s.id for s in sections if not s.has_data],
        images=sum(len(s.plots) for s in sections),
        bytes=size,
    )
