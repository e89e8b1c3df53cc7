//! A deadline for blocking `waitpid` calls.
//!
//! Waiting for a tracee to stop must block (a polling real-time tracer would hold the CPU the
//! tracee needs), yet a thread in uninterruptible sleep may not stop for a long time, and the
//! rest of the process is stopped meanwhile. The watchdog thread signals the waiting thread
//! once the deadline has passed (and every 10 ms after), so `waitpid` returns `EINTR` and the
//! caller gives up cleanly.

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// A wake-up signal with an empty handler installed without `SA_RESTART`, so it interrupts
/// blocking system calls of the thread it is sent to and does nothing else.
fn wakeup_signal() -> libc::c_int {
    static INSTALL: Once = Once::new();
    let signal = libc::SIGRTMIN() + 7;
    INSTALL.call_once(|| {
        extern "C" fn ignore(_: libc::c_int) {}
        // SAFETY: `sigaction` is given a zero-initialised, then fully set, `sigaction`
        // struct; the handler is an `extern "C"` function that does nothing (async-signal
        // safe); the old action is not needed (null).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as *const () as usize;
            action.sa_flags = 0; // no SA_RESTART: interrupt waitpid
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    });
    signal
}

/// Interrupts the creating thread's blocking calls after a deadline; stops on drop.
pub struct Watchdog {
    deadline: Instant,
    expired: Arc<AtomicBool>,
    cancel: Option<Sender<()>>,
}

impl Watchdog {
    /// Starts a watchdog for the calling thread.
    pub fn start(timeout: Duration) -> Watchdog {
        let signal = wakeup_signal();
        // SAFETY: getpid and gettid take no arguments and cannot fail.
        let (pid, tid) = unsafe {
            (
                libc::getpid(),
                libc::syscall(libc::SYS_gettid) as libc::pid_t,
            )
        };
        let deadline = Instant::now() + timeout;
        let expired = Arc::new(AtomicBool::new(false));
        let (cancel, cancelled) = mpsc::channel::<()>();
        let flag = Arc::clone(&expired);
        std::thread::spawn(move || {
            let mut wait = deadline.saturating_duration_since(Instant::now());
            loop {
                match cancelled.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => {
                        flag.store(true, Ordering::SeqCst);
                        // SAFETY: tgkill sends `signal` (whose handler does nothing) to the
                        // creating thread of this process; a stale tid only yields ESRCH.
                        unsafe {
                            libc::syscall(libc::SYS_tgkill, pid, tid, signal);
                        }
                        wait = Duration::from_millis(10);
                    }
                    _ => return,
                }
            }
        });
        Watchdog {
            deadline,
            expired,
            cancel: Some(cancel),
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
    }
}
