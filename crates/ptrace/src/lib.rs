//! Everything hotsplice does to a live process at the operating-system level: `/proc`
//! ([`Process`]: threads, memory map, memory), ptrace ([`Stopped`]: every thread stopped,
//! registers, memory writes, system calls run inside the target) and real-time scheduling of
//! the tracer ([`Realtime`]). This is the only crate of the workspace with `unsafe` code, and
//! it knows nothing of ELF, diffs or patches.
//!
//! ```no_run
//! use std::time::Duration;
//! use hotsplice_ptrace::{Process, Stopped};
//! let process = Process::new(1234).unwrap();
//! let stopped = Stopped::stop(&process, Duration::from_secs(1)).unwrap();
//! for thread in stopped.threads() {
//!     println!("{} at {:#x}", thread.tid, thread.regs.rip);
//! }
//! let pause = stopped.release();
//! println!("stopped for {:?}", pause.longest);
//! ```
#![deny(missing_docs)]

pub mod livepatch;
mod process;
mod realtime;
mod stop;
mod watchdog;

use std::path::PathBuf;

pub use libc::user_regs_struct as Registers;
pub use process::{Mapping, Process, parse_maps};
pub use realtime::Realtime;
pub use stop::{Pause, Stopped, Thread};

/// Kills the calling process with `SIGKILL`, for fault-injection tests of crash consistency:
/// nothing of hotsplice runs after it, exactly as when an operator or the OOM killer kills it.
pub fn die_now() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

/// `mmap` system call number (x86-64).
pub const SYS_MMAP: i64 = libc::SYS_mmap;
/// `munmap` system call number (x86-64).
pub const SYS_MUNMAP: i64 = libc::SYS_munmap;
/// `mprotect` system call number (x86-64).
pub const SYS_MPROTECT: i64 = libc::SYS_mprotect;
/// `PROT_READ`.
pub const PROT_READ: u64 = libc::PROT_READ as u64;
/// `PROT_WRITE`.
pub const PROT_WRITE: u64 = libc::PROT_WRITE as u64;
/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
/// `MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE`.
pub const MAP_ANON_FIXED_NOREPLACE: u64 =
    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;

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
    /// A thread exited while being worked on.
    #[error("thread {tid} exited while hotsplice was stopping it")]
    ThreadGone {
        /// The thread.
        tid: i32,
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
    #[error("system call {number} in thread {tid} failed: {detail}")]
    RemoteSyscall {
        /// The thread.
        tid: i32,
        /// The system call number.
        number: i64,
        /// Its error number (0 when it did not complete).
        errno: i32,
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
