//! Byte layouts of every datastore record. See `docs/formats.md`.
//!
//! Decoding never panics: any byte string is either a record or a [`DecodeError`], and every
//! `DecodeError` means "no new information" to a reader, never "the host is dead".

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
