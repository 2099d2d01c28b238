//! The authenticated datagram envelope (layout and rules in `docs/protocol.md`, "Envelope").
//!
//! Pure: encoding, MAC, and the per-sender replay window. The core seals every message it sends and
//! opens every datagram it receives; the runtime only moves bytes.
//!
//! Layout, little-endian:
//! ```text
//! 0   4  magic "FDMw"
//! 4   1  protocol version (4)
//! 5   1  message kind
//! 6   2  reserved, zero
//! 8   8  cluster id
//! 16  4  sender host id
//! 20  8  sender incarnation
//! 28  4  recipient host id
//! 32  8  recipient incarnation (0: the sender has not heard this incarnation of the recipient yet)
//! 40  8  sequence (per sender incarnation, starts at 1, +1 per datagram)
//! 48  2  body length N
//! 50  N  body (postcard)
//! 50+N 16 MAC: keyed BLAKE3 of bytes 0..50+N, truncated to 128 bits
//! ```
//!
//! The recipient is under the MAC so that a datagram is good for the one host (and agent
//! incarnation) it was sent to: relayed to another host, or replayed to a restarted agent, it is
//! dropped.

use heartbeat_fs::{ClusterId, HostId};
use std::collections::BTreeMap;
use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"FDMw";
pub const VERSION: u8 = 4;
pub const HEADER_LEN: usize = 50;
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
    pub recipient: HostId,
    /// The recipient's agent incarnation as the sender last heard it, 0 when it has not.
    pub recipient_incarnation: u64,
    pub sequence: u64,
}

/// The receiving agent: a datagram must name this host, and this incarnation or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipient {
    pub host: HostId,
    pub incarnation: u64,
}

/// Why a datagram was dropped. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Error)]
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
    #[error("meant for another host")]
    WrongRecipient,
    #[error("meant for an earlier incarnation of this agent")]
    StaleRecipient,
    #[error("names no incarnation of this agent where the message needs one")]
    UnboundRecipient,
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
    /// The value a slave puts in its heartbeat and the master echoes to grant a network lease:
    /// keyed and bound to the slave, its incarnation and the heartbeat, so that no other slave's
    /// traffic (and no outsider) can supply it.
    pub fn echo_token(&self, host: HostId, incarnation: u64, seq: u64) -> u64 {
        let mut input = [0u8; 24];
        input[..4].copy_from_slice(b"echo");
        input[4..8].copy_from_slice(&host.0.to_le_bytes());
        input[8..16].copy_from_slice(&incarnation.to_le_bytes());
        input[16..24].copy_from_slice(&seq.to_le_bytes());
        let h = blake3::keyed_hash(&self.0, &input);
        le_u64(h.as_bytes(), 0)
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
    out.extend_from_slice(&header.recipient.0.to_le_bytes());
    out.extend_from_slice(&header.recipient_incarnation.to_le_bytes());
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

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Check structure, cluster, recipient and MAC; return the header and the body. The checks that
/// need no key come first, so that garbage costs a few comparisons, not a MAC. Does not check
/// replay: that needs the receiver's state ([`ReplayGuard`]).
pub fn open<'a>(
    key: &Key,
    cluster: ClusterId,
    me: Recipient,
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
    let body_len = u16::from_le_bytes([bytes[48], bytes[49]]) as usize;
    if HEADER_LEN + body_len + MAC_LEN != bytes.len() {
        return Err(WireError::BadLength);
    }
    let header = Header {
        kind: bytes[5],
        cluster: ClusterId(le_u64(bytes, 8)),
        sender: HostId(le_u32(bytes, 16)),
        incarnation: le_u64(bytes, 20),
        recipient: HostId(le_u32(bytes, 28)),
        recipient_incarnation: le_u64(bytes, 32),
        sequence: le_u64(bytes, 40),
    };
    if header.cluster != cluster {
        return Err(WireError::WrongCluster);
    }
    if header.recipient != me.host {
        return Err(WireError::WrongRecipient);
    }
    let (signed, mac) = bytes.split_at(HEADER_LEN + body_len);
    // Constant-time comparison: a MAC check must not leak how many bytes matched.
    let want = key.mac(signed);
    if want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err(WireError::BadMac);
    }
    if header.recipient_incarnation != 0 && header.recipient_incarnation != me.incarnation {
        return Err(WireError::StaleRecipient);
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
    senders: BTreeMap<HostId, Window>,
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

    /// The newest incarnation of `host` accepted so far: what a reply to it names.
    pub fn incarnation_of(&self, host: HostId) -> Option<u64> {
        self.senders.get(&host).map(|w| w.incarnation)
    }

    /// Forget a sender (removed from the cluster).
    pub fn forget(&mut self, host: HostId) {
        self.senders.remove(&host);
    }
}

/// Counters of dropped datagrams by reason, for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DropCounters {
    pub by_reason: BTreeMap<WireError, u64>,
}

impl DropCounters {
    pub fn count(&mut self, e: WireError) {
        *self.by_reason.entry(e).or_default() += 1;
    }
    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }
}
