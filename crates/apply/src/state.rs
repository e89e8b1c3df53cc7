//! What is applied where: one record per process under the state directory
//! (`/run/hotsplice/<pid>.json`, root-only), written atomically. The same record of a patch is
//! also kept in a header at the start of the patch's code region, so it can be recovered from
//! the process itself when the file is lost.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The default state directory.
pub const DEFAULT_DIR: &str = "/run/hotsplice";

/// Magic at the start of a patch's code region.
pub const HEADER_MAGIC: &[u8] = b"HOTSPLICE-PATCH 1\n";

/// A patch memory region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Address.
    pub address: u64,
    /// Size.
    pub size: u64,
}

/// One redirected function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFunction {
    /// Name (pre build).
    pub name: String,
    /// Entry address of the old version.
    pub entry: u64,
    /// Running length of the old version.
    pub len: u64,
    /// Where the jump is written.
    pub site: u64,
    /// The bytes the jump replaced (hex): what undo puts back.
    pub replaced: String,
    /// The jump (hex): what must be there for undo to proceed.
    pub jump: String,
    /// Address of the new version.
    pub new_address: u64,
}

/// One patch applied to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPatch {
    /// Patch id.
    pub id: String,
    /// SHA-256 of the bundle content.
    pub bundle_sha256: String,
    /// The bundle's target (build-tree path).
    pub target: String,
    /// The file mapped in the process that was patched.
    pub module: String,
    /// When, in seconds since the epoch.
    pub applied_unix: u64,
    /// Longest time a thread was stopped, in microseconds.
    pub pause_us: u64,
    /// Patch memory.
    pub regions: Vec<Region>,
    /// Redirected functions.
    pub functions: Vec<AppliedFunction>,
}

/// Everything applied to one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// Process id.
    pub pid: i32,
    /// Its start time (to tell a reused pid apart).
    pub start_time: u64,
    /// Patches, oldest first.
    pub patches: Vec<AppliedPatch>,
}

fn path(dir: &Path, pid: i32) -> PathBuf {
    dir.join(format!("{pid}.json"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the record of a process; an empty record when there is none or it belongs to an
/// earlier process that had the same pid.
pub fn load(dir: &Path, pid: i32, start_time: u64) -> Result<ProcessState, Error> {
    let file = path(dir, pid);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ProcessState {
                pid,
                start_time,
                patches: Vec::new(),
            });
        }
        Err(e) => return Err(io(&file)(e)),
    };
    match serde_json::from_str::<ProcessState>(&text) {
        Ok(state) if state.start_time == start_time => Ok(state),
        _ => Ok(ProcessState {
            pid,
            start_time,
            patches: Vec::new(),
        }),
    }
}

/// Writes the record of a process atomically (or removes it when empty).
pub fn save(dir: &Path, state: &ProcessState) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let file = path(dir, state.pid);
    if state.patches.is_empty() {
        return match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&file)(e)),
            _ => Ok(()),
        };
    }
    let tmp = dir.join(format!(".{}.json.tmp", state.pid));
    let text = serde_json::to_string_pretty(state).expect("state serialises");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &file).map_err(io(&file))
}

/// Every record in the state directory.
pub fn all(dir: &Path) -> Vec<ProcessState> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<ProcessState> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".json") && !name.ends_with(".journal.json")
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    out.sort_by_key(|s| s.pid);
    out
}

/// The header written at the start of a patch's code region.
pub fn header(patch: &AppliedPatch, capacity: usize) -> Vec<u8> {
    let mut out = HEADER_MAGIC.to_vec();
    let json = serde_json::to_vec(patch).expect("patch serialises");
    if out.len() + json.len() < capacity {
        out.extend(json);
    } else {
        // Too many functions to describe: keep the id, so the memory is at least attributable.
        out.extend(format!("{{\"id\":\"{}\"}}", patch.id).as_bytes());
    }
    out.push(0);
    out
}

/// Parses a header read from process memory.
pub fn parse_header(bytes: &[u8]) -> Option<AppliedPatch> {
    let rest = bytes.strip_prefix(HEADER_MAGIC)?;
    let end = rest.iter().position(|&b| b == 0)?;
    serde_json::from_slice(&rest[..end]).ok()
}

/// What an interrupted apply or undo was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Applying the patch.
    Apply,
    /// Undoing it.
    Undo,
}

/// How far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Patch memory is mapped (and maybe loaded); no jump written.
    Mapped,
    /// Jumps are being written (apply) or originals restored (undo).
    Switching,
    /// The undo restored every original; the memory may still be mapped.
    Restored,
}

/// The write-ahead record of an apply or undo in progress: if hotsplice dies, `recover`
/// finishes or rolls back the operation from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Process id.
    pub pid: i32,
    /// Its start time.
    pub start_time: u64,
    /// Apply or undo.
    pub operation: Operation,
    /// How far it got.
    pub phase: Phase,
    /// The patch (regions, functions, sites, original and jump bytes).
    pub patch: AppliedPatch,
}

fn journal_path(dir: &Path, pid: i32) -> PathBuf {
    dir.join(format!("{pid}.journal.json"))
}

/// Writes the journal of a process durably (atomic rename, fsync).
pub fn write_journal(dir: &Path, journal: &Journal) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let file = journal_path(dir, journal.pid);
    let tmp = dir.join(format!(".{}.journal.tmp", journal.pid));
    let text = serde_json::to_string_pretty(journal).expect("journal serialises");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &file).map_err(io(&file))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the journal of a process (the operation is complete).
pub fn remove_journal(dir: &Path, pid: i32) -> Result<(), Error> {
    let file = journal_path(dir, pid);
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&file)(e)),
        _ => Ok(()),
    }
}

/// The journal of a process, if an operation on it was interrupted.
pub fn read_journal(dir: &Path, pid: i32) -> Option<Journal> {
    let text = std::fs::read_to_string(journal_path(dir, pid)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every journal in the state directory.
pub fn all_journals(dir: &Path) -> Vec<Journal> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Journal> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".journal.json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    out.sort_by_key(|j| j.pid);
    out
}
