#!/usr/bin/env bash
# Proof for a pure move: the simulator's JSONL traces of every library scenario and of sweep seeds
# 1..N (16 hosts) are byte for byte identical between a base revision and the working tree.
#
#   scripts/same-traces.sh [BASE_REV] [SEEDS]     # default: HEAD and 200
#
# Builds the base revision in a git worktree under target/same-traces (its own target directory),
# runs both simulators on the working tree's scenario files, and prints how many traces differ
# (exit status 1 if any). A scenario the base cannot parse counts as a difference.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
base=${1:-HEAD}
seeds=${2:-200}
work=$root/target/same-traces
rm -rf "$work/traces"
mkdir -p "$work/traces/base" "$work/traces/new"

if [ -d "$work/base-src" ]; then
  git worktree remove --force "$work/base-src" >/dev/null 2>&1 || rm -rf "$work/base-src"
fi
git worktree prune
git worktree add --detach -q "$work/base-src" "$base"
trap 'git worktree remove --force "$work/base-src" >/dev/null 2>&1 || true' EXIT

echo "building $(git rev-parse --short "$base") and the working tree"
(cd "$work/base-src" && CARGO_TARGET_DIR="$work/target" cargo build --release -q -p fdm-sim)
cargo build --release -q -p fdm-sim

traces() {
  local bin=$1 dir=$2 f s
  for f in sim/scenarios/*.toml; do
    "$bin" run "$f" --trace "$dir/$(basename "$f" .toml).jsonl" >/dev/null 2>&1 || true
  done
  for s in $(seq 1 "$seeds"); do
    "$bin" run --hosts 16 --seed "$s" --trace "$dir/seed-$s.jsonl" >/dev/null 2>&1 || true
  done
}
traces "$work/target/release/fdm-sim" "$work/traces/base"
traces "${CARGO_TARGET_DIR:-$root/target}/release/fdm-sim" "$work/traces/new"

total=0
differ=0
for f in "$work"/traces/new/*.jsonl "$work"/traces/base/*.jsonl; do
  name=$(basename "$f")
  [ -e "$work/traces/seen-$name" ] && continue
  touch "$work/traces/seen-$name"
  total=$((total + 1))
  if ! cmp -s "$work/traces/base/$name" "$work/traces/new/$name"; then
    differ=$((differ + 1))
    echo "differs: $name"
  fi
done
rm -f "$work"/traces/seen-*
lines=$(cat "$work"/traces/new/*.jsonl 2>/dev/null | wc -l)
echo "same-traces: $((total - differ)) of $total traces identical ($lines trace lines) against $(git rev-parse --short "$base")"
[ "$differ" = 0 ]
