#!/usr/bin/env bash
# Benchmark stud against hitch and HAProxy on loopback; see bench/README.md.
#   bash bench/run.sh            full run (installs what is missing), results in docs/benchmarks/
#   bash bench/run.sh --smoke    CI smoke run (a minute or two, no installs, any proxy may be missing)
set -euo pipefail
exec python3 "$(dirname "$0")/bench.py" "$@"
