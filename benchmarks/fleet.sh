#!/usr/bin/env bash
# The fleet benchmark of issue 21: four fake continuous-batching engines, a 2,000-prompt batch with one replica
# killed and restarted, ours against a raw aiohttp loop; writes FLEET.md and benchmarks/fleet_results.json.
#
#   bash benchmarks/fleet.sh            # the full run (about 6 minutes; on a quiet machine)
#   bash benchmarks/fleet.sh --quick    # a check of the harness (1-2 minutes), written under .cache/fleet/quick
#   bash benchmarks/fleet.sh --only python,cli --prompts 500   # any option of benchmarks/fleet.py (--help)
#
# Runs in the project's .venv ("ours" is whatever src/ holds, through the editable install); the fake engines
# need only the standard library (uvloop when installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" benchmarks/fleet.py "$@"
