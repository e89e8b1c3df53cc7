//! Source trees: content identifiers and copies.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Directories never part of a source tree's identity.
const SKIPPED: &[&str] = &[".git", ".hg", ".svn", ".pc"];

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if SKIPPED.iter().any(|s| entry.file_name() == *s) {
                continue;
            }
            walk(root, &path, out)?;
        } else if kind.is_file() || kind.is_symlink() {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

/// The files of a tree, relative to it, sorted.
pub fn files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// SHA-256 (hex) over every file's relative path and contents (symlinks: their target).
pub fn content_id(root: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    for rel in files(root)? {
        let path = root.join(&rel);
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0u8]);
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            hasher.update(b"link:");
            hasher.update(std::fs::read_link(&path)?.to_string_lossy().as_bytes());
        } else {
            let data = std::fs::read(&path)?;
            hasher.update((data.len() as u64).to_le_bytes());
            hasher.update(&data);
        }
        hasher.update([0u8]);
    }
    Ok(hotsplice_bundle::hex::encode(&hasher.finalize()))
}

/// Copies `from` to `to` preserving modes and times (so `make` sees what it built as up to
/// date), with reflinks where the file system has them.
pub fn copy(from: &Path, to: &Path) -> io::Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cp -a {} {} failed ({status})",
            from.display(),
            to.display()
        )))
    }
}

/// Removes a directory tree if it exists.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `path` (as given to a command run in `directory`) relative to the tree at `root`,
/// normalised lexically (`a/./b/../c` → `a/c`); `None` when it lies outside the tree.
pub fn relative(root: &Path, directory: &str, path: &str) -> Option<String> {
    let joined = Path::new(directory).join(path);
    let mut parts: Vec<String> = Vec::new();
    for c in joined.components() {
        match c {
            std::path::Component::RootDir | std::path::Component::Prefix(_) => parts.clear(),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
        }
    }
    let absolute = PathBuf::from("/").join(parts.join("/"));
    absolute
        .strip_prefix(root)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
}

/// Whether two files have the same contents (a missing file equals only a missing file).
pub fn same_contents(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

/// Files under `root` (tree-relative) modified at or after `since`.
pub fn modified_since(root: &Path, since: std::time::SystemTime) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for rel in files(root)? {
        let meta = std::fs::symlink_metadata(root.join(&rel))?;
        if meta.file_type().is_file() && meta.modified().is_ok_and(|m| m >= since) {
            out.push(rel);
        }
    }
    Ok(out)
}

/// Makes the tree at `to` identical to the one at `from`, copying only the files whose type,
/// size or modification time differ (with their times and modes) and removing the files
/// `from` does not have. For two trees that were identical before a build changed one of
/// them, this costs a walk of both instead of a full copy.
pub fn sync(from: &Path, to: &Path) -> io::Result<()> {
    if !to.is_dir() {
        return copy(from, to);
    }
    let listing =
        |root: &Path| -> io::Result<std::collections::BTreeMap<PathBuf, std::fs::Metadata>> {
            let mut out = std::collections::BTreeMap::new();
            let mut stack = vec![PathBuf::new()];
            while let Some(rel) = stack.pop() {
                for entry in std::fs::read_dir(root.join(&rel))? {
                    let entry = entry?;
                    let path = rel.join(entry.file_name());
                    let meta = entry.metadata()?;
                    if meta.is_dir() {
                        stack.push(path.clone());
                    }
                    out.insert(path, meta);
                }
            }
            Ok(out)
        };
    let source = listing(from)?;
    let target = listing(to)?;
    // Remove what `from` does not have (deepest first), or has as another kind of file.
    for (rel, meta) in target.iter().rev() {
        let keep = source
            .get(rel)
            .is_some_and(|m| m.is_dir() == meta.is_dir() && m.is_symlink() == meta.is_symlink());
        if !keep {
            let path = to.join(rel);
            if meta.is_dir() {
                std::fs::remove_dir_all(&path).or_else(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            } else {
                std::fs::remove_file(&path).or_else(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            }
        }
    }
    let mut changed = Vec::new();
    for (rel, meta) in &source {
        if meta.is_dir() {
            if !to.join(rel).is_dir() {
                std::fs::create_dir_all(to.join(rel))?;
            }
            continue;
        }
        let same = target.get(rel).is_some_and(|t| {
            t.is_symlink() == meta.is_symlink()
                && t.len() == meta.len()
                && t.modified().ok() == meta.modified().ok()
                && t.permissions() == meta.permissions()
        });
        if !same {
            changed.push(rel.clone());
        }
    }
    // `cp -a` per batch keeps modes, times and symlinks as the full copy does.
    for batch in changed.chunks(200) {
        for rel in batch {
            let dest = to.join(rel);
            if dest.symlink_metadata().is_ok() {
                std::fs::remove_file(&dest)?;
            }
        }
        let status = Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg("--parents")
            .arg("--")
            .args(batch)
            .arg(to)
            .current_dir(from)
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "cp -a --parents into {} failed ({status})",
                to.display()
            )));
        }
    }
    Ok(())
}
