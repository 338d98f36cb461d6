"""Receiver files with the real receiver models: one good file with every type, and one bad file
per type with its typical mistakes, each error asserted in full (``file:line:column: cause``), as
Alertmanager's config tests pin theirs.

tests/test_notify_config.py checks the file's own rules with stand-in receiver models; this file
checks what each receiver type accepts and how it says no (services/notify/receivers), through
the same loader, with the registry the service uses.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.notify.config import NotifyConfigError, check, load
from services.notify.receivers import (
    RECEIVER_CONFIGS,
    AlertmanagerConfig,
    EmailConfig,
    MSTeamsConfig,
    PagerDutyConfig,
    SlackConfig,
    WebhookConfig,
)

FILES = Path(__file__).parent / "notify_files"

BAD = {
    "alertmanager": [
        'receivers/bad/alertmanager.yaml:6:5: receivers[0].url: missing required field',
        "receivers/bad/alertmanager.yaml:10:10: receivers[1].url: 'alertmanager:9093' is not an http or https URL",
        "receivers/bad/alertmanager.yaml:14:17: receivers[2].firing_ttl: '1 hour' is not a duration like 30s, 5m, 1h30m or 250ms",
        'receivers/bad/alertmanager.yaml:15:50: receivers[2].extra_labels.priority: Input should be a valid string',
        'receivers/bad/alertmanager.yaml:16:5: receivers[3]: username and password_secret go together',
        (
            "receivers/bad/alertmanager.yaml:20:11: receivers[4].name: 'Ops Alertmanager' is not a receiver name "
            "(letters, digits, '_', '.' and '-', starting with a letter or digit, at most 64)"
        ),
    ],
    "email": [
        "receivers/bad/email.yaml:9:13: receivers[0].sender: 'alerts' is not one e-mail address",
        'receivers/bad/email.yaml:10:9: receivers[0].to: a list of addresses: write [qa@example.com]',
        (
            'receivers/bad/email.yaml:17:5: receivers[1].password: password is a secret, never written in this '
            'file: name it with password_secret (its value in notify.secrets or a file of notify.secrets_dir)'
        ),
        'receivers/bad/email.yaml:21:11: receivers[2].port: Input should be less than or equal to 65535',
        (
            'receivers/bad/email.yaml:24:5: receivers[3]: tls (implicit TLS, port 465) and starttls exclude each '
            'other: with tls: true, set starttls: false'
        ),
        'receivers/bad/email.yaml:30:5: receivers[4]: username and password_secret go together',
        'receivers/bad/email.yaml:41:15: receivers[5].starttls: Input should be a valid boolean',
        'receivers/bad/email.yaml:42:5: receivers[6].host: missing required field',
    ],
    "msteams": [
        "receivers/bad/msteams.yaml:9:11: receivers[0].card: Input should be 'adaptive' or 'message' (got 'hero')",
        'receivers/bad/msteams.yaml:14:15: receivers[1].template: unknown template field(s) summary: this receiver has text, title',
        "receivers/bad/msteams.yaml:18:15: receivers[2].template: template 'template-syntax.text', line 1: unexpected '}'",
        'receivers/bad/msteams.yaml:19:5: receivers[3].url_secret: missing required field',
    ],
    "pagerduty": [
        (
            'receivers/bad/pagerduty.yaml:8:5: receivers[0].routing_key: routing_key is a secret, never written '
            'in this file: name it with routing_key_secret (its value in notify.secrets or a file of '
            'notify.secrets_dir)'
        ),
        (
            "receivers/bad/pagerduty.yaml:12:26: receivers[1].severity_map.high: Input should be 'critical', "
            "'error', 'warning' or 'info' (got 'sev1')"
        ),
        (
            "receivers/bad/pagerduty.yaml:13:23: receivers[1].default_severity: Input should be 'critical', "
            "'error', 'warning' or 'info' (got 'fatal')"
        ),
        (
            "receivers/bad/pagerduty.yaml:17:10: receivers[2].url: 'events.pagerduty.com/v2/enqueue' is not a "
            'URL (relative URL without a base)'
        ),
        'receivers/bad/pagerduty.yaml:18:13: receivers[2].source: String should have at least 1 character',
    ],
    "slack": [
        (
            'receivers/bad/slack.yaml:8:5: receivers[0].url: url is a secret, never written in this file: name '
            'it with url_secret (its value in notify.secrets or a file of notify.secrets_dir)'
        ),
        (
            "receivers/bad/slack.yaml:11:17: receivers[1].url_secret: not a secret name (letters, digits, '_', "
            "'.' and '-', starting with a letter or digit, at most 64): write the secret's name here, and its "
            'value in notify.secrets or a file of notify.secrets_dir'
        ),
        'receivers/bad/slack.yaml:12:5: receivers[2].url_secret: missing required field',
        "receivers/bad/slack.yaml:14:5: receivers[2].chanel: unknown field, did you mean 'channel'?",
        'receivers/bad/slack.yaml:18:20: receivers[3].send_resolved: Input should be a valid boolean',
        'receivers/bad/slack.yaml:19:15: receivers[3].template: unknown template field(s) titel: this receiver has text, title',
    ],
    "webhook": [
        "receivers/bad/webhook.yaml:8:10: receivers[0].url: 'ftp://hooks.example.com/listenpost' is not an http or https URL",
        'receivers/bad/webhook.yaml:9:5: receivers[1]: set exactly one of url and url_secret',
        "receivers/bad/webhook.yaml:16:11: receivers[2].mode: Input should be 'binary' or 'structured' (got 'binery')",
        (
            'receivers/bad/webhook.yaml:20:5: receivers[3].bearer_token: bearer_token is a secret, never written '
            'in this file: name it with bearer_token_secret (its value in notify.secrets or a file of '
            'notify.secrets_dir)'
        ),
        'receivers/bad/webhook.yaml:21:5: receivers[4]: headers may not set Authorization, ce-id: the receiver sets them',
        'receivers/bad/webhook.yaml:28:26: receivers[5].headers.X-Retries: Input should be a valid string',
        "receivers/bad/webhook.yaml:32:16: receivers[6].timeout_s: a number of seconds, like 10 or 2.5 (not '10s')",
        (
            'receivers/bad/webhook.yaml:33:5: receivers[6].sign: unknown field (known: name, send_resolved, '
            'timeout_s, type, url, url_secret, mode, signing_secret, bearer_token_secret, source, headers)'
        ),
    ],
}
#: What a mistaken file had where a secret's name goes: no error may repeat it.
PASTED_SECRETS = ("T000/B000/XXXX", "0123456789abcdef", "hunter2", "s3cr3t-t0ken")


@pytest.fixture
def in_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FILES)  # relative paths keep the messages short


def test_every_receiver_type_has_a_bad_file_and_every_bad_file_is_listed() -> None:
    assert sorted(p.stem for p in (FILES / "receivers" / "bad").iterdir()) == sorted(BAD)
    assert set(RECEIVER_CONFIGS) <= set(BAD)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_receiver_file_fails_with_exact_errors(case: str, in_files: None) -> None:
    with pytest.raises(NotifyConfigError) as caught:
        load(Path("receivers/bad") / f"{case}.yaml")
    assert [str(e) for e in caught.value.errors] == BAD[case]


@pytest.mark.parametrize("case", sorted(BAD))
def test_no_error_repeats_a_secret_written_in_the_file(case: str, in_files: None) -> None:
    _, errors = check(Path("receivers/bad") / f"{case}.yaml")
    text = "\n".join(str(e) for e in errors)
    assert not [s for s in PASTED_SECRETS if s in text]


def test_good_file_loads_every_receiver_type_with_its_options() -> None:
    config = load(FILES / "receivers" / "good.yaml")
    assert {r.type for r in config.receivers.values()} == set(RECEIVER_CONFIGS)
    assert config.unused_receivers() == []
    options = {name: r.config for name, r in config.receivers.items()}
    assert options["ops-webhook"] == WebhookConfig(
        name="ops-webhook", url="https://hooks.example.com/listenpost", mode="structured", signing_secret="ops-signing",
        bearer_token_secret="ops-token", source="/listenpost/prod", headers={"X-Team": "ops"}, timeout_s=5.0,
    )  # fmt: skip
    assert options["oncall-pagerduty"] == PagerDutyConfig(
        name="oncall-pagerduty", routing_key_secret="pagerduty-oncall", severity_map={"high": "critical", "low": "info"},
        default_severity="error", client_url="https://listenpost.example.com/",
        template={"summary": "{{ alert.labels.rule }} on {{ alert.callid }}"},
    )  # fmt: skip
    assert options["security-slack"] == SlackConfig(
        name="security-slack", url_secret="slack-security", channel="#security", send_resolved=True
    )
    assert options["cx-teams"] == MSTeamsConfig(name="cx-teams", url_secret="teams-cx", card="message")
    assert options["qa-email"] == EmailConfig(
        name="qa-email", host="smtp.example.com", port=465, tls=True, starttls=False, sender="listenpost <alerts@example.com>",
        to=["qa@example.com", "QA lead <lead@example.com>"], username="listenpost", password_secret="smtp-password",
        ca_file=Path("/etc/ssl/certs/example-ca.pem"),
    )  # fmt: skip
    assert options["noc-alertmanager"] == AlertmanagerConfig(
        name="noc-alertmanager", url="http://alertmanager:9093", extra_labels={"source": "listenpost"},
        firing_ttl=timedelta(hours=1), username="listenpost", password_secret="alertmanager-password",
    )  # fmt: skip
    # Defaults as documented (docs/notification-receivers.md): chat and mail are not told of
    # resolved alerts unless asked, the rest are.
    assert [options[n].send_resolved for n in ("ops-webhook", "oncall-pagerduty", "cx-teams", "qa-email", "noc-alertmanager")] == [
        True, True, True, False, True,
    ]  # fmt: skip
