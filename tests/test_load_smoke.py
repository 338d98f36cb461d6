"""The load harness, briefly, against the session's running service (its full run is in bench/)."""

from __future__ import annotations

import pytest
from load import run_load

from services.settings import Settings

pytestmark = pytest.mark.e2e


async def test_load_smoke_accounts_for_every_event(service: Settings) -> None:
    report = await run_load(
        service.nats, rate_per_s=3, duration_s=4, audio_s=2.0, progress=False
    )
    assert report.submitted == 12
    assert report.balanced and report.duplicates == 0 and report.missing == 0
    assert report.captioned == report.submitted
    assert report.latency_p50_s is not None and 0 < report.latency_p50_s <= report.latency_p99_s
