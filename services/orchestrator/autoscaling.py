"""The Ingress's autoscaling policy: replicas from the input durable's backlog.

The Ingress pulls its events from NATS, so Serve counts no requests to it and its default
policy (ongoing requests per replica) would never add one. What measures its load is the
input durable's backlog: messages not yet delivered plus messages delivered and not yet
acked. Each Ingress replica reports it (``Ingress.record_autoscaling_stats``); Serve hands
the reports to :class:`BacklogPolicy` in its controller; :func:`desired_replicas` decides.

Serve then applies ``min_replicas``/``max_replicas`` and the upscale and downscale delays to
what this returns, as for every deployment (``ray.serve.autoscaling_policy``), so the delays
are not repeated here. docs/scaling.md#autoscaling says why each deployment scales on what.

The module imports nothing of listenpost: Serve pickles it by value into its controller,
which may not have listenpost on its path.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

# Serve's logger: the decisions land in the controller's log beside Serve's own scaling lines.
log = logging.getLogger("ray.serve")

#: The custom metric each Ingress replica reports: the input durable's pending + ack-pending.
BACKLOG_METRIC = "input_backlog"
#: A replica is given back only when the backlog would fill the remaining ones to at most
#: this share of their target: between it and the target the count holds, so a backlog that
#: hovers near a boundary does not add and remove a replica in turn.
DOWNSCALE_FILL = 0.75
# What this policy keeps between ticks (beside Serve's own keys): its last wish, so that a
# decision is logged once when it changes, not on every tick of the control loop (10 per second).
_WANTED = "listenpost_wanted_replicas"


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str


def desired_replicas(backlog: float, current: int, target_per_replica: float, lowest: int, highest: int) -> Decision:
    """How many replicas ``backlog`` messages call for, ``current`` running, within bounds.

    Up as soon as the backlog exceeds ``current x target``; down only below
    ``DOWNSCALE_FILL`` of the smaller count's target (hysteresis).
    """
    needed = math.ceil(backlog / target_per_replica)
    if needed > current:
        wanted = needed
        why = f"backlog {backlog:g} is over {current} x {target_per_replica:g}"
    else:
        wanted = min(current, math.ceil(backlog / (target_per_replica * DOWNSCALE_FILL)))
        if wanted < current:
            why = f"backlog {backlog:g} fits {wanted} replica(s) at {DOWNSCALE_FILL:.0%} of {target_per_replica:g}"
        else:
            why = f"backlog {backlog:g} fits {current} replica(s)"
    if wanted > highest:
        return Decision(highest, f"{why}: wants {wanted}, held at max_replicas {highest}")
    if wanted < lowest:
        return Decision(lowest, f"{why}: held at min_replicas {lowest}")
    return Decision(wanted, why)


def reported_backlog(reports: dict[Any, float] | None) -> float | None:
    """The backlog from the replicas' reports: each measured the same durable, so the largest
    (the freshest during a burst) stands for all; None when no replica has reported yet."""
    return max(reports.values()) if reports else None


class BacklogPolicy:
    """Serve's custom autoscaling policy for the Ingress (``AutoscalingPolicy(policy_function=...)``)."""

    def __init__(self, target_per_replica: float) -> None:
        if target_per_replica <= 0:
            raise ValueError(f"target_per_replica must be above 0, got {target_per_replica}")
        self._target = target_per_replica

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        backlog = reported_backlog((ctx.aggregated_metrics or {}).get(BACKLOG_METRIC))
        current = ctx.target_num_replicas
        if backlog is None:  # replicas starting: nothing to decide on, so keep the count
            return current, {}
        decision = desired_replicas(
            backlog, current, self._target, ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
        )
        if ctx.policy_state.get(_WANTED, current) != decision.replicas:
            log.info(
                "autoscaling %s: %d -> %d replicas wanted (%s)",
                ctx.deployment_name, current, decision.replicas, decision.reason,
            )  # fmt: skip
        return decision.replicas, {_WANTED: decision.replicas}
