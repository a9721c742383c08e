#!/usr/bin/env bash
# pyjraft demo: a 3-replica key-value store on 127.0.0.1 under a mixed load, a leader
# crash, a restart, and a check that every acknowledged write is on every replica.
#
#   scripts/demo.sh            # creates .venv if missing, installs pyjraft, runs the demo
#   scripts/demo.sh --quick    # the short version; its last line is a JSON summary
#   scripts/demo.sh --counter  # the counter walk-through instead
#   PYTHON=python3.12 scripts/demo.sh
#
# Every process it starts is killed on exit (normal, error, Ctrl-C). Takes < 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing pyjraft into .venv"
if ! .venv/bin/python -m pip install -q -e . >/tmp/pyjraft-demo-pip.$$ 2>&1; then
    if .venv/bin/python -c "import pyjraft.cli" 2>/dev/null; then
        echo "    (pip install failed, see /tmp/pyjraft-demo-pip.$$; using the installed pyjraft)"
    else
        cat /tmp/pyjraft-demo-pip.$$ >&2
        exit 1
    fi
fi
rm -f /tmp/pyjraft-demo-pip.$$

PIDS_FILE=$(mktemp -t pyjraft-demo-pids.XXXXXX)
DEMO_PID=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$DEMO_PID" ]; then
        kill -TERM "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    # The node processes the demo started (it stops them itself; this is the safety net).
    while read -r pid; do
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    done <"$PIDS_FILE"
    rm -f "$PIDS_FILE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PYJRAFT_DEMO_PID_FILE="$PIDS_FILE" timeout 100 .venv/bin/python -m pyjraft.cli demo "$@" &
DEMO_PID=$!
set +e
wait "$DEMO_PID"
status=$?
set -e
DEMO_PID=""
exit "$status"
