//! Real-time scheduling for the tracer during the stop-write-resume window.
//!
//! On a busy machine a normal-priority tracer is preempted between releasing threads, each
//! released thread competing with it for a CPU: 64 threads stay stopped up to ~190 ms on
//! this project's 2-core VM. At `SCHED_FIFO` the same window is ~0.5 ms
//! (`shared/reference/userspace-feasibility.md` §4).

/// Holds the calling thread at `SCHED_FIFO` until dropped, then restores its policy.
#[derive(Debug)]
pub struct Realtime {
    previous: Option<(libc::c_int, libc::sched_param)>,
}

impl Realtime {
    /// Raises the calling thread to `SCHED_FIFO` priority 50 where permitted
    /// (`CAP_SYS_NICE`); otherwise does nothing (see [`Realtime::active`]).
    pub fn raise() -> Realtime {
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_getscheduler and sched_getparam read the calling thread's (pid 0)
        // scheduling state into a valid, initialised `sched_param` owned by this frame.
        let previous = unsafe {
            let policy = libc::sched_getscheduler(0);
            (policy >= 0 && libc::sched_getparam(0, &mut param) == 0).then_some((policy, param))
        };
        let fifo = libc::sched_param { sched_priority: 50 };
        // SAFETY: sets the calling thread's policy from a valid `sched_param`; failure (no
        // permission) is reported by the return value and leaves the policy unchanged.
        let raised = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) } == 0;
        Realtime {
            previous: if raised { previous } else { None },
        }
    }

    /// Whether the thread actually runs at real-time priority.
    pub fn active(&self) -> bool {
        self.previous.is_some()
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.previous.take() {
            // SAFETY: restores the calling thread's own previous policy and parameters, read
            // by `raise` from the kernel, through a valid `sched_param`.
            unsafe {
                libc::sched_setscheduler(0, policy, &param);
            }
        }
    }
}
