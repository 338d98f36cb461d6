"""Refuse audio that comes faster than real time: a live stream is someone speaking now. A
sender far ahead of the clock is replaying a file or looping, and would fill the Captioner's
queue for everyone; a little ahead is normal (a client's buffer), which the slack allows.

Speed is judged on the times chunks were *published* (JetStream's timestamp of each message),
not on when they reach us: after a restart the new owner reads a stream's chunks again all at
once, and their publish times still show the pace at which they were sent, so the replay does
not look too fast.
"""

from __future__ import annotations

from services.streams.errors import TooFastError


class RealtimeGuard:
    """Raises :class:`TooFastError` once the audio sent runs ahead of real time by more than the slack."""

    def __init__(self, *, max_speed: float = 1.5, slack_s: float = 3.0) -> None:
        if max_speed <= 0 or slack_s < 0:
            raise ValueError(f"max_speed must be positive and slack_s not negative, not {max_speed} and {slack_s}")
        self.max_speed = max_speed
        self.slack_s = slack_s
        self._origin: tuple[float, float] | None = None  # (audio end, publish time) of the first chunk seen

    def observe(self, audio_end_s: float, published_s: float) -> None:
        """One chunk: the stream time of its last sample's end, and when it was published (any clock, seconds)."""
        if self._origin is None:
            # The pace is measured from the first chunk seen, not from stream time 0: an owner that
            # resumes mid-stream starts with a chunk whose audio time is far from zero.
            self._origin = (audio_end_s, published_s)
            return
        audio = audio_end_s - self._origin[0]
        elapsed = max(published_s - self._origin[1], 0.0)
        if audio <= elapsed * self.max_speed + self.slack_s:
            return
        limit = f"at most {self.max_speed:g}x real time is accepted"
        if elapsed <= 0:
            raise TooFastError(f"the stream sent {audio:.1f} s of audio at once; {limit}")
        raise TooFastError(f"the stream sends {audio / elapsed:.1f} s of audio per second; {limit}")
