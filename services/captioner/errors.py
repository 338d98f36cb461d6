"""Captioner failures, split by what the caller should do about them."""

from __future__ import annotations


class CaptionerError(Exception):
    """Base of every captioner failure."""


class EngineStartError(CaptionerError):
    """The engine could not be built or started (bad model path, config, out of memory...)."""

    def __init__(self, engine: str, cause: BaseException) -> None:
        super().__init__(f"{engine} engine failed to start: {type(cause).__name__}: {cause}")
        self.engine = engine
        self.__cause__ = cause


class EngineDeadError(CaptionerError):
    """The engine loop died: every later request fails too. Restart the engine (or replica)."""


class CaptionGenerationError(CaptionerError):
    """One request failed while the engine stays healthy; retrying it may succeed."""


class InvalidWindowError(CaptionerError, ValueError):
    """The audio window cannot be captioned as given (not mono, not finite...). Retrying won't help."""


class EmptyWindowError(InvalidWindowError):
    """The window is empty or too short to yield a single audio token."""


class WindowTooLongError(InvalidWindowError):
    """The window is longer than the configured maximum (the Captioner is tuned for <= 30 s)."""


__all__ = [
    "CaptionGenerationError",
    "CaptionerError",
    "EmptyWindowError",
    "EngineDeadError",
    "EngineStartError",
    "InvalidWindowError",
    "WindowTooLongError",
]
