"""Accounting of what the streams hold: for a set of inputs, how many outputs of each kind.

Used by fault tests and the load harness to prove "none lost, none duplicated":
every submitted input has exactly one ``audio.captioned`` or one dead letter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from pydantic import BaseModel

from services.settings import NatsSettings


class Accounting(BaseModel):
    submitted: int
    captioned: int
    dead_lettered: int
    missing: list[str]
    duplicates: dict[str, int]

    @property
    def balanced(self) -> bool:
        """submitted = captioned + dead-lettered, with no duplicates."""
        return not self.missing and not self.duplicates and self.submitted == self.captioned + self.dead_lettered


async def count_by_header(js: JetStreamContext, subject: str, header: str, idle_s: float = 1.0) -> Counter[str]:
    """Read every stored message on ``subject`` from the start; count values of ``header``."""
    counts: Counter[str] = Counter()
    sub = await js.subscribe(subject, ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_s)
            except NatsTimeoutError:
                return counts
            value = (msg.headers or {}).get(header)
            if value:
                counts[value] += 1
    finally:
        await sub.unsubscribe()


async def account(js: JetStreamContext, cfg: NatsSettings, input_ids: Iterable[str]) -> Accounting:
    ids = list(input_ids)
    captioned = await count_by_header(js, cfg.subject("captioned"), "ce-inputid")
    failed = await count_by_header(js, cfg.subject("dlq", ">"), "ce-originalid")
    outcomes = {i: captioned[i] + failed[i] for i in ids}
    return Accounting(
        submitted=len(ids),
        captioned=sum(1 for i in ids if captioned[i]),
        dead_lettered=sum(1 for i in ids if failed[i] and not captioned[i]),
        missing=[i for i, n in outcomes.items() if n == 0],
        duplicates={i: n for i, n in outcomes.items() if n > 1},
    )
