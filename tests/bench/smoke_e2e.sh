#!/usr/bin/env bash
# Runs bench_e2e at tiny sizes against a private tuned mosquitto on 127.0.0.1 (stopped by PID).
set -euo pipefail
bin=$1
command -v mosquitto >/dev/null || PATH=$PATH:/usr/sbin
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-smoke-XXXXXX")
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n' \
  "$port" >"$dir/mosquitto.conf"
mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
mpid=$!
trap 'kill "$mpid" 2>/dev/null || true; wait "$mpid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
out=$("$bin" "tcp://127.0.0.1:$port" 500 50 10 100 200)
echo "$out"
grep -q '^e2e_events_per_s=' <<<"$out"
grep -q '^lat_events=10$' <<<"$out"
