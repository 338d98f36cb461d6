"""Errors of preprocessing. Each maps to a dead-letter ``stage`` and a specific reason.

The ingress dead-letters a :class:`PreprocessError` with ``stage`` and ``str(exc)``.
``retryable`` marks the few failures that may pass on a later delivery (a
server timing out, an HTTP 503): the ingress may redeliver those instead of
dead-lettering them.
"""

from __future__ import annotations

from typing import ClassVar

from services.events.models import Stage


class PreprocessError(Exception):
    """Base: the input cannot be turned into windows."""

    stage: ClassVar[Stage] = "preprocess"
    retryable: bool = False


# --- fetch: getting the encoded bytes ---------------------------------------------------------------


class SourceError(PreprocessError):
    stage: ClassVar[Stage] = "fetch"


class UnsupportedSourceError(SourceError):
    """A URI scheme or source kind this deployment does not fetch."""


class PathOutsideRootsError(SourceError):
    """A local path or file:// URI that escapes the configured roots."""


class BucketNotAllowedError(SourceError):
    """An object in a NATS object-store bucket audio may not be read from."""


class SourceNotFoundError(SourceError):
    """The file, URL (HTTP 404/410) or object named by the event does not exist."""


class InlineAudioError(SourceError):
    """Inline ``data_base64`` is not valid base64 or is larger than allowed."""


class SourceTooLargeError(SourceError):
    """The audio is larger than the configured byte limit."""


class BlockedAddressError(SourceError):
    """An http(s) URL (or a redirect) points at a private, loopback, link-local or reserved address."""


class RedirectError(SourceError):
    """Too many redirects, a redirect without a Location, or one to a scheme we do not fetch."""


class HttpStatusError(SourceError):
    """The server answered with an error status other than 404/410."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = status == 429 or status >= 500


class SourceTimeoutError(SourceError):
    """The server did not answer or send data within the configured time."""

    retryable = True


class SourceUnavailableError(SourceError):
    """The host could not be resolved or reached, or the object store failed."""

    retryable = True


# --- decode-audio: turning bytes into samples -------------------------------------------------------


class AudioDecodeError(PreprocessError):
    """The bytes are not audio we can decode (corrupt or of an unknown kind)."""

    stage: ClassVar[Stage] = "decode-audio"


class UnsupportedFormatError(AudioDecodeError):
    """The content (or the declared format) is no container we decode."""


class FormatMismatchError(AudioDecodeError):
    """The event declares one format (``audio.format``) and the bytes are another."""


class TruncatedAudioError(AudioDecodeError):
    """The audio ends before its header says, or breaks off while decoding."""


class EmptyAudioError(AudioDecodeError):
    """The audio is 0 bytes or decodes to zero samples."""


class ZeroChannelsError(EmptyAudioError):
    """The header declares zero channels, or the container holds no audio stream."""


class InvalidSamplesError(AudioDecodeError):
    """The decoded samples contain NaN or infinite values."""


# --- validate: audio that decodes, but that we refuse ----------------------------------------------


class AudioRejectedError(PreprocessError):
    """Decodable audio outside what this deployment accepts."""

    stage: ClassVar[Stage] = "validate"


class AudioTooLongError(AudioRejectedError):
    """The recording is longer than the configured maximum duration."""


class TooManyChannelsError(AudioRejectedError):
    """More channels than the configured maximum."""


class SampleRateError(AudioRejectedError):
    """A sample rate outside the configured range."""


class AllSilentError(AudioRejectedError):
    """Nothing in the recording is louder than the all-silent floor: there is nothing to caption."""


class ChannelRoleError(AudioRejectedError):
    """The event names a channel the recording does not have."""


class SamplesPerByteError(AudioRejectedError):
    """The audio decodes (or its header says it decodes) to more samples per encoded byte than
    allowed: a decompression bomb, such as a FLAC of constant subframes."""


class ChannelSecondsError(AudioRejectedError):
    """The kept channels times the duration exceed the configured channel-seconds."""


class PrepareMemoryError(AudioRejectedError):
    """The recording alone would take more memory, decoded, than a replica's budget for prepares."""


class PrepareMemoryBusyError(AudioRejectedError):
    """The recording decodes to more than its header projected, and the replica's memory budget
    has no room for the rest now: the event may pass on a later delivery."""

    retryable = True
