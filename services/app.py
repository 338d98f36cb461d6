"""Builds the listenpost Serve application from settings.

    serve run services.app:build            # needs LISTENPOST_NATS__URL
    listenpost serve                        # starts an embedded nats-server first

Graph: Ingress -> Preprocessor -> Captioner, the RulesEngine, the LiveStreams owners (which
call the Captioner too) and, when ``notify.enabled``, the Notifier (driven by NATS, handed to
the Ingress only for status and so that Serve deploys them). Resources come from settings; the
defaults fit the whole graph on a 2-CPU machine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from services.captioner.deployment import Captioner
from services.notify.deployment import Notifier
from services.orchestrator.deployment import Ingress
from services.preprocess.deployment import Preprocessor
from services.rules.deployment import RulesEngine
from services.settings import Settings, capacity_warnings
from services.streams.deployment import LiveStreams

log = logging.getLogger(__name__)

APP_NAME = "listenpost"


class AppConfigError(ValueError):
    """The settings cannot make a runnable application."""


def _absolute(path: Path) -> Path:
    # Replicas may run with another working directory than the driver.
    return path.expanduser().resolve()


def resolve_paths(settings: Settings) -> Settings:
    """A copy of the settings with every local path made absolute."""
    model = settings.captioner.model
    if Path(model).expanduser().exists():
        model = str(_absolute(Path(model)))
    return settings.model_copy(
        update={
            "captioner": settings.captioner.model_copy(update={"model": model}),
            "rules": settings.rules.model_copy(update={"directory": _absolute(settings.rules.directory)}),
            "adapters": settings.adapters.model_copy(update={"directory": _absolute(settings.adapters.directory)}),
            "notify": settings.notify.model_copy(
                update={
                    "file": _absolute(settings.notify.file),
                    "secrets_dir": _absolute(settings.notify.secrets_dir) if settings.notify.secrets_dir else None,
                    "crm_mappings_dir": _absolute(settings.notify.crm_mappings_dir),
                }
            ),
            "preprocess": settings.preprocess.model_copy(
                update={"file_roots": [_absolute(p) for p in settings.preprocess.file_roots]}
            ),
        }
    )


def build_app(settings: Settings) -> Application:
    if not settings.nats.url:
        raise AppConfigError(
            "no NATS URL: set LISTENPOST_NATS__URL (or run `listenpost serve`, which starts an embedded nats-server)"
        )
    if settings.notify.enabled and settings.notify.replicas != 1:  # settings refuse it; a model_copy does not check
        raise AppConfigError("notify.replicas must be 1: inhibition needs the one queuer that holds the firing set")
    settings = resolve_paths(settings)
    for warning in capacity_warnings(settings):
        log.warning("%s", warning)
    # Every deployment's options (replicas, resources, concurrency, health checks; the
    # Captioner's autoscaling) come from its settings group.
    # Every replica writes Serve's log with the same encoding (JSON by default: an `event_id` per line).
    logs = settings.logs.serve_logging_config()
    preprocessor = _deployment(Preprocessor).options(**settings.preprocess.deployment_options(), logging_config=logs).bind(settings)
    captioner = _deployment(Captioner).options(**settings.captioner.deployment_options(), logging_config=logs).bind(settings)
    rules = _deployment(RulesEngine).options(**settings.rules.deployment_options(), logging_config=logs).bind(settings)
    notifier = (
        _deployment(Notifier).options(**settings.notify.deployment_options(), logging_config=logs).bind(settings)
        if settings.notify.enabled
        else None
    )
    streams = (
        _deployment(LiveStreams).options(**settings.streams.deployment_options(), logging_config=logs).bind(settings, captioner)
        if settings.streams.enabled
        else None
    )
    ingress = _deployment(Ingress).options(**settings.ingress.deployment_options(), logging_config=logs)
    return ingress.bind(settings, preprocessor, captioner, rules, notifier, streams)


def _deployment(decorated: object) -> Deployment:
    """A ``@serve.deployment`` class as what it is at run time (type checkers ignore class decorators)."""
    assert isinstance(decorated, Deployment), decorated
    return decorated


def build(args: dict[str, Any] | None = None) -> Application:
    """Entry point for ``serve run`` / ``serve deploy``: the config's ``args`` override env settings.

    A typo in ``args`` (``max_replica``) or an unknown ``LISTENPOST_`` variable is a
    :class:`~services.settings.SettingsError` naming it, so the deploy fails instead of
    running with a default nobody asked for.
    """
    return build_app(Settings(**(args or {})))
