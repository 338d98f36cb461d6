"""Receivers against real HTTP servers on loopback: the exact requests they make, the
webhook's signature checked by the ingress's own verification, how failures are classified,
and that no secret reaches an error, a repr or a log line."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from notify_fixtures import RecordingServer, Reply, capture_http_log, firing_alert, http_server, notification, resolved_alert
from pydantic import TypeAdapter, ValidationError

from services.events.binding import decode
from services.events.webhooks import sign_webhook
from services.ingest.auth import Unauthorized, verify_webhook
from services.notify.config import receiver_types
from services.notify.model import Notification
from services.notify.receivers import (
    RECEIVER_CONFIGS,
    SENDERS,
    AlertmanagerConfig,
    DeliveryError,
    MSTeamsConfig,
    PagerDutyConfig,
    ReceiverConfig,
    Secrets,
    SlackConfig,
    WebhookConfig,
    missing_secrets,
    secret_names,
    send,
)
from services.notify.receivers import alertmanager as am_receiver
from services.notify.receivers.base import parse_retry_after
from services.notify.receivers.webhook import EVENT_TYPE
from services.settings import webhook_secret_key

__all__ = ["http_server"]  # the fixture, imported for pytest

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks examples' secret
SLACK_TOKEN = "T0001/B0002/XyZsEcReTtOkEn123456"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefabcdef"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def two_alerts() -> Notification:
    return notification(firing_alert(), resolved_alert())


# --- webhook: a CloudEvent, signed the way the ingress verifies -----------------------------


async def test_webhook_posts_a_binary_mode_cloudevent_signed_as_the_ingress_verifies(
    http_server: RecordingServer, client: httpx.AsyncClient
) -> None:
    n = two_alerts()
    config = WebhookConfig(name="hook", url=f"{http_server.url}/hooks/listenpost", signing_secret="hook-signing")
    delivery = await send(n, config, Secrets({"hook-signing": WHSEC}), client)
    assert (delivery.receiver, delivery.type, delivery.status, delivery.requests) == ("hook", "webhook", 200, 1)

    [request] = http_server.requests
    assert request.path == "/hooks/listenpost"
    data = {**n.model_dump(mode="json"), "status": "firing"}
    assert json.loads(request.body) == data
    assert request.headers["content-type"] == "application/json"
    # Two alerts, one without a call id: no callid extension.
    assert {k: v for k, v in request.headers.items() if k.startswith("ce-")} == {
        "ce-specversion": "1.0",
        "ce-id": n.idempotency_key,
        "ce-source": "/listenpost/notify",
        "ce-type": EVENT_TYPE,
        "ce-time": "2025-03-04T10:16:30Z",
        "ce-subject": "ops",
    }
    # The signature: the ingress's own check accepts it, and refuses it for another body.
    assert request.headers["webhook-id"] == n.idempotency_key
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 30
    assert request.headers["webhook-signature"].startswith("v1,")
    key = webhook_secret_key(WHSEC)
    verify_webhook(key, request.body, request.headers, now=time.time(), tolerance_s=300)
    with pytest.raises(Unauthorized, match="no webhook-signature matches"):
        verify_webhook(key, request.body + b" ", request.headers, now=time.time(), tolerance_s=300)
    # And the event reads back, by the same binding the ingress reads with.
    event = decode(request.body, request.headers)
    assert (event.get_type(), event.get_id(), event.get_data()) == (EVENT_TYPE, n.idempotency_key, data)


async def test_webhook_structured_mode_and_a_url_from_a_secret(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    n = notification(firing_alert())
    config = WebhookConfig(name="hook", url_secret="hook-url", mode="structured", source="urn:listenpost:prod",
                           headers={"x-team": "cx-ops"})  # fmt: skip
    await send(n, config, Secrets({"hook-url": f"{http_server.url}/in?token=abcdef123456"}), client)
    [request] = http_server.requests
    assert request.path == "/in?token=abcdef123456"
    assert request.headers["content-type"] == "application/cloudevents+json; charset=utf-8"
    assert request.headers["x-team"] == "cx-ops"
    assert "webhook-signature" not in request.headers
    assert json.loads(request.body) == {
        "specversion": "1.0",
        "id": n.idempotency_key,
        "source": "urn:listenpost:prod",
        "type": EVENT_TYPE,
        "time": "2025-03-04T10:16:30Z",
        "datacontenttype": "application/json",
        "subject": "ops",
        "callid": "c-1042",
        "data": {**n.model_dump(mode="json"), "status": "firing"},
    }


def test_signing_matches_the_standard_webhooks_example() -> None:
    # The specification's example (the ingress's verification is tested against the same one).
    key = webhook_secret_key(WHSEC)
    assert key == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    headers = sign_webhook(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_webhook_config_wants_one_url_and_leaves_its_own_headers_alone() -> None:
    with pytest.raises(ValidationError, match="exactly one of url and url_secret"):
        WebhookConfig(name="hook")
    with pytest.raises(ValidationError, match="headers may not set Authorization, ce-id"):
        WebhookConfig(name="hook", url="http://x", headers={"Authorization": "Bearer x", "ce-id": "1"})


async def test_a_signing_secret_that_is_not_whsec_fails_without_retry(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    config = WebhookConfig(name="hook", url=http_server.url, signing_secret="bad")
    with pytest.raises(DeliveryError) as caught:
        await send(notification(), config, Secrets({"bad": "not-a-webhook-secret-at-all"}), client)
    assert not caught.value.retryable
    assert "secret 'bad' is not a Standard Webhooks secret: it must start with 'whsec_'" in str(caught.value)
    assert "not-a-webhook-secret-at-all" not in str(caught.value)
    assert http_server.requests == []


# --- slack, msteams, pagerduty: exact payloads ---------------------------------------------

SLACK_TEXT = (
    "*FIRING* `warning` Angry customer on call c-1042\n"
    "> I have called four times &amp; nobody &lt;fixes&gt; it\n"
    "rule `angry-customer` · call `c-1042` · <https://listenpost.example/explain/in-77|explain>\n"
    "\n"
    "*RESOLVED* `critical` Caller on hold for 12 minutes\n"
    "rule `long-hold`"
)


async def test_slack_posts_text_and_blocks_to_the_url_in_its_secret(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    config = SlackConfig(name="slack-ops", url_secret="slack-ops", channel="#cx-alerts", send_resolved=True)
    delivery = await send(two_alerts(), config, Secrets({"slack-ops": f"{http_server.url}/services/{SLACK_TOKEN}"}), client)
    assert delivery.status == 200
    [request] = http_server.requests
    assert request.path == f"/services/{SLACK_TOKEN}"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    title = "[FIRING:1] Angry customer on call c-1042 (+1 more)"
    assert json.loads(request.body) == {
        "text": title,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": SLACK_TEXT}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "<https://listenpost.example/explain/in-77|explain>"}]},
        ],
        "channel": "#cx-alerts",
    }


async def test_slack_templates_override_the_defaults(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    config = SlackConfig(
        name="slack-ops",
        url_secret="slack-ops",
        send_resolved=True,
        template={
            "title": "{{ alerts | length }} on {{ group_labels.queue }}",
            "text": "{% for a in alerts %}{{ a.callid or '-' }} {% endfor %}",
        },
    )
    await send(two_alerts(), config, Secrets({"slack-ops": f"{http_server.url}/services/{SLACK_TOKEN}"}), client)
    body = json.loads(http_server.requests[0].body)
    assert body["text"] == "2 on billing"
    assert body["blocks"][1]["text"]["text"] == "c-1042 -"


ADAPTIVE_TEXT = (
    "**FIRING** warning: Angry customer on call c-1042\n\n"
    "> I have called four times & nobody <fixes> it\n\n"
    "rule angry-customer · call c-1042 · `listenpost rules explain in-77.json`\n\n"
    "**RESOLVED** critical: Caller on hold for 12 minutes\n\n"
    "rule long-hold"
)


async def test_msteams_posts_an_adaptive_card(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    config = MSTeamsConfig(name="teams", url_secret="teams-url")
    await send(two_alerts(), config, Secrets({"teams-url": f"{http_server.url}/workflows/abc123456"}), client)
    [request] = http_server.requests
    assert json.loads(request.body) == {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "msteams": {"width": "Full"},
                    "body": [
                        {"type": "TextBlock", "text": "[FIRING:1] Angry customer on call c-1042 (+1 more)", "weight": "Bolder",
                         "size": "Medium", "wrap": True, "style": "heading", "color": "Warning"},  # fmt: skip
                        {"type": "TextBlock", "text": ADAPTIVE_TEXT, "wrap": True},
                    ],
                    "actions": [{"type": "Action.OpenUrl", "title": "Explain", "url": "https://listenpost.example/explain/in-77"}],
                },
            }
        ],
    }


async def test_msteams_message_card_escapes_html(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    config = MSTeamsConfig(name="teams", url_secret="teams-url", card="message")
    await send(notification(resolved_alert()), config, Secrets({"teams-url": f"{http_server.url}/webhookb2/x"}), client)
    assert json.loads(http_server.requests[0].body) == {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "themeColor": "2EB886",
        "summary": "[RESOLVED] Caller on hold for 12 minutes",
        "title": "[RESOLVED] Caller on hold for 12 minutes",
        "text": "<b>RESOLVED</b> critical: Caller on hold for 12 minutes<br>\nrule long-hold<br><br>",
    }
    config = MSTeamsConfig(name="teams", url_secret="teams-url", card="message")
    await send(notification(firing_alert()), config, Secrets({"teams-url": f"{http_server.url}/webhookb2/x"}), client)
    text = json.loads(http_server.requests[1].body)["text"]
    assert "<i>\"I have called four times &amp; nobody &lt;fixes&gt; it\"</i>" in text.replace("&#34;", '"')


async def test_pagerduty_sends_one_event_per_alert_deduplicated_by_fingerprint(
    http_server: RecordingServer, client: httpx.AsyncClient
) -> None:
    http_server.replies = [Reply(202, b'{"status":"success","dedup_key":"3f9a1c0e7b2d4a55"}')] * 2
    config = PagerDutyConfig(name="pd", routing_key_secret="pd-key", url=f"{http_server.url}/v2/enqueue", component="cx")
    delivery = await send(two_alerts(), config, Secrets({"pd-key": ROUTING_KEY}), client)
    assert (delivery.status, delivery.requests) == (202, 2)
    assert [r.path for r in http_server.requests] == ["/v2/enqueue", "/v2/enqueue"]
    trigger, resolve = (json.loads(r.body) for r in http_server.requests)
    assert trigger == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "3f9a1c0e7b2d4a55",
        "payload": {
            "summary": "Angry customer on call c-1042",
            "source": "listenpost",
            "severity": "warning",
            "timestamp": "2025-03-04T10:15:00Z",
            "class": "angry-customer",
            "component": "cx",
            "custom_details": {
                "labels": {"rule": "angry-customer", "severity": "warning", "queue": "billing"},
                "annotations": {"summary": "Angry customer on call c-1042", "description": "Anger held over two windows."},
                "rule_id": "angry-customer",
                "ruleset_version": "rs-12",
                "decision_id": "dec-1",
                "caption_span": "I have called four times & nobody <fixes> it",
                "callid": "c-1042",
                "input_id": "in-77",
                "explain": "listenpost rules explain in-77.json",
            },
        },
        "client": "listenpost",
        "links": [{"href": "https://listenpost.example/explain/in-77", "text": "Explain this alert"}],
    }
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "77e0b5d1c2a39f10"}


def test_pagerduty_severity_mapping_and_summary_template() -> None:
    from services.notify.receivers.pagerduty import payload

    config = PagerDutyConfig(name="pd", routing_key_secret="k", severity_map={"warning": "error"}, default_severity="info",
                             template={"summary": "[{{ alert.severity }}] {{ alert.summary }} ({{ status }})"})  # fmt: skip
    events = payload(notification(firing_alert(), firing_alert(fingerprint="f2", labels={"severity": "page"})), config, "k")
    assert [e["payload"]["severity"] for e in events] == ["error", "info"]
    assert events[0]["payload"]["summary"] == "[warning] Angry customer on call c-1042 (firing)"


def test_alertmanager_payload_ends_resolved_alerts_and_optionally_firing_ones() -> None:
    config = AlertmanagerConfig(name="am", url="http://am:9093/", extra_labels={"source": "listenpost", "queue": "x"},
                                firing_ttl=timedelta(hours=1))  # fmt: skip
    assert config.alerts_url == "http://am:9093/api/v2/alerts"
    now = datetime(2025, 3, 4, 11, 0, tzinfo=UTC)
    firing, resolved, open_ended = am_receiver.payload(
        notification(firing_alert(), resolved_alert(), resolved_alert(fingerprint="f3", ends_at=None)), config, now=now
    )
    assert firing["labels"] == {"source": "listenpost", "alertname": "angry-customer", "rule": "angry-customer",
                                "severity": "warning", "queue": "billing"}  # fmt: skip
    assert firing["endsAt"] == "2025-03-04T11:15:00Z"  # starts_at + firing_ttl
    assert resolved["endsAt"] == "2025-03-04T10:16:00Z"
    assert open_ended["endsAt"] == "2025-03-04T11:00:00Z"
    assert firing["annotations"]["caption_span"] == "I have called four times & nobody <fixes> it"


# --- the dispatcher, config parsing, send_resolved -----------------------------------------


def test_receiver_configs_parse_by_type_and_list_their_secrets() -> None:
    adapter = TypeAdapter(list[ReceiverConfig])
    configs = adapter.validate_python([
        {"type": "webhook", "name": "hook", "url": "https://h.example/in", "signing_secret": "hook-sign"},
        {"type": "slack", "name": "slack", "url_secret": "slack-url"},
        {"type": "msteams", "name": "teams", "url_secret": "teams-url", "card": "message"},
        {"type": "pagerduty", "name": "pd", "routing_key_secret": "pd-key"},
        {"type": "email", "name": "mail", "host": "smtp.example", "sender": "a@example.com", "to": ["b@example.com"],
         "username": "a", "password_secret": "smtp-pass"},
        {"type": "alertmanager", "name": "am", "url": "http://am:9093", "bearer_token_secret": "am-token"},
    ])  # fmt: skip
    assert [type(c) for c in configs] == list(RECEIVER_CONFIGS.values())
    assert set(SENDERS) == set(RECEIVER_CONFIGS)
    assert [secret_names(c) for c in configs] == [["hook-sign"], ["slack-url"], ["teams-url"], ["pd-key"], ["smtp-pass"], ["am-token"]]
    assert missing_secrets(configs[1], Secrets({"other": "x" * 10})) == ["slack-url"]
    with pytest.raises(ValidationError, match="url_secret"):
        adapter.validate_python([{"type": "slack", "name": "s", "url": "https://hooks.slack.com/services/x"}])
    with pytest.raises(ValidationError, match="not a secret name"):
        SlackConfig(name="s", url_secret="https://hooks.slack.com/services/T/B/secret")  # a value where a name goes


def test_chat_and_mail_are_not_told_of_resolved_alerts_unless_asked_as_in_alertmanager() -> None:
    defaults = {t: c.model_fields["send_resolved"].default for t, c in receiver_types().items()}
    assert defaults == {"webhook": True, "slack": False, "msteams": True, "pagerduty": True, "email": False, "alertmanager": True}


async def test_resolved_only_notifications_are_skipped_without_send_resolved(
    http_server: RecordingServer, client: httpx.AsyncClient
) -> None:
    config = SlackConfig(name="s", url_secret="u", send_resolved=False)
    secrets = Secrets({"u": f"{http_server.url}/services/{SLACK_TOKEN}"})
    delivery = await send(notification(resolved_alert()), config, secrets, client)
    assert delivery.skipped and delivery.requests == 0 and http_server.requests == []
    await send(two_alerts(), config, secrets, client)
    assert "RESOLVED" not in http_server.requests[0].body.decode()


def test_secrets_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "slack-ops").write_text("https://hooks.slack.com/services/T/B/abc\n")
    (tmp_path / "..data").mkdir()
    (tmp_path / "pd-key").write_text(ROUTING_KEY)
    secrets = Secrets.from_directory(tmp_path).merged(Secrets({"pd-key": "override-123"}))
    assert sorted(secrets) == ["pd-key", "slack-ops"]
    assert secrets.reveal("slack-ops") == "https://hooks.slack.com/services/T/B/abc"
    assert secrets.reveal("pd-key") == "override-123"
    assert repr(secrets) == "Secrets(names=['pd-key', 'slack-ops'])"
    with pytest.raises(ValueError, match="cannot read the secrets directory"):
        Secrets.from_directory(tmp_path / "nope")


# --- failures: retryable or not, Retry-After, no secrets -----------------------------------


def slack_to(server: RecordingServer, timeout_s: float = 5.0) -> tuple[SlackConfig, Secrets]:
    return SlackConfig(name="slack-ops", url_secret="slack-ops", timeout_s=timeout_s), Secrets(
        {"slack-ops": f"{server.url}/services/{SLACK_TOKEN}"}
    )


async def attempt(server: RecordingServer, client: httpx.AsyncClient, *replies: Reply, timeout_s: float = 5.0) -> DeliveryError:
    server.replies = list(replies)
    config, secrets = slack_to(server, timeout_s)
    with pytest.raises(DeliveryError) as caught:
        await send(notification(), config, secrets, client)
    return caught.value


async def test_5xx_is_retryable(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    error = await attempt(http_server, client, Reply(500, b"internal_error"))
    assert (error.retryable, error.status, error.retry_after_s, error.response_excerpt) == (True, 500, None, "internal_error")
    port = http_server.url.rsplit(":", 1)[1]
    assert str(error) == (
        f"receiver 'slack-ops': http://127.0.0.1:{port} (URL of secret 'slack-ops') answered HTTP 500 "
        "Internal Server Error: internal_error"
    )


async def test_429_is_retryable_after_what_retry_after_says(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    error = await attempt(http_server, client, Reply(429, b"rate_limited", {"Retry-After": "30"}))
    assert (error.retryable, error.status, error.retry_after_s) == (True, 429, 30.0)
    assert "(retry after 30 s)" in error.message
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    error = await attempt(http_server, client, Reply(503, b"", {"Retry-After": later}))
    assert error.retryable and error.retry_after_s is not None and 110 <= error.retry_after_s <= 120


def test_retry_after_forms() -> None:
    now = datetime(2025, 3, 4, 10, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Tue, 04 Mar 2025 10:01:30 GMT", now) == 90.0
    assert parse_retry_after("Tue, 04 Mar 2025 09:00:00 GMT", now) == 0.0  # in the past: now
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


async def test_4xx_is_not_retryable_and_408_is(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    error = await attempt(http_server, client, Reply(400, b"invalid_payload"))
    assert (error.retryable, error.status, error.response_excerpt) == (False, 400, "invalid_payload")
    error = await attempt(http_server, client, Reply(404, b"no_service"))
    assert not error.retryable
    error = await attempt(http_server, client, Reply(408, b""))
    assert error.retryable


async def test_a_timeout_is_retryable(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    error = await attempt(http_server, client, Reply(200, b"ok", delay_s=1.5), timeout_s=0.3)
    assert error.retryable and error.status is None
    assert "no answer from" in error.message and "within 0.3 s" in error.message


async def test_connection_refused_is_retryable(client: httpx.AsyncClient) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = PagerDutyConfig(name="pd", routing_key_secret="pd-key", url=f"http://127.0.0.1:{port}/v2/enqueue")
    with pytest.raises(DeliveryError) as caught:
        await send(notification(), config, Secrets({"pd-key": ROUTING_KEY}), client)
    assert caught.value.retryable
    assert caught.value.message.startswith(f"could not reach http://127.0.0.1:{port}/v2/enqueue: ")


async def test_a_missing_secret_or_a_secret_that_is_no_url_is_not_retryable(client: httpx.AsyncClient) -> None:
    with pytest.raises(DeliveryError, match="secret 'slack-ops' is not configured") as caught:
        await send(notification(), SlackConfig(name="s", url_secret="slack-ops"), Secrets(), client)
    assert not caught.value.retryable
    with pytest.raises(DeliveryError, match="is not an http or https URL") as caught:
        await send(notification(), SlackConfig(name="s", url_secret="u"), Secrets({"u": "ftp://files.example/x/secret-path"}), client)
    assert not caught.value.retryable and "secret-path" not in str(caught.value)


async def test_secrets_reach_no_error_repr_or_log(
    http_server: RecordingServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    capture_http_log(caplog)
    secrets = Secrets({"slack-ops": f"{http_server.url}/services/{SLACK_TOKEN}", "pd-key": ROUTING_KEY, "sign": WHSEC})
    # A server that echoes what it was sent: the URL's path, and the PagerDuty routing key.
    http_server.replies = [
        Reply(404, f"no such hook: /services/{SLACK_TOKEN}".encode()),
        Reply(400, json.dumps({"status": "invalid event", "routing_key": ROUTING_KEY}).encode()),
    ]
    errors = []
    for config in (SlackConfig(name="s", url_secret="slack-ops"),
                   PagerDutyConfig(name="pd", routing_key_secret="pd-key", url=f"{http_server.url}/v2/enqueue")):  # fmt: skip
        with pytest.raises(DeliveryError) as caught:
            await send(notification(), config, secrets, client)
        errors.append(caught.value)
    assert errors[0].message.endswith("no such hook: <secret>")  # the path alone is the credential too
    assert '"routing_key": "<secret>"' in errors[1].response_excerpt
    shown = " ".join([*(str(e) for e in errors), *(repr(e) for e in errors), *(e.response_excerpt for e in errors),
                      repr(secrets), str(secrets), repr(SlackConfig(name="s", url_secret="slack-ops")), caplog.text])  # fmt: skip
    assert "HTTP Request: POST" in caplog.text  # httpx did log the requests ...
    for value in (SLACK_TOKEN, ROUTING_KEY, WHSEC):
        assert value not in shown  # ... but not the secrets in them


async def test_every_sender_has_the_same_signature(http_server: RecordingServer, client: httpx.AsyncClient) -> None:
    config = AlertmanagerConfig(name="am", url=http_server.url)
    delivery = await SENDERS["alertmanager"](notification(), config, Secrets(), client)
    assert delivery.status == 200 and http_server.requests[0].path == "/api/v2/alerts"
