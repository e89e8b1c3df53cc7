//! Signing bundles (ed25519) and checking them against trusted keys.
//!
//! A signature covers the bundle's content hash with a domain prefix
//! (`hotsplice-bundle-v1:<sha256 hex>`), so it binds exactly the content the envelope names.
//! Keys are small text files: `hotsplice-ed25519-secret v1` or `hotsplice-ed25519-public v1`
//! followed by the key in hex; a key is known by its id, the first 16 hex digits of the
//! SHA-256 of the public key.

use ed25519_dalek::{Signature as Ed25519Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::{Bundle, Error, Sealed, Signature, hex, sha256_hex};

const SECRET_HEADER: &str = "hotsplice-ed25519-secret v1";
const PUBLIC_HEADER: &str = "hotsplice-ed25519-public v1";

/// A public key allowed to sign bundles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

/// A secret key for signing bundles.
pub struct SecretKey {
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public().id())
    }
}

impl PublicKey {
    /// The key id: 16 hex digits of the SHA-256 of the public key.
    pub fn id(&self) -> String {
        sha256_hex(self.key.as_bytes())[..16].to_string()
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_HEADER}\n{}\n", hex::encode(self.key.as_bytes()))
    }

    /// Parses a public key file.
    pub fn from_text(text: &str) -> Result<PublicKey, Error> {
        let bytes = key_body(text, PUBLIC_HEADER)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| Error::Key(format!("not a valid ed25519 public key: {e}")))?;
        Ok(PublicKey { key })
    }
}

impl SecretKey {
    /// A new random key (from the operating system's random source).
    pub fn generate() -> Result<SecretKey, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Key(format!("no randomness: {e}")))?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// The key file's text (keep it secret: mode 0600).
    pub fn to_text(&self) -> String {
        format!("{SECRET_HEADER}\n{}\n", hex::encode(&self.key.to_bytes()))
    }

    /// Parses a secret key file.
    pub fn from_text(text: &str) -> Result<SecretKey, Error> {
        let bytes = key_body(text, SECRET_HEADER)?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&bytes),
        })
    }
}

fn key_body(text: &str, header: &str) -> Result<[u8; 32], Error> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(header) {
        return Err(Error::Key(format!(
            "not a hotsplice key file (expected `{header}`)"
        )));
    }
    let body = lines.next().map(str::trim).unwrap_or("");
    hex::decode(body)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::Key("the key is not 32 bytes of hex".to_string()))
}

fn message(content_sha256: &str) -> Vec<u8> {
    format!("hotsplice-bundle-v1:{content_sha256}").into_bytes()
}

/// Serialises a bundle into the file format, signed by `key` when given.
pub fn write_signed(bundle: &Bundle, key: Option<&SecretKey>) -> Result<Vec<u8>, Error> {
    crate::envelope::write_with(bundle, |content_sha256| {
        key.map(|k| vec![sign(content_sha256, k)])
            .unwrap_or_default()
    })
}

/// Adds a signature by `key` to a bundle file, keeping its content byte for byte.
pub fn add_signature(bytes: &[u8], key: &SecretKey) -> Result<Vec<u8>, Error> {
    crate::envelope::rewrite_envelope(bytes, |envelope| {
        let signature = sign(&envelope.content_sha256, key);
        envelope.signatures.retain(|s| s.key_id != signature.key_id);
        envelope.signatures.push(signature);
    })
}

/// The signature of a sealed bundle's content by `key`.
pub fn sign(content_sha256: &str, key: &SecretKey) -> Signature {
    let signature = key.key.sign(&message(content_sha256));
    Signature {
        algorithm: "ed25519".to_string(),
        key_id: key.public().id(),
        signature: hex::encode(&signature.to_bytes()),
    }
}

/// Why a bundle's signatures are not enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    /// No signature at all.
    Unsigned,
    /// Signed, but by no trusted key (the ids of the signing keys).
    UnknownSigners(Vec<String>),
    /// A signature by a trusted key does not verify: the content was changed after signing.
    BadSignature(String),
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untrusted::Unsigned => write!(f, "the bundle is not signed"),
            Untrusted::UnknownSigners(ids) => write!(
                f,
                "the bundle is signed by {}, which is not a trusted key",
                ids.join(", ")
            ),
            Untrusted::BadSignature(id) => write!(
                f,
                "the signature by trusted key {id} does not match the bundle's content (modified after signing?)"
            ),
        }
    }
}

/// The id of the trusted key whose signature on `sealed` verifies.
pub fn verify(sealed: &Sealed, trusted: &[PublicKey]) -> Result<String, Untrusted> {
    if sealed.envelope.signatures.is_empty() {
        return Err(Untrusted::Unsigned);
    }
    let msg = message(&sealed.envelope.content_sha256);
    let mut unknown = Vec::new();
    for s in &sealed.envelope.signatures {
        let Some(key) = trusted.iter().find(|k| k.id() == s.key_id) else {
            unknown.push(s.key_id.clone());
            continue;
        };
        let Some(bytes) = hex::decode(&s.signature).and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return Err(Untrusted::BadSignature(s.key_id.clone()));
        };
        let signature = Ed25519Signature::from_bytes(&bytes);
        return match (s.algorithm.as_str(), key.key.verify(&msg, &signature)) {
            ("ed25519", Ok(())) => Ok(s.key_id.clone()),
            _ => Err(Untrusted::BadSignature(s.key_id.clone())),
        };
    }
    Err(Untrusted::UnknownSigners(unknown))
}

/// The first line of a detached signature file.
pub const DETACHED_HEADER: &str = "hotsplice-signature v1";

fn file_message(sha256: &str) -> Vec<u8> {
    format!("hotsplice-file-v1:{sha256}").into_bytes()
}

/// A detached signature of a file that is not a bundle (a kernel livepatch module), as the
/// text of its `.hsig` file: the header, the file's SHA-256, then one `KEY-ID SIGNATURE` line
/// per signer. `existing` (the text of the file's current `.hsig`, if any) keeps its other
/// signers when it covers the same content.
pub fn sign_detached(bytes: &[u8], key: &SecretKey, existing: Option<&str>) -> String {
    let sha = sha256_hex(bytes);
    let signature = key.key.sign(&file_message(&sha));
    let mut lines: Vec<String> = existing
        .and_then(|text| {
            let mut l = text.lines();
            (l.next() == Some(DETACHED_HEADER) && l.next() == Some(sha.as_str()))
                .then(|| l.map(str::to_string).collect::<Vec<_>>())
        })
        .unwrap_or_default();
    let id = key.public().id();
    lines.retain(|l| !l.starts_with(&id) && !l.trim().is_empty());
    lines.push(format!("{id} {}", hex::encode(&signature.to_bytes())));
    format!("{DETACHED_HEADER}\n{sha}\n{}\n", lines.join("\n"))
}

/// The id of the trusted key whose detached signature (`signature`: a `.hsig` file's text)
/// on `bytes` verifies.
pub fn verify_detached(
    bytes: &[u8],
    signature: &str,
    trusted: &[PublicKey],
) -> Result<String, Untrusted> {
    let mut lines = signature.lines();
    if lines.next() != Some(DETACHED_HEADER) {
        return Err(Untrusted::Unsigned);
    }
    let sha = sha256_hex(bytes);
    if lines.next() != Some(sha.as_str()) {
        return Err(Untrusted::BadSignature(
            "(the signature is for other content)".to_string(),
        ));
    }
    let msg = file_message(&sha);
    let mut unknown = Vec::new();
    for line in lines {
        let Some((id, sig)) = line.split_once(' ') else {
            continue;
        };
        let Some(key) = trusted.iter().find(|k| k.id() == id) else {
            unknown.push(id.to_string());
            continue;
        };
        let Some(raw) = hex::decode(sig.trim()).and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
            return Err(Untrusted::BadSignature(id.to_string()));
        };
        return match key.key.verify(&msg, &Ed25519Signature::from_bytes(&raw)) {
            Ok(()) => Ok(id.to_string()),
            Err(_) => Err(Untrusted::BadSignature(id.to_string())),
        };
    }
    if unknown.is_empty() {
        Err(Untrusted::Unsigned)
    } else {
        Err(Untrusted::UnknownSigners(unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_signatures_verify() {
        let secret = SecretKey::generate().unwrap();
        let again = SecretKey::from_text(&secret.to_text()).unwrap();
        assert_eq!(again.public(), secret.public());
        let public = PublicKey::from_text(&secret.public().to_text()).unwrap();
        let sig = sign(&"ab".repeat(32), &secret);
        let sealed = Sealed {
            envelope: crate::Envelope {
                content_sha256: "ab".repeat(32),
                content_length: 0,
                signatures: vec![sig.clone()],
            },
            bundle: crate::Bundle {
                id: "hs-000000000000".into(),
                target: crate::TargetIdentity {
                    path: "x".into(),
                    kind: crate::TargetKind::Executable,
                    build_id: None,
                    sha256: None,
                    size: None,
                },
                objects: Vec::new(),
                refusals: Vec::new(),
                warnings: Vec::new(),
                provenance: crate::Provenance {
                    diff_name: String::new(),
                    diff_sha256: String::new(),
                    source_id: String::new(),
                    compiler: String::new(),
                    build_command: String::new(),
                    objects: Vec::new(),
                    created_unix: 0,
                    hotsplice_version: String::new(),
                },
            },
        };
        assert_eq!(
            verify(&sealed, std::slice::from_ref(&public)),
            Ok(public.id())
        );
        let other = SecretKey::generate().unwrap().public();
        assert!(matches!(
            verify(&sealed, &[other]),
            Err(Untrusted::UnknownSigners(_))
        ));
        let mut changed = sealed.clone();
        changed.envelope.content_sha256 = "cd".repeat(32);
        assert!(matches!(
            verify(&changed, std::slice::from_ref(&public)),
            Err(Untrusted::BadSignature(_))
        ));
        let mut unsigned = sealed;
        unsigned.envelope.signatures.clear();
        assert_eq!(verify(&unsigned, &[public]), Err(Untrusted::Unsigned));
        assert!(SecretKey::from_text("nonsense").is_err());
    }

    #[test]
    fn detached_signatures_cover_exactly_the_file() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        let module = b"\x7fELF module bytes".to_vec();
        let once = sign_detached(&module, &a, None);
        assert_eq!(
            verify_detached(&module, &once, &[a.public()]),
            Ok(a.public().id())
        );
        let twice = sign_detached(&module, &b, Some(&once));
        assert_eq!(
            verify_detached(&module, &twice, &[b.public()]),
            Ok(b.public().id())
        );
        assert_eq!(
            verify_detached(&module, &twice, &[a.public()]),
            Ok(a.public().id())
        );
        let mut changed = module.clone();
        changed.push(0);
        assert!(matches!(
            verify_detached(&changed, &once, &[a.public()]),
            Err(Untrusted::BadSignature(_))
        ));
        let other = SecretKey::generate().unwrap().public();
        assert!(matches!(
            verify_detached(&module, &once, &[other]),
            Err(Untrusted::UnknownSigners(_))
        ));
        assert_eq!(
            verify_detached(&module, "garbage", &[a.public()]),
            Err(Untrusted::Unsigned)
        );
    }
}
