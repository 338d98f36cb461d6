"""The runtime file (services/runtime.py): how local commands find a running `listenpost serve`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.events.connection import NatsConnectError, command_settings
from services.runtime import read_runtime_nats_url, remove_runtime_file, write_runtime_file
from services.settings import NatsSettings


def test_a_running_service_is_found_through_the_runtime_file(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    assert read_runtime_nats_url(path) is None  # none running
    write_runtime_file("nats://127.0.0.1:4333", path=path)
    assert json.loads(path.read_text()) == {"nats_url": "nats://127.0.0.1:4333", "pid": os.getpid()}
    assert read_runtime_nats_url(path) == "nats://127.0.0.1:4333"
    # An option beats the setting, which beats the running service.
    assert command_settings("nats://option", NatsSettings(url="nats://setting"), path).url == "nats://option"
    assert command_settings(None, NatsSettings(url="nats://setting"), path).url == "nats://setting"
    assert command_settings(None, NatsSettings(), path).url == "nats://127.0.0.1:4333"
    remove_runtime_file(path)
    with pytest.raises(NatsConnectError, match="no NATS URL: start `listenpost serve`"):
        command_settings(None, NatsSettings(), path)
    remove_runtime_file(path)  # already gone: fine


def test_the_embedded_servers_identities_are_found_but_not_written_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    secrets = tmp_path / "secrets"
    write_runtime_file("tls://127.0.0.1:4333", secrets, path=path)
    assert json.loads(path.read_text()) == {
        "nats_url": "tls://127.0.0.1:4333", "pid": os.getpid(), "secrets_dir": str(secrets)
    }  # fmt: skip
    cfg = command_settings(None, NatsSettings(), path)
    assert cfg.identity("operator").nkey_seed_file == secrets / "operator.nk"
    # The same server named by --nats keeps its identities; another server does not get them.
    assert command_settings("tls://127.0.0.1:4333", NatsSettings(), path).roles["rules"].nkey_seed_file
    assert command_settings("nats://elsewhere:4222", NatsSettings(), path).roles == {}


def test_a_damaged_runtime_file_reads_as_no_service(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    for text in ("", "{", "[]", '{"pid": 1}', '"nats://x"'):
        path.write_text(text)
        assert read_runtime_nats_url(path) is None, text


def test_the_local_ray_nodes_metrics_endpoint_is_recorded_for_top(tmp_path: Path) -> None:
    from services.runtime import read_runtime_metrics_urls

    path = tmp_path / "runtime.json"
    assert read_runtime_metrics_urls(path) == []  # none running
    write_runtime_file("nats://127.0.0.1:4333", path=path, metrics_urls=["http://127.0.0.1:44217/metrics"])
    assert json.loads(path.read_text())["metrics_urls"] == ["http://127.0.0.1:44217/metrics"]
    assert read_runtime_metrics_urls(path) == ["http://127.0.0.1:44217/metrics"]
    path.write_text('{"nats_url": "nats://x", "pid": 1}')  # written before the field existed
    assert read_runtime_metrics_urls(path) == []


def test_serve_records_the_local_ray_nodes_metrics_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import ray

    from services.runner import local_metrics_urls

    worker = ray._private.worker.global_worker
    monkeypatch.setattr(worker, "node", None, raising=False)
    assert local_metrics_urls() == []  # Ray not started here
    # The node's port is read back from the GCS once it is up (ray/_private/node.py); -1: metrics off.
    monkeypatch.setattr(worker, "node", types.SimpleNamespace(node_ip_address="127.0.0.1", metrics_export_port=44217))
    assert local_metrics_urls() == ["http://127.0.0.1:44217/metrics"]
    monkeypatch.setattr(worker, "node", types.SimpleNamespace(node_ip_address="fd00::5", metrics_export_port=44217))
    assert local_metrics_urls() == ["http://[fd00::5]:44217/metrics"]
    monkeypatch.setattr(worker, "node", types.SimpleNamespace(node_ip_address="10.0.0.5", metrics_export_port=-1))
    assert local_metrics_urls() == []
