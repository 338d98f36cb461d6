"""Autoscaling: the Ingress's backlog policy as plain data, and the service scaling up under
load and back down after it (bench/autoscale.py, short delays, in a process of its own).

The delays are Serve's: its controller applies ``upscale_delay_s`` and ``downscale_delay_s`` to
what a policy returns (``ray.serve.autoscaling_policy._apply_delay_logic``). The timeline tests
run the policy through that same function with a fake clock, so they check what runs, not a copy.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ray.serve.autoscaling_policy import _apply_delay_logic
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from services.orchestrator.autoscaling import BACKLOG_METRIC, DOWNSCALE_FILL, BacklogPolicy, desired_replicas
from services.settings import IngressSettings, PreprocessSettings

REPO = Path(__file__).resolve().parents[1]


def test_a_backlog_over_the_target_asks_for_the_replicas_it_needs() -> None:
    decision = desired_replicas(backlog=50, current=1, target_per_replica=16, lowest=1, highest=8)
    assert decision.replicas == 4  # ceil(50 / 16)
    assert "backlog 50 is over 1 x 16" in decision.reason


def test_the_count_is_clamped_to_min_and_max_replicas_and_says_so() -> None:
    high = desired_replicas(backlog=500, current=1, target_per_replica=16, lowest=1, highest=2)
    assert high.replicas == 2 and "held at max_replicas 2" in high.reason
    low = desired_replicas(backlog=0, current=3, target_per_replica=16, lowest=2, highest=4)
    assert low.replicas == 2 and "held at min_replicas 2" in low.reason


def test_a_replica_is_given_back_only_when_the_rest_would_be_well_below_their_target() -> None:
    target = 16.0
    # Two replicas: a backlog that one replica could just hold keeps both (hysteresis band) ...
    assert desired_replicas(backlog=target, current=2, target_per_replica=target, lowest=1, highest=4).replicas == 2
    assert desired_replicas(backlog=13, current=2, target_per_replica=target, lowest=1, highest=4).replicas == 2
    # ... and one at DOWNSCALE_FILL of the target or below lets one go.
    assert desired_replicas(backlog=target * DOWNSCALE_FILL, current=2, target_per_replica=target, lowest=1, highest=4).replicas == 1
    # An empty queue goes to the floor at once (Serve's delay paces it).
    assert desired_replicas(backlog=0, current=4, target_per_replica=target, lowest=1, highest=4).replicas == 1


def _context(
    backlog: dict[str, float] | None, target_replicas: int, config: AutoscalingConfig, state: dict[str, Any]
) -> AutoscalingContext:
    return AutoscalingContext(
        deployment_id=None,  # type: ignore[arg-type]  # plain data: the policy reads no id
        deployment_name="Ingress",
        app_name="listenpost",
        current_num_replicas=target_replicas,
        target_num_replicas=target_replicas,
        running_replicas=[],
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics={BACKLOG_METRIC: backlog} if backlog is not None else {},
        raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=config,
    )


def _run(backlogs: list[float], *, up_s: float, down_s: float, tick_s: float = 1.0, start: int = 1) -> list[int]:
    """The replica count after each tick: the policy, then Serve's delay logic, with a fake clock."""
    config = AutoscalingConfig(min_replicas=1, max_replicas=3, upscale_delay_s=up_s, downscale_delay_s=down_s, look_back_period_s=15)
    policy = BacklogPolicy(target_per_replica=16)
    replicas, serve_state, policy_state, counts = start, {}, {}, []
    for tick, backlog in enumerate(backlogs):
        wanted, policy_state = policy(_context({"r1": backlog, "r2": backlog / 2}, replicas, config, policy_state))
        replicas, serve_state = _apply_delay_logic(wanted, replicas, config, serve_state, _now=tick * tick_s)
        counts.append(replicas)
    return counts


def test_under_a_sustained_backlog_it_scales_up_after_the_upscale_delay_and_down_after_the_downscale_delay() -> None:
    counts = _run([40.0] * 10 + [0.0] * 30, up_s=3, down_s=15)
    assert counts[:3] == [1, 1, 1]  # the backlog must last upscale_delay_s
    assert counts[3] == 3  # ceil(40 / 16), in one step
    assert counts[9:24] == [3] * 15  # idle, but not yet for downscale_delay_s
    assert counts[25:] == [1] * 15  # then straight to the floor


def test_a_backlog_that_swings_around_a_boundary_does_not_flap() -> None:
    # One replica's target is 16: a backlog alternating 14 and 20 every second never lasts the
    # upscale delay in one direction, and once at 2 replicas, 14 stays inside the hysteresis band.
    swinging = [14.0, 20.0] * 20
    assert set(_run(swinging, up_s=3, down_s=15)) == {1}
    assert set(_run(swinging, up_s=0, down_s=15, start=2)) == {2}


def test_the_policy_holds_the_count_until_a_replica_reports_and_logs_each_new_wish_once(caplog: pytest.LogCaptureFixture) -> None:
    config = AutoscalingConfig(min_replicas=1, max_replicas=2)
    policy = BacklogPolicy(target_per_replica=16)
    assert policy(_context(None, 1, config, {}))[0] == 1
    caplog.set_level(logging.INFO, logger="ray.serve")
    state: dict[str, Any] = {}
    for _ in range(5):
        wanted, state = policy(_context({"r1": 100.0}, 1, config, state))
    assert wanted == 2
    lines = [r.getMessage() for r in caplog.records if "autoscaling Ingress" in r.getMessage()]
    assert lines == ["autoscaling Ingress: 1 -> 2 replicas wanted (backlog 100 is over 1 x 16: wants 7, held at max_replicas 2)"]


def test_autoscaling_is_off_by_default_and_needs_max_replicas_above_replicas() -> None:
    assert "autoscaling_config" not in IngressSettings().deployment_options()
    assert PreprocessSettings().deployment_options()["num_replicas"] == 1
    options = IngressSettings(replicas=1, max_replicas=3, target_backlog=32).deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["policy"] == {
        "policy_function": "services.orchestrator.autoscaling:BacklogPolicy",
        "policy_kwargs": {"target_per_replica": 32.0},
    }
    assert (options["autoscaling_config"]["min_replicas"], options["autoscaling_config"]["max_replicas"]) == (1, 3)
    with pytest.raises(ValueError, match=r"max_replicas \(1\) is below replicas \(2\)"):
        IngressSettings(replicas=2, max_replicas=1)


@pytest.mark.e2e
def test_the_service_scales_up_under_load_and_back_down_after_it(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """bench/autoscale.py with short delays, in its own process (it starts its own Ray: this
    process may already hold the session's). The Captioner stays at one replica here: a second
    vLLM engine takes minutes to start on two busy cores (bench/README.md shows it scaling)."""
    out = tmp_path / "autoscale.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(
        [sys.executable, str(REPO / "bench/autoscale.py"), "--model", str(tiny_checkpoint), "--quiet",
         "--rate", "15", "--duration", "20", "--upscale-delay", "2", "--downscale-delay", "10", "--idle-max", "60",
         # Two events in flight per Ingress: one replica cannot keep up with 15/s on any machine this
         # suite runs on, so the backlog (and the scale-up) does not depend on how fast the CPU is.
         "--max-in-flight", "2", "--target-backlog", "4",
         "--captioner-max-replicas", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=400, env=env, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    report = json.loads(out.read_text())
    figures, load = report["figures"], report["load"]
    assert load["missing"] == 0 and load["duplicates"] == 0 and load["balanced"], load
    # Up under load: the backlog policy asked for a second Ingress and it ran while events flowed ...
    assert figures["peak_replicas"]["Ingress"] == 2, figures
    assert figures["scale_up_s"]["Ingress"] is not None and figures["scale_up_s"]["Ingress"] < figures["last_completion_s"], figures
    # ... and back to one once idle for the downscale delay.
    assert figures["scale_down_s"]["Ingress"] is not None, figures
    assert report["samples"][-1]["replicas"] == {"Ingress": 1, "Preprocessor": 1, "Captioner": 1}
    # The decision's premise, measured: Serve counts no requests to the Ingress, the backlog is there.
    assert figures["peak_serve_ongoing"]["Ingress"] < 1 and figures["peak_backlog"] > 4 * 2, figures
