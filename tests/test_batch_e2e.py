"""`listenpost batch` end to end on the session's service: a manifest of mixed formats (some not
audio at all), interrupted with Ctrl-C (SIGINT to the real command) and run again; every file is
captioned or failed exactly once, a third run submits nothing, --retry-failed submits the failed
ones anew (docs/batch.md); then the batch is exported as Parquet (docs/analytics.md) and rendered
as a report (docs/report.md)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile
from stack import cli_env

from services.analytics.source import stored_messages
from services.events.connection import connect
from services.settings import NatsSettings, Settings

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
GOOD = {  # name: (format, subtype, rate, channels)
    "calls/a.wav": ("WAV", "PCM_16", 8000, 2),
    "calls/b.flac": ("FLAC", "PCM_16", 16000, 1),
    "calls/c.ogg": ("OGG", "VORBIS", 16000, 1),
    "calls/d.mp3": ("MP3", "MPEG_LAYER_III", 16000, 1),
    "calls/e.wav": ("WAV", "PCM_U8", 11025, 1),
    "calls/f.aiff": ("AIFF", "PCM_16", 22050, 1),
    # Archives name files by habit: a FLAC and an LDC-style NIST SPHERE file, both named .wav.
    "calls/g.wav": ("FLAC", "PCM_16", 16000, 1),
    "calls/h.wav": ("NIST", "PCM_16", 8000, 1),
}
BAD = {"calls/notes.wav": b"these are notes, not audio\n" * 40, "calls/cut.flac": None}  # None: a truncated FLAC


def make_archive(root: Path) -> Path:
    rng = np.random.default_rng(7)
    for name, (fmt, subtype, rate, channels) in GOOD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(2.5 * rate)) / rate
        tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
        samples = np.stack([tone] * channels, axis=1) if channels > 1 else tone
        soundfile.write(str(root / name), samples.astype(np.float32), rate, format=fmt, subtype=subtype)
    (root / "calls/notes.wav").write_bytes(BAD["calls/notes.wav"] or b"")
    (root / "calls/cut.flac").write_bytes((root / "calls/b.flac").read_bytes()[:300])
    rows = ["path,call_id,queue,channels,context.site,mood"]
    for i, name in enumerate([*GOOD, *BAD]):
        roles = '"agent,customer"' if name.endswith("a.wav") else ""
        rows.append(f"{name},{Path(name).stem.upper()}-1,{'billing' if i % 2 else 'sales'},{roles},lyon,")
    rows.append("calls/missing.wav,MISSING-1,sales,,lyon,")
    rows.append(",NOPATH-1,sales,,lyon,")
    manifest = root / "audit.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def batch_cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from services.cli import main; main()", "batch", *args]


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"items": {}}


async def stored(nats: NatsSettings, stream: str, subject: str, record: Path) -> Counter[str]:
    """Per recording of the run record, how many events about any of its submissions ``stream``
    holds (by their ``inputid``, as every output and dead letter names its input)."""
    whose = {eid: key for key, item in read_record(record)["items"].items() for eid in item["event_ids"]}
    nc = await connect(nats, role="operator", name="test-batch")
    found: Counter[str] = Counter()
    try:
        async for msg in stored_messages(nc.jetstream(), stream, [subject]):
            if msg is not None and (key := whose.get(unquote((msg.headers or {}).get("ce-inputid", "")))) is not None:
                found[key] += 1
    finally:
        await nc.close()
    return found


async def test_a_batch_interrupted_and_resumed_captions_or_fails_every_file_exactly_once(service: Settings, tmp_path: Path) -> None:
    manifest = make_archive(tmp_path / "archive")
    record = tmp_path / "run.json"
    env = cli_env(service.nats)
    common = ["--record", str(record), "--batch-id", "e2e-batch", "--wait", "120"]
    # Run 1 at one submission a second, stopped with SIGINT (Ctrl-C) once a few are out.
    first = subprocess.Popen(batch_cli(str(manifest), *common, "--rate", "1"), cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        statuses = [item["status"] for item in read_record(record)["items"].values()]
        if sum(s != "pending" for s in statuses) >= 3:
            break
    else:
        first.kill()
        pytest.fail(f"run 1 never saved progress: {first.communicate()}")
    first.send_signal(signal.SIGINT)
    out, errors = await asyncio.to_thread(first.communicate, timeout=60)
    assert first.returncode == 130, (out, errors)
    assert "stopped (Ctrl-C): run the same command again to continue" in out
    after_first = read_record(record)
    assert 3 <= sum(i["status"] != "pending" for i in after_first["items"].values()) < len(GOOD) + len(BAD) + 1
    # Run 2 continues: exit 1, because some files failed; the manifest's problems are in the record.
    second = await asyncio.to_thread(subprocess.run, batch_cli(str(manifest), *common, "--rate", "20"), cwd=REPO, env=env,
                                     capture_output=True, text=True, timeout=300)  # fmt: skip
    assert second.returncode == 1, (second.stdout, second.stderr)
    final = read_record(record)
    statuses = {key: item["status"] for key, item in final["items"].items()}
    assert statuses == {**dict.fromkeys(GOOD, "captioned"), **dict.fromkeys(BAD, "failed"), "calls/missing.wav": "invalid"}
    assert final["items"]["calls/missing.wav"]["reason"] == "No such file or directory"
    assert {key: (item["stage"], item["reason"].split(":")[0]) for key, item in final["items"].items() if key in BAD} == {
        "calls/notes.wav": ("decode-audio", "audio could not be decoded"),
        "calls/cut.flac": ("decode-audio", "audio is truncated or corrupt"),
    }
    assert [(p["where"], p["reason"]) for p in final["problems"]] == [
        (f"{manifest}:1", "unknown column 'mood' ignored (known: agent, call_id, callid, channels, context, customer_tier, "
                          "format, language, path, queue, url, context.<key>)"),
        (f"{manifest}:{len(GOOD) + len(BAD) + 3}", "no 'path' or 'url'"),  # after the header, the files and the missing one
    ]  # fmt: skip
    # Exactly once, as the streams hold it: one caption per good file, one dead letter per bad one.
    captioned = await stored(service.nats, service.nats.out_stream, service.nats.subject("captioned"), record)
    failed = await stored(service.nats, service.nats.dlq_stream, service.nats.subject("dlq", ">"), record)
    assert captioned == Counter(dict.fromkeys(GOOD, 1))
    assert failed == Counter(dict.fromkeys(BAD, 1))
    # Run 3 has nothing to do and submits nothing.
    nc = await connect(service.nats, role="operator", name="test-batch")
    try:
        before = (await nc.jetstream().stream_info(service.nats.batch_stream)).state.last_seq
        third = await asyncio.to_thread(subprocess.run, batch_cli(str(manifest), *common), cwd=REPO, env=env,
                                        capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "0 to go" in third.stdout, third.stdout
        assert (await nc.jetstream().stream_info(service.nats.batch_stream)).state.last_seq == before
        # --retry-failed submits the two failed files anew (new ids), and they fail again, once each.
        retried = await asyncio.to_thread(subprocess.run, batch_cli(str(manifest), *common, "--retry-failed"), cwd=REPO,
                                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert retried.returncode == 1 and "2 to go" in retried.stdout, retried.stdout
        assert (await nc.jetstream().stream_info(service.nats.batch_stream)).state.last_seq == before + 2
    finally:
        await nc.close()
    again = read_record(record)
    assert {key: len(again["items"][key]["event_ids"]) for key in BAD} == dict.fromkeys(BAD, 2)
    assert await stored(service.nats, service.nats.dlq_stream, service.nats.subject("dlq", ">"), record) == Counter(
        dict.fromkeys(BAD, 2)
    )
    # The batch as tables: one call per captioned file, its windows, a dead letter per failure
    # (two attempts each), every file of its table's declared schema.
    import duckdb
    import pyarrow.parquet as pq

    from services.analytics.tables import FILE_SCHEMAS, TABLES

    out = tmp_path / "export"
    export = await asyncio.to_thread(subprocess.run, [*batch_cli()[:3], "export", str(out), "--since", "1d", "--batch", "e2e-batch"],
                                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert export.returncode == 0, (export.stdout, export.stderr)
    for table in TABLES:
        for path in (out / table).rglob("*.parquet"):
            assert pq.read_schema(path).equals(FILE_SCHEMAS[table]), path
    db = duckdb.connect()

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return db.execute(sql.replace("OUT", str(out))).fetchall()

    assert rows("select batch_path, batch_id from read_parquet('OUT/calls/**/*.parquet', hive_partitioning = true) order by 1") == [
        (name, "e2e-batch") for name in sorted(GOOD)
    ]
    windows = rows("select count(*), count(distinct event_id) from read_parquet('OUT/windows/**/*.parquet', hive_partitioning = true)")
    assert windows[0][0] >= len(GOOD) and windows[0][1] == len(GOOD)
    assert rows("select batch_path, stage, count(*) from read_parquet('OUT/dead_letters/**/*.parquet', hive_partitioning = true) "
                "group by all order by 1") == [("calls/cut.flac", "decode-audio", 2), ("calls/notes.wav", "decode-audio", 2)]  # fmt: skip
    # ... and as a report, rendered from that export.
    page = tmp_path / "report.html"
    report = await asyncio.to_thread(subprocess.run, [*batch_cli()[:3], "report", str(page), "--from", str(out)],
                                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, (report.stdout, report.stderr)
    assert f"{len(GOOD)} calls" in report.stdout and "4 dead letters" in report.stdout, report.stdout
    assert page.read_text().startswith("<!DOCTYPE html>")
