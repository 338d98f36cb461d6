"""Delivery that never loses a notification and never spams, against a real nats-server (hardened:
TLS, an NKey identity per role, the notifier running as its own ``notify`` role) and real HTTP
servers on loopback that check the idempotency key (``webhook-id``) as an idempotent receiver does.

Fault tests (issue 14): a receiver that answers 500 then 200 gets exactly one notification per
alert; one that hangs is timed out and retried; one that is down for the whole run ends with its
notifications dead-lettered, then replayed once it is up; a sender restarted mid-run loses none
and duplicates none; a 429's Retry-After is waited out; inhibited alerts and muted routes make
no notification.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from notify_fixtures import RecordingServer, Reply, capture_http_log

from services.events.audit import Actor, list_records
from services.events.binding import new_event
from services.events.connection import connect
from services.events.embedded import EmbeddedNatsServer, free_port
from services.events.erasure import ErasureReport, erase_call
from services.events.jetstream import notify_subject, provision_everything, publish_event
from services.events.kv import bucket_values
from services.events.notifier_status import write_notifier_status
from services.events.webhooks import verify_webhook_signature
from services.metrics import MemoryBackend
from services.metricsview.receivers import receivers_table
from services.notify.deadletters import list_entries, replay_notifications
from services.notify.groups import AggregationGroup
from services.notify.queue import NotificationFailed, failed_event, read_queued
from services.notify.receivers import Secrets
from services.notify.service import Notifier
from services.notify.status import ReceiverStats, per_receiver, receiver_rows, receiver_status
from services.rules.decisions import ALERT_RAISED, fingerprint
from services.settings import NatsSettings, NotifySettings, Settings, webhook_secret_key

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRETS = Secrets({"hook-signing": WHSEC})
BASE = Settings(_env_file=None)


def notification_file(directory: Path, url: str, *, timeout_s: float = 2.0, extra: str = "", url_secret: bool = False) -> Path:
    """One webhook receiver, `hook` (its URL a secret, `hook-url`, when ``url_secret``); a muted
    route for team qa; a gunshot inhibits screaming on the same call."""
    where = "url_secret: hook-url" if url_secret else f'url: "{url}/hook"'
    path = directory / "notifications.yaml"
    path.write_text(f"""
apiVersion: listenpost/v1
kind: Notifications
route:
  receiver: hook
  group_by: [callid]
  group_wait: 0s
  group_interval: 1s
  routes:
    - matchers: ['team="qa"']
      receiver: hook
      mute_time_intervals: [always]
receivers:
  - name: hook
    type: webhook
    {where}
    signing_secret: hook-signing
    timeout_s: {timeout_s}
inhibit_rules:
  - source_matchers: ['rule="gunshot"']
    target_matchers: ['rule="screaming"']
    equal: [callid]
time_intervals:
  - name: always
    time_intervals:
      - weekdays: ['sunday:saturday']
{extra}""")
    return path


@dataclass
class Env:
    server: EmbeddedNatsServer
    settings: Settings
    admin: NATS
    tmp: Path

    def with_file(self, path: Path, **notify: Any) -> Settings:
        # Aggregation groups are looked at every 0.1 s: a group_wait of 0s sends within that.
        update = {**self.settings.notify.model_dump(), "file": path, "flush_interval_s": 0.1, **notify}
        return self.settings.model_copy(update={"notify": NotifySettings.model_validate(update)})

    async def decide(self, rule: str, callid: str, *, team: str = "security", event_id: str | None = None,
                     msg_id: str | None = None) -> str:  # fmt: skip
        """Publish an alert decision as the rules engine does (its id, data and subject)."""
        labels = {"team": team, "callid": callid}
        event_id = event_id or f"dec-{rule}-{callid}"
        data = {
            "source_event": {"id": f"in-{callid}", "source": "urn:test", "type": "com.listenpost.audio.captioned"},
            "rule_id": rule, "description": f"{rule} heard", "owner": "cx", "ruleset_version": "rs-1",
            "severity": "critical", "summary": f"{rule} on call {callid}", "labels": labels,
            "fingerprint": fingerprint(rule, labels), "callid": callid, "evidence": {"span": "help"},
        }  # fmt: skip
        event = new_event(ALERT_RAISED, "urn:listenpost", data, id=event_id, subject=rule,
                          extensions={"callid": callid, "rulesetver": "rs-1"})  # fmt: skip
        await publish_event(self.admin.jetstream(), self.settings.nats.subject("alerts", "critical"), event,
                            msg_id=msg_id or event_id)  # fmt: skip
        return event_id

    async def pending(self, stream: str, durable: str) -> int:
        info = await self.admin.jetstream().consumer_info(stream, durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def idle(self) -> None:
        """Every decision handled and every queued notification delivered or dead-lettered."""
        notify = self.settings.notify

        async def decided() -> bool:
            return await self.pending(self.settings.nats.out_stream, notify.queue_durable) == 0

        async def sent() -> bool:
            return await self.pending(notify.stream, notify.send_durable) == 0

        await until(decided, timeout_s=30)
        await asyncio.sleep(0.5)  # the groups' next looks (every 0.1 s) queue what is due
        await until(sent, timeout_s=30)


async def until(condition: Callable[[], Awaitable[bool] | bool], *, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)




@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    root = tmp_path / "nats"
    with EmbeddedNatsServer(root / "data", secrets_dir=root / "secrets", tls=True, settings=BASE) as server:
        nats = server.client_settings(NatsSettings(ack_wait_s=2.0, max_deliver=5, retry_delay_s=0.2, retry_delay_max_s=1.0))
        notify = NotifySettings(backoff_base_s=0.2, backoff_max_s=0.5, max_attempts=3, max_age_s=120, reload_interval_s=0.2,
                                concurrency=2)  # fmt: skip
        settings = Settings(_env_file=None, nats=nats, notify=notify)
        admin = await connect(nats, role="admin", name="test-notify-admin")
        await provision_everything(admin.jetstream(), settings)
        try:
            yield Env(server, settings, admin, tmp_path)
        finally:
            await admin.close()


@pytest.fixture
def receiver() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


async def start_notifier(
    env: Env, settings: Settings, *, queue: bool = True, send: bool = True, secrets: Secrets = SECRETS
) -> tuple[Notifier, NATS]:
    nc = await connect(settings.nats, role="notify", name="test-notifier")
    notifier = Notifier(nc.jetstream(), settings, secrets=secrets, queue=queue, send=send)
    await notifier.start()
    return notifier, nc


async def stop_notifier(notifier: Notifier, nc: NATS) -> None:
    await notifier.stop(drain_timeout_s=5)
    await nc.close()


def accepted(server: RecordingServer) -> list[str]:
    """The webhook-ids the receiving end accepted (answered 2xx), in order, repeats included."""
    return [r.headers["webhook-id"] for r in server.requests if 200 <= r.status < 300]


def assert_signed(server: RecordingServer) -> None:
    key = webhook_secret_key(WHSEC)
    for request in server.requests:
        verify_webhook_signature(key, request.body, request.headers, now=time.time(), tolerance_s=300)


# --- faults --------------------------------------------------------------------------------------


async def test_500_then_200_gets_exactly_one_notification_per_alert(
    env: Env, receiver: RecordingServer, memory: MemoryBackend
) -> None:
    settings = env.with_file(notification_file(env.tmp, receiver.url))
    receiver.replies = [Reply(500, b"internal error")]
    notifier, nc = await start_notifier(env, settings)
    try:
        for callid in ("c-1", "c-2", "c-3"):
            await env.decide("gunshot", callid)
        # The same decision stored again (a rules engine that republished it after OUT's dedup
        # window): the notification's own Nats-Msg-Id keeps it from being queued twice.
        await env.decide("gunshot", "c-1", msg_id="republished")
        await until(lambda: len(set(accepted(receiver))) == 3)
        await env.idle()
    finally:
        await stop_notifier(notifier, nc)
    ids = accepted(receiver)
    assert len(ids) == 3 and len(set(ids)) == 3, ids  # exactly one per alert
    assert len(receiver.requests) == 4 and receiver.requests[0].status == 500
    assert receiver.requests[0].headers["webhook-id"] in ids  # the retry is the same notification
    assert {json.loads(r.body)["alerts"][0]["callid"] for r in receiver.requests} == {"c-1", "c-2", "c-3"}
    assert_signed(receiver)
    assert memory.get("listenpost_notifications_queued", receiver="hook") == 3
    assert memory.get("listenpost_notifications_sent", receiver="hook") == 3
    assert memory.get("listenpost_notifications_retried", receiver="hook", reason="unavailable") == 1
    assert len(memory.get("listenpost_notification_delivery_seconds", receiver="hook")) == 3
    # Work-queue retention: a delivered notification leaves the stream.
    assert (await env.admin.jetstream().stream_info(settings.notify.stream)).state.messages == 0


async def test_a_hanging_receiver_is_timed_out_and_retried(env: Env, receiver: RecordingServer, memory: MemoryBackend) -> None:
    settings = env.with_file(notification_file(env.tmp, receiver.url, timeout_s=0.5))
    receiver.replies = [Reply(delay_s=5.0)]
    notifier, nc = await start_notifier(env, settings)
    try:
        await env.decide("gunshot", "c-1")
        await until(lambda: len(receiver.requests) == 2 and receiver.requests[1].status == 200)
        await env.idle()
    finally:
        await stop_notifier(notifier, nc)
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    # Timed out at the receiver's 0.5 s, then retried after the back-off (0.1 to 0.2 s), not after 5 s.
    assert 0.5 <= second.at - first.at < 4.0
    assert memory.get("listenpost_notifications_retried", receiver="hook", reason="timeout") == 1
    assert memory.get("listenpost_notifications_sent", receiver="hook") == 1


async def test_a_receiver_down_for_the_whole_run_is_dead_lettered_then_replayed(
    env: Env, memory: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there yet
    token = "T0KEN-in-the-path-0123456789"
    secrets = SECRETS.merged(Secrets({"hook-url": f"http://127.0.0.1:{port}/hook/{token}"}))
    settings = env.with_file(notification_file(env.tmp, "", url_secret=True))
    capture_http_log(caplog)
    notifier, nc = await start_notifier(env, settings, secrets=secrets)
    try:
        await env.decide("gunshot", "c-1")
        await env.decide("gunshot", "c-2")
        await env.idle()
    finally:
        await stop_notifier(notifier, nc)
    assert memory.get("listenpost_notifications_dead_lettered", receiver="hook", reason="retries_exhausted") == 2

    operator = await connect(settings.nats, role="operator", name="test-operator")
    try:
        js = operator.jetstream()
        assert await list_entries(js, settings, dead=False) == []
        letters = await list_entries(js, settings, dead=True)
        assert [(e.receiver, e.attempts, e.alerts, e.replayable) for e in letters] == [("hook", 3, 1, True)] * 2
        assert letters[0].reason == "gave up after 3 attempts (notify.max_attempts)"
        # The URL is a secret: errors show its host only, and no log line has its path.
        assert letters[0].last_error.startswith(f"could not reach http://127.0.0.1:{port} (URL of secret 'hook-url'): ")
        assert token not in caplog.text and WHSEC not in caplog.text
        assert {e.summary for e in letters} == {"gunshot on call c-1", "gunshot on call c-2"}
        assert await list_entries(js, settings, dead=True, receiver="other") == []

        up = RecordingServer(port=port)
        try:
            notifier, nc = await start_notifier(env, settings, secrets=secrets)
            report = await replay_notifications(js, settings, all=True)
            assert report.ok and len(report.replayed) == 2 and not report.unaudited
            await until(lambda: len(set(accepted(up))) == 2)
            await env.idle()
            await stop_notifier(notifier, nc)
            assert sorted(accepted(up)) == sorted(e.notification_id for e in letters)  # once each
            assert {r.path for r in up.requests} == {f"/hook/{token}"}
            assert await list_entries(js, settings, dead=True) == []
            # A second replay of the same dead letter finds nothing to send.
            assert (await replay_notifications(js, settings, all=True)).replayed == []
        finally:
            up.close()
        records = await list_records(js, settings.nats, settings.audit, since=letters[0].time, action="notify.replay")
        assert sorted(r.event_id or "" for r in records) == sorted(e.notification_id or "" for e in letters)
        assert "HTTP Request: POST <secret>" in caplog.text and token not in caplog.text  # httpx's own log, redacted
    finally:
        await operator.close()


async def test_a_sender_restarted_mid_run_loses_none_and_duplicates_none(env: Env, receiver: RecordingServer) -> None:
    settings = env.with_file(notification_file(env.tmp, receiver.url))
    receiver.replies = [Reply(delay_s=0.3) for _ in range(40)]  # a slow receiver: deliveries are in flight
    notifier, nc = await start_notifier(env, settings)
    expected = {await env.decide("gunshot", f"c-{i}") for i in range(10)}
    await until(lambda: len(receiver.requests) >= 3)
    # A crash: the connection goes away with deliveries in flight (their acks are lost), and the
    # work in flight is cancelled.
    await nc.close()
    await notifier.stop(drain_timeout_s=0)
    # A request the old sender had written just before it stopped may still be reaching the
    # server (a thread): let it land, so "after the restart" means the new sender's requests.
    await asyncio.sleep(0.5)
    restarted = time.monotonic()
    notifier, nc = await start_notifier(env, settings)
    try:
        await until(lambda: len(set(accepted(receiver))) == 10, timeout_s=40)
        await env.idle()
    finally:
        await stop_notifier(notifier, nc)
    ids = accepted(receiver)
    by_call = {json.loads(r.body)["alerts"][0]["decision_id"]: r.headers["webhook-id"] for r in receiver.requests}
    assert set(by_call) == expected and set(ids) == set(by_call.values())  # none lost
    # None duplicated: the new sender sends each notification once. Only those the crash caught
    # in flight (sent, not acked) come again, with the same idempotency key, which the receiving
    # end recognises as a repeat.
    after = Counter(r.headers["webhook-id"] for r in receiver.requests if r.at >= restarted)
    assert max(after.values()) == 1, after
    before = {r.headers["webhook-id"] for r in receiver.requests if r.at < restarted}
    repeats = Counter(ids) - Counter(set(ids))
    assert set(repeats) <= before, repeats


async def test_a_429_with_retry_after_is_waited_out(env: Env, receiver: RecordingServer, memory: MemoryBackend) -> None:
    settings = env.with_file(notification_file(env.tmp, receiver.url))
    receiver.replies = [Reply(429, b"slow down", headers={"Retry-After": "2"})]
    notifier, nc = await start_notifier(env, settings)
    try:
        await env.decide("gunshot", "c-1")
        await until(lambda: len(accepted(receiver)) == 1, timeout_s=20)
    finally:
        await stop_notifier(notifier, nc)
    first, second = receiver.requests
    assert second.at - first.at >= 2.0  # the back-off alone would have been 0.1 to 0.2 s
    assert memory.get("listenpost_notifications_retried", receiver="hook", reason="rate_limited") == 1


async def test_a_receiver_never_gets_more_than_its_concurrency_at_once(env: Env, receiver: RecordingServer) -> None:
    limit, count = 3, 10
    settings = env.with_file(notification_file(env.tmp, receiver.url), concurrency=limit)
    receiver.default_reply = Reply(delay_s=0.4)  # slow: deliveries overlap unless held back
    # Every notification queued before the sender starts, so it has more than `limit` to send at once.
    queuer, nc = await start_notifier(env, settings, send=False)
    try:
        for i in range(count):
            await env.decide("gunshot", f"c-{i}")

        async def queued() -> bool:
            return (await env.admin.jetstream().stream_info(settings.notify.stream)).state.messages == count

        await until(queued)
    finally:
        await stop_notifier(queuer, nc)
    assert settings.notify.max_in_flight > limit  # the sender holds them all: only the per-receiver limit holds back
    notifier, nc = await start_notifier(env, settings)
    try:
        await until(lambda: len(accepted(receiver)) == count, timeout_s=30)
        await env.idle()
    finally:
        await stop_notifier(notifier, nc)
    assert receiver.peak_in_flight == limit  # reached, never exceeded
    ids = accepted(receiver)
    assert len(ids) == count and len(set(ids)) == count  # every one delivered, once


async def test_inhibited_alerts_and_muted_routes_make_no_notification(
    env: Env, receiver: RecordingServer, memory: MemoryBackend
) -> None:
    settings = env.with_file(notification_file(env.tmp, receiver.url))
    notifier, nc = await start_notifier(env, settings)
    try:
        await env.decide("gunshot", "c-1")
        await env.decide("screaming", "c-1")  # inhibited by the gunshot on the same call
        await env.decide("screaming", "c-2")  # another call: notified
        await env.decide("dead-air", "c-3", team="qa")  # its route is muted (always)
        await env.idle()
    finally:
        await stop_notifier(notifier, nc)
    told = sorted((a["labels"]["rule"], a["callid"]) for r in receiver.requests for a in json.loads(r.body)["alerts"])
    assert told == [("gunshot", "c-1"), ("screaming", "c-2")]
    assert memory.get("listenpost_notifications_skipped", reason="inhibited") == 1
    assert memory.get("listenpost_notifications_skipped", reason="muted") == 1
    # The gunshot is remembered as firing in KV, so a restarted notifier still inhibits.
    notifier, nc = await start_notifier(env, settings)
    try:
        await env.decide("screaming", "c-1", event_id="dec-screaming-again")
        await env.idle()
        await asyncio.sleep(1.5)  # the call's group is looked at again (group_interval 1s)
        await env.idle()
    finally:
        await stop_notifier(notifier, nc)
    assert len(receiver.requests) == 2  # still inhibited: without the firing set it would be told now
    # Counted once: the group (read back from KV) remembers it held this alert back.
    assert memory.get("listenpost_notifications_skipped", reason="inhibited") == 1
    # Raised again while it fires in its group (read back from KV): a duplicate, counted as one.
    assert memory.get("listenpost_notifications_deduplicated", receiver="hook") == 1


async def test_a_receiver_removed_from_the_file_dead_letters_its_notifications(env: Env, receiver: RecordingServer) -> None:
    path = notification_file(env.tmp, receiver.url)
    settings = env.with_file(path)
    queuer, nc = await start_notifier(env, settings, send=False)
    try:
        await env.decide("gunshot", "c-1")

        async def queued() -> bool:
            stored = (await env.admin.jetstream().stream_info(settings.notify.stream)).state.messages
            return await env.pending(settings.nats.out_stream, settings.notify.queue_durable) == 0 and stored == 1

        await until(queued)
    finally:
        await stop_notifier(queuer, nc)
    # Queued for `hook`; then the file renames it.
    path.write_text(path.read_text().replace("receiver: hook", "receiver: ops").replace("name: hook", "name: ops"))
    sender, nc = await start_notifier(env, settings, queue=False)
    try:
        await env.idle()
    finally:
        await stop_notifier(sender, nc)
    assert receiver.requests == []
    operator = await connect(settings.nats, role="operator", name="test-operator")
    try:
        [letter] = await list_entries(operator.jetstream(), settings, dead=True)
    finally:
        await operator.close()
    assert (letter.receiver, letter.attempts, letter.status) == ("hook", 1, None)
    assert letter.reason.startswith("receiver 'hook' is not in the notification file (version ")
    assert letter.reason.endswith("); add it back and replay")


# --- erasure while the notifier runs (issue 12) -------------------------------------------------

ERASED, KEPT = "c-erased-4711", "c-kept-0815"


def erasure_file(directory: Path, url: str) -> Path:
    """Each alert joins its call's group and the team's group, shared by every call of the team;
    groups are told again every second, so one brought back from memory would be sent at once."""
    path = directory / "notifications.yaml"
    path.write_text(f"""
apiVersion: listenpost/v1
kind: Notifications
route:
  receiver: hook
  group_by: [callid]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1s
  routes:
    - {{matchers: ['team="security"'], group_by: [team], continue: true}}
    - {{matchers: ['team="security"'], group_by: [callid]}}
receivers:
  - {{name: hook, type: webhook, url: "{url}/hook", signing_secret: hook-signing}}
""")
    return path


async def stored_naming(js: Any, stream: str, call_id: str) -> list[int]:
    """Sequences of ``stream``'s stored messages (every revision of a KV key) that name the call."""
    found, seq = [], 1
    while True:
        try:
            raw = await js.get_msg(stream, seq, subject=">", next=True)
        except NotFoundError:
            return found
        if call_id.encode() in (raw.data or b"") or call_id in json.dumps(dict(raw.headers or {})):
            found.append(int(raw.seq))
        seq = int(raw.seq) + 1


def calls_told(requests: list[Any]) -> set[str]:
    return {a["callid"] for r in requests for a in json.loads(r.body)["alerts"]}


async def erase_as_operator(settings: Settings, call_id: str) -> ErasureReport:
    operator = await connect(settings.nats, role="operator", name="test-erase")
    try:
        return await erase_call(operator.jetstream(), settings, call_id, actor=Actor.cli())
    finally:
        await operator.close()


async def test_erase_is_not_undone_by_a_running_notifier(env: Env, receiver: RecordingServer) -> None:
    """Erasing a call while the notifier holds its groups and firing alerts in memory: nothing of
    the call comes back into the buckets, stays in memory, or is sent afterwards (before the fix
    the next look wrote the groups back from memory and told the erased call's alert again)."""
    settings = env.with_file(erasure_file(env.tmp, receiver.url))
    notify = settings.notify
    notifier, nc = await start_notifier(env, settings)
    try:
        await env.decide("angry", ERASED)
        await env.decide("angry", KEPT)
        await until(lambda: calls_told(receiver.requests) == {ERASED, KEPT})
        assert notifier.grouper is not None and notifier.firing is not None
        assert len(notifier.grouper.store.groups) == 3  # each call's own, and the team's shared one

        report = await erase_as_operator(settings, ERASED)
        assert report.ok, report.failed
        erased_at = len(receiver.requests)
        erased = {(r.place, r.action) for r in report.removed if r.kind == "kv"}
        assert erased == {(notify.groups_bucket, "deleted"), (notify.groups_bucket, "rewritten"),
                          (notify.firing_bucket, "deleted")}  # fmt: skip

        # Looks every 0.1 s and repeats every second: the kept call's groups are told again...
        await until(lambda: KEPT in calls_told(receiver.requests[erased_at:]), timeout_s=10)
        await asyncio.sleep(1.5)
        await env.idle()
        in_memory = [g.model_dump_json() for g in notifier.grouper.store.groups.values()]
        firing = [a.callid for a in notifier.firing.current()]
    finally:
        await stop_notifier(notifier, nc)
    # Nothing of the erased call written back, sent, or held in memory.
    js = env.admin.jetstream()
    for stream in (f"KV_{notify.groups_bucket}", f"KV_{notify.firing_bucket}", notify.stream):
        assert await stored_naming(js, stream, ERASED) == [], stream
    assert ERASED not in calls_told(receiver.requests[erased_at:])
    assert [ERASED in g for g in in_memory] == [False, False] and firing == [KEPT]
    # The shared group lives on with the kept call's alert only (as memory has it).
    kv = await js.key_value(notify.groups_bucket)
    groups = [AggregationGroup.model_validate_json(value) for _, value in await bucket_values(kv)]
    shared = [g for g in groups if g.labels == {"team": "security"}]
    assert [sorted(h.alert.callid or "" for h in g.alerts.values()) for g in shared] == [[KEPT]]

    # A restarted notifier reads the buckets back: the erased call stays gone there too.
    notifier, nc = await start_notifier(env, settings, send=False)
    try:
        assert notifier.grouper is not None and notifier.firing is not None
        assert {h.alert.callid for g in notifier.grouper.store.groups.values() for h in g.alerts.values()} == {KEPT}
        assert [a.callid for a in notifier.firing.current()] == [KEPT]
    finally:
        await stop_notifier(notifier, nc)


async def test_erase_removes_the_calls_queued_and_dead_lettered_notifications(env: Env, receiver: RecordingServer) -> None:
    """Notifications of the call waiting on LISTENPOST_NOTIFY (queued, or dead-lettered for a
    replay) are erased with it; the other call's stay and are delivered."""
    settings = env.with_file(notification_file(env.tmp, receiver.url))
    notify = settings.notify
    queuer, nc = await start_notifier(env, settings, send=False)  # queued, not sent
    try:
        await env.decide("gunshot", ERASED)
        await env.decide("gunshot", KEPT)
        js = env.admin.jetstream()

        async def queued() -> bool:
            return (await js.stream_info(notify.stream)).state.messages == 2

        await until(queued)
    finally:
        await stop_notifier(queuer, nc)
    # A dead letter of the call's notification, as the sender leaves one for `notify replay`.
    raw = await js.get_msg(notify.stream, (await stored_naming(js, notify.stream, ERASED))[0])
    notification = read_queued(raw.data or b"", raw.headers)
    failed = NotificationFailed(receiver="hook", reason="gave up", error="E", retryable=True, attempts=3,
                                notification=notification)  # fmt: skip
    letter = failed_event(failed, "urn:listenpost", event_id="dl-erased")
    await publish_event(js, notify_subject(settings.nats, "dlq", "hook"), letter, msg_id="dl-erased")
    assert len(await stored_naming(js, notify.stream, ERASED)) == 2

    report = await erase_as_operator(settings, ERASED)
    assert report.ok, report.failed
    assert sorted(r.item.split()[1] for r in report.removed if r.place == notify.stream) == [
        "listenpost.notify.dlq.hook", "listenpost.notify.send.hook",
    ]  # fmt: skip
    assert await stored_naming(js, notify.stream, ERASED) == []
    assert (await js.stream_info(notify.stream)).state.messages == 1

    sender, nc = await start_notifier(env, settings, queue=False)
    try:
        await until(lambda: len(receiver.requests) == 1)
        await env.idle()
    finally:
        await stop_notifier(sender, nc)
    assert calls_told(receiver.requests) == {KEPT}


# --- the commands ------------------------------------------------------------------------------


async def test_notify_list_and_replay_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.events.jetstream import provision
    from services.notify.cli import notify_app
    from services.notify.model import Alert, Notification
    from services.notify.queue import NotificationFailed, dead_letter_msg_id, failed_event, queued_event, queued_msg_id

    def notification(receiver: str, callid: str) -> Notification:
        alert = Alert(fingerprint=f"fp-{callid}", labels={"rule": "gunshot", "severity": "critical"},
                      annotations={"summary": f"gunshot on call {callid}"}, starts_at=datetime.now(UTC),
                      rule_id="gunshot", decision_id=f"dec-{callid}", callid=callid)  # fmt: skip
        return Notification(receiver=receiver, group_key="{}:{}", alerts=[alert], created_at=datetime.now(UTC))

    with EmbeddedNatsServer(tmp_path / "nats") as server:
        settings = Settings(_env_file=None, nats=NatsSettings(url=server.url))
        nc = await connect(settings.nats, role="admin", name="test-notify-cli")
        js = nc.jetstream()
        try:
            await provision(js, settings.nats)
            for i, receiver in enumerate(("ops", "qa")):
                failed = NotificationFailed(
                    receiver=receiver, reason="gave up after 3 attempts (notify.max_attempts)",
                    error=f"https://hooks.example (URL of secret '{receiver}') answered HTTP 503 Service Unavailable",
                    retryable=True, attempts=3, status=503, response_excerpt="down for maintenance",
                    notification=notification(receiver, f"c-{i}"),
                )  # fmt: skip
                msg_id = dead_letter_msg_id("LISTENPOST_NOTIFY", 100 + i)
                await publish_event(js, f"listenpost.notify.dlq.{receiver}", failed_event(failed, "urn:test", event_id=msg_id),
                                    msg_id=msg_id)  # fmt: skip
            waiting = notification("ops", "c-9")
            await publish_event(js, "listenpost.notify.send.ops", queued_event(waiting, "urn:test"), msg_id=queued_msg_id(waiting))
        finally:
            await nc.close()

        runner = CliRunner()

        async def cli(*args: str) -> Any:
            # The commands run their own event loop: keep them off the test's.
            return await asyncio.to_thread(runner.invoke, notify_app, [*args, "--nats-url", server.url])

        queued = await cli("list", "--json")
        assert queued.exit_code == 0, queued.output
        [entry] = json.loads(queued.stdout)
        assert (entry["kind"], entry["receiver"], entry["notification_id"], entry["attempts"]) == (
            "queued", "ops", waiting.idempotency_key, None
        )
        table = await cli("list", "--dlq")
        assert table.exit_code == 0, table.output
        for text in ("LISTENPOST_NOTIFY: 2 dead letters", "ops", "qa", "gave up after", "503", "maintenance", "c-1"):
            assert text in table.stdout, table.stdout
        only_qa = json.loads((await cli("list", "--dlq", "--receiver", "qa", "--json")).stdout)
        assert [(e["receiver"], e["attempts"], e["status"]) for e in only_qa] == [("qa", 3, 503)]

        assert (await cli("replay")).exit_code == 2  # neither ids nor --all
        missing = await cli("replay", "999")
        assert missing.exit_code == 1 and "no message with sequence 999 in LISTENPOST_NOTIFY" in missing.stderr
        not_dead = await cli("replay", str(3))  # the queued notification's sequence
        assert not_dead.exit_code == 1 and "is not a dead letter" in not_dead.stderr

        replayed = await cli("replay", only_qa[0]["notification_id"], "--json")
        assert replayed.exit_code == 0, replayed.output
        [item] = json.loads(replayed.stdout)["replayed"]
        assert (item["seq"], item["subject"], item["stream"]) == (only_qa[0]["seq"], "listenpost.notify.send.qa", "LISTENPOST_NOTIFY")
        assert [e["receiver"] for e in json.loads((await cli("list", "--json")).stdout)] == ["ops", "qa"]
        rest = await cli("replay", "--all")
        assert rest.exit_code == 0 and "replayed 1" in rest.stdout, rest.output
        assert "no dead letters" in (await cli("list", "--dlq")).stdout


async def test_nothing_is_consumed_until_the_notification_file_loads(env: Env, receiver: RecordingServer) -> None:
    path = notification_file(env.tmp, receiver.url)
    good = path.read_text()
    path.write_text(good.replace("type: webhook", "type: carrier-pigeon"))
    settings = env.with_file(path)
    notifier, nc = await start_notifier(env, settings)
    try:
        await env.decide("gunshot", "c-1")
        await asyncio.sleep(1.0)
        # Waiting in its stream, with no attempt used up, rather than retried into a dead letter.
        assert not notifier.consuming
        assert await env.pending(settings.nats.out_stream, settings.notify.queue_durable) == 1
        path.write_text(good)
        await until(lambda: len(accepted(receiver)) == 1)
    finally:
        await stop_notifier(notifier, nc)


# --- the Serve deployment (services/notify/deployment.py), its class started without Ray -----------


async def construct_deployment(settings: Settings) -> Any:
    """The plain class behind the ``Notifier`` Serve deployment, constructed as Serve does."""
    from services.notify.deployment import Notifier as NotifierDeployment

    cls = NotifierDeployment.func_or_class
    replica = cls.__new__(cls)
    await cls.__init__(replica, settings)
    return replica


async def stop_deployment(replica: Any) -> None:
    """What Serve does at shutdown: await the async __del__ (then keep the GC from calling it again)."""
    await replica.__del__()

    class Stopped(type(replica)):  # type: ignore[misc]
        def __del__(self) -> None:
            pass

    replica.__class__ = Stopped


async def test_the_deployment_delivers_keeps_the_last_good_file_on_a_bad_edit_and_drains(
    env: Env, receiver: RecordingServer
) -> None:
    path = notification_file(env.tmp, receiver.url, url_secret=True)
    settings = env.with_file(path, secrets={"hook-url": f"{receiver.url}/hook", "hook-signing": WHSEC}, reload_interval_s=0.2)
    replica = await construct_deployment(settings)
    try:
        await env.decide("gunshot", "c-1")
        await until(lambda: len(accepted(receiver)) == 1)
        assert_signed(receiver)
        await env.idle()
        status = await replica.status()
        assert (status["receivers"], status["missing_secrets"], status["last_reload_error"]) == (["hook"], [], None)
        assert (status["consuming"], status["queued"], status["dead_letters"], status["failure"]) == (True, 0, 0, None)
        version = status["version"]

        # A broken edit: its file:line:column error is shown, and the last good file stays in use.
        path.write_text(path.read_text().replace("type: webhook", "type: carrier-pigeon"))

        async def error_shown() -> bool:
            return (await replica.status())["last_reload_error"] is not None

        await until(error_shown)
        status = await replica.status()
        assert f"{path}:" in status["last_reload_error"] and "carrier-pigeon" in status["last_reload_error"]
        assert status["version"] == version
        await env.decide("gunshot", "c-2")
        await until(lambda: len(accepted(receiver)) == 2)
        await replica.check_health()
    finally:
        await stop_deployment(replica)  # stop consuming, drain, close NATS
    assert replica._nc.is_closed


async def test_the_deployment_reports_missing_secrets_once_and_dead_letters_their_notifications(
    env: Env, receiver: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = notification_file(env.tmp, receiver.url, url_secret=True)
    settings = env.with_file(path, secrets={"hook-signing": WHSEC}, reload_interval_s=0.2)
    with caplog.at_level("WARNING", logger="services.notify.deployment"):
        replica = await construct_deployment(settings)
    try:
        line = "receiver 'hook' needs secret(s) 'hook-url', not configured"
        assert [r.getMessage() for r in caplog.records if line in r.getMessage()] != []
        await env.decide("gunshot", "c-1")
        await env.idle()
        status = await replica.status()
        assert receiver.requests == [] and status["dead_letters"] == 1 and line in status["missing_secrets"][0]
        await asyncio.sleep(0.5)  # reloads of an unchanged file say nothing again
        assert len([r for r in caplog.records if line in r.getMessage()]) == 1
    finally:
        await stop_deployment(replica)


async def test_the_deployment_is_unhealthy_when_a_loop_died(env: Env, receiver: RecordingServer) -> None:
    path = notification_file(env.tmp, receiver.url)
    replica = await construct_deployment(env.with_file(path, secrets={"hook-signing": WHSEC}))
    try:
        await replica.check_health()
        consumer = replica._notifier._consumers[0]

        async def broken_loop() -> None:
            raise ConnectionError("the fetch loop hit a bug")

        consumer._loop_task.cancel()  # the real loop, replaced by one that died
        consumer._loop_task = asyncio.get_running_loop().create_task(broken_loop())
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match=r"notifier loop died: ConnectionError\('the fetch loop hit a bug'\)"):
            await replica.check_health()
        assert "the fetch loop hit a bug" in (await replica.status())["failure"]
    finally:
        await stop_deployment(replica)


# --- what `rules status`, `status` and `top` show of the receivers ------------------------------------


async def test_each_receivers_deliveries_failures_and_queue_reach_rules_status(env: Env, receiver: RecordingServer) -> None:
    settings = env.with_file(notification_file(env.tmp, receiver.url))
    receiver.replies = [Reply(500, b"internal error")]
    notifier, nc = await start_notifier(env, settings)
    try:
        await env.decide("gunshot", "c-1")
        await until(lambda: len(accepted(receiver)) == 1)
        await env.idle()
        assert notifier.sender is not None and notifier.config.get() is not None
        [row] = await receiver_status(nc.jetstream(), settings, notifier.config.get(), notifier.sender.stats)
        assert (row.name, row.type, row.sent, row.retried, row.dead_lettered, row.queued, row.dead_letters) == (
            "hook", "webhook", 1, 1, 0, 0, 0,
        )  # fmt: skip
        assert row.last_error is not None and "500" in row.last_error
        # The notifier's role writes its one key of the status bucket, and no engine's.
        js = nc.jetstream()
        await write_notifier_status(js, settings.rules.status_bucket, {"receiver_status": [row.model_dump()], "updated_at": time.time()})
        kv = await js.key_value(settings.rules.status_bucket)
        with pytest.raises(Exception, match="timeout|[Pp]ermission"):
            await kv.put("status.forged-engine", b"{}")
    finally:
        await stop_notifier(notifier, nc)

    # The operator's `rules status` prints it beside the engines (none runs here: a notice, exit 1).
    from typer.testing import CliRunner

    from services.cli import app

    cfg = settings.nats
    operator = {
        "LISTENPOST_NATS__URL": cfg.url or "",
        "LISTENPOST_NATS__TLS_CA_FILE": str(cfg.tls_ca_file),
        "LISTENPOST_NATS__ROLES__OPERATOR__NKEY_SEED_FILE": str(cfg.identity("operator").nkey_seed_file),
        "COLUMNS": "200",
    }
    # The CLI runs its own event loop: in a thread.
    report = await asyncio.to_thread(CliRunner().invoke, app, ["rules", "status", "--json"], env=operator)
    assert report.exit_code == 0, report.output
    notifier_record = json.loads(report.output)["notifier"]
    assert notifier_record["receiver_status"][0]["name"] == "hook"
    table = await asyncio.to_thread(CliRunner().invoke, app, ["rules", "status"], env=operator)
    assert "notification receivers" in table.output and "hook" in table.output and "500" in table.output, table.output


def test_the_receivers_table_says_when_the_notifier_is_off() -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(receivers_table(None))
    assert "the notifier has not reported" in console.export_text()
    console = Console(width=200, record=True)
    row = {"name": "pager", "type": "pagerduty", "sent": 12, "retried": 3, "dead_lettered": 1, "queued": 2, "dead_letters": 1,
           "last_error": "could not reach https://events.pagerduty.com: timed out", "last_error_at": 990.0}  # fmt: skip
    console.print(receivers_table({"receiver_status": [row], "updated_at": 995.0, "groups": 4}, now=1000.0))
    text = console.export_text()
    assert "pager" in text and "pagerduty" in text and "12" in text and "timed out (10s ago)" in text
    assert "reported 5s ago; 4 aggregation group(s)" in text


def test_receiver_rows_keep_a_receiver_gone_from_the_file_while_it_has_a_queue() -> None:
    stats = {"hook": ReceiverStats(sent=2)}
    rows = receiver_rows([("hook", "webhook")], stats, {"old": 3}, None)
    assert [(r.name, r.type, r.sent, r.queued, r.dead_letters) for r in rows] == [
        ("hook", "webhook", 2, 0, None), ("old", "(not in the file)", 0, 3, None),
    ]  # fmt: skip
    assert per_receiver({"lp.notify.send.hook": 2, "lp.notify.dlq.hook": 1}, "lp.notify.send.") == {"hook": 2}
