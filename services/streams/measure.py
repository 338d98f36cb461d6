"""Acoustics of a live window, measured as a recording's are (services/preprocess/acoustics.py).

Each window is measured whole (its event's ``acoustics``) and, for the stream's summary, on its
new part only (its first hop: the part no earlier window covered), so the parts tile the stream
(services/streams/summary.py). Peak and clipping are read on the 16 kHz signal: the source
samples are not kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from services.events.models import Acoustics
from services.preprocess.acoustics import AcousticLimits, ChannelMeasure, frame_power, measure
from services.preprocess.channels import MODEL_RATE, ChannelAudio
from services.preprocess.vad import SpeechDetector, VadParams
from services.settings import PreprocessSettings
from services.streams.session import WindowGroup

_CLIP_LEVEL = 0.999


class WindowMeasurer:
    def __init__(self, detector: SpeechDetector, preprocess: PreprocessSettings) -> None:
        self._detector = detector
        self._params = VadParams(
            threshold=preprocess.vad_threshold, min_speech_s=preprocess.vad_min_speech_s,
            min_silence_s=preprocess.vad_min_silence_s, pad_s=preprocess.vad_pad_s, gate_dbfs=preprocess.vad_gate_dbfs,
        )  # fmt: skip
        self._limits = AcousticLimits(
            silence_dbfs=preprocess.silence_dbfs, dead_air_min_s=preprocess.dead_air_min_s, overtalk_min_s=preprocess.overtalk_min_s
        )

    def measure(self, group: WindowGroup, roles: Mapping[int, str], *, part_s: float | None) -> tuple[Acoustics, Acoustics]:
        """``(the window's acoustics, those of its first part_s seconds)``; part_s None: the whole window twice."""
        whole = self._measure(group, roles, slice(None))
        return whole, whole if part_s is None else self._measure(group, roles, slice(0, round(part_s * MODEL_RATE)))

    def tail(self, group: WindowGroup, roles: Mapping[int, str], *, after_s: float) -> Acoustics | None:
        """The acoustics of the window after its first ``after_s`` seconds (a stream's last stretch
        when no shorter last window was cut); None when nothing is left."""
        start = round(after_s * MODEL_RATE)
        if all(w.samples.shape[0] <= start for w in group.windows):
            return None
        return self._measure(group, roles, slice(start, None))

    def _measure(self, group: WindowGroup, roles: Mapping[int, str], part: slice) -> Acoustics:
        measures = []
        for window in group.windows:
            samples = np.ascontiguousarray(window.samples[part], dtype=np.float32)
            audio = ChannelAudio(
                channel=window.channel, role=roles.get(window.channel), samples=samples,
                peak=float(np.abs(samples).max(initial=0.0)), clipped=int((np.abs(samples) >= _CLIP_LEVEL).sum()),
                source_frames=samples.shape[0],
            )  # fmt: skip
            speech = self._detector.segments(samples, self._params)
            measures.append(ChannelMeasure(audio=audio, power=frame_power(samples), speech=speech))
        return measure(measures, self._limits)
