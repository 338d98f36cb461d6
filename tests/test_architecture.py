"""The layers of services/ (pyproject.toml, [tool.importlinter]): imports run one way.

The contract is checked on the tree as it is, and on copies of it with one import that runs
back up added, to show that the check catches each of them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the ``services`` package under ``root``, with the project's contract."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_the_layers() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


# Each import once ran back up a layer (or across independent siblings) in this project.
BACK_IMPORTS = {
    "the event contracts import the captioner": ("services/events/models.py", "services.captioner.facets"),
    "the settings import the rules engine": ("services/settings.py", "services.rules.limits"),
    "a deployment's CLI imports the runner (and every deployment)": ("services/rules/cli.py", "services.runner"),
    "source adapters import the rules' internals": ("services/ingest/adapters.py", "services.rules.expr"),
    "the client imports the orchestrator": ("services/client.py", "services.orchestrator.pipeline"),
    "notification routing imports the rules' matchers": ("services/notify/routing.py", "services.rules.alerting"),
}


@pytest.mark.parametrize("case", sorted(BACK_IMPORTS))
def test_an_import_back_up_breaks_the_contract(case: str, tmp_path: Path) -> None:
    module, imported = BACK_IMPORTS[case]
    shutil.copytree(REPO / "services", tmp_path / "services", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / module
    path.write_text(path.read_text() + f"\nimport {imported}  # runs back up\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {imported}" in result.stdout
    assert "0 kept, 1 broken" in result.stdout
