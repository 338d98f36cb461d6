"""The notification file (``apiVersion: listenpost/v1, kind: Notifications``): who hears about an alert.

Alertmanager's configuration, the parts that decide *who*: a routing tree of label matchers,
receivers, inhibition rules and named time intervals (docs/notifications.md). Read as strictly
as the rule files, and in the same way (modelled on Alertmanager's config package):

1. YAML with positions (:mod:`services.dsl.yaml_source`);
2. each section on its own against its pydantic model (unknown fields are errors, with "did
   you mean"; no type coercion), each receiver's options against the config model of its
   ``type`` (``services.notify.receivers.RECEIVER_CONFIGS``);
3. the checks across sections: receiver and time interval names unique, every name referred
   to defined, the root route well formed, intervals that are not zero.

Every error found is reported, each as ``file:line:column: cause``. :func:`load` raises
:class:`NotifyConfigError` with all of them; :class:`LastGood` keeps the last good config when
an edit breaks the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.dsl.durations import Duration, parse_duration
from services.dsl.errors import FileError, LoadError
from services.dsl.matchers import Matcher
from services.dsl.yaml_source import Loc, YamlDocument, parse_yaml, schema_errors
from services.notify.inhibition import InhibitRule
from services.notify.routing import Route, route_id
from services.notify.time_intervals import (
    Range,
    TimeInterval,
    check_time_range,
    parse_day_of_month_range,
    parse_location,
    parse_month_range,
    parse_time_of_day,
    parse_weekday_range,
    parse_year_range,
)

API_VERSION = "listenpost/v1"
KIND = "Notifications"
#: Alertmanager's defaults for the root route.
DEFAULT_GROUP_WAIT = "30s"
DEFAULT_GROUP_INTERVAL = "5m"
DEFAULT_REPEAT_INTERVAL = "4h"
#: ``group_by: ['...']``: group by every label (each distinct alert is its own group).
GROUP_BY_ALL = "..."
VERSION_LENGTH = 12
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)


class NotifyConfigError(LoadError):
    """The notification file did not load: every error found, in line order."""

    what = "notifications"


# --- the file's models ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _matcher(value: object) -> Matcher:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a matcher: write a string like 'severity=\"critical\"'")
    try:
        return Matcher.parse(value)
    except ValidationError as exc:  # a bad regular expression
        error = exc.errors(include_url=False)[0]
        raise ValueError(str((error.get("ctx") or {}).get("error", error["msg"]))) from None


def _label_name(value: str) -> str:
    if not _LABEL_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return value


def _group_label(value: str) -> str:
    return value if value == GROUP_BY_ALL else _label_name(value)


def _location(value: str) -> str:
    parse_location(value)
    return value


MatcherField = Annotated[Matcher, BeforeValidator(_matcher)]
LabelName = Annotated[str, AfterValidator(_label_name)]
Name = Annotated[str, Field(min_length=1)]


class RouteSpec(_Strict):
    """A node of the routing tree; what it leaves out it inherits from its parent."""

    receiver: Name | None = Field(default=None, description="Who hears about the alerts this node takes.")
    matchers: list[MatcherField] = Field(default_factory=list, description="All must match: 'severity=\"critical\"'.")
    continue_: bool = Field(default=False, alias="continue", description="After this node matched, try its siblings.")
    group_by: list[Annotated[str, AfterValidator(_group_label)]] | None = Field(
        default=None, description="Labels whose values make an aggregation group; ['...'] is every label."
    )
    group_wait: Duration | None = Field(default=None, description="Wait before a new group's first notification.")
    group_interval: Duration | None = Field(default=None, description="Wait before notifying a group's new alerts.")
    repeat_interval: Duration | None = Field(default=None, description="Wait before re-sending a group unchanged.")
    mute_time_intervals: list[Name] = Field(default_factory=list, description="Muted while any of these holds.")
    active_time_intervals: list[Name] = Field(default_factory=list, description="Sends only while one of these holds.")
    routes: list[RouteSpec] = Field(default_factory=list)

    @field_validator("group_by")
    @classmethod
    def _group_by_all_alone(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and GROUP_BY_ALL in value and len(value) > 1:
            raise ValueError("'...' (every label) stands alone in group_by")
        return value

    @field_validator("group_interval", "repeat_interval")
    @classmethod
    def _not_zero(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and parse_duration(value) == 0:
            raise ValueError(f"{info.field_name} cannot be zero")
        return value


class ReceiverEntry(BaseModel):
    """What every receiver has; its other keys are the options of its ``type``."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    name: Name
    type: Name
    # The file's, not the type's: judged where the routes' are (services/notify/groups.look_at),
    # so every route that names the receiver holds its notifications while it is muted.
    mute_time_intervals: list[Name] = Field(default_factory=list, description="Muted while any of these holds.")
    active_time_intervals: list[Name] = Field(default_factory=list, description="Sends only while one of these holds.")


#: The keys of a receiver entry that are not its type's options.
ENTRY_KEYS = frozenset(f.alias or name for name, f in ReceiverEntry.model_fields.items())
_TIME_INTERVAL_KEYS = ("mute_time_intervals", "active_time_intervals")


class InhibitRuleSpec(_Strict):
    source_matchers: list[MatcherField] = Field(min_length=1, description="A firing alert that matches these...")
    target_matchers: list[MatcherField] = Field(min_length=1, description="...mutes the alerts that match these...")
    equal: list[LabelName] = Field(default_factory=list, description="...when both have equal values of these labels.")


class TimeRangeSpec(_Strict):
    start_time: Annotated[int, BeforeValidator(parse_time_of_day)]
    end_time: Annotated[int, BeforeValidator(parse_time_of_day)]

    @model_validator(mode="after")
    def _ordered(self) -> TimeRangeSpec:
        check_time_range(self.start_time, self.end_time)
        return self


class TimeIntervalSpec(_Strict):
    times: list[TimeRangeSpec] = Field(default_factory=list)
    weekdays: list[Annotated[Range, BeforeValidator(parse_weekday_range)]] = Field(default_factory=list)
    days_of_month: list[Annotated[Range, BeforeValidator(parse_day_of_month_range)]] = Field(default_factory=list)
    months: list[Annotated[Range, BeforeValidator(parse_month_range)]] = Field(default_factory=list)
    years: list[Annotated[Range, BeforeValidator(parse_year_range)]] = Field(default_factory=list)
    location: Annotated[str, AfterValidator(_location)] = "UTC"

    def compile(self) -> TimeInterval:
        return TimeInterval(
            times=tuple((t.start_time, t.end_time) for t in self.times),
            weekdays=tuple(self.weekdays),
            days_of_month=tuple(self.days_of_month),
            months=tuple(self.months),
            years=tuple(self.years),
            location=parse_location(self.location),
        )


class NamedTimeIntervalSpec(_Strict):
    name: Name
    time_intervals: list[TimeIntervalSpec] = Field(min_length=1)


class NotificationsFileSpec(_Strict):
    """The envelope; each section is validated on its own, so one mistake hides no other."""

    api_version: Literal["listenpost/v1"] = Field(alias="apiVersion")
    kind: Literal["Notifications"]
    route: Any
    receivers: list[Any] = Field(min_length=1)
    inhibit_rules: list[Any] = Field(default_factory=list)
    time_intervals: list[Any] = Field(default_factory=list)
    crm: list[Any] = Field(default_factory=list)


# --- what a load gives --------------------------------------------------------------------------


@dataclass(frozen=True)
class Receiver:
    name: str
    type: str
    config: BaseModel  # the model of its type, from services.notify.receivers
    line: int = 0
    mute_time_intervals: tuple[str, ...] = ()
    active_time_intervals: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class NotifyConfig:
    path: Path
    version: str  # a digest of the file's text
    route: Route
    receivers: Mapping[str, Receiver]
    inhibit_rules: tuple[InhibitRule, ...]
    time_intervals: Mapping[str, tuple[TimeInterval, ...]]
    #: CRM write-back targets (services.notify.crm.CrmConfig), in file order.
    crm: tuple[Any, ...] = ()

    def routes(self) -> list[Route]:
        """Every node of the tree, parents before children."""
        out: list[Route] = []
        stack = [self.route]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.routes))
        return out

    def unused_receivers(self) -> list[str]:
        used = {node.receiver for node in self.routes()}
        return [name for name in self.receivers if name not in used]

    def unused_time_intervals(self) -> list[str]:
        used = {n for node in self.routes() for n in (*node.mute_time_intervals, *node.active_time_intervals)}
        used |= {n for r in self.receivers.values() for n in (*r.mute_time_intervals, *r.active_time_intervals)}
        return [name for name in self.time_intervals if name not in used]


def receiver_types() -> Mapping[str, type[BaseModel]]:
    """The receiver types and their config models (``services.notify.receivers.RECEIVER_CONFIGS``).

    Imported when a file is loaded, not with this module: the receivers import more (HTTP
    clients, templates) than checking a routing tree needs.
    """
    module = importlib.import_module("services.notify.receivers")
    types: Mapping[str, type[BaseModel]] = getattr(module, "RECEIVER_CONFIGS", {})
    return types


def load(path: Path, *, types: Mapping[str, type[BaseModel]] | None = None) -> NotifyConfig:
    """Read and check the notification file; :class:`NotifyConfigError` with every error when it is bad."""
    config, errors = check(path, types=types)
    if config is None:
        raise NotifyConfigError(errors)
    return config


def check(path: Path, *, types: Mapping[str, type[BaseModel]] | None = None) -> tuple[NotifyConfig | None, list[FileError]]:
    """The config and no errors, or None and every error (a missing file is one error too)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [FileError(path, 1, 1, f"cannot read the notification file: {exc.strerror or exc}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [FileError(path, 1, 1, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
    return parse(path, text, types=types)


def parse(path: Path, text: str, *, types: Mapping[str, type[BaseModel]] | None = None) -> tuple[NotifyConfig | None, list[FileError]]:
    """Check a notification file's text (``path`` names it in messages)."""
    try:
        doc = parse_yaml(path, text)
    except FileError as exc:
        return None, [exc]
    if doc.data is None:
        return None, [FileError(path, 1, 1, "empty file: expected Notifications (apiVersion, kind, route, receivers)")]
    errors: list[FileError] = []
    _validate(doc, NotificationsFileSpec, doc.data, (), errors)
    data = doc.data if isinstance(doc.data, dict) else {}

    route = _validate(doc, RouteSpec, data["route"], ("route",), errors) if "route" in data else None
    raw_receivers = _list(data, "receivers")
    registry = receiver_types() if types is None else types
    receivers = [_receiver(doc, raw, ("receivers", i), registry, errors) for i, raw in enumerate(raw_receivers)]
    inhibit = [_validate(doc, InhibitRuleSpec, raw, ("inhibit_rules", i), errors) for i, raw in enumerate(_list(data, "inhibit_rules"))]
    raw_intervals = _list(data, "time_intervals")
    intervals = [_validate(doc, NamedTimeIntervalSpec, raw, ("time_intervals", i), errors) for i, raw in enumerate(raw_intervals)]

    # Names as written, even in entries that did not validate: a reference to them is not
    # reported as unknown on top of the entry's own error (nor any reference when the
    # section itself is not a list).
    receiver_names = _names(doc, raw_receivers, "receivers", "receiver", errors) if _is_list(data, "receivers") else None
    interval_names = (
        _names(doc, raw_intervals, "time_intervals", "time interval", errors) if _is_list(data, "time_intervals", []) else None
    )
    crm = _crm_targets(doc, data, errors)
    if route is not None:
        _check_root(doc, route, errors)
        _check_routes(doc, route, ("route",), receiver_names, interval_names, errors)
    _check_receiver_intervals(doc, raw_receivers, interval_names, errors)

    if errors or route is None:
        return None, sorted(set(errors), key=FileError.sort_key)
    config = NotifyConfig(
        path=path,
        version=hashlib.sha256(text.encode()).hexdigest()[:VERSION_LENGTH],
        route=_build(doc, route, ("route",), None, None),
        receivers={r.name: r for r in receivers if r is not None},
        inhibit_rules=tuple(
            InhibitRule(
                source_matchers=tuple(rule.source_matchers),
                target_matchers=tuple(rule.target_matchers),
                equal=tuple(rule.equal),
                line=doc.position(("inhibit_rules", i)).line,
            )
            for i, rule in enumerate(inhibit)
            if rule is not None
        ),
        time_intervals={t.name: tuple(spec.compile() for spec in t.time_intervals) for t in intervals if t is not None},
        crm=crm,
    )
    return config, []


class LastGood:
    """The notification file as last loaded without errors: a broken edit never replaces it."""

    def __init__(self, path: Path, *, types: Mapping[str, type[BaseModel]] | None = None) -> None:
        self.path = path
        self.types = types
        self.config: NotifyConfig | None = None
        self.errors: list[FileError] = []

    def reload(self) -> NotifyConfig | None:
        """Read the file again; on errors keep the previous config (and say why in ``errors``)."""
        config, errors = check(self.path, types=self.types)
        self.errors = errors
        if config is not None:
            self.config = config
        return self.config


class WatchedConfig:
    """:class:`LastGood`, read again when the file changes: what the queuer and the sender use.

    The file's size and modification time are looked at no more often than every
    ``interval_s``; a changed file is loaded, and a broken one is logged once and leaves the
    last good config in place (None until one has loaded)."""

    def __init__(self, path: Path, *, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.last_good = LastGood(path)
        self.interval_s = interval_s
        self._clock = clock
        self._checked_at: float | None = None
        self._signature: tuple[int, int] | None = None

    @property
    def errors(self) -> list[FileError]:
        return self.last_good.errors

    def get(self) -> NotifyConfig | None:
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self.interval_s:
            return self.last_good.config
        self._checked_at = now
        try:
            stat = self.last_good.path.stat()
            signature: tuple[int, int] | None = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            signature = None
        if signature != self._signature or self.last_good.config is None:
            self._signature = signature
            previous = self.last_good.config
            config = self.last_good.reload()
            if self.last_good.errors:
                kept = f"keeping version {previous.version}" if previous is not None else "no notification is sent until it loads"
                log.error("notification file %s does not load (%s):\n%s", self.last_good.path, kept,
                          "\n".join(str(e) for e in self.last_good.errors))  # fmt: skip
            elif config is not None and (previous is None or previous.version != config.version):
                log.info("notification file %s: version %s active", self.last_good.path, config.version)
        return self.last_good.config


# --- the checks -------------------------------------------------------------------------------


def _validate(doc: YamlDocument, model: type[M], value: Any, loc: Loc, errors: list[FileError]) -> M | None:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors.extend(schema_errors(doc, exc, loc, model))
        return None


def _is_list(data: Mapping[str, Any], key: str, default: Any = None) -> bool:
    return isinstance(data.get(key, default), list)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    return value if isinstance(value, list) else []


def _receiver(
    doc: YamlDocument, raw: Any, loc: Loc, registry: Mapping[str, type[BaseModel]], errors: list[FileError]
) -> Receiver | None:
    entry = _validate(doc, ReceiverEntry, raw, loc, errors)
    if entry is None:
        return None
    model = registry.get(entry.type)
    if model is None:
        known = sorted(registry)
        close = difflib.get_close_matches(entry.type, known, n=1)
        hint = f", did you mean {close[0]!r}?" if close else f" (known: {', '.join(known) or 'none registered'})"
        errors.append(doc.error((*loc, "type"), f"unknown receiver type {entry.type!r}{hint}"))
        return None
    # The type's model gets the entry's options, and `name` and `type` only if it has such fields.
    fields = {f.alias or name for name, f in model.model_fields.items()}
    options = {k: v for k, v in raw.items() if k not in ENTRY_KEYS or (k in ("name", "type") and k in fields)}
    config = _validate(doc, model, options, loc, errors)
    if config is None:
        return None
    return Receiver(
        name=entry.name,
        type=entry.type,
        config=config,
        line=doc.position(loc).line,
        mute_time_intervals=tuple(entry.mute_time_intervals),
        active_time_intervals=tuple(entry.active_time_intervals),
    )


def _crm_targets(doc: YamlDocument, data: Mapping[str, Any], errors: list[FileError]) -> tuple[Any, ...]:
    """The ``crm:`` section: each entry a CRM target (its mapping named or inline, compiled now; its
    ``when`` compiled now), names unique. Imported here, not with this module: as for receivers."""
    model: type[BaseModel] = importlib.import_module("services.notify.crm").CrmConfig
    raw = _list(data, "crm")
    targets = [_validate(doc, model, entry, ("crm", i), errors) for i, entry in enumerate(raw)]
    if _is_list(data, "crm", []):
        _names(doc, raw, "crm", "CRM target", errors)
    return tuple(t for t in targets if t is not None)


def _names(doc: YamlDocument, raw: list[Any], section: str, what: str, errors: list[FileError]) -> list[str]:
    first: dict[str, Loc] = {}
    for i, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            continue
        loc = (section, i, "name")
        if name in first:
            where = doc.position(first[name])
            errors.append(doc.error(loc, f"duplicate {what} name {name!r} (first defined at {doc.path}:{where.line}:{where.column})"))
        else:
            first[name] = loc
    return list(first)


def _check_root(doc: YamlDocument, root: RouteSpec, errors: list[FileError]) -> None:
    if root.receiver is None:
        errors.append(doc.error(("route",), "the root route must name a receiver (its children inherit it)", key=True))
    if root.matchers:
        errors.append(doc.error(("route", "matchers"), "the root route takes every alert: it has no matchers", key=True))
    if root.continue_:
        errors.append(doc.error(("route", "continue"), "the root route has no siblings: it takes no continue", key=True))
    for key in ("mute_time_intervals", "active_time_intervals"):
        if getattr(root, key):
            errors.append(doc.error(("route", key), f"the root route takes no {key} (put them on a child route)", key=True))


def _check_routes(
    doc: YamlDocument, node: RouteSpec, loc: Loc, receivers: list[str] | None, intervals: list[str] | None, errors: list[FileError]
) -> None:
    if receivers is not None and node.receiver is not None and node.receiver not in receivers:
        errors.append(doc.error((*loc, "receiver"), _unknown("receiver", node.receiver, receivers)))
    for key in ("mute_time_intervals", "active_time_intervals"):
        for j, name in enumerate(getattr(node, key)):
            if intervals is not None and name not in intervals:
                errors.append(doc.error((*loc, key, j), _unknown("time interval", name, intervals)))
    for i, child in enumerate(node.routes):
        _check_routes(doc, child, (*loc, "routes", i), receivers, intervals, errors)


def _check_receiver_intervals(doc: YamlDocument, raw: list[Any], intervals: list[str] | None, errors: list[FileError]) -> None:
    """The time intervals receivers name are defined (a list that is not one is ReceiverEntry's error)."""
    if intervals is None:
        return
    for i, entry in enumerate(raw):
        for key in _TIME_INTERVAL_KEYS:
            names = entry.get(key) if isinstance(entry, dict) else None
            for j, name in enumerate(names if isinstance(names, list) else []):
                if isinstance(name, str) and name and name not in intervals:
                    errors.append(doc.error(("receivers", i, key, j), _unknown("time interval", name, intervals)))


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {what} {name!r}, did you mean {close[0]!r}?"
    return f"unknown {what} {name!r} (defined: {', '.join(known) or 'none'})"


def _build(doc: YamlDocument, spec: RouteSpec, loc: Loc, parent: Route | None, index: int | None) -> Route:
    """A node with its parent's settings filled in (the root's defaults are Alertmanager's)."""

    def duration(value: str | None, inherited: float | None, default: str) -> float:
        if value is not None:
            return parse_duration(value)
        return inherited if inherited is not None else parse_duration(default)

    if spec.group_by is not None:
        group_by, group_by_all = tuple(n for n in spec.group_by if n != GROUP_BY_ALL), GROUP_BY_ALL in spec.group_by
    else:
        group_by, group_by_all = (parent.group_by, parent.group_by_all) if parent else ((), False)
    receiver = spec.receiver or (parent.receiver if parent else "")
    node_id = route_id(parent.id if parent else None, spec.matchers, index)
    shell = Route(
        id=node_id,
        matchers=tuple(spec.matchers),
        receiver=receiver,
        continue_=spec.continue_,
        group_by=group_by,
        group_by_all=group_by_all,
        group_wait_s=duration(spec.group_wait, parent.group_wait_s if parent else None, DEFAULT_GROUP_WAIT),
        group_interval_s=duration(spec.group_interval, parent.group_interval_s if parent else None, DEFAULT_GROUP_INTERVAL),
        repeat_interval_s=duration(spec.repeat_interval, parent.repeat_interval_s if parent else None, DEFAULT_REPEAT_INTERVAL),
        mute_time_intervals=tuple(spec.mute_time_intervals),
        active_time_intervals=tuple(spec.active_time_intervals),
        routes=(),
        line=doc.position(loc).line,
    )
    children = tuple(_build(doc, child, (*loc, "routes", i), shell, i) for i, child in enumerate(spec.routes))
    return dataclasses.replace(shell, routes=children)
