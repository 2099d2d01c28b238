//! A whole agent driven by arbitrary inputs: datagrams (raw bytes, and messages the fuzzer decodes
//! from its bytes, sealed with the cluster key so that they pass the MAC and reach the core's
//! handlers), timer expiries, hypervisor events, isolation and probe answers and operator commands.
//! Its datastore requests are answered by the in-memory datastore, so that it becomes master of its
//! three-host cluster and the master's handlers are reached too. Any panic is a finding: no input
//! may crash an agent.
#![no_main]
use fdm_agent::core::messages::Message;
use fdm_agent::core::{
    Agent, AgentSettings, HypervisorAction, HypervisorEvent, OperatorCommand, Output, Time,
    Timings, VmRunState,
};
use fdm_agent::wire::{Header, Key, seal};
use heartbeat_fs::mem::{Caller, MemDatastore};
use heartbeat_fs::ops::DsCompletion;
use heartbeat_fs::records::*;
use heartbeat_fs::{ClusterId, DatastoreId, HostId, VmId};
use libfuzzer_sys::fuzz_target;

const CLUSTER: ClusterId = ClusterId(0x00f0_0d00);
const SECRET: [u8; 32] = [0x42; 32];
const ME: HostId = HostId(1);
const INCARNATION: u64 = 7;

fn config() -> ClusterConfig {
    let vm = |i: u32| {
        VmConfig::new(VmId(i), DatastoreId(1)).with_isolation_response(if i % 2 == 0 {
                IsolationResponse::PowerOff
            } else {
                IsolationResponse::LeaveRunning
            })
    };
    ClusterConfig::new(CLUSTER)
        .with_hosts((1..=3).map(HostId).map(HostConfig::simulated))
        .with_shared_datastores(["/ds1"])
        .with_vms((1..=4).map(vm))
}

/// Carry the agent's outputs out: datastore requests to the in-memory datastore, hypervisor actions
/// answered as done; transmits are dropped (the other hosts are silent unless the fuzzer speaks).
fn pump(agent: &mut Agent, ds: &mut MemDatastore, now: Time, fail_hypervisor: bool) {
    let caller = Caller {
        host: ME,
        incarnation: INCARNATION,
    };
    // Bounded: an agent that produced outputs forever would be a finding of its own (a hang).
    for _ in 0..10_000 {
        let Some(out) = agent.poll_output() else {
            return;
        };
        match out {
            Output::Datastore(r) => {
                let result = ds.execute(caller, r.op);
                agent.handle_datastore(
                    now,
                    DsCompletion {
                        id: r.id,
                        datastore: r.datastore,
                        result,
                    },
                );
            }
            Output::Hypervisor(a) => {
                let result = if fail_hypervisor {
                    Err("the hypervisor failed".to_string())
                } else {
                    Ok(())
                };
                let ev = match a {
                    HypervisorAction::PowerOn { op, vm, .. } => {
                        HypervisorEvent::PowerOnResult { op, vm, result }
                    }
                    HypervisorAction::PowerOff { op, vm, .. }
                    | HypervisorAction::Shutdown { op, vm, .. } => {
                        HypervisorEvent::PowerOffResult { op, vm, result }
                    }
                    HypervisorAction::List { op } => HypervisorEvent::Inventory {
                        op,
                        running: vec![],
                    },
                    HypervisorAction::Pause { op, vm } => {
                        HypervisorEvent::PauseResult { op, vm, result }
                    }
                    HypervisorAction::Resume { op, vm } => {
                        HypervisorEvent::ResumeResult { op, vm, result }
                    }
                };
                agent.handle_hypervisor(now, ev);
            }
            Output::CheckIsolation => agent.handle_isolation_check(now, true),
            Output::Probe { host } => agent.handle_probe(now, host, false),
            _ => {}
        }
    }
    panic!("the agent produced outputs without end");
}

/// Reads the fuzzer's bytes front to back; past the end, zeros.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fuzz_target!(|data: &[u8]| {
    let cfg = config();
    let settings = AgentSettings::new(
        ME,
        INCARNATION,
        CLUSTER,
        SECRET,
        vec![DatastoreId(1)],
        Timings::default(),
    );
    let key = Key::new(SECRET);
    let mut ds = MemDatastore::new(DatastoreId(1));
    ds.config = Some(cfg.clone());
    let mut now = Time::from_millis(1);
    let mut agent = Agent::new(settings, Some(cfg), now);
    // Ten silent seconds: the agent elects itself and claims the datastore, so that what follows
    // reaches a master.
    for _ in 0..200 {
        pump(&mut agent, &mut ds, now, false);
        now = agent
            .poll_timeout()
            .unwrap_or(now)
            .max(now + std::time::Duration::from_millis(50));
        agent.handle_timeout(now);
    }
    let mut input = Bytes(data);
    let mut sequence = 0u64;
    let mut fail_hypervisor = false;
    while !input.0.is_empty() {
        let op = input.u8();
        match op % 8 {
            0 => {
                let n = usize::from(input.u16() % 1400);
                agent.handle_datagram(now, input.take(n));
            }
            1 | 2 => {
                // A message under a valid MAC from a cluster host (or an unknown one), as a host
                // that knows the key would send it.
                let sender = HostId(u32::from(input.u8() % 5));
                let incarnation = u64::from(input.u8() % 4);
                let recipient_incarnation = if input.u8() % 2 == 0 { 0 } else { INCARNATION };
                sequence = sequence.wrapping_add(u64::from(input.u8()));
                let n = usize::from(input.u16() % 1200);
                let body = input.take(n);
                if let Ok(msg) = postcard::from_bytes::<Message>(body) {
                    let header = Header {
                        kind: msg.kind(),
                        cluster: CLUSTER,
                        sender,
                        incarnation,
                        recipient: ME,
                        recipient_incarnation,
                        sequence,
                    };
                    if let Ok(bytes) = seal(&key, &header, body) {
                        agent.handle_datagram(now, &bytes);
                    }
                }
            }
            3 => {
                // Time passes: up to about 65 s in 1 ms steps, the timers fire.
                now = now + std::time::Duration::from_millis(u64::from(input.u16()));
                if agent.poll_timeout().is_some_and(|t| t <= now) {
                    agent.handle_timeout(now);
                }
            }
            4 => {
                let vm = VmId(u32::from(input.u8() % 6));
                let ev = match input.u8() % 3 {
                    0 => HypervisorEvent::VmStarted { vm },
                    1 => HypervisorEvent::VmStopped {
                        vm,
                        state: VmRunState::Crashed,
                    },
                    _ => HypervisorEvent::VmStopped {
                        vm,
                        state: VmRunState::StoppedByUser,
                    },
                };
                agent.handle_hypervisor(now, ev);
            }
            5 => {
                let answer = input.u8();
                agent.handle_isolation_check(now, answer % 2 == 0);
                agent.handle_probe(now, HostId(u32::from(answer % 5)), answer % 3 == 0);
            }
            6 => {
                let command = match input.u8() % 3 {
                    0 => OperatorCommand::Maintenance(true),
                    1 => OperatorCommand::Maintenance(false),
                    _ => OperatorCommand::Shutdown,
                };
                agent.handle_command(now, command);
            }
            _ => fail_hypervisor = !fail_hypervisor,
        }
        pump(&mut agent, &mut ds, now, fail_hypervisor);
        let _ = agent.status(now);
    }
});
