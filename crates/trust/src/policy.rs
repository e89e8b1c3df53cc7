//! Which bundles and kernel modules hotsplice accepts: signed by a trusted key, or explicitly
//! allowed unsigned.

use std::path::{Path, PathBuf};

use hotsplice_bundle::Sealed;
use hotsplice_bundle::signature::{PublicKey, Untrusted, verify, verify_detached};

use crate::file::read_regular;
use crate::keys::{KeyError, trusted_keys};

/// The largest detached signature read.
const MAX_SIGNATURE: u64 = 1 << 20;

/// The trust policy of one command: where the trusted keys are, and whether unsigned or
/// unverifiable input is accepted anyway (`--allow-unsigned`).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The trusted-keys directory.
    pub trust_dir: &'a Path,
    /// Accept what no trusted key vouches for (said so in [`Signer::Unverified`]).
    pub allow_unsigned: bool,
}

/// Who vouches for an accepted bundle or module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// The trusted key (its id) whose signature verifies.
    Key(String),
    /// Nothing verified, accepted because the policy allows unsigned input: why not.
    Unverified(String),
}

impl std::fmt::Display for Signer {
    /// The key id, or `unverified (WHY; --allow-unsigned)`: what the audit log records.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Key(id) => f.write_str(id),
            Signer::Unverified(why) => write!(f, "unverified ({why}; --allow-unsigned)"),
        }
    }
}

/// Why a kernel module's detached signature is not enough.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModuleUntrusted {
    /// No readable signature file.
    NoSignature {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The file is not a hotsplice signature.
    NotASignature {
        /// The file.
        path: PathBuf,
    },
    /// Signed, but by no trusted key (the ids of the signing keys).
    UnknownSigners(Vec<String>),
    /// A signature by a trusted key does not verify (the key id, or why).
    BadSignature(String),
}

impl std::fmt::Display for ModuleUntrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleUntrusted::NoSignature { path } => {
                write!(f, "it has no signature ({} not found)", path.display())
            }
            ModuleUntrusted::NotASignature { path } => {
                write!(f, "{} is not a hotsplice signature", path.display())
            }
            ModuleUntrusted::UnknownSigners(ids) => write!(
                f,
                "it is signed by {}, which is not a trusted key",
                ids.join(", ")
            ),
            ModuleUntrusted::BadSignature(id) => write!(
                f,
                "its signature by {id} does not match the module (modified after signing?)"
            ),
        }
    }
}

/// Why input is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The trusted keys cannot be used (and unsigned input is not allowed).
    #[error(
        "cannot use the trusted keys (create {} with root-owned *.pub files, or pass --allow-unsigned)",
        dir.display()
    )]
    Keys {
        /// The trusted-keys directory.
        dir: PathBuf,
        /// What is wrong with it.
        #[source]
        source: KeyError,
    },
    /// No trusted key vouches for the bundle.
    #[error(
        "{why}; trusted keys: {} — refusing to apply (sign it with `hotsplice sign`, trust the key, or pass --allow-unsigned)",
        dir.display()
    )]
    Bundle {
        /// The trusted-keys directory.
        dir: PathBuf,
        /// Why its signatures are not enough.
        why: Untrusted,
    },
    /// No trusted key vouches for the kernel module.
    #[error(
        "{}: {why}; trusted keys: {} — refusing to load it into the kernel (sign it with `hotsplice sign`, trust the key, or pass --allow-unsigned)",
        module.display(),
        dir.display()
    )]
    Module {
        /// The module file.
        module: PathBuf,
        /// The trusted-keys directory.
        dir: PathBuf,
        /// Why its signature is not enough.
        why: ModuleUntrusted,
    },
}

/// Where a file's detached signature is: `FILE.hsig`.
pub fn detached_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".hsig");
    PathBuf::from(name)
}

impl Policy<'_> {
    /// The trusted keys; with `allow_unsigned`, an unusable directory only means nothing can
    /// be verified.
    fn keys(&self) -> Result<Vec<PublicKey>, TrustError> {
        match trusted_keys(self.trust_dir) {
            Ok(keys) => Ok(keys),
            Err(_) if self.allow_unsigned => Ok(Vec::new()),
            Err(source) => Err(TrustError::Keys {
                dir: self.trust_dir.to_path_buf(),
                source,
            }),
        }
    }

    /// Who vouches for a bundle: the trusted key whose signature on its content verifies.
    pub fn accept_bundle(&self, sealed: &Sealed) -> Result<Signer, TrustError> {
        let keys = self.keys()?;
        match verify(sealed, &keys) {
            Ok(id) => Ok(Signer::Key(id)),
            Err(why) if self.allow_unsigned => Ok(Signer::Unverified(why.to_string())),
            Err(why) => Err(TrustError::Bundle {
                dir: self.trust_dir.to_path_buf(),
                why,
            }),
        }
    }

    /// Who vouches for a kernel module (`bytes`, read from `module`): the trusted key whose
    /// detached signature — `signature`, by default [`detached_path`] of the module — verifies.
    pub fn accept_module(
        &self,
        module: &Path,
        bytes: &[u8],
        signature: Option<&Path>,
    ) -> Result<Signer, TrustError> {
        let path = signature.map_or_else(|| detached_path(module), Path::to_path_buf);
        let why = match read_regular(&path, MAX_SIGNATURE) {
            Err(_) => ModuleUntrusted::NoSignature { path },
            Ok(text) => {
                let keys = self.keys()?;
                match verify_detached(bytes, &String::from_utf8_lossy(&text), &keys) {
                    Ok(id) => return Ok(Signer::Key(id)),
                    Err(Untrusted::Unsigned) => ModuleUntrusted::NotASignature { path },
                    Err(Untrusted::UnknownSigners(ids)) => ModuleUntrusted::UnknownSigners(ids),
                    Err(Untrusted::BadSignature(id)) => ModuleUntrusted::BadSignature(id),
                }
            }
        };
        if self.allow_unsigned {
            return Ok(Signer::Unverified(why.to_string()));
        }
        Err(TrustError::Module {
            module: module.to_path_buf(),
            dir: self.trust_dir.to_path_buf(),
            why,
        })
    }
}
