//! `kcmp(KCMP_VM)`: whether two processes share one address space.

use std::sync::atomic::{AtomicBool, Ordering};

/// `KCMP_VM` from `<linux/kcmp.h>`.
const KCMP_VM: libc::c_int = 1;

static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Whether processes `a` and `b` share their address space; `None` when the kernel cannot
/// say (one of them is gone, or no permission, or no `kcmp` at all: see [`unsupported`]).
pub fn same_vm(a: i32, b: i32) -> Option<bool> {
    // SAFETY: kcmp takes two pids, a comparison type and two integers, and only reads kernel
    // state; no memory of this process is passed.
    let result = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) };
    if result < 0 {
        if nix::errno::Errno::last() == nix::errno::Errno::ENOSYS {
            UNSUPPORTED.store(true, Ordering::Relaxed);
        }
        return None;
    }
    Some(result == 0)
}

/// Whether this kernel has no `kcmp` (built without `CONFIG_KCMP`).
pub fn unsupported() -> bool {
    UNSUPPORTED.load(Ordering::Relaxed)
}
