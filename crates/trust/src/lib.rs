//! hotsplice's trust policy: what may be applied to running programs or loaded into the
//! kernel.
//!
//! - [`trusted_keys`] reads the trusted-keys directory (`/etc/hotsplice/trusted-keys`,
//!   `*.pub`) after checking that it, every directory above it and each key belong to root
//!   (or to the user running hotsplice) and are writable by no one else; a typed [`KeyError`]
//!   says what is not.
//! - A [`Policy`] (the directory, and whether unsigned input is explicitly allowed) accepts a
//!   bundle ([`Policy::accept_bundle`]) or a kernel module with its detached signature
//!   ([`Policy::accept_module`]) and says who vouches for it ([`Signer`]), or refuses it with a
//!   [`TrustError`].
//! - [`read_regular`] reads a file someone else may have placed without blocking on a FIFO or
//!   device, up to a cap.
//!
//! Signing, key generation and the audit log are the binary's; the signature arithmetic is
//! `hotsplice_bundle::signature`'s.
//!
//! ```no_run
//! use std::path::Path;
//! use hotsplice_trust::{DEFAULT_TRUST_DIR, Policy, read_regular};
//! let bytes = read_regular(Path::new("fix.hsp"), 256 << 20).unwrap();
//! let sealed = hotsplice_bundle::read(&bytes).unwrap();
//! let policy = Policy { trust_dir: Path::new(DEFAULT_TRUST_DIR), allow_unsigned: false };
//! match policy.accept_bundle(&sealed) {
//!     Ok(signer) => println!("signed by {signer}"),
//!     Err(refused) => eprintln!("{refused}"),
//! }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod file;
mod keys;
mod policy;

pub use file::{ReadError, read_regular};
pub use keys::{KeyError, MAX_KEY, trusted_keys};
pub use policy::{ModuleUntrusted, Policy, Signer, TrustError, detached_path};

/// The default directory of trusted public keys.
pub const DEFAULT_TRUST_DIR: &str = "/etc/hotsplice/trusted-keys";
