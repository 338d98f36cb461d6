"""End to end, on the running service (nats-server, Ray Serve, the RulesEngine and Notifier
deployments): an event that a shipped rule turns into an alert reaches a webhook receiver once,
signed, with the alert's labels.

The session's service (tests/conftest.py) runs the Notifier with a notification file that sends
every alert to ``notify_receiver``, a local HTTP server, its URL and Standard Webhooks signing
key given as ``notify.secrets``. The captioned event is published straight to
``<prefix>.captioned`` (as tests/test_rules_e2e.py does): the shipped ``gunshot-or-explosion``
rule (router_rules/security.yaml) reads its sound events, which no tiny captioner would make.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import NOTIFY_SIGNING_SECRET
from nats.aio.client import Client as NATS
from notify_fixtures import RecordingServer, Request

from services.events.binding import new_event
from services.events.connection import connect
from services.events.jetstream import publish_event
from services.ingest.auth import verify_webhook
from services.settings import Settings, webhook_secret_key

pytestmark = pytest.mark.e2e
CAPTIONED = "com.listenpost.audio.captioned"


@pytest.fixture
async def nc(service: Settings) -> AsyncIterator[NATS]:
    client = await connect(service.nats, role="admin", name="notify-e2e")
    yield client
    await client.drain()


async def publish_gunshot(nc: NATS, settings: Settings, callid: str) -> str:
    data = {
        "source_event": {"id": f"in-{callid}", "source": "/e2e", "type": "com.listenpost.audio.submitted"},
        "context": {"callid": callid},
        "caption": "A loud bang, then silence.",
        "windows": [{"index": 0, "start": 60.0, "end": 90.0, "channel": 1, "role": "customer", "caption": "A bang."}],
        "facets": {
            "emotions": [],
            "sound_events": [{"label": "gunshot", "confidence": 0.8, "window": 0, "start": 72.5, "end": 73.0, "span": "a loud bang"}],
            "languages": ["en"],
        },
        "acoustics": {
            "duration_s": 90.0,
            "silence_ratio": 0.05,
            "longest_silence_s": 0.5,
            "dead_air_s": 0.0,
            "peak_dbfs": -6.0,
            "channels": [],
        },
    }
    event = new_event(CAPTIONED, "urn:test:notify-e2e", data, extensions={"callid": callid})
    await publish_event(nc.jetstream(), settings.nats.subject("captioned"), event, msg_id=event.get_id())
    return str(event.get_id())


def about(server: RecordingServer, callid: str) -> list[Request]:
    """The requests whose notification carries an alert of this call (other tests' alerts come too)."""
    found = []
    for request in list(server.requests):
        try:
            alerts = json.loads(request.body)["alerts"]
        except (ValueError, KeyError, TypeError):
            continue
        if any(alert.get("callid") == callid for alert in alerts):
            found.append(request)
    return found


async def notifier_status() -> dict[str, Any]:
    from ray import serve

    handle = serve.get_deployment_handle("Notifier", app_name="listenpost")
    return await handle.status.remote()


async def test_an_alert_reaches_the_webhook_exactly_once_signed_with_its_labels(
    service: Settings, nc: NATS, notify_receiver: RecordingServer
) -> None:
    callid = f"notify-e2e-{uuid.uuid4().hex[:12]}"
    captioned_id = await publish_gunshot(nc, service, callid)

    async with asyncio.timeout(60):
        while not about(notify_receiver, callid):
            await asyncio.sleep(0.2)
    # A duplicate would come within moments (a redelivery, a second queuer): wait for one.
    await asyncio.sleep(5)
    (request,) = about(notify_receiver, callid)

    assert request.method == "POST" and request.path == "/hook" and request.status == 200
    # Signed with the secret from settings, as the ingress verifies (raises if not).
    verify_webhook(webhook_secret_key(NOTIFY_SIGNING_SECRET), request.body, request.headers, now=time.time(), tolerance_s=300)
    assert request.headers["ce-type"] == "com.listenpost.notification"
    assert request.headers["ce-id"] == request.headers["webhook-id"]
    notification = json.loads(request.body)
    assert notification["receiver"] == "e2e-webhook" and notification["status"] == "firing"
    (alert,) = notification["alerts"]
    assert alert["labels"] == {"rule": "gunshot-or-explosion", "severity": "critical", "team": "security", "callid": callid}
    assert alert["rule_id"] == "gunshot-or-explosion" and alert["callid"] == callid
    assert alert["annotations"]["summary"] == f"Possible gunshot on call {callid} at 01:12"
    assert alert["input_id"] in (f"in-{callid}", captioned_id)

    # The deployment's status: its receiver, nothing left queued, no reload error, no missing secret.
    status = await notifier_status()
    assert status["receivers"] == ["e2e-webhook"] and status["consuming"] is True
    assert status["last_reload_error"] is None and status["missing_secrets"] == [] and status["failure"] is None
    assert status["queued"] == 0
