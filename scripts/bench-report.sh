#!/usr/bin/env bash
# Runs every benchmark of fdm-benches and joins their sections into target/bench-report/REPORT.md
# (the source of the figures in docs/performance.md). About 19 minutes on the 2-core CI machine (the flood ramps 7 of them);
# as root it also measures the veth path between two network namespaces.
#
#   scripts/bench-report.sh
#   FDM_DETECT_SEEDS=100 FOCA_SEEDS=50 scripts/bench-report.sh   # a quicker, rougher run
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-report
rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)
cargo bench -p fdm-benches 2>&1 | tee "$out/bench-output.txt"
{
  echo "# fdm benchmark report"
  echo
  echo "Generated $(date -u +%Y-%m-%dT%H:%MZ) by scripts/bench-report.sh in $(( $(date +%s) - start )) s."
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo),"\
       "$(uname -m), Linux $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)."
  echo
  for f in net_latency ds_latency detection foca_peer scale flood; do
    if [ -f "$out/$f.md" ]; then
      cat "$out/$f.md"
      echo
    fi
  done
} > "$out/REPORT.md"
echo "report: $out/REPORT.md"
