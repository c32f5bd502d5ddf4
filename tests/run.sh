#!/usr/bin/env bash
# Installs what the test suite needs (Debian tools if missing, the package with its test
# extras) and runs the whole suite. README.md and .ci/run both use exactly this command.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v ss >/dev/null || need+=(iproute2)
[ -x /usr/sbin/hitch ] || need+=(hitch)  # the oracle of the hitch compatibility tests
[ -x /usr/sbin/haproxy ] || need+=(haproxy)  # PROXY v2 consumers, and the bench's peer
[ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)  # the bench smoke run's flood (legitimate clients)
[ -x /usr/bin/redis-server ] || need+=(redis-server)  # the session store's (--session-store)
[ -x /usr/sbin/varnishd ] || need+=(varnish)  # docs/deployment.md's recipes
[ -x /usr/sbin/logrotate ] || need+=(logrotate)
[ -x /usr/bin/systemd-socket-activate ] || need+=(systemd)  # socket activation, unit checks
command -v groff >/dev/null || need+=(groff-base)  # the manual's lint
command -v man >/dev/null || need+=(man-db)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q -e '.[test]'
python3 -m ruff check .
python3 -m pytest -q "$@"
if [ $# -eq 0 ]; then
  # The pure-Python data path (where the extension cannot be built) passes the same black-box
  # tests. The unit tests of what does not depend on the path, and test_relay (which runs both
  # paths itself), ran once above.
  ignore=()
  for t in config proxyproto hitchconf structure abi bench_smoke relay conn sslext sesscache \
           ticketkeys clienthello manpage packaging \
           crl proxy_consumers; do
    ignore+=("--ignore=tests/test_$t.py")
  done
  STUD_PURE_PYTHON=1 python3 -m pytest -q "${ignore[@]}"
fi
