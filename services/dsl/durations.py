"""Prometheus-style durations (``90s``, ``5m``, ``1h30m``, ``250ms``), as people write them in files.

Shared by the rule files (debounce, alert hygiene) and the notification file (group and
repeat intervals).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

DURATION_PATTERN = r"^(?:[0-9]+(?:ms|s|m|h|d))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Prometheus-style durations: ``90s``, ``5m``, ``1h30m``, ``250ms`` -> seconds."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h30m or 250ms")
    return sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def _duration(value: str) -> str:
    parse_duration(value)
    return value


#: A field holding a duration: kept as written (messages quote it), checked on load.
Duration = Annotated[
    str,
    AfterValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "5m", "1h30m"]}),
]
