#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the integration tests over real sockets.
# The integration tests start servers on 127.0.0.1 port 0 and need `bash` and `curl`
# (the README walk-through test runs the README's curl commands against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
  else
    echo "scripts/test.sh: curl is required (apt-get install curl)" >&2
    exit 1
  fi
fi

# The browser test runs the demo (examples/demo) as a program: build it as one first.
cargo build --locked --examples
# --workspace: the load tool (bench/) is not a default member, and its tests count too.
cargo test --locked --workspace --all-targets "$@"

# The integration suite once more with the lean HTTP/1.1 path off: every connection is then
# served by hyper, and the same tests prove both paths answer the same (docs/performance.md).
echo "== the integration suite again with [http] lean_path = false"
CALLHOME_HTTP__LEAN_PATH=false cargo test --locked --test it "$@"

# Cluster mode: every server of the suite on a redis-server of its own (never the machine's
# shared 6379). Under CI=true a missing redis-server fails the run instead of skipping.
if command -v redis-server >/dev/null 2>&1; then
  echo "== the integration suite again with [store] backend = \"redis\""
  CALLHOME_STORE__BACKEND=redis cargo test --locked --test it "$@"
elif [ "${CI:-}" = true ]; then
  echo "scripts/test.sh: redis-server is missing (apt-get install redis-server redis-sentinel)" >&2
  exit 1
else
  echo "== skipped: the suite on the Redis engine (redis-server is not installed)"
fi
