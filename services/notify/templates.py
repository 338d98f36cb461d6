"""Message templates: what a receiver's title, text, subject or summary says, in sandboxed Jinja.

Each message-sending receiver type has default templates (:data:`DEFAULT_TEMPLATES`); a
receiver overrides any of them by field name in its ``template`` map. Templates are compiled
when the receiver's configuration is read, so a syntax error stops the load with the template's
name and line, not the first notification.

Rendering is Jinja2's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` (no attribute
access to Python internals, no mutation of the context, ``range`` bounded), with
:class:`~jinja2.StrictUndefined`: a name the context does not have is an error
(:class:`TemplateError`, with the template's name and line), never an empty string. HTML
fields (the e-mail's ``html``, a Teams MessageCard's ``text``) are autoescaped. Output is
bounded: past a field's limit it is cut, and ends in "…".

The context (one notification; every receiver sees the same names):

=====================  ===========================================================================
``receiver``           the receiver's name
``status``             ``firing`` if any alert fires, else ``resolved``
``alerts``             every alert (below); ``firing`` and ``resolved``: those with that status
``group_labels``       the labels the routing tree grouped by
``common_labels``      labels every alert has with the same value; ``common_annotations`` likewise
``group_key``          the route and group; ``idempotency_key``: the notification's id
``title``              the rendered ``title`` (or ``subject``), in the fields rendered after it
``alert``              per-alert templates only (PagerDuty's ``summary``): the alert at hand
=====================  ===========================================================================

Each alert: ``status``, ``fingerprint``, ``labels``, ``annotations``, ``summary`` (the
``summary`` annotation, else the rule id), ``description`` (may be empty), ``severity`` (the
label), ``rule_id``, ``ruleset_version``, ``starts_at`` and ``ends_at`` (ISO 8601, ``ends_at``
may be None), ``callid``, ``caption_span`` (the caption text that matched, may be None),
``input_id``, ``decision_id``, ``generator_url`` (may be None), ``explain`` (the command line
that explains the decision: ``listenpost rules explain <input event>.json``, None without an
input id) and ``link`` (``generator_url``, else ``explain``).

For Slack, every string in the context is already escaped for mrkdwn (``&``, ``<``, ``>``), so
a caption cannot ping ``<!channel>``; write Slack's own markup (``<url|text>``) in the template.
"""

from __future__ import annotations

import shlex
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:
    from services.notify.model import Alert, Notification

__all__ = [
    "DEFAULT_TEMPLATES",
    "HTML_FIELDS",
    "MAX_CHARS",
    "PER_ALERT_FIELDS",
    "CompiledTemplate",
    "TemplateError",
    "alert_context",
    "check_overrides",
    "compile_template",
    "explain_command",
    "mrkdwn_escape",
    "notification_context",
    "render",
    "render_field",
    "with_alert",
]

#: Longest output of any template, in characters, unless a field says less (:data:`MAX_CHARS`).
DEFAULT_MAX_CHARS: Final = 64 * 1024


class TemplateError(ValueError):
    """A template that does not compile or fails to render: which one, which line, why.

    A ValueError, so a template broken in a receiver's configuration fails its validation."""

    def __init__(self, name: str, message: str, line: int | None = None) -> None:
        self.name = name
        self.line = line
        self.message = message
        where = f"template {name!r}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}")


def mrkdwn_escape(text: str) -> str:
    """Slack's three control characters, escaped (https://api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _environment(html: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
        cache_size=0,
    )
    env.filters["mrkdwn"] = mrkdwn_escape
    return env


_ENVIRONMENTS: Final = {False: _environment(False), True: _environment(True)}


@dataclass(frozen=True)
class CompiledTemplate:
    name: str
    html: bool
    template: jinja2.Template


@lru_cache(maxsize=512)
def compile_template(name: str, source: str, html: bool = False) -> CompiledTemplate:
    """Compile ``source``; :class:`TemplateError` with the line of a syntax error."""
    env = _ENVIRONMENTS[html]
    try:
        code = env.compile(source, name, name)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(name, exc.message or "syntax error", exc.lineno) from None
    return CompiledTemplate(name, html, env.template_class.from_code(env, code, env.make_globals(None), None))


def render(template: CompiledTemplate, context: Mapping[str, Any], *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Render, stopping at ``max_chars`` (the text then ends in "…"), surrounding whitespace stripped."""
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.template.generate(dict(context)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_chars:
                break
    except RecursionError:
        raise TemplateError(template.name, "nested too deeply") from None
    # What a template can raise while rendering: Jinja's own errors (undefined names, the
    # sandbox refusing an attribute) and Python's, from filters or operators on the values.
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
        raise TemplateError(template.name, _plain(exc), _line(exc, template.name)) from None
    text = "".join(chunks).strip()
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text


def _plain(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined: {exc.message}"
    if isinstance(exc, jinja2.TemplateError) and exc.message:
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _line(exc: BaseException, name: str) -> int | None:
    """The template line Jinja's rewritten traceback points at (its frames carry the template's name)."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == name]
    return lines[-1] if lines else None


# --- defaults ------------------------------------------------------------------------------

_TITLE = (
    "[{{ status | upper }}{% if firing %}:{{ firing | length }}{% endif %}] {{ alerts[0].summary }}"
    "{% if alerts | length > 1 %} (+{{ alerts | length - 1 }} more){% endif %}"
)

_TEXT = """\
{% for a in alerts %}
{{ a.status | upper }} {{ a.severity }}: {{ a.summary }}
{% if a.description %}
{{ a.description }}
{% endif %}
{% if a.caption_span %}
  "{{ a.caption_span }}"
{% endif %}
  rule: {{ a.rule_id }}{% if a.callid %}, call: {{ a.callid }}{% endif %}, since {{ a.starts_at }}
{% if a.generator_url %}
  {{ a.generator_url }}
{% endif %}
{% if a.explain %}
  explain: {{ a.explain }}
{% endif %}

{% endfor %}
"""

_SLACK_TEXT = """\
{% for a in alerts %}
*{{ a.status | upper }}* `{{ a.severity }}` {{ a.summary }}
{% if a.caption_span %}
> {{ a.caption_span }}
{% endif %}
rule `{{ a.rule_id }}`{% if a.callid %} · call `{{ a.callid }}`{% endif %}\
{% if a.generator_url %} · <{{ a.generator_url }}|explain>{% elif a.explain %} · `{{ a.explain }}`{% endif %}


{% endfor %}
"""

_ADAPTIVE_TEXT = """\
{% for a in alerts %}
**{{ a.status | upper }}** {{ a.severity }}: {{ a.summary }}
{% if a.caption_span %}

> {{ a.caption_span }}
{% endif %}

rule {{ a.rule_id }}{% if a.callid %} · call {{ a.callid }}{% endif %}{% if a.explain %} · `{{ a.explain }}`{% endif %}


{% endfor %}
"""

_MESSAGECARD_TEXT = """\
{% for a in alerts %}
<b>{{ a.status | upper }}</b> {{ a.severity }}: {{ a.summary }}<br>
{% if a.caption_span %}
<i>"{{ a.caption_span }}"</i><br>
{% endif %}
rule {{ a.rule_id }}{% if a.callid %} · call {{ a.callid }}{% endif %}\
{% if a.explain %} · <code>{{ a.explain }}</code>{% endif %}<br><br>
{% endfor %}
"""

_HTML = """\
<!DOCTYPE html>
<html><body style="font-family: sans-serif">
<h2>{{ title }}</h2>
{% for a in alerts %}
<div style="margin-bottom: 1em">
<p><strong>{{ a.status | upper }}</strong> [{{ a.severity }}] {{ a.summary }}</p>
{% if a.description %}
<p>{{ a.description }}</p>
{% endif %}
{% if a.caption_span %}
<blockquote>{{ a.caption_span }}</blockquote>
{% endif %}
<p>rule {{ a.rule_id }}{% if a.callid %}, call {{ a.callid }}{% endif %}, since {{ a.starts_at }}</p>
{% if a.generator_url %}
<p><a href="{{ a.generator_url }}">Explain this alert</a></p>
{% endif %}
{% if a.explain %}
<p><code>{{ a.explain }}</code></p>
{% endif %}
</div>
{% endfor %}
</body></html>
"""

#: Receiver kind -> field -> template. ``msteams.message`` is Teams with ``card: message``.
DEFAULT_TEMPLATES: Final[Mapping[str, Mapping[str, str]]] = {
    "slack": {"title": _TITLE, "text": _SLACK_TEXT},
    "msteams": {"title": _TITLE, "text": _ADAPTIVE_TEXT},
    "msteams.message": {"title": _TITLE, "text": _MESSAGECARD_TEXT},
    "pagerduty": {"summary": "{{ alert.summary }}"},
    "email": {"subject": _TITLE, "text": _TEXT, "html": _HTML},
}

#: Fields rendered with HTML autoescaping.
HTML_FIELDS: Final[Mapping[str, frozenset[str]]] = {"email": frozenset({"html"}), "msteams.message": frozenset({"text"})}

#: Fields rendered once per alert, with ``alert`` in the context.
PER_ALERT_FIELDS: Final[Mapping[str, frozenset[str]]] = {"pagerduty": frozenset({"summary"})}

#: The longest each field may be (the receiving service's own limits, where it has them).
MAX_CHARS: Final[Mapping[str, Mapping[str, int]]] = {
    "slack": {"title": 150, "text": 3000},  # a header block's text; a section block's text
    "msteams": {"title": 1000, "text": 20_000},
    "msteams.message": {"title": 1000, "text": 20_000},
    "pagerduty": {"summary": 1024},  # Events API v2: payload.summary
    "email": {"subject": 500, "text": DEFAULT_MAX_CHARS, "html": 4 * DEFAULT_MAX_CHARS},
}


def check_overrides(kind: str, receiver: str, overrides: Mapping[str, str]) -> dict[str, str]:
    """A receiver's ``template`` map, checked: known fields only, each compiles (else ValueError)."""
    known = DEFAULT_TEMPLATES[kind]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown template field(s) {', '.join(unknown)}: this receiver has {', '.join(sorted(known))}")
    for field, source in overrides.items():
        compile_template(_name(receiver, field), source, field in HTML_FIELDS.get(kind, ()))
    return dict(overrides)


def render_field(
    kind: str, field: str, *, receiver: str, overrides: Mapping[str, str], context: Mapping[str, Any]
) -> str:
    """One field of a receiver's message: its override if it has one, else the default."""
    if field in overrides:
        name, source = _name(receiver, field), overrides[field]
    else:
        name, source = f"default:{kind}.{field}", DEFAULT_TEMPLATES[kind][field]
    template = compile_template(name, source, field in HTML_FIELDS.get(kind, ()))
    return render(template, context, max_chars=MAX_CHARS.get(kind, {}).get(field, DEFAULT_MAX_CHARS))


def _name(receiver: str, field: str) -> str:
    return f"{receiver}.{field}"


# --- context -------------------------------------------------------------------------------


def explain_command(input_id: str | None) -> str | None:
    """The command line that explains a decision: ``listenpost rules explain`` takes the input
    event as a file; it is named after the input event's id here."""
    if not input_id:
        return None
    return f"listenpost rules explain {shlex.quote(input_id + '.json')}"


def notification_context(notification: Notification, *, escape: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The names every template sees (the module's docstring lists them); strings passed through
    ``escape`` when given (Slack's mrkdwn)."""
    alerts = [alert_context(alert) for alert in notification.alerts]
    context: dict[str, Any] = {
        "receiver": notification.receiver,
        "status": notification.status,
        "group_key": notification.group_key,
        "idempotency_key": notification.idempotency_key,
        "group_labels": dict(notification.group_labels),
        "common_labels": _common(a.labels for a in notification.alerts),
        "common_annotations": _common(a.annotations for a in notification.alerts),
        "alerts": alerts,
        "firing": [a for a in alerts if a["status"] == "firing"],
        "resolved": [a for a in alerts if a["status"] == "resolved"],
    }
    return _escaped(context, escape) if escape is not None else context


def alert_context(alert: Alert) -> dict[str, Any]:
    explain = explain_command(alert.input_id)
    return {
        "status": alert.status,
        "fingerprint": alert.fingerprint,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "summary": alert.annotations.get("summary") or alert.rule_id,
        "description": alert.annotations.get("description", ""),
        "severity": alert.labels.get("severity", ""),
        "rule_id": alert.rule_id,
        "ruleset_version": alert.ruleset_version,
        "starts_at": alert.starts_at.isoformat(),
        "ends_at": alert.ends_at.isoformat() if alert.ends_at else None,
        "callid": alert.callid,
        "caption_span": alert.caption_span,
        "input_id": alert.input_id,
        "decision_id": alert.decision_id,
        "generator_url": alert.generator_url,
        "explain": explain,
        "link": alert.generator_url or explain,
    }


def with_alert(context: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The context of a per-alert field: the notification's, plus ``alert``."""
    return {**context, "alert": context["alerts"][index]}


def _common(maps: Iterable[Mapping[str, str]]) -> dict[str, str]:
    it = iter(maps)
    common = dict(next(it, {}))
    for labels in it:
        common = {k: v for k, v in common.items() if labels.get(k) == v}
    return common


def _escaped(value: Any, escape: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {k: _escaped(v, escape) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v, escape) for v in value]
    return value
