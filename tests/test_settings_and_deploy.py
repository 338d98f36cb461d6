"""Settings from the environment, the app builder's checks, and the shipped deploy configs (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from services.app import AppConfigError, build_app, resolve_paths
from services.settings import REAL_MODEL, Settings

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


def test_app_graph_has_the_four_named_deployments_and_fits_two_cpus(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, nats={"url": "nats://127.0.0.1:4222"})
    app = build_app(settings)
    ingress = app._bound_deployment
    deployments = {ingress.name: ingress}
    for arg in ingress.init_args:
        if hasattr(arg, "_bound_deployment"):
            deployments[arg._bound_deployment.name] = arg._bound_deployment
    assert set(deployments) == {"Ingress", "Preprocessor", "Captioner", "RulesEngine"}
    cpus = sum(
        d.ray_actor_options.get("num_cpus", 1) * (d.num_replicas if isinstance(d.num_replicas, int) else 1)
        for d in deployments.values()
    )
    assert cpus <= 2.0
    assert deployments["Captioner"]._deployment_config.autoscaling_config is not None


def test_local_paths_are_made_absolute_for_replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    settings = resolve_paths(Settings(_env_file=None, captioner={"model": "model"}, rules={"directory": "rules"}))
    assert settings.captioner.model == str(tmp_path / "model")
    assert settings.rules.directory == tmp_path / "rules"
    hub = resolve_paths(Settings(_env_file=None))
    assert hub.captioner.model == REAL_MODEL  # a hub id is left alone


def test_shipped_serve_config_is_valid() -> None:
    config = yaml.safe_load((REPO / "deploy/serve-config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "services.app:build"
    Settings(_env_file=None, **app.args)  # the args are valid listenpost settings


def test_ray_cluster_config_has_cpu_head_and_gpu_workers() -> None:
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
