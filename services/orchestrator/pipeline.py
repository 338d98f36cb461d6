"""One ``audio.submitted`` event -> one ``audio.captioned`` event.

Plain async code over two injected calls (prepare, caption) so it is tested
without Ray; the Serve deployment passes its handles in. Failures are sorted
into :class:`Poison` (dead-letter) and :class:`RetryLater` (redeliver).

Identifiers in the captions (e-mail, phone, card, IBAN, national id) are redacted
here, the one place where captions become the event: facets are read from the raw
captions first (so they are the same with or without redaction), then the windows,
the merged timeline and the caption text the facets quote are redacted together
(docs/redaction.md).

Traces: the stages are spans under the consume span of the input (``preprocess``, ``caption``
with one ``caption window`` child per window: tokens, engine and queue time; ``facets``); the
replicas' own spans (fetch, decode, VAD, acoustics; the engine) are children of those, through
the ``traceparent`` the injected calls hand over.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from cloudevents.core.base import BaseCloudEvent

from services.captioner.errors import EmptyWindowError, WindowTooLongError
from services.captioner.facets import extract_facets
from services.captioner.redact_captions import redact_captions
from services.captioner.redaction import DEFAULT_POLICY, RedactionPolicy
from services.captioner.timeline import merge_timeline
from services.events.binding import new_event
from services.events.consumer import Poison, RetryLater
from services.events.models import (
    AUDIO_CAPTIONED,
    AudioCaptioned,
    AudioSubmitted,
    Facets,
    SourceEventRef,
    Window,
)
from services.preprocess.errors import PreprocessError
from services.preprocess.pipeline import ModelWindow, PreparedAudio
from services.telemetry import output_traceparent, stage_span

Prepare = Callable[[AudioSubmitted], Awaitable[PreparedAudio]]
Caption = Callable[[np.ndarray, str], Awaitable[Any]]  # -> CaptionResult
ExtractFacets = Callable[[list[Window], str], Awaitable[Facets]]

log = logging.getLogger(__name__)


async def lexicon_facets(windows: list[Window], request_id: str) -> Facets:
    return extract_facets(windows)

_EXTENSION_VALUE = re.compile(r"^[\w.:@/-]{1,128}$")


async def caption_submitted(
    event: BaseCloudEvent,
    submitted: AudioSubmitted,
    *,
    prepare: Prepare,
    caption: Caption,
    model: str,
    engine: str,
    source: str,
    deliveries: int = 1,
    facets: ExtractFacets = lexicon_facets,
    redaction: RedactionPolicy = DEFAULT_POLICY,
) -> BaseCloudEvent:
    started = time.perf_counter()
    try:
        with stage_span("preprocess"):
            prepared = await prepare(submitted)
    except PreprocessError as exc:
        if getattr(exc, "retryable", False):  # a source timeout or 5xx: the event is fine, try later
            raise RetryLater(f"{exc.stage}: {exc}") from exc
        raise Poison(exc.stage, str(exc), error=type(exc).__name__) from exc
    prepared_at = time.perf_counter()

    # Every window goes to the captioner at once, so its engine batches them
    # with the windows of other events in flight.
    request_ids = [f"{event.get_id()}/w{w.index}" for w in prepared.windows]
    try:
        with stage_span("caption", {"listenpost.windows": len(prepared.windows)}):
            results = await asyncio.gather(
                *(_caption_window(caption, w, rid) for w, rid in zip(prepared.windows, request_ids, strict=True))
            )
    except (EmptyWindowError, WindowTooLongError) as exc:
        raise Poison("caption", str(exc), error=type(exc).__name__) from exc
    captioned_at = time.perf_counter()

    windows = [
        Window(
            index=w.index,
            start=w.start,
            end=w.end,
            channel=w.channel,
            role=w.role,
            caption=r.text,
            prompt_tokens=r.prompt_tokens,
            output_tokens=r.output_tokens,
            engine_s=round(r.engine_seconds, 4),
        )
        for w, r in zip(prepared.windows, results, strict=True)
    ]
    # Facets from the raw captions; then nothing raw goes further.
    with stage_span("facets"):
        found = await facets(windows, event.get_id())
    redacted = redact_captions(windows, found, redaction)
    if redacted.counts:
        log.info(
            "redacted %s from the captions of event %r",
            ", ".join(f"{n} {label}" for label, n in redacted.counts.items()),
            event.get_id(),
        )
    data = AudioCaptioned(
        source_event=SourceEventRef(id=event.get_id(), source=event.get_source(), type=event.get_type()),
        context=submitted.context,
        audio=prepared.facts,
        windows=redacted.windows,
        caption=merge_timeline(redacted.windows),
        facets=redacted.facets,
        redactions={str(label): n for label, n in redacted.counts.items()},
        acoustics=prepared.acoustics,
        model=model,
        engine=engine,
        timings={
            "preprocess_s": round(prepared_at - started, 4),
            "caption_s": round(captioned_at - prepared_at, 4),
            "total_s": round(time.perf_counter() - started, 4),
        },
        deliveries=deliveries,
    )
    return new_event(
        AUDIO_CAPTIONED,
        source,
        data.model_dump(mode="json"),
        subject=event.get_subject(),
        extensions=correlation_extensions(event, submitted),
    )


async def _caption_window(caption: Caption, window: ModelWindow, request_id: str) -> Any:
    """One window's span (a child of the ``caption`` stage: gather copies the context to each task)."""
    attributes = {"listenpost.window.index": window.index, "listenpost.window.audio_s": round(window.end - window.start, 3)}
    with stage_span("caption window", attributes) as span:
        started = time.perf_counter()
        result = await caption(window.samples, request_id)
        if span.is_recording():
            waited = time.perf_counter() - started
            span.set_attributes({
                "gen_ai.usage.input_tokens": result.prompt_tokens,
                "gen_ai.usage.output_tokens": result.output_tokens,
                "listenpost.engine_s": result.engine_seconds,
                # Time not spent in the engine: Serve's queue and hops, and the engine's own queue.
                "listenpost.queue_s": round(max(0.0, waited - result.engine_seconds), 6),
                "listenpost.finish_reason": result.finish_reason or "",
            })  # fmt: skip
        return result


def correlation_extensions(event: BaseCloudEvent, submitted: AudioSubmitted) -> dict[str, str]:
    """Extensions that let a consumer follow the call: input id, call id, trace."""
    attributes = event.get_attributes()
    extensions = {"inputid": event.get_id(), "traceparent": output_traceparent(attributes.get("traceparent"))}
    callid = attributes.get("callid") or submitted.context.get("callid") or submitted.context.get("call_id")
    if isinstance(callid, str) and _EXTENSION_VALUE.match(callid):
        extensions["callid"] = callid
    return extensions
