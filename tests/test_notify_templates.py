"""Message templates: the context they see, the sandbox, escaping, bounded output, and errors
that name the template and the line."""

from __future__ import annotations

import pytest
from notify_fixtures import firing_alert, notification, resolved_alert
from pydantic import ValidationError

from services.notify.receivers import EmailConfig, SlackConfig
from services.notify.receivers.email import message
from services.notify.templates import (
    TemplateError,
    compile_template,
    explain_command,
    mrkdwn_escape,
    notification_context,
    render,
    render_field,
)


def test_the_context_names_what_a_message_needs() -> None:
    n = notification(firing_alert(), resolved_alert(annotations={}, labels={"rule": "long-hold", "severity": "critical"}))
    context = notification_context(n)
    assert (context["receiver"], context["status"], context["group_labels"]) == ("ops", "firing", {"queue": "billing"})
    assert context["common_labels"] == {}  # rule and severity differ, queue is on one only
    assert [a["fingerprint"] for a in context["firing"]] == ["3f9a1c0e7b2d4a55"]
    assert [a["fingerprint"] for a in context["resolved"]] == ["77e0b5d1c2a39f10"]
    first, second = context["alerts"]
    assert first == {
        "status": "firing",
        "fingerprint": "3f9a1c0e7b2d4a55",
        "labels": {"rule": "angry-customer", "severity": "warning", "queue": "billing"},
        "annotations": {"summary": "Angry customer on call c-1042", "description": "Anger held over two windows."},
        "summary": "Angry customer on call c-1042",
        "description": "Anger held over two windows.",
        "severity": "warning",
        "rule_id": "angry-customer",
        "ruleset_version": "rs-12",
        "starts_at": "2025-03-04T10:15:00+00:00",
        "ends_at": None,
        "callid": "c-1042",
        "caption_span": "I have called four times & nobody <fixes> it",
        "input_id": "in-77",
        "decision_id": "dec-1",
        "generator_url": "https://listenpost.example/explain/in-77",
        "explain": "listenpost rules explain in-77.json",
        "link": "https://listenpost.example/explain/in-77",
    }
    assert (second["summary"], second["explain"], second["link"]) == ("long-hold", None, None)  # no summary: the rule id
    both_billing = notification_context(notification(firing_alert(), resolved_alert()))
    assert both_billing["common_labels"] == {"queue": "billing"}


def test_the_explain_command_is_safe_to_paste() -> None:
    assert explain_command("in-77") == "listenpost rules explain in-77.json"
    assert explain_command("a b;rm -rf /") == "listenpost rules explain 'a b;rm -rf /.json'"
    assert explain_command(None) is None


def test_a_syntax_error_names_the_receiver_field_and_line() -> None:
    with pytest.raises(ValidationError) as caught:
        SlackConfig(name="ops", url_secret="u", template={"text": "line one\n{% for a in alerts %}\n{{ a.summary }\n{% endfor %}"})
    assert "template 'ops.text', line 3: unexpected '}'" in str(caught.value)
    with pytest.raises(ValidationError, match=r"unknown template field\(s\) body: this receiver has text, title"):
        SlackConfig(name="ops", url_secret="u", template={"body": "x"})


def test_an_unknown_name_is_an_error_with_its_line_not_an_empty_string() -> None:
    config = SlackConfig(name="ops", url_secret="u", template={"text": "{% for a in alerts %}\n{{ a.sumary }}\n{% endfor %}"})
    from services.notify.receivers.slack import payload

    with pytest.raises(TemplateError) as caught:
        payload(notification(), config)
    assert (caught.value.name, caught.value.line) == ("ops.text", 2)
    assert str(caught.value) == "template 'ops.text', line 2: undefined: 'dict object' has no attribute 'sumary'"


@pytest.mark.parametrize(
    "source",
    [
        "{{ alerts.__class__.__mro__ }}",  # Python internals
        "{{ ''.__class__.__subclasses__() }}",
        "{{ alerts.append(1) }}",  # the context is immutable
        "{{ group_labels.update({'a': 1}) }}",
    ],
)
def test_the_sandbox_refuses_internals_and_mutation(source: str) -> None:
    template = compile_template("t.hostile", source)
    with pytest.raises(TemplateError, match="template 't.hostile', line 1: "):
        render(template, notification_context(notification()))


def test_output_is_bounded() -> None:
    template = compile_template("t.big", "{% for i in range(100000) %}0123456789{% endfor %}")
    text = render(template, {}, max_chars=1000)
    assert len(text) == 1000 and text.endswith("…")
    title = render_field("slack", "title", receiver="ops", overrides={"title": "{{ 'x' * 500 }}"}, context={})
    assert len(title) == 150  # a Slack header block's limit


def test_slack_values_are_escaped_for_mrkdwn() -> None:
    assert mrkdwn_escape("<!channel> & <@U123>") == "&lt;!channel&gt; &amp; &lt;@U123&gt;"
    from services.notify.receivers.slack import payload

    alert = firing_alert(caption_span="hey <!channel> look", generator_url=None)
    body = payload(notification(alert), SlackConfig(name="s", url_secret="u"))
    assert "> hey &lt;!channel&gt; look" in body["blocks"][1]["text"]["text"]
    assert "<!channel>" not in body["text"] + body["blocks"][1]["text"]["text"]


def test_email_html_is_autoescaped_and_text_is_not() -> None:
    config = EmailConfig(name="mail", host="smtp.example", sender="listenpost <alerts@example.com>", to=["cx@example.com"],
                         template={"html": "<p>{{ alerts[0].caption_span }}</p>", "text": "{{ alerts[0].caption_span }}"})  # fmt: skip
    msg = message(notification(), config)
    text, html = (part.get_content() for part in msg.iter_parts())
    assert text == "I have called four times & nobody <fixes> it\n"
    assert html.strip() == "<p>I have called four times &amp; nobody &lt;fixes&gt; it</p>"
