#!/usr/bin/env bash
# Memory per waiting connection with one id and with 10 ids on it (`watch=`, issue 11), over
# SSE and long polls, alternating, with the load tool's `idle` against a release daemon on
# the memory engine (loopback only; every run stops by itself):
#
#   bash bench/many-ids.sh [ROUNDS=2] [CONNECTIONS=10000]
#
# Needs target/release/callhome and callhome-bench (cargo build --release --workspace).
# Prints one line per run: rss_per_client (the daemon's RSS growth per connection, ids
# included) and excl_ids (from after the ids were created). Only the daemons it started are
# stopped, by PID.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
R=${1:-2}; N=${2:-10000}; BIN=$ROOT/target/release; PORT=${PORT:-18600}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
grep -v '^snapshot_path' "$ROOT/config/callhome.toml" > "$TMP/idle.toml"
for r in $(seq $R); do for per in 1 10; do for tr in sse poll; do
  (ulimit -n 20000; export CALLHOME_RATE_LIMITS__CREATE_PER_APP__PER_SECOND=0 CALLHOME_RATE_LIMITS__NOTIFY_PER_APP__PER_SECOND=0 CALLHOME_RATE_LIMITS__BROWSER_PER_IP__PER_SECOND=0 CALLHOME_WORKERS=1; exec $BIN/callhome --config "$TMP/idle.toml" --listen 127.0.0.1:$PORT --log warn) > "$TMP/daemon.log" 2>&1 &
  pid=$!
  for i in $(seq 100); do curl -s 127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
  out=$(timeout 300 $BIN/callhome-bench --json --max-secs 240 --key demo-key-change-me-0123456789 --base http://127.0.0.1:$PORT idle --clients $N --transport $tr --ids-per-client $per --hold-secs 2 --server-pid $pid 2>/dev/null | tail -1)
  kill $pid; wait $pid 2>/dev/null
  echo "round=$r ids_per_conn=$per transport=$tr $(echo "$out" | python3 -c 'import sys,json; r=json.loads(sys.stdin.read()); print("ready", r["ready"], "rss_per_client", r["rss_per_client"], "excl_ids", r["rss_per_client_excluding_ids"], "errors", r["connect_errors"])')"
done; done; done
