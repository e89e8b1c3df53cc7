//! The hotsplice bundle (`.hsp`): a live patch on disk — versioned, hashed, validated.
//!
//! A [`Bundle`] says what a patch applies to ([`TargetIdentity`]), what it loads
//! ([`Piece`]s of code and data with [`Reloc`]ations) and redirects ([`Replacement`]s, each with
//! the pre-build code that run-pre matching checks against the running program), which
//! statics it binds ([`Binding`]), why it may be refused ([`Refusal`]) and where it came from
//! ([`Provenance`]). [`write`] seals a bundle in its envelope (a content hash, room for
//! signatures); [`read`] checks the envelope, the hash and every structural invariant, and
//! returns a typed [`Error`] — never a panic — for anything malformed.
//!
//! The format is documented in `docs/bundle-format.md`.
//!
//! ```no_run
//! let bytes = std::fs::read("fix.hsp").unwrap();
//! let sealed = hotsplice_bundle::read(&bytes).unwrap();
//! println!("{} for {}", sealed.bundle.id, sealed.bundle.target.path);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod convert;
mod envelope;
pub mod hex;
mod model;
pub mod signature;
mod validate;

pub use envelope::{Envelope, FORMAT_VERSION, Sealed, Signature, read, sha256_hex, write};
pub use model::*;
pub use signature::{add_signature, write_signed};

/// Why a bundle cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file does not start with the bundle magic line.
    #[error("not a hotsplice bundle (no `hotsplice-bundle N` first line)")]
    NotABundle,
    /// A bundle of a format version this hotsplice does not read.
    #[error(
        "bundle format version {0} is not supported (this hotsplice reads versions 1 to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    /// The file ends early.
    #[error("truncated bundle: {0}")]
    Truncated(String),
    /// The content does not match the envelope's hash: corrupted or tampered with.
    #[error(
        "bundle content does not match its hash (expected {expected}, found {actual}): corrupted or modified"
    )]
    HashMismatch {
        /// The hash in the envelope.
        expected: String,
        /// The hash of the content.
        actual: String,
    },
    /// The JSON does not parse into the format.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// A key file is malformed.
    #[error("key: {0}")]
    Key(String),
    /// Parsed, but an invariant does not hold (an index or offset out of range).
    #[error("invalid bundle: {0}")]
    Invalid(String),
}
