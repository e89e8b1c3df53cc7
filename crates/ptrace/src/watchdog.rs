//! A deadline for blocking `waitpid` calls.
//!
//! Waiting for a tracee to stop must block (a polling real-time tracer would hold the CPU the
//! tracee needs), yet a thread in uninterruptible sleep may not stop for a long time, and the
//! rest of the process is stopped meanwhile. One background thread (started once, so arming a
//! deadline inside a stop costs no thread creation) signals the waiting thread once its
//! deadline has passed (and every 10 ms after), so `waitpid` returns `EINTR` and the caller
//! gives up cleanly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock};
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

struct Armed {
    id: u64,
    deadline: Instant,
    tid: i32,
    expired: Arc<AtomicBool>,
}

struct Shared {
    armed: Mutex<Vec<Armed>>,
    changed: Condvar,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<&'static Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            armed: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        }));
        let signal = wakeup_signal();
        let pid = nix::unistd::getpid().as_raw();
        std::thread::Builder::new()
            .name("hotsplice-watchdog".into())
            .spawn(move || run(shared, pid, signal))
            .expect("start the watchdog thread");
        shared
    })
}

fn run(shared: &'static Shared, pid: i32, signal: libc::c_int) {
    let mut armed = shared.armed.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for a in armed.iter_mut() {
            if a.deadline <= now {
                a.expired.store(true, Ordering::SeqCst);
                // SAFETY: tgkill sends `signal` (whose handler does nothing) to a thread of
                // this process; a stale tid only yields ESRCH.
                unsafe {
                    libc::syscall(libc::SYS_tgkill, pid, a.tid, signal);
                }
                a.deadline = now + Duration::from_millis(10);
            }
            next = Some(next.map_or(a.deadline, |n: Instant| n.min(a.deadline)));
        }
        armed = match next {
            None => shared
                .changed
                .wait(armed)
                .unwrap_or_else(|e| e.into_inner()),
            Some(at) => {
                shared
                    .changed
                    .wait_timeout(armed, at.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

/// Interrupts the creating thread's blocking calls after a deadline; disarmed on drop.
pub struct Watchdog {
    id: u64,
    deadline: Instant,
    expired: Arc<AtomicBool>,
}

impl Watchdog {
    /// Arms a watchdog for the calling thread.
    pub fn start(timeout: Duration) -> Watchdog {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let shared = shared();
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let expired = Arc::new(AtomicBool::new(false));
        shared
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Armed {
                id,
                deadline,
                tid: nix::unistd::gettid().as_raw(),
                expired: Arc::clone(&expired),
            });
        shared.changed.notify_one();
        Watchdog {
            id,
            deadline,
            expired,
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let shared = shared();
        shared
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a| a.id != self.id);
        shared.changed.notify_one();
    }
}

/// Starts the watchdog thread now (it is started on first use otherwise), so that no later
/// stop pays for creating it.
pub fn prepare() {
    let _ = shared();
}
