#!/usr/bin/env bash
# Which weights scripts/demo.sh runs with. Prints the extra `stream-monitor run` arguments on
# stdout, one per line; everything for the user goes to stderr. Always exits 0.
#
#   scripts/demo_weights.sh DETECTORS CADDM_MODEL
#     DETECTORS    the comma list the demo wants (caddm, or caddm,sta,styleflow)
#     CADDM_MODEL  the CADDM variant the demo runs (caddm_resnet34 on a CPU, caddm_efficientnet_b4 on a GPU)
#
# CADDM: `weights fetch CADDM_MODEL` checks the file if it is installed and otherwise downloads
# it from the authors' Google Drive release (Apache-2.0: its licence is printed, there is nothing
# to accept). The demo never fetches non-commercial files (StA, pSp): it does not accept a
# licence on the user's behalf. StA/StyleFlow count only if already installed (`weights verify`).
#   - some detectors usable: run those with their real weights at threshold 0.5 (uncalibrated);
#   - none: random weights and threshold 0, with one line saying so (offline, Drive refusing, ...).
# Environment: STREAM_MONITOR (the command; default .venv/bin/stream-monitor), WEIGHTS_DIR
# (default weights), DEMO_FETCH=0 (never download; use what is installed).
set -uo pipefail
detectors=$1
caddm_model=$2
read -r -a sm <<< "${STREAM_MONITOR:-.venv/bin/stream-monitor}"
wd=${WEIGHTS_DIR:-weights}
usable=()
for d in ${detectors//,/ }; do
  if [ "$d" = caddm ]; then
    fetch=(weights fetch "$caddm_model" --weights-dir "$wd")
    [ "${DEMO_FETCH:-1}" = 0 ] && fetch+=(--offline)
    # the fetch's own lines (licence, progress, its error) go to the user; stdout is ours
    "${sm[@]}" "${fetch[@]}" >&2 && usable+=(caddm)
  elif "${sm[@]}" weights verify --detectors "$d" --weights-dir "$wd" >/dev/null 2>&1; then
    usable+=("$d")
  fi
done
[ -n "${WEIGHTS_DIR:-}" ] && printf '%s\n' --weights-dir "$wd"
if [ ${#usable[@]} -eq 0 ]; then
  echo "demo: no detector weights could be installed (offline? see weights/README.md): using RANDOM" \
       "weights and threshold 0, so every window alerts and alerts say \"calibrated\": false" >&2
  printf '%s\n' --random-weights --threshold 0
  exit 0
fi
joined=$(IFS=,; echo "${usable[*]}")
skipped=""
for d in ${detectors//,/ }; do
  [[ ",$joined," == *",$d,"* ]] || skipped+="${skipped:+,}$d"
done
echo "demo: running $joined with the authors' weights at threshold 0.5 (not calibrated for this" \
     "stream)${skipped:+; $skipped skipped: weights not installed (weights/README.md)}" >&2
printf '%s\n' --detectors "$joined" --threshold 0.5
