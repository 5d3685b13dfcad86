#!/usr/bin/env bash
# Sets everything up, then runs the whole check: lint, types, and every test (the real local model included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HAYSTACK_TELEMETRY_ENABLED=False
echo "== ruff"; .venv/bin/ruff check
echo "== ruff format"; .venv/bin/ruff format --check
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest "$@"
