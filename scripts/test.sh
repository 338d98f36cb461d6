#!/usr/bin/env bash
# Set up (or refresh) .venv, then check and test everything. Extra args go to pytest.
#   ruff: lint and import order;  mypy: types of services/;  pytest: the suite, which also
#   checks the import layers (tests/test_architecture.py, import-linter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "ruff: lint and import order"
.venv/bin/ruff check services tests bench
echo "mypy: types of services/"
.venv/bin/mypy
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
# A crash in native code prints every thread's Python stack, not just "Segmentation fault".
export PYTHONFAULTHANDLER=1
exec .venv/bin/python -m pytest -ra --durations=15 "$@"
