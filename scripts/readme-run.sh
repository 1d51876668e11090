#!/usr/bin/env bash
# Runs the README's first set-up command as README.md has it (the first ```sh block under
# "## Set up", read from the file at run time, never copied here) until GET /healthz answers
# 200, then stops the daemon it started, by its PID, with SIGTERM, and checks that it exits
# 0 after its final snapshot. .ci/run calls it, so the first thing a newcomer pastes keeps
# working. Loopback only: the shipped config listens on 127.0.0.1:8080.
#
# READMERUN_TIMEOUT_SECS (default 900) bounds the wait for /healthz, which includes the
# release build: on a fresh 2-core machine that build is most of it.
set -euo pipefail
cd "$(dirname "$0")/.."

timeout_secs=${READMERUN_TIMEOUT_SECS:-900}

# The first ```sh block after the "## Set up" heading, before the next heading.
command=$(awk '
  /^## / { in_setup = ($0 == "## Set up"); next }
  in_setup && /^```sh$/ { in_block = 1; next }
  in_block && /^```$/ { exit }
  in_block { print }
' README.md)
if [ -z "$command" ]; then
  echo "readme-run: README.md has no \`\`\`sh block under \"## Set up\"" >&2
  exit 1
fi

# Where the shipped config listens (the README's command runs on it).
addr=$(sed -n 's/^listen = "\(.*\)"$/\1/p' config/callhome.toml | head -n 1)
if [ -z "$addr" ]; then
  echo "readme-run: no top-level listen = \"...\" in config/callhome.toml" >&2
  exit 1
fi
host=${addr%:*}
port=${addr##*:}
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "readme-run: $addr is already in use, so the README's command cannot listen there." >&2
  echo "readme-run: stop whatever listens on it first:" >&2
  ss -ltnp "sport = :$port" >&2 2>/dev/null || true
  exit 1
fi

# As on a fresh machine: no CALLHOME_* variable changes what the command does.
while IFS= read -r var; do
  unset "$var"
done < <(compgen -e | grep '^CALLHOME_' || true)

log=$(mktemp)
runner=""
daemon=""
cleanup() {
  local status=$?
  for pid in $daemon $runner; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  if [ -n "$runner" ]; then
    wait "$runner" 2>/dev/null || true
  fi
  if [ "$status" != 0 ]; then
    echo "readme-run: the command's output (last 40 lines):" >&2
    tail -n 40 "$log" >&2
  fi
  rm -f "$log"
}
trap cleanup EXIT

# The process with PID $1, or one of its descendants, that runs target/release/callhome.
# (`cargo run` replaces itself with the binary on Unix, but this does not count on it.)
find_daemon() {
  local want pids=("$1") pid stat rest
  want=$(realpath target/release/callhome 2>/dev/null) || return 1
  while [ "${#pids[@]}" -gt 0 ]; do
    pid=${pids[0]}
    pids=("${pids[@]:1}")
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$want" ]; then
      echo "$pid"
      return 0
    fi
    for stat in /proc/[0-9]*/stat; do
      { read -r rest <"$stat"; } 2>/dev/null || continue
      rest=${rest##*) }
      rest=${rest#* }
      if [ "${rest%% *}" = "$pid" ]; then
        stat=${stat#/proc/}
        pids+=("${stat%/stat}")
      fi
    done
  done
  return 1
}

echo "== readme-run: $command"
bash -c "$command" >"$log" 2>&1 &
runner=$!
deadline=$((SECONDS + timeout_secs))
until curl -fsS --max-time 2 -o /dev/null "http://$addr/healthz" 2>/dev/null; do
  if ! kill -0 "$runner" 2>/dev/null; then
    echo "readme-run: the command ended before /healthz answered" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "readme-run: no 200 from http://$addr/healthz within ${timeout_secs}s" >&2
    exit 1
  fi
  sleep 1
done
if ! daemon=$(find_daemon "$runner"); then
  echo "readme-run: /healthz answered, but not from target/release/callhome started here" >&2
  exit 1
fi
echo "== readme-run: /healthz answered 200 after ${SECONDS}s; SIGTERM to PID $daemon"

kill -TERM "$daemon"
for _ in $(seq 300); do
  kill -0 "$daemon" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$daemon" 2>/dev/null; then
  echo "readme-run: PID $daemon still runs 30s after SIGTERM" >&2
  exit 1
fi
daemon=""
status=0
wait "$runner" || status=$?
runner=""
if [ "$status" != 0 ]; then
  echo "readme-run: the command exited $status after SIGTERM, not 0" >&2
  exit 1
fi
if ! grep -q "final snapshot written" "$log"; then
  echo "readme-run: no \"final snapshot written\" line after SIGTERM" >&2
  exit 1
fi
echo "== readme-run: the README's first command ran, answered /healthz and stopped cleanly"
