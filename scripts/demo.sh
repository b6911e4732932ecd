#!/usr/bin/env bash
# The main job on a fresh machine: install what the monitor needs into .venv, then watch the
# synthetic face stream (a public-domain photo moving on screen), print alerts as JSON lines
# on stdout and serve Prometheus metrics on http://127.0.0.1:${METRICS_PORT:-9108}/metrics.
# Stop with Ctrl-C. Extra arguments go to `stream-monitor run` (e.g. --duration 60).
#
# Detectors whose weights are installed run with them; CADDM's are fetched from the authors'
# Google Drive release when missing (`stream-monitor weights fetch`, Apache-2.0; DEMO_FETCH=0
# skips it) and then run at threshold 0.5. With no usable weights at all (offline, say) it runs
# random weights and threshold 0 — a plumbing demo, and it says so: alerts then carry
# "calibrated": false. On a machine without a GPU it runs CADDM only (deploy/demo-cpu.yaml):
# a full-size StA window takes ~9 s and a StyleFlow window ~40 s on a 2-core CPU (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
sm=.venv/bin/stream-monitor
args=(run "synthetic:" --metrics-port "${METRICS_PORT:-9108}")
if .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  detectors=caddm,sta,styleflow
  caddm_model=caddm_efficientnet_b4
else
  detectors=caddm
  caddm_model=caddm_resnet34  # deploy/demo-cpu.yaml's
  args+=(--config deploy/demo-cpu.yaml)
  echo "demo: no GPU found: running CADDM (ResNet-34) only, at 5 analysed frames per second" \
       "(deploy/demo-cpu.yaml); full-size StA/StyleFlow are far from real time on a CPU" >&2
fi
# Installed weights are used; missing CADDM weights are fetched from the authors' release
# (scripts/demo_weights.sh: real weights at threshold 0.5), else random weights as before.
mapfile -t weights_args < <(STREAM_MONITOR="$sm" scripts/demo_weights.sh "$detectors" "$caddm_model")
args+=("${weights_args[@]}")
exec "$sm" "${args[@]}" "$@"
