//! hotsplice's user-space backend: apply a bundle to running processes, Ksplice-style.
//!
//! For each process ([`apply`]) — more exactly, each *address space*: a process and any other
//! process sharing its memory (`clone(CLONE_VM)`, a `vfork` child), which are stopped and
//! checked like its threads:
//! 1. take the target's lock (one hotsplice at a time per process, [`state::StateDir::lock`]);
//! 2. find the patched file among its mappings (the executable, or a shared library by
//!    build-id or name) and its load bias;
//! 3. **run-pre matching**: locate every function to replace in the *process's memory* and
//!    prove it equals the bundle's pre-build code, learning the addresses of the symbols it
//!    references (`hotsplice-matcher`) — any mismatch refuses before anything is written;
//! 4. resolve every symbol the new code needs (learnt addresses, the file's symbol tables, the
//!    other loaded libraries);
//! 5. map patch memory near the file with an injected `mmap` (after evaluating the target's
//!    seccomp filters) from *one* thread while the others run, and load the new code into it;
//! 6. [`switch`](switch::switch): stop every thread once — at real-time priority — and, if no
//!    thread is executing (or due to return into) a replaced function, write a 5-byte `jmp` at
//!    each old entry, verify, release. A thread merely preempted inside such a function is let
//!    run alone until it leaves; one blocked there makes the stop wait and retry.
//!
//! A single-threaded target is stopped only once in all: the `mmap` and the load happen inside
//! the switch. Every stop is accounted per thread ([`switch::PauseLog`]): the report's pause
//! is the longest total time any one thread was stopped, all stops of the invocation summed.
//! Several address spaces are patched all or none. [`undo`] puts every original byte back
//! (checked against the process's own file, never taken from a record on trust) and unmaps
//! the patch memory once no thread can be in it; [`recover`] finishes or rolls back an
//! operation whose hotsplice died. What is applied where is recorded in a state directory and
//! in a header at the start of the patch memory ([`list`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod apply;
mod check;
pub mod discover;
mod faults;
mod hooks;
mod link;
mod mapped;
mod observe;
mod prepare;
mod recover;
mod redirect;
mod resolve;
mod runtime;
mod safety;
pub mod state;
pub mod switch;
mod target;
mod undo;
mod unwind;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use hotsplice_bundle::Bundle;

pub use observe::Observed;
pub use recover::Recovered;
pub use state::AppliedPatch;
pub use switch::PauseLog;

/// How to go about it.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many times to retry when a thread is busy in a replaced function.
    pub retries: u32,
    /// How long to wait between retries.
    pub retry_delay: Duration,
    /// How long a runnable thread found in a replaced function may be let run alone (the
    /// others stopped) to leave it, per attempt.
    pub let_run: Duration,
    /// How long to wait for a thread to stop.
    pub stop_timeout: Duration,
    /// How long to wait for another hotsplice working on the same process.
    pub lock_timeout: Duration,
    /// Where applied patches are recorded (`/run/hotsplice`).
    pub state_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retries: 5,
            retry_delay: Duration::from_millis(200),
            let_run: Duration::from_millis(1),
            stop_timeout: Duration::from_secs(2),
            lock_timeout: Duration::from_secs(60),
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

/// What happened in one process (one address space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessReport {
    /// Process id.
    pub pid: i32,
    /// Other processes sharing its address space (patched with it).
    pub sharers: Vec<i32>,
    /// The patched file.
    pub module: String,
    /// The patch id.
    pub patch: String,
    /// The functions.
    pub functions: Vec<FunctionReport>,
    /// The longest total time any one thread was stopped (every stop summed).
    pub pause: Duration,
    /// How many times threads were stopped.
    pub stops: u32,
    /// Each thread stopped: (tid, total stopped time, stops).
    pub per_thread: Vec<(i32, Duration, u32)>,
    /// Each stop, from its first interrupt to its last release, in `CLOCK_MONOTONIC` ns, and
    /// how many threads it stopped.
    pub windows: Vec<(u64, u64, usize)>,
    /// Attempts of the switch (more than one when a thread was busy).
    pub attempts: u32,
    /// Threads stopped.
    pub threads: usize,
    /// Whether the stops ran at real-time priority.
    pub realtime: bool,
    /// Whether the process runs the very build the bundle was made from (same build-id), or
    /// another build whose code was proven to match (`None` when the bundle has no build-id).
    pub same_build: Option<bool>,
    /// For `check`: what apply would do now (wait for a thread, retry, refuse), if not simply
    /// apply.
    pub prediction: Option<Prediction>,
    /// The patch's hooks that ran, and how long each took (the threads were stopped).
    pub hooks: Vec<HookReport>,
    /// What went wrong without undoing the operation (a post hook that failed).
    pub warnings: Vec<String>,
    /// For `undo` of a patch that used shadow data: the runtime's counters when it was undone
    /// (its memory, every shadow included, is then unmapped).
    pub shadows: Option<ShadowStats>,
}

/// The shadow-data counters of a patch's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowStats {
    /// Shadows allocated and not freed.
    pub live: u64,
    /// Every allocation so far.
    pub allocations: u64,
    /// Bytes of the arena handed out (freed shadows are reused).
    pub arena_used: u64,
}

/// A hook that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// `pre-apply`, `post-apply`, `pre-undo` or `post-undo`.
    pub kind: &'static str,
    /// How long it took.
    pub took: Duration,
    /// What it returned.
    pub result: i32,
}

impl From<&hooks::HookRun> for HookReport {
    fn from(run: &hooks::HookRun) -> Self {
        HookReport {
            kind: run.kind.as_str(),
            took: run.took,
            result: run.result,
        }
    }
}

/// What `check` predicts `apply` would do with a thread found in a replaced function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    /// `wait`, `retry` or `refuse`.
    pub action: &'static str,
    /// The thread and function, and why.
    pub detail: String,
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
    /// hotsplice was asked to stop (SIGINT, SIGTERM...) and rolled back.
    Interrupted,
}

impl ErrorClass {
    /// Its name in JSON output and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Refused => "refused",
            ErrorClass::BadInput => "bad-input",
            ErrorClass::Environment => "environment",
            ErrorClass::Interrupted => "interrupted",
        }
    }
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
    /// A system-wide search by build-id with a bundle that has none.
    #[error(
        "the bundle's target {target} has no build-id, so its processes cannot be found by it; name the installed file with --file, or the processes with --pid"
    )]
    NoBuildId {
        /// The bundle's target.
        target: String,
    },
    /// A file named to find processes by cannot be read.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
    /// A function the new code calls (or takes the address of) is not provably the one the
    /// bundle was built against.
    #[error(
        "process {pid}: the new code uses {function}, but this process runs another build of the program (build-id {running}, the bundle's is {built}) and {detail}; rebuild the bundle from this build's source. Nothing was changed"
    )]
    Unproven {
        /// Process.
        pid: i32,
        /// Function.
        function: String,
        /// The running build-id.
        running: String,
        /// The bundle's build-id.
        built: String,
        /// Why it is not proven.
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
        "process {pid}: cannot find {symbol} (not in the patched file's symbols, not learnt from its code, not in a loaded library); nothing was changed"
    )]
    Unresolved {
        /// Process.
        pid: i32,
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
    #[error(
        "relocation type {} in {piece} is not supported",
        hotsplice_reloc::name(*r_type)
    )]
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
    /// A bundle replaces the same function twice.
    #[error(
        "the bundle replaces {function} twice (in {first} and {second}); it cannot be applied or undone consistently"
    )]
    Duplicate {
        /// Function.
        function: String,
        /// The first object.
        first: String,
        /// The second object.
        second: String,
    },
    /// A thread stayed busy in a replaced function through every retry.
    #[error("process {pid}: {detail} ({attempts} attempts); nothing was changed")]
    Busy {
        /// Process.
        pid: i32,
        /// Thread and function, and why.
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The same thread was in the same function, its main loop, at every attempt.
    #[error(
        "process {pid}: thread {tid} was in {function} at every one of {attempts} attempts, called from the thread's outermost frames: {function} looks like the thread's main loop, which calls everything else and never returns (or the thread calls it again and again), so it cannot be replaced safely; nothing was changed"
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
    /// A pre hook of the patch refused.
    #[error("process {pid}: the patch's {hook} hook refused: {reason}; nothing was changed")]
    Vetoed {
        /// Process.
        pid: i32,
        /// Which hook.
        hook: &'static str,
        /// Its reason.
        reason: String,
    },
    /// A hook of the patch faulted or did not return.
    #[error("process {pid}: the patch's {hook} hook failed: {detail}")]
    HookFailed {
        /// Process.
        pid: i32,
        /// Which hook.
        hook: &'static str,
        /// What happened.
        detail: String,
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
    #[error(
        "process {pid}: {later}, applied after {id}, builds on it (it replaces {id}'s functions again or calls its new code); undo {later} first"
    )]
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
    /// A record asks for bytes or memory that do not check out against the process.
    #[error(
        "process {pid}: the record of {patch} does not match the process ({detail}): it is corrupt or forged; nothing was written"
    )]
    Forged {
        /// Process.
        pid: i32,
        /// Patch.
        patch: String,
        /// What did not match.
        detail: String,
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
    /// hotsplice itself was asked to stop.
    #[error("{signal} received: stopped before changing anything (what was done is rolled back)")]
    Stopped {
        /// The signal.
        signal: &'static str,
    },
    /// Another hotsplice is working on the process.
    #[error("process {pid}: another hotsplice{} is working on it; try again when it is done", holder.map(|h| format!(" (pid {h})")).unwrap_or_default())]
    Locked {
        /// Process.
        pid: i32,
        /// The other hotsplice.
        holder: Option<u32>,
    },
    /// Another hotsplice holds a directory's lock.
    #[error("{}: another hotsplice{} is working on it; try again when it is done", path.display(), holder.map(|h| format!(" (pid {h})")).unwrap_or_default())]
    DirLocked {
        /// The directory.
        path: PathBuf,
        /// The other hotsplice.
        holder: Option<u32>,
    },
    /// `recover` for a process with nothing interrupted.
    #[error("process {pid}: no interrupted operation to recover")]
    NotInterrupted {
        /// Process.
        pid: i32,
    },
    /// The state directory is unsafe to use.
    #[error(
        "state directory {}: {why}; refusing to keep records where others could change them",
        path.display()
    )]
    InsecureState {
        /// The path at fault.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A state file does not parse.
    #[error("state file {} is corrupt ({detail}); move it away after checking `hotsplice list`", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The parse error.
        detail: String,
    },
    /// The state record could not be read or written.
    #[error("state file {}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system refused (permissions, process gone, seccomp, another tracer).
    #[error(transparent)]
    Process(#[from] hotsplice_ptrace::Error),
}

impl Error {
    /// The kind of failure, for exit codes.
    pub fn class(&self) -> ErrorClass {
        use hotsplice_ptrace::Error as P;
        match self {
            Error::NoModule { .. }
            | Error::NoBuildId { .. }
            | Error::File { .. }
            | Error::NotApplied { .. }
            | Error::NotInterrupted { .. }
            | Error::Duplicate { .. }
            | Error::Process(
                P::InvalidPid { .. } | P::KernelThread { .. } | P::NotAProcess { .. },
            ) => ErrorClass::BadInput,
            Error::Stopped { .. } => ErrorClass::Interrupted,
            Error::Process(P::Seccomp { .. } | P::SeccompUnreadable { .. }) => ErrorClass::Refused,
            Error::NoPlacement { .. }
            | Error::State { .. }
            | Error::InsecureState { .. }
            | Error::CorruptState { .. }
            | Error::Locked { .. }
            | Error::DirLocked { .. }
            | Error::Process(_) => ErrorClass::Environment,
            _ => ErrorClass::Refused,
        }
    }
}

/// Checks a bundle against processes: everything apply does up to, not including, the first
/// change (matching, symbol resolution), and one look at the threads: what apply would do
/// with them now.
pub fn check(
    bundle: &Bundle,
    pids: &[i32],
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<Vec<ProcessReport>, Error> {
    check::check(bundle, pids, options, pauses)
}

/// Applies a bundle to every process, all or none: each is prepared first (nothing written);
/// if applying to one fails, those already patched are restored.
pub fn apply(
    bundle: &Bundle,
    bundle_sha: &str,
    pids: &[i32],
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<Vec<ProcessReport>, Error> {
    apply::apply(bundle, bundle_sha, pids, options, pauses)
}

/// Undoes patch `id` in every process, restoring every original byte.
pub fn undo(
    id: &str,
    pids: &[i32],
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<Vec<ProcessReport>, Error> {
    undo::undo(id, pids, options, pauses)
}

/// Every process that has patch `id` applied (by its record, or by patch memory found in it).
pub fn holders(id: &str, options: &Options) -> Result<Vec<i32>, Error> {
    observe::holders(id, options)
}

/// Patches applied to the given processes (every recorded process when `pids` is empty).
pub fn list(pids: &[i32], options: &Options) -> Result<Vec<Listed>, Error> {
    observe::list(pids, options)
}

/// One process of `list`: its pid and what is applied to it.
pub type Listed = (i32, Result<Observed, Error>);

/// The outcome of recovering one process: the interrupted operation and what became of it.
pub type RecoveryOutcome = Result<(state::Journal, Recovered), Error>;

/// Finishes or rolls back interrupted operations (every journal in the state directory when
/// `pids` is empty), so each process ends either untouched or fully patched.
pub fn recover(pids: &[i32], options: &Options) -> Result<Vec<(i32, RecoveryOutcome)>, Error> {
    recover::recover(pids, options)
}

/// Every process running the executable at `path` (also after the file was replaced or
/// deleted on disk, as by a package upgrade).
pub fn pids_of_exe(path: &std::path::Path) -> Vec<i32> {
    let want: PathBuf = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let deleted = format!("{} (deleted)", want.display());
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == want || exe.to_string_lossy() == deleted)
        })
        .collect();
    pids.sort_unstable();
    pids
}
