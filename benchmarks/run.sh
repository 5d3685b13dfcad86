#!/usr/bin/env bash
# Runs the client benchmarks and writes BENCHMARKS.md and benchmarks/chart.png.
#
#   bash benchmarks/run.sh                 # everything (about 8 minutes once the venvs exist)
#   bash benchmarks/run.sh --quick         # a fast look (about 2.5 minutes): 2 blocks, short windows, no local model
#   bash benchmarks/run.sh --blocks 3 --skip-local   # any option of benchmarks/bench.py (--help)
#
# The peers need conflicting huggingface_hub versions, so each gets its own venv under .cache/bench-venvs/
# (created on first use, reused while its package list is unchanged). "ours" and the raw clients (urllib3,
# aiohttp, httpx, httpx2) run in the project's .venv (Haystack 3 + this package, editable).
set -euo pipefail
cd "$(dirname "$0")/.."
VENVS=.cache/bench-venvs
PYTHON=${PYTHON:-python3}

# ensure_venv NAME PACKAGE...: create or update the venv only when its package list changed.
ensure_venv() {
  local name=$1
  shift
  local dir=$VENVS/$name want="$*"
  if [[ -x $dir/bin/python && -f $dir/.bench-packages && "$(cat "$dir/.bench-packages")" == "$want" ]]; then
    return
  fi
  echo "setting up $dir: $want"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  echo "$want" >"$dir/.bench-packages"
}

mkdir -p "$VENVS"
ensure_venv tools matplotlib==3.11.2 uvloop==0.23.0
ensure_venv hfhub huggingface_hub==2.4.0
ensure_venv haystack2 haystack-ai==2.31.0 huggingface_hub==2.4.0
ensure_venv langchain langchain-huggingface==1.2.3 huggingface_hub==1.33.0

MAIN=.venv/bin/python
# The project's venv when there is one (whatever state src/ is in: a client that fails to import is reported
# as such); otherwise an editable install of our own (without the heavy `local` extra: that section skips).
if ! [[ -x $MAIN ]] || ! "$MAIN" -c "import haystack, urllib3, aiohttp, httpx, httpx2" 2>/dev/null; then
  ensure_venv main -e . httpx httpx2
  MAIN=$VENVS/main/bin/python
fi

exec "$VENVS/tools/bin/python" benchmarks/bench.py --main-python "$MAIN" --venvs "$VENVS" "$@"
