"""What every receiver shares: the config base, the outcome of one attempt, and HTTP delivery.

One attempt: :func:`post` sends one request and classifies what came back. Retryable (the
sender may try again, after ``retry_after_s`` when the server said so): connection errors,
timeouts, 408, 425, 429 and 5xx. Anything else that is not 2xx is not: a 4xx says the request
itself is wrong (a revoked webhook, a bad routing key), and repeating it will not help.

Errors are sentences: what failed, where (a URL that is a secret is shown by its host only),
the status and the start of the response; never a traceback, never a secret's value
(:func:`services.notify.receivers.secrets.redact`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Final, TypeVar

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    PositiveFloat,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from services.notify.model import Alert, Notification
from services.notify.receivers.secrets import SECRET_NAME, MissingSecret, SecretSource, redact, reveal

__all__ = [
    "Delivery",
    "DeliveryError",
    "ReceiverBase",
    "ReceiverName",
    "SecretName",
    "Url",
    "describe_url",
    "parse_retry_after",
    "post",
    "sendable",
]

#: Receiver names: what routes refer to, and what logs and metrics say.
RECEIVER_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RULE: Final = "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 64"


def _receiver_name(value: str) -> str:
    # Says what a name may be, rather than pydantic's "should match pattern '^...$'".
    if not re.fullmatch(RECEIVER_NAME, value):
        raise ValueError(f"{value!r} is not a receiver name ({_NAME_RULE})")
    return value


def _secret_name(value: str) -> str:
    # Never echoes the value: what is written where a secret's name goes is often the secret.
    if not re.fullmatch(SECRET_NAME, value):
        raise ValueError(
            f"not a secret name ({_NAME_RULE}): write the secret's name here, and its value in "
            "notify.secrets or a file of notify.secrets_dir"
        )
    return value


def _url(value: object, handler: ValidatorFunctionWrapHandler) -> HttpUrl:
    """pydantic's URL check, saying which value it refused ("'ftp://x' is not an http or https
    URL") rather than "Input should be a valid URL, relative URL without a base"."""
    try:
        url: HttpUrl = handler(value)
    except ValidationError as exc:
        if not isinstance(value, str):
            raise
        error = exc.errors(include_url=False)[0]
        if error["type"] == "url_scheme":
            raise ValueError(f"{value!r} is not an http or https URL") from None
        reason = (error.get("ctx") or {}).get("error", error["msg"])
        raise ValueError(f"{value!r} is not a URL ({reason})") from None
    return url


def _seconds(value: object) -> object:
    # `timeout_s: 10s` is the likely mistake: the rest of the file writes durations so.
    if isinstance(value, str):
        raise ValueError(f"a number of seconds, like 10 or 2.5 (not {value!r})")
    return value


SecretName = Annotated[
    str,
    AfterValidator(_secret_name),
    Field(description="The name of a secret (settings or a file), never its value."),
]
ReceiverName = Annotated[str, AfterValidator(_receiver_name)]
Url = Annotated[HttpUrl, WrapValidator(_url)]
#: Statuses worth another try besides 5xx: Request Timeout, Too Early, Too Many Requests.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})
EXCERPT_CHARS: Final = 300
USER_AGENT: Final = "listenpost-notify/1"


class ReceiverBase(BaseModel):
    """Fields every receiver has."""

    # Strict as the rest of the notification file: `send_resolved: "no"` is a mistake to report,
    # not a string to read as True.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: ReceiverName = Field(description="What routes refer to the receiver by.")
    send_resolved: bool = Field(default=True, description="Also notify when alerts resolve.")
    timeout_s: Annotated[PositiveFloat, BeforeValidator(_seconds)] = Field(
        default=10.0, description="One attempt's time limit, connecting included."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, value: Any) -> Any:
        """``routing_key: ...`` where ``routing_key_secret`` is the option: the commonest mistake,
        and one that puts a credential in a file that is committed and logged; say so."""
        if not isinstance(value, dict):
            return value
        for key in value:
            if isinstance(key, str) and key not in cls.model_fields and f"{key}_secret" in cls.model_fields:
                # ctx["field"] points the error at this key (services/dsl/yaml_source.schema_errors).
                raise PydanticCustomError(
                    "inline_secret",
                    f"{key} is a secret, never written in this file: name it with {key}_secret "
                    "(its value in notify.secrets or a file of notify.secrets_dir)",
                    {"field": key},
                )
        return value


@dataclass(frozen=True)
class Delivery:
    """One attempt that succeeded (or that had nothing to send: ``skipped``)."""

    receiver: str
    type: str
    status: int | None = None  # the last HTTP status, or the SMTP reply code
    requests: int = 1  # requests made (PagerDuty: one event per alert)
    elapsed_s: float = 0.0
    detail: str = ""
    skipped: bool = False


class DeliveryError(Exception):
    """One attempt that failed: ``retryable`` says whether another may succeed, ``retry_after_s``
    when the server said how long to wait. Message and excerpt are redacted of every secret."""

    def __init__(
        self,
        receiver: str,
        message: str,
        *,
        retryable: bool,
        retry_after_s: float | None = None,
        status: int | None = None,
        response_excerpt: str = "",
    ) -> None:
        self.receiver = receiver
        self.message = redact(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status
        self.response_excerpt = redact(response_excerpt)
        super().__init__(f"receiver {receiver!r}: {self.message}")

    def __repr__(self) -> str:
        return (
            f"DeliveryError(receiver={self.receiver!r}, message={self.message!r}, retryable={self.retryable}, "
            f"retry_after_s={self.retry_after_s!r}, status={self.status!r})"
        )


def sendable(notification: Notification, config: ReceiverBase) -> list[Alert]:
    """The alerts this receiver is told of: resolved ones only with ``send_resolved``."""
    return [a for a in notification.alerts if config.send_resolved or a.status == "firing"]


def skipped(config: ReceiverBase, type_: str) -> Delivery:
    return Delivery(config.name, type_, requests=0, detail="only resolved alerts, and send_resolved is off", skipped=True)


def describe_url(url: str, *, secret: str | None = None) -> str:
    """A URL as errors show it: scheme and host only when the URL is a secret (its path is the
    credential of a Slack or Teams webhook), else without user info and query."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return f"the URL of secret {secret!r}" if secret else "an invalid URL"
    host = parsed.host + (f":{parsed.port}" if parsed.port else "")
    if secret:
        return f"{parsed.scheme}://{host} (URL of secret {secret!r})"
    return f"{parsed.scheme}://{host}{parsed.path}"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


async def post(
    client: httpx.AsyncClient,
    *,
    receiver: str,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    url_secret: str | None = None,
    auth: httpx.Auth | None = None,
    ok_statuses: Sequence[int] = (),
    method: str = "POST",
) -> httpx.Response:
    """Send once (POST, or ``method``: the CRM writer's PUT and PATCH); the response if it is
    2xx (or in ``ok_statuses``), :class:`DeliveryError` otherwise."""
    where = describe_url(url, secret=url_secret)
    request_headers = {"user-agent": USER_AGENT, **headers}
    try:
        if auth is None:
            response = await client.request(method, url, content=content, headers=request_headers, timeout=timeout_s)
        else:
            response = await client.request(method, url, content=content, headers=request_headers, timeout=timeout_s, auth=auth)
    except httpx.TimeoutException:
        raise DeliveryError(receiver, f"no answer from {where} within {timeout_s:g} s", retryable=True) from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        raise DeliveryError(receiver, f"{where} is not an http or https URL", retryable=False) from None
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise DeliveryError(receiver, f"could not reach {where}: {reason}", retryable=True) from None
    if 200 <= response.status_code < 300 or response.status_code in ok_statuses:
        return response
    raise status_error(receiver, where, response)


def status_error(receiver: str, where: str, response: httpx.Response) -> DeliveryError:
    status = response.status_code
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        body = excerpt(response.text)
    except (UnicodeDecodeError, LookupError):
        body = f"({len(response.content)} bytes, not text)"
    message = f"{where} answered HTTP {status} {response.reason_phrase}".rstrip()
    if body:
        message += f": {body}"
    if retry_after is not None:
        message += f" (retry after {retry_after:g} s)"
    return DeliveryError(
        receiver, message, retryable=retryable, retry_after_s=retry_after, status=status, response_excerpt=body
    )


def iso(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as Alertmanager and PagerDuty write times."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


_Config = TypeVar("_Config", bound=ReceiverBase)


async def post_json_to_secret_url(
    notification: Notification,
    config: _Config,
    secrets: SecretSource,
    client: httpx.AsyncClient,
    *,
    kind: str,
    url_secret: str,
    payload: Callable[[Notification, _Config], Mapping[str, Any]],
) -> Delivery:
    """One attempt of an incoming-webhook receiver (Slack, Teams): its JSON payload, POSTed to
    a URL that is itself the credential, so it is read from a secret and never shown."""
    alerts = sendable(notification, config)
    if not alerts:
        return skipped(config, kind)
    started = time.monotonic()
    try:
        url = reveal(secrets, url_secret)
    except MissingSecret as exc:
        raise DeliveryError(config.name, str(exc), retryable=False) from None
    body = json.dumps(payload(notification.model_copy(update={"alerts": alerts}), config), ensure_ascii=False).encode()
    response = await post(
        client,
        receiver=config.name,
        url=url,
        content=body,
        headers={"content-type": "application/json; charset=utf-8"},
        timeout_s=config.timeout_s,
        url_secret=url_secret,
    )
    return Delivery(config.name, kind, status=response.status_code, elapsed_s=time.monotonic() - started)
