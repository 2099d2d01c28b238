//! Switches that each remove one safety step of `docs/safety.md`, so that the simulator can show the
//! step is load-bearing: with the step removed, a bounded sweep finds the double run or the lost VM
//! it prevents. Compiled only with the `fault-knobs` feature, which only the simulator and tests
//! enable; the agent as built for release (`cargo build --release -p fdm-agent`) has none
//! (`fdm-agent/tests/no_knobs.rs` checks the feature set, `fdm-agent --version` says it).

use std::fmt;

/// One step of the safety argument (`docs/safety.md`), as a knob removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SafetyStep {
    /// Master: restart a dead host's VMs only after its datastore and network leases expired.
    LeaseWait,
    /// Master: act on a new claim only after every lease an earlier holder granted expired and a
    /// renewal confirmed the compare-and-write.
    SettleWait,
    /// Master: send a power-on command only once its intent is durable on the datastore.
    WriteAheadIntent,
    /// Target: power on only after the datastore confirms the command's claim epoch and intent.
    TargetIntentCheck,
    /// Target: write the VM into its power-on list (take its lease) before starting it.
    PowerOnListEntry,
    /// Master: restart only the VMs an isolated host recorded as powered off by its response.
    IsolationRecord,
    /// Host: stop the VMs whose leases both lapsed.
    SelfFence,
    /// Master: stop acting on a datastore the moment its claim is lost.
    DropOnClaimLoss,
    /// Master: a new target only after the previous one failed or died.
    OneTarget,
    /// Isolated host: apply a VM's isolation response only while a master holds the claim of the
    /// VM's home datastore (someone will restart it). An availability step: without it a
    /// whole-network outage stops VMs nobody can restart.
    IsolationOwnerCheck,
    /// Master: while every configured host follows it, its acknowledgements cover every datastore,
    /// so a datastore lost by everyone stops no VM. An availability step: without it a storage
    /// outage longer than the leases fences every VM on the datastore.
    OutageHold,
    /// Master: cover every datastore only while every configured host echoes a recent round
    /// (the hold's proof that no other master can take a claim before its leases end).
    HoldMembership,
    /// Master: restart a dead host's VM only once the host's lease lapsed on the VM's own
    /// datastore (the dead verdict may rest on other datastores).
    HomeLeaseCheck,
    /// Agent start: a VM found running is checked against its home datastore's protected list
    /// before it is adopted (a stale copy is stopped).
    StaleCopyCheck,
    /// Master: a VM reported running on two hosts keeps one copy and the other is stopped.
    DuplicateResolution,
}

impl SafetyStep {
    pub const ALL: [SafetyStep; 15] = [
        SafetyStep::LeaseWait,
        SafetyStep::SettleWait,
        SafetyStep::WriteAheadIntent,
        SafetyStep::TargetIntentCheck,
        SafetyStep::PowerOnListEntry,
        SafetyStep::IsolationRecord,
        SafetyStep::SelfFence,
        SafetyStep::DropOnClaimLoss,
        SafetyStep::OneTarget,
        SafetyStep::IsolationOwnerCheck,
        SafetyStep::OutageHold,
        SafetyStep::HoldMembership,
        SafetyStep::HomeLeaseCheck,
        SafetyStep::StaleCopyCheck,
        SafetyStep::DuplicateResolution,
    ];

    /// The knob's name on the simulator's command line (`--knob`).
    pub fn knob(self) -> &'static str {
        match self {
            SafetyStep::LeaseWait => "skip-lease-wait",
            SafetyStep::SettleWait => "skip-settle-wait",
            SafetyStep::WriteAheadIntent => "skip-write-ahead",
            SafetyStep::TargetIntentCheck => "skip-intent-check",
            SafetyStep::PowerOnListEntry => "skip-power-on-list",
            SafetyStep::IsolationRecord => "skip-isolation-record",
            SafetyStep::SelfFence => "skip-self-fence",
            SafetyStep::DropOnClaimLoss => "ignore-claim-loss",
            SafetyStep::OneTarget => "skip-one-target",
            SafetyStep::IsolationOwnerCheck => "skip-isolation-owner-check",
            SafetyStep::OutageHold => "skip-outage-hold",
            SafetyStep::HoldMembership => "hold-without-every-host",
            SafetyStep::HomeLeaseCheck => "skip-home-lease-check",
            SafetyStep::StaleCopyCheck => "skip-stale-copy-check",
            SafetyStep::DuplicateResolution => "skip-duplicate-resolution",
        }
    }

    pub fn from_knob(name: &str) -> Option<SafetyStep> {
        SafetyStep::ALL.into_iter().find(|s| s.knob() == name)
    }
}

impl fmt::Display for SafetyStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.knob())
    }
}

/// The safety steps removed for a run; none by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultKnobs(u32);

impl FaultKnobs {
    pub fn removing(steps: &[SafetyStep]) -> Self {
        let mut k = FaultKnobs::default();
        for &s in steps {
            k.remove(s);
        }
        k
    }
    pub fn remove(&mut self, step: SafetyStep) {
        self.0 |= 1 << step as u32;
    }
    pub fn removes(&self, step: SafetyStep) -> bool {
        self.0 & (1 << step as u32) != 0
    }
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    /// The removed steps, in `SafetyStep::ALL` order.
    pub fn steps(&self) -> Vec<SafetyStep> {
        SafetyStep::ALL
            .into_iter()
            .filter(|s| self.removes(*s))
            .collect()
    }
}
