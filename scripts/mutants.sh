#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the claim rule and of the agent core: each mutant is one small
# change to the code (a `==` made `!=`, a function body replaced by a default, a `!` deleted, ...);
# a mutant the tests still pass on ("missed") is behaviour no test pins down.
#
#   scripts/mutants.sh SET [OPTIONS] [-- CARGO_TEST_ARGS]
#
# SET (required):
#   claim   heartbeat-fs/src/claim.rs, tested by `cargo test -p heartbeat-fs`
#           (32 mutants, about 15 min on 2 cores)
#   agent   fdm-agent/core/src/agent/**/*.rs, tested by `cargo test -p fdm-core --lib` (the core tests)
#           (about 700 mutants, about 40 s each: the long run, many hours; bound it with the options)
#   all     claim, then agent
#
# OPTIONS (anything else is passed to cargo mutants as it is):
#   --file GLOB   mutate only these files instead of the set's (repeatable), e.g.
#                 --file fdm-agent/core/src/agent/local.rs
#   --shard K/N   run only shard K of N (0-based: 0/8 .. 7/8); shards are consecutive slices
#   --re REGEX    only mutants whose name (as --list shows it) matches, e.g. --re 'in judge$'
#   --list        list the mutants and stop (quick: nothing is built)
#
# ENVIRONMENT:
#   MUTANTS_TIMEOUT   per-mutant test timeout in seconds (default 60, where the unmutated tests take
#                     about 5 s (claim) and 1 s (agent)); a mutant whose tests run longer is a
#                     "timeout" (usually an infinite loop)
#   MUTANTS_JOBS      parallel build/test jobs (default 1: a job needs most of the machine)
#   MUTANTS_OUT       output directory (default target/mutants/<set>[-<file>][-shard-K-of-N])
#
# RESULTS: <output>/mutants.out/ holds outcomes.json, caught.txt, missed.txt, timeout.txt,
# unviable.txt, diffs and one log per mutant under log/. A previous run in the same directory is
# moved to mutants.out.old. Exit status: 0 when every mutant was caught or unviable, 2 when some
# were missed, 3 on timeouts, 4 when the unmutated tree already fails its tests (see `cargo mutants`).
#
# cargo-mutants copies the tree (without target/ and gitignored files) and builds each mutant in the
# copy, so the work tree is not touched; but it copies edits in progress too: when other people edit
# the tree, run it from a clean checkout, e.g.
#   git worktree add /tmp/fdm-mutants HEAD && /tmp/fdm-mutants/scripts/mutants.sh claim
#
# Examples:
#   scripts/mutants.sh claim
#   scripts/mutants.sh agent --file fdm-agent/core/src/agent/local.rs
#   scripts/mutants.sh agent --shard 3/8
#   scripts/mutants.sh agent --re 'Agent::schedule_restarts' --list
#
# Installs cargo-mutants when missing (`cargo install cargo-mutants --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

[ $# -ge 1 ] || { usage >&2; exit 64; }
set_name=$1
shift
case "$set_name" in
  claim | agent | all) ;;
  -h | --help) usage; exit 0 ;;
  *) echo "unknown set '$set_name' (claim, agent or all)" >&2; exit 64 ;;
esac

files=()
shard=""
list=0
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    -f | --file) files+=("$2"); shift 2 ;;
    --file=*) files+=("${1#--file=}"); shift ;;
    --shard) shard=$2; pass+=("$1" "$2"); shift 2 ;;
    --shard=*) shard=${1#--shard=}; pass+=("$1"); shift ;;
    --list) list=1; pass+=("$1"); shift ;;
    --) break ;;
    *) pass+=("$1"); shift ;;
  esac
done
# Whatever follows `--` goes to cargo test, after the set's own arguments.
extra_test_args=("$@")

command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked

run_set() {
  local name=$1 package default_glob timeout test_args
  case "$name" in
    claim)
      package=heartbeat-fs
      default_glob=heartbeat-fs/src/claim.rs
      timeout=${MUTANTS_TIMEOUT:-60}
      test_args=()
      ;;
    agent)
      package=fdm-core
      default_glob='fdm-agent/core/src/agent/**/*.rs'
      timeout=${MUTANTS_TIMEOUT:-60}
      # The core's own tests: the library's unit tests, not the binary's or integration tests.
      test_args=(--lib)
      ;;
  esac
  local globs=("${files[@]}")
  [ ${#globs[@]} -gt 0 ] || globs=("$default_glob")
  local file_args=()
  for g in "${globs[@]}"; do file_args+=(--file "$g"); done

  local out=${MUTANTS_OUT:-}
  if [ -z "$out" ]; then
    out="target/mutants/$name"
    if [ ${#files[@]} -gt 0 ]; then
      local tag
      tag=$(printf '%s\n' "${files[@]}" | sed 's|.*/||; s|\.rs$||; s|[^A-Za-z0-9_]|_|g' | paste -sd+ -)
      out="$out-$tag"
    fi
    [ -z "$shard" ] || out="$out-shard-${shard/\//-of-}"
  fi

  local cmd=(cargo mutants --no-config --package "$package" "${file_args[@]}"
    --timeout "$timeout" --build-timeout 900 --jobs "${MUTANTS_JOBS:-1}"
    --output "$out" "${pass[@]}" -- "${test_args[@]}" "${extra_test_args[@]}")
  echo "== mutants: $name -> $out/mutants.out"
  echo "   ${cmd[*]}"
  [ "$list" = 1 ] || mkdir -p "$out"
  "${cmd[@]}"
}

status=0
case "$set_name" in
  all)
    run_set claim || status=$?
    run_set agent || { s=$?; [ "$status" != 0 ] || status=$s; }
    ;;
  *) run_set "$set_name" || status=$? ;;
esac
exit "$status"
