#!/usr/bin/env bash
# The prepared GPU check (stream_monitor/bench/gpu_check.py): every CUDA path exercised and every
# GPU target measured, in at most 8 minutes; JSON, logs and a Markdown summary go to $OUT (the
# summary is printed too).
#   scripts/gpu-check.sh                 on the GPU machine, from the repository root
#   scripts/gpu-check.sh --dry           every step small, on the CPU (the suite runs this)
#   scripts/gpu-check.sh --only peak forwards     some steps (other options: --budget S, --out DIR)
# On the GPU machine the wheels in .whl/ (scripts/gpu-wheels.sh, run where a registry is reachable)
# are installed first into a temporary target, $GPU_CHECK_SITE (default /tmp/site); --dry does not
# install them (the project's venv has everything), nor does GPU_CHECK_INSTALL=0.
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
dry=0
for arg in "$@"; do [ "$arg" = "--dry" ] && dry=1; done
if [ "$dry" = 0 ] && [ "${GPU_CHECK_INSTALL:-1}" = 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
  site="${GPU_CHECK_SITE:-/tmp/site}"
  started=$(date +%s)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  echo "gpu-check: installed $(ls .whl/*.whl | wc -l) wheels into $site in $(( $(date +%s) - started )) s" >&2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The project is not installed there: the repository root must be importable.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m stream_monitor.bench.gpu_check "$@"
