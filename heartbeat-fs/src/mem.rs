//! An in-memory datastore with exactly the semantics of the real executor, for unit tests and the
//! simulator: records are kept as values, the claim lock is held per (host, incarnation).

use crate::codec::DecodeError;
use crate::ids::{DatastoreId, HostId};
use crate::ops::{ClaimWrite, DsError, DsOp, DsReply, HeartbeatSlot};
use crate::records::{
    ClusterConfig, DatastoreClaim, HeartbeatRecord, PowerOnList, ProtectedVmList, RestartState,
};
use std::collections::BTreeMap;

/// Who is calling: the lock belongs to one agent process (host + incarnation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub host: HostId,
    pub incarnation: u64,
}

#[derive(Debug, Clone, Default)]
pub struct MemDatastore {
    pub id: Option<DatastoreId>,
    pub heartbeats: BTreeMap<HostId, Result<HeartbeatRecord, DecodeError>>,
    pub power_on: BTreeMap<HostId, PowerOnList>,
    pub claim: Option<DatastoreClaim>,
    pub lock: Option<Caller>,
    pub protected: Option<ProtectedVmList>,
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
            DsOp::ReadClaim => Ok(DsReply::Claim(self.claim)),
            DsOp::WriteClaim { record, mode } => self.write_claim(caller, record, mode),
            DsOp::WriteProtectedList(list) => {
                let ok = self.claim.is_some_and(|c| {
                    c.owner == list.master && c.epoch == list.epoch && !c.released
                });
                if !ok {
                    return Err(DsError::ClaimMismatch {
                        current: self.claim,
                    });
                }
                self.protected = Some(list);
                Ok(DsReply::Written)
            }
            DsOp::ReadProtectedList => Ok(DsReply::ProtectedList(self.protected.clone())),
            DsOp::ReadConfig { newer_than } => Ok(DsReply::Config(
                self.config
                    .as_ref()
                    .filter(|c| c.generation > newer_than)
                    .cloned(),
            )),
            DsOp::WriteConfig(cfg) => {
                self.config = Some(cfg);
                Ok(DsReply::Written)
            }
            DsOp::CheckIntent {
                owner,
                epoch,
                vm,
                target,
                attempt,
            } => {
                let claim_ok = self
                    .claim
                    .is_some_and(|c| c.owner == owner && c.epoch == epoch && !c.released);
                if !claim_ok {
                    return Ok(DsReply::IntentRefused {
                        reason: format!("claim is {:?}", self.claim),
                    });
                }
                let intent = self
                    .protected
                    .as_ref()
                    .and_then(|l| l.vms.iter().find(|e| e.vm == vm))
                    .map(|e| e.restart.clone());
                if intent
                    == Some(RestartState::Intent {
                        target,
                        epoch,
                        attempt,
                    })
                {
                    Ok(DsReply::IntentConfirmed)
                } else {
                    Ok(DsReply::IntentRefused {
                        reason: format!("intent on disk is {intent:?}"),
                    })
                }
            }
        }
    }

    fn write_claim(
        &mut self,
        caller: Caller,
        record: DatastoreClaim,
        mode: ClaimWrite,
    ) -> Result<DsReply, DsError> {
        match mode {
            ClaimWrite::Acquire { expect, lapsed } => {
                let held_by_other = self.lock.is_some_and(|l| l != caller);
                let steal = lapsed && expect.is_some();
                if held_by_other && !steal {
                    return Err(DsError::Contended);
                }
                if self.claim != expect {
                    return Err(DsError::ClaimMismatch {
                        current: self.claim,
                    });
                }
                self.claim = Some(record);
                if !held_by_other {
                    self.lock = Some(caller);
                }
                Ok(DsReply::Written)
            }
            ClaimWrite::Renew => {
                let ok = self.claim.is_some_and(|c| {
                    c.owner == record.owner && c.epoch == record.epoch && !c.released
                });
                if !ok {
                    return Err(DsError::ClaimMismatch {
                        current: self.claim,
                    });
                }
                self.claim = Some(record);
                Ok(DsReply::Written)
            }
            ClaimWrite::Release => {
                let ok = self
                    .claim
                    .is_some_and(|c| c.owner == record.owner && c.epoch == record.epoch);
                if ok {
                    self.claim = Some(record);
                }
                if self.lock == Some(caller) {
                    self.lock = None;
                }
                Ok(DsReply::Written)
            }
        }
    }
}
