#!/usr/bin/env bash
# Run every fuzz target for a bounded time (default 60 s each). Installs cargo-fuzz when missing.
#   scripts/fuzz.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz needs nightly flags (-Zsanitizer); with only a stable toolchain, unlock them on it.
if rustup toolchain list 2>/dev/null | grep -q nightly; then
  fuzz() { cargo +nightly fuzz "$@"; }
else
  fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz "$@"; }
fi
for dir in heartbeat-fs fdm-agent; do
  for t in $(cd "$dir" && fuzz list); do
    echo "== $dir/$t for ${secs}s"
    (cd "$dir" && fuzz run "$t" -- -max_total_time="$secs" -max_len=4096)
  done
done
