"""The end of a live stream: one ``audio.captioned`` of the whole of it, from its windows.

A stream's audio is not kept (memory stays bounded by one window), so the whole stream's
acoustics are put together from what was measured on each window's new part (its first hop;
the rest of the stream for the last): durations, talk time, silence and overtalk add up,
levels take the loudest, loudness the energy mean. A silence that runs across two parts counts
in full in ``dead_air_s`` only when each part's share reaches ``dead_air_min_s``, and
``longest_silence_s`` is the longest within one part: both can be under what a recording
would show, never over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from services.events.models import Acoustics, ChannelAcoustics

_FLOOR_LUFS = -70.0


def _weighted(values: Sequence[float], weights: Sequence[float]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total if total else 0.0


def _energy_mean_db(levels: Sequence[float], weights: Sequence[float]) -> float:
    total = sum(weights)
    if not total:
        return _FLOOR_LUFS
    power = sum(10 ** (level / 10) * w for level, w in zip(levels, weights, strict=True)) / total
    return max(_FLOOR_LUFS, 10 * math.log10(power)) if power > 0 else _FLOOR_LUFS


def _merge_channel(parts: Sequence[ChannelAcoustics]) -> ChannelAcoustics:
    durations = [p.duration_s for p in parts]
    duration = sum(durations)
    talk = sum(p.talk_time_s for p in parts)
    noises = [p.noise_dbfs for p in parts if p.noise_dbfs is not None]
    snrs = [p.snr_db for p in parts if p.snr_db is not None]
    return ChannelAcoustics(
        channel=parts[0].channel,
        role=parts[0].role,
        duration_s=round(duration, 3),
        rms_dbfs=round(_energy_mean_db([p.rms_dbfs for p in parts], durations), 2),
        peak_dbfs=max(p.peak_dbfs for p in parts),
        silence_ratio=round(_weighted([p.silence_ratio for p in parts], durations), 4),
        longest_silence_s=max(p.longest_silence_s for p in parts),
        talk_time_s=round(talk, 3),
        speech_ratio=round(talk / duration, 4) if duration else 0.0,
        speech_segments=sum(p.speech_segments for p in parts),
        loudness_lufs=round(_energy_mean_db([p.loudness_lufs for p in parts], durations), 2),
        clipping_ratio=max(p.clipping_ratio for p in parts),
        noise_dbfs=round(sorted(noises)[len(noises) // 2], 2) if noises else None,
        snr_db=min(snrs) if snrs else None,
    )


def merge_acoustics(parts: Sequence[Acoustics]) -> Acoustics | None:
    """The acoustics of consecutive, non-overlapping parts of one stream, as one; None for none."""
    if not parts:
        return None
    durations = [p.duration_s for p in parts]
    duration = sum(durations)
    by_channel: dict[tuple[int | None, str | None], list[ChannelAcoustics]] = {}
    for part in parts:
        for channel in part.channels:
            by_channel.setdefault((channel.channel, channel.role), []).append(channel)
    talk_time: dict[str, float] = {}
    for part in parts:
        for role, seconds in part.talk_time_s.items():
            talk_time[role] = round(talk_time.get(role, 0.0) + seconds, 3)
    overtalk = sum(p.overtalk_s for p in parts)
    non_talk = sum(p.non_talk_s for p in parts)
    snrs = [p.snr_db for p in parts if p.snr_db is not None]
    return Acoustics(
        duration_s=round(duration, 3),
        silence_ratio=round(_weighted([p.silence_ratio for p in parts], durations), 4),
        longest_silence_s=max(p.longest_silence_s for p in parts),
        dead_air_s=round(sum(p.dead_air_s for p in parts), 3),
        peak_dbfs=max(p.peak_dbfs for p in parts),
        channels=[_merge_channel(c) for c in by_channel.values()],
        speech_ratio=round(_weighted([p.speech_ratio for p in parts], durations), 4),
        talk_time_s=talk_time,
        non_talk_s=round(non_talk, 3),
        longest_non_talk_s=max(p.longest_non_talk_s for p in parts),
        overtalk_s=round(overtalk, 3),
        overtalk_ratio=round(overtalk / duration, 4) if duration else 0.0,
        overtalk_count=sum(p.overtalk_count for p in parts),
        loudness_lufs=round(_energy_mean_db([p.loudness_lufs for p in parts], durations), 2),
        clipping_ratio=max(p.clipping_ratio for p in parts),
        snr_db=min(snrs) if snrs else None,
    )
