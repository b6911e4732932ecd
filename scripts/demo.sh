#!/usr/bin/env bash
# The main job on a fresh machine: install what the monitor needs into .venv, then watch the
# synthetic face stream (a public-domain photo moving on screen), print alerts as JSON lines
# on stdout and serve Prometheus metrics on http://127.0.0.1:${METRICS_PORT:-9108}/metrics.
# Stop with Ctrl-C. Extra arguments go to `stream-monitor run` (e.g. --duration 60).
#
# Until the detectors' weights are installed (weights/README.md), it runs them with random
# weights and threshold 0 — a plumbing demo, and it says so: alerts then carry
# "calibrated": false. On a machine without a GPU it runs CADDM only (deploy/demo-cpu.yaml):
# a full-size StA window takes ~9 s and a StyleFlow window ~40 s on a 2-core CPU (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
sm=.venv/bin/stream-monitor
args=(run "synthetic:" --metrics-port "${METRICS_PORT:-9108}")
if .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  detectors=caddm,sta,styleflow
else
  detectors=caddm
  args+=(--config deploy/demo-cpu.yaml)
  echo "demo: no GPU found: running CADDM (ResNet-34) only, at 5 analysed frames per second" \
       "(deploy/demo-cpu.yaml); full-size StA/StyleFlow are far from real time on a CPU" >&2
fi
if ! "$sm" weights verify --detectors "$detectors" >/dev/null 2>&1; then
  echo "demo: detector weights are not installed (see weights/README.md): using RANDOM weights and" \
       "threshold 0, so every window alerts and alerts say \"calibrated\": false" >&2
  args+=(--random-weights --threshold 0)
fi
exec "$sm" "${args[@]}" "$@"
