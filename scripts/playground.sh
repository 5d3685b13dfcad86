#!/usr/bin/env bash
# Sets everything up, then starts the Playground: the local model server, Hayhooks serving the example pipeline and
# Hayhooks' Chainlit chat UI. Prints the URL to open; Ctrl-C stops all of them. Arguments go to examples/playground.py
# (e.g. --port 1416 --model-port 8080, or --model-url URL to use a model server that is already running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HAYSTACK_TELEMETRY_ENABLED=False
exec .venv/bin/python examples/playground.py "$@"
