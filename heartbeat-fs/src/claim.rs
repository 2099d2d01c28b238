//! The claim rule: what every claim-gated operation decides, as pure functions of what is on the
//! datastore.
//!
//! Both backends, the files of [`crate::fs`] that production runs and the values of [`crate::mem`]
//! that the simulator proves safe, read the current records, ask here what to do, and carry the
//! answer out; only the IO differs. A differential property test (`tests/claim_differential.rs`) runs
//! the same operation sequences against both and requires identical replies and identical state.
//!
//! The lock is only a fast path (see [`ClaimWrite::Acquire`]): safety rests on the lease, the epoch
//! and the renewal read-back, all of which are decided here.

use crate::codec::DecodeError;
use crate::ids::{Epoch, HostId, VmId};
use crate::ops::{ClaimWrite, DsError, DsReply};
use crate::records::{DatastoreClaim, ProtectedVmList, RestartState};

/// Who holds the claim lock when an acquisition looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockHolder {
    /// The caller itself (it took the lock earlier in its tenure).
    Caller,
    /// Another agent process.
    Other,
    /// Nobody: the caller may take it.
    Free,
}

/// Whether the caller holds the claim lock once the operation is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAfter {
    /// As before the operation.
    Unchanged,
    /// The caller holds it (taking it if it was free).
    Held,
    /// The caller does not hold it (dropping it if it did; another holder keeps theirs).
    NotHeld,
}

/// What a claim write does: the record to write, if any, and the lock afterwards. When the write
/// itself fails, the backend leaves the lock as it was before the call and reports the IO error.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimDecision {
    /// `Ok(Some(record))`: write it and answer `Written`. `Ok(None)`: write nothing and answer
    /// `Written` (a release of a claim that is not ours any more). `Err`: write nothing, answer it.
    pub outcome: Result<Option<DatastoreClaim>, DsError>,
    pub lock: LockAfter,
}

/// Decide a claim write. `current` is the record on disk, read leniently: a torn or corrupt claim
/// sector reads as `None`, so that a torn write cannot block a takeover forever (the caller still
/// watched the old record lapse). `lock` is asked only by an acquisition, the one operation whose
/// answer depends on the lock.
pub fn decide_claim_write(
    current: Option<DatastoreClaim>,
    record: &DatastoreClaim,
    mode: ClaimWrite,
    lock: impl FnOnce() -> Result<LockHolder, DsError>,
) -> Result<ClaimDecision, DsError> {
    let names_writer = |c: &DatastoreClaim| c.owner == record.owner && c.epoch == record.epoch;
    Ok(match mode {
        ClaimWrite::Acquire { expect, lapsed } => {
            let holder = lock()?;
            // Taking the record without the lock is allowed only over a record the caller watched
            // lapse; a free lock or our own needs no such excuse.
            let steal = lapsed && expect.is_some();
            if holder == LockHolder::Other && !steal {
                return Ok(ClaimDecision {
                    outcome: Err(DsError::Contended),
                    lock: LockAfter::Unchanged,
                });
            }
            if current != expect {
                // Not acquired: holding the lock would only slow down whoever holds the claim.
                return Ok(ClaimDecision {
                    outcome: Err(DsError::ClaimMismatch { current }),
                    lock: LockAfter::NotHeld,
                });
            }
            ClaimDecision {
                outcome: Ok(Some(*record)),
                lock: if holder == LockHolder::Other {
                    LockAfter::Unchanged
                } else {
                    LockAfter::Held
                },
            }
        }
        ClaimWrite::Renew => {
            if current.is_some_and(|c| names_writer(&c) && !c.released) {
                ClaimDecision {
                    outcome: Ok(Some(*record)),
                    lock: LockAfter::Unchanged,
                }
            } else {
                // The claim is gone (taken, released, overwritten): so is any reason to hold the lock.
                ClaimDecision {
                    outcome: Err(DsError::ClaimMismatch { current }),
                    lock: LockAfter::NotHeld,
                }
            }
        }
        ClaimWrite::Release => ClaimDecision {
            outcome: Ok(current.filter(names_writer).map(|_| *record)),
            lock: LockAfter::NotHeld,
        },
    })
}

/// Whether `claim` (read strictly: a corrupt sector is an error) is held by `owner` at `epoch`.
fn held_by(
    claim: &Result<Option<DatastoreClaim>, DecodeError>,
    owner: HostId,
    epoch: Epoch,
) -> Result<bool, DsError> {
    match claim {
        Err(e) => Err(DsError::Corrupt(e.clone())),
        Ok(c) => Ok(c.is_some_and(|c| c.owner == owner && c.epoch == epoch && !c.released)),
    }
}

/// A protected list may replace the one on disk only while the claim names its master at its epoch:
/// a deposed master cannot overwrite its successor's list.
pub fn protected_write_allowed(
    claim: &Result<Option<DatastoreClaim>, DecodeError>,
    list: &ProtectedVmList,
) -> Result<(), DsError> {
    if held_by(claim, list.master, list.epoch)? {
        Ok(())
    } else {
        Err(DsError::ClaimMismatch {
            current: claim.clone().ok().flatten(),
        })
    }
}

/// The target's question before a power-on (`DsOp::CheckIntent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntentQuery {
    pub owner: HostId,
    pub epoch: Epoch,
    pub vm: VmId,
    pub target: HostId,
    pub attempt: u32,
}

/// Confirm a power-on only when the claim names the commanding master at the command's epoch and the
/// protected list holds exactly this intent. `protected` is read only once the claim matched.
pub fn check_intent(
    claim: &Result<Option<DatastoreClaim>, DecodeError>,
    q: &IntentQuery,
    protected: impl FnOnce() -> Result<Option<ProtectedVmList>, DsError>,
) -> Result<DsReply, DsError> {
    if !held_by(claim, q.owner, q.epoch)? {
        return Ok(DsReply::IntentRefused {
            reason: format!(
                "the command is from {} at {}, but {}",
                q.owner,
                q.epoch,
                describe_claim(claim.as_ref().ok().copied().flatten())
            ),
        });
    }
    let intent = protected()?
        .and_then(|l| l.vms.into_iter().find(|e| e.vm == q.vm))
        .map(|e| e.restart);
    let wanted = RestartState::Intent {
        target: q.target,
        epoch: q.epoch,
        attempt: q.attempt,
    };
    if intent.as_ref() == Some(&wanted) {
        Ok(DsReply::IntentConfirmed)
    } else {
        Ok(DsReply::IntentRefused {
            reason: format!(
                "the protected list records {} for {}, not attempt {} on {}",
                describe_restart(intent.as_ref()),
                q.vm,
                q.attempt,
                q.target
            ),
        })
    }
}

/// A claim record in words, for refusals and logs.
pub fn describe_claim(c: Option<DatastoreClaim>) -> String {
    match c {
        None => "the datastore has no claim".to_string(),
        Some(c) if c.owner.is_none() => "nobody holds the datastore's claim".to_string(),
        Some(c) if c.released => format!("{} released the claim at {}", c.owner, c.epoch),
        Some(c) => format!("{} holds the claim at {}", c.owner, c.epoch),
    }
}

/// A protected-list restart state in words.
pub fn describe_restart(r: Option<&RestartState>) -> String {
    match r {
        None => "no entry".to_string(),
        Some(RestartState::Idle) => "no restart".to_string(),
        Some(RestartState::Pending { attempts }) => {
            format!("a pending restart after {attempts} attempt(s)")
        }
        Some(RestartState::Intent {
            target,
            epoch,
            attempt,
        }) => format!("attempt {attempt} on {target} at {epoch}"),
        Some(RestartState::Failed { attempts }) => {
            format!("a restart that failed {attempts} time(s)")
        }
        Some(RestartState::LimitReached { restarts }) => {
            format!("a VM failed after {restarts} restart(s) within its restart limit")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClusterId, DatastoreId};

    fn claim(owner: u32, epoch: u64, released: bool) -> DatastoreClaim {
        DatastoreClaim {
            cluster: ClusterId(1),
            datastore: DatastoreId(1),
            owner: HostId(owner),
            owner_incarnation: 1,
            epoch: Epoch(epoch),
            renewal: 0,
            released,
        }
    }

    fn free() -> Result<LockHolder, DsError> {
        Ok(LockHolder::Free)
    }

    #[test]
    fn a_live_rival_holding_the_lock_contends_unless_the_record_lapsed() {
        let cur = Some(claim(2, 3, false));
        let rec = claim(1, 4, false);
        let other = || Ok(LockHolder::Other);
        let d = decide_claim_write(
            cur,
            &rec,
            ClaimWrite::Acquire {
                expect: cur,
                lapsed: false,
            },
            other,
        )
        .unwrap();
        assert_eq!(d.outcome, Err(DsError::Contended));
        let d = decide_claim_write(
            cur,
            &rec,
            ClaimWrite::Acquire {
                expect: cur,
                lapsed: true,
            },
            other,
        )
        .unwrap();
        assert_eq!(d.outcome, Ok(Some(rec)));
        assert_eq!(
            d.lock,
            LockAfter::Unchanged,
            "a stolen record leaves the lock"
        );
    }

    #[test]
    fn a_failed_renewal_gives_up_the_lock() {
        let d = decide_claim_write(
            Some(claim(2, 4, false)),
            &claim(1, 3, false),
            ClaimWrite::Renew,
            || unreachable!("renewal does not look at the lock"),
        )
        .unwrap();
        assert!(matches!(d.outcome, Err(DsError::ClaimMismatch { .. })));
        assert_eq!(d.lock, LockAfter::NotHeld);
    }

    #[test]
    fn releasing_a_claim_that_is_not_ours_writes_nothing() {
        let d = decide_claim_write(
            Some(claim(2, 4, false)),
            &claim(1, 3, true),
            ClaimWrite::Release,
            free,
        )
        .unwrap();
        assert_eq!(d.outcome, Ok(None));
        assert_eq!(d.lock, LockAfter::NotHeld);
    }

    #[test]
    fn renewal_and_release_need_both_owner_and_epoch() {
        // The same host at an older epoch (it lost the claim and took it again) and another host
        // at the same epoch are both not the writer: neither may renew, neither may release.
        for current in [claim(1, 5, false), claim(2, 3, false)] {
            let d = decide_claim_write(
                Some(current),
                &claim(1, 3, false),
                ClaimWrite::Renew,
                || unreachable!("renewal does not look at the lock"),
            )
            .unwrap();
            assert_eq!(
                d.outcome,
                Err(DsError::ClaimMismatch {
                    current: Some(current)
                }),
                "renewing over {current:?}"
            );
            let d =
                decide_claim_write(Some(current), &claim(1, 3, true), ClaimWrite::Release, free)
                    .unwrap();
            assert_eq!(d.outcome, Ok(None), "releasing over {current:?}");
        }
        let d = decide_claim_write(
            Some(claim(1, 3, false)),
            &claim(1, 3, false),
            ClaimWrite::Renew,
            free,
        )
        .unwrap();
        assert_eq!(d.outcome, Ok(Some(claim(1, 3, false))));
    }

    #[test]
    fn claims_are_described_in_plain_words() {
        let mut nobody = claim(1, 2, false);
        nobody.owner = HostId::NONE;
        assert_eq!(describe_claim(None), "the datastore has no claim");
        assert_eq!(
            describe_claim(Some(nobody)),
            "nobody holds the datastore's claim"
        );
        assert_eq!(
            describe_claim(Some(claim(3, 7, true))),
            "host-3 released the claim at e7"
        );
        assert_eq!(
            describe_claim(Some(claim(3, 7, false))),
            "host-3 holds the claim at e7"
        );
    }

    #[test]
    fn a_corrupt_claim_refuses_gated_writes_with_a_corrupt_error() {
        let list = ProtectedVmList {
            cluster: ClusterId(1),
            datastore: DatastoreId(1),
            master: HostId(1),
            epoch: Epoch(1),
            generation: 1,
            vms: Vec::new(),
        };
        assert!(matches!(
            protected_write_allowed(&Err(DecodeError::BadCrc), &list),
            Err(DsError::Corrupt(DecodeError::BadCrc))
        ));
    }

    #[test]
    fn refusals_are_plain_words() {
        let q = IntentQuery {
            owner: HostId(1),
            epoch: Epoch(2),
            vm: VmId(7),
            target: HostId(3),
            attempt: 1,
        };
        let Ok(DsReply::IntentRefused { reason }) =
            check_intent(&Ok(Some(claim(2, 5, false))), &q, || Ok(None))
        else {
            panic!("must refuse")
        };
        assert_eq!(
            reason,
            "the command is from host-1 at e2, but host-2 holds the claim at e5"
        );
        let Ok(DsReply::IntentRefused { reason }) =
            check_intent(&Ok(Some(claim(1, 2, false))), &q, || Ok(None))
        else {
            panic!("must refuse")
        };
        assert_eq!(
            reason,
            "the protected list records no entry for vm-7, not attempt 1 on host-3"
        );
    }
}
