#!/usr/bin/env bash
# A smoke run of the load tool against the real daemon, so neither can rot unnoticed:
# a few hundred clients for a few seconds, loopback only, bounded by --max-secs. It checks
# that every scenario runs and that no delivery went missing, twice or to the wrong id. It
# measures nothing worth keeping: the real benchmark is bench/compare.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -q -p callhome -p callhome-bench
dir=$(mktemp -d)
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Rate limits off: the load tool is one client making hundreds of requests on purpose.
CALLHOME_RATE_LIMITS__CREATE_PER_APP__PER_SECOND=0 \
CALLHOME_RATE_LIMITS__NOTIFY_PER_APP__PER_SECOND=0 \
CALLHOME_RATE_LIMITS__BROWSER_PER_IP__PER_SECOND=0 \
CALLHOME_STORE__SNAPSHOT_PATH="$dir/state" \
  target/debug/callhome --config config/callhome.toml --listen "127.0.0.1:$port" --log warn >"$dir/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

bench() {
  target/debug/callhome-bench --base "http://127.0.0.1:$port" --max-secs 60 --json "$@" | tee -a "$dir/results.jsonl"
}
bench idle --clients 300 --hold-secs 1 --settle-secs 1
bench fanout --clients 300 --conns 4 --rounds 2
bench sse --clients 200 --hold-secs 1 --settle-secs 1
bench notify-rate --secs 2 --conns 4 --waiters 100
bench store --ids 2000

# Every delivery must have arrived exactly once, at its own id, with no connection errors.
if grep -E '"(missing|duplicates|wrong|waiter_wrong|connect_errors)":[1-9]' "$dir/results.jsonl"; then
  echo "bench smoke: deliveries were lost, duplicated or misrouted (above)" >&2
  exit 1
fi
echo "bench smoke: $(wc -l <"$dir/results.jsonl") results, no lost, duplicate or misrouted deliveries"
