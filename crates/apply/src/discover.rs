//! Finding the processes a bundle is for, across the system: every process that maps the
//! bundle's file — found by build-id, or by a file the user names (its device and inode, or a
//! file that was at that path and has since been deleted or replaced, as after a package
//! upgrade) — including processes in other PID and mount namespaces (containers). Each is
//! classified: the bundle's build of the file, or another version (skipped).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hotsplice_bundle::{Bundle, hex};
use hotsplice_ptrace::{Mapping, Namespaces, all_pids, mapped_head, maps_of, namespaces_of};

use crate::Error;

/// How to find the processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// Every process mapping a file with the bundle's build-id.
    BuildId,
    /// Every process mapping this file, or a file that was at this path (since deleted or
    /// replaced on disk, or the same path in another mount namespace).
    File(PathBuf),
    /// As [`Select::File`], for a bundle installed for that file: a process that maps the
    /// build the file had when the bundle was installed (`build_id`) is the bundle's target
    /// too, even when the bundle was built elsewhere (from the same source, so another
    /// build-id: run-pre matching at apply proves the code the same). Another build — the
    /// fixed one after an upgrade — is still skipped.
    Installed {
        /// The file.
        path: PathBuf,
        /// Its build-id when the bundle was installed.
        build_id: Option<String>,
    },
}

/// The build-id of an ELF file on disk (hex), if it has one.
pub fn file_build_id(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 << 10)
        .read_to_end(&mut head)
        .ok()?;
    hotsplice_matcher::build_id(&head).map(|b| hex::encode(&b))
}

/// What a found process maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// The file the bundle was built from (same build-id), or — for a bundle without one —
    /// a file that run-pre matching will judge.
    Target,
    /// Another version of the file (another build-id): not patched.
    Other {
        /// Its build-id, if it has one.
        build_id: Option<String>,
    },
}

/// A process that maps the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its pid (in hotsplice's PID namespace).
    pub pid: i32,
    /// The file as its memory map names it (`... (deleted)` when deleted or replaced).
    pub mapped: String,
    /// The file was deleted or replaced on disk since the process mapped it.
    pub deleted: bool,
    /// Its namespaces.
    pub namespaces: Namespaces,
    /// Which version of the file it runs.
    pub version: Version,
}

/// `makedev`'s inverse, for `st_dev` (Linux encoding).
fn major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// The build-id of a mapped file (cached by device and inode).
fn mapped_build_id(
    pid: i32,
    mapping: &Mapping,
    cache: &mut HashMap<((u32, u32), u64), Option<String>>,
) -> Option<String> {
    cache
        .entry((mapping.dev, mapping.inode))
        .or_insert_with(|| {
            let first = Mapping {
                offset: 0,
                ..mapping.clone()
            };
            let head = mapped_head(pid, &first, 64 << 10)?;
            hotsplice_matcher::build_id(&head).map(|b| hex::encode(&b))
        })
        .clone()
}

/// A file named by the user, as processes' memory maps show it.
struct FileId {
    path: PathBuf,
    dev: (u32, u32),
    inode: u64,
}

impl FileId {
    fn of(path: &Path) -> Result<FileId, Error> {
        let meta = std::fs::metadata(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(FileId {
            path: path.to_path_buf(),
            dev: major_minor(meta.dev()),
            inode: meta.ino(),
        })
    }

    /// The file at `path`, or — when nothing is there any more (deleted, or replaced by an
    /// upgrade since) — the path alone, which matches mappings by name only.
    fn of_or_path(path: &Path) -> FileId {
        FileId::of(path).unwrap_or(FileId {
            path: path.to_path_buf(),
            dev: (u32::MAX, u32::MAX),
            inode: 0,
        })
    }

    /// Whether a mapping (`plain`: its path without ` (deleted)`) is of this file: the same
    /// device and inode, or a file that was at the same path.
    fn is(&self, m: &Mapping, plain: &str) -> bool {
        (m.dev == self.dev && m.inode == self.inode) || Path::new(plain) == self.path
    }
}

/// Those of `pids` that map `path` — by the rule of [`Select::File`], whatever version of the
/// file they map. When nothing is at `path` any more, by the path alone (a deleted file).
pub fn mapping_file(path: &Path, pids: &[i32]) -> Vec<i32> {
    let file = FileId::of_or_path(path);
    pids.iter()
        .copied()
        .filter(|&pid| {
            maps_of(pid).is_some_and(|maps| {
                maps.iter().any(|m| {
                    m.inode != 0
                        && m.path
                            .as_deref()
                            .is_some_and(|p| file.is(m, p.strip_suffix(" (deleted)").unwrap_or(p)))
                })
            })
        })
        .collect()
}

/// Every process that maps the bundle's file, as `select` says. Hotsplice itself is left out.
pub fn discover(select: &Select, bundle: &Bundle) -> Result<Vec<Found>, Error> {
    discover_in(select, bundle, &all_pids())
}

/// [`discover`] among the given processes only.
pub fn discover_in(select: &Select, bundle: &Bundle, pids: &[i32]) -> Result<Vec<Found>, Error> {
    let want_id = bundle.target.build_id.clone();
    let also_id = match select {
        Select::Installed { build_id, .. } => build_id.clone(),
        _ => None,
    };
    let file = match select {
        Select::BuildId if want_id.is_none() => {
            return Err(Error::NoBuildId {
                target: bundle.target.path.clone(),
            });
        }
        Select::BuildId => None,
        Select::File(path) => Some(FileId::of(path)?),
        // The installed file may be gone since (an upgrade): its old mappings still count.
        Select::Installed { path, .. } => Some(FileId::of_or_path(path)),
    };
    let me = std::process::id() as i32;
    let mut cache = HashMap::new();
    let mut out = Vec::new();
    for &pid in pids {
        if pid == me {
            continue;
        }
        let Some(maps) = maps_of(pid) else { continue };
        // The first mapping of each file, in order.
        let mut seen: Vec<((u32, u32), u64)> = Vec::new();
        for m in maps.iter().filter(|m| m.inode != 0) {
            let Some(path) = m.path.as_deref() else {
                continue;
            };
            if seen.contains(&(m.dev, m.inode)) {
                continue;
            }
            seen.push((m.dev, m.inode));
            let plain = path.strip_suffix(" (deleted)").unwrap_or(path);
            let relevant = file.as_ref().is_none_or(|f| f.is(m, plain));
            if !relevant
                || !maps
                    .iter()
                    .any(|x| x.inode == m.inode && x.dev == m.dev && x.exec)
            {
                continue;
            }
            let build_id = mapped_build_id(pid, m, &mut cache);
            let version = match (&want_id, &build_id) {
                (Some(want), Some(have)) if want == have => Version::Target,
                (_, Some(have)) if also_id.as_deref() == Some(have.as_str()) => Version::Target,
                (None, _) => Version::Target,
                _ => Version::Other {
                    build_id: build_id.clone(),
                },
            };
            if file.is_none() && version != Version::Target {
                continue;
            }
            out.push(Found {
                pid,
                mapped: path.to_string(),
                deleted: path.ends_with(" (deleted)"),
                namespaces: namespaces_of(pid),
                version,
            });
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_decode_like_proc_maps() {
        // makedev(0xfd, 1) and makedev(259, 65539).
        assert_eq!(major_minor(0xfd01), (0xfd, 1));
        let dev = (259u64 << 8) | ((65539u64 & !0xff) << 12) | (65539 & 0xff);
        assert_eq!(major_minor(dev), (259, 65539));
    }
}
