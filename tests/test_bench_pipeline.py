"""bench/pipeline.py's parts: its accounting on plain data, and its service driver against the
session's running service (the full benchmark is in bench/, its figures in bench/README.md)."""

from __future__ import annotations

import pytest
from otlp_receiver import ExportedSpan
from pipeline import (
    Run,
    cut_windows,
    drive_service,
    parse_cpus,
    pipeline_cpu_per_audio_s,
    recordings,
    stage_breakdown,
)

from services.settings import PreprocessSettings, Settings


def run(label: str, cpu: dict[str, float], audio_s: float = 100.0) -> Run:
    return Run(label=label, wall_s=1.0, windows=4, audio_s=audio_s, output_tokens=10, audio_s_per_s=audio_s, cpu_s=cpu)


def test_cpu_outside_the_engine_leaves_out_vllm_the_driver_and_the_engines_front_end() -> None:
    engine = run("engine alone", {"vllm model (engine cores)": 1.0, "vllm scheduler": 0.5, "bench driver": 0.2})
    service = run("service", {"vllm model (engine cores)": 3.0, "vllm scheduler": 1.0, "bench driver": 0.4,
                              "Preprocessor": 0.3, "Captioner": 0.3, "Ingress": 0.1})  # fmt: skip
    # (0.3 + 0.3 + 0.1) - 0.2 (the front end, as the driver spent it in (a)) over 100 audio-seconds
    assert pipeline_cpu_per_audio_s(engine, service) == pytest.approx(0.005)


def test_engine_cores_are_read_as_vllm_reads_them() -> None:
    assert parse_cpus("0") == {0}
    assert parse_cpus("0-2,5") == {0, 1, 2, 5}


def test_stages_are_summed_per_span_name_per_audio_second() -> None:
    def span(name: str, ms: int) -> ExportedSpan:
        return ExportedSpan(name=name, kind=1, trace_id="t", span_id=name, parent_id="", attributes={}, links=[],
                            status=0, resource={}, start_ns=0, end_ns=ms * 1_000_000)  # fmt: skip

    stages = stage_breakdown([span("vad", 20), span("vad", 40), span("decode", 10)], audio_s=10.0)
    assert [(s.span, s.count, s.mean_ms, s.ms_per_audio_s) for s in stages] == [("vad", 2, 30.0, 6.0), ("decode", 1, 10.0, 1.0)]


@pytest.mark.e2e
async def test_the_service_driver_accounts_for_every_window(service: Settings) -> None:
    recs = recordings(2, 4.0)
    expected = cut_windows(recs, PreprocessSettings())
    result, _ = await drive_service(service.nats, recs, timeout_s=240)
    assert result.failed == 0
    assert result.windows == len(expected) >= 2
    assert result.audio_s == pytest.approx(sum(w.shape[0] for w in expected) / 16_000, abs=0.05)
    assert result.output_tokens > 0 and result.audio_s_per_s > 0
