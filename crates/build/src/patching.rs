//! Applying a diff in the build tree: `patch` at `hotsplice-srcpatch`'s strip level,
//! `#line` directives that keep `__LINE__` below each hunk at its value in the running
//! program (relative to the base of a series, whatever earlier patches did to the file),
//! copies into the build's own source copies (mirrors), and the test of whether a diff that
//! does not apply needs an earlier patch that was taken out of the series again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hotsplice_srcpatch::{self as srcpatch, ApplyError, FileDiff, Hunk, is_c_like, stripped};

use crate::state::{Context, State};
use crate::workspace::Workspace;
use crate::{Error, io_error, tree};

/// One file a diff touches.
pub(crate) struct Patched {
    pub(crate) path: PathBuf,
    pub(crate) created: bool,
    pub(crate) deleted: bool,
}

/// The diff at `path` (text `text`), parsed.
pub(crate) fn parse_diff(path: &Path, text: &str) -> Result<Vec<FileDiff>, Error> {
    srcpatch::parse(text).map_err(|e| Error::DiffParse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Applies the diff in `tree_dir` with `patch` (at `hotsplice-srcpatch`'s strip level).
/// Returns the level.
pub(crate) fn run_patch(tree_dir: &Path, diff: &Path) -> Result<usize, Error> {
    srcpatch::run_patch(tree_dir, diff).map_err(|e| match e {
        ApplyError::DoesNotApply { diff, output } => Error::DiffDoesNotApply { path: diff, output },
        ApplyError::Io { path, source } => Error::Io { path, source },
        other => Error::Io {
            path: tree_dir.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// The hunks taking `base` to `current` (`diff -u`), for `#line` directives relative to the
/// base after several patches of a series touched a file.
pub(crate) fn hunks_between(base: &Path, current: &Path) -> Option<Vec<Hunk>> {
    let out = Command::new("diff")
        .args(["-U3", "--"])
        .arg(base)
        .arg(current)
        .output()
        .ok()?;
    match out.status.code() {
        Some(0) => Some(Vec::new()),
        Some(1) => srcpatch::parse(&String::from_utf8_lossy(&out.stdout))
            .ok()
            .and_then(|mut f| f.pop())
            .map(|f| f.hunks),
        _ => None,
    }
}

/// Patched files without hotsplice's `#line` directives (`None`: deleted).
pub(crate) type CleanTexts = HashMap<PathBuf, Option<Vec<u8>>>;

/// Applies one diff on the current tree, with `#line` directives relative to the base.
pub(crate) fn apply_in_series(
    ctx: &Context<'_>,
    state: &State,
    diff_path: &Path,
    text: &str,
) -> Result<(Vec<Patched>, CleanTexts), Error> {
    let tree_dir = &ctx.ws.tree;
    let files = parse_diff(diff_path, text)?;
    // Files an earlier patch of the series touched hold `#line` directives: give `patch` their
    // clean text (the files this diff may touch, whatever its strip level), and restore the
    // others afterwards with their times, so the build does not recompile them.
    let maybe_touched: BTreeSet<PathBuf> = files
        .iter()
        .flat_map(|f| {
            srcpatch::STRIP_LEVELS
                .into_iter()
                .flat_map(move |p| [stripped(&f.old_path, p), stripped(&f.new_path, p)])
        })
        .collect();
    let mut swapped: Vec<(PathBuf, Vec<u8>, Option<std::fs::FileTimes>)> = Vec::new();
    for (path, clean) in &state.clean {
        if !maybe_touched.contains(path) {
            continue;
        }
        let full = tree_dir.join(path);
        if let (Some(clean), Ok(current)) = (clean, std::fs::read(&full))
            && *clean != current
        {
            let times = std::fs::metadata(&full).ok().and_then(|m| {
                Some(
                    std::fs::FileTimes::new()
                        .set_modified(m.modified().ok()?)
                        .set_accessed(m.accessed().ok()?),
                )
            });
            std::fs::write(&full, clean).map_err(io_error(&full))?;
            swapped.push((path.clone(), current, times));
        }
    }
    let restore = |swapped: &[(PathBuf, Vec<u8>, Option<std::fs::FileTimes>)]| {
        for (path, bytes, times) in swapped {
            let full = tree_dir.join(path);
            let _ = std::fs::write(&full, bytes);
            if let Some(times) = times
                && let Ok(f) = File::options().write(true).open(&full)
            {
                let _ = f.set_times(*times);
            }
        }
    };
    let level = match run_patch(tree_dir, diff_path) {
        Ok(r) => r,
        Err(e) => {
            restore(&swapped);
            return Err(e);
        }
    };
    let touched: BTreeSet<PathBuf> = files
        .iter()
        .flat_map(|f| [stripped(&f.old_path, level), stripped(&f.new_path, level)])
        .collect();
    let untouched: Vec<_> = swapped
        .into_iter()
        .filter(|(path, _, _)| !touched.contains(path))
        .collect();
    restore(&untouched);
    let mut clean = state.clean.clone();
    let mut patched = Vec::new();
    for file in &files {
        let deleted = file.deletes();
        let rel = if deleted {
            stripped(&file.old_path, level)
        } else {
            stripped(&file.new_path, level)
        };
        let full = tree_dir.join(&rel);
        let content = std::fs::read(&full).ok();
        clean.insert(rel.clone(), content.clone());
        patched.push(Patched {
            path: rel.clone(),
            created: file.creates(),
            deleted,
        });
        if deleted || file.creates() || !is_c_like(&rel) {
            continue;
        }
        let Some(content) = content.and_then(|c| String::from_utf8(c).ok()) else {
            continue;
        };
        let base = ctx.ws.pristine.join(&rel);
        let hunks = if state.clean.contains_key(&rel) {
            // Touched before in the series: directives relative to the base's numbering.
            match hunks_between(&base, &full) {
                Some(h) => h,
                None => continue,
            }
        } else {
            file.hunks.clone()
        };
        let updated = srcpatch::with_line_directives(&content, &hunks);
        if updated != content {
            std::fs::write(&full, updated).map_err(io_error(&full))?;
        }
    }
    Ok((patched, clean))
}

/// Copies patched files into the mirrors (copies of the sources the build made): only where
/// the mirror holds a copy of the file (a VPATH build directory holds none).
pub(crate) fn update_mirrors(
    ctx: &Context<'_>,
    pre_dir: &Path,
    patched: &[Patched],
    diff_path: &Path,
) -> Result<BTreeMap<PathBuf, Vec<PathBuf>>, Error> {
    let tree_dir = &ctx.ws.tree;
    let mut copies: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for mirror in &ctx.base.mirrors {
        for file in patched.iter().filter(|f| !f.deleted) {
            let copy = tree_dir.join(mirror).join(&file.path);
            let source = tree_dir.join(&file.path);
            let mirrored = if file.created {
                // A new file goes where its directory was copied.
                let parent = file.path.parent().unwrap_or(Path::new(""));
                std::fs::read_dir(tree_dir.join(parent))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| {
                        e.file_type().is_ok_and(|t| t.is_file())
                            && tree_dir
                                .join(mirror)
                                .join(parent)
                                .join(e.file_name())
                                .is_file()
                    })
            } else {
                copy.is_file()
            };
            if !mirrored || !source.is_file() {
                continue;
            }
            if !file.created && !tree::same_contents(&copy, &pre_dir.join(&file.path)) {
                return Err(Error::Mirror {
                    diff: diff_path.to_path_buf(),
                    file: file.path.clone(),
                    mirror: mirror.clone(),
                });
            }
            std::fs::copy(&source, &copy).map_err(io_error(&copy))?;
            copies
                .entry(file.path.clone())
                .or_default()
                .push(Path::new(mirror).join(&file.path));
        }
    }
    Ok(copies)
}

/// The patches among `reverted` that `diff` (which does not apply to the tree) needs: it
/// applies once they are, on a scratch copy of the files it touches. Empty when it does not
/// apply even then.
pub(crate) fn applies_after(
    ws: &Workspace,
    reverted: &[PathBuf],
    diff: &Path,
    text: &str,
) -> Vec<String> {
    let Ok(files) = srcpatch::parse(text) else {
        return Vec::new();
    };
    let scratch = ws.root.join("depends");
    let _ = tree::remove(&scratch);
    let mut wanted = BTreeSet::new();
    for file in &files {
        for level in srcpatch::STRIP_LEVELS {
            for path in [&file.old_path, &file.new_path] {
                let rel = stripped(path, level);
                let from = ws.tree.join(&rel);
                if from.is_file() && wanted.insert(rel.clone()) {
                    let to = scratch.join(&rel);
                    if let Some(dir) = to.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let _ = std::fs::copy(&from, &to);
                }
            }
        }
    }
    let _ = std::fs::create_dir_all(&scratch);
    let mut needed = Vec::new();
    for earlier in reverted {
        let before = tree::content_id(&scratch).ok();
        let _ = Command::new("patch")
            .args([
                "-p1",
                "--batch",
                "--forward",
                "--silent",
                "--no-backup-if-mismatch",
                "-r",
                "-",
                "-i",
            ])
            .arg(earlier)
            .current_dir(&scratch)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if tree::content_id(&scratch).ok() != before {
            needed.push(
                earlier
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    let applies = srcpatch::strip_level(&scratch, diff).is_ok();
    let _ = tree::remove(&scratch);
    if applies { needed } else { Vec::new() }
}
