#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing (apt packages for
# network namespaces, libvirt and Chromium; only as root, otherwise the multi-host tests and the
# status-page browser test skip and say why). Screenshots the tests take are listed at the end.
#
#   scripts/test.sh            # everything CI runs
#   FDM_QUICK=1 scripts/test.sh  # skip the installs and the bounded sweep
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

if [ -z "${FDM_QUICK:-}" ] && [ -x scripts/install-test-deps.sh ]; then
  step "test dependencies"
  if [ "$(id -u)" = 0 ]; then
    scripts/install-test-deps.sh
  else
    echo "not root: skipping apt installs; multi-host tests will skip"
  fi
fi

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' target/test-output.txt | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
if [ "$status" != 0 ]; then
  echo "cargo test failed"
  exit "$status"
fi

if [ -z "${FDM_QUICK:-}" ] && [ -f sim/src/main.rs ]; then
  step "bounded simulation sweep"
  cargo run --release -q -p fdm-sim -- sweep --hosts 16 --seeds "${FDM_SWEEP_SEEDS:-300}"
  for profile in stale-commands claim-handover; do
    cargo run --release -q -p fdm-sim -- sweep --hosts 8 --seeds 100 --profile "$profile"
  done

  step "every safety step is load-bearing (release: hundreds of simulated minutes)"
  cargo test --release -q -p fdm-sim --test safety_steps 2>&1 | tee -a target/test-output.txt
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "safety step tests failed"; exit 1; }
fi

if [ -z "${FDM_QUICK:-}" ]; then
  # Release agents on loopback; fails if any verdict or role changes under the flood.
  step "forged-datagram flood at a release master (50 000/s for 20 s: no verdict may change)"
  cargo bench -q -p fdm-benches --bench flood -- --check
fi

artefacts="${CARGO_TARGET_DIR:-target}/test-artefacts"
if compgen -G "$artefacts/*" >/dev/null; then
  echo
  echo "test artefacts (screenshots of the status page, ...):"
  ls -1 "$artefacts"/*
fi

echo
echo "${passed} passed, ${failed} failed"
