"""`listenpost batch`'s pure core: what a folder or manifest lists, with each bad row reported by
line and the rest kept; refused manifests; event ids and the run record (docs/batch.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.batch.manifest import ManifestRefused, from_folder, from_manifest_text
from services.batch.record import RecordMismatch, batch_id_for, event_id_for, load, save
from services.batch.sources import load_listing


def test_a_csv_manifest_gives_items_with_context_and_reports_bad_rows_by_line(tmp_path: Path) -> None:
    text = (
        "path,call_id,queue,agent,channels,context.site,colour\n"
        'calls/a.wav,C-1,billing,ann,"agent,customer",lyon,red\n'
        ",C-2,billing,bob,,,\n"
        "calls/b.flac,C-3,sales,cy,agent;customer,,\n"
        "calls/c.wav,C-4,sales,dee,,paris,,extra\n"
        "/archive/d.wav,,,,,,\n"
    )
    listing = from_manifest_text(text, name="m.csv", base=tmp_path)
    assert [(i.key, i.where) for i in listing.items] == [("calls/a.wav", "m.csv:2"), ("/archive/d.wav", "m.csv:6")]
    first = listing.items[0]
    assert first.path == tmp_path / "calls/a.wav"
    assert first.context == {"callid": "C-1", "queue": "billing", "agent": "ann", "site": "lyon"}
    assert first.channels == ["agent", "customer"]
    assert listing.items[1].path == Path("/archive/d.wav")
    assert [(p.where, p.reason) for p in listing.problems] == [
        ("m.csv:1", "unknown column 'colour' ignored (known: agent, call_id, callid, channels, context, customer_tier, format, "
                    "language, path, queue, url, context.<key>)"),
        ("m.csv:3", "no 'path' or 'url'"),
        ("m.csv:4", "'channels' lists a role per channel, e.g. agent,customer (got 'agent;customer')"),
        ("m.csv:5", "1 more cells than the header has columns"),
    ]  # fmt: skip


def test_a_jsonl_manifest_takes_urls_and_context_objects_and_reports_bad_lines(tmp_path: Path) -> None:
    text = (
        '{"url": "https://media.example/x.mp3", "context": {"callid": "X", "tier": "gold"}, "language": "en"}\n'
        "\n"
        '{"path": "y.wav", "url": "https://media.example/y.wav"}\n'
        "not json\n"
        '["a", "list"]\n'
        '{"url": "ftp://media.example/z.wav"}\n'
        '{"path": "w.ogg", "format": "ogg"}\n'
    )
    listing = from_manifest_text(text, name="m.jsonl", base=tmp_path)
    assert [(i.key, i.url, i.context, i.language) for i in listing.items[:1]] == [
        ("https://media.example/x.mp3", "https://media.example/x.mp3", {"callid": "X", "tier": "gold"}, "en")
    ]
    assert listing.items[1].path == tmp_path / "w.ogg" and listing.items[1].format == "ogg"
    assert [(p.where, p.reason) for p in listing.problems] == [
        ("m.jsonl:3", "a row names its recording by exactly one of 'path' or 'url'"),
        ("m.jsonl:4", "not JSON: Expecting value at column 1"),
        ("m.jsonl:5", "a row is a JSON object, not a list"),
        ("m.jsonl:6", "'url' is an http(s) URL (got 'ftp://media.example/z.wav')"),
    ]


def test_a_manifest_fetched_over_http_resolves_its_paths_against_its_url() -> None:
    listing = from_manifest_text("path\nq3/a.wav\n", name="https://files.example/audits/m.csv", base="https://files.example/audits/m.csv")
    assert [(i.key, i.url, i.path) for i in listing.items] == [
        ("https://files.example/audits/q3/a.wav", "https://files.example/audits/q3/a.wav", None)
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.txt", "path\na.wav\n", "m.txt: a manifest is CSV (.csv) or JSON Lines (.jsonl, .ndjson), not .txt"),
        ("m.csv", "file,queue\na.wav,x\n",
         "m.csv: a CSV manifest's first line names its columns, one of them 'path' or 'url' (got ['file', 'queue'])"),
        ("m.csv", "", "m.csv: a CSV manifest's first line names its columns, one of them 'path' or 'url' (got None)"),
        ("m.csv", "path\x00\x01\x02", "m.csv: binary data, not a CSV manifest"),
        ("m.jsonl", "path,queue\na.wav,x\n", "m.jsonl:1: not JSON Lines (Expecting value)"),
        ("m.jsonl", "[1, 2]\n", "m.jsonl:1: not JSON Lines of objects (a list)"),
    ],
)  # fmt: skip
def test_a_manifest_that_is_not_csv_or_jsonl_is_refused_before_anything_is_submitted(name: str, text: str, message: str) -> None:
    with pytest.raises(ManifestRefused) as refused:
        from_manifest_text(text, name=name, base=Path("."))
    assert str(refused.value) == message


def test_a_folder_is_listed_recursively_in_a_stable_order_with_a_glob(tmp_path: Path) -> None:
    for name in ("b/2.wav", "a.wav", "b/1.flac", "b/c/3.wav", ".hidden.wav", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [i.key for i in from_folder(tmp_path).items] == ["a.wav", "b/1.flac", "b/2.wav", "b/c/3.wav", "notes.txt"]
    assert [i.key for i in from_folder(tmp_path, "*.wav").items] == ["a.wav", "b/2.wav", "b/c/3.wav"]
    assert [i.key for i in from_folder(tmp_path, "b/*").items] == ["b/1.flac", "b/2.wav", "b/c/3.wav"]


def test_sources_refuse_what_is_not_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"path\n\xff\xfe.wav\n")
    with pytest.raises(ManifestRefused, match=r"m.csv: not UTF-8 text \(byte 5\)"):
        load_listing(str(tmp_path / "m.csv"))
    with pytest.raises(ManifestRefused, match="no such folder or manifest file"):
        load_listing(str(tmp_path / "missing"))
    listing, label = load_listing(str(tmp_path))
    assert label == str(tmp_path.resolve()) and [i.key for i in listing.items] == ["m.csv"]


def test_event_ids_derive_from_content_and_key_and_change_per_retry() -> None:
    first = event_id_for("a.wav", sha256="ab" * 32, attempt=0)
    assert first == event_id_for("a.wav", sha256="ab" * 32, attempt=0)
    assert len({first, event_id_for("b.wav", sha256="ab" * 32, attempt=0), event_id_for("a.wav", sha256="cd" * 32, attempt=0),
                event_id_for("a.wav", sha256="ab" * 32, attempt=1)}) == 4  # fmt: skip
    assert batch_id_for("/archive/q3") == batch_id_for("/archive/q3") != batch_id_for("/archive/q4")


def test_the_run_record_round_trips_merges_new_files_and_refuses_another_batch(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    record = load(path, batch_id="b-1", source="/archive")
    listing = from_manifest_text("path\na.wav\nb.wav\n", name="m.csv", base=tmp_path)
    record.merge(listing.items, listing.problems)
    record.items["a.wav"].status = "captioned"
    save(record, path)
    again = load(path, batch_id="b-1", source="/archive")
    assert again.counts() == {"captioned": 1, "pending": 1}
    again.merge(from_manifest_text("path\na.wav\nc.wav\n", name="m.csv", base=tmp_path).items, [])
    assert {k: v.status for k, v in again.items.items()} == {"a.wav": "captioned", "b.wav": "pending", "c.wav": "pending"}
    with pytest.raises(RecordMismatch, match="is the record of batch b-1 over '/archive', not b-2 over '/archive'"):
        load(path, batch_id="b-2", source="/archive")


def test_a_manifest_is_fetched_over_http_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    import http.server
    import threading
    from functools import partial

    (tmp_path / "m.jsonl").write_text('{"path": "q3/a.wav", "callid": "A"}\n')
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        listing, label = load_listing(f"{base}/m.jsonl")
        assert label == f"{base}/m.jsonl"
        assert [(i.url, i.context) for i in listing.items] == [(f"{base}/q3/a.wav", {"callid": "A"})]
        with pytest.raises(ManifestRefused, match=r"/gone.csv: could not be fetched \(Client error '404 File not found'"):
            load_listing(f"{base}/gone.csv")
    finally:
        server.shutdown()
