"""The run record: every recording of a batch, what was submitted for it, and what came back.

It is the state a re-run continues from (``listenpost batch`` with the same source finds it by
the batch id), and the report an operator keeps. Event ids derive from each file's content hash
and its key, so a re-run submits the same ids, and JetStream's dedup window on the batch stream
drops any that were already submitted (settings ``nats.batch_duplicate_window_s``).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from services.batch.manifest import BatchItem, RowProblem
from services.files import write_atomically

Status = Literal["pending", "submitted", "captioned", "failed", "invalid"]
#: A result is final: a re-run skips these (failed ones again with ``--retry-failed``).
DONE: frozenset[Status] = frozenset({"captioned", "failed", "invalid"})

_NAMESPACE = uuid.UUID("5b0e4d8e-7a8c-4f3e-9c51-3f1c0b7b9d10")  # listenpost batch event ids
BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ItemRecord(BaseModel):
    key: str
    where: str
    status: Status = "pending"
    event_ids: list[str] = Field(default_factory=list, description="Every submission's event id, the last one current.")
    sha256: str | None = None
    bytes: int | None = None
    reason: str | None = None
    stage: str | None = None
    captioned_id: str | None = None
    duration_s: float | None = None
    submitted_at: datetime | None = None
    finished_at: datetime | None = None


class RunRecord(BaseModel):
    batch_id: str
    source: str
    created: datetime
    updated: datetime
    runs: int = 0
    items: dict[str, ItemRecord] = Field(default_factory=dict)
    problems: list[RowProblem] = Field(default_factory=list)

    def merge(self, items: list[BatchItem], problems: list[RowProblem]) -> None:
        """Add what this listing has that the record does not (a re-run may find new files)."""
        for item in items:
            if item.key not in self.items:
                self.items[item.key] = ItemRecord(key=item.key, where=item.where)
        known = {(p.where, p.reason) for p in self.problems}
        self.problems.extend(p for p in problems if (p.where, p.reason) not in known)

    def counts(self) -> Counter[str]:
        return Counter(item.status for item in self.items.values())

    def failures(self) -> Counter[tuple[str, str]]:
        """Failed and invalid recordings by (stage, reason): what an operator fixes first."""
        return Counter(
            (item.stage or item.status, item.reason or "")
            for item in self.items.values()
            if item.status in ("failed", "invalid")
        )


def batch_id_for(source: str) -> str:
    """The default batch id: the same source (folder, manifest path or URL) resumes the same batch."""
    return "b-" + hashlib.sha256(source.encode()).hexdigest()[:12]


def event_id_for(key: str, *, sha256: str | None, attempt: int) -> str:
    """The id of a recording's submission: from its content hash and key (a URL has no hash
    until fetched, so its key alone), and the attempt (``--retry-failed`` submits anew)."""
    name = f"{sha256 or 'url'}|{key}" + (f"|retry{attempt}" if attempt else "")
    return str(uuid.uuid5(_NAMESPACE, name))


def default_record_path(batch_id: str) -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "listenpost" / "batches" / f"{batch_id}.json"


def load(path: Path, *, batch_id: str, source: str) -> RunRecord:
    """The record at ``path``, or a new one. A record of another source is refused: a batch id
    names one archive."""
    if not path.exists():
        now = datetime.now(UTC)
        return RunRecord(batch_id=batch_id, source=source, created=now, updated=now)
    record = RunRecord.model_validate_json(path.read_bytes())
    if record.batch_id != batch_id or record.source != source:
        raise RecordMismatch(
            f"{path} is the record of batch {record.batch_id} over {record.source!r}, not {batch_id} over {source!r}: "
            "give another --record or --batch-id"
        )
    return record


def save(record: RunRecord, path: Path) -> None:
    """Write atomically: a Ctrl-C mid-write never leaves a truncated record."""
    record.updated = datetime.now(UTC)
    write_atomically(path, record.model_dump_json(indent=1).encode())


class RecordMismatch(ValueError):
    """The run record found belongs to another batch."""
