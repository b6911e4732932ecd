#!/usr/bin/env bash
# Create or refresh the project's virtual environment at .venv (idempotent).
#   scripts/bootstrap.sh          runtime dependencies
#   scripts/bootstrap.sh test     plus the test dependencies
# Re-installs only when pyproject.toml changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "Python 3.10+ is required" >&2; exit 1; }
[ -x .venv/bin/python ] || "$py" -m venv .venv
spec="."
[ -n "$extra" ] && spec=".[$extra]"
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extra:-runtime}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -e "$spec"
  touch "$stamp"
fi
