//! The file datastore (what production runs) and the in-memory one (what the simulator proves safe)
//! answer every claim-gated operation alike. Random sequences of operations from several callers
//! (racing acquirers, stale expectations, lapsed steals, renewals and releases of lost claims,
//! protected-list writes and intent checks under old epochs, torn records, processes that die with
//! the lock) run against both; every reply and the resulting state (claim record, protected list,
//! who holds the lock) must be identical. A backend with a deliberately changed rule must be caught.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use heartbeat_fs::codec;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::mem::{Caller, MemDatastore};
use heartbeat_fs::ops::{ClaimWrite, DsError, DsOp, DsReply};
use heartbeat_fs::records::{
    DatastoreClaim, DesiredPower, ProtectedVm, ProtectedVmList, RestartState, VmHaSettings,
};
use heartbeat_fs::{ClusterId, DatastoreId, Epoch, HostId, VmId};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use std::os::unix::fs::FileExt;
use std::path::Path;

const CALLERS: usize = 3;
const CLUSTER: ClusterId = ClusterId(9);
const DS: DatastoreId = DatastoreId(1);
const VM: VmId = VmId(5);

/// One datastore as several agent processes see it.
trait Backend {
    fn exec(&mut self, caller: usize, op: DsOp) -> Result<DsReply, DsError>;
    /// The caller's process died (its lock goes) and its agent started again.
    fn crash(&mut self, caller: usize);
    fn tear_claim(&mut self);
    fn tear_protected(&mut self);
    /// Per caller: holds the claim lock.
    fn locks(&self) -> Vec<bool>;
}

struct Mem {
    ds: MemDatastore,
    incarnations: [u64; CALLERS],
}

impl Mem {
    fn new() -> Self {
        Mem {
            ds: MemDatastore::new(DS),
            incarnations: [1; CALLERS],
        }
    }
    fn caller(&self, i: usize) -> Caller {
        Caller {
            host: host(i),
            incarnation: self.incarnations[i],
        }
    }
}

impl Backend for Mem {
    fn exec(&mut self, caller: usize, op: DsOp) -> Result<DsReply, DsError> {
        let c = self.caller(caller);
        self.ds.execute(c, op)
    }
    fn crash(&mut self, caller: usize) {
        let c = self.caller(caller);
        self.ds.release_locks_of(c);
        self.incarnations[caller] += 1;
    }
    fn tear_claim(&mut self) {
        self.ds.tear_claim();
    }
    fn tear_protected(&mut self) {
        self.ds.tear_protected();
    }
    fn locks(&self) -> Vec<bool> {
        (0..CALLERS)
            .map(|i| self.ds.lock == Some(self.caller(i)))
            .collect()
    }
}

struct Files {
    dir: tempfile::TempDir,
    handles: Vec<DatastoreDir>,
}

impl Files {
    fn new() -> Self {
        let base = if Path::new("/dev/shm").is_dir() {
            Path::new("/dev/shm").to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("fdm-claimdiff-")
            .tempdir_in(base)
            .unwrap();
        let handles = (0..CALLERS)
            .map(|_| DatastoreDir::open(dir.path()).unwrap())
            .collect();
        Files { dir, handles }
    }
    fn record_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(".fdm").join(name)
    }
    /// Overwrite a record with a valid encoding whose last byte is flipped: a CRC mismatch.
    fn tear(&self, name: &str, mut bytes: Vec<u8>) {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5a;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.record_path(name))
            .unwrap();
        f.write_all_at(&bytes, 0).unwrap();
    }
}

impl Backend for Files {
    fn exec(&mut self, caller: usize, op: DsOp) -> Result<DsReply, DsError> {
        self.handles[caller].execute(op)
    }
    fn crash(&mut self, caller: usize) {
        // Closing the handle's files drops its lock, as the kernel does for a dead process.
        self.handles[caller] = DatastoreDir::open(self.dir.path()).unwrap();
    }
    fn tear_claim(&mut self) {
        let any = claim(HostId(1), 1, Epoch(1), 0, false);
        self.tear("claim", codec::encode_claim(&any).to_vec());
    }
    fn tear_protected(&mut self) {
        let any = protected(HostId(1), Epoch(1), RestartState::Idle);
        self.tear("protected.list", codec::encode_protected_list(&any));
    }
    fn locks(&self) -> Vec<bool> {
        self.handles.iter().map(|h| h.holds_claim_lock()).collect()
    }
}

fn host(i: usize) -> HostId {
    HostId(i as u32 + 1)
}

fn claim(owner: HostId, inc: u64, epoch: Epoch, renewal: u64, released: bool) -> DatastoreClaim {
    DatastoreClaim {
        cluster: CLUSTER,
        datastore: DS,
        owner,
        owner_incarnation: inc,
        epoch,
        renewal,
        released,
    }
}

fn protected(master: HostId, epoch: Epoch, restart: RestartState) -> ProtectedVmList {
    ProtectedVmList {
        cluster: CLUSTER,
        datastore: DS,
        master,
        epoch,
        generation: 1,
        vms: vec![ProtectedVm {
            vm: VM,
            home: DS,
            last_host: None,
            desired: DesiredPower::On,
            settings: VmHaSettings::default(),
            restart,
            recent_restarts: Vec::new(),
            pending_power: None,
        }],
    }
}

/// An operation in the abstract; its records are built from the current state when it runs, so
/// that sequences reach the interesting branches (matching expectations, current epochs) often.
#[derive(Debug, Clone)]
enum Step {
    /// `expect`: 0 nothing, 1 the current record, 2 a stale one.
    Acquire {
        caller: usize,
        expect: u8,
        lapsed: bool,
    },
    /// `stale`: use an epoch other than the current one.
    Renew {
        caller: usize,
        stale: bool,
    },
    Release {
        caller: usize,
        stale: bool,
    },
    WriteProtected {
        caller: usize,
        stale: bool,
        target: usize,
        attempt: u32,
    },
    CheckIntent {
        owner: usize,
        stale: bool,
        target: usize,
        attempt: u32,
    },
    ReadClaim,
    ReadProtected,
    TearClaim,
    TearProtected,
    Crash {
        caller: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let c = 0..CALLERS;
    prop_oneof![
        4 => (c.clone(), 0u8..3, any::<bool>())
            .prop_map(|(caller, expect, lapsed)| Step::Acquire { caller, expect, lapsed }),
        3 => (c.clone(), any::<bool>()).prop_map(|(caller, stale)| Step::Renew { caller, stale }),
        2 => (c.clone(), any::<bool>()).prop_map(|(caller, stale)| Step::Release { caller, stale }),
        2 => (c.clone(), any::<bool>(), c.clone(), 1u32..3).prop_map(
            |(caller, stale, target, attempt)| Step::WriteProtected { caller, stale, target, attempt }
        ),
        2 => (c.clone(), any::<bool>(), c.clone(), 1u32..3).prop_map(
            |(owner, stale, target, attempt)| Step::CheckIntent { owner, stale, target, attempt }
        ),
        1 => Just(Step::ReadClaim),
        1 => Just(Step::ReadProtected),
        1 => Just(Step::TearClaim),
        1 => Just(Step::TearProtected),
        1 => c.prop_map(|caller| Step::Crash { caller }),
    ]
}

/// Carries out one step on a backend. The records are built from `model`, the reference state
/// (both backends hold the same state as long as no divergence was found).
fn run_step(
    b: &mut dyn Backend,
    model: &Mem,
    s: &Step,
    renewal: u64,
) -> Option<Result<DsReply, DsError>> {
    let current = model.ds.current_claim();
    let epoch = |stale: bool| {
        let e = current.map_or(1, |c| c.epoch.0);
        Epoch(if stale { e + 1 } else { e })
    };
    let inc = |i: usize| model.incarnations[i];
    Some(match *s {
        Step::Acquire {
            caller,
            expect,
            lapsed,
        } => {
            let expect = match expect {
                0 => None,
                1 => current,
                _ => Some(claim(
                    host(2),
                    7,
                    Epoch(epoch(false).0.saturating_sub(1)),
                    3,
                    false,
                )),
            };
            let next = Epoch(current.map_or(0, |c| c.epoch.0) + 1);
            let record = claim(host(caller), inc(caller), next, 0, false);
            b.exec(
                caller,
                DsOp::WriteClaim {
                    record,
                    mode: ClaimWrite::Acquire { expect, lapsed },
                },
            )
        }
        Step::Renew { caller, stale } => {
            let record = claim(host(caller), inc(caller), epoch(stale), renewal, false);
            b.exec(
                caller,
                DsOp::WriteClaim {
                    record,
                    mode: ClaimWrite::Renew,
                },
            )
        }
        Step::Release { caller, stale } => {
            let record = claim(host(caller), inc(caller), epoch(stale), renewal, true);
            b.exec(
                caller,
                DsOp::WriteClaim {
                    record,
                    mode: ClaimWrite::Release,
                },
            )
        }
        Step::WriteProtected {
            caller,
            stale,
            target,
            attempt,
        } => {
            let e = epoch(stale);
            let intent = RestartState::Intent {
                target: host(target),
                epoch: e,
                attempt,
            };
            b.exec(
                caller,
                DsOp::WriteProtectedList(protected(host(caller), e, intent)),
            )
        }
        Step::CheckIntent {
            owner,
            stale,
            target,
            attempt,
        } => b.exec(
            target,
            DsOp::CheckIntent {
                owner: host(owner),
                epoch: epoch(stale),
                vm: VM,
                target: host(target),
                attempt,
            },
        ),
        Step::ReadClaim => b.exec(0, DsOp::ReadClaim),
        Step::ReadProtected => b.exec(0, DsOp::ReadProtectedList),
        Step::TearClaim => {
            b.tear_claim();
            return None;
        }
        Step::TearProtected => {
            b.tear_protected();
            return None;
        }
        Step::Crash { caller } => {
            b.crash(caller);
            return None;
        }
    })
}

/// What is on the datastore, as any caller would read it, plus who holds the lock.
fn state(b: &mut dyn Backend) -> String {
    let claim = b.exec(0, DsOp::ReadClaim);
    let list = b.exec(0, DsOp::ReadProtectedList);
    format!("claim {claim:?}\nprotected {list:?}\nlocks {:?}", b.locks())
}

/// Runs `steps` against the reference model and `other`; the first difference, if any.
fn divergence(steps: &[Step], other: &mut dyn Backend) -> Option<String> {
    let mut model = Mem::new();
    for (n, s) in steps.iter().enumerate() {
        let renewal = n as u64 + 1;
        // Both answer from the same state: build the step's records once, from the model.
        let snapshot = Mem {
            ds: model.ds.clone(),
            incarnations: model.incarnations,
        };
        let want = run_step(&mut model, &snapshot, s, renewal);
        let got = run_step(other, &snapshot, s, renewal);
        if want != got {
            return Some(format!(
                "step {n} {s:?}: reference answered {want:?}, other {got:?}"
            ));
        }
        let (a, b) = (state(&mut model), state(other));
        if a != b {
            return Some(format!(
                "after step {n} {s:?}:\nreference:\n{a}\nother:\n{b}"
            ));
        }
    }
    None
}

proptest! {
    #![proptest_config(Config { cases: 300, ..Config::default() })]

    #[test]
    fn files_and_memory_decide_every_claim_operation_alike(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let mut files = Files::new();
        if let Some(d) = divergence(&steps, &mut files) {
            prop_assert!(false, "{}", d);
        }
    }
}

/// The in-memory datastore as it was before the rule was shared: a failed renewal kept the lock.
struct KeepsLockOnFailedRenew(Mem);

impl Backend for KeepsLockOnFailedRenew {
    fn exec(&mut self, caller: usize, op: DsOp) -> Result<DsReply, DsError> {
        let renew = matches!(
            op,
            DsOp::WriteClaim {
                mode: ClaimWrite::Renew,
                ..
            }
        );
        let before = self.0.ds.lock;
        let r = self.0.exec(caller, op);
        if renew && matches!(r, Err(DsError::ClaimMismatch { .. })) {
            self.0.ds.lock = before;
        }
        r
    }
    fn crash(&mut self, caller: usize) {
        self.0.crash(caller)
    }
    fn tear_claim(&mut self) {
        self.0.tear_claim()
    }
    fn tear_protected(&mut self) {
        self.0.tear_protected()
    }
    fn locks(&self) -> Vec<bool> {
        self.0.locks()
    }
}

#[test]
fn a_backend_with_a_changed_claim_rule_is_caught() {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 2_000,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let result = runner.run(&proptest::collection::vec(step(), 1..40), |steps| {
        let mut mutant = KeepsLockOnFailedRenew(Mem::new());
        match divergence(&steps, &mut mutant) {
            Some(d) => Err(proptest::test_runner::TestCaseError::fail(d)),
            None => Ok(()),
        }
    });
    match result {
        Err(TestError::Fail(why, steps)) => {
            let why = why.to_string();
            assert!(why.contains("locks"), "found, but not the lock: {why}");
            eprintln!("caught with {} steps: {why}", steps.len());
        }
        other => panic!("the changed rule went unnoticed: {other:?}"),
    }
}
