"""Errors of preprocessing. Each maps to a dead-letter ``stage`` and a specific reason."""

from __future__ import annotations


class PreprocessError(Exception):
    """Base: the input cannot be turned into windows. Never worth a redelivery."""

    stage = "preprocess"


class SourceError(PreprocessError):
    stage = "fetch"


class UnsupportedSourceError(SourceError):
    """A URI scheme or source kind this deployment does not fetch."""


class PathOutsideRootsError(SourceError):
    """A local path or file:// URI that escapes the configured roots."""


class SourceNotFoundError(SourceError):
    """The file or object named by the event does not exist."""


class InlineAudioError(SourceError):
    """Inline ``data_base64`` is not valid base64 or is larger than allowed."""


class SourceTooLargeError(SourceError):
    """The audio is larger than the configured byte limit."""


class AudioDecodeError(PreprocessError):
    """The bytes are not audio we can decode (corrupt, truncated or unknown format)."""

    stage = "decode-audio"


class EmptyAudioError(AudioDecodeError):
    """The audio decodes to zero samples or zero channels."""


class InvalidSamplesError(AudioDecodeError):
    """The decoded samples contain NaN or infinite values."""


class AudioTooLongError(PreprocessError):
    """The recording is longer than the configured maximum duration."""


class ChannelRoleError(PreprocessError):
    """The event names a channel the recording does not have."""

    stage = "validate"
