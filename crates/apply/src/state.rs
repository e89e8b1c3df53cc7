//! What is applied where, and what is in progress: one record per process under the state
//! directory (`/run/hotsplice/<pid>.json`), a write-ahead journal per operation
//! (`<pid>.journal.json`), and a lock per process (`<pid>.lock`) held for a whole operation.
//! The same record of a patch is also kept in a header at the start of the patch's code region,
//! so it can be recovered from the process itself when the file is lost.
//!
//! Nothing here is trusted blindly: the directory must belong to root (or to the user running
//! hotsplice) and be writable by no one else, all the way up ([`StateDir::open`]); files are
//! opened without following symbolic links and created under unique names; and the bytes a
//! record says to write back into a process are checked against the process's own file and
//! patch memory before they are written (see `verify.rs`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The default state directory.
pub const DEFAULT_DIR: &str = "/run/hotsplice";

/// Magic at the start of a patch's code region.
pub const HEADER_MAGIC: &[u8] = b"HOTSPLICE-PATCH 1\n";

/// Magic at the start of a patch's data region, followed by the patch id.
pub const DATA_MAGIC: &[u8] = b"HOTSPLICE-DATA 1\n";

/// Bytes reserved at the start of the data region for [`DATA_MAGIC`] and the id.
pub const DATA_TAG_SIZE: u64 = 64;

/// The tag at the start of a data region.
pub fn data_tag(id: &str) -> Vec<u8> {
    let mut tag = DATA_MAGIC.to_vec();
    tag.extend(id.as_bytes());
    tag.truncate(DATA_TAG_SIZE as usize - 1);
    tag.push(0);
    tag
}

/// Five bytes of code (a jump, or what it replaced), hex in the JSON. A record whose bytes are
/// not exactly five hex-encoded bytes does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code5(pub [u8; 5]);

impl Serialize for Code5 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hotsplice_bundle::hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Code5 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hotsplice_bundle::hex::decode(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not hex")))?;
        let array: [u8; 5] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not 5 bytes")))?;
        Ok(Code5(array))
    }
}

/// A patch memory region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Address.
    pub address: u64,
    /// Size.
    pub size: u64,
}

impl Region {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.address.saturating_add(self.size)
    }
}

/// One redirected function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedFunction {
    /// Name (pre build).
    pub name: String,
    /// Entry address of the old version.
    pub entry: u64,
    /// Running length of the old version.
    pub len: u64,
    /// Where the jump is written.
    pub site: u64,
    /// The bytes the jump replaced: what undo puts back (after checking them).
    pub replaced: Code5,
    /// The jump: what must be there for undo to proceed.
    pub jump: Code5,
    /// Address of the new version.
    pub new_address: u64,
}

/// One patch applied to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The longest time any thread was stopped by the apply, all its stops summed, in
    /// microseconds.
    pub pause_us: u64,
    /// Patch memory: the code region first, then the data region if any.
    pub regions: Vec<Region>,
    /// Redirected functions.
    pub functions: Vec<AppliedFunction>,
    /// The patch's hooks (`hotsplice.h`), at their addresses in its code region.
    #[serde(default)]
    pub hooks: Vec<AppliedHook>,
    /// Where the `hotsplice.h` runtime state is, if the patch uses it.
    #[serde(default)]
    pub runtime: Option<u64>,
    /// What the patch defines (its new functions and variables), for patches applied later
    /// on top of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<AppliedSymbol>,
    /// Earlier patches whose definitions this one's code uses (it must be undone first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
    /// Call-frame information of its code, so that threads are unwound through it (without:
    /// their stacks are scanned from there on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<AppliedFrames>,
}

/// The call-frame rows of one function in patch memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedFrames {
    /// Where the function is.
    pub address: u64,
    /// Its size.
    pub size: u64,
    /// Its rows, by offset from `address` (the bundle's).
    pub rows: Vec<hotsplice_bundle::FrameRow>,
}

/// A function or variable an applied patch defines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedSymbol {
    /// Its name in the patch's build.
    pub name: String,
    /// The source file of the object that defines it (to tell apart statics of one name).
    pub source_file: Option<String>,
    /// Its address in the patch memory.
    pub address: u64,
}

/// A hook of an applied patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedHook {
    /// When it runs.
    pub kind: hotsplice_bundle::HookKind,
    /// The function's address.
    pub address: u64,
}

/// Everything applied to one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessState {
    /// Process id.
    pub pid: i32,
    /// Its start time (to tell a reused pid apart).
    pub start_time: u64,
    /// Patches, oldest first.
    pub patches: Vec<AppliedPatch>,
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
    /// Patch memory may be mapped (at one of `candidates`, or described by its header); no
    /// jump written.
    Mapped,
    /// Jumps are being written (apply) or originals restored (undo).
    Switching,
    /// The undo restored every original; the memory may still be mapped.
    Restored,
}

/// The write-ahead record of an apply or undo in progress: if hotsplice dies, `recover`
/// finishes or rolls back the operation from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Process id.
    pub pid: i32,
    /// Its start time.
    pub start_time: u64,
    /// The other processes sharing its address space.
    #[serde(default)]
    pub sharers: Vec<i32>,
    /// Apply or undo.
    pub operation: Operation,
    /// How far it got.
    pub phase: Phase,
    /// Where patch memory may have been mapped before its address was known: each an exact
    /// range, used by `recover` only if it holds a fresh (all-zero) anonymous mapping.
    #[serde(default)]
    pub candidates: Vec<Region>,
    /// The patch (regions, functions, sites, original and jump bytes).
    pub patch: AppliedPatch,
}

/// The state directory, checked.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::State {
        path: path.to_path_buf(),
        source,
    }
}

fn insecure(path: &Path, why: String) -> Error {
    Error::InsecureState {
        path: path.to_path_buf(),
        why,
    }
}

/// Opens a file in the state directory without following a symbolic link (and without
/// blocking on a FIFO someone put there).
fn open_nofollow(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    use nix::libc;
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
}

impl StateDir {
    /// Opens (creating it, mode 0700, if missing) and checks the state directory: it, and every
    /// directory above it, must belong to root or to the user running hotsplice and be
    /// writable by no one else (a sticky directory such as `/tmp` may be writable above it); it
    /// must not be a symbolic link.
    pub fn open(path: &Path) -> Result<StateDir, Error> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(insecure(
                    path,
                    "it is a symbolic link; give the real directory".into(),
                ));
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(insecure(path, "it is not a directory".into()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(io(path))?;
            }
            Err(e) => return Err(io(path)(e)),
        }
        let me = euid();
        let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
        check_owner(path, &meta, me, false)?;
        let real = path.canonicalize().map_err(io(path))?;
        for ancestor in real.ancestors().skip(1) {
            let meta = std::fs::metadata(ancestor).map_err(io(ancestor))?;
            check_owner(ancestor, &meta, me, true)?;
        }
        Ok(StateDir { path: real })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record_path(&self, pid: i32) -> PathBuf {
        self.path.join(format!("{pid}.json"))
    }

    fn journal_path(&self, pid: i32) -> PathBuf {
        self.path.join(format!("{pid}.journal.json"))
    }

    /// Reads a regular file of the directory (not a link, a FIFO or a device), if it exists.
    fn read(&self, path: &Path) -> Result<Option<String>, Error> {
        let mut file = match open_nofollow(path, OpenOptions::new().read(true)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let meta = file.metadata().map_err(io(path))?;
        if !meta.is_file() {
            return Err(insecure(path, "it is not a regular file".into()));
        }
        if meta.len() > 16 << 20 {
            return Err(insecure(path, format!("it is {} bytes long", meta.len())));
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io(path))?;
        Ok(Some(text))
    }

    /// Writes a file atomically and durably: a uniquely named temporary file (created
    /// exclusively, never through a link), synced, renamed over the target.
    fn write_atomic(&self, path: &Path, text: &str) -> Result<(), Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.path.join(format!(
            ".tmp.{}.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        let result = (|| {
            let mut f = open_nofollow(
                &tmp,
                OpenOptions::new().write(true).create_new(true).mode(0o600),
            )
            .map_err(io(&tmp))?;
            f.write_all(text.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io(path))?;
            if let Ok(d) = File::open(&self.path) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn remove(&self, path: &Path) -> Result<(), Error> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
            _ => Ok(()),
        }
    }

    /// Reads the record of a process; an empty record when there is none or it belongs to an
    /// earlier process that had the same pid. A record that does not parse is an error.
    pub fn load(&self, pid: i32, start_time: u64) -> Result<ProcessState, Error> {
        let file = self.record_path(pid);
        let empty = ProcessState {
            pid,
            start_time,
            patches: Vec::new(),
        };
        let Some(text) = self.read(&file)? else {
            return Ok(empty);
        };
        let state: ProcessState = serde_json::from_str(&text).map_err(|e| Error::CorruptState {
            path: file.clone(),
            detail: e.to_string(),
        })?;
        if state.pid != pid {
            return Err(Error::CorruptState {
                path: file,
                detail: format!("it describes process {}", state.pid),
            });
        }
        Ok(if state.start_time == start_time {
            state
        } else {
            empty
        })
    }

    /// Writes the record of a process atomically (or removes it when empty).
    pub fn save(&self, state: &ProcessState) -> Result<(), Error> {
        let file = self.record_path(state.pid);
        if state.patches.is_empty() {
            return self.remove(&file);
        }
        let text = serde_json::to_string_pretty(state).expect("state serialises");
        self.write_atomic(&file, &text)
    }

    /// Every readable record in the directory.
    pub fn all(&self) -> Vec<ProcessState> {
        self.entries(".json", ".journal.json")
            .into_iter()
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect::<Vec<ProcessState>>()
    }

    fn entries(&self, suffix: &str, except: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                name.is_some_and(|n| {
                    n.ends_with(suffix) && !n.ends_with(except) && !n.starts_with('.')
                })
            })
            .collect();
        names.sort();
        names
            .iter()
            .filter_map(|p| self.read(p).ok().flatten())
            .collect()
    }

    /// Writes the journal of a process durably.
    pub fn write_journal(&self, journal: &Journal) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(journal).expect("journal serialises");
        self.write_atomic(&self.journal_path(journal.pid), &text)
    }

    /// Removes the journal of a process (the operation is complete).
    pub fn remove_journal(&self, pid: i32) -> Result<(), Error> {
        self.remove(&self.journal_path(pid))
    }

    /// Refuses to work on a process an earlier, interrupted operation left a journal for (it
    /// must be recovered first); a journal of an earlier process with the same pid is stale
    /// and removed.
    pub fn refuse_if_interrupted(&self, pid: i32, start_time: u64) -> Result<(), Error> {
        match self.read_journal(pid)? {
            Some(j) if j.start_time == start_time => Err(Error::Interrupted {
                pid,
                id: j.patch.id,
            }),
            Some(_) => self.remove_journal(pid),
            None => Ok(()),
        }
    }

    /// The journal of a process, if an operation on it was interrupted. A journal that does
    /// not parse is an error (it is never silently ignored).
    pub fn read_journal(&self, pid: i32) -> Result<Option<Journal>, Error> {
        let file = self.journal_path(pid);
        let Some(text) = self.read(&file)? else {
            return Ok(None);
        };
        let journal: Journal = serde_json::from_str(&text).map_err(|e| Error::CorruptState {
            path: file.clone(),
            detail: e.to_string(),
        })?;
        if journal.pid != pid {
            return Err(Error::CorruptState {
                path: file,
                detail: format!("it describes process {}", journal.pid),
            });
        }
        Ok(Some(journal))
    }

    /// The pids with a journal in the directory.
    pub fn journal_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut pids: Vec<i32> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".journal.json")?
                    .parse()
                    .ok()
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Takes the exclusive lock of every process in `pids` (in pid order, so two hotsplice
    /// processes never wait for each other in a cycle), waiting up to `timeout` for another
    /// hotsplice to finish. Held until the [`Lock`] is dropped (or hotsplice dies).
    pub fn lock(&self, pids: &[i32], timeout: Duration) -> Result<Lock, Error> {
        let mut pids = pids.to_vec();
        pids.sort_unstable();
        pids.dedup();
        let deadline = Instant::now() + timeout;
        let mut files = Vec::new();
        for pid in pids {
            let file = self
                .lock_file(&format!("{pid}.lock"), deadline)?
                .map_err(|holder| Error::Locked { pid, holder })?;
            files.push(file);
        }
        Ok(Lock { _files: files })
    }

    /// Takes the directory's own exclusive lock (`dir.lock`), for work on the directory as a
    /// whole (a store of installed patches: installing, uninstalling, a watch sweep),
    /// waiting up to `timeout`.
    pub fn lock_all(&self, timeout: Duration) -> Result<Lock, Error> {
        let file = self
            .lock_file("dir.lock", Instant::now() + timeout)?
            .map_err(|holder| Error::DirLocked {
                path: self.path.clone(),
                holder,
            })?;
        Ok(Lock { _files: vec![file] })
    }

    /// Locks the file `name` of the directory, waiting until `deadline`; `Ok(Err(holder))`
    /// when another process still holds it then.
    fn lock_file(&self, name: &str, deadline: Instant) -> Result<Result<File, Option<u32>>, Error> {
        let path = self.path.join(name);
        let mut file = open_nofollow(
            &path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
        )
        .map_err(io(&path))?;
        if !file.metadata().map_err(io(&path))?.is_file() {
            return Err(insecure(&path, "it is not a regular file".into()));
        }
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        return Ok(Err(holder.trim().parse().ok()));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
        let _ = file.set_len(0);
        let _ = std::os::unix::fs::FileExt::write_all_at(
            &file,
            format!("{}\n", std::process::id()).as_bytes(),
            0,
        );
        Ok(Ok(file))
    }
}

/// Exclusive hold on processes: no other hotsplice applies, undoes or recovers on them while
/// it lives.
#[derive(Debug)]
pub struct Lock {
    _files: Vec<File>,
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn check_owner(
    path: &Path,
    meta: &std::fs::Metadata,
    me: u32,
    ancestor: bool,
) -> Result<(), Error> {
    if meta.uid() != 0 && meta.uid() != me {
        return Err(insecure(
            path,
            format!("it belongs to uid {}, not root", meta.uid()),
        ));
    }
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(ancestor && sticky) {
        return Err(insecure(
            path,
            format!(
                "it is writable by group or others (mode {:o})",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The header written at the start of a patch's code region.
pub fn header(patch: &AppliedPatch, capacity: usize) -> Vec<u8> {
    let mut out = HEADER_MAGIC.to_vec();
    let json = serde_json::to_vec(patch).expect("patch serialises");
    // Without its call-frame rows, a patch found by its header alone (in a forked child) is
    // still described; threads are then scanned through its code instead of unwound.
    let lean = || {
        let mut lean = patch.clone();
        lean.frames.clear();
        serde_json::to_vec(&lean).expect("patch serialises")
    };
    if out.len() + json.len() < capacity {
        out.extend(json);
    } else if let Some(json) = Some(lean()).filter(|j| out.len() + j.len() < capacity) {
        out.extend(json);
    } else {
        // Too many functions to describe: keep the id, so the memory is at least attributable.
        out.extend(format!("{{\"id\":\"{}\"}}", patch.id).as_bytes());
    }
    out.push(0);
    out
}

/// The patch id a header names, if the bytes are a header.
pub fn header_id(bytes: &[u8]) -> Option<String> {
    let rest = bytes.strip_prefix(HEADER_MAGIC)?;
    let end = rest.iter().position(|&b| b == 0)?;
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(&rest[..end])
        .ok()
        .map(|i| i.id)
}

/// Parses a header read from process memory.
pub fn parse_header(bytes: &[u8]) -> Option<AppliedPatch> {
    let rest = bytes.strip_prefix(HEADER_MAGIC)?;
    let end = rest.iter().position(|&b| b == 0)?;
    serde_json::from_slice(&rest[..end]).ok()
}

/// An operation in progress, owning its journal: [`Transaction::begin`] writes it durably,
/// [`Transaction::advance`] rewrites it, [`Transaction::commit`] and [`Transaction::abort`]
/// remove it once the process is known to be consistent. Dropped without either (an error
/// in the middle), it keeps the journal, so `recover` can finish or roll back.
#[derive(Debug)]
pub struct Transaction<'d> {
    dir: &'d StateDir,
    journal: Journal,
    open: bool,
}

impl<'d> Transaction<'d> {
    /// Writes the journal.
    pub fn begin(dir: &'d StateDir, journal: Journal) -> Result<Transaction<'d>, Error> {
        dir.write_journal(&journal)?;
        Ok(Transaction {
            dir,
            journal,
            open: true,
        })
    }

    /// The journal as written.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Changes the journal and writes it again.
    pub fn advance(&mut self, change: impl FnOnce(&mut Journal)) -> Result<(), Error> {
        change(&mut self.journal);
        self.dir.write_journal(&self.journal)
    }

    /// The operation completed: the journal goes.
    pub fn commit(mut self) -> Result<(), Error> {
        self.open = false;
        self.dir.remove_journal(self.journal.pid)
    }

    /// The operation was rolled back completely: the journal goes.
    pub fn abort(mut self) -> Result<(), Error> {
        self.open = false;
        self.dir.remove_journal(self.journal.pid)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        // Kept on purpose: the process may be half-way; `recover` decides from it.
        let _ = self.open;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_bytes_must_be_five_hex_bytes() {
        let ok: Code5 = serde_json::from_str("\"e901020304\"").unwrap();
        assert_eq!(ok.0, [0xe9, 1, 2, 3, 4]);
        assert!(serde_json::from_str::<Code5>("\"e9\"").is_err());
        assert!(serde_json::from_str::<Code5>("\"zz01020304\"").is_err());
        assert!(serde_json::from_str::<Code5>("\"\"").is_err());
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"e901020304\"");
    }

    #[test]
    fn headers_round_trip_and_name_their_patch() {
        let patch = AppliedPatch {
            id: "hs-0123456789ab".into(),
            bundle_sha256: String::new(),
            target: "app".into(),
            module: "/x/app".into(),
            applied_unix: 1,
            pause_us: 2,
            regions: vec![Region {
                address: 0x1000,
                size: 0x2000,
            }],
            functions: Vec::new(),
            hooks: Vec::new(),
            runtime: None,
            symbols: vec![AppliedSymbol {
                name: "helper".into(),
                source_file: Some("a.c".into()),
                address: 0x1100,
            }],
            uses: vec!["hs-ba9876543210".into()],
            frames: vec![AppliedFrames {
                address: 0x1100,
                size: 0x40,
                rows: (0..40)
                    .map(|offset| hotsplice_bundle::FrameRow {
                        offset,
                        rule: Some(hotsplice_bundle::FrameRule {
                            cfa: hotsplice_bundle::CfaRegister::Rsp,
                            cfa_offset: 8 + offset as i64,
                            ra: -8,
                            rbp: None,
                        }),
                    })
                    .collect(),
            }],
        };
        let h = header(&patch, 4096);
        assert_eq!(parse_header(&h), Some(patch.clone()));
        // Too little room for the rows: the rest of the description is kept.
        let lean = header(&patch, 600);
        let without = AppliedPatch {
            frames: Vec::new(),
            ..patch.clone()
        };
        assert_eq!(parse_header(&lean), Some(without));
        assert_eq!(header_id(&h).as_deref(), Some("hs-0123456789ab"));
        assert_eq!(header_id(b"HOTSPLICE-PATCH 1\n{\"x\":1}\0"), None);
        let small = header(&patch, 40);
        assert_eq!(header_id(&small).as_deref(), Some("hs-0123456789ab"));
    }
}
