//! The authenticated datagram envelope (DESIGN.md section 6, layout in `docs/protocol.md`).
//!
//! Pure: encoding, MAC, and the per-sender replay window. The core seals every message it sends and
//! opens every datagram it receives; the runtime only moves bytes.
//!
//! Layout, little-endian:
//! ```text
//! 0   4  magic "FDMw"
//! 4   1  protocol version (1)
//! 5   1  message kind
//! 6   2  reserved, zero
//! 8   8  cluster id
//! 16  4  sender host id
//! 20  8  sender incarnation
//! 28  8  sequence (per sender incarnation, starts at 1, +1 per datagram)
//! 36  2  body length N
//! 38  N  body (postcard)
//! 38+N 16 MAC: keyed BLAKE3 of bytes 0..38+N, truncated to 128 bits
//! ```

use heartbeat_fs::{ClusterId, HostId};
use std::collections::HashMap;
use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"FDMw";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 38;
pub const MAC_LEN: usize = 16;
/// No IP fragmentation on any sane path: stay under 1200 bytes per datagram.
pub const MAX_DATAGRAM: usize = 1200;
pub const MAX_BODY: usize = MAX_DATAGRAM - HEADER_LEN - MAC_LEN;
/// Reordered datagrams up to this far behind the newest are still accepted once.
pub const REPLAY_WINDOW: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub cluster: ClusterId,
    pub sender: HostId,
    pub incarnation: u64,
    pub sequence: u64,
}

/// Why a datagram was dropped. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum WireError {
    #[error("shorter than header and MAC")]
    Truncated,
    #[error("longer than the datagram limit")]
    Oversized,
    #[error("bad magic")]
    BadMagic,
    #[error("unknown protocol version")]
    UnknownVersion,
    #[error("length field disagrees with datagram size")]
    BadLength,
    #[error("another cluster")]
    WrongCluster,
    #[error("MAC does not verify")]
    BadMac,
    #[error("replayed or too old")]
    Replay,
    #[error("from an older incarnation of the sender")]
    StaleIncarnation,
    #[error("body does not decode")]
    MalformedBody,
    #[error("body too large for one datagram")]
    BodyTooLarge,
}

/// The cluster secret, as a BLAKE3 key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn new(secret: [u8; 32]) -> Self {
        Key(secret)
    }
    fn mac(&self, bytes: &[u8]) -> [u8; MAC_LEN] {
        let full = blake3::keyed_hash(&self.0, bytes);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
        out
    }
}

/// Encode header + body and append the MAC.
pub fn seal(key: &Key, header: &Header, body: &[u8]) -> Result<Vec<u8>, WireError> {
    if body.len() > MAX_BODY {
        return Err(WireError::BodyTooLarge);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + MAC_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(header.kind);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&header.cluster.0.to_le_bytes());
    out.extend_from_slice(&header.sender.0.to_le_bytes());
    out.extend_from_slice(&header.incarnation.to_le_bytes());
    out.extend_from_slice(&header.sequence.to_le_bytes());
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
    let mac = key.mac(&out);
    out.extend_from_slice(&mac);
    Ok(out)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Check structure, cluster and MAC; return the header and the body. Does not check replay: that
/// needs the receiver's state ([`ReplayGuard`]).
pub fn open<'a>(
    key: &Key,
    cluster: ClusterId,
    bytes: &'a [u8],
) -> Result<(Header, &'a [u8]), WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::Oversized);
    }
    if bytes.len() < HEADER_LEN + MAC_LEN {
        return Err(WireError::Truncated);
    }
    if bytes[0..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(WireError::UnknownVersion);
    }
    let body_len = u16::from_le_bytes([bytes[36], bytes[37]]) as usize;
    if HEADER_LEN + body_len + MAC_LEN != bytes.len() {
        return Err(WireError::BadLength);
    }
    let header = Header {
        kind: bytes[5],
        cluster: ClusterId(le_u64(bytes, 8)),
        sender: HostId(u32::from_le_bytes([
            bytes[16], bytes[17], bytes[18], bytes[19],
        ])),
        incarnation: le_u64(bytes, 20),
        sequence: le_u64(bytes, 28),
    };
    if header.cluster != cluster {
        return Err(WireError::WrongCluster);
    }
    let (signed, mac) = bytes.split_at(HEADER_LEN + body_len);
    // Constant-time comparison: a MAC check must not leak how many bytes matched.
    let want = key.mac(signed);
    if want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err(WireError::BadMac);
    }
    Ok((header, &signed[HEADER_LEN..]))
}

#[derive(Debug, Clone, Copy)]
struct Window {
    incarnation: u64,
    highest: u64,
    /// Bit i set: sequence `highest - i` was seen.
    seen: u64,
}

/// Per-sender replay protection: newest incarnation wins; within it, each sequence is accepted once,
/// reordering up to [`REPLAY_WINDOW`] behind the newest is tolerated.
#[derive(Debug, Default, Clone)]
pub struct ReplayGuard {
    senders: HashMap<HostId, Window>,
}

impl ReplayGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept (and remember) or reject this header.
    pub fn check(&mut self, h: &Header) -> Result<(), WireError> {
        let Some(w) = self.senders.get_mut(&h.sender) else {
            self.senders.insert(
                h.sender,
                Window {
                    incarnation: h.incarnation,
                    highest: h.sequence,
                    seen: 1,
                },
            );
            return Ok(());
        };
        if h.incarnation < w.incarnation {
            return Err(WireError::StaleIncarnation);
        }
        if h.incarnation > w.incarnation {
            *w = Window {
                incarnation: h.incarnation,
                highest: h.sequence,
                seen: 1,
            };
            return Ok(());
        }
        if h.sequence > w.highest {
            let shift = h.sequence - w.highest;
            w.seen = if shift >= 64 { 0 } else { w.seen << shift };
            w.seen |= 1;
            w.highest = h.sequence;
            return Ok(());
        }
        let back = w.highest - h.sequence;
        if back >= REPLAY_WINDOW {
            return Err(WireError::Replay);
        }
        let bit = 1u64 << back;
        if w.seen & bit != 0 {
            return Err(WireError::Replay);
        }
        w.seen |= bit;
        Ok(())
    }

    /// Forget a sender (removed from the cluster).
    pub fn forget(&mut self, host: HostId) {
        self.senders.remove(&host);
    }
}

/// Counters of dropped datagrams by reason, for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DropCounters {
    pub by_reason: HashMap<WireError, u64>,
}

impl DropCounters {
    pub fn count(&mut self, e: WireError) {
        *self.by_reason.entry(e).or_default() += 1;
    }
    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }
}
