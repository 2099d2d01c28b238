//! Byte layouts of every datastore record. See `docs/formats.md`.
//!
//! Decoding never panics: any byte string is either a record or a [`DecodeError`], and every
//! `DecodeError` means "no new information" to a reader, never "the host is dead".

use crate::ids::{ClusterId, DatastoreId, Epoch, HostId};
use crate::records::{
    ClusterConfig, ClusterReport, DatastoreClaim, HeartbeatRecord, HostFlags, PowerOnList,
    ProtectedVmList, SECTOR,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("record is {got} bytes, expected at least {want}")]
    Truncated { got: usize, want: usize },
    #[error("record is {got} bytes, larger than the {max} allowed")]
    Oversized { got: usize, max: usize },
    #[error("record is all zeroes (never written, or zero-filled by the storage)")]
    Zeroed,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    #[error("record kind {got} where {want} was expected")]
    WrongKind { got: u16, want: u16 },
    #[error("CRC mismatch (torn or corrupt write)")]
    BadCrc,
    #[error("body does not decode: {0}")]
    Malformed(String),
}

/// Format version written in every fixed sector (heartbeat, claim).
pub const FORMAT_VERSION: u16 = 1;
/// Format version written in every variable record (lists, configuration, report). 2: a VM's HA
/// settings gained `storage_loss_response` and `restart_limit`, the cluster's HA settings the
/// restart limit, the same-host wait and the storage-outage settings. A reader of another version
/// ignores the record (postcard has no field tags, so decoding it anyway would misread it).
pub const RECORD_FORMAT_VERSION: u16 = 2;
/// Format version of the cluster report alone, which only the management plane reads, so that it
/// can change without making agents ignore each other's lists and configurations. 3: each event
/// carries its name, datastore, verdict and reason. Version 2 reports (older masters) still decode,
/// without those fields.
pub const REPORT_FORMAT_VERSION: u16 = 3;
pub const HEARTBEAT_MAGIC: [u8; 8] = *b"FDMHBEAT";
pub const CLAIM_MAGIC: [u8; 8] = *b"FDMCLAIM";
pub const VARIABLE_MAGIC: [u8; 8] = *b"FDMVREC\0";
/// Record kinds (offset 10 of every record).
pub const KIND_HEARTBEAT: u16 = 1;
pub const KIND_CLAIM: u16 = 2;
pub const KIND_POWER_ON_LIST: u16 = 3;
pub const KIND_PROTECTED_LIST: u16 = 4;
pub const KIND_CONFIG: u16 = 5;
pub const KIND_REPORT: u16 = 6;
/// Header of a variable record: magic, version, kind, body length, CRC32.
pub const VARIABLE_HEADER: usize = 20;
/// Largest variable record body accepted (a protected list of ~1M VMs fits).
pub const MAX_BODY: usize = 64 << 20;
/// CRC32 of a fixed sector covers bytes 0..508 and sits at 508..512.
const CRC_AT: usize = SECTOR - 4;

struct Sector([u8; SECTOR]);

impl Sector {
    fn new(magic: [u8; 8], kind: u16) -> Self {
        let mut b = [0u8; SECTOR];
        b[0..8].copy_from_slice(&magic);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&kind.to_le_bytes());
        Sector(b)
    }
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn seal(mut self) -> [u8; SECTOR] {
        let crc = crc32fast::hash(&self.0[..CRC_AT]);
        self.0[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        self.0
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Structural checks common to both fixed sectors; returns the sector on success.
fn open_sector(b: &[u8], magic: [u8; 8], kind: u16) -> Result<&[u8], DecodeError> {
    if b.len() < SECTOR {
        return Err(DecodeError::Truncated {
            got: b.len(),
            want: SECTOR,
        });
    }
    if b.len() > SECTOR {
        return Err(DecodeError::Oversized {
            got: b.len(),
            max: SECTOR,
        });
    }
    if b.iter().all(|&x| x == 0) {
        return Err(DecodeError::Zeroed);
    }
    if b[0..8] != magic {
        return Err(DecodeError::BadMagic);
    }
    let version = u16_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let got = u16_at(b, 10);
    if got != kind {
        return Err(DecodeError::WrongKind { got, want: kind });
    }
    if crc32fast::hash(&b[..CRC_AT]) != u32_at(b, CRC_AT) {
        return Err(DecodeError::BadCrc);
    }
    Ok(b)
}

pub fn encode_heartbeat(r: &HeartbeatRecord) -> [u8; SECTOR] {
    let mut s = Sector::new(HEARTBEAT_MAGIC, KIND_HEARTBEAT);
    s.put_u64(16, r.cluster.0);
    s.put_u32(24, r.host.0);
    s.put_u32(28, r.flags.0);
    s.put_u64(32, r.incarnation);
    s.put_u64(40, r.sequence);
    s.put_u64(48, r.power_on_generation);
    s.put_u32(56, r.master.0);
    s.seal()
}

pub fn decode_heartbeat(b: &[u8]) -> Result<HeartbeatRecord, DecodeError> {
    let b = open_sector(b, HEARTBEAT_MAGIC, KIND_HEARTBEAT)?;
    Ok(HeartbeatRecord {
        cluster: ClusterId(u64_at(b, 16)),
        host: HostId(u32_at(b, 24)),
        flags: HostFlags(u32_at(b, 28)),
        incarnation: u64_at(b, 32),
        sequence: u64_at(b, 40),
        power_on_generation: u64_at(b, 48),
        master: HostId(u32_at(b, 56)),
    })
}

pub fn encode_claim(c: &DatastoreClaim) -> [u8; SECTOR] {
    let mut s = Sector::new(CLAIM_MAGIC, KIND_CLAIM);
    s.put_u64(16, c.cluster.0);
    s.put_u32(24, c.datastore.0);
    s.put_u32(28, c.owner.0);
    s.put_u64(32, c.owner_incarnation);
    s.put_u64(40, c.epoch.0);
    s.put_u64(48, c.renewal);
    s.0[56] = u8::from(c.released);
    s.seal()
}

pub fn decode_claim(b: &[u8]) -> Result<DatastoreClaim, DecodeError> {
    let b = open_sector(b, CLAIM_MAGIC, KIND_CLAIM)?;
    let released = match b[56] {
        0 => false,
        1 => true,
        x => return Err(DecodeError::Malformed(format!("released flag {x}"))),
    };
    Ok(DatastoreClaim {
        cluster: ClusterId(u64_at(b, 16)),
        datastore: DatastoreId(u32_at(b, 24)),
        owner: HostId(u32_at(b, 28)),
        owner_incarnation: u64_at(b, 32),
        epoch: Epoch(u64_at(b, 40)),
        renewal: u64_at(b, 48),
        released,
    })
}

fn encode_variable<T: Serialize>(kind: u16, value: &T) -> Vec<u8> {
    encode_variable_version(kind, RECORD_FORMAT_VERSION, value)
}

fn encode_variable_version<T: Serialize>(kind: u16, version: u16, value: &T) -> Vec<u8> {
    // postcard into a Vec cannot fail for these types (no maps with non-string keys, no
    // unsupported serde features); an error here is a programming error, not bad input.
    let body = postcard::to_stdvec(value).expect("records always serialize");
    let mut out = Vec::with_capacity(VARIABLE_HEADER + body.len());
    out.extend_from_slice(&VARIABLE_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out);
    h.update(&body);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode_variable<T: DeserializeOwned>(kind: u16, b: &[u8]) -> Result<T, DecodeError> {
    decode_body(open_variable(kind, &[RECORD_FORMAT_VERSION], b)?.1)
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The checks every variable record passes (size, magic, one of the `versions` its reader knows,
/// kind, length, CRC): its format version and body.
fn open_variable<'b>(
    kind: u16,
    versions: &[u16],
    b: &'b [u8],
) -> Result<(u16, &'b [u8]), DecodeError> {
    if b.len() < VARIABLE_HEADER {
        if !b.is_empty() && b.iter().all(|&x| x == 0) {
            return Err(DecodeError::Zeroed);
        }
        return Err(DecodeError::Truncated {
            got: b.len(),
            want: VARIABLE_HEADER,
        });
    }
    if b.len() > VARIABLE_HEADER + MAX_BODY {
        return Err(DecodeError::Oversized {
            got: b.len(),
            max: VARIABLE_HEADER + MAX_BODY,
        });
    }
    if b[..VARIABLE_HEADER].iter().all(|&x| x == 0) {
        return Err(DecodeError::Zeroed);
    }
    if b[0..8] != VARIABLE_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16_at(b, 8);
    if !versions.contains(&version) {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let got = u16_at(b, 10);
    if got != kind {
        return Err(DecodeError::WrongKind { got, want: kind });
    }
    let len = u32_at(b, 12) as usize;
    if len > MAX_BODY {
        return Err(DecodeError::Oversized {
            got: len,
            max: MAX_BODY,
        });
    }
    let body = &b[VARIABLE_HEADER..];
    if body.len() < len {
        return Err(DecodeError::Truncated {
            got: b.len(),
            want: VARIABLE_HEADER + len,
        });
    }
    if body.len() > len {
        return Err(DecodeError::Malformed(format!(
            "{} bytes after the body",
            body.len() - len
        )));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..16]);
    h.update(body);
    if h.finalize() != u32_at(b, 16) {
        return Err(DecodeError::BadCrc);
    }
    Ok((version, body))
}

pub fn encode_power_on_list(l: &PowerOnList) -> Vec<u8> {
    encode_variable(KIND_POWER_ON_LIST, l)
}
pub fn decode_power_on_list(b: &[u8]) -> Result<PowerOnList, DecodeError> {
    decode_variable(KIND_POWER_ON_LIST, b)
}
pub fn encode_protected_list(l: &ProtectedVmList) -> Vec<u8> {
    encode_variable(KIND_PROTECTED_LIST, l)
}
pub fn decode_protected_list(b: &[u8]) -> Result<ProtectedVmList, DecodeError> {
    decode_variable(KIND_PROTECTED_LIST, b)
}
pub fn encode_config(c: &ClusterConfig) -> Vec<u8> {
    encode_variable(KIND_CONFIG, c)
}
pub fn decode_config(b: &[u8]) -> Result<ClusterConfig, DecodeError> {
    decode_variable(KIND_CONFIG, b)
}
pub fn encode_report(r: &ClusterReport) -> Vec<u8> {
    encode_variable_version(KIND_REPORT, REPORT_FORMAT_VERSION, r)
}
/// A report of this format version, or of version 2 (an older master's, its events without the
/// fields version 3 added).
pub fn decode_report(b: &[u8]) -> Result<ClusterReport, DecodeError> {
    match open_variable(KIND_REPORT, &[REPORT_FORMAT_VERSION, 2], b)? {
        (REPORT_FORMAT_VERSION, body) => decode_body(body),
        (_, body) => decode_body::<v2::ClusterReport>(body).map(ClusterReport::from),
    }
}

/// The cluster report as format version 2 laid it out (`docs/formats.md`): the same fields but
/// for the events'.
mod v2 {
    use crate::ids::{ClusterId, Epoch, HostId, VmId};
    use crate::records::{ReportEvent as Current, ReportedHost, ReportedVm};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct ClusterReport {
        cluster: ClusterId,
        master: HostId,
        master_incarnation: u64,
        epoch: Epoch,
        sequence: u64,
        unix_ms: u64,
        config_generation: u64,
        ha_paused: bool,
        hosts: Vec<ReportedHost>,
        vms: Vec<ReportedVm>,
        events: Vec<ReportEvent>,
    }

    #[derive(Deserialize)]
    struct ReportEvent {
        seq: u64,
        unix_ms: u64,
        kind: String,
        host: Option<HostId>,
        vm: Option<VmId>,
        message: String,
    }

    impl From<ClusterReport> for super::ClusterReport {
        fn from(r: ClusterReport) -> Self {
            super::ClusterReport {
                cluster: r.cluster,
                master: r.master,
                master_incarnation: r.master_incarnation,
                epoch: r.epoch,
                sequence: r.sequence,
                unix_ms: r.unix_ms,
                config_generation: r.config_generation,
                ha_paused: r.ha_paused,
                hosts: r.hosts,
                vms: r.vms,
                events: r
                    .events
                    .into_iter()
                    .map(|e| Current {
                        seq: e.seq,
                        unix_ms: e.unix_ms,
                        name: String::new(),
                        kind: e.kind,
                        host: e.host,
                        vm: e.vm,
                        datastore: None,
                        verdict: None,
                        reason: None,
                        message: e.message,
                    })
                    .collect(),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::*;
        use crate::records::{ReportEvent, ReportedHost};
        use serde::Serialize;

        /// What an older master wrote, field for field.
        #[derive(Serialize)]
        struct OldReport {
            cluster: ClusterId,
            master: HostId,
            master_incarnation: u64,
            epoch: Epoch,
            sequence: u64,
            unix_ms: u64,
            config_generation: u64,
            ha_paused: bool,
            hosts: Vec<ReportedHost>,
            vms: Vec<crate::records::ReportedVm>,
            events: Vec<OldEvent>,
        }

        #[derive(Serialize)]
        struct OldEvent {
            seq: u64,
            unix_ms: u64,
            kind: String,
            host: Option<HostId>,
            vm: Option<crate::ids::VmId>,
            message: String,
        }

        #[test]
        fn an_older_masters_report_still_decodes() {
            let old = OldReport {
                cluster: ClusterId(1),
                master: HostId(2),
                master_incarnation: 9,
                epoch: Epoch(4),
                sequence: 3,
                unix_ms: 1_700_000_000_000,
                config_generation: 5,
                ha_paused: false,
                hosts: vec![ReportedHost {
                    host: HostId(3),
                    verdict: "dead".into(),
                    network_age_ms: None,
                }],
                vms: vec![],
                events: vec![OldEvent {
                    seq: 7,
                    unix_ms: 1_700_000_000_001,
                    kind: "verdict".into(),
                    host: Some(HostId(3)),
                    vm: None,
                    message: "VerdictChanged { .. }".into(),
                }],
            };
            let bytes = encode_variable_version(KIND_REPORT, 2, &old);
            let r = decode_report(&bytes).expect("a version 2 report decodes");
            assert_eq!((r.master, r.sequence, r.hosts.len()), (HostId(2), 3, 1));
            assert_eq!(
                r.events,
                vec![ReportEvent {
                    seq: 7,
                    unix_ms: 1_700_000_000_001,
                    name: String::new(),
                    kind: "verdict".into(),
                    host: Some(HostId(3)),
                    vm: None,
                    datastore: None,
                    verdict: None,
                    reason: None,
                    message: "VerdictChanged { .. }".into(),
                }]
            );
            // Any other version is refused, as for every record.
            let bytes = encode_variable_version(KIND_REPORT, 1, &old);
            assert_eq!(
                decode_report(&bytes),
                Err(DecodeError::UnsupportedVersion(1))
            );
        }
    }
}
