#!/usr/bin/env bash
# A/B: two CallHome binaries, same load, alternating rounds, medians and ratios.
#
#   bash bench/ab.sh BASE_BINARY NEW_BINARY
#
# For "did this change cost anything?": notify throughput (keep-alive, no waiters), memory
# per waiting long poll, and fan-out delivery latency, each run A B A B ... so both sides
# see the same machine. Each server starts fresh per measurement, with one worker thread,
# no snapshot and no rate limits (as in compare.sh). Loopback only; every run bounded.
#
# Variables: ROUNDS=3, N=10000 (waiting clients), NOTIFY_SECS=5, CONNS=16, NOFILE=20000.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
A=${1:?usage: bench/ab.sh BASE_BINARY NEW_BINARY}
B=${2:?usage: bench/ab.sh BASE_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-3}
N=${N:-10000}
NOTIFY_SECS=${NOTIFY_SECS:-5}
CONNS=${CONNS:-16}
NOFILE=${NOFILE:-20000}
KEY=demo-key-change-me-0123456789
NAME=ab
START_SECS=$SECONDS
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET_DIR/release/callhome-bench
[[ -x $A && -x $B ]] || { echo "ab.sh: both binaries must exist" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --locked -q -p callhome-bench)

TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
# Only what both binaries understand: the demo app; everything else at its defaults (an older
# binary would refuse keys added since).
cat >"$TMP/callhome.toml" <<TOML
[[apps]]
name = "demo"
key = "$KEY"
origins = ["http://localhost:3000"]
TOML
PORT=$(free_port 18090)

start() {
    (ulimit -n "$NOFILE" &&
        export CALLHOME_WORKERS=1 CALLHOME_LIMITS__MAX_IDS=$((N + 100000)) \
            "${NO_RATE_LIMITS[@]}" &&
        exec "$1" --config "$TMP/callhome.toml" --listen "127.0.0.1:$PORT" --log warn) \
        >>"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 200); do
        curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    die "$1 did not start"
}
stop() {
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
run() { # side case args...
    local side=$1 case=$2 bin
    shift 2
    [[ $side == A ]] && bin=$A || bin=$B
    start "$bin"
    local extra=()
    [[ $case == idle ]] && extra=(--server-pid "$SERVER_PID")
    timeout 600 "$BENCH" --json --max-secs 300 --base "http://127.0.0.1:$PORT" --key "$KEY" \
        "$@" "${extra[@]}" 2>>"$TMP/bench.log" |
        sed "s/^{/{\"side\":\"$side\",\"case\":\"$case\",/" >>"$TMP/results.jsonl"
    stop
}
for ((r = 1; r <= ROUNDS; r++)); do
    for side in A B; do
        step "round $r/$ROUNDS: $side"
        run "$side" notify notify-rate --secs "$NOTIFY_SECS" --conns "$CONNS"
        run "$side" idle idle --clients "$N" --transport poll --hold-secs 2 --settle-secs 2
        run "$side" fanout fanout --clients "$N" --conns "$CONNS" --transport poll
    done
done
python3 - "$TMP/results.jsonl" "$A" "$B" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def pick(side, case, *keys):
    out = []
    for r in rows:
        if r["side"] == side and r["case"] == case:
            for k in keys:
                if k in r:
                    out.append(float(r[k])); break
    return out
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}")
for case, keys, label in [
    ("notify", ("publish_per_sec",), "notifies/s"),
    ("idle", ("rss_per_client",), "RSS bytes per waiting poll"),
    ("fanout", ("latency_p99_ms",), "fan-out p99 ms"),
    ("fanout", ("all_answered_secs",), "fan-out all answered s"),
]:
    a, b = pick("A", case, *keys), pick("B", case, *keys)
    if not a or not b:
        print(f"{label}: no data (keys {keys})"); continue
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{label:30} A {ma:12.2f}  B {mb:12.2f}  B/A {mb/ma:5.3f}   rounds A {a} B {b}")
EOF
