//! The file around the content: a magic line, an envelope, and the content JSON.
//!
//! ```text
//! hotsplice-bundle 4\n
//! {"content_sha256":"…","content_length":N,"signatures":[]}\n
//! <N bytes: the Bundle as JSON>
//! ```
//! The hash covers the exact content bytes, so no canonical JSON is needed; signatures sign
//! that hash, so they can be added to a bundle without touching its content.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Bundle, Error, hex, validate};

/// The bundle format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 4;

const MAGIC: &str = "hotsplice-bundle";

/// A signature over the content hash (see [`crate::signature`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Algorithm, e.g. `ed25519`.
    pub algorithm: String,
    /// Identifier of the signing key.
    pub key_id: String,
    /// The signature, hex.
    pub signature: String,
}

/// The envelope line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// SHA-256 of the content bytes, hex.
    pub content_sha256: String,
    /// Length of the content in bytes.
    pub content_length: u64,
    /// Signatures over the content hash.
    pub signatures: Vec<Signature>,
}

/// A bundle read from bytes, with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The envelope (hash, signatures).
    pub envelope: Envelope,
    /// The validated content.
    pub bundle: Bundle,
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes))
}

/// Serialises a bundle into the file format, unsigned.
pub fn write(bundle: &Bundle) -> Result<Vec<u8>, Error> {
    write_with(bundle, |_| Vec::new())
}

/// Serialises a bundle into the file format with the signatures `sign` makes of its content
/// hash.
pub(crate) fn write_with(
    bundle: &Bundle,
    sign: impl FnOnce(&str) -> Vec<Signature>,
) -> Result<Vec<u8>, Error> {
    validate::check(bundle)?;
    let content = serde_json::to_vec(bundle).map_err(|e| Error::Malformed(e.to_string()))?;
    let content_sha256 = sha256_hex(&content);
    let signatures = sign(&content_sha256);
    let envelope = Envelope {
        content_sha256,
        content_length: content.len() as u64,
        signatures,
    };
    let mut out = format!("{MAGIC} {FORMAT_VERSION}\n").into_bytes();
    out.extend(serde_json::to_vec(&envelope).map_err(|e| Error::Malformed(e.to_string()))?);
    out.push(b'\n');
    out.extend(content);
    Ok(out)
}

fn line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

/// Reads and validates a bundle file. Never panics; every defect is a typed error.
pub fn read(bytes: &[u8]) -> Result<Sealed, Error> {
    let (magic, rest) = line(bytes).ok_or(Error::NotABundle)?;
    let magic = std::str::from_utf8(magic).map_err(|_| Error::NotABundle)?;
    let version = magic
        .strip_prefix(MAGIC)
        .and_then(|v| v.strip_prefix(' '))
        .ok_or(Error::NotABundle)?;
    let version: u32 = version.parse().map_err(|_| Error::NotABundle)?;
    // Version 1 is version 2 without `referenced`, version 2 is version 3 without `hooks`,
    // version 3 is version 4 without pieces' `frames` (they then read as empty).
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnsupportedVersion(version));
    }
    let (envelope, content) = line(rest).ok_or(Error::Truncated("no envelope line".into()))?;
    let envelope: Envelope =
        serde_json::from_slice(envelope).map_err(|e| Error::Malformed(format!("envelope: {e}")))?;
    if content.len() as u64 != envelope.content_length {
        return Err(Error::Truncated(format!(
            "content is {} bytes, the envelope says {}",
            content.len(),
            envelope.content_length
        )));
    }
    let actual = sha256_hex(content);
    if actual != envelope.content_sha256 {
        return Err(Error::HashMismatch {
            expected: envelope.content_sha256,
            actual,
        });
    }
    let bundle: Bundle =
        serde_json::from_slice(content).map_err(|e| Error::Malformed(format!("content: {e}")))?;
    validate::check(&bundle)?;
    Ok(Sealed { envelope, bundle })
}

/// Rewrites the envelope of a bundle file with `change`, keeping its content byte for byte.
pub(crate) fn rewrite_envelope(
    bytes: &[u8],
    change: impl FnOnce(&mut Envelope),
) -> Result<Vec<u8>, Error> {
    let sealed = read(bytes)?;
    let (magic, rest) = line(bytes).ok_or(Error::NotABundle)?;
    let (_, content) = line(rest).ok_or(Error::Truncated("no envelope line".into()))?;
    let mut envelope = sealed.envelope;
    change(&mut envelope);
    let mut out = magic.to_vec();
    out.push(b'\n');
    out.extend(serde_json::to_vec(&envelope).map_err(|e| Error::Malformed(e.to_string()))?);
    out.push(b'\n');
    out.extend(content);
    Ok(out)
}
