#!/usr/bin/env bash
# Sets everything up, starts the local model server on localhost:8080 and streams an answer from it
# through HuggingFaceAPIGenerator (the first example of the original documentation).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HAYSTACK_TELEMETRY_ENABLED=False
exec .venv/bin/python examples/quickstart.py "$@"
