#!/usr/bin/env bash
# 10 SIGHUPs, 1.2 s apart, during a 14 s `wrk -c32` run against 2 workers; prints wrk's
# request and socket-error counts (and, for stud, the reload counters from its metrics).
# usage: bench/reload_under_load.sh stud|hitch PORT BACKEND_PORT PEM
# (the backend must answer HTTP on 127.0.0.1:BACKEND_PORT, e.g. the nginx of bench.py)
set -u
who=$1 port=$2 bport=$3 pem=$4
mport=$((port + 1))
if [ "$who" = stud ]; then
  python3 -m stud -L error -n 2 --metrics="127.0.0.1,$mport" -f "127.0.0.1,$port" \
    -b "127.0.0.1,$bport" "$pem" &
else
  ocsp=$(mktemp -d) && chown nobody "$ocsp"
  hitch "--frontend=[127.0.0.1]:$port" "--backend=[127.0.0.1]:$bport" --workers=2 \
    --user=nobody "--ocsp-dir=$ocsp" "$pem" &
fi
master=$!
sleep 1.5
wrk -t1 -c32 -d14s "https://127.0.0.1:$port/" > "/tmp/wrk.$who.$$" 2>&1 &
load=$!
sleep 1
for _ in $(seq 10); do kill -HUP "$master"; sleep 1.2; done
wait "$load"
[ "$who" = stud ] && curl -s "http://127.0.0.1:$mport/metrics" | grep -E '^stud_(reloads_total|generation)'
kill "$master"; wait "$master" 2>/dev/null
echo "== $who"; grep -E "requests in|Socket errors" "/tmp/wrk.$who.$$"; rm -f "/tmp/wrk.$who.$$"
