"""`listenpost report`: services/analytics/report.py over a small export written with pyarrow.

The export is hand-made to the layout `listenpost export` writes (EXPORT_DIR/<table>/date=YYYY-MM-DD/
*.parquet), with known totals, so the page's numbers are checked exactly. The page is then opened in a
real headless Chromium (tests/chromium.py; scripts/setup.sh unpacks Debian's chromium-headless-shell into
.cache/chromium): the sections are in its DOM, every image decoded, the hostile caption stayed text, and
the page's Content-Security-Policy stops a script.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from chromium import MISSING, Chromium, find_chromium
from PIL import Image
from typer.testing import CliRunner

from services.analytics import reader
from services.analytics.cli import report_command
from services.analytics.errors import ExportError
from services.analytics.report import NONE_LABEL, OTHER, ReportSummary, day_axis, no_data, render_report, top_categories
from services.analytics.tables import SCHEMAS as EXPORT_SCHEMAS
from services.analytics.writer import ExportWriter, Format

HOSTILE = "<script>alert(1)</script> The customer sounds angry."
DAYS = ["2025-03-03", "2025-03-04", "2025-03-05"]
#: (day, queue, duration in seconds) of the nine calls: 5 billing, 4 support, 5400 s = 1.50 h.
CALLS = [
    ("2025-03-03", "billing", 300),
    ("2025-03-03", "billing", 420),
    ("2025-03-03", "support", 480),
    ("2025-03-04", "billing", 540),
    ("2025-03-04", "support", 600),
    ("2025-03-04", "support", 660),
    ("2025-03-05", "billing", 720),
    ("2025-03-05", "billing", 780),
    ("2025-03-05", "support", 900),
]
#: (call index, kind, label, role, cue, span) of the twelve facets.
FACETS = [
    (0, "emotion", "anger", "customer", "angry", HOSTILE),
    (1, "emotion", "anger", "customer", "angry", "The customer sounds angry."),
    (2, "emotion", "anger", "customer", "shouting", "The caller is shouting."),
    (0, "emotion", "calm", "agent", "calm", "The agent stays calm."),
    (1, "emotion", "calm", "agent", "calm", "The agent stays calm."),
    (3, "emotion", "calm", "agent", "calm", "The agent is calm."),
    (4, "emotion", "calm", "agent", "polite", "The agent is polite."),
    (5, "emotion", "frustration", "customer", "frustrated", "The customer is frustrated."),
    (6, "emotion", "frustration", "customer", "Frustrated", "A frustrated caller."),
    (7, "sound_event", "siren", None, "siren", "A siren passes outside."),
    (8, "sound_event", "siren", None, "siren", "A distant siren."),
    (8, "language", "es", None, "in Spanish", "They speak in Spanish."),
]
#: (call index, kind, rule) of the six decisions: 3 routes, 3 alerts, 3 rules.
DECISIONS = [
    (0, "route", "escalate_angry"),
    (1, "route", "escalate_angry"),
    (2, "route", "escalate_angry"),
    (3, "alert", "dead_air"),
    (4, "alert", "dead_air"),
    (8, "alert", "siren_alert"),
]
#: (day, stage, reason) of the three dead letters.
DEAD_LETTERS = [
    ("2025-03-03", "preprocess", "decode_failed"),
    ("2025-03-04", "preprocess", "decode_failed"),
    ("2025-03-05", "captioner", "<b>timeout</b>"),
]
SECTION_HEADINGS = [
    "Volume over time",
    "Emotion mix",
    "Acoustics",
    "Decisions and alerts by rule",
    "Dead letters by stage",
    "Top caption phrases per facet",
]

TS = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "calls": pa.schema(
        [
            ("event_id", pa.string()), ("input_id", pa.string()), ("call_id", pa.string()), ("batch_id", pa.string()),
            ("batch_path", pa.string()), ("source", pa.string()), ("queue", pa.string()), ("agent", pa.string()),
            ("stream_id", pa.string()), ("time", TS), ("date", pa.string()), ("duration_s", pa.float64()),
            ("sample_rate", pa.int32()), ("channels", pa.int32()), ("format", pa.string()), ("codec", pa.string()),
            ("model", pa.string()), ("engine", pa.string()), ("deliveries", pa.int32()), ("languages", pa.list_(pa.string())),
            ("caption", pa.string()), ("silence_ratio", pa.float64()), ("longest_silence_s", pa.float64()),
            ("dead_air_s", pa.float64()), ("peak_dbfs", pa.float64()), ("speech_ratio", pa.float64()),
            ("non_talk_s", pa.float64()), ("overtalk_s", pa.float64()), ("overtalk_ratio", pa.float64()),
            ("overtalk_count", pa.int32()), ("loudness_lufs", pa.float64()), ("clipping_ratio", pa.float64()),
            ("snr_db", pa.float64()), ("talk_time_json", pa.string()), ("context_json", pa.string()),
            ("timings_json", pa.string()), ("ruleset_version", pa.string()), ("decisions", pa.int32()),
        ]
    ),  # fmt: skip
    "windows": pa.schema(
        [
            ("event_id", pa.string()), ("call_id", pa.string()), ("batch_id", pa.string()), ("time", TS), ("date", pa.string()),
            ("window", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()), ("channel", pa.int32()),
            ("role", pa.string()), ("caption", pa.string()), ("prompt_tokens", pa.int32()), ("output_tokens", pa.int32()),
            ("engine_s", pa.float64()),
        ]
    ),  # fmt: skip
    "facets": pa.schema(
        [
            ("event_id", pa.string()), ("call_id", pa.string()), ("batch_id", pa.string()), ("time", TS), ("date", pa.string()),
            ("kind", pa.string()), ("label", pa.string()), ("role", pa.string()), ("intensity", pa.float64()),
            ("confidence", pa.float64()), ("window", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
            ("span", pa.string()), ("cue", pa.string()), ("hedged", pa.bool_()),
        ]
    ),  # fmt: skip
    "decisions": pa.schema(
        [
            ("decision_id", pa.string()), ("type", pa.string()), ("kind", pa.string()), ("rule_id", pa.string()),
            ("ruleset_version", pa.string()), ("input_id", pa.string()), ("call_id", pa.string()), ("batch_id", pa.string()),
            ("queue", pa.string()), ("severity", pa.string()), ("fingerprint", pa.string()), ("summary", pa.string()),
            ("labels_json", pa.string()), ("time", TS), ("date", pa.string()), ("site", pa.string()),
        ]
    ),  # fmt: skip
    "dead_letters": pa.schema(
        [
            ("event_id", pa.string()), ("original_id", pa.string()), ("original_source", pa.string()), ("stage", pa.string()),
            ("reason", pa.string()), ("error", pa.string()), ("deliveries", pa.int32()), ("batch_id", pa.string()),
            ("batch_path", pa.string()), ("time", TS), ("date", pa.string()),
        ]
    ),  # fmt: skip
}


def write_table(root: Path, table: str, rows: list[dict[str, Any]], *, drop: tuple[str, ...] = ()) -> None:
    """Rows as the export lays them out: one Parquet file per day, under <table>/date=YYYY-MM-DD/
    (``drop``: columns left out of the files, e.g. the date that the folder names already)."""
    schema = SCHEMAS[table]
    for name in drop:
        schema = schema.remove(schema.get_field_index(name))
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row["date"], []).append(row)
    for day, day_rows in by_day.items():
        folder = root / table / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        full = [{name: row.get(name) for name in schema.names} for row in day_rows]
        pq.write_table(pa.Table.from_pylist(full, schema=schema), folder / "part-0.parquet")


def _time(day: str, i: int) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=9 + i % 8, minute=i, tzinfo=dt.UTC)


def build_export(root: Path) -> Path:
    """The small export these tests read (see the module's constants for what it holds)."""
    calls = []
    for i, (day, queue, duration) in enumerate(CALLS):
        calls.append(
            {
                "event_id": f"ev-{i}", "input_id": f"in-{i}", "call_id": f"call-{i}", "source": "test", "queue": queue,
                "agent": f"agent-{i % 3}", "time": _time(day, i), "date": day, "duration_s": float(duration),
                "sample_rate": 16000, "channels": 2, "format": "wav", "codec": "pcm_s16le", "model": "tiny", "engine": "vllm",
                "deliveries": 1, "languages": ["en", "es"] if i == 8 else ["en"],
                "caption": HOSTILE if i == 0 else f"Call {i}: two people talk.",
                "silence_ratio": 0.05 * i, "longest_silence_s": 2.0 + i, "dead_air_s": 1.5 * i, "peak_dbfs": -3.0,
                "speech_ratio": 0.8, "non_talk_s": 10.0, "overtalk_s": 3.0, "overtalk_ratio": 0.02 * i, "overtalk_count": i,
                "loudness_lufs": -30.0 + i, "clipping_ratio": 0.0, "snr_db": None if i % 3 == 0 else 15.0 + i,
                "talk_time_json": json.dumps({"agent": duration / 2, "customer": duration / 3}), "context_json": "{}",
                "timings_json": "{}", "ruleset_version": "v1", "decisions": sum(1 for d in DECISIONS if d[0] == i),
            }
        )  # fmt: skip
    write_table(root, "calls", calls)
    windows = [
        {
            "event_id": c["event_id"], "call_id": c["call_id"], "time": c["time"], "date": c["date"], "window": w,
            "start_s": 30.0 * w, "end_s": 30.0 * (w + 1), "channel": w, "role": ("agent", "customer")[w],
            "caption": HOSTILE if c["event_id"] == "ev-0" else "Someone talks.", "prompt_tokens": 100, "output_tokens": 20,
            "engine_s": 0.5,
        }
        for c in calls
        for w in (0, 1)
    ]  # fmt: skip
    write_table(root, "windows", windows)
    facets = [
        {
            "event_id": calls[i]["event_id"], "call_id": calls[i]["call_id"], "time": calls[i]["time"], "date": calls[i]["date"],
            "kind": kind, "label": label, "role": role, "intensity": 0.7 if kind == "emotion" else None, "confidence": 0.9,
            "window": 0, "start_s": 0.0, "end_s": 30.0, "span": span, "cue": cue, "hedged": False,
        }
        for i, kind, label, role, cue, span in FACETS
    ]  # fmt: skip
    write_table(root, "facets", facets)
    decisions = [
        {
            "decision_id": f"dec-{n}", "type": f"com.listenpost.decision.{kind}", "kind": kind, "rule_id": rule,
            "ruleset_version": "v1", "input_id": calls[i]["input_id"], "call_id": calls[i]["call_id"], "queue": calls[i]["queue"],
            "severity": "warning" if kind == "alert" else None, "fingerprint": f"fp-{n}", "summary": f"{rule} on call {i}",
            "labels_json": "{}", "time": calls[i]["time"], "date": calls[i]["date"], "site": "test",
        }
        for n, (i, kind, rule) in enumerate(DECISIONS)
    ]  # fmt: skip
    write_table(root, "decisions", decisions)
    dead = [
        {
            "event_id": f"dl-{n}", "original_id": f"orig-{n}", "original_source": "test", "stage": stage, "reason": reason,
            "error": "boom", "deliveries": 5, "time": _time(day, n), "date": day,
        }
        for n, (day, stage, reason) in enumerate(DEAD_LETTERS)
    ]  # fmt: skip
    write_table(root, "dead_letters", dead)
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def report(export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportSummary, str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    summary = render_report(export, out, title="Ops <weekly> report", since_label="7d")
    return out, summary, out.read_text(encoding="utf-8")


def section_html(page: str, section_id: str) -> str:
    found = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
    assert found, f"no section {section_id}"
    return found.group(1)


def text_of(fragment: str) -> str:
    """The fragment's text, tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def row_texts(fragment: str) -> list[str]:
    return [text_of(r) for r in re.findall(r"<tr>(.*?)</tr>", fragment, re.S)]


# -- the page ---------------------------------------------------------------------------------------


def test_summary_counts(report: tuple[Path, ReportSummary, str]) -> None:
    out, summary, page = report
    assert summary.out == out
    assert (summary.calls, summary.windows, summary.facets) == (9, 18, 12)
    assert (summary.decisions, summary.alerts, summary.dead_letters) == (6, 3, 3)
    assert summary.hours == 1.5
    assert summary.sections == 6 and summary.empty_sections == []
    # volume 1, emotions 1, acoustics 6 (duration, silence, dead air, overtalk, loudness, SNR), decisions 1, dead letters 1
    assert summary.images == 10 == page.count("<img ")
    assert summary.bytes == out.stat().st_size


def test_header_totals(report: tuple[Path, ReportSummary, str]) -> None:
    _, _, page = report
    header = text_of(page.split("<main>")[0])
    for name, value in [("calls", "9"), ("hours", "1.50"), ("windows", "18"), ("decisions", "6"), ("alerts", "3"), ("dead-letters", "3")]:
        assert f'id="total-{name}">{value}</dd>' in page
    assert "Since 7d" in header
    assert "2025-03-03 to 2025-03-05 (UTC)" in header
    assert "Ops <weekly> report" in header  # the title, escaped in the source ...
    assert "Ops &lt;weekly&gt; report" in page and "<weekly>" not in page


def test_self_contained(report: tuple[Path, ReportSummary, str]) -> None:
    _, _, page = report
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", page, re.I)
    assert "url(" not in page and "@import" not in page
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == 10 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    assert "default-src 'none'" in page  # the CSP: no script, no fetch


def test_hostile_text_is_escaped(report: tuple[Path, ReportSummary, str]) -> None:
    _, _, page = report
    assert not re.search(r"<\s*script", page, re.I)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; The customer sounds angry." in section_html(page, "phrases")
    assert "&lt;b&gt;timeout&lt;/b&gt;" in section_html(page, "dead-letters") and "<b>" not in page


def test_every_section_and_its_numbers(report: tuple[Path, ReportSummary, str]) -> None:
    _, _, page = report
    assert re.findall(r"<h2>(.*?)</h2>", page) == SECTION_HEADINGS
    assert 'class="nodata"' not in page

    volume = section_html(page, "volume")
    assert "9 calls over 3 days (2 queues); busiest day 2025-03-05 with 3 calls." in text_of(volume)
    assert row_texts(volume)[1:] == ["billing 5 0.77", "support 4 0.73"]  # 2760 s and 2640 s

    emotions = text_of(section_html(page, "emotions"))
    assert "9 emotion facets; the most frequent is calm." in emotions

    acoustics = section_html(page, "acoustics")
    assert [text_of(t) for t in re.findall(r"<figcaption>(.*?)</figcaption>", acoustics)] == [
        "Call duration: n=9, median 10 min 0 s, p90 13 min 24 s.",
        "Silence ratio: n=9, median 0.20, p90 0.36.",
        "Dead air: n=9, median 6.0 s, p90 10.8 s.",
        "Overtalk ratio: n=9, median 0.08, p90 0.14.",
        "Loudness: n=9, median -26.0 LUFS, p90 -22.8 LUFS.",
        "Signal-to-noise ratio: n=6, median 19.5 dB, p90 22.5 dB.",  # three calls have no SNR
    ]

    decisions = section_html(page, "decisions")
    assert "6 decisions (3 route, 3 alert) from 3 rules." in text_of(decisions)
    assert row_texts(decisions) == ["rule route alert total", "escalate_angry 3 0 3", "dead_air 0 2 2", "siren_alert 0 1 1"]

    dead = section_html(page, "dead-letters")
    assert "3 dead letters at 2 stages." in text_of(dead)
    assert row_texts(dead) == ["stage reason dead letters", "preprocess decode_failed 2", "captioner <b>timeout</b> 1"]

    phrases = row_texts(section_html(page, "phrases"))
    assert phrases[0] == "kind label facets top phrases (count) example span"
    assert phrases[1:] == [
        "emotion calm 4 calm (3); polite (1) The agent stays calm.",
        "emotion anger 3 angry (2); shouting (1) <script>alert(1)</script> The customer sounds angry.",
        "emotion frustration 2 frustrated (2) A frustrated caller.",
        "sound_event siren 2 siren (2) A distant siren.",
        "language es 1 in spanish (1) They speak in Spanish.",
    ]


def _copy_without(export: Path, dest: Path, table: str) -> Path:
    shutil.copytree(export, dest)
    shutil.rmtree(dest / table)
    return dest


def test_a_missing_table_says_no_data(export: Path, tmp_path: Path) -> None:
    partial = _copy_without(export, tmp_path / "export", "dead_letters")
    summary = render_report(partial, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert summary.dead_letters == 0 and summary.calls == 9
    assert summary.empty_sections == ["dead-letters"] and summary.sections == 5
    dead = section_html(page, "dead-letters")
    assert f'<p class="nodata">{no_data("dead_letters")}</p>' in dead and "<img" not in dead
    assert 'id="total-dead-letters">0</dd>' in page
    assert page.count('class="nodata"') == 1


def test_an_empty_table_says_no_data(export: Path, tmp_path: Path) -> None:
    partial = _copy_without(export, tmp_path / "export", "decisions")
    write_table(partial, "decisions", [])  # no rows: no files at all
    folder = partial / "decisions" / "date=2025-03-03"
    folder.mkdir(parents=True)
    pq.write_table(SCHEMAS["decisions"].empty_table(), folder / "part-0.parquet")  # a file with no rows
    summary = render_report(partial, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert (summary.decisions, summary.alerts) == (0, 0) and summary.empty_sections == ["decisions"]
    assert no_data("decisions") in section_html(page, "decisions")


def test_without_calls_the_facets_still_draw(export: Path, tmp_path: Path) -> None:
    partial = _copy_without(export, tmp_path / "export", "calls")
    summary = render_report(partial, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert summary.empty_sections == ["volume", "acoustics"]
    emotions = section_html(page, "emotions")
    assert "<img" in emotions and no_data("calls") in emotions  # queues fold into (none)
    assert no_data("calls") in section_html(page, "volume") and no_data("calls") in section_html(page, "acoustics")


def test_an_empty_export(tmp_path: Path) -> None:
    summary = render_report(tmp_path / "nothing-here", tmp_path / "out" / "r.html")
    page = (tmp_path / "out" / "r.html").read_text()
    assert summary.sections == 0 and summary.images == 0 and summary.calls == 0
    assert len(summary.empty_sections) == 6
    for table in ("calls", "facets", "decisions", "dead_letters"):
        assert no_data(table) in page
    assert "no dated rows" in page


def test_categories_are_bounded(tmp_path: Path) -> None:
    """Twelve queues: the legend and table stay bounded (8 + other in the chart, 15 rows in the table)."""
    root = tmp_path / "export"
    calls = [
        {"event_id": f"e{i}", "queue": f"q{i % 12:02d}", "date": DAYS[i % 3], "time": _time(DAYS[i % 3], i), "duration_s": 60.0}
        for i in range(60)
    ]
    write_table(root, "calls", calls)
    assert top_categories({f"q{i}": float(i) for i in range(12)}) == [*(f"q{i}" for i in range(11, 3, -1)), OTHER]
    assert top_categories({"a": 1.0, "b": 1.0}) == ["a", "b"]
    summary = render_report(root, tmp_path / "r.html")
    assert summary.calls == 60
    assert "60 calls over 3 days (12 queues)" in text_of(section_html((tmp_path / "r.html").read_text(), "volume"))


def test_the_day_from_the_partition_alone(tmp_path: Path) -> None:
    """Files without a date column: the folder's date=YYYY-MM-DD is the day."""
    root = tmp_path / "export"
    calls = [{"event_id": f"e{i}", "queue": "billing", "date": d, "time": _time(d, i), "duration_s": 60.0} for i, d in enumerate(DAYS)]
    write_table(root, "calls", calls, drop=("date",))
    assert "date" not in pq.read_schema(next(root.glob("calls/*/*.parquet"))).names
    render_report(root, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "2025-03-03 to 2025-03-05 (UTC)" in page
    assert "3 calls over 3 days (1 queue)" in text_of(section_html(page, "volume"))


def test_threads_draw_the_same_page(export: Path, tmp_path: Path) -> None:
    """No pyplot, no global backend: renders in threads at once match one rendered alone, byte for byte."""
    now = dt.datetime(2025, 3, 10, tzinfo=dt.UTC)
    render_report(export, tmp_path / "alone.html", now=now)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: render_report(export, tmp_path / f"t{i}.html", now=now), range(2)))
    alone = (tmp_path / "alone.html").read_bytes()
    assert all((tmp_path / f"t{i}.html").read_bytes() == alone for i in range(2))


def test_day_axis() -> None:
    assert day_axis(["2025-03-05", "2025-03-03"]) == DAYS
    assert day_axis([]) == []
    assert day_axis(["2020-01-01", "2025-01-01"]) == ["2020-01-01", "2025-01-01"]  # too long a range: only the days present
    assert NONE_LABEL == "(none)"


# -- in a real browser ------------------------------------------------------------------------------

#: Added to a copy of the page only: writes each image's decoded width into the DOM, which --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", String(img.naturalWidth));
  document.body.setAttribute("data-probe", String(document.images.length));
});
</script>"""
CSP = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n?')


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.scripts = 0
        self.body: dict[str, str | None] = {}
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag == "script":
            self.scripts += 1
        elif tag == "body":
            self.body = dict(attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2[-1] += data


def parse_dom(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


@pytest.fixture(scope="module")
def chromium() -> Chromium:
    found = find_chromium()
    if found is None:
        pytest.fail(MISSING)
    return found


@pytest.fixture
def probed(report: tuple[Path, ReportSummary, str], tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two copies of the page with the probe script: one without the page's CSP, one with it."""
    _, _, page = report
    with_probe = page.replace("</body>", PROBE + "\n</body>")
    open_copy, csp_copy = tmp_path / "probe.html", tmp_path / "probe-csp.html"
    open_copy.write_text(CSP.sub("", with_probe, count=1), encoding="utf-8")
    csp_copy.write_text(with_probe, encoding="utf-8")
    yield open_copy, csp_copy


def test_in_chromium_sections_and_images(chromium: Chromium, probed: tuple[Path, Path], tmp_path: Path) -> None:
    open_copy, _ = probed
    dom = parse_dom(chromium.dump_dom(open_copy.as_uri(), tmp_path / "profile"))
    assert dom.body.get("data-probe") == "10", "the probe did not run"
    assert dom.h2 == SECTION_HEADINGS
    widths = [int(img.get("data-natural-width") or 0) for img in dom.images]
    assert len(widths) == 10 and all(w > 100 for w in widths), widths  # every PNG decoded
    assert dom.scripts == 1  # the probe; the hostile caption stayed text


def test_in_chromium_the_csp_blocks_scripts(chromium: Chromium, probed: tuple[Path, Path], tmp_path: Path) -> None:
    _, csp_copy = probed
    dom = parse_dom(chromium.dump_dom(csp_copy.as_uri(), tmp_path / "profile"))
    assert dom.h2 == SECTION_HEADINGS
    assert "data-probe" not in dom.body  # the same probe, refused by the page's own policy
    assert all("data-natural-width" not in img for img in dom.images)


def test_in_chromium_screenshot(chromium: Chromium, report: tuple[Path, ReportSummary, str], tmp_path: Path) -> None:
    out, _, _ = report
    png = chromium.screenshot(out.as_uri(), tmp_path / "shot.png", tmp_path / "profile", width=1280, height=2400)
    assert png.stat().st_size > 50_000
    with Image.open(io.BytesIO(png.read_bytes())) as shot:
        assert shot.size == (1280, 2400)
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # charts and text, not a blank page


# ---------------------------------------------------------------------------- JSON lines and CSV exports


def rewrite_export(export: Path, dest: Path, fmt: Format) -> Path:
    """The test export written again by the export's own writer in ``fmt`` (same rows, same layout)."""
    with ExportWriter(dest, fmt) as writer:
        for table in EXPORT_SCHEMAS:
            for path in sorted((export / table).glob("date=*/*.parquet")):
                for row in pq.read_table(path).to_pylist():
                    writer.add(table, {name: row.get(name) for name in EXPORT_SCHEMAS[table].names})
        writer.commit({})
    return dest


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_jsonl_or_csv_export_draws_the_same_page_as_parquet(export: Path, tmp_path: Path, fmt: Format) -> None:
    """Read back with the export's schema (services/analytics/reader.py): every number, table and
    figure of the page is the one the Parquet export gives, byte for byte."""
    now = dt.datetime(2025, 3, 10, tzinfo=dt.UTC)
    parquet = rewrite_export(export, tmp_path / "parquet", "parquet")
    other = rewrite_export(export, tmp_path / fmt, fmt)
    assert list(other.glob(f"calls/date=*/*.{fmt}")) and not list(other.glob("**/*.parquet"))
    expected = render_report(parquet, tmp_path / "parquet.html", now=now)
    summary = render_report(other, tmp_path / f"{fmt}.html", now=now)
    assert summary.model_dump(exclude={"out"}) == expected.model_dump(exclude={"out"})
    assert (summary.calls, summary.facets, summary.dead_letters, summary.sections) == (9, 12, 3, 6)
    assert (tmp_path / f"{fmt}.html").read_bytes() == (tmp_path / "parquet.html").read_bytes()


def test_an_export_folder_of_two_formats_is_refused(export: Path, tmp_path: Path) -> None:
    mixed = rewrite_export(export, tmp_path / "mixed", "jsonl")
    rewrite_export(export, mixed, "csv")
    with pytest.raises(ExportError, match=r"mixed holds jsonl and csv files: export each format into a folder of its own"):
        render_report(mixed, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("fmt", "damage", "cause"),
    [
        ("jsonl", '{"event_id": "ev-x", "time": "not a time"}\n', "not a calls table in jsonl"),
        ("jsonl", "{truncated\n", "not a calls table in jsonl"),
        ("csv", "event_id,time\nev-x,yesterday\n", "not a calls table in csv"),
        ("csv", "event_id,languages\nev-x,[not json\n", "not a calls table in csv"),
        ("csv", "event_id,languages\nev-x,7\n", "not a calls table in csv: column languages"),
    ],
)
def test_a_damaged_file_is_named_with_its_cause(export: Path, tmp_path: Path, fmt: Format, damage: str, cause: str) -> None:
    root = rewrite_export(export, tmp_path / fmt, fmt)
    bad = root / "calls" / "date=2025-03-04" / f"part-all.{fmt}"
    bad.write_text(damage, encoding="utf-8")
    with pytest.raises(ExportError) as raised:
        render_report(root, tmp_path / "r.html")
    assert str(raised.value).startswith(f"{bad}: {cause}: ")


def test_the_command_says_what_is_wrong_with_the_export_without_a_traceback(export: Path, tmp_path: Path) -> None:
    mixed = rewrite_export(export, tmp_path / "mixed", "jsonl")
    rewrite_export(export, mixed, "csv")
    app = typer.Typer()
    app.command()(report_command)
    result = CliRunner().invoke(app, [str(tmp_path / "r.html"), "--from", str(mixed)])
    assert result.exit_code == 2
    assert "error: " in result.stderr and "holds jsonl and csv files" in result.stderr
    assert "Traceback" not in result.output
    csv_only = rewrite_export(export, tmp_path / "csv", "csv")
    drawn = CliRunner().invoke(app, [str(tmp_path / "r.html"), "--from", str(csv_only)])
    assert drawn.exit_code == 0, drawn.output
    assert "9 calls, 6 decisions, 3 dead letters, 6 sections with data" in drawn.stdout


def test_a_text_export_beyond_what_a_report_loads_is_refused(export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON lines and CSV are loaded whole: beyond the bound the report says to export parquet."""
    root = rewrite_export(export, tmp_path / "jsonl", "jsonl")
    monkeypatch.setattr(reader, "MAX_TEXT_EXPORT_BYTES", 1024)
    with pytest.raises(ExportError, match=r"of jsonl, more than the .* a report reads into memory: export it as parquet"):
        render_report(root, tmp_path / "r.html")
