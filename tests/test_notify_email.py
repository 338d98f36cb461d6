"""The e-mail receiver against a real SMTP server (aiosmtpd) on loopback: STARTTLS with a
certificate made here, a login, the message as received; and the failures."""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from notify_fixtures import firing_alert, notification, resolved_alert

from services.events.tls import make_pki
from services.notify.receivers import DeliveryError, EmailConfig, Secrets, send

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402  (after the skip: aiosmtpd is a test dependency)

PASSWORD = "smtp-pa55word-that-is-secret"


def certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA (ca.pem) and a loopback server certificate (cert.pem, key.pem)."""
    return make_pki(ca_name="listenpost test CA", valid_for=datetime.timedelta(hours=1)).write(tmp)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


@dataclass
class Handler:
    """aiosmtpd handler: keeps each message with whether it came over TLS and who logged in."""

    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        msg = message_from_bytes(envelope.content, policy=policy.default)
        login = session.auth_data.login.decode() if session.authenticated and session.auth_data else None
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg, session.ssl is not None, login))  # type: ignore[arg-type]
        return "250 OK queued"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login.decode(), mechanism))
        ok = auth_data.login == b"listenpost" and auth_data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@dataclass
class SmtpServer:
    port: int
    handler: Handler
    ca: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """aiosmtpd on 127.0.0.1 that requires STARTTLS before anything, and a login to send."""
    ca, cert, key = certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = Handler()
    port = free_port()
    controller = aiosmtpd_controller.Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=handler.authenticate,
        server_hostname="localhost",
    )
    controller.start()
    try:
        yield SmtpServer(port, handler, ca)
    finally:
        controller.stop()


def mail_config(server: SmtpServer, **update: Any) -> EmailConfig:
    values: dict[str, Any] = {
        "name": "cx-mail",
        "host": "127.0.0.1",
        "port": server.port,
        "sender": "listenpost <alerts@listenpost.example>",
        "to": ["cx-leads@example.com", "oncall@example.com"],
        "username": "listenpost",
        "password_secret": "smtp-password",
        "ca_file": server.ca,
        "timeout_s": 10,
        "send_resolved": True,  # the tests' notifications tell a resolved alert too (off by default)
    }
    values.update(update)
    return EmailConfig.model_validate(values)


async def test_the_mail_arrives_over_starttls_after_a_login(smtp_server: SmtpServer) -> None:
    n = notification(firing_alert(), resolved_alert())
    delivery = await send(n, mail_config(smtp_server), Secrets({"smtp-password": PASSWORD}), None)
    assert (delivery.type, delivery.status, delivery.skipped) == ("email", 250, False)
    assert "OK queued" in delivery.detail

    [got] = smtp_server.handler.received
    assert got.tls, "the message came before STARTTLS"
    assert got.login == "listenpost"
    assert (got.mail_from, got.rcpt_tos) == ("alerts@listenpost.example", ["cx-leads@example.com", "oncall@example.com"])
    msg = got.message
    assert msg["Subject"] == "[FIRING:1] Angry customer on call c-1042 (+1 more)"
    assert msg["From"] == "listenpost <alerts@listenpost.example>"
    assert msg["To"] == "cx-leads@example.com, oncall@example.com"
    assert msg["Message-ID"] == f"<{n.idempotency_key}@listenpost>"
    assert msg["Date"] == "Tue, 04 Mar 2025 10:16:30 +0000"
    assert msg["X-Listenpost-Status"] == "firing"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().replace("\r\n", "\n") == (
        "FIRING warning: Angry customer on call c-1042\n"
        "Anger held over two windows.\n"
        '  "I have called four times & nobody <fixes> it"\n'
        "  rule: angry-customer, call: c-1042, since 2025-03-04T10:15:00+00:00\n"
        "  https://listenpost.example/explain/in-77\n"
        "  explain: listenpost rules explain in-77.json\n"
        "\n"
        "RESOLVED critical: Caller on hold for 12 minutes\n"
        "  rule: long-hold, since 2025-03-04T10:15:00+00:00\n"
    )
    body = html.get_content()
    assert "<blockquote>I have called four times &amp; nobody &lt;fixes&gt; it</blockquote>" in body
    assert '<a href="https://listenpost.example/explain/in-77">Explain this alert</a>' in body


async def test_a_wrong_password_is_not_retryable_and_not_shown(smtp_server: SmtpServer) -> None:
    wrong = "not-the-password-123"
    with pytest.raises(DeliveryError) as caught:
        await send(notification(), mail_config(smtp_server), Secrets({"smtp-password": wrong}), None)
    error = caught.value
    assert not error.retryable and error.status == 535
    assert error.message.startswith(f"SMTP server 127.0.0.1:{smtp_server.port} refused the login: 535")
    assert wrong not in str(error) + repr(error) and PASSWORD not in str(error)
    assert smtp_server.handler.received == []


async def test_a_certificate_that_does_not_verify_is_not_retryable(smtp_server: SmtpServer) -> None:
    config = mail_config(smtp_server, ca_file=None)  # the system's roots do not know our test CA
    with pytest.raises(DeliveryError, match=r"TLS with SMTP server .* failed: certificate verify failed \(") as caught:
        await send(notification(), config, Secrets({"smtp-password": PASSWORD}), None)
    assert not caught.value.retryable


async def test_a_server_without_starttls_is_refused_when_starttls_is_asked_for(tmp_path: Path) -> None:
    handler = Handler()
    port = free_port()
    controller = aiosmtpd_controller.Controller(handler, hostname="127.0.0.1", port=port)  # plain SMTP, no TLS
    controller.start()
    try:
        config = EmailConfig(name="m", host="127.0.0.1", port=port, sender="a@example.com", to=["b@example.com"])
        with pytest.raises(DeliveryError, match="STARTTLS") as caught:
            await send(notification(), config, Secrets(), None)
        assert not caught.value.retryable
        assert handler.received == []
        # Without STARTTLS (a loopback relay), and without a password, it goes.
        plain = config.model_copy(update={"starttls": False})
        delivery = await send(notification(), plain, Secrets(), None)
        assert delivery.status == 250 and len(handler.received) == 1 and not handler.received[0].tls
    finally:
        controller.stop()


async def test_connection_refused_is_retryable() -> None:
    config = EmailConfig(name="m", host="127.0.0.1", port=free_port(), sender="a@example.com", to=["b@example.com"], timeout_s=5)
    with pytest.raises(DeliveryError, match="could not reach SMTP server") as caught:
        await send(notification(), config, Secrets(), None)
    assert caught.value.retryable


def test_a_password_is_only_sent_over_tls() -> None:
    with pytest.raises(ValueError, match="a password is only sent over TLS"):
        EmailConfig(name="m", host="h", sender="a@example.com", to=["b@example.com"], starttls=False,
                    username="u", password_secret="p")  # fmt: skip
    with pytest.raises(ValueError, match="is not one e-mail address"):
        EmailConfig(name="m", host="h", sender="a@example.com", to=["b@example.com\r\nBcc: x@evil.example"])
