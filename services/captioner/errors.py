"""Captioner failures, split by what the caller should do about them."""

from __future__ import annotations


class CaptionerError(Exception):
    """Base of every captioner failure."""


class EngineStartError(CaptionerError):
    """The engine could not be built or started (bad model path, config, out of memory...)."""

    def __init__(self, engine: str, cause: BaseException | str) -> None:
        self.engine = engine
        self.cause_text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{engine} engine failed to start: {self.cause_text}")
        if isinstance(cause, BaseException):
            self.__cause__ = cause

    def __reduce__(self) -> tuple:
        # Crosses process boundaries (a Serve replica's constructor error reaches the controller):
        # rebuild from text, since the original cause may not pickle.
        return (type(self), (self.engine, self.cause_text))


class EngineDeadError(CaptionerError):
    """The engine loop died: every later request fails too. Restart the engine (or replica).

    Transient for the event: the Ingress naks it and it is redelivered (to a healthy replica).
    """


class EngineStoppingError(EngineDeadError):
    """The engine is draining for shutdown and takes no new windows; retry on another replica."""


class CaptionGenerationError(CaptionerError):
    """One request failed while the engine stays healthy; retrying it may succeed."""


class InvalidWindowError(CaptionerError, ValueError):
    """The audio window cannot be captioned as given (not mono, not finite...). Retrying won't help."""


class EmptyWindowError(InvalidWindowError):
    """The window is empty or too short to yield a single audio token."""


class WindowTooLongError(InvalidWindowError):
    """The window is longer than the configured maximum (the Captioner is tuned for <= 30 s), or its
    audio tokens and the answer would not fit the engine's max_model_len."""


class GuidedExtractionError(CaptionerError):
    """The structured-output facet pass returned no valid facets (truncated or invalid JSON)."""


__all__ = [
    "CaptionGenerationError",
    "CaptionerError",
    "EmptyWindowError",
    "EngineDeadError",
    "EngineStartError",
    "EngineStoppingError",
    "GuidedExtractionError",
    "InvalidWindowError",
    "WindowTooLongError",
]
