"""The hard exit after a session (tests/hard_exit.py) keeps pytest's verdict: a failure still fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    ("body", "status", "summary"),
    [
        ("def test_ok():\n    assert True\n", 0, "1 passed"),
        ("def test_broken():\n    assert 1 == 2\n", 1, "1 failed"),
        ("import no_such_module_here\n", 2, "error"),
    ],
)
def test_the_exit_status_is_pytests_own(tmp_path: Path, body: str, status: int, summary: str) -> None:
    (tmp_path / "test_one.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k != "LISTENPOST_TEST_FULL_TEARDOWN"}
    env["PYTHONPATH"] = str(TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "hard_exit", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == status, done.stdout + done.stderr
    assert summary in done.stdout  # the summary is written before the process ends
