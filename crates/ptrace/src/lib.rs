//! Everything hotsplice does to a live process at the operating-system level: `/proc`
//! ([`Process`]: threads, memory map, memory, signal and seccomp state), the processes sharing
//! an address space ([`AddressSpace`]), ptrace ([`Stopped`]: every thread stopped, registers,
//! memory writes, system calls run inside the target after evaluating its seccomp filters,
//! per-thread pause accounting), real-time scheduling of the tracer ([`Realtime`]) and
//! hotsplice's own signal mask ([`signals`]). This is the only crate of the workspace with
//! `unsafe` code, and it knows nothing of ELF, diffs or patches (the kernel's livepatch
//! interface is `hotsplice_kernel::livepatch`).
//!
//! ```no_run
//! use std::time::Duration;
//! use hotsplice_ptrace::{AddressSpace, Stopped};
//! let mut space = AddressSpace::open(1234).unwrap();
//! let stopped = Stopped::stop(&mut space, Duration::from_secs(1)).unwrap();
//! for thread in stopped.threads() {
//!     println!("{} at {:#x}", thread.tid, thread.regs.rip);
//! }
//! let pause = stopped.release();
//! println!("stopped for {:?} at most", pause.longest);
//! ```
#![deny(missing_docs)]

pub mod exec_events;
mod kcmp;
mod process;
mod realtime;
pub mod seccomp;
pub mod signals;
mod stop;
mod watchdog;

use std::path::PathBuf;

pub use libc::user_regs_struct as Registers;
pub use process::{
    Mapping, Namespaces, Process, SignalState, all_pids, comm_of, interrupts, last_pid,
    mapped_head, maps_of, namespaces_of, own_namespaces, parse_maps, start_time_of,
};
pub use realtime::Realtime;
pub use stop::{AddressSpace, Pause, Stopped, Thread, monotonic_ns, syscall_name};
pub use watchdog::prepare as prepare_watchdog;

/// Kills the calling process with `SIGKILL`, for fault-injection tests of crash consistency:
/// nothing of hotsplice runs after it, exactly as when an operator or the OOM killer kills it.
pub fn die_now() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

/// `PROT_READ`.
pub const PROT_READ: u64 = libc::PROT_READ as u64;
/// `PROT_WRITE`.
pub const PROT_WRITE: u64 = libc::PROT_WRITE as u64;
/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// Why an operation on a process failed. Every variant names the process or thread.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such process (or it exited).
    #[error("process {pid} does not exist (or has exited)")]
    NoSuchProcess {
        /// The pid.
        pid: i32,
    },
    /// The process is there, but none of the threads listed could be stopped: each had
    /// vanished (or was not ours to wait for) by the time it was to stop.
    #[error(
        "process {pid}: none of its threads could be stopped (each vanished while being stopped); try again"
    )]
    NoThreadStopped {
        /// The pid.
        pid: i32,
    },
    /// Not a process id at all (zero or negative).
    #[error("{pid} is not a process id")]
    InvalidPid {
        /// The number given.
        pid: i32,
    },
    /// The process `exec`ed another program while hotsplice was working on it.
    #[error(
        "process {pid} replaced its program (exec) while hotsplice worked on it; nothing was written to the new program"
    )]
    Replaced {
        /// The pid.
        pid: i32,
    },
    /// A thread id that is not the id of a process.
    #[error("{tid} is a thread of process {pid}, not a process; give the process id ({pid})")]
    NotAProcess {
        /// The number given.
        tid: i32,
        /// Its process.
        pid: i32,
    },
    /// A zombie: it has exited and cannot run code.
    #[error("process {pid} is a zombie (it has exited; its parent has not reaped it)")]
    Zombie {
        /// The pid.
        pid: i32,
    },
    /// A kernel thread has no user space to patch.
    #[error("process {pid} is a kernel thread; live-patch the kernel with `hotsplice kernel`")]
    KernelThread {
        /// The pid.
        pid: i32,
    },
    /// Not allowed.
    #[error(
        "not permitted to {what} of process {pid} (hotsplice needs root, or the process's user with CAP_SYS_PTRACE, and a kernel.yama.ptrace_scope that allows it)"
    )]
    PermissionDenied {
        /// The pid (or tid).
        pid: i32,
        /// What was attempted.
        what: String,
    },
    /// Another program traces the process (a debugger, `strace`): ptrace allows one tracer.
    #[error(
        "thread {tid} of process {pid} is already traced by {comm} (pid {tracer}); detach it (quit the debugger or strace) and try again"
    )]
    Traced {
        /// The pid.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The tracer's pid.
        tracer: i32,
        /// The tracer's command name.
        comm: String,
    },
    /// The process's seccomp filters would not let hotsplice's call through.
    #[error(
        "process {pid}: its seccomp filter would {verdict} on {call} (thread {tid}), which hotsplice needs to run in it; nothing was changed"
    )]
    Seccomp {
        /// The pid.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The system call.
        call: &'static str,
        /// What the filter would do.
        verdict: seccomp::Verdict,
    },
    /// The process runs under seccomp filters hotsplice cannot read.
    #[error(
        "process {pid}: thread {tid} runs under a seccomp filter, and {why}; refusing to inject calls it might forbid"
    )]
    SeccompUnreadable {
        /// The pid.
        pid: i32,
        /// The thread.
        tid: i32,
        /// Why they cannot be read.
        why: String,
    },
    /// A thread waits in `vfork` for its child: it cannot be stopped until the child execs.
    #[error(
        "thread {tid} of process {pid} is waiting in vfork for a child to exec; try again in a moment"
    )]
    Vforking {
        /// The pid.
        pid: i32,
        /// The thread.
        tid: i32,
    },
    /// A thread exited (or was killed) while being worked on.
    #[error("thread {tid} exited while hotsplice was working on it ({during} found it gone)")]
    ThreadGone {
        /// The thread.
        tid: i32,
        /// The step that found it gone: a ptrace request, or a wait.
        during: &'static str,
    },
    /// A thread did not stop in time (uninterruptible sleep, e.g. I/O).
    #[error(
        "thread {tid} did not stop in time (it may be in uninterruptible I/O); nothing was changed"
    )]
    ThreadWontStop {
        /// The thread.
        tid: i32,
    },
    /// Every thread is unusable for running a system call.
    #[error(
        "no thread of process {pid} can run a system call for hotsplice (every thread is receiving a signal); try again"
    )]
    NoUsableThread {
        /// The pid.
        pid: i32,
    },
    /// A ptrace request failed.
    #[error("{operation} on thread {tid} failed: {}", nix::errno::Errno::from_raw(*errno).desc())]
    Ptrace {
        /// The thread.
        tid: i32,
        /// The request.
        operation: &'static str,
        /// The error number.
        errno: i32,
    },
    /// A system call run inside the target failed.
    #[error("{call} in thread {tid} failed: {detail}")]
    RemoteSyscall {
        /// The thread.
        tid: i32,
        /// The system call.
        call: &'static str,
        /// Its error number (0 when it did not complete).
        errno: i32,
        /// What happened.
        detail: String,
    },
    /// A function called inside the target did not come back as expected.
    #[error("calling {function:#x} in thread {tid} failed: {detail}")]
    RemoteCall {
        /// The thread.
        tid: i32,
        /// The function.
        function: u64,
        /// What happened.
        detail: String,
    },
    /// Reading or writing process memory failed.
    #[error("cannot access {len} bytes at {address:#x} in process {pid}")]
    Memory {
        /// The pid.
        pid: i32,
        /// The address.
        address: u64,
        /// The length.
        len: usize,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's process events could not be read.
    #[error("{what}: {} ({hint})", nix::errno::Errno::from_raw(*errno).desc())]
    Events {
        /// What was attempted.
        what: &'static str,
        /// The error number.
        errno: i32,
        /// The likely cause.
        hint: &'static str,
    },
    /// Reading a mapped file failed.
    #[error("cannot read {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
