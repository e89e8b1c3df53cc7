//! The trusted-keys directory: `*.pub` files, trusted only when the directory, every directory
//! above it and each key file belong to root (or to the user running hotsplice) and are
//! writable by no one else — sshd's StrictModes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hotsplice_bundle::signature::PublicKey;

use crate::file::{ReadError, read_regular};

/// The largest key file read.
pub const MAX_KEY: u64 = 4096;

/// Why the trusted keys cannot be used. Each variant names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A path could not be examined or listed.
    #[error("{}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Owned by someone other than root and the user running hotsplice.
    #[error("{} belongs to uid {uid}, not root: refusing to trust keys from it", path.display())]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Writable by group or others (and not a sticky directory).
    #[error(
        "{} is writable by group or others (mode {mode:o}): refusing to trust keys from it",
        path.display()
    )]
    Writable {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key that is a symbolic link to somewhere not as safe as the directory.
    #[error("{} is a link to {}", path.display(), target.display())]
    Link {
        /// The key's path.
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
        /// What is wrong there.
        #[source]
        source: Box<KeyError>,
    },
    /// A key file that cannot be read safely.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A key file that is not a public key.
    #[error("{}", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: hotsplice_bundle::Error,
    },
    /// The trusted-keys directory itself (or a directory above it) is not safe.
    #[error("trusted-keys directory {}", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<KeyError>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a path may hold trusted keys: owned by root (or by us), writable by no one else.
fn check_owner(path: &Path) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(KeyError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.permissions().mode();
    // A sticky directory (like /tmp) lets no one rename or remove entries of others.
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(KeyError::Writable {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Checks a path and every directory above it: a writable parent would let someone swap what
/// it holds.
fn check_path(path: &Path) -> Result<(), KeyError> {
    let real = path.canonicalize().map_err(io(path))?;
    for ancestor in real.ancestors() {
        check_owner(ancestor)?;
    }
    Ok(())
}

/// Reads one trusted key: a regular file of at most [`MAX_KEY`] bytes (never a FIFO or
/// device, which could block or feed anything), where it really is (a symbolic link is
/// followed only when every directory of its target is as safe as the trusted-keys directory).
fn read_key(path: &Path) -> Result<PublicKey, KeyError> {
    let real = path.canonicalize().map_err(io(path))?;
    if real != path {
        check_path(&real).map_err(|source| KeyError::Link {
            path: path.to_path_buf(),
            target: real.clone(),
            source: Box::new(source),
        })?;
    }
    check_owner(&real)?;
    let bytes = read_regular(&real, MAX_KEY)?;
    PublicKey::from_text(&String::from_utf8_lossy(&bytes)).map_err(|source| KeyError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

/// The trusted public keys of a directory (`*.pub`, in name order), after checking its
/// permissions, those of every directory above it and of each key.
pub fn trusted_keys(dir: &Path) -> Result<Vec<PublicKey>, KeyError> {
    check_path(dir).map_err(|source| KeyError::Directory {
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })?;
    let dir = dir.canonicalize().map_err(io(dir))?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        .collect();
    paths.sort();
    paths.iter().map(|path| read_key(path)).collect()
}
