#!/usr/bin/env bash
# Notifies per second through batch notifies (`POST /v1/notify`, issue 13) against single
# notifies (`POST /v1/ids/{id}/notify`), alternating in one sitting, with the load tool's
# `notify-rate` against one release daemon on the memory engine (loopback only; every run
# stops by itself):
#
#   bash bench/batch.sh [ROUNDS=3] [SECS=5] [BATCH=100] [CONNS=8]
#
# Needs target/release/callhome and callhome-bench (cargo build --release --workspace).
# Prints one line per run and the ratio of the medians. Only the daemon it started is
# stopped, by PID.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
R=${1:-3}; SECS=${2:-5}; BATCH=${3:-100}; CONNS=${4:-8}
BIN=$ROOT/target/release; PORT=${PORT:-18650}
TMP=$(mktemp -d)
grep -v '^snapshot_path' "$ROOT/config/callhome.toml" > "$TMP/bench.toml"
(export CALLHOME_RATE_LIMITS__CREATE_PER_APP__PER_SECOND=0 CALLHOME_RATE_LIMITS__NOTIFY_PER_APP__PER_SECOND=0 CALLHOME_RATE_LIMITS__BROWSER_PER_IP__PER_SECOND=0; exec "$BIN/callhome" --config "$TMP/bench.toml" --listen 127.0.0.1:$PORT --log warn) > "$TMP/daemon.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do curl -s 127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
for r in $(seq "$R"); do for per in 1 "$BATCH"; do
  out=$(timeout $((SECS + 120)) "$BIN/callhome-bench" --json --max-secs $((SECS + 100)) \
    --key demo-key-change-me-0123456789 --base http://127.0.0.1:$PORT \
    notify-rate --secs "$SECS" --conns "$CONNS" --ids 10000 --batch "$per" 2>/dev/null | tail -1)
  echo "round=$r batch=$per $(echo "$out" | python3 -c 'import sys,json; r=json.loads(sys.stdin.read()); print("notifies_per_sec", r["publish_per_sec"], "requests", r["requests"], "failed_requests", r["errors"], "p50_ms", r["latency_p50_ms"], "p99_ms", r["latency_p99_ms"])')"
done; done | tee "$TMP/runs.txt"
python3 - "$TMP/runs.txt" "$BATCH" <<'PY'
import statistics, sys
rates = {}
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in line.split())
    words = line.split()
    rate = float(words[words.index("notifies_per_sec") + 1])
    rates.setdefault(f["batch"], []).append(rate)
single, batch = statistics.median(rates["1"]), statistics.median(rates[sys.argv[2]])
print(f"median single {single:.0f}/s, batch of {sys.argv[2]} {batch:.0f}/s: {batch / single:.2f}x")
PY
