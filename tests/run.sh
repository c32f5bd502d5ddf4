#!/usr/bin/env bash
# Installs what the test suite needs (Debian tools if missing, the package with its test
# extras) and runs the whole suite. README.md and .ci/run both use exactly this command.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v ss >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q -e '.[test]'
python3 -m ruff check .
exec python3 -m pytest -q "$@"
