"""Settings from the environment, the app builder's checks, and the shipped deploy configs (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from services.app import AppConfigError, build_app, resolve_paths
from services.settings import REAL_MODEL, Settings, SettingsError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_mean_embedded_nats_local_ray_and_the_real_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTENPOST_NATS__URL", "LISTENPOST_RAY_ADDRESS", "LISTENPOST_CAPTIONER__MODEL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.nats.url is None and settings.ray_address is None
    assert settings.captioner.model == REAL_MODEL and settings.captioner.engine == "vllm"
    assert settings.nats.max_deliver > 0  # never -1: bounded redelivery


def test_nested_settings_come_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTENPOST_NATS__URL", "nats://example:4222")
    monkeypatch.setenv("LISTENPOST_CAPTIONER__ENGINE", "transformers")
    monkeypatch.setenv("LISTENPOST_CAPTIONER__MAX_NUM_SEQS", "64")
    monkeypatch.setenv("LISTENPOST_RULES__DIRECTORY", "/etc/listenpost/rules")
    monkeypatch.setenv("LISTENPOST_PREPROCESS__FILE_ROOTS", '["/calls", "/media"]')
    settings = Settings(_env_file=None)
    assert settings.nats.url == "nats://example:4222"
    assert settings.captioner.engine == "transformers" and settings.captioner.max_num_seqs == 64
    assert settings.rules.directory == Path("/etc/listenpost/rules")
    assert settings.preprocess.file_roots == [Path("/calls"), Path("/media")]
    assert settings.nats.subject("in", "x") == "listenpost.in.x"


def test_bad_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTENPOST_CAPTIONER__ENGINE", "tensorrt")
    with pytest.raises(ValueError, match="captioner.engine"):
        Settings(_env_file=None)


def test_app_needs_a_nats_url() -> None:
    with pytest.raises(AppConfigError, match="no NATS URL: set LISTENPOST_NATS__URL"):
        build_app(Settings(_env_file=None, nats={"url": None}))


def test_app_graph_has_the_five_named_deployments_and_fits_two_cpus(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, nats={"url": "nats://127.0.0.1:4222"})
    app = build_app(settings)
    ingress = app._bound_deployment
    deployments = {ingress.name: ingress}
    for arg in ingress.init_args:
        if hasattr(arg, "_bound_deployment"):
            deployments[arg._bound_deployment.name] = arg._bound_deployment
    assert set(deployments) == {"Ingress", "Preprocessor", "Captioner", "RulesEngine", "LiveStreams"}
    cpus = sum(
        d.ray_actor_options.get("num_cpus", 1) * (d.num_replicas if isinstance(d.num_replicas, int) else 1)
        for d in deployments.values()
    )
    assert cpus <= 2.0
    assert deployments["Captioner"]._deployment_config.autoscaling_config is not None


def test_the_notifier_joins_the_graph_when_enabled_with_one_replica_and_options_from_settings() -> None:
    settings = Settings(
        _env_file=None,
        nats={"url": "nats://127.0.0.1:4222"},
        notify={"enabled": True, "num_cpus": 0.05, "health_check_timeout_s": 20, "drain_timeout_s": 7},
    )
    ingress = build_app(settings)._bound_deployment
    deployments = {ingress.name: ingress}
    for arg in ingress.init_args:
        if hasattr(arg, "_bound_deployment"):
            deployments[arg._bound_deployment.name] = arg._bound_deployment
    assert set(deployments) == {"Ingress", "Preprocessor", "Captioner", "RulesEngine", "Notifier", "LiveStreams"}
    notifier = deployments["Notifier"]
    assert notifier.num_replicas == 1 and notifier.ray_actor_options["num_cpus"] == 0.05
    assert notifier._deployment_config.health_check_timeout_s == 20
    assert notifier._deployment_config.graceful_shutdown_timeout_s == 17  # the drain, and a margin
    # Its settings were resolved too: a replica may run in another working directory.
    (bound_settings,) = notifier.init_args
    assert bound_settings.notify.file.is_absolute()
    cpus = sum(
        d.ray_actor_options.get("num_cpus", 1) * (d.num_replicas if isinstance(d.num_replicas, int) else 1)
        for d in deployments.values()
    )
    assert cpus <= 2.0
    # Off by default: the shipped notification file names secrets nobody configured yet.
    assert Settings(_env_file=None).notify.enabled is False


def test_the_notifier_refuses_more_than_one_replica() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(_env_file=None, notify={"replicas": 2})
    (problem,) = caught.value.problems
    assert problem.startswith("notify.replicas (LISTENPOST_NOTIFY__REPLICAS): ")
    assert "exactly 1 replica, not 2: inhibition needs the one queuer that holds the firing set" in problem
    from services.app import build

    with pytest.raises(SettingsError, match=r"notify\.replicas \(LISTENPOST_NOTIFY__REPLICAS\)"):
        build({"nats": {"url": "nats://127.0.0.1:4222"}, "notify": {"enabled": True, "replicas": 3}})
    unchecked = Settings(_env_file=None, nats={"url": "nats://127.0.0.1:4222"}, notify={"enabled": True})
    unchecked = unchecked.model_copy(update={"notify": unchecked.notify.model_copy(update={"replicas": 2})})
    with pytest.raises(AppConfigError, match="notify.replicas must be 1"):
        build_app(unchecked)


def test_local_paths_are_made_absolute_for_replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    settings = resolve_paths(Settings(_env_file=None, captioner={"model": "model"}, rules={"directory": "rules"}))
    assert settings.captioner.model == str(tmp_path / "model")
    assert settings.rules.directory == tmp_path / "rules"
    hub = resolve_paths(Settings(_env_file=None))
    assert hub.captioner.model == REAL_MODEL  # a hub id is left alone


def test_shipped_serve_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((REPO / "deploy/serve-config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "services.app:build"
    Settings(_env_file=None, **app.args)  # the args are valid listenpost settings
    # ... and so is the environment it gives the replicas: hardened NATS (TLS, a seed per role).
    for name, value in app.runtime_env["env_vars"].items():
        monkeypatch.setenv(name, value)
    nats = Settings(_env_file=None, **app.args).nats
    assert nats.tls and not nats.provision_on_start
    assert {role for role in ("ingress", "preprocess", "rules", "notify") if nats.identity(role).nkey_seed_file} == {
        "ingress", "preprocess", "rules", "notify"
    }  # fmt: skip
    assert Settings(_env_file=None, **app.args).notify.enabled  # a cluster runs the Notifier, secrets mounted


def test_ray_cluster_config_has_cpu_head_and_gpu_workers() -> None:
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())


# --- strict settings -----------------------------------------------------------------------


def test_a_typo_in_the_serve_config_args_names_the_key_and_the_right_one() -> None:
    from services.app import build

    config = yaml.safe_load((REPO / "deploy/serve-config.yaml").read_text())
    args = config["applications"][0]["args"]
    args["captioner"]["max_replica"] = 4  # for max_replicas: silently the default before
    args["rules"]["reload_interval"] = 5
    with pytest.raises(SettingsError) as caught:
        build(args)
    assert caught.value.problems == [
        "captioner.max_replica (LISTENPOST_CAPTIONER__MAX_REPLICA): unknown setting, did you mean 'max_replicas'?",
        "rules.reload_interval (LISTENPOST_RULES__RELOAD_INTERVAL): unknown setting, did you mean 'reload_interval_s'?",
    ]
    with pytest.raises(SettingsError, match=r"rule \(LISTENPOST_RULE\): unknown setting, did you mean 'rules'\?"):
        Settings(_env_file=None, **{"rule": {"directory": "x"}})


def test_an_unknown_listenpost_variable_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LISTENPOST_CAPTIONER__MAX_REPLICA", "4")
    monkeypatch.setenv("LISTENPOST_INGEST_REPLICAS", "2")
    monkeypatch.setenv("LISTENPOST_NOT_A_THING", "1")
    monkeypatch.setenv("LISTENPOST_VENV", ".venv")  # scripts/setup.sh's own: not a setting, not an error
    with pytest.raises(SettingsError) as caught:
        Settings(_env_file=None)
    assert sorted(caught.value.problems) == [
        "LISTENPOST_CAPTIONER__MAX_REPLICA: unknown setting, did you mean LISTENPOST_CAPTIONER__MAX_REPLICAS?",
        "LISTENPOST_INGEST_REPLICAS: this setting is now LISTENPOST_INGRESS__REPLICAS",
        "LISTENPOST_NOT_A_THING: unknown setting",
    ]
    for name in ("LISTENPOST_CAPTIONER__MAX_REPLICA", "LISTENPOST_INGEST_REPLICAS", "LISTENPOST_NOT_A_THING"):
        monkeypatch.delenv(name)
    # The same for a .env file; a map setting's keys are settings too.
    env_file = tmp_path / ".env"
    env_file.write_text("LISTENPOST_RULES__DIRECTRY=/x\n")
    with pytest.raises(SettingsError, match="LISTENPOST_RULES__DIRECTRY: unknown setting, did you mean LISTENPOST_RULES__DIRECTORY"):
        Settings(_env_file=env_file)
    monkeypatch.setenv("LISTENPOST_CAPTIONER__LIMIT_MM_PER_PROMPT__AUDIO", "2")
    assert Settings(_env_file=None).captioner.limit_mm_per_prompt["audio"] == 2


def test_the_command_line_reports_a_settings_error_without_a_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [str(Path(sys.executable).with_name("listenpost")), "rules", "lint", str(REPO / "router_rules")],
        env={**os.environ, "LISTENPOST_RULES__EMIT_SUBJECT": "x"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "LISTENPOST_RULES__EMIT_SUBJECT: unknown setting, did you mean LISTENPOST_RULES__EMIT_SUBJECTS?" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_deployments_serve_options_come_from_settings() -> None:
    settings = Settings(
        _env_file=None,
        nats={"url": "nats://127.0.0.1:4222"},
        ingress={"replicas": 2, "num_cpus": 0.25, "max_ongoing_requests": 50},
        preprocess={"replicas": 3, "max_ongoing_requests": 16},
        rules={"replicas": 2, "num_cpus": 0.2, "health_check_timeout_s": 45},
        captioner={"max_replicas": 3},
    )
    ingress = build_app(settings)._bound_deployment
    deployments = {ingress.name: ingress}
    for arg in ingress.init_args:
        if hasattr(arg, "_bound_deployment"):
            deployments[arg._bound_deployment.name] = arg._bound_deployment
    config = {name: d._deployment_config for name, d in deployments.items()}
    assert (deployments["Ingress"].num_replicas, config["Ingress"].max_ongoing_requests) == (2, 50)
    assert deployments["Ingress"].ray_actor_options["num_cpus"] == 0.25
    assert (deployments["Preprocessor"].num_replicas, config["Preprocessor"].max_ongoing_requests) == (3, 16)
    assert deployments["RulesEngine"].num_replicas == 2 and deployments["RulesEngine"].ray_actor_options["num_cpus"] == 0.2
    assert config["RulesEngine"].health_check_timeout_s == 45
    assert config["Captioner"].autoscaling_config.max_replicas == 3


def test_docs_settings_md_is_current_and_every_setting_is_described() -> None:
    from services.settings import settings_markdown

    assert (REPO / "docs/settings.md").read_text() == settings_markdown(), "run: listenpost settings doc -o docs/settings.md"
    undescribed = [row for row in settings_markdown().splitlines() if row.startswith("| `") and row.endswith("|  |")]
    assert undescribed == []


def test_an_ingress_that_cannot_fill_the_engines_batches_is_warned_about() -> None:
    from services.settings import capacity_warnings

    assert capacity_warnings(Settings()) == []  # the defaults keep the engine's batches full
    starved = Settings(ingress={"max_in_flight": 16}, captioner={"max_num_seqs": 32, "max_replicas": 1})
    (warning,) = capacity_warnings(starved)
    assert "at most 16 events in flight" in warning and "up to 32 windows" in warning
    assert "raise ingress.max_in_flight or ingress.replicas" in warning
    assert capacity_warnings(Settings(ingress={"max_in_flight": 16, "replicas": 2},
                                      captioner={"max_num_seqs": 32, "max_replicas": 1})) == []  # fmt: skip
