//! An in-memory datastore for unit tests and the simulator: records are kept as values, the claim
//! lock is held per (host, incarnation), and every claim-gated decision is [`crate::claim`]'s, the
//! same functions the file datastore calls.

use crate::claim::{self, IntentQuery, LockAfter, LockHolder};
use crate::codec::DecodeError;
use crate::ids::{DatastoreId, HostId};
use crate::ops::{ClaimWrite, DsError, DsOp, DsReply, HeartbeatSlot};
use crate::records::{
    ClusterConfig, DatastoreClaim, HeartbeatRecord, PowerOnList, ProtectedVmList,
};
use std::collections::BTreeMap;

/// Who is calling: the lock belongs to one agent process (host + incarnation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub host: HostId,
    pub incarnation: u64,
}

/// A record slot: never written (`None`), a record, or a torn/corrupt write that reads as the decode
/// error until the next good write.
pub type Slot<T> = Option<Result<T, DecodeError>>;

#[derive(Debug, Clone, Default)]
pub struct MemDatastore {
    pub id: Option<DatastoreId>,
    pub heartbeats: BTreeMap<HostId, Result<HeartbeatRecord, DecodeError>>,
    pub power_on: BTreeMap<HostId, PowerOnList>,
    pub claim: Slot<DatastoreClaim>,
    pub lock: Option<Caller>,
    pub protected: Slot<ProtectedVmList>,
    pub config: Option<ClusterConfig>,
}

impl MemDatastore {
    pub fn new(id: DatastoreId) -> Self {
        MemDatastore {
            id: Some(id),
            ..Default::default()
        }
    }

    /// The agent process died: the kernel drops its locks.
    pub fn release_locks_of(&mut self, caller: Caller) {
        if self.lock == Some(caller) {
            self.lock = None;
        }
    }

    /// A torn heartbeat write: the sector reads back as garbage until the next good write.
    pub fn tear_heartbeat(&mut self, host: HostId) {
        self.heartbeats.insert(host, Err(DecodeError::BadCrc));
    }

    /// A torn claim write.
    pub fn tear_claim(&mut self) {
        self.claim = Some(Err(DecodeError::BadCrc));
    }

    /// A corrupt protected list (a list is replaced atomically, so only the storage can do this).
    pub fn tear_protected(&mut self) {
        self.protected = Some(Err(DecodeError::BadCrc));
    }

    /// The protected list when one is there and readable.
    pub fn protected_list(&self) -> Option<&ProtectedVmList> {
        self.protected.as_ref().and_then(|r| r.as_ref().ok())
    }

    /// The claim when one is there and readable.
    pub fn current_claim(&self) -> Option<DatastoreClaim> {
        self.claim.clone().and_then(Result::ok)
    }

    fn claim_strict(&self) -> Result<Option<DatastoreClaim>, DecodeError> {
        self.claim.clone().transpose()
    }

    fn read<T: Clone>(slot: &Slot<T>) -> Result<Option<T>, DsError> {
        slot.clone().transpose().map_err(DsError::Corrupt)
    }

    pub fn execute(&mut self, caller: Caller, op: DsOp) -> Result<DsReply, DsError> {
        match op {
            DsOp::WriteHeartbeat(rec) => {
                self.heartbeats.insert(rec.host, Ok(rec));
                Ok(DsReply::Written)
            }
            DsOp::ReadHeartbeats => Ok(DsReply::Heartbeats(
                self.heartbeats
                    .iter()
                    .map(|(&host, r)| HeartbeatSlot {
                        host,
                        record: r.clone(),
                    })
                    .collect(),
            )),
            DsOp::WritePowerOnList(list) => {
                self.power_on.insert(list.host, list);
                Ok(DsReply::Written)
            }
            DsOp::ReadPowerOnList { host } => {
                Ok(DsReply::PowerOnList(self.power_on.get(&host).cloned()))
            }
            DsOp::ReadClaim => Self::read(&self.claim).map(DsReply::Claim),
            DsOp::WriteClaim { record, mode } => self.write_claim(caller, record, mode),
            DsOp::WriteProtectedList(list) => {
                claim::protected_write_allowed(&self.claim_strict(), &list)?;
                self.protected = Some(Ok(list));
                Ok(DsReply::Written)
            }
            DsOp::ReadProtectedList => Self::read(&self.protected).map(DsReply::ProtectedList),
            DsOp::ReadConfig { newer_than } => Ok(DsReply::Config(
                self.config
                    .as_ref()
                    .filter(|c| c.generation > newer_than)
                    .cloned()
                    .map(Box::new),
            )),
            DsOp::WriteConfig(cfg) => {
                self.config = Some(*cfg);
                Ok(DsReply::Written)
            }
            DsOp::CheckIntent {
                owner,
                epoch,
                vm,
                target,
                attempt,
            } => {
                let q = IntentQuery {
                    owner,
                    epoch,
                    vm,
                    target,
                    attempt,
                };
                claim::check_intent(&self.claim_strict(), &q, || Self::read(&self.protected))
            }
        }
    }

    fn write_claim(
        &mut self,
        caller: Caller,
        record: DatastoreClaim,
        mode: ClaimWrite,
    ) -> Result<DsReply, DsError> {
        // A torn claim reads as no claim for the compare, as in the file datastore.
        let current = self.current_claim();
        let lock = self.lock;
        let decision = claim::decide_claim_write(current, &record, mode, || {
            Ok(match lock {
                None => LockHolder::Free,
                Some(c) if c == caller => LockHolder::Caller,
                Some(_) => LockHolder::Other,
            })
        })?;
        if let Ok(Some(rec)) = decision.outcome {
            self.claim = Some(Ok(rec));
        }
        match decision.lock {
            LockAfter::Unchanged => {}
            LockAfter::Held => self.lock = Some(caller),
            LockAfter::NotHeld => self.release_locks_of(caller),
        }
        decision.outcome.map(|_| DsReply::Written)
    }
}
