#!/usr/bin/env bash
# CallHome's restart and drain, measured on loopback with callhome-bench (issue 5).
#
#   bash bench/restart.sh                                   # 100,000 ids, 10,000 polls, 3 rounds
#   IDS=2000 WAITERS=300 ROUNDS=1 bash bench/restart.sh     # a quick check
#
# Restart, each round: start the daemon with a snapshot file in a fresh temp dir, give IDS ids
# one 16-byte info each (`callhome-bench store --keep-ids`), wait until the periodic snapshot
# is quiet, send SIGTERM and time it until the process exits. Read the final snapshot's write
# time and size from the daemon's log, and the file's size. Start the daemon again on the same
# file: read the restore time from its log, and time exec until /readyz answers 200. Then
# check that SAMPLE random ids answer with seq 1 and their info, and that an id that was never
# created answers 404.
#
# Drain, each round: start a fresh daemon with no snapshot file (memory only, so the figure is
# the drain alone; the restart measures the final snapshot) and a poll timeout of 1 h, hold
# WAITERS long polls (`callhome-bench drain`), send SIGTERM and time it until the process
# exits. The tool reports how each held poll ended: answered 204, cut, or never.
#
# Both are repeated ROUNDS times. The summary (median and range per figure) goes to stdout and
# summary.txt; one JSON line per measurement to results.jsonl, the tool's output and the
# daemon's logs beside them, in target/bench-results/restart-<timestamp>/.
#
# Knobs (environment):
#   IDS=100000       ids in the snapshot
#   WAITERS=10000    long polls held at SIGTERM
#   ROUNDS=3         repetitions; the summary gives the median and the range
#   SAMPLE=100       ids checked after the restart (all of them when SAMPLE >= IDS)
#   CONNS=16         connections used to create and notify the ids
#   CH_WORKERS=      CallHome's worker threads; unset: the shipped config (one per core)
#   NOFILE=20000     `ulimit -n` for the daemon
#   CH_PORT=18180    first port tried (the next free one is taken)
#   NO_BUILD=1       use the binaries already built
#   OUT=target/bench-results/restart-<ts>
# The binaries are taken from $CARGO_TARGET_DIR/release (default target/release).
#
# Only processes this script started are stopped, by their PID. Every wait has a deadline.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"

IDS=${IDS:-100000}
WAITERS=${WAITERS:-10000}
ROUNDS=${ROUNDS:-3}
SAMPLE=${SAMPLE:-100}
CONNS=${CONNS:-16}
CH_WORKERS=${CH_WORKERS:-}
NOFILE=${NOFILE:-20000}
CH_PORT=${CH_PORT:-18180}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/target/bench-results/restart-$STAMP}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

CALLHOME=$TARGET_DIR/release/callhome
BENCH=$TARGET_DIR/release/callhome-bench
KEY=demo-key-change-me-0123456789   # the key of the shipped config/callhome.toml
# Deadlines, in seconds.
START_SECS_MAX=$((60 + IDS / 5000))      # exec to /readyz 200 (a restore included)
STOP_SECS_MAX=$((60 + IDS / 5000))       # SIGTERM to exit (drain_timeout is 10 s)
QUIET_SECS_MAX=60                        # the periodic snapshot settling after the fill

STEP=setup
TMP=
SERVER_PID=      # the daemon this script started last
BENCH_PID=       # the running `timeout callhome-bench ...`
DOG_PID=         # the `sleep` that bounds a timed stop
FAILED_CHECKS=0
START_SECS=$SECONDS

NAME=restart
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

for v in IDS WAITERS ROUNDS SAMPLE CONNS NOFILE CH_PORT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[[ -z $CH_WORKERS || $CH_WORKERS =~ ^[0-9]+$ ]] || die "CH_WORKERS must be a whole number"
((IDS > 0 && WAITERS > 0 && ROUNDS > 0 && SAMPLE > 0 && CONNS > 0)) ||
    die "IDS, WAITERS, ROUNDS, SAMPLE and CONNS must be positive"

# Microseconds since the epoch, without a fork.
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$t"; }
# $1 microseconds as milliseconds, or as seconds, with 3 decimals.
us_to_ms() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
us_to_s() { us_to_ms $(($1 / 1000)); }

stop_server() {
    local pid=$SERVER_PID
    SERVER_PID=
    [[ -n $pid ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" $((STOP_SECS_MAX * 10)); then
            log "pid $pid ignored SIGTERM for $STOP_SECS_MAX s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

stop_bench() {
    local pid=$BENCH_PID
    BENCH_PID=
    [[ -n $pid ]] || return 0
    if alive "$pid"; then
        # `timeout` passes the signal on to the tool, whose workers exit when it does.
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" 150 || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

save_logs() {
    [[ -n $TMP && -d $TMP && -d $OUT ]] || return 0
    mkdir -p "$OUT/logs"
    cp -f "$TMP"/*.log "$OUT/logs/" 2>/dev/null || true
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM ERR
    if [[ -n $DOG_PID ]]; then
        kill "$DOG_PID" 2>/dev/null || true
        wait "$DOG_PID" 2>/dev/null || true
    fi
    stop_bench
    stop_server
    end_run "$rc"
}
install_traps

# Starts the daemon, logging to $TMP/$1.log, with the environment assignments $2...
# Sets SERVER_PID and STARTED_US (just before exec).
start_callhome() {
    local name=$1
    shift
    local env=(CALLHOME_LIMITS__MAX_IDS=$((IDS + WAITERS + 1000)) "${NO_RATE_LIMITS[@]}" "$@")
    [[ -n $CH_WORKERS ]] && env+=(CALLHOME_WORKERS="$CH_WORKERS")
    STARTED_US=$(now_us)
    (ulimit -n "$NOFILE" && exec env "${env[@]}" "$CALLHOME" --config "$TMP/callhome.toml" \
        --listen "127.0.0.1:$PORT" --log info) >"$TMP/$name.log" 2>&1 &
    SERVER_PID=$!
}

# Polls /readyz until it answers 200; sets READY_MS (from STARTED_US).
wait_ready() {
    local deadline=$((SECONDS + START_SECS_MAX)) code
    while ((SECONDS < deadline)); do
        alive "$SERVER_PID" || die "the daemon exited during start-up (see its log in $TMP)"
        # A connection made during a restore waits in the listen backlog and is answered as
        # soon as the daemon accepts, so the first 200 comes right after the restore.
        code=$(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --max-time 5 \
            "http://127.0.0.1:$PORT/readyz" 2>/dev/null) || code=000
        if [[ $code == 200 ]]; then
            READY_MS=$(us_to_ms $(($(now_us) - STARTED_US)))
            return 0
        fi
        sleep 0.02
    done
    die "/readyz did not answer 200 within $START_SECS_MAX s"
}

# Sends SIGTERM to the daemon and waits, at most STOP_SECS_MAX, for it to exit; sets STOP_MS
# (SIGTERM to exit, as its parent sees it) and STOP_EXIT (its exit status).
stop_timed() {
    local pid=$SERVER_PID t0 ended=
    sleep "$STOP_SECS_MAX" &
    DOG_PID=$!
    t0=$(now_us)
    kill -TERM "$pid"
    STOP_EXIT=0
    wait -n -p ended "$pid" "$DOG_PID" || STOP_EXIT=$?
    STOP_MS=$(us_to_ms $(($(now_us) - t0)))
    if [[ $ended != "$pid" ]]; then
        log "the daemon did not exit within $STOP_SECS_MAX s of SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        SERVER_PID=
        DOG_PID=
        die "the daemon did not stop within $STOP_SECS_MAX s"
    fi
    SERVER_PID=
    kill "$DOG_PID" 2>/dev/null || true
    wait "$DOG_PID" 2>/dev/null || true
    DOG_PID=
}

# Runs callhome-bench with the arguments given, bounded, into $TMP/bench.json; in the
# background so that a signal to this script is handled at once. Sets BENCH_PID.
start_bench() {
    local bounded=$1
    shift
    echo "### $BENCH $*" >>"$OUT/bench.log"
    timeout -k 10 $((bounded + 30)) "$BENCH" --json --max-secs "$bounded" \
        --base "http://127.0.0.1:$PORT" --key "$KEY" "$@" >"$TMP/bench.json" 2>>"$OUT/bench.log" &
    BENCH_PID=$!
}

# Waits for the tool; fails unless it succeeded. Leaves its JSON line in BENCH_JSON.
finish_bench() {
    local rc=0
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=
    ((rc == 0)) || die "callhome-bench failed (exit $rc; see $OUT/bench.log)"
    BENCH_JSON=$(grep '^{' "$TMP/bench.json" | tail -n1) || die "callhome-bench printed no result"
}

# The value of the number field $1 in BENCH_JSON (null when absent).
json_num() {
    local v
    v=$(sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$BENCH_JSON")
    echo "${v:-null}"
}

# Reads the daemon's snapshot log lines (all parsing is in restart.py's log_metrics) into
# LOGGED_<key> variables; missing figures are null.
read_log_metrics() {
    local key value
    for key in final_snapshot_ms final_snapshot_bytes final_snapshot_ids restore_ms \
        restored_ids restore_over_limit restore_unknown_app drain_timeout_hit; do
        printf -v "LOGGED_$key" '%s' null
    done
    while IFS='=' read -r key value; do
        [[ $key =~ ^[a-z_]+$ ]] && printf -v "LOGGED_$key" '%s' "$value"
    done < <(timeout 30 python3 "$HERE/restart.py" log-metrics "$1")
}

# Waits until the snapshot file $1 exists and has not changed for 2 s: the periodic snapshot
# (every 1 s while something changes) has caught up with the fill. Each write renames a new
# file over the old one, so the inode tells writes apart within one second.
wait_snapshot_quiet() {
    local deadline=$((SECONDS + QUIET_SECS_MAX)) last= now since=$SECONDS
    while ((SECONDS < deadline)); do
        now=$(stat -c '%i.%Y.%s' "$1" 2>/dev/null || echo none)
        if [[ $now != "$last" ]]; then
            last=$now
            since=$SECONDS
        elif [[ $now != none ]] && ((SECONDS - since >= 2)); then
            return 0
        fi
        sleep 0.2
    done
    die "the snapshot file $1 did not settle within $QUIET_SECS_MAX s"
}

loadavg() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null; }

# ---------------------------------------------------------------------------------------
step "check tools"
for tool in python3 timeout curl stat; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

step "build callhome and callhome-bench (release)"
if [[ -z ${NO_BUILD:-} ]]; then
    timeout 1800 cargo build --release -p callhome -p callhome-bench >&2 || die "cargo build failed"
fi
[[ -x $CALLHOME && -x $BENCH ]] || die "missing $CALLHOME or $BENCH"

step "prepare the temp dir and results dir"
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/callhome-restart.XXXXXX")
mkdir -p "$TMP/bin"
# Others may rebuild the binaries while this runs: measure copies made now.
cp "$CALLHOME" "$BENCH" "$TMP/bin/"
CALLHOME=$TMP/bin/callhome
BENCH=$TMP/bin/callhome-bench
PORT=$(free_port "$CH_PORT")
# The shipped config (its demo app and key), without its snapshot file: each run sets its own
# through CALLHOME_STORE__SNAPSHOT_PATH, or none.
grep -v '^snapshot_path' config/callhome.toml >"$TMP/callhome.toml"
: >"$OUT/results.jsonl"
log "callhome on 127.0.0.1:$PORT; results in $OUT"
{
    echo "stamp=$STAMP ids=$IDS waiters=$WAITERS rounds=$ROUNDS sample=$SAMPLE conns=$CONNS workers=${CH_WORKERS:-config}"
    echo "callhome $("$CALLHOME" --version 2>/dev/null || echo '?'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "cpus $(nproc), $(uname -sr)"
} >"$OUT/meta.txt"

# ---------------------------------------------------------------------------------------
restart_round() {
    local round=$1 dir=$TMP/r$1 ok=true
    local snapshot=$dir/state.snapshot
    mkdir -p "$dir"

    step "round $round/$ROUNDS: restart: fill $IDS ids"
    start_callhome "restart-r$round-first" CALLHOME_STORE__SNAPSHOT_PATH="$snapshot"
    wait_ready
    local t0
    t0=$(now_us)
    start_bench $((240 + IDS / 500)) store --ids "$IDS" --conns "$CONNS" --keep-ids \
        --server-pid "$SERVER_PID"
    finish_bench
    local fill_secs run rss create_errors publish_errors
    fill_secs=$(us_to_s $(($(now_us) - t0)))
    run=$(sed -n 's/.*"run":"\([a-z0-9]*\)".*/\1/p' <<<"$BENCH_JSON")
    [[ -n $run ]] || die "no run tag in the store result: $BENCH_JSON"
    rss=$(json_num rss_after)
    create_errors=$(json_num create_errors)
    publish_errors=$(json_num publish_errors)
    [[ $create_errors == 0 && $publish_errors == 0 ]] || {
        log "CHECK FAILED: $create_errors create and $publish_errors publish errors during the fill"
        ok=false
    }
    wait_snapshot_quiet "$snapshot"

    step "round $round/$ROUNDS: restart: SIGTERM with $IDS ids"
    stop_timed
    local stop_ms=$STOP_MS stop_exit=$STOP_EXIT file_bytes
    file_bytes=$(stat -c %s "$snapshot" 2>/dev/null || echo null)
    read_log_metrics "$TMP/restart-r$round-first.log"
    local write_ms=$LOGGED_final_snapshot_ms write_bytes=$LOGGED_final_snapshot_bytes
    ((stop_exit == 0)) || { log "CHECK FAILED: the daemon exited with $stop_exit"; ok=false; }
    [[ $write_ms != null ]] || log "no final snapshot line found in restart-r$round-first.log"

    step "round $round/$ROUNDS: restart: start again on the snapshot"
    start_callhome "restart-r$round-again" CALLHOME_STORE__SNAPSHOT_PATH="$snapshot"
    wait_ready
    local ready_ms=$READY_MS
    read_log_metrics "$TMP/restart-r$round-again.log"
    local restore_ms=$LOGGED_restore_ms restored=$LOGGED_restored_ids
    [[ $restored == "$IDS" ]] || { log "CHECK FAILED: $restored ids restored, not $IDS"; ok=false; }

    step "round $round/$ROUNDS: restart: check $SAMPLE ids"
    local checked=null good=null neg=false key value
    while IFS='=' read -r key value; do
        case $key in
            checked) checked=$value ;;
            ok) good=$value ;;
            unknown_is_404) neg=$value ;;
        esac
    done < <(timeout 120 python3 "$HERE/restart.py" check-ids "$PORT" "$KEY" "$run" "$IDS" "$SAMPLE" \
        2>>"$OUT/bench.log" || true)
    if [[ $checked == null || $good != "$checked" || $neg != true ]]; then
        log "CHECK FAILED: $good of $checked sampled ids answered as expected; unknown id 404: $neg"
        ok=false
    fi
    stop_server

    [[ $ok == true ]] || FAILED_CHECKS=$((FAILED_CHECKS + 1))
    printf '{"case":"restart","round":%d,"ok":%s,"ids":%d,"run":"%s","fill_secs":%s,"rss_after_fill":%s,"create_errors":%s,"publish_errors":%s,"stop_ms":%s,"stop_exit":%d,"final_snapshot_ms":%s,"final_snapshot_bytes":%s,"snapshot_file_bytes":%s,"restore_ms":%s,"restored_ids":%s,"ready_ms":%s,"verify_checked":%s,"verify_ok":%s,"unknown_is_404":%s,"loadavg_1m":%s}\n' \
        "$round" "$ok" "$IDS" "$run" "$fill_secs" "$rss" "$create_errors" "$publish_errors" \
        "$stop_ms" "$stop_exit" "$write_ms" "$write_bytes" "$file_bytes" "$restore_ms" \
        "$restored" "$ready_ms" "$checked" "$good" "$neg" "$(loadavg)" >>"$OUT/results.jsonl"
    log "restart: exit ${stop_ms} ms after SIGTERM (snapshot ${write_ms} ms, ${file_bytes} B); restore ${restore_ms} ms, ready ${ready_ms} ms after exec; ${good}/${checked} ids ok"
}

drain_round() {
    local round=$1 ok=true
    local ready_file=$TMP/drain-r$round.ready

    step "round $round/$ROUNDS: drain: hold $WAITERS polls"
    start_callhome "drain-r$round" CALLHOME_LIMITS__POLL_TIMEOUT=1h
    wait_ready
    start_bench $((240 + WAITERS / 50)) drain --clients "$WAITERS" --server-pid "$SERVER_PID" \
        --ready-file "$ready_file" --wait-secs $((STOP_SECS_MAX + 30))
    local deadline=$((SECONDS + 180 + WAITERS / 50))
    until [[ -s $ready_file ]]; do
        ((SECONDS < deadline)) || die "the polls were not all held within $((180 + WAITERS / 50)) s"
        alive "$BENCH_PID" || die "callhome-bench ended before the polls were held (see $OUT/bench.log)"
        alive "$SERVER_PID" || die "the daemon died while the polls were connecting"
        sleep 0.1
    done
    local held
    held=$(<"$ready_file")

    step "round $round/$ROUNDS: drain: SIGTERM with $held polls held"
    stop_timed
    local stop_ms=$STOP_MS stop_exit=$STOP_EXIT
    finish_bench
    read_log_metrics "$TMP/drain-r$round.log"
    local timeout_hit=${LOGGED_drain_timeout_hit/null/false}
    local answered cut other values unended
    answered=$(json_num answered)
    cut=$(json_num cut)
    other=$(json_num other_answers)
    values=$(json_num values)
    unended=$(json_num unended)
    ((stop_exit == 0)) || { log "CHECK FAILED: the daemon exited with $stop_exit"; ok=false; }
    if [[ $held != "$WAITERS" || $answered != "$held" || $timeout_hit != false ]]; then
        log "CHECK FAILED: $answered of $held held polls ($WAITERS clients) answered 204; drain timeout hit: $timeout_hit"
        ok=false
    fi

    [[ $ok == true ]] || FAILED_CHECKS=$((FAILED_CHECKS + 1))
    printf '{"case":"drain","round":%d,"ok":%s,"waiters":%d,"held":%s,"stop_ms":%s,"stop_exit":%d,"answered":%s,"cut":%s,"other_answers":%s,"values":%s,"unended":%s,"drain_timeout_hit":%s,"snapshot":false,"loadavg_1m":%s}\n' \
        "$round" "$ok" "$WAITERS" "$held" "$stop_ms" "$stop_exit" "$answered" "$cut" "$other" \
        "$values" "$unended" "$timeout_hit" "$(loadavg)" >>"$OUT/results.jsonl"
    log "drain: exit ${stop_ms} ms after SIGTERM; of $held held polls $answered answered 204, $cut cut, $unended never ended"
}

for ((round = 1; round <= ROUNDS; round++)); do
    restart_round "$round"
    drain_round "$round"
done

step "summary"
save_logs
timeout 60 python3 "$HERE/restart.py" summary "$OUT/results.jsonl" | tee "$OUT/summary.txt"
log "done in $((SECONDS - START_SECS)) s; results in $OUT"
if ((FAILED_CHECKS > 0)); then
    STEP=checks
    log "$FAILED_CHECKS round(s) failed a check (see CHECK FAILED above and results.jsonl)"
    exit 2
fi
