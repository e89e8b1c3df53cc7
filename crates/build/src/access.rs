//! Which files a build read, from access times.
//!
//! Before a build, every file of the build tree gets an access time of 0 (its modification
//! time is kept); afterwards, a file whose access time moved was read. Linux updates the
//! access time on a read when it is older than the modification time (`relatime`, the
//! default), so this costs nothing during the build. [`supported`] checks the file system
//! does it (`noatime` mounts do not); without it, nothing is concluded from reads.

use std::fs::{File, FileTimes};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

use crate::tree;

fn reset(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    file.set_times(FileTimes::new().set_accessed(UNIX_EPOCH))
}

/// Whether reading a file in `dir` updates its access time.
pub fn supported(dir: &Path) -> bool {
    let probe = dir.join(".hotsplice-atime-probe");
    let check = || -> io::Result<bool> {
        std::fs::write(&probe, b"probe")?;
        reset(&probe)?;
        if std::fs::metadata(&probe)?.atime() != 0 {
            return Ok(false);
        }
        let mut buf = Vec::new();
        File::open(&probe)?.read_to_end(&mut buf)?;
        Ok(std::fs::metadata(&probe)?.atime() != 0)
    };
    let result = check().unwrap_or(false);
    let _ = std::fs::remove_file(&probe);
    result
}

/// Sets the access time of every regular file under `root` to 0.
pub fn reset_tree(root: &Path) -> io::Result<()> {
    for rel in tree::files(root)? {
        let path = root.join(&rel);
        if std::fs::symlink_metadata(&path)?.file_type().is_file() {
            reset(&path)?;
        }
    }
    Ok(())
}

/// Sets the access time of the given files (tree-relative) to 0; missing files are skipped.
pub fn reset_files(root: &Path, files: &[std::path::PathBuf]) -> io::Result<()> {
    for rel in files {
        let path = root.join(rel);
        if path.is_file() {
            reset(&path)?;
        }
    }
    Ok(())
}

/// Whether a file (tree-relative) was read since its access time was reset.
pub fn was_read(root: &Path, rel: &Path) -> Option<bool> {
    let meta = std::fs::metadata(root.join(rel)).ok()?;
    Some(meta.atime() != 0)
}

/// The regular files under `root` read since [`reset_tree`], tree-relative, sorted.
pub fn read_files(root: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for rel in tree::files(root)? {
        let meta = std::fs::symlink_metadata(root.join(&rel))?;
        if meta.file_type().is_file() && meta.atime() != 0 {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(out)
}
