#!/usr/bin/env bash
# Two nodes on 127.0.0.1 all-reduce back to back through burn-collective 0.21's global mode, with each global
# strategy. What it printed on 2026-12-08 (2 CPU cores): every strategy returned the first sum ([3, 0, 2, 4])
# on both nodes and never the second: both were still waiting for it at the 25 s limit.
set -u
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(mktemp -d)}"
cargo build --release -q || exit 1
bin="$CARGO_TARGET_DIR/release/burn_collective_global"
for strategy in centralized tree ring; do
    port=$((30000 + RANDOM % 5000))
    "$bin" orch "$port" >/dev/null 2>&1 &
    orch=$!
    sleep 0.5
    timeout 25 "$bin" node 0 "$port" $((port + 1)) "$strategy" 2>&1 | grep '^node' | sed 's/^/  /' &
    timeout 25 "$bin" node 1 "$port" $((port + 2)) "$strategy" 2>&1 | grep '^node' | sed 's/^/  /'
    wait %2 2>/dev/null
    kill "$orch" 2>/dev/null
    wait "$orch" 2>/dev/null
    echo "== $strategy: the lines above are every sum the two nodes got in 25 s (5 asked for)"
done
