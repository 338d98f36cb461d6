"""``listenpost audio inspect``: windows and acoustics of a file, without any model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from services.cli import app
from tests.audio_factory import av_bytes, call, sndfile_bytes

runner = CliRunner()


def test_inspect_json_keeps_the_parties_apart(tmp_path: Path) -> None:
    truth = call([(0, 0.5, 6.0), (1, 5.0, 11.0)], 12.0, rate=8000, noise_dbfs=-70, seed=2)
    path = tmp_path / "call.wav"
    path.write_bytes(sndfile_bytes(truth.samples, 8000, "WAV", "ULAW"))
    result = runner.invoke(app, ["audio", "inspect", str(path), "--channels", "agent,customer", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["audio"] == {"duration_s": 12.0, "sample_rate": 8000, "channels": 2, "format": "wav", "codec": "ulaw"}
    assert [(w["channel"], w["role"]) for w in data["windows"]] == [(0, "agent"), (1, "customer")]
    assert all("samples" not in w for w in data["windows"])
    assert data["windows"][0]["speech_s"] == data["acoustics"]["talk_time_s"]["agent"]
    assert set(data["acoustics"]["talk_time_s"]) == {"agent", "customer"}
    assert 0.5 <= data["acoustics"]["overtalk_s"] <= 1.5
    assert [s["role"] for s in data["speech"]] == ["agent", "customer"]


def test_inspect_tables_and_mix(tmp_path: Path) -> None:
    truth = call([(0, 0.5, 4.0), (1, 4.5, 8.0)], 9.0, rate=44100, seed=3)
    path = tmp_path / "attachment.mp3"
    path.write_bytes(av_bytes(truth.samples, 44100, "mp3"))
    result = runner.invoke(app, ["audio", "inspect", str(path), "--channels", "agent,customer", "--mix"])
    assert result.exit_code == 0, result.output
    assert "mp3" in result.output and "windows" in result.output and "loudness_lufs" in result.output
    assert "agent" not in result.output.split("per channel")[1]  # --mix: one down-mixed channel


def test_inspect_reports_errors_with_their_stage(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    path.write_bytes(sndfile_bytes(np.zeros(16000, np.float32), 16000))
    result = runner.invoke(app, ["audio", "inspect", str(path), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["type"] == "AllSilentError"
    result = runner.invoke(app, ["audio", "inspect", str(path), "--format", "mp3"])
    assert result.exit_code == 1 and "decode-audio" in result.output
    result = runner.invoke(app, ["audio", "inspect", str(tmp_path / "nope.wav")])
    assert result.exit_code == 1 and "not found" in result.output
