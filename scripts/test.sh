#!/usr/bin/env bash
# Install what the tests need into .venv, then run the whole suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
exec .venv/bin/python -m pytest -q "$@"
