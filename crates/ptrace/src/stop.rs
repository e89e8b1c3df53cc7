//! Stopping every thread of a process, working on it, and letting it go.
//!
//! [`Stopped::stop`] seizes (`PTRACE_SEIZE`) and interrupts (`PTRACE_INTERRUPT`) every thread
//! of `/proc/PID/task`, re-reading the list until no new thread appears, so threads created
//! meanwhile are caught. A thread interrupted inside a blocking system call (`epoll_wait`,
//! `accept`, `nanosleep`, `futex`) has it restarted by the kernel when it resumes, because its
//! registers are handed back exactly as they were. A signal that arrives while a thread is
//! being stopped is delivered when it resumes. [`Stopped`] always detaches on drop, so no path
//! leaves the target stopped.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libc::user_regs_struct;
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::Error;
use crate::process::Process;
use crate::watchdog::Watchdog;

const PTRACE_EVENT_STOP: i32 = 128;

/// A stopped thread.
#[derive(Debug, Clone)]
pub struct Thread {
    /// Thread id.
    pub tid: i32,
    /// Its registers when it stopped (handed back unchanged on resume).
    pub regs: user_regs_struct,
    /// A signal that arrived while it was being stopped, to deliver on resume.
    pending_signal: Option<Signal>,
    /// Stopped by job control (`SIGSTOP`) before we came: it stays stopped after we leave.
    pub job_stopped: bool,
    /// When it stopped.
    pub stopped_at: Instant,
    /// Its system call returned `EINTR` only because we stopped it (Linux does that for
    /// `epoll_wait` and a few others on any stop): it is re-issued on release.
    restart: bool,
}

impl Thread {
    /// Whether it was stopped inside a system call (which will be restarted).
    pub fn in_syscall(&self) -> bool {
        (self.regs.orig_rax as i64) >= 0
    }
}

/// How long the target was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// From the first thread's interrupt to the last thread's release: the longest time any
    /// thread was stopped.
    pub longest: Duration,
    /// Threads stopped.
    pub threads: usize,
}

/// Every thread of a process, stopped.
#[derive(Debug)]
pub struct Stopped {
    pid: i32,
    threads: Vec<Thread>,
    mem: Arc<File>,
    process: Process,
    first_interrupt: Instant,
    released: bool,
}

fn ptrace_error(tid: i32, operation: &'static str) -> impl Fn(Errno) -> Error {
    move |errno| match errno {
        Errno::EPERM => Error::PermissionDenied {
            pid: tid,
            what: operation.to_string(),
        },
        Errno::ESRCH => Error::ThreadGone { tid },
        other => Error::Ptrace {
            tid,
            operation,
            errno: other as i32,
        },
    }
}

/// Moves a thread from the `SIGTRAP` stop a single step (or a breakpoint) left it in back to a
/// plain interrupt stop, discarding the `SIGTRAP`. Without this, if hotsplice died before
/// releasing the thread, the kernel would deliver that `SIGTRAP` and kill the target.
fn settle(tid: i32) -> Result<(), Error> {
    let pid = Pid::from_raw(tid);
    ptrace::interrupt(pid).map_err(ptrace_error(tid, "PTRACE_INTERRUPT"))?;
    ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP)) => return Ok(()),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                return Err(Error::ThreadGone { tid });
            }
            Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => {
                ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(ptrace_error(tid, "waitpid")(e)),
        }
    }
}

/// Whether a thread is gone or exiting (a zombie thread, or `PF_EXITING`).
fn thread_exiting(pid: i32, tid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
        return true;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    // Field 9 (flags): PF_EXITING = 0x4.
    let flags: u64 = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse().ok())
        .unwrap_or(0);
    matches!(state, Some('Z' | 'X' | 'x')) || flags & 0x4 != 0
}

/// Whether a thread (or its process) has signals pending: then an `EINTR` it got is real.
fn signals_pending(pid: i32, tid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
        return true;
    };
    status
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .any(|l| {
            l.split(':')
                .nth(1)
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .is_none_or(|mask| mask != 0)
        })
}

/// What waiting for a thread found.
enum Waited {
    Stopped {
        pending: Option<Signal>,
        job_stopped: bool,
    },
    Gone,
}

/// Waits for `tid` to stop after an interrupt. Blocks in `waitpid` (polling would keep a
/// real-time tracer on the CPU the tracee needs); a [`Watchdog`] interrupts the wait with a
/// signal when the deadline passes.
fn wait_for_stop(tid: i32, watchdog: &Watchdog) -> Result<Waited, Error> {
    let pid = Pid::from_raw(tid);
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceEvent(_, signal, PTRACE_EVENT_STOP)) => {
                let job_stopped = matches!(
                    signal,
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
                );
                return Ok(Waited::Stopped {
                    pending: None,
                    job_stopped,
                });
            }
            Ok(WaitStatus::Stopped(_, signal)) => {
                // A signal arrived first: the thread is stopped for its delivery. Keep it to
                // deliver on release.
                return Ok(Waited::Stopped {
                    pending: Some(signal),
                    job_stopped: false,
                });
            }
            Ok(WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_)) => {
                // Another ptrace event; the interrupt stop follows.
                let _ = ptrace::cont(pid, None);
            }
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
                return Ok(Waited::Gone);
            }
            Ok(_) => {}
            Err(Errno::EINTR) => {
                if watchdog.expired() {
                    return Err(Error::ThreadWontStop { tid });
                }
            }
            Err(errno) => {
                return Err(Error::Ptrace {
                    tid,
                    operation: "waitpid",
                    errno: errno as i32,
                });
            }
        }
    }
}

impl Stopped {
    /// Stops every thread of `process`. Waits at most `timeout` for any one thread (a thread in
    /// uninterruptible sleep cannot stop); on failure every thread already stopped is released.
    pub fn stop(process: &Process, timeout: Duration) -> Result<Stopped, Error> {
        let pid = process.pid();
        let mut stopped = Stopped {
            pid,
            threads: Vec::new(),
            mem: process.mem().clone(),
            process: process.clone(),
            first_interrupt: Instant::now(),
            released: false,
        };
        let watchdog = Watchdog::start(timeout);
        let mut seen: Vec<i32> = Vec::new();
        let mut first = true;
        loop {
            let tids = process.threads()?;
            let new: Vec<i32> = tids.into_iter().filter(|t| !seen.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            let mut seized = Vec::new();
            for &tid in &new {
                seen.push(tid);
                match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
                    Ok(()) => seized.push(tid),
                    Err(Errno::ESRCH) => {} // exited meanwhile
                    // An exiting thread cannot be attached (EPERM): it runs no more user code.
                    Err(Errno::EPERM) if thread_exiting(pid, tid) => {}
                    Err(e) => return Err(ptrace_error(tid, "PTRACE_SEIZE")(e)),
                }
            }
            if first {
                stopped.first_interrupt = Instant::now();
                first = false;
            }
            let mut interrupted = Vec::new();
            for tid in seized {
                match ptrace::interrupt(Pid::from_raw(tid)) {
                    Ok(()) => interrupted.push(tid),
                    Err(Errno::ESRCH) => {}
                    Err(e) => {
                        let _ = ptrace::detach(Pid::from_raw(tid), None);
                        return Err(ptrace_error(tid, "PTRACE_INTERRUPT")(e));
                    }
                }
            }
            for tid in interrupted {
                match wait_for_stop(tid, &watchdog) {
                    Ok(Waited::Stopped {
                        pending,
                        job_stopped,
                    }) => {
                        let regs = match ptrace::getregs(Pid::from_raw(tid)) {
                            Ok(regs) => regs,
                            Err(Errno::ESRCH) => continue,
                            Err(e) => return Err(ptrace_error(tid, "PTRACE_GETREGS")(e)),
                        };
                        let restart = pending.is_none()
                            && !job_stopped
                            && (regs.orig_rax as i64) >= 0
                            && regs.rax as i64 == -(libc::EINTR as i64)
                            && !signals_pending(pid, tid);
                        stopped.threads.push(Thread {
                            tid,
                            regs,
                            pending_signal: pending,
                            job_stopped,
                            stopped_at: Instant::now(),
                            restart,
                        });
                    }
                    Ok(Waited::Gone) => {}
                    Err(e) => {
                        let _ = ptrace::detach(Pid::from_raw(tid), None);
                        return Err(e);
                    }
                }
            }
        }
        if stopped.threads.is_empty() {
            return Err(Error::NoSuchProcess { pid });
        }
        // Every thread is stopped, so the program cannot exec from here until release; it must
        // not have exec'd before either.
        process.check_same()?;
        Ok(stopped)
    }

    /// The stopped threads.
    pub fn threads(&self) -> &[Thread] {
        &self.threads
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Reads memory of the stopped process.
    pub fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.mem
            .read_exact_at(buf, address)
            .map_err(|source| self.process.memory_error(address, buf.len(), source))
    }

    /// Reads several ranges in as few system calls as possible (`process_vm_readv`, falling
    /// back to `/proc/PID/mem` per range): this runs inside the pause. A range that cannot be
    /// read comes back empty.
    pub fn read_many(&mut self, ranges: &[(u64, usize)]) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = ranges.iter().map(|&(_, len)| vec![0u8; len]).collect();
        let mut done = 0usize;
        while done < ranges.len() {
            // The kernel stops at the first range it cannot read; batches of up to 1024.
            let end = (done + 1024).min(ranges.len());
            let remote: Vec<nix::sys::uio::RemoteIoVec> = ranges[done..end]
                .iter()
                .map(|&(base, len)| nix::sys::uio::RemoteIoVec {
                    base: base as usize,
                    len,
                })
                .collect();
            let mut local: Vec<std::io::IoSliceMut<'_>> = out[done..end]
                .iter_mut()
                .map(|b| std::io::IoSliceMut::new(b))
                .collect();
            let read =
                nix::sys::uio::process_vm_readv(Pid::from_raw(self.pid), &mut local, &remote)
                    .unwrap_or(0);
            // Which ranges came back whole.
            let mut bytes = read;
            let mut next = done;
            while next < end && bytes >= ranges[next].1 {
                bytes -= ranges[next].1;
                next += 1;
            }
            if next < end {
                // The range at `next` failed (or was cut): read it alone, then go on after it.
                let (address, len) = ranges[next];
                let mut buf = vec![0u8; len];
                out[next] = if self.read(address, &mut buf).is_ok() {
                    buf
                } else {
                    Vec::new()
                };
                next += 1;
            }
            done = next;
        }
        out
    }

    /// Writes memory of the stopped process, read-only text included: through
    /// `/proc/PID/mem`, or word by word with `PTRACE_POKEDATA` where the kernel forbids that.
    pub fn write(&mut self, address: u64, data: &[u8]) -> Result<(), Error> {
        match self.mem.write_all_at(data, address) {
            Ok(()) => Ok(()),
            Err(first) => self
                .poke(address, data)
                .map_err(|_| self.process.memory_error(address, data.len(), first)),
        }
    }

    fn poke(&mut self, address: u64, data: &[u8]) -> Result<(), Error> {
        let tid = self.threads[0].tid;
        let pid = Pid::from_raw(tid);
        let mut offset = 0usize;
        while offset < data.len() {
            let at = address + offset as u64;
            let aligned = at & !7;
            let word = ptrace::read(pid, aligned as ptrace::AddressType)
                .map_err(ptrace_error(tid, "PTRACE_PEEKDATA"))?;
            let mut bytes = word.to_ne_bytes();
            let start = (at - aligned) as usize;
            let n = (8 - start).min(data.len() - offset);
            bytes[start..start + n].copy_from_slice(&data[offset..offset + n]);
            ptrace::write(
                pid,
                aligned as ptrace::AddressType,
                i64::from_ne_bytes(bytes),
            )
            .map_err(ptrace_error(tid, "PTRACE_POKEDATA"))?;
            offset += n;
        }
        Ok(())
    }

    /// Runs a system call in the target, on one of its stopped threads, and returns its
    /// result. The thread's registers (and any byte borrowed for the `syscall` instruction)
    /// are restored exactly, so an interrupted system call of that thread still restarts.
    pub fn syscall(&mut self, number: i64, args: [u64; 6]) -> Result<i64, Error> {
        // Prefer a thread stopped in a system call: the `syscall` instruction it just executed
        // is at rip - 2, so no byte of the target needs changing.
        // A thread stopped by job control is used only when every thread is: running it for
        // the call does not end the job-control stop, which holds again once we detach.
        let mut choice = None;
        for job_stopped in [false, true] {
            for (i, t) in self.threads.iter().enumerate() {
                if t.pending_signal.is_some() || t.job_stopped != job_stopped {
                    continue;
                }
                if t.in_syscall() && t.regs.rip >= 2 {
                    choice = Some((i, true));
                    break;
                }
                if choice.is_none() {
                    choice = Some((i, false));
                }
            }
            if choice.is_some() {
                break;
            }
        }
        let Some((index, in_syscall)) = choice else {
            return Err(Error::NoUsableThread { pid: self.pid });
        };
        let saved = self.threads[index].regs;
        let tid = self.threads[index].tid;
        let mut insn = saved.rip;
        let mut borrowed = None;
        if in_syscall {
            let mut two = [0u8; 2];
            self.read(saved.rip - 2, &mut two)?;
            if two == [0x0f, 0x05] {
                insn = saved.rip - 2;
            } else {
                borrowed = Some(saved.rip);
            }
        } else {
            borrowed = Some(saved.rip);
        }
        let mut original = [0u8; 2];
        if let Some(at) = borrowed {
            self.read(at, &mut original)?;
            self.write(at, &[0x0f, 0x05])?;
        }
        let result = self.step_syscall(tid, insn, number, args, saved);
        // Always put the thread back as it was.
        if let Some(at) = borrowed {
            self.write(at, &original)?;
        }
        ptrace::setregs(Pid::from_raw(tid), saved).map_err(ptrace_error(tid, "PTRACE_SETREGS"))?;
        settle(tid)?;
        result
    }

    fn step_syscall(
        &mut self,
        tid: i32,
        insn: u64,
        number: i64,
        args: [u64; 6],
        saved: user_regs_struct,
    ) -> Result<i64, Error> {
        let pid = Pid::from_raw(tid);
        let mut regs = saved;
        regs.rip = insn;
        regs.rax = number as u64;
        regs.orig_rax = u64::MAX; // not in a system call: no restart logic on the way out
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::setregs(pid, regs).map_err(ptrace_error(tid, "PTRACE_SETREGS"))?;
        ptrace::step(pid, None).map_err(ptrace_error(tid, "PTRACE_SINGLESTEP"))?;
        let watchdog = Watchdog::start(Duration::from_secs(5));
        loop {
            match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                Err(Errno::EINTR) if watchdog.expired() => {
                    return Err(Error::ThreadWontStop { tid });
                }
                Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => break,
                Ok(WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP)) => {
                    // A thread taken from a job-control stop traps once more on resume
                    // (the stop seen when seizing it, and our interrupt): step again.
                    ptrace::step(pid, None).map_err(ptrace_error(tid, "PTRACE_SINGLESTEP"))?;
                }
                Ok(WaitStatus::Stopped(_, signal)) => {
                    // Another signal came first: keep it for release and step again.
                    if let Some(t) = self.threads.iter_mut().find(|t| t.tid == tid) {
                        t.pending_signal.get_or_insert(signal);
                    }
                    ptrace::step(pid, None).map_err(ptrace_error(tid, "PTRACE_SINGLESTEP"))?;
                }
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                    return Err(Error::ThreadGone { tid });
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(ptrace_error(tid, "waitpid")(e)),
            }
        }
        let after = ptrace::getregs(pid).map_err(ptrace_error(tid, "PTRACE_GETREGS"))?;
        if after.rip != insn + 2 {
            return Err(Error::RemoteSyscall {
                tid,
                number,
                errno: 0,
                detail: format!(
                    "the thread stopped at {:#x}, not after the syscall",
                    after.rip
                ),
            });
        }
        let value = after.rax as i64;
        if (-4095..0).contains(&value) {
            return Err(Error::RemoteSyscall {
                tid,
                number,
                errno: (-value) as i32,
                detail: Errno::from_raw((-value) as i32).desc().to_string(),
            });
        }
        Ok(value)
    }

    /// Calls a function of the target (`rax = function()`, no arguments) on one of its
    /// stopped threads, on a fresh stack frame below its stack pointer, returning to `trap`:
    /// the address of an `int3` instruction in executable memory. Used only for functions
    /// that take no locks (an `STT_GNU_IFUNC` resolver). The thread's registers are restored
    /// exactly.
    pub fn call(&mut self, function: u64, trap: u64) -> Result<u64, Error> {
        let usable = |job_stopped: bool| {
            self.threads
                .iter()
                .position(|t| t.pending_signal.is_none() && t.job_stopped == job_stopped)
        };
        let Some(index) = usable(false).or_else(|| usable(true)) else {
            return Err(Error::NoUsableThread { pid: self.pid });
        };
        let saved = self.threads[index].regs;
        let tid = self.threads[index].tid;
        let pid = Pid::from_raw(tid);
        // Below the red zone, 16-byte aligned, then the return address: at the callee's
        // entry rsp % 16 == 8, as after a `call`.
        let mut rsp = (saved.rsp - 4096) & !15;
        rsp -= 8;
        self.write(rsp, &trap.to_le_bytes())?;
        let mut regs = saved;
        regs.rip = function;
        regs.rsp = rsp;
        regs.rax = 0;
        regs.orig_rax = u64::MAX;
        ptrace::setregs(pid, regs).map_err(ptrace_error(tid, "PTRACE_SETREGS"))?;
        let result = (|| {
            ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
            let watchdog = Watchdog::start(Duration::from_secs(1));
            loop {
                match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                    Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => break,
                    Ok(WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP)) => {
                        ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
                    }
                    Ok(WaitStatus::Stopped(_, signal)) => {
                        if let Some(t) = self.threads.iter_mut().find(|t| t.tid == tid) {
                            t.pending_signal.get_or_insert(signal);
                        }
                        ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
                    }
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                        return Err(Error::ThreadGone { tid });
                    }
                    Err(Errno::EINTR) if watchdog.expired() => {
                        // It did not come back: stop it where it is.
                        let _ = ptrace::interrupt(pid);
                        let _ = waitpid(pid, Some(WaitPidFlag::__WALL));
                        return Err(Error::RemoteSyscall {
                            tid,
                            number: -1,
                            errno: 0,
                            detail: format!("the call to {function:#x} did not return"),
                        });
                    }
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(ptrace_error(tid, "waitpid")(e)),
                }
            }
            let after = ptrace::getregs(pid).map_err(ptrace_error(tid, "PTRACE_GETREGS"))?;
            if after.rip != trap + 1 {
                return Err(Error::RemoteSyscall {
                    tid,
                    number: -1,
                    errno: 0,
                    detail: format!("the call to {function:#x} trapped at {:#x}", after.rip),
                });
            }
            Ok(after.rax)
        })();
        ptrace::setregs(pid, saved).map_err(ptrace_error(tid, "PTRACE_SETREGS"))?;
        settle(tid)?;
        result
    }

    /// Lets every thread go (delivering signals that arrived meanwhile) and reports how long
    /// the target was stopped.
    pub fn release(mut self) -> Pause {
        self.detach_all();
        Pause {
            longest: self.first_interrupt.elapsed(),
            threads: self.threads.len(),
        }
    }

    fn detach_all(&mut self) {
        if self.released {
            return;
        }
        for t in &self.threads {
            if t.restart {
                // Re-issue the interrupted call: back over the `syscall` instruction with
                // the call number in rax; its argument registers are still intact.
                let mut regs = t.regs;
                regs.rip -= 2;
                regs.rax = regs.orig_rax;
                let _ = ptrace::setregs(Pid::from_raw(t.tid), regs);
            }
            let _ = ptrace::detach(Pid::from_raw(t.tid), t.pending_signal);
        }
        self.released = true;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.detach_all();
    }
}
