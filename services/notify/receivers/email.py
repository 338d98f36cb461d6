"""``email``: one e-mail per notification over SMTP, with STARTTLS, by aiosmtplib.

The message has a plain-text part and an HTML alternative (the ``text`` and ``html``
templates; ``subject`` too), ``Message-ID`` ``<idempotency key@listenpost>`` (so a retried
notification is recognisably the same mail) and ``Date`` the notification's creation.

TLS: ``starttls: true`` (the default; port 587) upgrades the connection and fails if the
server cannot; ``tls: true`` is implicit TLS (port 465). Certificates are verified against the
system's roots, or ``ca_file``. A password (``password_secret``) is only ever sent over TLS.

Errors: a 4xx reply, a timeout or a lost connection is retryable; a 5xx reply, a refused
login, a server that cannot do STARTTLS and a certificate that does not verify are not.
"""

from __future__ import annotations

import ssl
import time
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Self

import aiosmtplib
from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from services.notify.model import Notification
from services.notify.receivers.base import Delivery, DeliveryError, ReceiverBase, SecretName, sendable, skipped
from services.notify.receivers.secrets import MissingSecret, SecretSource, reveal
from services.notify.templates import check_overrides, notification_context, render_field

if TYPE_CHECKING:
    import httpx

__all__ = ["EmailConfig", "message", "send"]


def _address_list(value: object) -> object:
    # `to: qa@example.com` is the likely mistake: say how to write it.
    if isinstance(value, str):
        raise ValueError(f"a list of addresses: write [{value}]")
    return value


class EmailConfig(ReceiverBase):
    """Send each notification as an e-mail."""

    type: Literal["email"] = "email"
    # Alertmanager's default for chat and mail: a person reads it, and "resolved" is noise there.
    send_resolved: bool = Field(default=False, description="Also notify when alerts resolve (off by default, as in Alertmanager).")
    host: str = Field(min_length=1, description="The SMTP server (a relay or submission server).")
    port: int = Field(default=587, ge=1, le=65535, description="587 for STARTTLS, 465 for implicit TLS.")
    sender: str = Field(description="The From address, e.g. `listenpost <alerts@example.com>`.")
    to: Annotated[list[str], BeforeValidator(_address_list)] = Field(min_length=1, description="Recipients.")
    username: str | None = Field(default=None, description="Log in as this user (with password_secret).")
    password_secret: SecretName | None = Field(default=None, description="The secret holding the SMTP password.")
    starttls: bool = Field(default=True, description="Upgrade the connection with STARTTLS (and fail if the server cannot).")
    tls: bool = Field(default=False, description="Implicit TLS from the first byte (port 465), instead of STARTTLS.")
    # A path is a string in YAML: the one option read leniently.
    ca_file: Path | None = Field(default=None, strict=False, description="Trust these CA certificates (PEM) instead of the system's.")
    hello: str | None = Field(default=None, description="The name to greet the server with (EHLO); default the host's FQDN.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra message headers (not secrets).")
    template: dict[str, str] = Field(default_factory=dict, description="Override `subject`, `text` and/or `html` (Jinja).")

    @field_validator("template")
    @classmethod
    def _templates(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return check_overrides("email", info.data.get("name", "email"), value)

    @field_validator("sender", "to")
    @classmethod
    def _addresses(cls, value: str | list[str]) -> str | list[str]:
        for text in [value] if isinstance(value, str) else value:
            parsed = getaddresses([text])
            if len(parsed) != 1 or "@" not in parsed[0][1] or any(c in text for c in "\r\n"):
                raise ValueError(f"{text!r} is not one e-mail address")
        return value

    @model_validator(mode="after")
    def _tls(self) -> Self:
        if self.tls and self.starttls:
            # starttls is on by default, so `tls: true` alone lands here: say what to add.
            raise ValueError("tls (implicit TLS, port 465) and starttls exclude each other: with tls: true, set starttls: false")
        if (self.username is None) != (self.password_secret is None):
            raise ValueError("username and password_secret go together")
        if self.password_secret is not None and not (self.tls or self.starttls):
            raise ValueError("a password is only sent over TLS: set starttls or tls")
        return self


def message(notification: Notification, config: EmailConfig) -> EmailMessage:
    """The e-mail (no network)."""
    context = notification_context(notification)
    subject = " ".join(render_field("email", "subject", receiver=config.name, overrides=config.template, context=context).split())
    context["title"] = subject
    msg = EmailMessage()
    for name, value in config.headers.items():
        msg[name] = value
    msg["From"] = config.sender
    msg["To"] = ", ".join(config.to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(notification.created_at)
    msg["Message-ID"] = f"<{notification.idempotency_key}@listenpost>"
    msg["X-Listenpost-Receiver"] = notification.receiver
    msg["X-Listenpost-Status"] = notification.status
    msg.set_content(render_field("email", "text", receiver=config.name, overrides=config.template, context=context) + "\n")
    msg.add_alternative(render_field("email", "html", receiver=config.name, overrides=config.template, context=context), subtype="html")
    return msg


async def send(
    notification: Notification, config: EmailConfig, secrets: SecretSource, client: httpx.AsyncClient | None = None
) -> Delivery:
    """One attempt: connect, (STARTTLS,) log in, send. ``client`` is unused (the signature is every receiver's)."""
    alerts = sendable(notification, config)
    if not alerts:
        return skipped(config, "email")
    started = time.monotonic()
    try:
        password = reveal(secrets, config.password_secret) if config.password_secret else None
    except MissingSecret as exc:
        raise DeliveryError(config.name, str(exc), retryable=False) from None
    msg = message(notification.model_copy(update={"alerts": alerts}), config)
    where = f"SMTP server {config.host}:{config.port}"
    tls_context = ssl.create_default_context(cafile=str(config.ca_file)) if config.ca_file else None
    try:
        refused, reply = await aiosmtplib.send(
            msg,
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=password,
            use_tls=config.tls,
            start_tls=config.starttls if not config.tls else False,
            tls_context=tls_context,
            local_hostname=config.hello,
            timeout=config.timeout_s,
        )
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(config.name, f"{where} refused the login: {exc.code} {exc.message}", retryable=False, status=exc.code) from None
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        raise DeliveryError(
            config.name,
            f"{where} refused every recipient: {detail}",
            retryable=all(400 <= c < 500 for c in codes),
            status=max(codes, default=None),
        ) from None
    except aiosmtplib.SMTPResponseException as exc:
        raise DeliveryError(
            config.name, f"{where} answered {exc.code} {exc.message}", retryable=400 <= exc.code < 500, status=exc.code
        ) from None
    except aiosmtplib.SMTPTimeoutError:
        raise DeliveryError(config.name, f"no answer from {where} within {config.timeout_s:g} s", retryable=True) from None
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc).replace("_", " ").lower()
        verify = getattr(exc, "verify_message", None)
        detail = f"{reason} ({verify})" if verify else reason
        raise DeliveryError(config.name, f"TLS with {where} failed: {detail}", retryable=False) from None
    except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected) as exc:
        raise DeliveryError(config.name, f"could not reach {where}: {exc}", retryable=True) from None
    except aiosmtplib.SMTPException as exc:  # STARTTLS or AUTH not offered, and the like: the setup, not the moment
        raise DeliveryError(config.name, f"{where}: {exc}", retryable=False) from None
    except OSError as exc:
        raise DeliveryError(config.name, f"could not reach {where}: {exc.strerror or exc}", retryable=True) from None
    detail = reply
    if refused:
        detail += "; refused: " + ", ".join(f"{rcpt} ({r.code} {r.message})" for rcpt, r in refused.items())
    return Delivery(config.name, "email", status=250, elapsed_s=time.monotonic() - started, detail=detail)
