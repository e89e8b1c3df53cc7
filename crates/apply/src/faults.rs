//! Test switches, compiled in only with the `fault-injection` feature (the test suite's
//! builds): with `HOTSPLICE_FAULT=<point>`, hotsplice kills itself with `SIGKILL` when it
//! reaches that point, so the crash-consistency tests can stop it between any two steps of an
//! apply or undo; with `HOTSPLICE_HOLD=<point>:<dir>`, it creates `<dir>/reached` there and
//! waits (at most a minute) for `<dir>/release`, so a test can act on the target — or on
//! hotsplice — at exactly that step. In a release build both are no-ops.

/// Reaches a named point.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use std::time::{Duration, Instant};
    if std::env::var_os("HOTSPLICE_FAULT").is_some_and(|v| v == name) {
        hotsplice_ptrace::die_now();
    }
    if let Some(hold) = std::env::var_os("HOTSPLICE_HOLD")
        && let Some((at, dir)) = hold.to_string_lossy().split_once(':')
        && at == name
    {
        let dir = std::path::Path::new(dir);
        let _ = std::fs::write(dir.join("reached"), name);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("release").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Reaches a named point (no-op: built without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}
