//! Applying a diff to a tree with GNU `patch` (its fuzz matters for real security patches),
//! at the one strip level rule every builder uses: the first of `-p1`, `-p0`, `-p2` whose dry
//! run succeeds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{FileDiff, is_c_like, with_line_directives};

/// The strip levels tried, in order.
pub const STRIP_LEVELS: [usize; 3] = [1, 0, 2];

/// Why a diff could not be applied. Each variant names the diff or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// `patch` refused it at every strip level (or failed applying it).
    #[error("{} does not apply to the source tree (is it for another version?):\n{output}", diff.display())]
    DoesNotApply {
        /// The diff file.
        diff: PathBuf,
        /// What `patch` said (at `-p1`, for a dry run).
        output: String,
    },
    /// Running `patch`, or reading or writing a patched file, failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The tree (running `patch`) or the file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` without its first `level` components: what `patch -pLEVEL` opens.
pub fn stripped(path: &str, level: usize) -> PathBuf {
    Path::new(path).components().skip(level).collect()
}

/// The strip level at which `diff` applies in `dir`: the first of [`STRIP_LEVELS`] whose
/// `patch --dry-run` succeeds. Nothing is written.
pub fn strip_level(dir: &Path, diff: &Path) -> Result<usize, ApplyError> {
    let mut first_output = String::new();
    for level in STRIP_LEVELS {
        let out = Command::new("patch")
            .arg(format!("-p{level}"))
            .args(["--dry-run", "--batch", "--forward", "--silent", "-i"])
            .arg(diff)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(io(dir))?;
        if out.status.success() {
            return Ok(level);
        }
        if level == STRIP_LEVELS[0] {
            first_output = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Err(ApplyError::DoesNotApply {
        diff: diff.to_path_buf(),
        output: first_output.trim().to_string(),
    })
}

/// Applies `diff` in `dir` with `patch` at its [`strip_level`] (no backup files). Returns the
/// level.
pub fn run_patch(dir: &Path, diff: &Path) -> Result<usize, ApplyError> {
    let level = strip_level(dir, diff)?;
    let out = Command::new("patch")
        .arg(format!("-p{level}"))
        .args([
            "--batch",
            "--forward",
            "--silent",
            "--no-backup-if-mismatch",
            "-i",
        ])
        .arg(diff)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(io(dir))?;
    if !out.status.success() {
        return Err(ApplyError::DoesNotApply {
            diff: diff.to_path_buf(),
            output: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    Ok(level)
}

/// Applies `diff` (parsed: `files`) in `dir` with [`run_patch`], then adds `#line` directives
/// ([`with_line_directives`]) to the C and C++ files it changed. Returns the files it leaves
/// in place (created or changed, not deleted), relative to `dir`.
pub fn apply(dir: &Path, diff: &Path, files: &[FileDiff]) -> Result<Vec<PathBuf>, ApplyError> {
    let level = run_patch(dir, diff)?;
    let mut patched = Vec::new();
    for file in files.iter().filter(|f| !f.deletes()) {
        let rel = stripped(&file.new_path, level);
        patched.push(rel.clone());
        if file.creates() || !is_c_like(&rel) {
            continue;
        }
        let path = dir.join(&rel);
        let Ok(content) = std::fs::read_to_string(&path) else {
            continue;
        };
        let updated = with_line_directives(&content, &file.hunks);
        if updated != content {
            std::fs::write(&path, updated).map_err(io(&path))?;
        }
    }
    Ok(patched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_leading_components() {
        assert_eq!(stripped("a/src/x.c", 1), Path::new("src/x.c"));
        assert_eq!(stripped("src/x.c", 0), Path::new("src/x.c"));
        assert_eq!(stripped("x/y/src/x.c", 2), Path::new("src/x.c"));
    }
}
