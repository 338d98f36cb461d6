"""What one captioned event tells the metrics: latencies, audio, tokens, engine time, quality.

A plain function over the ``audio.captioned`` data, called by the Ingress once the event is
stored; the metric declarations are in :mod:`services.metrics`.
"""

from __future__ import annotations

from services.events.models import AudioCaptioned
from services.metrics import Recorder, recorder


def observe_captioned(data: AudioCaptioned, *, max_tokens: int, input_to_stored_s: float | None, metrics: Recorder | None = None) -> None:
    """Record one captioned event; ``input_to_stored_s``: input stored to captioned stored."""
    m = metrics or recorder()
    for stage in ("preprocess", "caption"):
        if (seconds := data.timings.get(f"{stage}_s")) is not None:
            m.observe("listenpost_stage_latency_seconds", seconds, stage=stage)
    if input_to_stored_s is not None:
        m.observe("listenpost_end_to_end_latency_seconds", input_to_stored_s, stage="captioned")
    m.inc("listenpost_events_captioned")
    m.inc("listenpost_audio_seconds", data.audio.duration_s)
    m.inc("listenpost_windows", len(data.windows))
    silent = _silent_channels(data)
    for w in data.windows:
        m.inc("listenpost_prompt_tokens", w.prompt_tokens)
        m.inc("listenpost_output_tokens", w.output_tokens)
        m.observe("listenpost_engine_window_seconds", w.engine_s)
        m.observe("listenpost_caption_length_chars", len(w.caption))
        if not w.caption.strip():
            m.inc("listenpost_captions_empty")
        if w.output_tokens >= max_tokens:  # the engine stopped at the cap: the caption is cut
            m.inc("listenpost_captions_truncated")
        if w.channel in silent:
            m.inc("listenpost_windows_no_speech")
    for label in {f.label for f in data.facets.emotions} | {f.label for f in data.facets.sound_events}:
        m.inc("listenpost_facets", label=label)


def _silent_channels(data: AudioCaptioned) -> set[int | None]:
    """Channels (None: the down-mix) where the VAD found no speech at all."""
    silent: set[int | None] = {c.channel for c in data.acoustics.channels if c.talk_time_s <= 0}
    if data.acoustics.speech_ratio <= 0:
        silent.add(None)
    return silent
