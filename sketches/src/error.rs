//! The one error type of the crate.
//!
//! Decoding errors say what was wrong with the bytes but never echo them: a corrupt `bytea`
//! can be large, and the message ends up in a PostgreSQL error report.

use crate::encoding::FORMAT_VERSION;

/// Why a sketch could not be decoded, or a value could not be recorded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SketchError {
    /// The bytes end before the sketch does (an empty slice included).
    #[error("sketch bytes end early")]
    Truncated,
    /// The leading format byte is not one this build reads.
    #[error(
        "sketch format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u8),
    /// The bytes hold another kind of sketch, or something that is not a sketch at all.
    #[error("expected a {expected} sketch, found kind tag {found}")]
    WrongKind {
        /// The kind the caller asked for.
        expected: &'static str,
        /// The kind tag found in the bytes.
        found: u8,
    },
    /// The bytes are framed correctly but describe an impossible sketch.
    #[error("corrupt sketch: {0}")]
    Corrupt(&'static str),
    /// A complete sketch is followed by more bytes.
    #[error("{0} unexpected bytes after the end of the sketch")]
    TrailingBytes(usize),
    /// NaN and ±infinity have no bucket: they are rejected rather than silently dropped, so a
    /// caller can decide whether to skip the row or fail the statement.
    #[error("cannot record {0} in a quantile sketch: only finite values are accepted")]
    NonFinite(f64),
}
