"""The alertmanager receiver against a real Alertmanager (Debian's prometheus-alertmanager,
unpacked into .cache/alertmanager by scripts/setup.sh, or on PATH): the alerts show in its API
with their labels, annotations and link, a resolved one leaves, and an Alertmanager silence
suppresses one. Without the binary the tests fail, saying how to get it; they never skip.

Debian's build does not embed its notification templates: it reads them from the absolute
/usr/share/prometheus/alertmanager, and refuses to start without them. Rather than install
anything there, the fixture runs a copy of the binary with that path replaced by one of the
same length relative to its working directory, where a link points at the unpacked templates.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from notify_fixtures import firing_alert, notification, resolved_alert

from services.notify.receivers import AlertmanagerConfig, DeliveryError, Secrets, send

REPO = Path(__file__).resolve().parents[1]
NAME = "prometheus-alertmanager"
DEBIAN_SHARE = b"/usr/share/prometheus/alertmanager"

CONFIG = """\
route:
  receiver: "null"
  group_wait: 1h
receivers:
  - name: "null"
"""


def alertmanager_binary() -> Path:
    """The unpacked package's binary (.cache/alertmanager), else one on PATH (an unpacked
    package's usr/bin, or an installed one). Missing is a failure, not a skip: the receiver's
    promise is tested against a real Alertmanager, and CI must not pass without one."""
    found = REPO / ".cache" / "alertmanager" / "usr" / "bin" / NAME
    if found.exists():
        return found
    on_path = shutil.which(NAME)
    if on_path is None:
        pytest.fail(
            f"{NAME} not found in {found.parent} nor on PATH: run scripts/setup.sh "
            "(it unpacks Debian's prometheus-alertmanager into .cache/alertmanager)"
        )
    return Path(on_path)


def relocated_binary(binary_path: Path, work: Path) -> Path:
    """A copy of Debian's binary that reads its templates from ``./alertmanager-share``: those of
    the package it was unpacked from (``<root>/usr/bin/`` -> ``<root>/usr/share/...``), or the
    installed ones."""
    share = b"alertmanager-share"
    relative = b"." + b"/" * (len(DEBIAN_SHARE) - 1 - len(share)) + share  # same length: Go strings have their own
    binary = binary_path.read_bytes()
    if DEBIAN_SHARE not in binary:
        return binary_path  # a build that embeds its templates
    templates = binary_path.resolve().parents[2] / DEBIAN_SHARE.decode().lstrip("/")
    if not templates.is_dir():
        templates = Path(DEBIAN_SHARE.decode())  # an installed package's
    copy = work / "alertmanager"
    copy.write_bytes(binary.replace(DEBIAN_SHARE, relative))
    copy.chmod(0o755)
    (work / share.decode()).symlink_to(templates)
    return copy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = alertmanager_binary()
    work = tmp_path_factory.mktemp("alertmanager")
    (work / "alertmanager.yml").write_text(CONFIG)
    port = free_port()
    log = (work / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            str(relocated_binary(binary, work)),
            f"--config.file={work / 'alertmanager.yml'}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip: one instance, no port of its own
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Alertmanager did not become ready: {(work / 'alertmanager.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


async def alerts_by_rule(client: httpx.AsyncClient, url: str) -> dict[str, dict[str, Any]]:
    response = await client.get(f"{url}/api/v2/alerts")
    response.raise_for_status()
    return {a["labels"]["rule"]: a for a in response.json()}


async def test_alerts_show_in_alertmanager_and_a_silence_suppresses_one(alertmanager: str, client: httpx.AsyncClient) -> None:
    config = AlertmanagerConfig(name="team-am", url=alertmanager, extra_labels={"source": "listenpost"})
    hold = resolved_alert(status="firing", ends_at=None)
    delivery = await send(notification(firing_alert(), hold), config, Secrets(), client)
    assert (delivery.type, delivery.status) == ("alertmanager", 200)

    shown = await alerts_by_rule(client, alertmanager)
    assert set(shown) == {"angry-customer", "long-hold"}
    angry = shown["angry-customer"]
    assert angry["labels"] == {"alertname": "angry-customer", "rule": "angry-customer", "severity": "warning",
                               "queue": "billing", "source": "listenpost"}  # fmt: skip
    assert angry["annotations"] == {
        "summary": "Angry customer on call c-1042",
        "description": "Anger held over two windows.",
        "callid": "c-1042",
        "caption_span": "I have called four times & nobody <fixes> it",
        "rule_id": "angry-customer",
        "ruleset_version": "rs-12",
        "decision_id": "dec-1",
        "input_id": "in-77",
        "explain": "listenpost rules explain in-77.json",
    }
    assert angry["generatorURL"] == "https://listenpost.example/explain/in-77"
    assert angry["startsAt"].startswith("2025-03-04T10:15:00")
    assert angry["receivers"] == [{"name": "null"}]
    assert angry["status"] == {"state": "active", "silencedBy": [], "inhibitedBy": []}

    # An Alertmanager silence on the rule: the alert is reported suppressed, by that silence.
    now = datetime.now(UTC)
    silence = {
        "matchers": [{"name": "rule", "value": "angry-customer", "isRegex": False, "isEqual": True}],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "test_notify_alertmanager",
        "comment": "known issue: billing queue",
    }
    response = await client.post(f"{alertmanager}/api/v2/silences", json=silence)
    assert response.status_code == 200, response.text
    silence_id = response.json()["silenceID"]
    shown = await alerts_by_rule(client, alertmanager)
    assert shown["angry-customer"]["status"] == {"state": "suppressed", "silencedBy": [silence_id], "inhibitedBy": []}
    assert shown["long-hold"]["status"]["state"] == "active"
    # A repeat of the silenced alert stays suppressed: Alertmanager, not listenpost, decides.
    await send(notification(firing_alert()), config, Secrets(), client)
    assert (await alerts_by_rule(client, alertmanager))["angry-customer"]["status"]["state"] == "suppressed"

    # Resolving: endsAt now, and Alertmanager no longer lists the alert.
    await send(notification(resolved_alert()), config, Secrets(), client)
    assert set(await alerts_by_rule(client, alertmanager)) == {"angry-customer"}


async def test_alertmanager_refuses_an_invalid_alert_and_the_error_is_not_retryable(
    alertmanager: str, client: httpx.AsyncClient
) -> None:
    config = AlertmanagerConfig(name="team-am", url=alertmanager)
    bad = firing_alert(labels={"bad label!": "x"})  # not a Prometheus label name
    with pytest.raises(DeliveryError) as caught:
        await send(notification(bad), config, Secrets(), client)
    assert not caught.value.retryable and caught.value.status == 400
    assert "answered HTTP 400 Bad Request" in caught.value.message


def test_a_missing_alertmanager_fails_and_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "REPO", tmp_path)  # no .cache/alertmanager there
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"prometheus-alertmanager not found .* run scripts/setup.sh"):
        alertmanager_binary()
