//! hotsplice's own signals: while it works on a target, job-control stops and termination
//! requests are held back, so the target is never left stopped behind a stopped or dying
//! tracer. The operation checks for a pending request at its safe points
//! ([`pending_interruption`]), rolls back or finishes, and then lets the signal take effect
//! ([`allow_interruptions`]).

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};

fn held() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ] {
        // A signal hotsplice was started with ignored (`nohup`, a background job of a
        // non-interactive shell: SIGINT and SIGQUIT) stays ignored: blocked, it would be
        // queued and read as a request to give up.
        if !ignored(s) {
            set.add(s);
        }
    }
    set
}

/// Whether `signal`'s disposition is SIG_IGN.
fn ignored(signal: Signal) -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only writes the current one into `old`, a
    // valid, zero-initialised `struct sigaction` owned by this frame.
    let queried =
        unsafe { libc::sigaction(signal as libc::c_int, std::ptr::null(), old.as_mut_ptr()) };
    // SAFETY: zero-initialised above, and filled in by sigaction when it succeeded.
    queried == 0 && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN
}

/// Blocks termination and job-control signals in the calling thread and every thread it
/// creates afterwards (call it first thing in `main`). A signal sent meanwhile stays pending.
pub fn defer_interruptions() {
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&held()), None);
}

/// The termination request (SIGINT, SIGTERM, SIGHUP, SIGQUIT) pending for hotsplice, if any.
/// Job-control stops (SIGTSTP...) are not requests to give up: they take effect once the
/// target is released.
pub fn pending_interruption() -> Option<Signal> {
    let mut set: libc::sigset_t = unsafe_zeroed_sigset();
    // SAFETY: sigpending writes the pending set into the valid `sigset_t` owned by this frame.
    if unsafe { libc::sigpending(&mut set) } != 0 {
        return None;
    }
    [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ]
    .into_iter()
    // SAFETY: sigismember reads the initialised set above.
    .find(|s| unsafe { libc::sigismember(&set, *s as libc::c_int) } == 1)
}

/// Takes a pending termination request off the queue and returns it: for a command that
/// handles it by finishing cleanly (`watch`), rather than ending as the signal asks.
pub fn take_interruption() -> Option<Signal> {
    let signal = pending_interruption()?;
    let mut set = unsafe_zeroed_sigset();
    // SAFETY: sigaddset and sigtimedwait work on the initialised set owned by this frame; a
    // zero timeout makes sigtimedwait return at once; no siginfo is wanted (null).
    unsafe {
        libc::sigaddset(&mut set, signal as libc::c_int);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &zero);
    }
    Some(signal)
}

fn unsafe_zeroed_sigset() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is given.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        set.assume_init()
    }
}

/// Unblocks the held signals: a pending one now takes effect (a stop stops hotsplice, a
/// termination request ends it with the signal's usual status).
pub fn allow_interruptions() {
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&held()), None);
}

/// A small process that keeps hotsplice from being left stopped while it holds a target: if
/// hotsplice is stopped anyway (`SIGSTOP`, which no process can block), the guardian continues
/// it at once, so the target's threads are never frozen behind a stopped tracer. It runs while
/// the [`Guardian`] lives (it ends when hotsplice does, by the pipe closing).
#[derive(Debug)]
pub struct Guardian {
    child: Option<std::process::Child>,
}

impl Guardian {
    /// Starts the guardian: `program` run as `program __guard PID` in a process group of its
    /// own (a stop sent to hotsplice's group does not reach it). Starting it is best effort.
    pub fn start(program: &std::path::Path) -> Guardian {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(program)
            .arg("__guard")
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        Guardian { child }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The guardian's loop (`hotsplice __guard PID`): every millisecond, if PID is stopped by job
/// control, continue it; return when PID is gone or stdin (its pipe) closes.
pub fn guard(pid: i32) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()));
        match state {
            None | Some('Z' | 'X') => return,
            Some('T') => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGCONT);
            }
            _ => {}
        }
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1u8)) {
            Ok(0) => {}
            // Input or hang-up: hotsplice is done (or gone).
            _ => return,
        }
    }
}
