#!/usr/bin/env bash
# docs/lab.md, run: a three-host fdm cluster on one machine (one network namespace per host, a
# bridge, two shared datastore directories, process-driver VMs, fdm-shim and fdmctl), then an agent
# killed alone, a host's power loss, an isolated host, a partition and HA paused, each checked.
#
#   sudo scripts/lab.sh                       # builds target/release first
#   sudo FDM_BIN=target/debug scripts/lab.sh  # binaries built already (what the test does)
#   sudo FDM_LAB_KEEP=1 scripts/lab.sh        # keep /tmp/fdm-lab (logs, datastores) afterwards
#
# How it stays in step with docs/lab.md: every line of every ```sh block of the guide is a line of
# this script (leading blanks aside), in the block's order; the script may append ` || fail ...` to
# one. The test fdm-agent/tests/lab.rs checks that without root
# (`every_command_of_the_guide_is_in_the_script`, naming each line it misses) and runs this script
# as root (`the_lab_runs`). What the script adds to the guide's lines is waiting and checking only
# (`wait_for`, `expect_*`, `measured`, the `|| fail`s) and the clean-up trap. So a command changed
# in the guide must be changed here too, and the other way round.
#
# Needs root, `ip netns`, `nft`, `ping`, `jq` and `flock` (scripts/install-test-deps.sh installs
# them); without them it says why and exits 77 (skipped). It creates /tmp/fdm-lab, the network
# namespaces fdmlab-sw and fdmlab-h1..3 (not the multi-host suite's f<pid><n>-* names) with the
# processes in them, and fdm-shim on 127.0.0.1:7490; all removed on exit (also after a failure or
# Ctrl-C) and before it starts, if an interrupted run left them. About 75 s.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  echo "lab: skipped: $*"
  exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
ip netns list >/dev/null 2>&1 || skip "\`ip netns\` unavailable (iproute2)"
for tool in nft ping jq flock; do
  command -v "$tool" >/dev/null 2>&1 || skip "\`$tool\` missing: run scripts/install-test-deps.sh"
done
# One lab at a time on a machine: a second one would tear the first one's namespaces down.
exec 9>/run/fdm-lab.lock
flock -n 9 || { echo "lab: FAILED: another scripts/lab.sh runs (/run/fdm-lab.lock)" >&2; exit 1; }

# ------------------------------------------------------------------ checking helpers
T0=$(date +%s.%N)
elapsed() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.2f", a - b }'; }
step() { printf '\n=== [%6.1f s] %s\n' "$(elapsed "$T0")" "$*"; }
fail() {
  echo "lab: FAILED: $*" >&2
  echo "--- placement: $(placement)" >&2
  echo "--- fdmctl status" >&2
  fdmctl status >&2 || true
  for h in 1 2 3; do
    echo "--- fdm-agent status of host$h" >&2
    fdm-agent status --socket "$LAB/h$h/agent.sock" >&2 || true
    echo "--- last lines of $LAB/h$h/agent.log" >&2
    tail -n 20 "$LAB/h$h/agent.log" >&2 || true
  done
  exit 1
}
# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails after SECONDS.
wait_for() {
  local limit=$1 what=$2 start
  shift 2
  start=$(date +%s.%N)
  until "$@" >/dev/null 2>&1; do
    awk -v e="$(elapsed "$start")" -v l="$limit" 'BEGIN { exit !(e > l) }' && fail "$what: not within $limit s"
    sleep 0.2
  done
  printf '    ok after %s s: %s\n' "$(elapsed "$start")" "$what"
}
measured() { printf 'MEASURED lab %s: %ss\n' "$1" "$(elapsed "$2")"; }

# What the shim shows, through fdmctl's JSON (the API's), checked with a jq filter.
state_is() { fdmctl --output json status | jq -e "$1" >/dev/null; }
# The master's verdict on host $1 is $2 (compared in lower case).
verdict_is() { state_is "[.hosts[] | select(.id == $1) | .verdict // \"none\" | ascii_downcase] == [\"$2\"]"; }
all_alive() { state_is '[.hosts[] | select((.verdict // "" | ascii_downcase) == "alive")] | length == 3'; }
# What host $1's own agent says its role is, from `fdm-agent status --json` ("slave" matches
# "slave of host-1").
role_is() { fdm-agent status --json --socket "$LAB/h$1/agent.sock" | jq -e ".role | startswith(\"$2\")" >/dev/null; }
one_master() {
  local n=0 h
  for h in 1 2 3; do if role_is "$h" master; then n=$((n + 1)); fi; done
  [ "$n" = 1 ]
}

# VMs whose process runs on host $1, from the process driver's pid files and /proc (what the
# hypervisor says, not what fdm reports).
vms_on() {
  local f pid st
  for f in "$LAB/h$1/state/vms"/vm-*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || continue
    if [ -n "$st" ] && [ "$st" != Z ]; then basename "$f" .pid | sed 's/^vm-//'; fi
  done | sort -n | tr '\n' ' ' | sed 's/ $//'
}
placement() { for h in 1 2 3; do printf 'host%s: [%s]  ' "$h" "$(vms_on "$h")"; done; echo; }
# fdmctl (the master's report, through the shim) shows every VM running where it runs.
shim_agrees() {
  [ "$(fdmctl --output json status | jq -r '[range(1; 4) as $h | "host\($h): [" + ([.vms[] | select(.host == $h and (.state // "" | ascii_downcase) == "running") | .id] | sort | map(tostring) | join(" ")) + "]  "] | join("")')" = "$(placement)" ]
}
# Every VM runs on exactly one host, and host $1 (if given) runs exactly the VMs "$2".
each_vm_once() {
  local all
  all=$(for h in 1 2 3; do vms_on "$h"; echo; done | tr ' ' '\n' | grep -v '^$' | sort -n | tr '\n' ' ')
  [ "$all" = "1 2 3 4 5 6 " ] || return 1
  [ -z "${1:-}" ] || [ "$(vms_on "$1")" = "${2:-}" ]
}
# Starts recorded by the VMs themselves in $LAB/starts.log; STARTS is how many the lab expects.
STARTS=0
starts() { wc -l <"$LAB/starts.log" | tr -d ' '; }
expect_starts() { [ "$(starts)" = "$STARTS" ] || fail "$(starts) VM starts recorded, $STARTS expected: $(cat "$LAB/starts.log")"; }
expect_no_start_for() {
  sleep "$1"
  expect_starts
  printf '    ok: no VM started in %s s\n' "$1"
}
# The status page answers 200 (bash's /dev/tcp: no curl needed).
page_status() {
  (
    exec 3<>/dev/tcp/127.0.0.1/7490
    printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    head -n 1 <&3
  ) | grep -q ' 200 '
}
words() { echo "$1" | wc -w | tr -d ' '; }

# ------------------------------------------------------------------ clean up (the guide's last block)
LAB=/tmp/fdm-lab
cleanup() {
  set +e
  disown -a
  if [ "${1:-}" = start ]; then
    # Pid files of an earlier run count only if the pid is still that program (pids are reused).
    for f in "$LAB/shim.pid" "$LAB/follow.pid"; do
      grep -qsxE 'fdm-shim|fdmctl' "/proc/$(cat "$f" 2>/dev/null)/comm" || rm -f "$f"
    done
  fi
for h in 1 2 3; do ip netns pids fdmlab-h$h | xargs -r kill -9; done
kill "$(cat "$LAB/shim.pid")" "$(cat "$LAB/follow.pid")"
for ns in fdmlab-h1 fdmlab-h2 fdmlab-h3 fdmlab-sw; do ip netns del $ns; done
  if [ -n "${FDM_LAB_KEEP:-}" ] && [ "${1:-}" = exit ]; then
    echo "lab: kept $LAB (agent logs in $LAB/h*/agent.log)"
    return
  fi
rm -rf "$LAB"
}
cleanup start 2>/dev/null
trap 'cleanup exit' EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ 1. binaries
step "binaries"
if [ -z "${FDM_BIN:-}" ]; then
cargo build --release -p fdm-agent -p vcenter-shim
fi
export PATH="${FDM_BIN:-$PWD/target/release}:$PATH"
export LAB=/tmp/fdm-lab
command -v fdm-agent fdm-shim fdmctl

# ------------------------------------------------------------------ 2. network
step "network: a switch namespace with a bridge, one namespace per host"
ip netns add fdmlab-sw
ip -n fdmlab-sw link add br0 type bridge
ip -n fdmlab-sw addr add 10.78.0.254/24 dev br0
ip -n fdmlab-sw link set br0 up
for h in 1 2 3; do
  ip netns add fdmlab-h$h
  ip -n fdmlab-h$h link set lo up
  ip link add fdmlab-p$h netns fdmlab-sw type veth peer name eth0 netns fdmlab-h$h
  ip -n fdmlab-sw link set fdmlab-p$h master br0 up
  ip -n fdmlab-h$h addr add 10.78.0.$h/24 dev eth0
  ip -n fdmlab-h$h link set eth0 up
done
ip netns exec fdmlab-h1 ping -c 1 -W 2 10.78.0.3 || fail "host1 does not reach host3"
ip netns exec fdmlab-h2 ping -c 1 -W 2 10.78.0.254 >/dev/null || fail "host2 does not reach the gateway"
if ping -c 1 -W 1 10.78.0.1 >/dev/null 2>&1; then fail "10.78.0.1 answers outside the lab's namespaces"; fi

# ------------------------------------------------------------------ 3. files
step "datastores, cluster secret, shim token"
mkdir -p "$LAB/ds1" "$LAB/ds2"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$LAB/secret"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$LAB/shim.token"
chmod 600 "$LAB/secret" "$LAB/shim.token"

# ------------------------------------------------------------------ 4. shim
step "fdm-shim"
fdm-shim --token-file "$LAB/shim.token" --db "$LAB/shim.db" --listen 127.0.0.1:7490 --cluster-id 78 > "$LAB/shim.log" 2>&1 &
echo $! > "$LAB/shim.pid"
export FDM_URL=http://127.0.0.1:7490 FDM_TOKEN_FILE="$LAB/shim.token"
wait_for 10 "fdm-shim listening" grep -q '^fdm-shim listening on' "$LAB/shim.log"
grep '^fdm-shim listening on' "$LAB/shim.log"

# ------------------------------------------------------------------ 5. inventory
step "inventory: hosts, datastores, HA settings, VMs"
for h in 1 2 3; do
  fdmctl host add --id $h --name host$h --address 10.78.0.$h:7400 --cpu-mhz 8000 --memory-mb 8192
done
fdmctl datastore add --id 1 --name ds1 --mount 1="$LAB/ds1" --mount 2="$LAB/ds1" --mount 3="$LAB/ds1"
fdmctl datastore add --id 2 --name ds2 --mount 1="$LAB/ds2" --mount 2="$LAB/ds2" --mount 3="$LAB/ds2"
fdmctl config set isolation_addresses '["10.78.0.254"]'
fdmctl config set admission '{"HostFailuresTolerated":1}'
cat > "$LAB/vm.sh" <<'EOF'
echo "$(date +%T.%N) vm$FDM_VM started on host$FDM_HOST" >> /tmp/fdm-lab/starts.log
exec sleep infinity
EOF
for v in 1 2 3 4 5 6; do
  fdmctl vm add --id $v --name vm$v --home $((1 + v % 2)) --cpu-mhz 500 --memory-mb 512 --definition @"$LAB/vm.sh"
done
fdmctl vm set 5 --isolation-response LeaveRunning
touch "$LAB/starts.log"
fdmctl vm list
fdmctl admission
fdmctl config show
ls "$LAB/ds1/.fdm"

# ------------------------------------------------------------------ 6. agents
step "each host's agent.toml, checked"
for h in 1 2 3; do
mkdir -p "$LAB/h$h"
cat > "$LAB/h$h/agent.toml" <<EOF
host_id = $h
cluster_id = 78
secret_file = "$LAB/secret"
bind = "10.78.0.$h:7400"
state_dir = "$LAB/h$h/state"
status_socket = "$LAB/h$h/agent.sock"
probe = "icmp"
watchdog = "none"

[driver]
kind = "process"

[[datastores]]
id = 1
path = "$LAB/ds1"
[[datastores]]
id = 2
path = "$LAB/ds2"
EOF
fdm-agent check-config --config "$LAB/h$h/agent.toml"
done

step "agents, each in its host's namespace"
start_agent() {
  ip netns exec "fdmlab-h$1" fdm-agent run --config "$LAB/h$1/agent.toml" >> "$LAB/h$1/agent.log" 2>&1 &
  echo $! > "$LAB/h$1/agent.pid"
}
T=$(date +%s.%N)
for h in 1 2 3; do start_agent $h; done
fdmctl events --follow > "$LAB/events.log" 2>&1 &
echo $! > "$LAB/follow.pid"
disown -a # (so that bash prints no "Killed" notices when hosts lose power below)
wait_for 30 "one master, every host alive" all_alive
wait_for 30 "every VM running, once" each_vm_once
STARTS=6
measured "agents started -> every VM running" "$T"
wait_for 10 "fdmctl shows every VM where it runs" shim_agrees
one_master || fail "not exactly one agent is master"
expect_starts
fdmctl status
fdm-agent status --socket "$LAB/h1/agent.sock"
echo "placement, from the pid files: $(placement)"
echo "http://127.0.0.1:7490/#token=$(cat "$LAB/shim.token")"
page_status || fail "GET / is not 200"

# ------------------------------------------------------------------ 7. an agent killed alone
step "not a power loss: host3's agent killed alone"
LOST=$(vms_on 3)
kill -9 "$(cat "$LAB/h3/agent.pid")"
T=$(date +%s.%N)
wait_for 15 "host3 unreachable: its VMs run, it answers pings" verdict_is 3 unreachable
measured "agent of host3 killed -> unreachable" "$T"
expect_no_start_for 6
verdict_is 3 unreachable || fail "host3 is no longer unreachable"
[ "$(vms_on 3)" = "$LOST" ] || fail "host3's VMs changed: $(placement)"
fdmctl status
start_agent 3
disown -a
wait_for 20 "host3 alive again" verdict_is 3 alive
[ "$(vms_on 3)" = "$LOST" ] || fail "host3's VMs changed: $(placement)"
grep -F 'event="adopted"' "$LAB/h3/agent.log" || fail "host3's agent adopted nothing"
expect_starts

# ------------------------------------------------------------------ 8. power loss
step "power loss of host3"
power_off() {
  ip -n "fdmlab-h$1" link set eth0 down
  ip netns pids "fdmlab-h$1" | xargs -r kill -9
}
power_on() {
  ip -n "fdmlab-h$1" link set eth0 up
  start_agent "$1"
}
LOST=$(vms_on 3)
echo "host3 runs VMs $LOST"
[ -n "$LOST" ] || fail "host3 runs no VM to lose"
SINCE=$(fdmctl --output json events | jq -s 'last.id // 0')
power_off 3
T=$(date +%s.%N)
wait_for 20 "host3's VMs running on host1 and host2, each once" each_vm_once 3 ""
measured "host3 power loss -> its VMs running elsewhere" "$T"
STARTS=$((STARTS + $(words "$LOST")))
wait_for 10 "fdmctl: host3 dead" verdict_is 3 dead
measured "host3 power loss -> fdmctl shows it dead" "$T"
wait_for 10 "fdmctl shows every VM where it runs" shim_agrees
expect_starts
fdmctl status
fdmctl events --since "$SINCE"
power_on 3
disown -a
wait_for 20 "host3 back, alive, running nothing" verdict_is 3 alive
[ -z "$(vms_on 3)" ] || fail "host3 came back with VMs: $(placement)"

# ------------------------------------------------------------------ 9. isolation
step "isolation of host2"
LOST=$(vms_on 2)
echo "host2 runs VMs $LOST"
[[ " $LOST " == *" 5 "* ]] || fail "vm5 (LeaveRunning) is not on host2: $(placement)"
SINCE=$(fdmctl --output json events | jq -s 'last.id // 0')
ip -n fdmlab-sw link set fdmlab-p2 down
T=$(date +%s.%N)
wait_for 15 "host2's agent: isolated" role_is 2 isolated
measured "host2 link down -> host2 isolated" "$T"
wait_for 20 "host2's VMs but vm5 powered off there and running elsewhere" each_vm_once 2 5
measured "host2 link down -> its VMs running elsewhere" "$T"
STARTS=$((STARTS + $(words "$LOST") - 1))
wait_for 10 "fdmctl: host2 isolated" verdict_is 2 isolated
wait_for 10 "fdmctl shows every VM where it runs" shim_agrees
fdm-agent status --socket "$LAB/h2/agent.sock"
fdmctl status
fdmctl events --since "$SINCE"
ip -n fdmlab-sw link set fdmlab-p2 up
wait_for 20 "host2 back, alive" verdict_is 2 alive
wait_for 10 "host2's agent: slave" role_is 2 slave
wait_for 10 "fdmctl shows every VM where it runs" shim_agrees
each_vm_once 2 5 || fail "VMs changed after host2 returned: $(placement)"
expect_starts

# ------------------------------------------------------------------ 10. partition
step "partition: host1 and host2 | host3"
ip netns exec fdmlab-sw nft add table bridge lab
ip netns exec fdmlab-sw nft add chain bridge lab cut '{ type filter hook forward priority 0; }'
ip netns exec fdmlab-sw nft add rule bridge lab cut iifname '{ fdmlab-p1, fdmlab-p2 }' oifname fdmlab-p3 drop
ip netns exec fdmlab-sw nft add rule bridge lab cut iifname fdmlab-p3 oifname '{ fdmlab-p1, fdmlab-p2 }' drop
T=$(date +%s.%N)
wait_for 20 "host3's agent: master of its side" role_is 3 master
measured "partition -> host3 master of its side" "$T"
wait_for 10 "fdmctl: host3 partitioned" verdict_is 3 partitioned
measured "partition -> fdmctl shows host3 partitioned" "$T"
role_is 1 master || fail "host1 is not master of its side"
expect_no_start_for 8
each_vm_once 2 5 || fail "a VM moved during the partition: $(placement)"
fdm-agent status --socket "$LAB/h3/agent.sock"
for _ in 1 2 3 4 5 6; do fdmctl --output json status | jq -c '{master: .report.master, verdicts: [.hosts[].verdict]}'; sleep 0.5; done
ip netns exec fdmlab-sw nft delete table bridge lab
T=$(date +%s.%N)
wait_for 20 "one master again" one_master
measured "heal -> one master" "$T"
wait_for 10 "fdmctl: every host alive" all_alive
wait_for 10 "fdmctl shows every VM where it runs" shim_agrees
fdmctl status
expect_starts

# ------------------------------------------------------------------ 11. HA paused
step "HA paused, then a host lost, then HA resumed"
fdmctl ha pause
T=$(date +%s.%N)
wait_for 15 "the master reports HA paused" state_is '.report.ha_paused'
measured "fdmctl ha pause -> the master paused" "$T"
LOST=$(vms_on 3)
echo "host3 runs VMs $LOST"
[ -n "$LOST" ] || fail "host3 runs no VM to lose"
power_off 3
wait_for 20 "fdmctl: host3 dead" verdict_is 3 dead
expect_no_start_for 6
fdmctl status
grep -F 'event="action-suppressed"' "$LAB/h1/agent.log" || fail "the master suppressed no action"
fdmctl ha resume
T=$(date +%s.%N)
wait_for 20 "host3's VMs running elsewhere" each_vm_once 3 ""
measured "fdmctl ha resume -> host3's VMs running elsewhere" "$T"
STARTS=$((STARTS + $(words "$LOST")))
wait_for 10 "fdmctl: HA no longer paused" state_is '.report.ha_paused | not'
wait_for 10 "fdmctl shows every VM where it runs" shim_agrees
fdmctl status
cat "$LAB/starts.log"
grep -i dead "$LAB/events.log" || fail "fdmctl events --follow saw no dead verdict"
expect_starts

step "done in $(elapsed "$T0") s; cleaning up"
