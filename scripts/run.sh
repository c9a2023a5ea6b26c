#!/usr/bin/env bash
# Run the generator and the monitor side by side, wired to each other; Ctrl-C stops both.
# GENERATOR_MODEL (tiny|full|folder), MONITOR_STORE (http://host:8086/db for InfluxDB) and the other variables in
# README.md apply.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GENERATOR_PORT=${GENERATOR_PORT:-7860}
MONITOR_PORT=${MONITOR_PORT:-7861}
OUTPUTS=${GENERATOR_OUTPUTS:-outputs}

"$PY" -m monitor --port "$MONITOR_PORT" --generator-url "http://127.0.0.1:$GENERATOR_PORT" --outputs "$OUTPUTS" &
monitor=$!
"$PY" -m generator --port "$GENERATOR_PORT" --monitor-url "http://127.0.0.1:$MONITOR_PORT" --outputs "$OUTPUTS" &
generator=$!
trap 'kill $monitor $generator 2>/dev/null; wait' INT TERM EXIT
echo "generator: http://127.0.0.1:$GENERATOR_PORT/   monitor: http://127.0.0.1:$MONITOR_PORT/monitor/"
wait -n
