//! Datastore operations as data: what an agent core asks of a datastore and what comes back.
//!
//! The core never touches a file. It emits a [`DsRequest`]; the runtime runs it through
//! [`crate::fs::DatastoreExecutor`] (real files, off-thread, with a deadline) and the simulator runs it
//! against its in-memory model; both answer with a [`DsCompletion`]. Keeping the operation set small and
//! closed is what lets the simulator model the same storage the real agent uses.

use crate::codec::DecodeError;
use crate::ids::{DatastoreId, Epoch, HostId, VmId};
use crate::records::{
    ClusterConfig, DatastoreClaim, HeartbeatRecord, PowerOnList, ProtectedVmList,
};
use thiserror::Error;

/// Correlates a request with its completion; unique per agent incarnation.
pub type RequestId = u64;

#[derive(Debug, Clone, PartialEq)]
pub struct DsRequest {
    pub id: RequestId,
    pub datastore: DatastoreId,
    pub op: DsOp,
}

/// How a claim write relates to the current holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimWrite {
    /// Take the claim: take the claim file's lock, check the record on disk still equals `expect`,
    /// write the new record, keep the lock for the tenure.
    ///
    /// The lock is only the fast path. When another process holds it: if `lapsed` (the caller
    /// watched exactly `expect` on disk, unchanged, for the stretched claim lease, whoever the record
    /// names, itself included), whoever holds the lock is not using it (a hung or partitioned former
    /// master, or one that lost its claim by time and still has the file open): proceed with the
    /// compare-and-write without the lock. Otherwise answer `Contended`: a live rival is acquiring.
    /// A compare-and-write is not atomic across hosts; the core therefore acts on a new claim only
    /// after a later `Renew` (which re-checks owner and epoch on disk) succeeded.
    Acquire {
        expect: Option<DatastoreClaim>,
        lapsed: bool,
    },
    /// Renew a claim we hold: the record on disk must still name us with the same epoch.
    Renew,
    /// Step down: write the record with `released = true` and drop the lock.
    Release,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DsOp {
    /// Write this host's heartbeat sector (positioned write + sync_data).
    WriteHeartbeat(HeartbeatRecord),
    /// Read every host's heartbeat sector on this datastore.
    ReadHeartbeats,
    /// Atomically replace this host's power-on list.
    WritePowerOnList(PowerOnList),
    ReadPowerOnList {
        host: HostId,
    },
    ReadClaim,
    WriteClaim {
        record: DatastoreClaim,
        mode: ClaimWrite,
    },
    /// Atomically replace the protected-VM list. The executor checks that the claim on disk still
    /// names `record.master` with `record.epoch` first, so a deposed master cannot overwrite it.
    WriteProtectedList(ProtectedVmList),
    ReadProtectedList,
    /// The cluster configuration, if its generation is above `newer_than` (`Config(None)`
    /// otherwise, or when there is none): agents poll often and a large cluster's configuration is
    /// big, so an unchanged one is not handed back.
    ReadConfig {
        newer_than: u64,
    },
    /// Written by the management plane only. Boxed: a configuration is far larger than any other
    /// operation, and every queued operation would pay for it.
    WriteConfig(Box<ClusterConfig>),
    /// The target host's check before a power-on: succeeds (`IntentConfirmed`) only when `owner` holds
    /// the claim at `epoch` (not released) AND the protected list on this datastore records
    /// `RestartState::Intent { target, epoch, attempt }` for `vm`. Anything else is `IntentRefused`.
    CheckIntent {
        owner: HostId,
        epoch: Epoch,
        vm: VmId,
        target: HostId,
        attempt: u32,
    },
}

/// One host's heartbeat slot as read: decoded, or why it carries no information.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatSlot {
    pub host: HostId,
    pub record: Result<HeartbeatRecord, DecodeError>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DsReply {
    Written,
    Heartbeats(Vec<HeartbeatSlot>),
    /// `None` when the host never wrote one.
    PowerOnList(Option<PowerOnList>),
    Claim(Option<DatastoreClaim>),
    ProtectedList(Option<ProtectedVmList>),
    Config(Option<Box<ClusterConfig>>),
    IntentConfirmed,
    /// The claim or the intent on disk does not match the command: a stale command, refuse it.
    IntentRefused {
        reason: String,
    },
}

/// The IO error classes an agent reacts to differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// EIO: the storage is failing (APD/PDL).
    Io,
    /// ENOSPC / EDQUOT.
    NoSpace,
    /// ESTALE: the NFS handle went away (server restarted, export changed).
    Stale,
    /// EACCES / EPERM / EROFS.
    PermissionDenied,
    /// The datastore's `.fdm` directory or mount path is missing.
    Missing,
    /// ENOTCONN: a FUSE or network mount whose daemon died.
    NotConnected,
    Other,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum DsError {
    #[error("datastore call did not finish within its deadline")]
    Timeout,
    #[error("datastore is busy with an earlier call that has not returned (hung storage)")]
    Busy,
    #[error("datastore IO error ({kind:?}): {message}")]
    Io { kind: IoKind, message: String },
    #[error("record is unreadable: {0}")]
    Corrupt(DecodeError),
    #[error("claim lock is held by another process")]
    Contended,
    #[error("claim on disk is not what the writer expected")]
    ClaimMismatch { current: Option<DatastoreClaim> },
    #[error("datastore {0} is not mounted on this host")]
    NotMounted(DatastoreId),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DsCompletion {
    pub id: RequestId,
    pub datastore: DatastoreId,
    pub result: Result<DsReply, DsError>,
}
