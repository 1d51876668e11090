#!/usr/bin/env bash
# CallHome's cluster mode against Nginx + Nchan in Redis mode, side by side on ONE private
# Redis, loopback only, with callhome-bench (issue 10, "Benchmarks").
#
#   bash bench/cluster.sh                                           # the full run (~7 min)
#   N=500 ROUNDS=1 NOTIFY_SECS=2 IDS=2000 bash bench/cluster.sh     # a smoke run (< 30 s)
#
# The script starts its own redis-server on a free port (never the machine's 6379) with
# `--save "" --appendonly no --maxmemory-policy noeviction`. System A is CallHome, two nodes
# (a and b) with CALLHOME_STORE__BACKEND=redis on that Redis; system B is two nginx
# instances with Nchan in Redis mode (bench/nchan-redis.conf.template, one worker each).
# Every case starts its nodes fresh on a flushed Redis (FLUSHALL, SCRIPT FLUSH, FUNCTION
# FLUSH while no node runs) and stops them afterwards. For each of ROUNDS rounds:
#
#   ceiling   redis-benchmark, unpipelined, of EVALSHA of CallHome's own notify script (the
#             `notify` section of src/store/cluster/scripts.lua, as a node sends it: one
#             notify, rate limits off, on one of 100,000 ids made beforehand) and of a plain
#             PUBLISH, with CEILING_SUBSCRIBERS pattern subscribers standing in for the nodes'
#             hint links
#   fanout    N long polls held on node B, one notify per id sent to node A: all-answered
#             time, p50/p99 notify-to-answer, missing (callhome-bench fanout --base B
#             --publish-base A)
#   notify    notify throughput through A with no waiters for NOTIFY_SECS, and Redis's CPU
#             (utime+stime from /proc/<redis>/stat) and commands over that run, per 10,000
#             notifies
#   memory    IDS ids created (CallHome) and given one 16-byte info through A: Redis
#             used_memory delta / IDS, and MEMORY USAGE of one sample id's keys (found with
#             SCAN MATCH *<id>*; their names are recorded)
#   aggregate AGG_NODES nodes, N waiters on each, one notify per id sent round-robin to all
#             of them (--base and --publish-base repeated): all answered, missing, the time.
#             Nchan with as many instances too, unless AGG_NCHAN=0.
#
# Medians over the rounds go to docs/benchmarks.md between <!-- cluster:begin --> and
# <!-- cluster:end --> (appended when missing; the rest of the file is left alone). Raw JSON
# lines, the tool's progress and every server's log go to target/bench-results/cluster-<ts>/.
#
# CallHome's cluster engine may not be there yet: the script first starts nodes a and b with
# the Redis backend and checks that an id created on a exists on b and that a notify on a
# answers a poll held on b. If a node refuses to start, or the check fails, it says so
# (summary, doc and exit message), skips CallHome and measures everything else. With
# REQUIRE_CALLHOME=1 that is a failure (exit 2).
#
# Knobs (environment):
#   N=19000            waiters on node B in the fan-out, and on each node in the aggregate
#   ROUNDS=3           alternating rounds (CallHome, Nchan, ...); the figures are medians
#   NOTIFY_SECS=10     length of the notify-throughput run
#   IDS=100000         ids in the Redis-memory scenario
#   CONNS=16           publisher connections
#   WAIT_SECS=10       fan-out: how long after the last notify a delivery may still come
#   AGG_NODES=4        nodes in the aggregate run (0 skips it); AGG_NCHAN=1 (0: CallHome only)
#   CEILING_REQS=200000 CEILING_CLIENTS=50 CEILING_SUBSCRIBERS=2   redis-benchmark
#   CH_WORKERS=1       each CallHome node's worker threads (each nginx runs one worker)
#   NOFILE=20000       `ulimit -n` for the servers
#   REDIS_PORT=16379 CH_PORT=18380 NCHAN_PORT=18390   first ports tried (the next free taken)
#   COOLDOWN_SECS=2    pause between cases (0 when N < 5000)
#   CASES="ceiling fanout notify memory aggregate"   the cases run (a subset for a quick look;
#                      the doc then says "not measured" for the others)
#   REQUIRE_CALLHOME=1 fail (exit 2) when CallHome's cluster mode cannot be measured
#   NO_INSTALL=1       never apt-get (fail instead when nginx, nchan or redis is missing)
#   NO_BUILD=1         use the binaries already in target/release (or BIN_DIR)
#   DOC=docs/benchmarks.md OUT=target/bench-results/cluster-<ts>
#
# Only processes this script started are stopped, by their PID. Every step has a timeout.
# Exit: 0 done, 1 a harness failure, 2 some measurement failed (or REQUIRE_CALLHOME unmet).
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"

N=${N:-19000}
ROUNDS=${ROUNDS:-3}
NOTIFY_SECS=${NOTIFY_SECS:-10}
IDS=${IDS:-100000}
CONNS=${CONNS:-16}
WAIT_SECS=${WAIT_SECS:-10}
AGG_NODES=${AGG_NODES:-4}
AGG_NCHAN=${AGG_NCHAN:-1}
CEILING_REQS=${CEILING_REQS:-200000}
CEILING_CLIENTS=${CEILING_CLIENTS:-50}
CEILING_SUBSCRIBERS=${CEILING_SUBSCRIBERS:-2}
CH_WORKERS=${CH_WORKERS:-1}
CASES=${CASES:-ceiling fanout notify memory aggregate}
NOFILE=${NOFILE:-20000}
REDIS_PORT=${REDIS_PORT:-16379}
CH_PORT=${CH_PORT:-18380}
NCHAN_PORT=${NCHAN_PORT:-18390}
# A pause between cases lets sockets in TIME_WAIT and the load settle; small runs need none.
COOLDOWN_SECS=${COOLDOWN_SECS:-$((N >= 5000 ? 2 : 0))}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/target/bench-results/cluster-$STAMP}
DOC=${DOC:-$ROOT/docs/benchmarks.md}
COMMAND_LINE="N=$N ROUNDS=$ROUNDS NOTIFY_SECS=$NOTIFY_SECS IDS=$IDS AGG_NODES=$AGG_NODES bash bench/cluster.sh"

# BIN_DIR=target/debug runs the smoke on the test build (CI), not a second, optimised one.
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
CALLHOME=$BIN_DIR/callhome
BENCH=$BIN_DIR/callhome-bench
KEY=demo-key-change-me-0123456789   # the key of the shipped config/callhome.toml

STEP=setup
TMP=
REDIS_PID=
NODE_PIDS=()     # callhome nodes, or nginx masters, of the case running now
NODE_WORKERS=()  # nginx workers (children of the masters), in the same order
SUB_PIDS=()      # redis-cli subscribers of the ceiling run
BENCH_PID=       # the running `timeout callhome-bench ...`
FAILED_RUNS=0
CH_STATUS="not checked"
CH_OK=0
START_SECS=$SECONDS

NAME=cluster
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

for v in N ROUNDS NOTIFY_SECS IDS CONNS WAIT_SECS AGG_NODES AGG_NCHAN CEILING_REQS \
    CEILING_CLIENTS CEILING_SUBSCRIBERS CH_WORKERS NOFILE REDIS_PORT CH_PORT NCHAN_PORT COOLDOWN_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
((N > 0 && ROUNDS > 0 && NOTIFY_SECS > 0 && IDS > 0 && CONNS > 0 && CEILING_REQS > 0 && CEILING_CLIENTS > 0)) ||
    die "N, ROUNDS, NOTIFY_SECS, IDS, CONNS, CEILING_REQS and CEILING_CLIENTS must be positive"
((N <= 19000)) || die "N=$N: one node holds at most 19000 waiters here (20000 open files per process)"
((AGG_NODES <= 8)) || die "AGG_NODES=$AGG_NODES: at most 8"

# True when case $1 is in CASES.
wanted() {
    [[ " $CASES " == *" $1 "* ]]
}

# ---------------------------------------------------------------------------------------
# Processes

# Stops process $1 (TERM, then KILL after 10 s) if it is still alive, and reaps it.
stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" 100; then
            log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 50 || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

stop_nodes() {
    local pid worker
    for pid in "${NODE_PIDS[@]}"; do
        stop_pid "$pid"
    done
    # nginx's master takes its worker down with it; should the master have died first, the
    # worker is ours all the same. Checked by its title so a reused pid is left alone.
    for worker in "${NODE_WORKERS[@]}"; do
        if [[ -n $worker ]] && alive "$worker" &&
            tr '\0' ' ' <"/proc/$worker/cmdline" 2>/dev/null | grep -q '^nginx: worker process'; then
            kill -KILL "$worker" 2>/dev/null || true
            wait_gone "$worker" 50 || true
        fi
    done
    NODE_PIDS=()
    NODE_WORKERS=()
}

stop_subscribers() {
    local pid
    for pid in "${SUB_PIDS[@]}"; do
        stop_pid "$pid"
    done
    SUB_PIDS=()
}

# Copies the servers' logs and configs from the temp dir to the results.
save_logs() {
    [[ -n $TMP && -d $TMP && -d $OUT ]] || return 0
    mkdir -p "$OUT/logs"
    cp -f "$TMP"/*.log "$OUT/logs/" 2>/dev/null || true
    local d
    for d in "$TMP"/nchan-*; do
        [[ -d $d ]] || continue
        cp -f "$d/nginx.conf" "$OUT/logs/${d##*/}.conf" 2>/dev/null || true
        cp -f "$d/error.log" "$OUT/logs/${d##*/}-error.log" 2>/dev/null || true
    done
    cp -f "$TMP/redis/redis.log" "$OUT/logs/redis.log" 2>/dev/null || true
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
    stop_nodes
    stop_subscribers
    stop_pid "$REDIS_PID"
    end_run "$rc"
}
install_traps

# Waits until 127.0.0.1:$1 accepts connections while process $2 lives, up to $3 seconds.
# 1: the process is gone; 2: the time ran out.
wait_port() {
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        alive "$2" || return 1
        if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 2
}

# The status code of one HTTP/1.1 request to 127.0.0.1:$1 (method $2, path $3, body $4),
# or 000 when there is no answer within 3 s. Bash's /dev/tcp: no curl needed.
http_status() {
    # shellcheck disable=SC2016  # expanded by the inner bash, from its arguments
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" \
            "$2" "$3" "$1" "${#4}" "$4" >&3
        IFS=" " read -r _ code _ <&3 && echo "$code"
    ' _ "$1" "$2" "$3" "${4:-}" 2>/dev/null || echo 000
}

# utime + stime of process $1, in clock ticks.
cpu_ticks() {
    local stat f
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    read -r -a f <<<"${stat##*) }"
    echo $((f[11] + f[12]))
}

rcli() { timeout 30 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# Field $2 of `INFO $1`.
redis_info() { rcli INFO "$1" | tr -d '\r' | sed -n "s/^$2://p"; }

# Empties the private Redis; only while no node runs (a node may keep state of its own there).
flush_redis() {
    ((${#NODE_PIDS[@]} == 0)) || die "flush_redis with nodes running"
    rcli FLUSHALL SYNC >/dev/null
    rcli SCRIPT FLUSH SYNC >/dev/null
    rcli FUNCTION FLUSH SYNC >/dev/null 2>&1 || true   # Redis 7 and later
}

# ---------------------------------------------------------------------------------------
step "check tools"
for tool in python3 timeout cargo sed; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

step "install nginx, nchan and redis"
NGINX=$(command -v nginx || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
MODULE=$(find_nchan_module || true)
pkgs=()
[[ -z $MODULE ]] && pkgs+=(libnginx-mod-nchan)
[[ -z $NGINX ]] && pkgs+=(nginx-light)
command -v redis-server >/dev/null || pkgs+=(redis-server)
if ! command -v redis-benchmark >/dev/null || ! command -v redis-cli >/dev/null; then
    pkgs+=(redis-tools)
fi
if ((${#pkgs[@]} > 0)); then
    [[ -z ${NO_INSTALL:-} ]] || die "missing ${pkgs[*]} and NO_INSTALL is set"
    [[ $(id -u) == 0 ]] || die "missing ${pkgs[*]}: install them (as root)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q >&2 || log "apt-get update failed; trying the install anyway"
    timeout 900 apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2 ||
        die "apt-get install ${pkgs[*]} failed"
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    MODULE=$(find_nchan_module) || die "no ngx_nchan_module.so after installing libnginx-mod-nchan"
fi
[[ -x $NGINX ]] || die "no nginx binary"
for tool in redis-server redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
log "nginx: $NGINX, nchan module: $MODULE, $(redis-server --version | cut -d' ' -f1-3)"

step "build callhome and callhome-bench (release)"
if [[ -z ${NO_BUILD:-} ]]; then
    timeout 1800 cargo build --release -p callhome -p callhome-bench >&2 || die "cargo build failed"
fi
[[ -x $CALLHOME && -x $BENCH ]] || die "missing $CALLHOME or $BENCH"

step "prepare the temp dir, configs and results dir"
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/callhome-cluster.XXXXXX")
mkdir -p "$TMP/bin" "$TMP/redis"
# Others may rebuild target/release while this runs: measure copies made now.
cp "$CALLHOME" "$BENCH" "$TMP/bin/"
CALLHOME=$TMP/bin/callhome
BENCH=$TMP/bin/callhome-bench
# The shipped config (its demo app key), with the port moved by --listen and without the
# snapshot file: in Redis mode Redis is the state.
grep -v '^snapshot_path' config/callhome.toml >"$TMP/callhome.toml"

REDIS_PORT=$(free_port "$REDIS_PORT")
((REDIS_PORT != 6379)) || REDIS_PORT=$(free_port 6380)
taken=" $REDIS_PORT "
# Ports for up to max(2, AGG_NODES) nodes of each system, all distinct.
pick_ports() {
    local from=$1 count=$2 p i
    PICKED=()
    p=$from
    for ((i = 0; i < count; i++)); do
        p=$(free_port "$p")
        while [[ $taken == *" $p "* ]]; do p=$(free_port $((p + 1))); done
        taken+="$p "
        PICKED+=("$p")
        p=$((p + 1))
    done
}
NODES_MAX=$((AGG_NODES > 2 ? AGG_NODES : 2))
pick_ports "$CH_PORT" "$NODES_MAX"
CH_PORTS=("${PICKED[@]}")
pick_ports "$NCHAN_PORT" "$NODES_MAX"
NCHAN_PORTS=("${PICKED[@]}")
for ((i = 0; i < NODES_MAX; i++)); do
    d=$TMP/nchan-$i
    mkdir -p "$d"
    sed -e "s|@MODULE@|$MODULE|g" -e "s|@DIR@|$d|g" -e "s|@PORT@|${NCHAN_PORTS[i]}|g" \
        -e "s|@REDIS_PORT@|$REDIS_PORT|g" "$HERE/nchan-redis.conf.template" >"$d/nginx.conf"
    timeout 30 "$NGINX" -t -q -e "$d/error.log" -c "$d/nginx.conf" -p "$d/" >&2 ||
        die "nginx rejects the generated config $d/nginx.conf"
done
log "redis on 127.0.0.1:$REDIS_PORT, callhome on ${CH_PORTS[*]}, nchan on ${NCHAN_PORTS[*]}; results in $OUT"

step "start the private redis"
(exec redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --maxmemory-policy noeviction --dir "$TMP/redis" --logfile "$TMP/redis/redis.log" \
    --daemonize no) >>"$TMP/redis-stderr.log" 2>&1 &
REDIS_PID=$!
for ((i = 0; i < 100; i++)); do
    alive "$REDIS_PID" || die "redis-server exited (see $TMP/redis/redis.log)"
    [[ $(rcli PING 2>/dev/null) == PONG ]] && break
    sleep 0.1
done
[[ $(rcli PING 2>/dev/null) == PONG ]] || die "redis-server does not answer PING on $REDIS_PORT"
REDIS_VERSION=$(redis_info server redis_version)
log "redis $REDIS_VERSION, pid $REDIS_PID"

step "record machine facts and versions"
N=$N ROUNDS=$ROUNDS NOTIFY_SECS=$NOTIFY_SECS IDS=$IDS CONNS=$CONNS AGG_NODES=$AGG_NODES \
    AGG_NCHAN=$AGG_NCHAN CEILING_REQS=$CEILING_REQS CEILING_CLIENTS=$CEILING_CLIENTS \
    CEILING_SUBSCRIBERS=$CEILING_SUBSCRIBERS CH_WORKERS=$CH_WORKERS WAIT_SECS=$WAIT_SECS \
    NGINX=$NGINX MODULE=$MODULE STAMP=$STAMP CALLHOME=$CALLHOME REDIS_VERSION=$REDIS_VERSION \
    COMMAND_LINE=$COMMAND_LINE \
    timeout 60 python3 "$HERE/cluster.py" meta "$OUT/meta.json" || die "collecting machine facts failed"

# ---------------------------------------------------------------------------------------
# Nodes

# The first lines of log $1 that say something (no backtrace frames), on one line.
log_gist() {
    grep -v -i -E '^[[:space:]]*$|^[[:space:]]+[0-9]+:|^[[:space:]]+at |^stack backtrace' "$1" 2>/dev/null |
        head -n 4 | tr -s ' \n' ' ' || true
}

# Starts CallHome node $1 (a, b, ...) on port $2 in cluster mode on the private Redis.
# 1 when it exits or does not become ready (the reason is in NODE_ERROR).
start_callhome_node() {
    local name=$1 port=$2 log=$TMP/callhome-$1.log pid i code
    (ulimit -n "$NOFILE" && export "${NO_RATE_LIMITS[@]}" &&
        export CALLHOME_STORE__BACKEND=redis \
            CALLHOME_STORE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" \
            CALLHOME_STORE__NODE_NAME="$name" \
            CALLHOME_WORKERS="$CH_WORKERS" \
            CALLHOME_LIMITS__MAX_IDS=$((IDS + N * NODES_MAX + 10000)) &&
        exec "$CALLHOME" --config "$TMP/callhome.toml" \
            --listen "127.0.0.1:$port" --log warn) >>"$log" 2>&1 &
    pid=$!
    NODE_PIDS+=("$pid")
    NODE_WORKERS+=("")
    local rc=0
    wait_port "$port" "$pid" 30 || rc=$?
    if ((rc == 1)); then
        wait "$pid" 2>/dev/null && rc=0 || rc=$?
        NODE_ERROR="callhome node $name exited (status $rc) before listening: $(log_gist "$log")"
        return 1
    elif ((rc != 0)); then
        NODE_ERROR="callhome node $name did not listen on $port within 30 s"
        return 1
    fi
    for ((i = 0; i < 200; i++)); do
        code=$(http_status "$port" GET /readyz)
        [[ $code == 200 ]] && return 0
        alive "$pid" || break
        sleep 0.1
    done
    NODE_ERROR="callhome node $name: /readyz answered $code, not 200, for 20 s: $(log_gist "$log")"
    return 1
}

# Starts nginx instance $1 (0, 1, ...) in Redis mode and finds its single worker.
start_nchan_instance() {
    local k=$1 d=$TMP/nchan-$1 port=${NCHAN_PORTS[$1]} pid i children code kids
    (ulimit -n "$NOFILE" && exec "$NGINX" -e "$d/error.log" -c "$d/nginx.conf" -p "$d/") \
        >>"$TMP/nchan-$k-stderr.log" 2>&1 &
    pid=$!
    NODE_PIDS+=("$pid")
    NODE_WORKERS+=("")
    wait_port "$port" "$pid" 20 || { NODE_ERROR="nginx $k did not listen on $port (see $d/error.log)"; return 1; }
    for ((i = 0; i < 100; i++)); do
        children=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true)
        read -r -a kids <<<"$children"
        if ((${#kids[@]} == 1)); then
            NODE_WORKERS[${#NODE_WORKERS[@]} - 1]=${kids[0]}
            break
        fi
        sleep 0.1
    done
    [[ -n ${NODE_WORKERS[${#NODE_WORKERS[@]} - 1]} ]] ||
        { NODE_ERROR="could not find nginx $k's single worker (children of $pid: '$children')"; return 1; }
    # Connected to Redis once a publish is taken (2xx), not a 503.
    for ((i = 0; i < 100; i++)); do
        code=$(http_status "$port" POST "/pub/cluster-warmup-$k" warmup)
        [[ $code == 2* ]] && return 0
        sleep 0.1
    done
    NODE_ERROR="nginx $k: a publish answered $code, not 2xx, for 10 s (Redis link?)"
    return 1
}

# Starts $2 nodes of system $1 (callhome or nchan); 1 with NODE_ERROR set on failure (the
# nodes that did start are stopped again).
start_nodes() {
    local server=$1 count=$2 i
    local names=(a b c d e f g h)
    NODE_ERROR=
    for ((i = 0; i < count; i++)); do
        if [[ $server == callhome ]]; then
            start_callhome_node "${names[i]}" "${CH_PORTS[i]}" || { stop_nodes; return 1; }
        else
            start_nchan_instance "$i" || { stop_nodes; return 1; }
        fi
    done
}

# Base URLs of the first $2 nodes of system $1, one per line.
node_urls() {
    local server=$1 count=$2 i
    for ((i = 0; i < count; i++)); do
        if [[ $server == callhome ]]; then
            echo "http://127.0.0.1:${CH_PORTS[i]}"
        else
            echo "http://127.0.0.1:${NCHAN_PORTS[i]}"
        fi
    done
}

# The pid whose CPU and memory are "node A's": callhome itself, or nginx's worker.
node_pid() {
    if [[ -n ${NODE_WORKERS[$1]} ]]; then echo "${NODE_WORKERS[$1]}"; else echo "${NODE_PIDS[$1]}"; fi
}

# ---------------------------------------------------------------------------------------
# Measurements

# Runs callhome-bench with `--json --target $2 ARGS...` in the background (so a signal is
# handled at once), bounded; its JSON lines end up in $TMP/result.json. Sets BENCH_RC and
# BENCH_SECS.
run_bench() {
    local case=$1 server=$2 round=$3 clients=$4
    shift 5
    local bounded=$((240 + clients / 100)) t0=$SECONDS
    local args=(--json --max-secs "$bounded" --target "$server")
    [[ $server == callhome ]] && args+=(--key "$KEY")
    echo "### round $round $case $server: $BENCH ${args[*]} $*" >>"$OUT/bench.log"
    BENCH_RC=0
    timeout -k 10 $((bounded + 30)) "$BENCH" "${args[@]}" "$@" \
        >"$TMP/result.json" 2>>"$OUT/bench.log" &
    BENCH_PID=$!
    wait "$BENCH_PID" || BENCH_RC=$?
    BENCH_PID=
    BENCH_SECS=$((SECONDS - t0))
    local i
    for i in "${!NODE_PIDS[@]}"; do
        if ! alive "${NODE_PIDS[i]}"; then
            log "$server node $i died during $case"
            ((BENCH_RC != 0)) || BENCH_RC=99
        fi
    done
}

# Appends the tool's JSON line(s) to raw.jsonl with case, server, round, exit, wall time, load
# and the extra fields $4 (`"k":v,` pairs, may be empty); or a failed line.
record() {
    local case=$1 server=$2 round=$3 extra=${4:-} line got=0 load
    load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
    while IFS= read -r line; do
        [[ $line == '{'* ]] || continue
        printf '{"case":"%s","server":"%s","round":%d,"exit":%d,"wall_secs":%d,"loadavg_1m":%s,%s%s\n' \
            "$case" "$server" "$round" "$BENCH_RC" "$BENCH_SECS" "$load" "$extra" "${line#\{}" >>"$OUT/raw.jsonl"
        got=1
    done <"$TMP/result.json"
    if ((BENCH_RC != 0 || got == 0)); then
        FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '{"case":"%s","server":"%s","round":%d,"exit":%d,"wall_secs":%d,"failed":true}\n' \
            "$case" "$server" "$round" "$BENCH_RC" "$BENCH_SECS" >>"$OUT/raw.jsonl"
        log "FAILED: $case on $server, round $round (exit $BENCH_RC; see $OUT/bench.log)"
    else
        log "$(python3 "$HERE/cluster.py" brief "$OUT/raw.jsonl")"
    fi
}

# A case that could not start its nodes.
record_unstarted() {
    local case=$1 server=$2 round=$3 why=$4
    FAILED_RUNS=$((FAILED_RUNS + 1))
    why=${why//\\/\\\\}
    why=${why//\"/\\\"}
    printf '{"case":"%s","server":"%s","round":%d,"failed":true,"error":"%s"}\n' \
        "$case" "$server" "$round" "$why" >>"$OUT/raw.jsonl"
    log "FAILED: $case on $server, round $round: $why"
}

# Starts system $2's $3 nodes on a flushed Redis for case $1 (round $4); 1 when they did not
# start (recorded).
begin_case() {
    local case=$1 server=$2 count=$3 round=$4
    step "round $round/$ROUNDS: $case on $server"
    flush_redis
    if ! start_nodes "$server" "$count"; then
        record_unstarted "$case" "$server" "$round" "$NODE_ERROR"
        return 1
    fi
}

end_case() {
    stop_nodes
    sleep "$COOLDOWN_SECS"
}

case_fanout() {
    local server=$1 round=$2 urls
    begin_case fanout "$server" 2 "$round" || return 0
    mapfile -t urls < <(node_urls "$server" 2)
    run_bench fanout "$server" "$round" "$N" -- --base "${urls[1]}" --publish-base "${urls[0]}" \
        fanout --clients "$N" --conns "$CONNS" --wait-secs "$WAIT_SECS"
    record fanout "$server" "$round" '"waiters_on":"b","notifies_to":"a",'
    end_case
}

case_notify() {
    local server=$1 round=$2 urls r0 r1 a0 a1 c0 c1 pid_a
    begin_case notify "$server" 2 "$round" || return 0
    mapfile -t urls < <(node_urls "$server" 2)
    pid_a=$(node_pid 0)
    rcli CONFIG RESETSTAT >/dev/null
    r0=$(cpu_ticks "$REDIS_PID")
    a0=$(cpu_ticks "$pid_a")
    c0=$(redis_info stats total_commands_processed)
    run_bench notify "$server" "$round" 0 -- --base "${urls[0]}" \
        notify-rate --secs "$NOTIFY_SECS" --conns "$CONNS"
    r1=$(cpu_ticks "$REDIS_PID")
    a1=$(cpu_ticks "$pid_a")
    c1=$(redis_info stats total_commands_processed)
    rcli INFO commandstats | tr -d '\r' >"$OUT/commandstats-notify-$server-$round.txt"
    record notify "$server" "$round" \
        "\"clk_tck\":$CLK_TCK,\"redis_cpu_ticks\":$((r1 - r0)),\"node_a_cpu_ticks\":$((a1 - a0)),\"redis_commands\":$((c1 - c0)),"
    end_case
}

case_memory() {
    local server=$1 round=$2 urls m0 m1 k0 k1 run sample key keys=() bytes=0 b key_json="" type
    begin_case memory "$server" 2 "$round" || return 0
    mapfile -t urls < <(node_urls "$server" 2)
    m0=$(redis_info memory used_memory)
    k0=$(rcli DBSIZE)
    run_bench memory "$server" "$round" 0 -- --base "${urls[0]}" --keep-ids \
        store --ids "$IDS" --conns "$CONNS" --server-pid "$(node_pid 0)"
    m1=$(redis_info memory used_memory)
    k1=$(rcli DBSIZE)
    run=$(sed -n 's/.*"run":"\([a-z0-9]*\)".*/\1/p' "$TMP/result.json" | head -n1)
    if [[ -n $run ]]; then
        sample=$(printf 'b%s-%08d' "$run" 0)
        mapfile -t keys < <(rcli --scan --pattern "*$sample*" | head -n 20)
        for key in "${keys[@]}"; do
            b=$(rcli MEMORY USAGE "$key" SAMPLES 0)
            type=$(rcli TYPE "$key")
            [[ $b =~ ^[0-9]+$ ]] || b=0
            bytes=$((bytes + b))
            key=${key//$sample/\{id\}}
            key=${key//\\/\\\\}
            key=${key//\"/\\\"}
            key_json+="${key_json:+,}{\"key\":\"$key\",\"type\":\"$type\",\"bytes\":$b}"
        done
    fi
    record memory "$server" "$round" \
        "\"redis_used_memory_before\":$m0,\"redis_used_memory_after\":$m1,\"redis_keys_before\":$k0,\"redis_keys_after\":$k1,\"sample_id\":\"${sample:-}\",\"sample_keys\":[$key_json],\"sample_bytes\":$bytes,"
    end_case
}

case_aggregate() {
    local server=$1 round=$2 urls args=() u
    local clients=$((N * AGG_NODES))
    begin_case aggregate "$server" "$AGG_NODES" "$round" || return 0
    mapfile -t urls < <(node_urls "$server" "$AGG_NODES")
    for u in "${urls[@]}"; do args+=(--base "$u"); done
    for u in "${urls[@]}"; do args+=(--publish-base "$u"); done
    run_bench aggregate "$server" "$round" "$clients" -- "${args[@]}" \
        fanout --clients "$clients" --conns "$CONNS" --wait-secs "$WAIT_SECS"
    record aggregate "$server" "$round" "\"nodes\":$AGG_NODES,"
    end_case
}

# redis-benchmark of the ceiling script and of PUBLISH, unpipelined, with pattern subscribers
# standing in for the nodes. No node runs meanwhile.
case_ceiling() {
    local round=$1 sha i csv name rc
    step "round $round/$ROUNDS: redis ceiling (redis-benchmark)"
    flush_redis
    sha=$(rcli SCRIPT LOAD "$(python3 "$HERE/cluster.py" script "$ROOT/src/store/cluster/scripts.lua" notify)")
    [[ $sha =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD of the notify script failed: $sha"
    # The ids redis-benchmark's -r 100000 names (__rand_int__ is 12 digits), as a create
    # leaves them, of app `cb`.
    rcli EVAL "for i = 0, 99999 do redis.call('HSET', string.format('ch:i:%012d', i), 'a', 'cb', 's', 0, 'c', 1) end" 0 >/dev/null
    for ((i = 0; i < CEILING_SUBSCRIBERS; i++)); do
        (exec redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PSUBSCRIBE '*' >/dev/null 2>&1) &
        SUB_PIDS+=("$!")
    done
    sleep 0.3
    for name in evalsha publish; do
        csv=$TMP/ceiling-$name.csv
        # KEYS: hint counter, epoch, nodes, the id. ARGV: idle ttl, granule, node,
        # idempotency window, then the notify: app, info, this node's waiters, its
        # idempotency record (none), its app's rate (0: off) and burst, not tallied.
        local cmd=(EVALSHA "$sha" 4 ch:hc ch:ep ch:nodes "ch:i:__rand_int__"
            86400000 60000 cb 300000 cb "0123456789abcdef" 0 "" 0 1 0)
        [[ $name == publish ]] && cmd=(PUBLISH cb:hints "cb:id:__rand_int__ 1")
        rc=0
        echo "### round $round ceiling $name: redis-benchmark -c $CEILING_CLIENTS -n $CEILING_REQS -r 100000 --csv ${cmd[*]}" >>"$OUT/bench.log"
        timeout 300 redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CEILING_CLIENTS" \
            -n "$CEILING_REQS" -r 100000 --csv "${cmd[@]}" >"$csv" 2>>"$OUT/bench.log" || rc=$?
        cat "$csv" >>"$OUT/bench.log"
        if ((rc != 0)) || ! python3 "$HERE/cluster.py" ceiling "$csv" "$name" "$round" \
            "$CEILING_CLIENTS" "$CEILING_REQS" "$CEILING_SUBSCRIBERS" "$rc" >>"$OUT/raw.jsonl"; then
            FAILED_RUNS=$((FAILED_RUNS + 1))
            printf '{"case":"ceiling","server":"redis","command":"%s","round":%d,"exit":%d,"failed":true}\n' \
                "$name" "$round" "$rc" >>"$OUT/raw.jsonl"
            log "FAILED: redis-benchmark $name, round $round (exit $rc)"
        else
            log "$(python3 "$HERE/cluster.py" brief "$OUT/raw.jsonl")"
        fi
    done
    stop_subscribers
    flush_redis
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
[[ $CLK_TCK =~ ^[0-9]+$ ]] || CLK_TCK=100

# ---------------------------------------------------------------------------------------
step "check CallHome's cluster mode (a and b on the private Redis)"
flush_redis
if ! start_nodes callhome 2; then
    CH_STATUS="CallHome refused the Redis backend: $NODE_ERROR"
else
    mapfile -t urls < <(node_urls callhome 2)
    if why=$(timeout 30 python3 "$HERE/cluster.py" check "${urls[0]}" "${urls[1]}" "$KEY" 2>&1); then
        CH_OK=1
        CH_STATUS="cluster mode checked: $why"
    else
        CH_STATUS="CallHome started with the Redis backend but is not in cluster mode: $why"
    fi
    stop_nodes
fi
if ((CH_OK)); then
    log "$CH_STATUS"
else
    log "*** $CH_STATUS"
    log "*** CallHome is skipped; Nchan and the Redis ceiling are measured all the same"
fi
printf '{"case":"check","server":"callhome","ok":%s,"status":"%s"}\n' \
    "$( ((CH_OK)) && echo true || echo false)" \
    "$(printf '%s' "$CH_STATUS" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\000-\037')" >"$OUT/raw.jsonl"

SERVERS=(nchan)
((CH_OK)) && SERVERS=(callhome nchan)
AGG_SERVERS=()
if ((AGG_NODES > 0)); then
    ((CH_OK)) && AGG_SERVERS+=(callhome)
    ((AGG_NCHAN)) && AGG_SERVERS+=(nchan)
fi

for ((round = 1; round <= ROUNDS; round++)); do
    wanted ceiling && case_ceiling "$round"
    if wanted fanout; then for server in "${SERVERS[@]}"; do case_fanout "$server" "$round"; done; fi
    if wanted notify; then for server in "${SERVERS[@]}"; do case_notify "$server" "$round"; done; fi
    if wanted memory; then for server in "${SERVERS[@]}"; do case_memory "$server" "$round"; done; fi
    if wanted aggregate; then for server in "${AGG_SERVERS[@]}"; do case_aggregate "$server" "$round"; done; fi
done

step "write $DOC"
stop_pid "$REDIS_PID"
REDIS_PID=
save_logs
WALL_SECS=$((SECONDS - START_SECS)) timeout 60 python3 "$HERE/cluster.py" report "$OUT" "$DOC" |
    tee "$OUT/summary.txt" >&2 || die "summarizing failed"
log "done in $((SECONDS - START_SECS)) s: $DOC (the cluster section), raw lines in $OUT/raw.jsonl"
if ((!CH_OK)); then
    log "*** CallHome was NOT measured: $CH_STATUS"
fi
if ((FAILED_RUNS > 0)); then
    STEP="measurements"
    log "$FAILED_RUNS measurement run(s) failed; their figures are missing from the table"
    exit 2
fi
if ((!CH_OK)) && [[ -n ${REQUIRE_CALLHOME:-} ]]; then
    STEP="callhome check"
    exit 2
fi
