#!/usr/bin/env bash
# CallHome against Nginx + Nchan, on loopback only, with callhome-bench.
#
#   bash bench/compare.sh                                  # the full run (several minutes)
#   N=2000 ROUNDS=1 NOTIFY_SECS=3 bash bench/compare.sh    # a quick check
#
# For each of R rounds and each scenario, the script starts CallHome fresh, measures it,
# stops it, then does the same with Nchan (A B A B ...). It takes the median of each metric
# over the rounds and writes docs/benchmarks.md and docs/images/benchmarks.svg. The raw JSON
# lines, the tool's progress and the servers' logs go to target/bench-results/<timestamp>/.
#
# Knobs (environment):
#   N=19000          waiting clients in the idle and fan-out scenarios
#   ROUNDS=3         alternating rounds; the figures are medians over them
#   NOTIFY_SECS=10   length of the notify-rate scenario
#   CONNS=16         publisher connections (notify-rate and fan-out)
#   HOLD_SECS=10     idle CPU sampling window; SETTLE_SECS=2 before reading memory
#   STORE_IDS=1000000  ids with a 16-byte info for the memory-per-stored-id scenario
#   CH_WORKERS=1     CallHome's worker threads (Nchan runs one worker process)
#   NOFILE=20000     `ulimit -n` for the servers (nginx's worker_rlimit_nofile is 20000)
#   CH_PORT=18080 NCHAN_PORT=18081   first ports tried (the next free one is taken)
#   NO_INSTALL=1     never apt-get (fail instead when nginx or nchan is missing)
#   NO_BUILD=1       use the binaries already in target/release
#   DOC=docs/benchmarks.md SVG=docs/images/benchmarks.svg OUT=target/bench-results/<ts>
#
# Only processes this script started are stopped, by their PID. Every step has a timeout.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"

N=${N:-19000}
ROUNDS=${ROUNDS:-3}
NOTIFY_SECS=${NOTIFY_SECS:-10}
CONNS=${CONNS:-16}
HOLD_SECS=${HOLD_SECS:-10}
SETTLE_SECS=${SETTLE_SECS:-2}
# Ids created for the memory-per-stored-id measurement (the issue's target is at 1,000,000).
STORE_IDS=${STORE_IDS:-1000000}
# CallHome's worker threads. 1, like Nchan's single worker: on 2 cores shared with the load
# generator, one thread is the faster setting for both (docs/performance.md).
CH_WORKERS=${CH_WORKERS:-1}
NOFILE=${NOFILE:-20000}
CH_PORT=${CH_PORT:-18080}
NCHAN_PORT=${NCHAN_PORT:-18081}
COOLDOWN_SECS=${COOLDOWN_SECS:-2}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/target/bench-results/$STAMP}
DOC=${DOC:-$ROOT/docs/benchmarks.md}
SVG=${SVG:-$ROOT/docs/images/benchmarks.svg}

CALLHOME=$ROOT/target/release/callhome
BENCH=$ROOT/target/release/callhome-bench
KEY=demo-key-change-me-0123456789   # the key of the shipped config/callhome.toml

STEP=setup
TMP=
SERVER_PID=      # the process this script started last: callhome, or nginx's master
WORKER_PID=      # nginx's worker (a child of the master)
BENCH_PID=       # the running `timeout callhome-bench ...`
FAILED_RUNS=0
START_SECS=$SECONDS

NAME=compare
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

for v in N ROUNDS NOTIFY_SECS CONNS HOLD_SECS SETTLE_SECS NOFILE CH_PORT NCHAN_PORT COOLDOWN_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
((N > 0 && ROUNDS > 0 && NOTIFY_SECS > 0 && CONNS > 0)) || die "N, ROUNDS, NOTIFY_SECS and CONNS must be positive"

stop_server() {
    local pid=$SERVER_PID worker=$WORKER_PID
    SERVER_PID=
    WORKER_PID=
    if [[ -n $pid ]]; then
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            if ! wait_gone "$pid" 100; then
                log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        wait "$pid" 2>/dev/null || true
    fi
    # nginx's master takes its worker down with it; should the master have died first, the
    # worker is ours all the same. Checked by its title so a reused pid is left alone.
    if [[ -n $worker ]] && alive "$worker" &&
        tr '\0' ' ' <"/proc/$worker/cmdline" 2>/dev/null | grep -q '^nginx: worker process'; then
        kill -KILL "$worker" 2>/dev/null || true
        wait_gone "$worker" 50 || true
    fi
}

# Copies the servers' logs and nginx's config from the temp dir to the results.
save_logs() {
    [[ -n $TMP && -d $TMP && -d $OUT ]] || return 0
    mkdir -p "$OUT/logs"
    cp -f "$TMP"/*.log "$TMP/nginx/nginx.conf" "$TMP"/nginx/*.log "$OUT/logs/" 2>/dev/null || true
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM ERR
    if [[ -n $BENCH_PID ]] && alive "$BENCH_PID"; then
        # `timeout` passes the signal on to the tool, whose workers exit when it does.
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait_gone "$BENCH_PID" 150 || kill -KILL "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    stop_server
    end_run "$rc"
}
install_traps

# Waits until 127.0.0.1:$1 accepts connections while process $2 lives, up to $3 seconds.
wait_port() {
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        alive "$2" || return 1
        if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------------------
step "check tools"
for tool in python3 timeout cargo; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

step "install nginx and nchan"
NGINX=$(command -v nginx || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
MODULE=$(find_nchan_module || true)
if [[ -z $NGINX || -z $MODULE ]]; then
    [[ -z ${NO_INSTALL:-} ]] || die "nginx or the nchan module is missing and NO_INSTALL is set"
    [[ $(id -u) == 0 ]] || die "nginx or the nchan module is missing: install nginx-light and libnginx-mod-nchan (as root)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q >&2 || log "apt-get update failed; trying the install anyway"
    pkgs=(libnginx-mod-nchan)
    [[ -z $NGINX ]] && pkgs+=(nginx-light)
    if ! timeout 900 apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; then
        [[ -z $NGINX ]] || die "apt-get install ${pkgs[*]} failed"
        log "nginx-light failed to install: trying nginx"
        timeout 900 apt-get install -y -q --no-install-recommends nginx libnginx-mod-nchan >&2 ||
            die "apt-get install nginx libnginx-mod-nchan failed"
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    MODULE=$(find_nchan_module) || die "no ngx_nchan_module.so after installing libnginx-mod-nchan"
fi
[[ -x $NGINX ]] || die "no nginx binary"
log "nginx: $NGINX, nchan module: $MODULE"

step "build callhome and callhome-bench (release)"
if [[ -z ${NO_BUILD:-} ]]; then
    timeout 1800 cargo build --release -p callhome -p callhome-bench >&2 || die "cargo build failed"
fi
[[ -x $CALLHOME && -x $BENCH ]] || die "missing $CALLHOME or $BENCH"

step "prepare the temp dir, configs and results dir"
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/callhome-compare.XXXXXX")
mkdir -p "$TMP/nginx" "$TMP/bin"
# Others may rebuild target/release while this runs: measure copies made now.
cp "$CALLHOME" "$BENCH" "$TMP/bin/"
CALLHOME=$TMP/bin/callhome
BENCH=$TMP/bin/callhome-bench
CH_PORT=$(free_port "$CH_PORT")
NCHAN_PORT=$(free_port "$NCHAN_PORT")
((CH_PORT != NCHAN_PORT)) || NCHAN_PORT=$(free_port $((NCHAN_PORT + 1)))
# The shipped config (its demo app key), with the port moved to ours by --listen.
# Without its snapshot file: Nchan's memory store keeps nothing across restarts either, and a
# snapshot of a million ids written every second would be measured as the server's memory.
grep -v '^snapshot_path' config/callhome.toml >"$TMP/callhome.toml"
sed -e "s|@MODULE@|$MODULE|g" -e "s|@DIR@|$TMP/nginx|g" -e "s|@PORT@|$NCHAN_PORT|g" \
    "$HERE/nchan.conf.template" >"$TMP/nginx/nginx.conf"
timeout 30 "$NGINX" -t -q -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/" >&2 ||
    die "nginx rejects the generated config $TMP/nginx/nginx.conf"
log "callhome on 127.0.0.1:$CH_PORT, nchan on 127.0.0.1:$NCHAN_PORT; results in $OUT"

step "record machine facts and versions"
N=$N ROUNDS=$ROUNDS NOTIFY_SECS=$NOTIFY_SECS CONNS=$CONNS HOLD_SECS=$HOLD_SECS \
    STORE_IDS=$STORE_IDS CH_WORKERS=$CH_WORKERS \
    SETTLE_SECS=$SETTLE_SECS NGINX=$NGINX MODULE=$MODULE STAMP=$STAMP CALLHOME=$CALLHOME \
    timeout 60 python3 "$HERE/summarize.py" meta "$OUT/meta.json" || die "collecting machine facts failed"

# ---------------------------------------------------------------------------------------
start_callhome() {
    (ulimit -n "$NOFILE" && export "${NO_RATE_LIMITS[@]}" &&
        CALLHOME_WORKERS=$CH_WORKERS CALLHOME_LIMITS__MAX_IDS=$((STORE_IDS + N + 1000)) \
        exec "$CALLHOME" --config "$TMP/callhome.toml" \
        --listen "127.0.0.1:$CH_PORT" --log warn) >>"$TMP/callhome.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$CH_PORT" "$SERVER_PID" 20 || die "callhome did not listen on $CH_PORT (see callhome.log)"
    MEASURE_PID=$SERVER_PID
}

start_nchan() {
    (ulimit -n "$NOFILE" && exec "$NGINX" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
        -p "$TMP/nginx/") >>"$TMP/nginx-stderr.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$NCHAN_PORT" "$SERVER_PID" 20 || die "nginx did not listen on $NCHAN_PORT (see error.log)"
    local i children
    for ((i = 0; i < 100; i++)); do
        children=$(cat "/proc/$SERVER_PID/task/$SERVER_PID/children" 2>/dev/null || true)
        read -r -a kids <<<"$children"
        if ((${#kids[@]} == 1)); then
            WORKER_PID=${kids[0]}
            MEASURE_PID=$WORKER_PID
            return 0
        fi
        sleep 0.1
    done
    die "could not find nginx's single worker (children of $SERVER_PID: '$children')"
}

# run_case ROUND CASE SERVER -- bench arguments...
run_case() {
    local round=$1 case=$2 server=$3 port target rc=0 secs line
    shift 4
    step "round $round/$ROUNDS: $case on $server"
    if [[ $server == callhome ]]; then
        start_callhome
        port=$CH_PORT
    else
        start_nchan
        port=$NCHAN_PORT
    fi
    target=$server
    local bounded=$((240 + N / 100)) t0=$SECONDS
    local args=(--json --max-secs "$bounded" --target "$target" --base "http://127.0.0.1:$port")
    [[ $server == callhome ]] && args+=(--key "$KEY")
    local measured=("$@")
    [[ $case == idle-* || $case == store ]] && measured+=(--server-pid "$MEASURE_PID")
    {
        echo "### round $round $case $server: $BENCH ${args[*]} ${measured[*]}"
    } >>"$OUT/bench.log"
    # In the background so that a signal to this script is handled at once (bash runs traps
    # only between commands, and `wait` is interruptible).
    timeout -k 10 $((bounded + 30)) "$BENCH" "${args[@]}" "${measured[@]}" \
        >"$TMP/result.json" 2>>"$OUT/bench.log" &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=
    secs=$((SECONDS - t0))
    if ! alive "$SERVER_PID"; then
        log "$server died during $case"
        if ((rc == 0)); then rc=99; fi
    fi
    local got=0 load
    # The 1-minute load average at the end, a hint of what else ran on the shared cores.
    load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
    while IFS= read -r line; do
        [[ $line == '{'* ]] || continue
        printf '{"case":"%s","server":"%s","round":%d,"exit":%d,"wall_secs":%d,"loadavg_1m":%s,%s\n' \
            "$case" "$server" "$round" "$rc" "$secs" "$load" "${line#\{}" >>"$OUT/raw.jsonl"
        got=1
    done <"$TMP/result.json"
    if ((rc != 0 || got == 0)); then
        FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '{"case":"%s","server":"%s","round":%d,"exit":%d,"wall_secs":%d,"failed":true}\n' \
            "$case" "$server" "$round" "$rc" "$secs" >>"$OUT/raw.jsonl"
        log "FAILED: $case on $server, round $round (exit $rc; see $OUT/bench.log)"
    else
        log "$(python3 "$HERE/summarize.py" brief "$OUT/raw.jsonl")"
    fi
    stop_server
    sleep "$COOLDOWN_SECS"
}

: >"$OUT/raw.jsonl"
for ((round = 1; round <= ROUNDS; round++)); do
    for server in callhome nchan; do
        run_case "$round" idle-poll "$server" -- idle --clients "$N" --transport poll \
            --hold-secs "$HOLD_SECS" --settle-secs "$SETTLE_SECS"
    done
    for server in callhome nchan; do
        run_case "$round" idle-sse "$server" -- idle --clients "$N" --transport sse \
            --hold-secs "$HOLD_SECS" --settle-secs "$SETTLE_SECS"
    done
    for server in callhome nchan; do
        run_case "$round" notify-rate "$server" -- notify-rate --secs "$NOTIFY_SECS" --conns "$CONNS"
    done
    for server in callhome nchan; do
        run_case "$round" fanout-poll "$server" -- fanout --clients "$N" --conns "$CONNS" --transport poll
    done
    # Ids need no sockets, so memory per stored id is measured at full size. The target is
    # absolute (bytes per id), so CallHome only.
    run_case "$round" store callhome -- store --ids "$STORE_IDS" --conns "$CONNS"
done

step "write $DOC and $SVG"
save_logs
WALL_SECS=$((SECONDS - START_SECS)) timeout 60 python3 "$HERE/summarize.py" report "$OUT" "$DOC" "$SVG" ||
    die "summarizing failed"
log "done in $((SECONDS - START_SECS)) s: $DOC, $SVG, raw lines in $OUT/raw.jsonl"
if ((FAILED_RUNS > 0)); then
    STEP="measurements"
    log "$FAILED_RUNS measurement run(s) failed; their figures are missing from the table"
    exit 2
fi
