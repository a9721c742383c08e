#!/usr/bin/env bash
# Install pyjraft with its test extra into ./.venv (created if missing) and run
# every check CI runs: ruff lint, ruff format, mypy --strict, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The status page is tested in headless Chromium (Debian's package; CI runs as
# root on a fresh machine, where installing it takes a minute).
if [ ! -x /usr/bin/chromium ]; then
  echo "== apt-get install chromium"
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  else
    echo "chromium is missing and this is not root: sudo apt-get install -y chromium" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "== ruff check"; .venv/bin/ruff check pyjraft tests benchmarks
echo "== ruff format --check"; .venv/bin/ruff format --check pyjraft tests benchmarks
echo "== mypy --strict pyjraft"; .venv/bin/mypy pyjraft
echo "== pytest"
.venv/bin/python -m pytest -n 2 -q "$@"
