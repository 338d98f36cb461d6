"""Inhibition, as Alertmanager has it: a firing alert mutes others that it makes redundant.

An inhibition rule mutes an alert (the *target*) while some other firing alert (the *source*)
matches the rule's ``source_matchers``, the target matches its ``target_matchers``, and both
have equal values of the ``equal`` labels (a label that both lack counts as equal, as in
Alertmanager). E.g. a ``gunshot-or-explosion`` alert on a call mutes the ``screaming`` and
``break-in-sounds`` alerts of the same call for as long as it fires.

An alert never inhibits itself: when the target also matches the source matchers, sources that
also match the target matchers are not counted (Alertmanager's rule for two-sided matches,
which also keeps two such alerts from muting each other).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from services.dsl.matchers import Matcher, matches_all
from services.notify.model import Alert


@dataclass(frozen=True)
class InhibitRule:
    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()
    line: int = 0  # where the rule starts in its file


def inhibiting(
    labels: Mapping[str, str], firing: Iterable[Mapping[str, str]], rules: Iterable[InhibitRule]
) -> tuple[InhibitRule, Mapping[str, str]] | None:
    """The first rule and source alert that mute an alert with ``labels``; None when nothing does.

    ``firing``: the labels of the alerts firing now (the alert itself may be among them).
    """
    sources = list(firing)
    for rule in rules:
        if not matches_all(rule.target_matchers, labels):
            continue
        two_sided = matches_all(rule.source_matchers, labels)
        for source in sources:
            if not matches_all(rule.source_matchers, source):
                continue
            if two_sided and matches_all(rule.target_matchers, source):
                continue
            if all(source.get(name, "") == labels.get(name, "") for name in rule.equal):
                return rule, source
    return None


def inhibited(labels: Mapping[str, str], firing: Iterable[Mapping[str, str]], rules: Iterable[InhibitRule]) -> bool:
    """Whether an alert with ``labels`` is muted by one of ``firing`` under ``rules``."""
    return inhibiting(labels, firing, rules) is not None


def firing_at(alerts: Iterable[Alert], at: datetime) -> list[Alert]:
    """The alerts that fire at ``at``: not resolved, started, and not yet ended."""
    return [a for a in alerts if a.status == "firing" and a.starts_at <= at and (a.ends_at is None or at < a.ends_at)]


def alert_inhibited(alert: Alert, others: Iterable[Alert], rules: Iterable[InhibitRule], at: datetime) -> bool:
    """:func:`inhibited` on :class:`Alert` values: only alerts firing at ``at`` inhibit."""
    sources = [a.labels for a in firing_at(others, at) if a.fingerprint != alert.fingerprint]
    return inhibited(alert.labels, sources, rules)
