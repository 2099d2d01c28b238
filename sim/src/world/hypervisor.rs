//! The simulated hypervisor: power-ons that take a while (and may fail), power-offs, pauses and
//! resumes, inventories.

use super::*;

/// A power-off or shutdown is reported done this long after it was asked for.
const POWER_OFF_US: Micros = 50_000;
/// The inventory at an agent's start is answered this long after it was asked for.
const INVENTORY_US: Micros = 10_000;
/// A pause or resume takes effect at once and is reported done this long after.
const PAUSE_US: Micros = 20_000;

impl World {
    pub(super) fn hypervisor_action(&mut self, i: usize, a: HypervisorAction) {
        let (h, inc) = (self.hosts[i].id, self.hosts[i].incarnation);
        match a {
            HypervisorAction::PowerOn { op, vm, .. } => {
                let at = self.now + self.params.power_on_us;
                self.push(
                    at,
                    Ev::PowerOnDone {
                        host: h,
                        inc,
                        op,
                        vm,
                    },
                );
            }
            HypervisorAction::PowerOff { op, vm, cause }
            | HypervisorAction::Shutdown { op, vm, cause, .. } => {
                if cause == StopCause::StaleCopy && self.is_outside_copy(h, vm) {
                    self.stale_copies_stopped += 1;
                }
                if self.hosts[i].running.remove(&vm).is_some() {
                    // A paused VM stops like a running one (the fence of a paused VM).
                    self.unpause(i, vm);
                    self.stops.insert(vm, (self.now, h, StopKind::Agent(cause)));
                    self.agent_stops.push((self.now, h, vm, cause));
                    self.log(Some(h), format!("{vm} stopped by agent ({cause:?})"));
                    use crate::invariants::no_needless_stop;
                    if let Some(detail) = no_needless_stop::at_agent_stop(self, h, vm, cause) {
                        self.violate(no_needless_stop::NAME, detail);
                    }
                    let still_wanted_off = self.config.vm(vm).is_some_and(|v| {
                        v.ha.power_request
                            .is_some_and(|r| r.power == heartbeat_fs::records::DesiredPower::Off)
                    });
                    if cause == StopCause::Operator && still_wanted_off {
                        // Off on purpose from now on, like a stop at the hypervisor (unless the
                        // operator has asked for a start since: an agent that learns of both
                        // late carries them out in order).
                        self.operator_stopped.insert(vm);
                    }
                    let protected = self.config.vm(vm).is_some_and(|v| v.protected);
                    let ha_caused = !matches!(cause, StopCause::Abort | StopCause::Operator);
                    if protected && ha_caused && self.where_runs(vm).is_empty() {
                        self.ha_down_since.entry(vm).or_insert(self.now);
                    }
                    if cause == StopCause::Fence {
                        self.check_fence(i, vm);
                    }
                }
                let e = HypervisorEvent::PowerOffResult {
                    op,
                    vm,
                    result: Ok(()),
                };
                self.push(
                    self.now + POWER_OFF_US,
                    Ev::Hv {
                        host: h,
                        inc,
                        event: e,
                    },
                );
            }
            HypervisorAction::Pause { op, vm } => {
                // Like the real drivers: a paused VM stays running (in `running`, for every
                // invariant), pausing it again succeeds, and a VM that does not run fails.
                let result = if self.hosts[i].running.contains_key(&vm) {
                    if !self.hosts[i].paused.contains_key(&vm) {
                        self.hosts[i].paused.insert(vm, self.now);
                        self.pauses += 1;
                        self.log(Some(h), format!("{vm} paused by agent"));
                    }
                    Ok(())
                } else {
                    Err(format!("{vm} is not running"))
                };
                let event = HypervisorEvent::PauseResult { op, vm, result };
                self.push(
                    self.now + PAUSE_US,
                    Ev::Hv {
                        host: h,
                        inc,
                        event,
                    },
                );
            }
            HypervisorAction::Resume { op, vm } => {
                // A resume never starts anything: a VM that does not run here fails.
                let result = if self.hosts[i].running.contains_key(&vm) {
                    if self.hosts[i].paused.contains_key(&vm) {
                        self.unpause(i, vm);
                        self.log(Some(h), format!("{vm} resumed by agent"));
                    }
                    Ok(())
                } else {
                    Err(format!("{vm} is not running"))
                };
                let event = HypervisorEvent::ResumeResult { op, vm, result };
                self.push(
                    self.now + PAUSE_US,
                    Ev::Hv {
                        host: h,
                        inc,
                        event,
                    },
                );
            }
            HypervisorAction::List { op } => {
                // Answered at delivery with what runs then.
                let e = HypervisorEvent::Inventory {
                    op,
                    running: Vec::new(),
                };
                self.push(
                    self.now + INVENTORY_US,
                    Ev::Hv {
                        host: h,
                        inc,
                        event: e,
                    },
                );
            }
        }
    }

    pub(super) fn power_on_done(&mut self, i: usize, op: u64, vm: VmId) {
        let h = self.hosts[i].id;
        let inc = self.hosts[i].incarnation;
        let fail = self.hosts[i].power_on_fails || self.rng.chance(self.params.power_on_fail);
        let result = if fail {
            Err("power-on failed".to_string())
        } else {
            use crate::invariants::{no_vm_on_two_hosts, operator_stop_respected};
            if let Some(detail) = no_vm_on_two_hosts::at_power_on(self, h, vm) {
                self.violate(no_vm_on_two_hosts::NAME, detail);
            }
            if let Some(detail) = operator_stop_respected::at_power_on(self, h, vm) {
                self.violate(operator_stop_respected::NAME, detail);
            }
            self.hosts[i].running.insert(vm, self.now);
            if let Some(&after) = self.crash_loops.get(&vm) {
                let started = self.now;
                self.push(
                    started + after,
                    Ev::Fault(Fault::CrashLoopTick { vm, started }),
                );
            }
            self.power_ons.push((self.now, h, vm));
            if let Some(since) = self.ha_down_since.remove(&vm) {
                self.ha_downtime_us += u128::from(self.now - since);
            }
            self.log(Some(h), format!("{vm} powered on"));
            Ok(())
        };
        // The VM's fate is settled by the hypervisor even if the agent is hung; the result waits.
        let event = HypervisorEvent::PowerOnResult { op, vm, result };
        self.push(
            self.now,
            Ev::Hv {
                host: h,
                inc,
                event,
            },
        );
    }
}
