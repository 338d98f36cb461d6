"""The whole service stops in order, with no traceback (issue 13), and a poison input's dead
letter through real Serve handles is plain words.

Its own instance of the service (it stops it): the runner's embedded nats-server, Ray, Serve,
the tiny checkpoint on vLLM. One event is captioned and one poison input dead-lettered; then
the service stops and the logs written from then on (the runner's, the replicas', nats-server's)
must show the app deleted before nats-server was stopped, and no "Connection refused" and no
traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from datetime import datetime
from pathlib import Path

import pytest
import ray

from services.client import submit_file
from services.events.reasons import is_plain
from services.settings import NatsSettings, PreprocessSettings, RulesSettings, Settings
from tests.conftest import REPO, tiny_engine_settings, tone, wav_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.own_ray]

NATS_TIME = re.compile(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6})")


def log_files(session_dir: Path) -> dict[Path, int]:
    logs = session_dir / "logs"
    return {p: p.stat().st_size for p in logs.rglob("*") if p.is_file() and p.suffix in {".log", ".err", ".out"}}


def written_since(sizes: dict[Path, int], session_dir: Path) -> dict[Path, str]:
    out = {}
    for path in log_files(session_dir):
        with path.open("rb") as f:
            f.seek(sizes.get(path, 0))
            out[path] = f.read().decode(errors="replace")
    return out


def test_the_service_stops_in_order_without_a_traceback(
    tmp_path: Path, tiny_checkpoint: Path, rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its own Ray, or it would replace and then delete the session service's app (conftest runs it first).
    assert not ray.is_initialized(), "a Ray is already running in this process: this test must run before the session's service"
    caplog.set_level(logging.INFO, logger="services.runner")
    audio = tmp_path / "audio"
    audio.mkdir()
    speech = audio / "tone.wav"
    speech.write_bytes(wav_bytes(tone(3.0, 16000), 16000))
    poison = audio / "not-audio.wav"
    poison.write_bytes(b"this is a text file, not a recording\n" * 40)
    nats_dir = tmp_path / "nats"
    settings = Settings(
        nats=NatsSettings(data_dir=nats_dir / "data", secrets_dir=nats_dir / "secrets"),
        captioner=tiny_engine_settings(tiny_checkpoint),
        preprocess=PreprocessSettings(file_roots=[audio]),
        rules=RulesSettings(directory=rules_dir),
    )
    from services.runner import running_service

    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}}
    with running_service(settings, ray_num_cpus=8, runtime_env=runtime_env) as effective:
        captioned = asyncio.run(submit_file(speech, nats=effective.nats, wait_s=240, settle_s=1))
        failed = asyncio.run(submit_file(poison, nats=effective.nats, wait_s=120, settle_s=0))
        session_dir = Path(ray._private.worker._global_node.get_session_dir_path())  # type: ignore[attr-defined]
        sizes = log_files(session_dir)
        stop_began = datetime.now()

    assert captioned.captioned is not None
    assert failed.failed is not None
    letter = failed.failed
    assert letter.attributes["originalid"] == letter.attributes["inputid"] == failed.event_id
    assert letter.data["stage"] == "decode-audio" and letter.data["error"] == "UnsupportedFormatError"
    assert letter.data["reason"].startswith("audio could not be decoded: unrecognised audio format (first bytes 74 68 69 73")
    assert is_plain(letter.data["reason"]) and "\n" not in letter.data["reason"]

    steps = [(r.created, r.getMessage()) for r in caplog.records if r.name == "services.runner"]
    messages = [m for _, m in steps]
    deleted_at = next(t for t, m in steps if m.startswith("stopping: Serve app deleted"))
    assert any(m.startswith("stopping: stopping the embedded nats-server") for m in messages)
    assert messages[-1] == "stopping: embedded nats-server stopped"

    nats_log = (nats_dir / "data" / "nats-server.log").read_text()
    trapped = [line for line in nats_log.splitlines() if "Trapped" in line or "Initiating Shutdown" in line]
    assert trapped, nats_log[-2000:]
    nats_stop = datetime.strptime(NATS_TIME.search(trapped[0]).group(1), "%Y/%m/%d %H:%M:%S.%f")  # type: ignore[union-attr]
    assert stop_began <= nats_stop
    assert nats_stop.timestamp() >= deleted_at, "nats-server was stopped before the Serve app was deleted"

    since_stop = written_since(sizes, session_dir)
    for path, text in since_stop.items():
        assert "Connection refused" not in text, f"{path}:\n{text[-3000:]}"
        assert "Traceback" not in text, f"{path}:\n{text[-3000:]}"
    assert "Traceback" not in caplog.text
