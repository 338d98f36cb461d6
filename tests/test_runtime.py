"""The runtime file (services/runtime.py): how local commands find a running `listenpost serve`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.runtime import command_nats_url, read_runtime_nats_url, remove_runtime_file, write_runtime_file


def test_a_running_service_is_found_through_the_runtime_file(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    assert read_runtime_nats_url(path) is None  # none running
    write_runtime_file("nats://127.0.0.1:4333", path)
    assert json.loads(path.read_text()) == {"nats_url": "nats://127.0.0.1:4333", "pid": os.getpid()}
    assert read_runtime_nats_url(path) == "nats://127.0.0.1:4333"
    # An option beats the setting, which beats the running service.
    assert command_nats_url("nats://option", "nats://setting", path) == "nats://option"
    assert command_nats_url(None, "nats://setting", path) == "nats://setting"
    assert command_nats_url(None, None, path) == "nats://127.0.0.1:4333"
    remove_runtime_file(path)
    assert command_nats_url(None, None, path) is None
    remove_runtime_file(path)  # already gone: fine


def test_a_damaged_runtime_file_reads_as_no_service(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    for text in ("", "{", "[]", '{"pid": 1}', '"nats://x"'):
        path.write_text(text)
        assert read_runtime_nats_url(path) is None, text
