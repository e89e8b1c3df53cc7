//! hotsplice's user-space backend: apply a bundle to running processes, Ksplice-style.
//!
//! For each process ([`apply`]):
//! 1. find the patched file among its mappings (the executable, or a shared library by
//!    build-id or name) and its load bias;
//! 2. **run-pre matching**: locate every function to replace in the *process's memory* and
//!    prove it equals the bundle's pre-build code, learning the addresses of the symbols it
//!    references (`hotsplice-matcher`) — any mismatch refuses before anything is written;
//! 3. resolve every symbol the new code needs (learnt addresses, the file's symbol tables, the
//!    other loaded libraries);
//! 4. stop all threads briefly to map patch memory near the file (an injected `mmap`), and
//!    release them; link and load the new code into that memory while the program runs;
//! 5. stop all threads again: **safety check** (no thread executing, or due to return into, a
//!    replaced function — retried with a back-off), write a 5-byte `jmp` at each old entry,
//!    verify, release. The longest time any thread was stopped is reported.
//!
//! Several processes ([`apply`] with several pids) are checked first and patched all or none.
//! [`undo`] puts every original byte back (verified) and unmaps the patch memory once no
//! thread can be in it. What is applied where is recorded in a state directory and in a
//! header at the start of the patch memory ([`list`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod link;
mod redirect;
mod safety;
mod session;
pub mod state;
mod unwind;

use std::path::PathBuf;
use std::time::Duration;

use hotsplice_bundle::Bundle;

pub use session::{Observed, Recovered, pids_of_exe};
pub use state::AppliedPatch;

/// How to go about it.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many times to retry when a thread is busy in a replaced function.
    pub retries: u32,
    /// How long to wait between retries.
    pub retry_delay: Duration,
    /// How long to wait for a thread to stop.
    pub stop_timeout: Duration,
    /// Where applied patches are recorded (`/run/hotsplice`).
    pub state_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retries: 5,
            retry_delay: Duration::from_millis(200),
            stop_timeout: Duration::from_secs(2),
            state_dir: PathBuf::from(state::DEFAULT_DIR),
        }
    }
}

/// One function of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionReport {
    /// Its name.
    pub name: String,
    /// The old version's entry.
    pub entry: u64,
    /// The new version (0 for `check`).
    pub new_address: u64,
    /// How it was found.
    pub via: String,
    /// The earlier patch whose version it replaces, if any.
    pub stacked_on: Option<String>,
}

/// What happened in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessReport {
    /// Process id.
    pub pid: i32,
    /// The patched file.
    pub module: String,
    /// The patch id.
    pub patch: String,
    /// The functions.
    pub functions: Vec<FunctionReport>,
    /// The longest time any thread was stopped.
    pub pause: Duration,
    /// Attempts needed (retries when busy).
    pub attempts: u32,
    /// Threads stopped.
    pub threads: usize,
    /// Whether the stop window ran at real-time priority.
    pub realtime: bool,
    /// For `check`: the thread that is busy right now, if any (apply would retry).
    pub busy: Option<String>,
}

/// What kind of failure an [`Error`] is, for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Refused for safety or because the code does not match; the target is untouched.
    Refused,
    /// Bad input (nothing applied with that id, no such target in the process).
    BadInput,
    /// The environment (permissions, the process exited, I/O).
    Environment,
}

/// Why a check, apply or undo did not happen. Every variant names the process and the
/// function, thread, symbol or address at fault; in every case the target is left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bundle carries refusals from its build.
    #[error("the bundle is a refusal, not a patch: {}", reasons.join("; "))]
    Refused {
        /// The build's refusals.
        reasons: Vec<String>,
    },
    /// The process does not map the bundle's target.
    #[error("process {pid} does not run {target}")]
    NoModule {
        /// Process.
        pid: i32,
        /// The bundle's target.
        target: String,
    },
    /// A function's running code is not the pre-build code.
    #[error(
        "process {pid}: {function}: {detail}; wrong source, compiler or flags? Nothing was changed"
    )]
    NotFound {
        /// Process.
        pid: i32,
        /// Function.
        function: String,
        /// The first difference.
        detail: String,
    },
    /// Several places match a function and nothing tells them apart.
    #[error("process {pid}: {function} matches at several addresses ({}); nothing was changed", addresses.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// Process.
        pid: i32,
        /// Function.
        function: String,
        /// The matching addresses.
        addresses: Vec<u64>,
    },
    /// Two functions disagree about where a symbol is.
    #[error(
        "process {pid}: the running code disagrees about where {symbol} is ({detail}); nothing was changed"
    )]
    Conflict {
        /// Process.
        pid: i32,
        /// Symbol.
        symbol: String,
        /// The disagreement.
        detail: String,
    },
    /// A symbol the new code needs is nowhere in the process.
    #[error(
        "cannot find {symbol} in the process (not in the patched file's symbols, not learnt from its code, not in a loaded library); nothing was changed"
    )]
    Unresolved {
        /// Symbol.
        symbol: String,
    },
    /// A reference cannot reach its target from patch memory.
    #[error("{symbol} at {address:#x} is out of 32-bit reach from {from:#x}; nothing was changed")]
    OutOfRange {
        /// Symbol.
        symbol: String,
        /// Its address.
        address: u64,
        /// The referencing place.
        from: u64,
    },
    /// The new code uses a relocation type this linker does not handle.
    #[error("relocation type {r_type} in {piece} is not supported")]
    UnsupportedRelocation {
        /// Type.
        r_type: u32,
        /// Piece.
        piece: String,
    },
    /// The function is shorter than the jump.
    #[error("{function} is only {len} bytes: too short for the 5-byte jump; nothing was changed")]
    TooShort {
        /// Function.
        function: String,
        /// Its length.
        len: u64,
    },
    /// A branch inside the function lands in the bytes the jump would overwrite.
    #[error(
        "{function} branches to its own offset {offset}, inside the bytes the jump would overwrite; nothing was changed"
    )]
    BranchIntoEntry {
        /// Function.
        function: String,
        /// The branch target.
        offset: u64,
    },
    /// A thread stayed busy in a replaced function through every retry.
    #[error("process {pid}: {detail} ({attempts} attempts); nothing was changed")]
    Busy {
        /// Process.
        pid: i32,
        /// Thread and function.
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The same thread was in the same function at every attempt.
    #[error(
        "process {pid}: thread {tid} was in {function} at every one of {attempts} attempts: it may never return (an event loop, main), so it cannot be replaced safely; nothing was changed"
    )]
    AlwaysBusy {
        /// Process.
        pid: i32,
        /// Thread.
        tid: i32,
        /// Function.
        function: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The patch is already applied.
    #[error("process {pid}: {id} is already applied")]
    AlreadyApplied {
        /// Process.
        pid: i32,
        /// Patch id.
        id: String,
    },
    /// Undo of a patch that is not applied.
    #[error("process {pid}: no patch {id} is applied (see `hotsplice list`)")]
    NotApplied {
        /// Process.
        pid: i32,
        /// Patch id.
        id: String,
    },
    /// A function already replaced by an earlier patch, and this bundle was built without it.
    #[error(
        "process {pid}: {function} is already replaced by {patch}, and this bundle was built against the code without that patch; rebuild it on top of {patch}'s source, or undo {patch} first"
    )]
    StackedWithoutBase {
        /// Process.
        pid: i32,
        /// Function.
        function: String,
        /// The earlier patch.
        patch: String,
    },
    /// Undo of a patch that a later patch builds on.
    #[error("process {pid}: {later} replaces functions of {id} again; undo {later} first")]
    DependentPatch {
        /// Process.
        pid: i32,
        /// The patch to undo.
        id: String,
        /// The later patch.
        later: String,
    },
    /// The bytes at a jump site are not what hotsplice left there.
    #[error(
        "process {pid}: the code at {address:#x} was changed by someone else; nothing was changed"
    )]
    Tampered {
        /// Process.
        pid: i32,
        /// Address.
        address: u64,
    },
    /// A write did not read back (the previous bytes were put back).
    #[error("process {pid}: writing at {address:#x} did not take; the process was left as it was")]
    WriteFailed {
        /// Process.
        pid: i32,
        /// Address.
        address: u64,
    },
    /// No free address range within reach of the patched file.
    #[error("process {pid}: no free {size}-byte range within 2 GiB of the patched file")]
    NoPlacement {
        /// Process.
        pid: i32,
        /// Size needed.
        size: u64,
    },
    /// An earlier apply or undo on this process was interrupted.
    #[error(
        "process {pid}: an earlier hotsplice operation on {id} was interrupted; run `hotsplice recover --pid {pid}` first"
    )]
    Interrupted {
        /// Process.
        pid: i32,
        /// The patch it was applying or undoing.
        id: String,
    },
    /// `recover` for a process with nothing interrupted.
    #[error("process {pid}: no interrupted operation to recover")]
    NotInterrupted {
        /// Process.
        pid: i32,
    },
    /// The state record could not be read or written.
    #[error("state record {}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system refused (permissions, process gone).
    #[error(transparent)]
    Process(#[from] hotsplice_ptrace::Error),
}

impl Error {
    /// The kind of failure, for exit codes.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::NoModule { .. }
            | Error::NotApplied { .. }
            | Error::NotInterrupted { .. }
            | Error::Process(
                hotsplice_ptrace::Error::InvalidPid { .. }
                | hotsplice_ptrace::Error::KernelThread { .. },
            ) => ErrorClass::BadInput,
            Error::NoPlacement { .. } | Error::State { .. } | Error::Process(_) => {
                ErrorClass::Environment
            }
            _ => ErrorClass::Refused,
        }
    }
}

/// Checks a bundle against processes: everything apply does up to, not including, the first
/// change (matching, symbol resolution, and a safety check of the current moment).
pub fn check(
    bundle: &Bundle,
    pids: &[i32],
    options: &Options,
) -> Result<Vec<ProcessReport>, Error> {
    pids.iter()
        .map(|&pid| session::check_one(bundle, pid, options))
        .collect()
}

/// Applies a bundle to every process, all or none: each is checked first; if applying to one
/// fails, those already patched are restored.
pub fn apply(
    bundle: &Bundle,
    bundle_sha: &str,
    pids: &[i32],
    options: &Options,
) -> Result<Vec<ProcessReport>, Error> {
    for &pid in pids {
        session::check_one(bundle, pid, options)?;
    }
    let mut done: Vec<ProcessReport> = Vec::new();
    for &pid in pids {
        match session::apply_one(bundle, bundle_sha, pid, options) {
            Ok(report) => done.push(report),
            Err(e) => {
                for report in done.iter().rev() {
                    let _ = session::undo_one(&bundle.id, report.pid, options);
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Undoes patch `id` in every process, restoring every original byte.
pub fn undo(id: &str, pids: &[i32], options: &Options) -> Result<Vec<ProcessReport>, Error> {
    pids.iter()
        .map(|&pid| session::undo_one(id, pid, options))
        .collect()
}

/// Patches applied to the given processes (every recorded process when `pids` is empty).
pub fn list(pids: &[i32], options: &Options) -> Vec<(i32, Result<Observed, Error>)> {
    let pids: Vec<i32> = if pids.is_empty() {
        state::all(&options.state_dir)
            .into_iter()
            .map(|s| s.pid)
            .collect()
    } else {
        pids.to_vec()
    };
    pids.into_iter()
        .map(|pid| (pid, session::list_one(pid, options)))
        .collect()
}

/// The outcome of recovering one process: the interrupted operation and what became of it.
pub type RecoveryOutcome = Result<(state::Journal, Recovered), Error>;

/// Finishes or rolls back interrupted operations (every journal in the state directory when
/// `pids` is empty), so each process ends either untouched or fully patched.
pub fn recover(pids: &[i32], options: &Options) -> Vec<(i32, RecoveryOutcome)> {
    let pids: Vec<i32> = if pids.is_empty() {
        state::all_journals(&options.state_dir)
            .into_iter()
            .map(|j| j.pid)
            .collect()
    } else {
        pids.to_vec()
    };
    pids.into_iter()
        .map(|pid| (pid, session::recover_one(pid, options)))
        .collect()
}
