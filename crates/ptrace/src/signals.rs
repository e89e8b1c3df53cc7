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
        set.add(s);
    }
    set
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
