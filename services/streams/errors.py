"""Errors of a live stream. Each carries a short machine ``reason`` (metrics labels, the
dead letter's reason code) and a plain-English message (shown to the sender in the error
event), because a stream that fails is someone's live call: they need to know what to fix.
"""

from __future__ import annotations

from typing import ClassVar


class StreamError(Exception):
    """Base: this stream's input cannot go on as sent."""

    reason: ClassVar[str] = "stream-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownCodecError(StreamError):
    """The codec header names a codec we do not decode."""

    reason: ClassVar[str] = "unknown-codec"


class BadFormatError(StreamError):
    """A sample rate or channel count out of range for its codec, or a missing or malformed header."""

    reason: ClassVar[str] = "bad-format"


class UndecodableChunkError(StreamError):
    """A chunk's payload is not valid audio in the stream's codec."""

    reason: ClassVar[str] = "undecodable-chunk"


class ChunkTooLargeError(StreamError):
    """A chunk's payload is larger than allowed (refused before decoding)."""

    reason: ClassVar[str] = "chunk-too-large"


class TooFastError(StreamError):
    """Audio arrives faster than real time allows: not a live source (or a runaway one)."""

    reason: ClassVar[str] = "faster-than-real-time"
