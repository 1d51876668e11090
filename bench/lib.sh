# Shell helpers the benchmark scripts share. Source it after setting NAME (the tag in log
# lines) and START_SECS=$SECONDS.

# Environment assignments that turn CallHome's rate limits off: Nchan has none, and the load
# tool is one client making thousands of requests on purpose.
NO_RATE_LIMITS=(CALLHOME_RATE_LIMITS__CREATE_PER_APP__PER_SECOND=0
    CALLHOME_RATE_LIMITS__NOTIFY_PER_APP__PER_SECOND=0
    CALLHOME_RATE_LIMITS__BROWSER_PER_IP__PER_SECOND=0)

log() { printf '[%s %4ds] %s\n' "$NAME" "$((SECONDS - START_SECS))" "$*" >&2; }
die() { log "ERROR in step '$STEP': $*"; exit 1; }
step() { STEP=$1; log "== $1"; }

# True while process $1 exists and is not a zombie.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z && ${stat%% *} != X ]]
}

# Waits up to $2 tenths of a second for process $1 to end.
wait_gone() {
    local i
    for ((i = 0; i < $2; i++)); do
        alive "$1" || return 0
        sleep 0.1
    done
    ! alive "$1"
}

# The path of Nchan's module (Debian's libnginx-mod-nchan), or false when it is missing.
find_nchan_module() {
    local f
    for f in /usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so; do
        [[ -f $f ]] && { echo "$f"; return 0; }
    done
    # Debian's snippet: "load_module modules/ngx_nchan_module.so;" (relative to /usr/share/nginx)
    f=$(sed -n 's/^ *load_module *\([^;]*\);.*/\1/p' /usr/share/nginx/modules-available/mod-nchan.conf 2>/dev/null | head -n1)
    if [[ -n $f ]]; then
        [[ $f == /* ]] || f=/usr/share/nginx/$f
        f=$(readlink -f "$f" 2>/dev/null || true)
        [[ -n $f && -f $f ]] && { echo "$f"; return 0; }
    fi
    return 1
}

# A free port on 127.0.0.1, from $1 upwards.
free_port() {
    timeout 30 python3 - "$1" <<'PY'
import socket, sys
start = int(sys.argv[1])
for port in range(start, start + 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    sys.exit(0)
sys.exit("no free port near %d" % start)
PY
}

# The end of a script's on_exit: keep the logs of the temp dir ($TMP, via save_logs), remove
# it, say which step failed, and exit with $1.
end_run() {
    local rc=$1
    if [[ -n $TMP && -d $TMP ]]; then
        save_logs
        rm -rf "$TMP"
    fi
    if ((rc != 0)); then
        log "FAILED in step '$STEP' (exit $rc); processes stopped, temp dir removed"
        [[ -d $OUT ]] && log "partial results and logs: $OUT"
    fi
    exit "$rc"
}

# Runs the script's on_exit however it ends, and logs the command that failed.
install_traps() {
    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'log "command failed (exit $?): $BASH_COMMAND"' ERR
}
