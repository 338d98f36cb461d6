"""Secrets of receivers (webhook URLs, tokens, SMTP passwords): referenced by name, never inline.

A receiver's configuration names its secrets (``url_secret: slack-ops``); the values come from
settings or files, gathered by the caller into a :class:`Secrets`. Nothing here writes a value
to a log, an error or a repr:

- :class:`Secrets` prints its names only, and holds values as :class:`~pydantic.SecretStr`;
- every value a :class:`Secrets` holds is registered with :func:`redact`, which every
  :class:`~services.notify.receivers.base.DeliveryError` passes its message and response
  excerpt through (a server that echoes the URL it was posted to does not leak it);
- httpx logs each request's URL at INFO (``HTTP Request: POST https://hooks.slack.com/...``):
  a filter on its logger rewrites registered values to ``<secret>`` before any handler sees them.

A URL's path and query are registered too (a Slack or Teams webhook's credential is its path).
Values shorter than :data:`MIN_REDACTED_CHARS` are not registered (replacing every "ab" in a
message would make errors unreadable); secrets that short are not secrets.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import SecretStr

from services.settings import NotifySettings

__all__ = ["MIN_REDACTED_CHARS", "SECRET_NAME", "MissingSecret", "SecretSource", "Secrets", "redact"]

#: What a secret's name may be (also a file name in a secrets directory).
SECRET_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MIN_REDACTED_CHARS: Final = 4
REDACTED: Final = "<secret>"

_values: set[str] = set()
_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()


def _variants(value: str) -> set[str]:
    """The value, and for a URL the parts that carry its credential, each of which a server may
    echo on its own: the path with the query, the path, the query, a password in it."""
    variants = {value}
    parts = urlsplit(value) if "://" in value else None
    if parts is not None and parts.scheme and parts.netloc:
        path_query = parts.path + (f"?{parts.query}" if parts.query else "")
        variants.update(v for v in (path_query, parts.path, parts.query, parts.password or "") if v not in ("", "/"))
    return {v for v in variants if len(v) >= MIN_REDACTED_CHARS}


def _register(value: str) -> None:
    global _pattern
    new = _variants(value) - _values
    if not new:
        return
    with _lock:
        _values.update(new)
        # Longest first: a value that contains another is replaced whole.
        _pattern = re.compile("|".join(re.escape(v) for v in sorted(_values, key=len, reverse=True)))


def redact(text: str) -> str:
    """``text`` with every registered secret value replaced by ``<secret>``."""
    pattern = _pattern
    return pattern.sub(REDACTED, text) if pattern is not None and text else text


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


for _logger in ("httpx", "httpcore", "aiosmtplib"):
    logging.getLogger(_logger).addFilter(_RedactingFilter())


class MissingSecret(LookupError):
    """A receiver names a secret that is not configured."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name!r} is not configured")
        self.name = name


@runtime_checkable
class SecretSource(Protocol):
    """Where receivers get secrets from, by name."""

    def get(self, name: str) -> SecretStr | None: ...


class Secrets:
    """Named secrets: built from settings (a mapping) or a directory of files (one secret per
    file, its name the file's name, as a mounted Kubernetes secret is). Never prints a value."""

    def __init__(self, values: Mapping[str, SecretStr | str] | None = None) -> None:
        self._values: dict[str, SecretStr] = {}
        for name, value in (values or {}).items():
            if not re.fullmatch(SECRET_NAME, name):
                raise ValueError(f"secret name {name!r} is not valid: letters, digits, '_', '.', '-', at most 64")
            secret = value if isinstance(value, SecretStr) else SecretStr(value)
            _register(secret.get_secret_value())
            self._values[name] = secret

    @classmethod
    def from_directory(cls, directory: Path) -> Secrets:
        """Every regular file directly in ``directory`` whose name is a valid secret name (so
        Kubernetes' ``..data`` links are skipped); its content, surrounding whitespace stripped."""
        values: dict[str, SecretStr] = {}
        try:
            entries = sorted(directory.iterdir())
        except OSError as exc:
            raise ValueError(f"cannot read the secrets directory {str(directory)!r}: {exc.strerror}") from None
        for path in entries:
            if not re.fullmatch(SECRET_NAME, path.name) or not path.is_file():
                continue
            try:
                values[path.name] = SecretStr(path.read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError) as exc:
                cause = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ValueError(f"cannot read secret file {str(path)!r}: {cause}") from None
        return cls(values)

    def merged(self, other: Secrets) -> Secrets:
        """Both sets of names; ``other``'s value where a name is in both."""
        return Secrets({**self._values, **other._values})

    def get(self, name: str) -> SecretStr | None:
        return self._values.get(name)

    def reveal(self, name: str) -> str:
        """The value, for the one place that sends it; :class:`MissingSecret` if there is none."""
        secret = self._values.get(name)
        if secret is None:
            raise MissingSecret(name)
        return secret.get_secret_value()

    def names(self) -> frozenset[str]:
        return frozenset(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Secrets(names={sorted(self._values)!r})"

    __str__ = __repr__


def reveal(source: SecretSource, name: str) -> str:
    """A secret's value from any :class:`SecretSource`; registered for redaction on the way."""
    if isinstance(source, Secrets):
        return source.reveal(name)
    secret = source.get(name)
    if secret is None:
        raise MissingSecret(name)
    value = secret.get_secret_value()
    _register(value)
    return value


def configured_secrets(settings: NotifySettings) -> Secrets:
    """The receivers' secrets from settings: ``notify.secrets_dir``'s files, then ``notify.secrets``
    (which wins for a name in both)."""
    from_files = Secrets.from_directory(settings.secrets_dir) if settings.secrets_dir is not None else Secrets()
    return from_files.merged(Secrets(settings.secrets))
