#!/usr/bin/env bash
# Run every fuzz target for a bounded time (default 60 s each). Installs cargo-fuzz when missing.
#   scripts/fuzz.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for dir in heartbeat-fs fdm-agent; do
  for t in $(cd "$dir" && cargo +nightly fuzz list); do
    echo "== $dir/$t for ${secs}s"
    (cd "$dir" && cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -max_len=4096)
  done
done
