"""`listenpost export` on a real nats-server (services/analytics/): model-valid captioned events,
decisions, markers and dead letters are published, exported as the operator role in every
format, and read back: row counts, schemas, date partitions, an idempotent re-export, the
`--batch` filter, `--follow`, the command itself, and every DuckDB query of docs/analytics.md,
each with its exact answer for the published calls.

The server is hardened as `listenpost serve` runs it (an NKey per role, permissions checked), so
the export proves that the operator role may read what it reads. No Ray: not an e2e test.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import typer
from nats.aio.client import Client as NATS
from stack import cli_env
from test_analytics_tables import (
    DECISION_TYPES,
    SOURCE,
    captioned_data,
    decision_data,
    failed_data,
    marker_data,
    submitted_original,
)
from typer.testing import CliRunner

from services.analytics.cli import export_command
from services.analytics.source import ExportReport, export, follow_streams
from services.analytics.tables import FILE_SCHEMAS, SCHEMA_VERSION, SCHEMA_VERSION_KEY, SCHEMAS, TABLES
from services.analytics.writer import FOLLOW_STATE, DateSpan, ExportWriter, file_tag
from services.events.binding import new_event
from services.events.claimcheck import by_reference
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer
from services.events.jetstream import evaluated_subject, provision_everything, publish_event
from services.events.models import AUDIO_CAPTIONED, AUDIO_FAILED, RULES_EVALUATED
from services.settings import NatsSettings, Settings

REPO = Path(__file__).resolve().parents[1]
TODAY = datetime.now(UTC).date()
DAY0, DAY1, DAY2 = TODAY - timedelta(days=2), TODAY - timedelta(days=1), TODAY

# What the published data gives (the counts every format must hold).
ROWS = {"calls": 4, "windows": 7, "facets": 11, "decisions": 5, "dead_letters": 3}
BATCH_ROWS = {"calls": 2, "windows": 5, "facets": 8, "decisions": 2, "dead_letters": 1}


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second), tzinfo=UTC)


@dataclass
class Env:
    settings: Settings
    server: EmbeddedNatsServer
    admin: NATS


async def publish_dataset(admin: NATS, settings: Settings) -> None:
    """Four calls in range (two of batch b-1, one live summary held by reference), one call too old
    for the range, one unreadable message, five decisions, three markers, three dead letters."""
    js, nats = admin.jetstream(), settings.nats

    async def put(subject: str, kind: str, data: Any, *, id: str, when: datetime | None, **extensions: Any) -> None:
        await publish_event(js, subject, new_event(kind, SOURCE, data, id=id, time=when, extensions=extensions or None), msg_id=id)

    calls = [
        ("cap-a", at(DAY0, 12), {"callid": "c-a", "queue": "billing", "agent": "alice", "batch": {"id": "b-1", "path": "a.wav"}},
         dict(duration_s=120.0, captions=("Hello.", "The customer is furious.", "Goodbye."), window_s=40.0,
              emotions=[("customer", "anger", 0.9, 1)], sounds=[("siren", 0)], languages=["en"], dead_air_s=4.0, overtalk_s=6.0,
              talk_time={"agent": 30.0, "customer": 60.0})),
        ("cap-b", at(DAY1, 12), {"callid": "c-b", "queue": "billing", "agent": "bob", "batch": {"id": "b-1", "path": "b.wav"}},
         dict(duration_s=60.0, captions=("Calm.", "A dog barks twice."), window_s=30.0, emotions=[("customer", "calm", 0.5, 0)],
              sounds=[("dog_bark", 0), ("dog_bark", 1)], languages=["en", "es"], dead_air_s=10.0, overtalk_s=1.0,
              talk_time={"agent": 20.0, "customer": 20.0})),
        ("cap-c", at(DAY2, 0, 0, 30), {"callid": "c-c", "queue": "support", "agent": "alice"},
         dict(duration_s=90.0, captions=("A frustrated customer and a siren.",), window_s=90.0,
              emotions=[("customer", "frustration", 0.8, 0)], sounds=[("siren", 0)], languages=["es"], dead_air_s=0.0,
              overtalk_s=8.0, talk_time={"agent": 45.0, "customer": 15.0})),
        ("cap-old", at(TODAY - timedelta(days=30), 9), {"callid": "c-old", "queue": "billing", "agent": "alice"},
         dict(duration_s=30.0)),
    ]  # fmt: skip
    for event_id, when, context, spec in calls:
        data = captioned_data(context=context, input_id=f"in-{event_id}", **spec)  # type: ignore[arg-type]
        await put(nats.subject("captioned"), AUDIO_CAPTIONED, data, id=event_id, when=when, inputid=f"in-{event_id}",
                  callid=context["callid"])  # fmt: skip
    # A live stream's summary, too large for a message: stored by reference, as the owner does.
    live = captioned_data(context={"site": "lobby", "callid": "live-d", "stream": {"id": "cam-1", "ended_by": "end"}},
                          input_id="start-cam-1", duration_s=20.0, captions=("A hum.",), window_s=20.0, dead_air_s=2.0,
                          talk_time={"all": 0.0}, timings={"audio_s": 20.0})  # fmt: skip
    summary = new_event(AUDIO_CAPTIONED, SOURCE, live, id="sum-d", extensions={"streamid": "cam-1", "callid": "live-d"})
    held = await by_reference(js, summary, bucket=nats.outputs_bucket, name="captioned/sum-d", max_payload_bytes=512,
                              ttl_s=3600, max_bytes=2**24)  # fmt: skip
    assert held.get_data() is None and "dataref" in held.get_attributes()
    await publish_event(js, nats.subject("captioned"), held, msg_id="sum-d")
    await js.publish(nats.subject("captioned"), b"not a cloudevent", headers={"Nats-Msg-Id": "garbage"})

    decisions = [
        ("d-a-route", "route", "angry-customer-to-escalations", "v1", "cap-a", "c-a", at(DAY0, 12, 0, 1), {"queue": "escalations"}),
        ("d-a-alert", "alert", "angry-customer-to-escalations", "v1", "cap-a", "c-a", at(DAY0, 12, 0, 1),
         {"severity": "warning", "summary": "Angry customer on c-a", "labels": {"queue": "billing", "site": "hq"}, "fingerprint": "fa"}),
        ("d-c-route", "route", "angry-customer-to-escalations", "v2", "cap-c", "c-c", at(DAY2, 0, 0, 31), {"queue": "escalations"}),
        ("d-c-alert", "alert", "angry-customer-to-escalations", "v2", "cap-c", "c-c", at(DAY2, 0, 0, 31),
         {"severity": "warning", "summary": "Angry customer on c-c", "labels": {"queue": "support", "site": "branch"},
          "fingerprint": "fc"}),
        ("d-c-tag", "tag", "qa-sample", "v2", "cap-c", "c-c", at(DAY2, 0, 0, 31), {"tags": ["qa"]}),
    ]  # fmt: skip
    for decision_id, kind, rule, version, input_id, callid, when, params in decisions:
        data = decision_data(kind, rule=rule, version=version, input_id=input_id, callid=callid, **params)
        subject = {"route": f"routes.{params.get('queue')}", "alert": "alerts.warning", "tag": "tags"}[kind]
        await put(nats.subject(*subject.split(".")), DECISION_TYPES[kind], data, id=decision_id, when=when, rulesetver=version,
                  inputid=input_id, callid=callid)  # fmt: skip
    for captioned_id, version, count, when in (("cap-a", "v1", 2, at(DAY0, 12, 0, 2)), ("cap-b", "v1", 0, at(DAY1, 12, 0, 2)),
                                               ("cap-c", "v2", 3, at(DAY2, 0, 0, 32))):  # fmt: skip
        await put(evaluated_subject(nats), RULES_EVALUATED, marker_data(captioned_id, version, count), id=f"m-{captioned_id}",
                  when=when, inputid=captioned_id, rulesetver=version)  # fmt: skip

    letters = [
        ("dl-1", at(DAY1, 13), "fetch", "HTTP 404", "FetchError",
         submitted_original(nats.subject("batch", "b-1"), id="in-x", context={"batch": {"id": "b-1", "path": "missing.wav"}})),
        ("dl-2", at(DAY2, 0, 2), "decode-audio", "not audio", "DecodeError",
         submitted_original(nats.subject("in", "pbx"), id="in-y", context={})),
        ("dl-3", at(DAY2, 0, 3), "fetch", "HTTP 404", "FetchError",
         submitted_original(nats.subject("in", "pbx"), id="in-z", context={"callid": "c-z"})),
    ]  # fmt: skip
    for letter_id, when, stage, reason, error, original in letters:
        await put(nats.subject("dlq", stage), AUDIO_FAILED, failed_data(stage, reason, error, original), id=letter_id, when=when,
                  originalid=original["headers"]["ce-id"])  # type: ignore[index]  # fmt: skip


@asynccontextmanager
async def serving(root: Path) -> AsyncIterator[Env]:
    """A hardened nats-server of its own, provisioned by the admin, holding the dataset."""
    with EmbeddedNatsServer(root / "data", secrets_dir=root / "secrets", tls=False) as server:
        settings = Settings(_env_file=None, nats=server.client_settings(NatsSettings()))
        admin = await connect(settings.nats, role="admin", name="test-analytics-admin")
        try:
            await provision_everything(admin.jetstream(), settings)
            await publish_dataset(admin, settings)
            yield Env(settings, server, admin)
        finally:
            await admin.close()


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    async with serving(tmp_path_factory.mktemp("analytics-nats")) as served:
        yield served


async def run_export(env: Env, out: Path, **options: Any) -> ExportReport:
    """The export as the command runs it: as the operator role, with its own permissions."""
    nc = await connect(env.settings.nats, role="operator", name="listenpost-export")
    try:
        return await export(nc.jetstream(), env.settings, out, since=options.pop("since", timedelta(days=7)), **options)
    finally:
        await nc.close()


def files_of(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


def data_files(fmt: str) -> list[str]:
    """The data files of a full export of the published calls."""
    days = {"calls": (DAY0, DAY1, DAY2), "windows": (DAY0, DAY1, DAY2), "facets": (DAY0, DAY1, DAY2), "decisions": (DAY0, DAY2),
            "dead_letters": (DAY1, DAY2)}  # fmt: skip
    return [f"{table}/date={day}/part-all.{fmt}" for table in TABLES for day in days[table]]


def count_rows(out: Path, table: str, fmt: str) -> int:
    total = 0
    for path in (out / table).rglob(f"*.{fmt}"):
        if fmt == "parquet":
            total += pq.read_metadata(path).num_rows
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            total += len(lines) - (1 if fmt == "csv" else 0)
    return total


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
async def test_an_export_writes_every_table_by_date(env: Env, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    report = await run_export(env, out, fmt=fmt)
    assert report.rows == ROWS
    assert (report.unreadable, report.skipped, report.markers) == (1, 0, 3)
    assert report.start == datetime.combine(TODAY - timedelta(days=7), time(0), tzinfo=UTC)
    assert files_of(out) == sorted([*data_files(fmt), *(f"{table}/_schema.json" for table in TABLES)])
    for table, n in ROWS.items():
        assert count_rows(out, table, fmt) == n, table
        schema_file = json.loads((out / table / "_schema.json").read_text())
        assert schema_file["schema_version"] == SCHEMA_VERSION
        assert [c["name"] for c in schema_file["columns"]] == FILE_SCHEMAS[table].names
        assert schema_file["partitioning"] == {"style": "hive", "columns": ["date"]}
    if fmt == "parquet":
        for path in out.rglob("*.parquet"):
            table = path.parts[-3]
            schema = pq.read_schema(path)
            assert schema.equals(FILE_SCHEMAS[table], check_metadata=True), path  # type: ignore[index]
            assert schema.metadata[SCHEMA_VERSION_KEY] == str(SCHEMA_VERSION).encode()
        for table in TABLES:
            # Read as a whole with its partitioning, each table is its declared schema, and each
            # row sits in its own date's folder.
            dataset = ds.dataset(out / table, format="parquet", partitioning="hive")
            assert dataset.schema.names == [*FILE_SCHEMAS[table].names, "date"], table  # the partition comes last
            assert all(dataset.schema.field(f.name).type == f.type for f in SCHEMAS[table]), table
            by_date = {}
            for fragment in dataset.get_fragments():
                day = Path(fragment.path).parent.name.removeprefix("date=")
                times = fragment.to_table(columns=["time"]).column("time").to_pylist()
                by_date[day] = {t.date().isoformat() for t in times}
            assert all(days == {day} for day, days in by_date.items()), (table, by_date)
        calls = ds.dataset(out / "calls", format="parquet", partitioning="hive").to_table().to_pylist()
        by_id = {row["event_id"]: row for row in calls}
        assert by_id["cap-a"]["date"] == DAY0.isoformat()
        assert sorted(by_id) == ["cap-a", "cap-b", "cap-c", "sum-d"]  # cap-old is before the range
        assert (by_id["cap-a"]["ruleset_version"], by_id["cap-a"]["decisions"], by_id["cap-a"]["time"]) == ("v1", 2, at(DAY0, 12))
        assert (by_id["cap-b"]["ruleset_version"], by_id["cap-b"]["decisions"]) == ("v1", 0)
        assert (by_id["sum-d"]["stream_id"], by_id["sum-d"]["ruleset_version"], by_id["sum-d"]["caption"]) == ("cam-1", None, "A hum.")
    if fmt == "csv":
        header = (out / "calls" / f"date={DAY0}" / "part-all.csv").read_text().splitlines()[0]
        assert header.split(",") == FILE_SCHEMAS["calls"].names
    if fmt == "jsonl":
        (line,) = (out / "calls" / f"date={DAY0}" / "part-all.jsonl").read_text().splitlines()
        row = json.loads(line)
        assert (row["event_id"], row["time"], row["languages"], row["batch_id"]) == ("cap-a", f"{DAY0}T12:00:00Z", ["en"], "b-1")


async def test_a_re_export_replaces_the_files_of_its_dates(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "out"
    await run_export(env, out)
    first = {path: path.read_bytes() for path in out.rglob("*.parquet")}
    # Left over from earlier exports: an extra part and a batch's file in range go; a date before
    # the range stays; a file of another format stays.
    stale = out / "calls" / f"date={DAY1}" / "part-all.1.parquet"
    batch_file = out / "calls" / f"date={DAY0}" / "part-batch-b-1.parquet"
    emptied = out / "decisions" / f"date={DAY1}" / "part-all.parquet"  # a date in range with no decision (any more)
    older = out / "calls" / "date=2001-01-01" / "part-all.parquet"
    other_format = out / "calls" / f"date={DAY1}" / "part-all.csv"
    for path in (stale, batch_file, emptied, older, other_format):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(first[out / "calls" / f"date={DAY1}" / "part-all.parquet"])
    report = await run_export(env, out)
    assert report.rows == ROWS
    assert report.tables["calls"].removed == 2 and report.tables["decisions"].removed == 1
    assert not stale.exists() and not batch_file.exists() and not emptied.exists()
    assert older.exists() and other_format.exists()
    older.unlink()
    other_format.unlink()
    second = {path: path.read_bytes() for path in out.rglob("*.parquet")}
    assert sorted(second) == sorted(first)
    for table, n in ROWS.items():
        assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/{table}/**/*.parquet', hive_partitioning = true)").fetchall() == [(n,)]


async def test_a_batch_export_keeps_one_batch(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = await run_export(env, out, batch="b-1")
    assert report.rows == BATCH_ROWS
    written = [p for p in files_of(out) if not p.endswith("_schema.json")]
    assert written == sorted(
        [f"calls/date={DAY0}/part-batch-b-1.parquet", f"calls/date={DAY1}/part-batch-b-1.parquet",
         f"windows/date={DAY0}/part-batch-b-1.parquet", f"windows/date={DAY1}/part-batch-b-1.parquet",
         f"facets/date={DAY0}/part-batch-b-1.parquet", f"facets/date={DAY1}/part-batch-b-1.parquet",
         f"decisions/date={DAY0}/part-batch-b-1.parquet", f"dead_letters/date={DAY1}/part-batch-b-1.parquet"]
    )  # fmt: skip
    decisions = ds.dataset(out / "decisions", partitioning="hive").to_table().to_pylist()
    assert sorted((d["decision_id"], d["batch_id"], d["kind"]) for d in decisions) == [
        ("d-a-alert", "b-1", "alert"), ("d-a-route", "b-1", "route"),
    ]  # fmt: skip
    (letter,) = ds.dataset(out / "dead_letters", partitioning="hive").to_table().to_pylist()
    assert (letter["event_id"], letter["batch_path"], letter["original_id"]) == ("dl-1", "missing.wav", "in-x")
    # A second batch beside it, and the first again: neither touches the other's files.
    again = await run_export(env, out, batch="b-1")
    assert again.rows == BATCH_ROWS and [p for p in files_of(out) if not p.endswith("_schema.json")] == written
    none = await run_export(env, out, batch="b-2")
    assert none.rows == dict.fromkeys(TABLES, 0) and [p for p in files_of(out) if not p.endswith("_schema.json")] == written


def docs_queries() -> list[tuple[str, str]]:
    """Every ```sql block of docs/analytics.md with the question heading above it."""
    text = (REPO / "docs" / "analytics.md").read_text(encoding="utf-8")
    return re.findall(r"^#+ (.+?)\n\n```sql\n(.*?)```", text, flags=re.MULTILINE | re.DOTALL)


def week(day: date) -> date:
    return day - timedelta(days=day.weekday())


def expected_answers(live_day: date) -> list[list[tuple[Any, ...]]]:
    """The answer to each query of docs/analytics.md, in order, for the published calls."""
    billing_weeks: dict[date, list[int]] = {}
    for day, angry in ((DAY0, 1), (DAY1, 0)):
        billing_weeks.setdefault(week(day), []).append(angry)
    angry_share = [("billing", w, len(a), sum(a), round(sum(a) / len(a), 3)) for w, a in sorted(billing_weeks.items())]
    angry_share += [("support", week(DAY2), 1, 1, 1.0), (None, week(live_day), 1, 0, 0.0)]
    sound_days = sorted([(DAY0, "siren", 1, 1), (DAY1, "dog_bark", 2, 1), (DAY2, "siren", 1, 1)])
    return [
        angry_share,
        [("bob", 1, 10.0, 10.0), ("alice", 2, 2.0, 4.0)],
        [("angry-customer-to-escalations", "branch", 1), ("angry-customer-to-escalations", "hq", 1)],
        [("alice", 2, round((30 / 90 + 45 / 60) / 2, 3)), ("bob", 1, 0.5)],
        [("billing", 1, 2, 0.5), ("support", 1, 1, 1.0), (None, 0, 1, 0.0)],
        [("fetch", "FetchError", "HTTP 404", 2), ("decode-audio", "DecodeError", "not audio", 1)],
        sound_days,
        [("b-1", 2, 90.0, 2.5), (None, 2, 55.0, 1.0)],
        [("v1", 2, 1, 1, 0, 1), ("v2", 3, 1, 1, 1, 1)],
        [("en", 2), ("es", 2)],
    ]


async def test_every_query_of_the_docs_answers_for_the_published_calls(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "out"
    await run_export(env, out)
    # The live summary's time is when it was stored by reference (the copy's own time): today, mostly.
    (live,) = [row for row in pq.read_table(out / "calls").to_pylist() if row["event_id"] == "sum-d"]
    live_day = live["time"].date()
    queries = docs_queries()
    assert len(queries) == 10, [q for q, _ in queries]
    for (question, sql), answer in zip(queries, expected_answers(live_day), strict=True):
        assert "'OUT/" in sql, question
        rows = duckdb.connect().sql(sql.replace("'OUT/", f"'{out}/")).fetchall()
        assert rows == answer, question


def test_the_docs_name_every_column() -> None:
    text = (REPO / "docs" / "analytics.md").read_text(encoding="utf-8")
    for table, schema in SCHEMAS.items():
        section = text.split(f"### `{table}`", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
        assert documented == schema.names, table
    assert f"`SCHEMA_VERSION` is **{SCHEMA_VERSION}**" in text


async def test_follow_appends_by_hour_and_resumes_after_its_checkpoint(tmp_path: Path) -> None:
    async with serving(tmp_path / "nats") as served:
        out = tmp_path / "lake"
        operator = await connect(served.settings.nats, role="operator", name="test-export-follow")
        try:
            js = operator.jetstream()

            async def follow_until_caught_up() -> dict[str, int]:
                stop = asyncio.Event()
                run = asyncio.create_task(follow_streams(js, served.settings, out, since=timedelta(days=7), stop=stop, flush_s=0.1))
                streams = (served.settings.nats.out_stream, served.settings.nats.dlq_stream)
                last = {s: (await js.stream_info(s)).state.last_seq for s in streams}
                for _ in range(600):  # 30 s at most: two shared CPUs under the whole suite
                    state = json.loads((out / FOLLOW_STATE).read_text()) if (out / FOLLOW_STATE).exists() else {"sequences": {}}
                    if all(state["sequences"].get(s, 0) >= n for s, n in last.items()):
                        break
                    await asyncio.sleep(0.05)
                stop.set()
                report = await asyncio.wait_for(run, timeout=30)
                return report.rows

            assert await follow_until_caught_up() == ROWS
            hourly = [p for p in files_of(out) if p.endswith(".parquet")]
            assert all(re.fullmatch(r"[a-z_]+/date=\d{4}-\d{2}-\d{2}/hour=\d{2}/part-\d{12}-\d{12}\.parquet", p) for p in hourly), hourly
            assert f"calls/date={DAY0}/hour=12" in {str(Path(p).parent) for p in hourly}
            # A file a flush wrote after the checkpoint (a crash before it was saved) is removed on restart.
            ghost = out / "calls" / f"date={DAY2}" / "hour=23" / "part-999999999990-999999999999.parquet"
            ghost.parent.mkdir(parents=True)
            ghost.write_bytes(b"")
            # A new call: a restart reads it, and only it.
            data = captioned_data(context={"callid": "c-e", "queue": "support", "agent": "carol"}, input_id="in-e")
            await publish_event(served.admin.jetstream(), served.settings.nats.subject("captioned"),
                                new_event(AUDIO_CAPTIONED, SOURCE, data, id="cap-e", time=at(DAY2, 1)), msg_id="cap-e")  # fmt: skip
            assert await follow_until_caught_up() == {"calls": 1, "windows": 1, "facets": 0, "decisions": 0, "dead_letters": 0}
            assert not ghost.exists()
            calls = ds.dataset(out / "calls", format="parquet", partitioning="hive").to_table().to_pylist()
            assert sorted(row["event_id"] for row in calls) == ["cap-a", "cap-b", "cap-c", "cap-e", "sum-d"]
            assert {row["event_id"]: row["hour"] for row in calls}["cap-e"] == 1
            windows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/windows/**/*.parquet', hive_partitioning = true)")
            assert windows.fetchall() == [(8,)]
        finally:
            await operator.close()


def test_a_partial_first_date_keeps_its_existing_files(tmp_path: Path) -> None:
    """Retention removed the start of the oldest date: what an earlier export wrote of it stays."""
    day = date(2025, 3, 4)
    row = {"event_id": "x", "time": at(day, 10), "date": day.isoformat(), "window": 0}
    keep = tmp_path / "windows" / f"date={day}" / "part-all.parquet"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"earlier")
    with ExportWriter(tmp_path, "parquet") as writer:
        writer.add("windows", {name: row.get(name) for name in SCHEMAS["windows"].names})
        report = writer.commit({"windows": DateSpan(day, day + timedelta(days=1), first_partial=True)})
    assert report["windows"].kept == [day.isoformat()] and report["windows"].rows == 0
    assert keep.read_bytes() == b"earlier" and not list(keep.parent.glob(".*"))
    # Without earlier files it is written, partial as it is.
    keep.unlink()
    with ExportWriter(tmp_path, "parquet") as writer:
        writer.add("windows", {name: row.get(name) for name in SCHEMAS["windows"].names})
        report = writer.commit({"windows": DateSpan(day, day, first_partial=True)})
    assert report["windows"].rows == 1 and pq.read_metadata(keep).num_rows == 1


def test_a_date_seen_again_after_its_file_closed_gets_a_next_part_and_batches_keep_apart(tmp_path: Path) -> None:
    day0, day1 = date(2025, 3, 3), date(2025, 3, 4)

    def window(day: date, n: int) -> dict[str, Any]:
        empty = dict.fromkeys(SCHEMAS["windows"].names)
        return empty | {"event_id": f"e{n}", "time": at(day, 10), "date": day.isoformat(), "window": n}

    other_batch = tmp_path / "windows" / f"date={day0}" / "part-batch-b-1.parquet"
    other_batch.parent.mkdir(parents=True)
    other_batch.write_bytes(b"batch b-1's")
    # One file open at a time: day0's is closed for day1's, and day0 again opens a second part.
    with ExportWriter(tmp_path, "parquet", tag=file_tag("b"), flush_rows=1, max_open=1) as writer:
        for n, day in enumerate((day0, day1, day0)):
            writer.add("windows", window(day, n))
        report = writer.commit({"windows": DateSpan(day0, day1)})
    assert report["windows"].rows == 3 and report["windows"].removed == 0
    assert files_of(tmp_path) == [
        "windows/_schema.json", f"windows/date={day0}/part-batch-b-1.parquet", f"windows/date={day0}/part-batch-b.1.parquet",
        f"windows/date={day0}/part-batch-b.parquet", f"windows/date={day1}/part-batch-b.parquet",
    ]  # fmt: skip
    assert other_batch.read_bytes() == b"batch b-1's"
    assert pq.read_table(tmp_path / "windows" / f"date={day0}" / "part-batch-b.1.parquet").column("event_id").to_pylist() == ["e2"]


def test_a_failed_export_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    day = date(2025, 3, 4)
    row = {name: None for name in SCHEMAS["windows"].names} | {"event_id": "x", "time": at(day, 10), "date": day.isoformat(), "window": 0}
    with pytest.raises(RuntimeError), ExportWriter(tmp_path, "csv", flush_rows=1) as writer:
        writer.add("windows", row)  # flushed to a temporary file at once
        raise RuntimeError("the NATS connection dropped")
    assert list(tmp_path.rglob("*")) == []


def test_the_command_prints_the_rows_per_table(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nats = env.settings.nats
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("LISTENPOST_NATS__URL", str(nats.url))
    monkeypatch.setenv("LISTENPOST_NATS__ROLES__OPERATOR__NKEY_SEED_FILE", str(nats.roles["operator"].nkey_seed_file))
    app = typer.Typer()
    app.command()(export_command)
    result = CliRunner().invoke(app, [str(tmp_path / "out"), "--since", "36h", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line.split()[2:] for line in result.output.splitlines() if line.startswith("│")}
    # 36h: from midnight of yesterday, so the day before yesterday is out of range.
    assert lines["calls"] == ["│", "3", "│", "2", "│", "2", "│", "0", "│"]
    assert lines["dead_letters"][:3] == ["│", "3", "│"]
    refused = CliRunner().invoke(app, [str(tmp_path / "out"), "--since", "soon"])
    assert refused.exit_code == 2 and "not a duration" in refused.output


async def test_the_follow_command_writes_at_its_flush_options_and_stops_on_ctrl_c(env: Env, tmp_path: Path) -> None:
    """`export --follow --flush-rows 1`: files and a checkpoint while it runs (the default, 5,000 rows
    or 60 s, would write nothing for a minute), and SIGINT stops it with its table printed."""
    out = tmp_path / "lake"
    command = [sys.executable, "-c", "from services.cli import main; main()", "export", str(out), "--follow",
               "--flush-rows", "1", "--flush-every", "1h"]  # fmt: skip
    follow = subprocess.Popen(command, cwd=tmp_path, env=cli_env(env.settings.nats), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for _ in range(600):  # 60 s at most: the command's imports on two shared CPUs
            if (out / FOLLOW_STATE).exists() and follow.poll() is None:
                break
            await asyncio.sleep(0.1)
        assert (out / FOLLOW_STATE).exists(), follow.communicate(timeout=5) if follow.poll() is not None else "no checkpoint"
    finally:
        follow.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.to_thread(follow.communicate, timeout=60)
    assert follow.returncode == 0, (stdout, stderr)
    assert "files every 3600 s or 1 rows" in stderr
    assert "stopped" in stdout and "calls" in stdout
    assert list(out.glob("calls/date=*/hour=*/part-*.parquet"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--flush-rows", "10"], "--flush-rows and --flush-every are for --follow"),
        (["--follow", "--flush-every", "0s"], "'0s' is outside 1s..1h"),
        (["--follow", "--flush-every", "2h"], "'2h' is outside 1s..1h"),
        (["--follow", "--flush-every", "soon"], "not a duration"),
        (["--follow", "--flush-rows", "0"], "should be greater than or equal to 1"),
    ],
)
def test_the_flush_options_are_checked_before_anything_runs(tmp_path: Path, args: list[str], message: str) -> None:
    app = typer.Typer()
    app.command()(export_command)
    result = CliRunner().invoke(app, [str(tmp_path / "out"), "--nats-url", "nats://127.0.0.1:1", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "out").exists()
