"""The NATS door (issue 12): identities, TLS, least privilege, secrets never shown, encryption at rest.

Every attack runs against a real nats-server configured as `listenpost serve` runs it: TLS with
a CA and certificate made here, one NKey user per role with the permissions of
services/events/permissions.py, JetStream encrypted at rest. Each is shown refused by the
server itself (a permissions violation), and the legitimate use next to it shown to work.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ObjectStoreConfig

from services.events.connection import NatsConnectError, connect_options, identity_options, short_session
from services.events.embedded import EmbeddedNatsServer, find_nats_server, free_port
from services.events.jetstream import provision_everything
from services.events.permissions import role_permissions
from services.events.server_config import deploy_config, render, role_variable
from services.runtime import write_runtime_file
from services.settings import NatsRole, NatsSettings, Settings

REPO = Path(__file__).resolve().parents[1]
SETTINGS = Settings(_env_file=None)
CFG = SETTINGS.nats
SILENCES = SETTINGS.rules.silence_bucket
PRIVATE_BUCKET = "someone-elses-audio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsServer]:
    root = tmp_path_factory.mktemp("hardened")
    with EmbeddedNatsServer(root / "data", secrets_dir=root / "secrets", tls=True, settings=SETTINGS) as running:
        yield running


@dataclass
class Session:
    nc: NATS
    violations: list[str]

    @property
    def js(self) -> Any:
        return self.nc.jetstream()

    async def refused(self, subject_fragment: str) -> bool:
        """Did the server report a permissions violation naming ``subject_fragment``?"""
        for _ in range(40):
            if any(subject_fragment.lower() in v.lower() for v in self.violations):
                return True
            await asyncio.sleep(0.05)
        return False


async def _session(cfg: NatsSettings, role: NatsRole) -> Session:
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    nc = await nats.connect(**connect_options(cfg, role), error_cb=on_error, max_reconnect_attempts=1, reconnect_time_wait=0.1)
    return Session(nc, violations)


@pytest.fixture(scope="module")
async def provisioned(server: EmbeddedNatsServer) -> AsyncIterator[NatsSettings]:
    cfg = server.client_settings()
    admin = await _session(cfg, "admin")
    await provision_everything(admin.js, SETTINGS)
    await admin.js.create_object_store(PRIVATE_BUCKET, config=ObjectStoreConfig())
    await (await admin.js.object_store(PRIVATE_BUCKET)).put("call.wav", b"RIFF private audio")
    await admin.nc.close()
    yield cfg


async def _stream_messages(cfg: NatsSettings, stream: str) -> int:
    admin = await _session(cfg, "admin")
    try:
        return int((await admin.js.stream_info(stream)).state.messages)
    finally:
        await admin.nc.close()


async def test_a_producer_submits_but_cannot_forge_a_decision(provisioned: NatsSettings) -> None:
    producer = await _session(provisioned, "producer")
    try:
        ack = await producer.js.publish(CFG.subject("in", "pbx"), b"{}", timeout=5)
        assert ack.stream == CFG.in_stream
        before = await _stream_messages(provisioned, CFG.out_stream)
        # Today's attack: a decision forged on LISTENPOST_OUT, routing a call or raising an alert.
        with pytest.raises(NatsTimeoutError):
            await producer.js.publish(CFG.subject("alerts", "critical"), b'{"forged": true}', timeout=1)
        assert await producer.refused(f'publish to "{CFG.subject("alerts", "critical")}"')
        with pytest.raises(NatsTimeoutError):
            await producer.js.publish(CFG.subject("captioned"), b'{"forged": true}', timeout=1)
        assert await producer.refused(f'publish to "{CFG.subject("captioned")}"')
        # Nor may it pose as the HTTP door, whose inputs carry the API key that was checked.
        with pytest.raises(NatsTimeoutError):
            await producer.js.publish(CFG.subject("in", "http"), b"{}", timeout=1)
        assert await producer.refused(f'publish to "{CFG.subject("in", "http")}"')
        assert await _stream_messages(provisioned, CFG.out_stream) == before
    finally:
        await producer.nc.close()


async def test_a_producer_cannot_add_a_silence_that_mutes_every_alert(provisioned: NatsSettings) -> None:
    producer = await _session(provisioned, "producer")
    try:
        with pytest.raises((NatsTimeoutError, Exception)):
            kv = await producer.js.key_value(SILENCES)
            await kv.put("silence.forged", b'{"matchers": [], "ends_at": "2099-01-01T00:00:00Z"}')
        assert await producer.refused(f"kv_{SILENCES}") or await producer.refused(f"$kv.{SILENCES}")
    finally:
        await producer.nc.close()
    # The operator (listenpost rules silence add) may; the rules engine may only read them.
    operator = await _session(provisioned, "operator")
    try:
        await (await operator.js.key_value(SILENCES)).put("silence.maintenance", b"{}")
    finally:
        await operator.nc.close()
    rules = await _session(provisioned, "rules")
    try:
        kv = await rules.js.key_value(SILENCES)
        assert (await kv.get("silence.maintenance")).value == b"{}"
        with pytest.raises(NatsTimeoutError):
            await kv.put("silence.forged", b"{}")
        assert await rules.refused(f"$kv.{SILENCES}.silence.forged")
    finally:
        await rules.nc.close()


async def test_the_preprocessor_reads_its_buckets_and_no_other(provisioned: NatsSettings) -> None:
    preprocess = await _session(provisioned, "preprocess")
    try:
        audio = await preprocess.js.object_store(SETTINGS.preprocess.object_buckets[0])
        assert audio is not None  # its own bucket binds
        with pytest.raises(NatsTimeoutError):
            await preprocess.js.object_store(PRIVATE_BUCKET)
        assert await preprocess.refused(f"obj_{PRIVATE_BUCKET}")
        # Nor may it publish anything at all outside reading.
        with pytest.raises(NatsTimeoutError):
            await preprocess.js.publish(CFG.subject("in", "x"), b"{}", timeout=1)
        assert await preprocess.refused(f'publish to "{CFG.subject("in", "x")}"')
    finally:
        await preprocess.nc.close()


async def test_the_notifier_queues_notifications_but_cannot_forge_a_decision_or_read_inputs(provisioned: NatsSettings) -> None:
    notifier = await _session(provisioned, "notify")
    try:
        js = notifier.nc.jetstream(timeout=1)
        # Its own subjects: a queued notification and a dead letter.
        ack = await js.publish(CFG.subject("notify", "send", "ops"), b"{}", timeout=5)
        assert ack.stream == SETTINGS.notify.stream
        await js.publish(CFG.subject("notify", "dlq", "ops"), b"{}", timeout=5)
        # Not a decision: it reads alerts, it never raises one.
        with pytest.raises(NatsTimeoutError):
            await js.publish(CFG.subject("alerts", "critical"), b'{"forged": true}', timeout=1)
        assert await notifier.refused(f'publish to "{CFG.subject("alerts", "critical")}"')
        # Not the input stream, neither message by message nor through the ingress's durable.
        with pytest.raises(NatsTimeoutError):
            await js.get_msg(CFG.in_stream, 1)
        assert await notifier.refused(f"$JS.API.STREAM.MSG.GET.{CFG.in_stream}")
        inputs = await js.pull_subscribe_bind(CFG.ingest_durable, CFG.in_stream)
        with pytest.raises(NatsTimeoutError):
            await inputs.fetch(1, timeout=1)
        assert await notifier.refused(f"$JS.API.CONSUMER.MSG.NEXT.{CFG.in_stream}.{CFG.ingest_durable}")
        # Nor another durable of the decisions' stream (the rules engine's reads every captioned event).
        rules = await js.pull_subscribe_bind(CFG.rules_durable, CFG.out_stream)
        with pytest.raises(NatsTimeoutError):
            await rules.fetch(1, timeout=1)
        assert await notifier.refused(f"$JS.API.CONSUMER.MSG.NEXT.{CFG.out_stream}.{CFG.rules_durable}")
    finally:
        await notifier.nc.close()


async def test_a_role_cannot_read_another_roles_replies(provisioned: NatsSettings) -> None:
    producer = await _session(provisioned, "producer")
    try:
        await producer.nc.subscribe("_INBOX_operator.>")
        await producer.nc.flush()
        assert await producer.refused('subscription to "_inbox_operator.>"')
    finally:
        await producer.nc.close()


async def test_without_an_identity_or_without_tls_nobody_connects(
    server: EmbeddedNatsServer, provisioned: NatsSettings
) -> None:
    anonymous = provisioned.model_copy(update={"roles": {}})
    with pytest.raises(NatsConnectError, match="as producer: nats: 'Authorization Violation'"):
        async with short_session(anonymous, role="producer", name="anonymous"):
            pass
    # A plaintext client is refused: the server requires TLS.
    plain = provisioned.model_copy(update={"url": f"nats://127.0.0.1:{server.port}", "tls_ca_file": None})
    with pytest.raises(NatsConnectError, match="cannot reach NATS at nats://127.0.0.1"):
        async with short_session(plain, role="producer", name="plaintext", connect_timeout_s=3):
            pass
    # A client that does not trust the server's CA refuses the server.
    untrusting = provisioned.model_copy(update={"tls_ca_file": None})
    with pytest.raises(NatsConnectError, match="(?i)certificate verify failed"):
        async with short_session(untrusting, role="producer", name="untrusting", connect_timeout_s=3):
            pass
    # With its identity and the CA, a role connects (the same path the commands use).
    async with short_session(provisioned, role="producer", name="producer") as nc:
        assert nc.is_connected and nc.connected_url is not None and nc.connected_url.scheme == "tls"


def test_secrets_are_0600_files_in_a_0700_folder_and_the_server_stays_on_loopback(server: EmbeddedNatsServer) -> None:
    assert server.secrets is not None
    folder = server.secrets.directory
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    assert {f.name for f in files} >= {"nats-server.conf", "jetstream.key", "ca.pem", "producer.nk", "admin.nk"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    config = server.secrets.config_file().read_text()
    assert 'host: "127.0.0.1"' in config and "0.0.0.0" not in config
    assert 'cipher: "chachapoly"' in config


async def test_jetstream_is_encrypted_at_rest_and_readable_after_a_restart(tmp_path: Path) -> None:
    marker = b"customer-card-4111-marker-" + os.urandom(4).hex().encode()
    data, secrets_dir = tmp_path / "data", tmp_path / "secrets"
    for round_ in range(2):
        with EmbeddedNatsServer(data, secrets_dir=secrets_dir, tls=False, settings=SETTINGS) as running:
            admin = await _session(running.client_settings(), "admin")
            if round_ == 0:
                await admin.js.add_stream(name="MARK", subjects=["mark"])
                await admin.js.publish("mark", marker)
            else:  # same key file, new process: still readable
                assert (await admin.js.get_msg("MARK", 1)).data == marker
            await admin.nc.close()
        stored = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file() and p.suffix != ".log")
        assert marker not in stored  # on disk only as ciphertext


def test_credentials_in_a_url_are_moved_out_of_it_and_never_shown(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, nats={"url": "nats://listen:s3cr%40t-pw@nats.example:4222"})
    assert settings.nats.url == "nats://nats.example:4222"
    assert settings.nats.auth.user == "listen"
    assert identity_options(settings.nats.auth) == {"user": "listen", "password": "s3cr@t-pw"}
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "s3cr" not in shown
    token = Settings(_env_file=None, nats={"url": "tls://t0ken-value@nats.example"})
    assert token.nats.url == "tls://nats.example" and "t0ken" not in repr(token)
    assert identity_options(token.nats.auth) == {"token": "t0ken-value"}
    # The runtime file names the server and where its identities are, never a secret.
    runtime = tmp_path / "runtime.json"
    write_runtime_file(settings.nats.url or "", tmp_path / "secrets", path=runtime)
    assert "s3cr" not in runtime.read_text()
    assert set(json.loads(runtime.read_text())) == {"nats_url", "pid", "secrets_dir"}


def test_settings_name_every_way_to_authenticate_and_refuse_two_at_once(tmp_path: Path) -> None:
    seed, creds = tmp_path / "a.nk", tmp_path / "a.creds"
    assert identity_options(NatsSettings(auth={"nkey_seed_file": seed}).auth) == {"nkeys_seed": str(seed)}
    assert identity_options(NatsSettings(auth={"creds_file": creds}).auth) == {"user_credentials": str(creds)}
    options = connect_options(
        NatsSettings(url="tls://n:4222", tls_server_name="nats.internal", tls_first=True),
        "rules",
    )
    assert options["tls_hostname"] == "nats.internal" and options["tls_handshake_first"] is True
    assert options["inbox_prefix"] == "_INBOX_rules"
    from services.settings import SettingsError

    with pytest.raises(SettingsError, match="choose one way to authenticate, not token and creds_file"):
        Settings(_env_file=None, nats={"auth": {"token": "x", "creds_file": str(creds)}})


async def test_user_password_and_token_reach_a_server_that_requires_them(tmp_path: Path) -> None:
    for flags, auth in ((["--user", "ops", "--pass", "pw-123"], {"user": "ops", "password": "pw-123"}),
                        (["--auth", "tok-456"], {"token": "tok-456"})):  # fmt: skip
        port = free_port()
        process = subprocess.Popen([str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port), *flags])
        try:
            cfg = NatsSettings(url=f"nats://127.0.0.1:{port}", auth=auth)
            for _ in range(50):  # until it listens
                try:
                    async with short_session(cfg, role="operator", name="auth-test") as nc:
                        assert nc.is_connected
                    break
                except NatsConnectError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail(f"could not connect with {sorted(auth)}")
            wrong = NatsSettings(url=cfg.url, auth={"token": "nope"})
            with pytest.raises(NatsConnectError, match="Authorization Violation"):
                async with short_session(wrong, role="operator", name="auth-test"):
                    pass
        finally:
            process.terminate()
            process.wait()


def test_deploy_config_is_current_and_accepted_by_nats_server(tmp_path: Path) -> None:
    rendered = render(deploy_config(SETTINGS), SETTINGS)
    shipped = REPO / "deploy" / "nats-server.conf"
    assert shipped.read_text() == rendered, "run: listenpost nats server-config -o deploy/nats-server.conf"
    # nats-server -t parses it, with the variables an operator sets in its environment.
    from services.events.embedded import EmbeddedSecrets

    secrets = EmbeddedSecrets(tmp_path)
    secrets.new_certificates()
    keys = secrets.new_nkeys()
    env = {
        **os.environ,
        "NATS_STORE_DIR": str(tmp_path / "store"),
        "NATS_JETSTREAM_KEY": "k" * 64,
        "NATS_TLS_CERT": str(secrets.cert_file),
        "NATS_TLS_KEY": str(secrets.key_file),
        **{role_variable(role).name: key for role, key in keys.items()},
    }
    checked = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(shipped)], env=env, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    # Every role is in it, with its permissions, and no secret.
    for role, permissions in role_permissions(SETTINGS).items():
        assert f"${role_variable(role).name}" in rendered
        assert all(json.dumps(subject) in rendered for subject in permissions.publish)


def test_nats_keys_makes_a_seed_per_role_and_the_servers_environment(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    result = CliRunner().invoke(app, ["nats", "keys", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("LISTENPOST_"))
    assert set(lines) == {role_variable(role).name for role in role_permissions(SETTINGS)}
    for role in role_permissions(SETTINGS):
        seed = tmp_path / "keys" / f"{role}.nk"
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600 and seed.read_text().startswith("SU")
        assert lines[role_variable(role).name].startswith("U")


async def test_the_operators_commands_work_within_the_operators_permissions(provisioned: NatsSettings) -> None:
    """dlq list, audit list and erase, run as the operator role: nothing they need is refused."""
    from datetime import UTC, datetime, timedelta

    from services.events.audit import Actor, list_records
    from services.events.binding import new_event
    from services.events.dlq import page_dead_letters
    from services.events.erasure import erase_call
    from services.events.jetstream import publish_event
    from services.events.models import AUDIO_CAPTIONED, AUDIO_FAILED

    call = "call-hardened-7"
    admin = await _session(provisioned, "admin")
    try:  # what a call leaves behind, as the services would have stored it
        captioned = new_event(AUDIO_CAPTIONED, "urn:listenpost", {"context": {"callid": call}}, id="cap-h7",
                              extensions={"callid": call})  # fmt: skip
        await publish_event(admin.js, CFG.subject("captioned"), captioned, msg_id="cap-h7")
        original = {"subject": CFG.subject("in", "pbx"), "headers": {}, "body_base64": ""}
        failed = new_event(AUDIO_FAILED, "urn:listenpost", {"stage": "validate", "reason": "bad", "error": "E",
                           "original": original}, id="dl-h7", extensions={"callid": call, "originalid": "in-h7"})  # fmt: skip
        await publish_event(admin.js, CFG.subject("dlq", "validate"), failed, msg_id="dl-h7")
        await (await admin.js.key_value(SETTINGS.rules.state_bucket)).put(f"note.{call}", b'{"callid": "' + call.encode() + b'"}')
        await (await admin.js.object_store(SETTINGS.preprocess.object_buckets[0])).put(f"{call}.wav", b"RIFF" + call.encode())
    finally:
        await admin.nc.close()

    operator = await _session(provisioned, "operator")
    try:
        page = await page_dead_letters(operator.js, SETTINGS)
        assert [(letter.stage, letter.reason) for letter in page.letters] == [("validate", "bad")]
        report = await erase_call(operator.js, SETTINGS, call, actor=Actor(kind="cli", id="test"))
        # listenpost's own streams, buckets and KV are searched and cleaned; another team's
        # bucket on the same server is out of the operator's reach, and said so.
        assert report.failed == [f"object store {PRIVATE_BUCKET}: not listed (nats: timeout)"] and report.audited
        assert {r.place for r in report.removed} >= {CFG.out_stream, CFG.dlq_stream, SETTINGS.rules.state_bucket}
        records = await list_records(operator.js, CFG, SETTINGS.audit, since=datetime.now(UTC) - timedelta(minutes=5))
        assert [r.call_id for r in records if r.action == "erase"] == [call]
        assert operator.violations and all(PRIVATE_BUCKET.lower() in v.lower() for v in operator.violations)
    finally:
        await operator.nc.close()


async def test_a_producer_uploads_audio_and_the_ingress_deletes_it_after_use(provisioned: NatsSettings) -> None:
    """The claim-check path under permissions: a producer puts the recording in the audio bucket,
    the preprocessor reads it, the ingress deletes it once captioned (retention)."""
    from services.events.models import AudioSubmitted
    from services.events.retention import release_audio
    from services.preprocess.sources import read_object

    bucket = SETTINGS.preprocess.object_buckets[0]
    producer = await _session(provisioned, "producer")
    try:
        await (await producer.js.object_store(bucket)).put("ev-up/call.wav", b"RIFF uploaded audio")
    finally:
        await producer.nc.close()
    submitted = AudioSubmitted.model_validate({"audio": {"object": {"bucket": bucket, "name": "ev-up/call.wav"}}})
    preprocess = await _session(provisioned, "preprocess")
    try:
        assert submitted.audio.object is not None
        data = await read_object(preprocess.js, submitted.audio.object, max_bytes=1 << 20, buckets=[bucket])
        assert data == b"RIFF uploaded audio"
    finally:
        await preprocess.nc.close()
    ingress = await _session(provisioned, "ingress")
    try:
        released = await release_audio(ingress.js, submitted, outcome="captioned", retention=SETTINGS.retention,
                                       buckets=[bucket], event_id="ev-up")  # fmt: skip
        assert released and ingress.violations == []
    finally:
        await ingress.nc.close()
