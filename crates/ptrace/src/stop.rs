//! Stopping the threads of an address space, working on them, and letting them go.
//!
//! [`Stopped::stop`] seizes (`PTRACE_SEIZE`) and interrupts (`PTRACE_INTERRUPT`) every thread
//! of every process sharing the address space ([`AddressSpace`]: the process itself and any
//! `clone(CLONE_VM)` sibling or `vfork` child), re-reading the thread lists until no new
//! thread appears, and checks that no new sharer was created meanwhile. [`Stopped::stop_one`]
//! stops a single thread blocked in a system call (to run a system call in the target while the
//! others keep running), or every thread when none is blocked: a `syscall` instruction borrowed
//! at a running thread's instruction pointer could be executed by the others.
//!
//! A thread interrupted inside a blocking system call has it restarted by the kernel when it
//! resumes, because its registers are handed back exactly as they were; the few calls Linux
//! ends with `EINTR` on any stop (`epoll_wait`, `sigtimedwait`...) are re-issued on release
//! unless a signal that would have interrupted them anyway is pending then, so the program
//! sees `EINTR` exactly when it would without hotsplice. A signal that arrives while a thread is
//! stopped is delivered when it resumes. [`Stopped`] always detaches on drop, so no path leaves
//! the target stopped, and it accounts for how long each thread was stopped ([`Pause`]).

use std::collections::HashMap;
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
use crate::process::{Process, interrupts, last_pid};
use crate::seccomp::{self, Verdict};
use crate::watchdog::Watchdog;

const PTRACE_EVENT_STOP: i32 = libc::PTRACE_EVENT_STOP;

/// The processes sharing one address space: the one asked for first, then any other process
/// created with `clone(CLONE_VM)` (a `vfork` child before it execs).
#[derive(Debug, Clone)]
pub struct AddressSpace {
    members: Vec<Process>,
    /// `/proc/loadavg`'s last pid when the members were last known complete.
    last_pid: Option<i32>,
}

impl AddressSpace {
    /// Opens `pid` and finds every process sharing its address space.
    pub fn open(pid: i32) -> Result<AddressSpace, Error> {
        let process = Process::new(pid)?;
        let last = last_pid();
        let mut members = vec![process.clone()];
        for other in process.address_space_members()? {
            if other != pid
                && let Ok(p) = Process::new(other)
            {
                members.push(p);
            }
        }
        Ok(AddressSpace {
            members,
            last_pid: last,
        })
    }

    /// The process asked for.
    pub fn primary(&self) -> &Process {
        &self.members[0]
    }

    /// Every process sharing the address space, the primary first.
    pub fn members(&self) -> &[Process] {
        &self.members
    }

    /// Their pids.
    pub fn pids(&self) -> Vec<i32> {
        self.members.iter().map(Process::pid).collect()
    }

    /// Processes created since the members were last known complete that share the address
    /// space (checked inside a stop, when no member can create another).
    fn new_members(&mut self) -> Vec<Process> {
        let now = last_pid();
        let before = self.last_pid;
        self.last_pid = now;
        if before.is_some() && now == before {
            return Vec::new();
        }
        let primary = self.primary().pid();
        let candidates: Vec<i32> = match (before, now) {
            (Some(before), Some(now)) if now > before && now - before <= 4096 => {
                (before + 1..=now).collect()
            }
            // Wrapped around, a flood of new processes, or no pid counter to trust: look at
            // all of them.
            _ => self.primary().address_space_members().unwrap_or_default(),
        };
        let mut found = Vec::new();
        for pid in candidates {
            if self.members.iter().any(|m| m.pid() == pid) {
                continue;
            }
            if crate::kcmp::same_vm(primary, pid) == Some(true)
                && let Ok(p) = Process::new(pid)
            {
                self.members.push(p.clone());
                found.push(p);
            }
        }
        found
    }
}

/// How many threads [`Stopped::stop_one`] stops, at most, looking for one in a system call
/// before it stops them all.
const HOST_TRIES: usize = 4;

/// The x86-64 `syscall` instruction.
const SYSCALL: [u8; 2] = [0x0f, 0x05];

/// How much of a stack [`Thread::stack_top`] holds.
pub const STACK_TOP: usize = 1024;

/// A stopped thread.
#[derive(Debug, Clone)]
pub struct Thread {
    /// The process it belongs to.
    pub pid: i32,
    /// Thread id.
    pub tid: i32,
    /// Its registers when it stopped (handed back unchanged on resume).
    pub regs: user_regs_struct,
    /// A signal that arrived while it was being stopped, to deliver on resume.
    pending_signal: Option<Signal>,
    /// Stopped by job control (`SIGSTOP`) before we came: it stays stopped after we leave.
    pub job_stopped: bool,
    /// When it was interrupted.
    pub interrupted_at: Instant,
    /// For a thread stopped alone ([`Stopped::stop_one`]): its run-queue wait total (ns)
    /// before the interrupt. Whatever it waits for a CPU from then to the release — woken from
    /// a blocking call to stop, running an injected call behind the program's busy threads —
    /// is not time it was stopped, and is taken out of its pause.
    run_delay_before: Option<u64>,
    /// The top of its stack (up to [`STACK_TOP`] bytes from its stack pointer), read as soon as
    /// it stopped, while other threads were still on their way to their stops (and again each
    /// time [`Stopped::let_run`] stops it anew); empty when it could not be read.
    pub stack_top: Vec<u8>,
    /// How long [`Stopped::let_run`] let it run (not time it was stopped).
    ran: Duration,
    /// Its system call returned `EINTR` while we stopped it (Linux does that for `epoll_wait`
    /// and a few others on any stop): it is re-issued when the thread is handed back, unless a
    /// signal that interrupts it is pending by then (then the `EINTR` is real). Whether one is
    /// is read only then: a `/proc` read costs 10-30 µs, and this one is needed once.
    restart: bool,
}

impl Thread {
    /// Whether it was stopped inside a system call (which will be restarted).
    pub fn in_syscall(&self) -> bool {
        (self.regs.orig_rax as i64) >= 0
    }

    /// Whether it was running (or waiting for a CPU) when stopped, rather than blocked: a
    /// blocked system call the stop interrupted returns a restart code (`-ERESTARTSYS`...) or
    /// `EINTR`; one that was merely running (a `read` of a file) completed first.
    pub fn was_running(&self) -> bool {
        let rax = self.regs.rax as i64;
        !self.in_syscall() || !(rax == -(libc::EINTR as i64) || (-516..=-512).contains(&rax))
    }
}

/// How long threads were stopped.
///
/// A thread released from a stop is not running yet: its CPU must pick it up, and a CPU that
/// went idle meanwhile (a halted virtual CPU, on a VM) takes tens of µs to wake. For threads
/// that were running when stopped, [`Pause::settle`] waits (a bounded time) until each has run
/// again and counts that time as stopped too, any wait for a CPU from the release on taken out
/// (that is contention, not the stop) — so the figure is what the thread itself experienced.
#[derive(Debug, Default)]
pub struct Pause {
    /// The longest time any thread was stopped: from just before its interrupt to just after
    /// its release (to when it ran again, once settled).
    pub longest: Duration,
    /// Threads stopped.
    pub threads: usize,
    /// Each thread's stopped time.
    pub per_thread: Vec<(i32, Duration)>,
    /// From the first interrupt to the last release, in `CLOCK_MONOTONIC` ns (the clock a
    /// program reads with `clock_gettime`, so that its own measurements can be lined up with
    /// the stop); `None` when no thread was stopped.
    pub window: Option<(u64, u64)>,
    /// Released threads that were running when stopped and have not been seen running since.
    waking: Vec<Waking>,
}

/// A released thread to see running again.
#[derive(Debug)]
struct Waking {
    /// Its place in `per_thread`.
    index: usize,
    /// What it was charged until its release.
    until_release: Duration,
    released_at: Instant,
    /// Its `/proc/PID/task/TID/schedstat`.
    file: File,
    /// The counters read just after the release.
    released: SchedStat,
    /// When it was last seen not to have run yet.
    last_seen: Instant,
}

/// A thread's scheduler counters: on-CPU time, run-queue wait (ns), times scheduled in.
#[derive(Debug, Clone, Copy)]
struct SchedStat {
    on_cpu: u64,
    run_delay: u64,
    slices: u64,
}

impl SchedStat {
    /// Whether the thread ran since `earlier` was read (its on-CPU time of a running thread
    /// grows as it runs; a thread that ran and was preempted was scheduled in once more).
    fn ran_since(&self, earlier: &SchedStat) -> bool {
        self.on_cpu != earlier.on_cpu || self.slices != earlier.slices
    }

    /// A thread's counters file, and the counters now.
    fn open(pid: i32, tid: i32) -> Option<(File, SchedStat)> {
        let file = File::open(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
        let now = SchedStat::read(&file)?;
        Some((file, now))
    }

    fn read(file: &File) -> Option<SchedStat> {
        let mut buf = [0u8; 96];
        let n = file.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let mut words = text.split_whitespace().map(|w| w.parse::<u64>().ok());
        Some(SchedStat {
            on_cpu: words.next()??,
            run_delay: words.next()??,
            slices: words.next()??,
        })
    }
}

impl Pause {
    /// Waits, at most `within`, until every released thread that was running when stopped has
    /// run again, and counts the time from its release until then as stopped too, less what
    /// it spent waiting on a run queue or running meanwhile (its scheduler counters). Only a
    /// prompt sighting counts (the thread last seen not to have run at most [`PROMPT`] before):
    /// when hotsplice itself waits for a CPU, as on a machine with more busy threads than
    /// CPUs, it cannot tell when a thread first ran, and the thread is counted until its
    /// release. Call it after leaving real-time priority: a real-time tracer polling would keep
    /// a thread waiting for its CPU from running.
    pub fn settle(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.waking.is_empty() && Instant::now() < deadline {
            let per_thread = &mut self.per_thread;
            self.waking.retain_mut(|w| {
                let Some(now) = SchedStat::read(&w.file) else {
                    return false; // gone
                };
                let at = Instant::now();
                if at.duration_since(w.last_seen) > PROMPT {
                    return false; // not seen promptly: counted until its release
                }
                if !now.ran_since(&w.released) {
                    w.last_seen = at;
                    return true;
                }
                let queued_or_ran = Duration::from_nanos(
                    now.run_delay.saturating_sub(w.released.run_delay)
                        + now.on_cpu.saturating_sub(w.released.on_cpu),
                );
                let woken = at
                    .duration_since(w.released_at)
                    .saturating_sub(queued_or_ran);
                if let Some(entry) = per_thread.get_mut(w.index) {
                    entry.1 = entry.1.max(w.until_release + woken);
                }
                false
            });
        }
        self.waking.clear();
        self.longest = self
            .per_thread
            .iter()
            .map(|&(_, d)| d)
            .max()
            .unwrap_or_default();
    }
}

/// How soon after last seeing a released thread not yet running hotsplice must see it run for
/// the sighting to count ([`Pause::settle`]).
const PROMPT: Duration = Duration::from_micros(200);

/// The `CLOCK_MONOTONIC` time now, in ns.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Every thread of an address space (or one thread: [`Stopped::stop_one`]), stopped.
#[derive(Debug)]
pub struct Stopped {
    pid: i32,
    threads: Vec<Thread>,
    mem: Arc<File>,
    processes: Vec<Process>,
    /// Seccomp filters read from threads, by tid.
    filters: HashMap<i32, Vec<Vec<seccomp::Insn>>>,
    /// Seccomp modes read from threads, by tid: kept only while every thread is stopped (then
    /// none can change its own or, with `TSYNC`, another's). Reading one costs 10-30 µs.
    modes: HashMap<i32, u32>,
    /// Every thread of the address space is stopped (not [`Stopped::stop_one`]).
    whole: bool,
    /// In a stop of a few threads, the one [`Stopped::stop_one`] found able to lend its own
    /// `syscall` (by index).
    host: Option<usize>,
    released: bool,
}

fn ptrace_error(tid: i32, operation: &'static str) -> impl Fn(Errno) -> Error {
    move |errno| match errno {
        Errno::EPERM => Error::PermissionDenied {
            pid: tid,
            what: operation.to_string(),
        },
        Errno::ESRCH => Error::ThreadGone {
            tid,
            during: operation,
        },
        other => Error::Ptrace {
            tid,
            operation,
            errno: other as i32,
        },
    }
}

/// What a `waitpid` on a tracee reported.
enum Event {
    /// The interrupt (or group-stop) stop; the signal says which.
    Interrupted(Signal),
    /// A signal is about to be delivered (signal-delivery-stop).
    Signal(Signal),
    /// A single step or a breakpoint completed.
    Trap,
    /// Another ptrace event.
    Other,
    /// The thread is gone.
    Gone,
    /// The watchdog's deadline passed.
    TimedOut,
}

/// Waits for the next event of a tracee (with a deadline).
fn wait(tid: i32, watchdog: &Watchdog) -> Result<Event, Error> {
    let pid = Pid::from_raw(tid);
    loop {
        return Ok(match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceEvent(_, signal, PTRACE_EVENT_STOP)) => Event::Interrupted(signal),
            Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => Event::Trap,
            Ok(WaitStatus::Stopped(_, signal)) => Event::Signal(signal),
            Ok(WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_)) => Event::Other,
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
                Event::Gone
            }
            Ok(_) => continue,
            Err(Errno::EINTR) => {
                if watchdog.expired() {
                    Event::TimedOut
                } else {
                    continue;
                }
            }
            Err(errno) => {
                return Err(Error::Ptrace {
                    tid,
                    operation: "waitpid",
                    errno: errno as i32,
                });
            }
        });
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

/// A thread's total run-queue wait so far (ns), from `/proc/PID/task/TID/schedstat`.
fn run_delay(pid: i32, tid: i32) -> Option<u64> {
    Some(SchedStat::open(pid, tid)?.1.run_delay)
}

/// The error for a stop that stopped no thread of process `pid`: it is gone — or, if it still
/// has a live thread, each thread it listed vanished or could not be held.
fn none_stopped(pid: i32) -> Error {
    match Process::live_thread(pid) {
        Some(_) => Error::NoThreadStopped { pid },
        None => Error::NoSuchProcess { pid },
    }
}

/// Whether an `EINTR` a thread got is real: a signal that interrupts it is pending. This runs
/// inside the pause, before the thread is let go: the common answer (no signal held for it,
/// none queued that it does not block) comes from two `ptrace` requests; only a signal that
/// is there needs the dispositions, from `/proc` (a read that costs this VM 10–30 µs).
fn interrupted_for_real(process: &Process, tid: i32, pending: Option<Signal>) -> bool {
    if pending.is_none() && deliverable_signals(tid) == Some(0) {
        return false;
    }
    let Some(state) = process.signal_state(tid) else {
        return true;
    };
    pending.is_some_and(|s| interrupts(s as u32, &state)) || state.would_interrupt()
}

/// The signals queued for a stopped thread, or for its process, that the thread does not block
/// (bit `n - 1` is signal `n`), read with `PTRACE_PEEKSIGINFO` and `PTRACE_GETSIGMASK`.
///
/// Every pending signal has a queue entry except `SIGKILL` (the thread dies whatever is
/// decided here) and one the kernel could not allocate an entry for (out of memory); `/proc`
/// would show that one, and this does not.
fn deliverable_signals(tid: i32) -> Option<u64> {
    let queued = queued_signals(tid, 0)? | queued_signals(tid, libc::PTRACE_PEEKSIGINFO_SHARED)?;
    let mut blocked = 0u64;
    // SAFETY: PTRACE_GETSIGMASK writes `size_of::<u64>()` bytes (the kernel's sigset on
    // x86_64, the size passed) into `blocked`, a u64 owned by this frame.
    let got = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            tid,
            std::mem::size_of::<u64>(),
            &mut blocked as *mut u64,
        )
    };
    (got == 0).then_some(queued & !blocked)
}

/// The signals in one queue of a stopped thread: its own (`flags` 0) or its process's
/// (`PTRACE_PEEKSIGINFO_SHARED`).
fn queued_signals(tid: i32, flags: u32) -> Option<u64> {
    const BATCH: usize = 32;
    let mut set = 0u64;
    let mut offset = 0u64;
    loop {
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut infos: [libc::siginfo_t; BATCH] = unsafe { std::mem::zeroed() };
        let args = libc::ptrace_peeksiginfo_args {
            off: offset,
            flags,
            nr: BATCH as i32,
        };
        // SAFETY: PTRACE_PEEKSIGINFO reads `args` and writes at most `args.nr` siginfo_t into
        // `infos`, which holds BATCH of them; both are owned by this frame.
        let got = unsafe {
            libc::ptrace(
                libc::PTRACE_PEEKSIGINFO,
                tid,
                &args as *const libc::ptrace_peeksiginfo_args,
                infos.as_mut_ptr(),
            )
        };
        let got = usize::try_from(got).ok()?;
        for info in &infos[..got.min(BATCH)] {
            if let Some(bit) = (info.si_signo as u32).checked_sub(1).filter(|&b| b < 64) {
                set |= 1 << bit;
            }
        }
        if got < BATCH {
            return Some(set);
        }
        offset += BATCH as u64;
    }
}

/// The name of a system call hotsplice injects, for messages.
pub fn syscall_name(number: i64) -> &'static str {
    match number {
        libc::SYS_mmap => "mmap",
        libc::SYS_munmap => "munmap",
        libc::SYS_mprotect => "mprotect",
        _ => "a system call",
    }
}

impl Stopped {
    fn empty(space: &AddressSpace) -> Stopped {
        Stopped {
            pid: space.primary().pid(),
            threads: Vec::new(),
            mem: space.primary().mem().clone(),
            processes: space.members().to_vec(),
            filters: HashMap::new(),
            modes: HashMap::new(),
            whole: false,
            host: None,
            released: false,
        }
    }

    /// Stops every thread of every process of `space`. Waits at most `timeout` for any one
    /// thread (a thread in uninterruptible sleep cannot stop); on failure every thread already
    /// stopped is released. A process that joined the address space since it was opened is
    /// stopped too and added to `space`.
    pub fn stop(space: &mut AddressSpace, timeout: Duration) -> Result<Stopped, Error> {
        let mut stopped = Stopped::empty(space);
        stopped.stop_rest(space, timeout)?;
        Ok(stopped)
    }

    /// Stops one thread of `space` only, one in a system call (it would not have run
    /// anyway) or about to restart one: enough to run a system call in the target while its
    /// other threads run, with the thread's own `syscall` instruction. Threads blocked in a
    /// call are tried first, the primary's before its sharers', then the one running thread
    /// that has used the least CPU (a thread released from an earlier stop a moment ago is
    /// still on its way back into its call, or about to restart it), at most [`HOST_TRIES`] in
    /// all; one that is neither stays stopped (its code is not borrowed). Not more running
    /// ones: a busy thread queued behind the others takes up to a scheduling round to reach
    /// its stop (measured: 100–260 ms with 64 busy threads on 2 cores), and every thread tried
    /// before it stays stopped meanwhile — stopping them all costs about 1 ms.
    ///
    /// When none can lend a `syscall`, every thread is stopped instead ([`Stopped::stop`]):
    /// the call then borrows two bytes at a thread's instruction pointer, which is safe only
    /// while no other thread can execute them.
    pub fn stop_one(space: &AddressSpace, timeout: Duration) -> Result<Stopped, Error> {
        let mut stopped = Stopped::empty(space);
        let (mut blocked, mut running) = (Vec::new(), Vec::new());
        for (i, process) in space.members().iter().enumerate() {
            let tids = match process.threads() {
                Ok(tids) => tids,
                Err(e) if i == 0 => return Err(e),
                Err(_) => continue,
            };
            for tid in tids {
                match process.thread_stat(tid) {
                    Some(('S', _)) => blocked.push((i, tid)),
                    Some(('R', cpu)) => running.push((cpu, i, tid)),
                    _ => {}
                }
            }
        }
        let least_busy = running.into_iter().min().map(|(_, i, tid)| (i, tid));
        let candidates = blocked.into_iter().chain(least_busy).take(HOST_TRIES);
        {
            let watchdog = Watchdog::start(timeout);
            for (i, tid) in candidates {
                if !stopped.stop_thread(&space.members()[i], tid, &watchdog)? {
                    continue;
                }
                let index = stopped.threads.len() - 1;
                if stopped.in_our_memory(index) && stopped.hosts_syscall(index).is_some() {
                    stopped.host = Some(index);
                    space.primary().check_same()?;
                    return Ok(stopped);
                }
            }
        }
        stopped.stop_rest(&mut space.clone(), timeout)?;
        Ok(stopped)
    }

    /// Stops every thread of `space` not stopped yet (see [`Stopped::stop`]).
    fn stop_rest(&mut self, space: &mut AddressSpace, timeout: Duration) -> Result<(), Error> {
        self.whole = true;
        let watchdog = Watchdog::start(timeout);
        let mut pending: Vec<Process> = space.members().to_vec();
        let primary = space.primary().pid();
        loop {
            for process in &pending {
                let pid = process.pid();
                // A sharer that exec'd or exited since no longer shares anything.
                if pid != primary && crate::kcmp::same_vm(primary, pid) != Some(true) {
                    continue;
                }
                match self.stop_process(process, &watchdog) {
                    Err(Error::NoSuchProcess { .. }) if pid != primary => {}
                    Err(Error::ThreadWontStop { tid }) => {
                        drop(watchdog);
                        return Err(match process.vfork_waiter(tid) {
                            true => Error::Vforking { pid, tid },
                            false => Error::ThreadWontStop { tid },
                        });
                    }
                    other => other?,
                }
            }
            // Every known thread is stopped: none can create a new sharer from here on.
            pending = space.new_members();
            if pending.is_empty() {
                break;
            }
            self.processes.extend(pending.iter().cloned());
        }
        if !self.threads.iter().any(|t| t.pid == self.pid) {
            return Err(none_stopped(self.pid));
        }
        // Every thread is stopped, so the program cannot exec from here until release; it must
        // not have exec'd before either.
        space.primary().check_same()
    }

    /// Whether stopped thread `index` runs in the primary's address space. A thread of a
    /// sharer does unless the sharer exec'd between being found and being stopped; once
    /// stopped, it cannot exec (an exec kills every other thread of its process first).
    fn in_our_memory(&self, index: usize) -> bool {
        let t = &self.threads[index];
        t.pid == self.pid || crate::kcmp::same_vm(self.pid, t.tid) == Some(true)
    }

    /// The `syscall` instruction with which stopped thread `index` can run a system call for
    /// us, touching no code ([`Stopped::own_syscall`]), if it has no signal to deliver and is
    /// not in a job-control stop.
    fn hosts_syscall(&mut self, index: usize) -> Option<u64> {
        let t = &self.threads[index];
        if t.pending_signal.is_some() || t.job_stopped {
            return None;
        }
        self.own_syscall(index)
    }

    /// The address of a `syscall` instruction of stopped thread `index`'s own: the one it
    /// made the system call it is in with, or the one it is about to execute — a call that
    /// restarts after an earlier stop has its instruction pointer moved back onto its
    /// `syscall` before the thread returns to user space, and a thread stopped again in
    /// between is found there. Setting the registers for another call there and restoring
    /// them after changes no byte of code, so the other threads may run meanwhile.
    fn own_syscall(&mut self, index: usize) -> Option<u64> {
        let t = &self.threads[index];
        let (rip, in_syscall) = (t.regs.rip, t.in_syscall());
        let mut two = [0u8; 2];
        if in_syscall && rip >= 2 && self.read(rip - 2, &mut two).is_ok() && two == SYSCALL {
            return Some(rip - 2);
        }
        (self.read(rip, &mut two).is_ok() && two == SYSCALL).then_some(rip)
    }

    fn stop_process(&mut self, process: &Process, watchdog: &Watchdog) -> Result<(), Error> {
        let pid = process.pid();
        // Threads already held (by [`Stopped::stop_one`]) are not seized again.
        let mut seen: Vec<i32> = self.threads.iter().map(|t| t.tid).collect();
        loop {
            let cursor = last_pid();
            let tids = process.threads()?;
            let new: Vec<i32> = tids.into_iter().filter(|t| !seen.contains(t)).collect();
            if new.is_empty() {
                return Ok(());
            }
            let mut seized = Vec::new();
            for &tid in &new {
                seen.push(tid);
                match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
                    Ok(()) => seized.push(tid),
                    Err(Errno::ESRCH) => {} // exited meanwhile
                    // An exiting thread cannot be attached (EPERM): it runs no more user code.
                    Err(Errno::EPERM) if thread_exiting(pid, tid) => {}
                    Err(Errno::EPERM) if process.tracer(tid).is_some() => {
                        let (tracer, comm) = process.tracer(tid).unwrap_or_default();
                        return Err(Error::Traced {
                            pid,
                            tid,
                            tracer,
                            comm,
                        });
                    }
                    Err(e) => return Err(ptrace_error(tid, "PTRACE_SEIZE")(e)),
                }
            }
            let mut interrupted = Vec::new();
            for tid in seized {
                let at = Instant::now();
                match ptrace::interrupt(Pid::from_raw(tid)) {
                    Ok(()) => interrupted.push((tid, at)),
                    Err(Errno::ESRCH) => {}
                    Err(e) => {
                        let _ = ptrace::detach(Pid::from_raw(tid), None);
                        return Err(ptrace_error(tid, "PTRACE_INTERRUPT")(e));
                    }
                }
            }
            for (tid, at) in interrupted {
                self.await_stop(process, tid, at, watchdog)?;
            }
            // Every thread listed is stopped. One created since the listing took a pid: with
            // the pid counter unchanged there is none, and the list need not be read again.
            if cursor.is_some() && last_pid() == cursor {
                return Ok(());
            }
        }
    }

    /// Seizes and interrupts one thread; false when it turned out to be gone.
    fn stop_thread(
        &mut self,
        process: &Process,
        tid: i32,
        watchdog: &Watchdog,
    ) -> Result<bool, Error> {
        match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(false),
            Err(Errno::EPERM) if thread_exiting(process.pid(), tid) => return Ok(false),
            Err(Errno::EPERM) if process.tracer(tid).is_some() => {
                let (tracer, comm) = process.tracer(tid).unwrap_or_default();
                return Err(Error::Traced {
                    pid: process.pid(),
                    tid,
                    tracer,
                    comm,
                });
            }
            Err(e) => return Err(ptrace_error(tid, "PTRACE_SEIZE")(e)),
        }
        let delay_before = run_delay(process.pid(), tid);
        let at = Instant::now();
        match ptrace::interrupt(Pid::from_raw(tid)) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(false),
            Err(e) => {
                let _ = ptrace::detach(Pid::from_raw(tid), None);
                return Err(ptrace_error(tid, "PTRACE_INTERRUPT")(e));
            }
        }
        let before = self.threads.len();
        self.await_stop(process, tid, at, watchdog)?;
        let stopped = self.threads.len() > before;
        if stopped && let Some(t) = self.threads.last_mut() {
            t.run_delay_before = delay_before;
        }
        Ok(stopped)
    }

    /// Waits for an interrupted thread to stop and records it.
    fn await_stop(
        &mut self,
        process: &Process,
        tid: i32,
        interrupted_at: Instant,
        watchdog: &Watchdog,
    ) -> Result<(), Error> {
        let fail = |e: Error| {
            let _ = ptrace::detach(Pid::from_raw(tid), None);
            e
        };
        let (pending, job_stopped) = loop {
            match wait(tid, watchdog).map_err(fail)? {
                Event::Interrupted(signal) => {
                    let job = matches!(
                        signal,
                        Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
                    );
                    break (None, job);
                }
                // A signal arrived first: the thread is stopped for its delivery. Keep it to
                // deliver on release.
                Event::Signal(signal) => break (Some(signal), false),
                Event::Trap => break (Some(Signal::SIGTRAP), false),
                Event::Other => {
                    let _ = ptrace::cont(Pid::from_raw(tid), None);
                }
                Event::Gone => return Ok(()),
                Event::TimedOut => return Err(fail(Error::ThreadWontStop { tid })),
            }
        };
        let regs = match ptrace::getregs(Pid::from_raw(tid)) {
            Ok(regs) => regs,
            Err(Errno::ESRCH) => return Ok(()),
            Err(e) => return Err(fail(ptrace_error(tid, "PTRACE_GETREGS")(e))),
        };
        let restart = pending.is_none()
            && !job_stopped
            && (regs.orig_rax as i64) >= 0
            && regs.rax as i64 == -(libc::EINTR as i64);
        self.threads.push(Thread {
            pid: process.pid(),
            tid,
            regs,
            pending_signal: pending,
            job_stopped,
            interrupted_at,
            run_delay_before: None,
            stack_top: self.stack_top(regs.rsp),
            ran: Duration::ZERO,
            restart,
        });
        Ok(())
    }

    /// Up to [`STACK_TOP`] bytes from `rsp` (fewer at the end of the mapping).
    fn stack_top(&self, rsp: u64) -> Vec<u8> {
        let mut buf = vec![0u8; STACK_TOP];
        let mut len = STACK_TOP;
        // A read that crosses the end of the stack's mapping fails: retry up to the page end.
        loop {
            if self.mem.read_exact_at(&mut buf[..len], rsp).is_ok() {
                buf.truncate(len);
                return buf;
            }
            let to_page_end = (4096 - (rsp % 4096)) as usize;
            if len <= to_page_end {
                return Vec::new();
            }
            len = to_page_end;
        }
    }

    /// The stopped threads.
    pub fn threads(&self) -> &[Thread] {
        &self.threads
    }

    /// The primary process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn process_of(&self, pid: i32) -> &Process {
        self.processes
            .iter()
            .find(|p| p.pid() == pid)
            .unwrap_or(&self.processes[0])
    }

    /// Reads memory of the stopped process.
    pub fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.mem
            .read_exact_at(buf, address)
            .map_err(|source| self.processes[0].memory_error(address, buf.len(), source))
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
                .map_err(|_| self.processes[0].memory_error(address, data.len(), first)),
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

    /// The thread to run an injected call on: one stopped in a system call if possible (its
    /// `syscall` instruction can be reused), never one with a signal to deliver, and a
    /// job-stopped one only when every thread is (running it for the call does not end the
    /// job-control stop, which holds again once we detach), never one that does not run in
    /// the primary's memory.
    fn pick_thread(&self) -> Result<usize, Error> {
        let mut choice = None;
        for job_stopped in [false, true] {
            for (i, t) in self.threads.iter().enumerate() {
                if t.pending_signal.is_some()
                    || t.job_stopped != job_stopped
                    || !self.in_our_memory(i)
                {
                    continue;
                }
                if t.in_syscall() && t.regs.rip >= 2 {
                    return Ok(i);
                }
                if choice.is_none() {
                    choice = Some(i);
                }
            }
            if let Some(c) = choice {
                return Ok(c);
            }
        }
        Err(Error::NoUsableThread { pid: self.pid })
    }

    /// Forgets the seccomp state read so far: the program is about to run code of its own (a
    /// thread let run, a function called), which may install filters (with `TSYNC`, on every
    /// thread).
    fn target_runs(&mut self) {
        self.modes.clear();
        self.filters.clear();
    }

    /// What the seccomp filters of thread `index` would do with a call.
    fn seccomp_verdict(
        &mut self,
        index: usize,
        number: i64,
        ip: u64,
        args: [u64; 6],
    ) -> Result<Verdict, Error> {
        let t = &self.threads[index];
        let (pid, tid) = (t.pid, t.tid);
        let mode = match self.modes.get(&tid) {
            Some(&mode) => mode,
            None => {
                let mode = self.process_of(pid).seccomp_mode(tid);
                if self.whole {
                    self.modes.insert(tid, mode);
                }
                mode
            }
        };
        match mode {
            0 => return Ok(Verdict::Allow),
            // Strict mode allows only read, write, exit and sigreturn.
            1 => return Ok(Verdict::Kill),
            _ => {}
        }
        if let std::collections::hash_map::Entry::Vacant(entry) = self.filters.entry(tid) {
            let filters = seccomp::filters(tid).map_err(|failure| Error::SeccompUnreadable {
                pid,
                tid,
                why: match failure {
                    seccomp::ReadFailure::Unsupported => {
                        "this kernel cannot show them (no PTRACE_SECCOMP_GET_FILTER)".to_string()
                    }
                    seccomp::ReadFailure::NotPermitted => {
                        "hotsplice may not read them (it needs CAP_SYS_ADMIN)".to_string()
                    }
                    seccomp::ReadFailure::Other(e) => e.desc().to_string(),
                },
            })?;
            entry.insert(filters);
        }
        let data = seccomp::seccomp_data(number, ip, args);
        Ok(seccomp::evaluate(&self.filters[&tid], &data))
    }

    /// Fails (`Error::Seccomp`) unless the thread [`Stopped::syscall`] would use may make
    /// this call: lets an operation make sure, before it changes anything, that a call it will
    /// need later (`munmap` to undo) is allowed.
    pub fn check_syscall(&mut self, number: i64, args: [u64; 6]) -> Result<(), Error> {
        let index = self.pick_thread()?;
        let t = &self.threads[index];
        let (pid, tid, ip) = (t.pid, t.tid, t.regs.rip);
        match self.seccomp_verdict(index, number, ip, args)? {
            Verdict::Allow => Ok(()),
            verdict => Err(Error::Seccomp {
                pid,
                tid,
                call: syscall_name(number),
                verdict,
            }),
        }
    }

    /// Runs a system call in the target, on one of its stopped threads, and returns its
    /// result. The thread's seccomp filters are evaluated first: a call they would not allow is
    /// not made (`Error::Seccomp`). The thread's registers (and any byte borrowed for the
    /// `syscall` instruction) are restored exactly, so an interrupted system call of that
    /// thread still restarts.
    pub fn syscall(&mut self, number: i64, args: [u64; 6]) -> Result<i64, Error> {
        let (index, own) = match self.whole {
            true => {
                let index = self.pick_thread()?;
                (index, self.own_syscall(index))
            }
            // A stop of a few threads: the one `stop_one` found to lend its own instruction,
            // its bytes checked again just before they are used.
            false => {
                let lent = self
                    .host
                    .filter(|&i| self.in_our_memory(i))
                    .and_then(|i| Some((i, Some(self.hosts_syscall(i)?))));
                lent.ok_or(Error::NoUsableThread { pid: self.pid })?
            }
        };
        let saved = self.threads[index].regs;
        let tid = self.threads[index].tid;
        let pid = self.threads[index].pid;
        // The thread's own `syscall` instruction, or two bytes borrowed at its instruction
        // pointer to put one there.
        let (insn, borrowed) = match own {
            Some(at) => (at, None),
            None => (saved.rip, Some(saved.rip)),
        };
        // Two bytes borrowed at an instruction pointer are code any running thread may
        // execute: only with every thread stopped ([`Stopped::stop_one`] stops them all when
        // no thread can lend its own `syscall`).
        if borrowed.is_some() && !self.whole {
            return Err(Error::NoUsableThread { pid });
        }
        let verdict = self.seccomp_verdict(index, number, insn + 2, args)?;
        if verdict != Verdict::Allow {
            return Err(Error::Seccomp {
                pid,
                tid,
                call: syscall_name(number),
                verdict,
            });
        }
        let mut original = [0u8; 2];
        if let Some(at) = borrowed {
            self.read(at, &mut original)?;
            self.write(at, &SYSCALL)?;
        }
        let result = self.step_syscall(index, insn, number, args, saved);
        // Always put the thread back as it was.
        if let Some(at) = borrowed {
            self.write(at, &original)?;
        }
        ptrace::setregs(Pid::from_raw(tid), saved).map_err(ptrace_error(tid, "PTRACE_SETREGS"))?;
        self.settle(index)?;
        result
    }

    /// `mmap(hint, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)` in the
    /// target: the address, which is `hint` unless the kernel ignores the flag.
    pub fn mmap(&mut self, hint: u64, len: u64, prot: u64) -> Result<u64, Error> {
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        self.syscall(libc::SYS_mmap, [hint, len, prot, flags, u64::MAX, 0])
            .map(|a| a as u64)
    }

    /// `munmap(address, len)` in the target.
    pub fn munmap(&mut self, address: u64, len: u64) -> Result<(), Error> {
        self.syscall(libc::SYS_munmap, [address, len, 0, 0, 0, 0])
            .map(|_| ())
    }

    /// Moves a thread from the `SIGTRAP` stop a single step (or a breakpoint) left it in back to
    /// a plain interrupt stop, discarding the `SIGTRAP`. Without this, if hotsplice died before
    /// releasing the thread, the kernel would deliver that `SIGTRAP` and kill the target.
    fn settle(&mut self, index: usize) -> Result<(), Error> {
        let tid = self.threads[index].tid;
        let pid = Pid::from_raw(tid);
        ptrace::interrupt(pid).map_err(ptrace_error(tid, "PTRACE_INTERRUPT"))?;
        ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
        let watchdog = Watchdog::start(Duration::from_secs(2));
        loop {
            match wait(tid, &watchdog)? {
                Event::Interrupted(_) => return Ok(()),
                Event::Gone => {
                    return Err(Error::ThreadGone {
                        tid,
                        during: "the wait after PTRACE_CONT",
                    });
                }
                Event::TimedOut => return Err(Error::ThreadWontStop { tid }),
                Event::Signal(signal) => {
                    self.threads[index].pending_signal.get_or_insert(signal);
                    ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
                }
                Event::Trap | Event::Other => {
                    ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
                }
            }
        }
    }

    fn step_syscall(
        &mut self,
        index: usize,
        insn: u64,
        number: i64,
        args: [u64; 6],
        saved: user_regs_struct,
    ) -> Result<i64, Error> {
        let tid = self.threads[index].tid;
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
            match wait(tid, &watchdog)? {
                Event::Trap => break,
                // A thread taken from a job-control stop traps once more on resume (the stop
                // seen when seizing it, and our interrupt): step again.
                Event::Interrupted(_) | Event::Other => {
                    ptrace::step(pid, None).map_err(ptrace_error(tid, "PTRACE_SINGLESTEP"))?;
                }
                Event::Signal(signal) => {
                    // Another signal came first: keep it for release and step again.
                    self.threads[index].pending_signal.get_or_insert(signal);
                    ptrace::step(pid, None).map_err(ptrace_error(tid, "PTRACE_SINGLESTEP"))?;
                }
                Event::Gone => {
                    return Err(Error::ThreadGone {
                        tid,
                        during: "the wait after PTRACE_SINGLESTEP",
                    });
                }
                Event::TimedOut => return Err(Error::ThreadWontStop { tid }),
            }
        }
        let after = ptrace::getregs(pid).map_err(ptrace_error(tid, "PTRACE_GETREGS"))?;
        if after.rip != insn + 2 {
            return Err(Error::RemoteSyscall {
                tid,
                call: syscall_name(number),
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
                call: syscall_name(number),
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
        self.target_runs();
        let usable = |job_stopped: bool| {
            (0..self.threads.len()).find(|&i| {
                let t = &self.threads[i];
                t.pending_signal.is_none() && t.job_stopped == job_stopped && self.in_our_memory(i)
            })
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
                match wait(tid, &watchdog)? {
                    Event::Trap => break,
                    Event::Interrupted(_) | Event::Other => {
                        ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
                    }
                    // The called code itself faulted: the fault is ours, not the program's (it
                    // is never delivered); the thread gets its registers back.
                    Event::Signal(
                        signal @ (Signal::SIGSEGV
                        | Signal::SIGBUS
                        | Signal::SIGILL
                        | Signal::SIGFPE),
                    ) => {
                        let at = ptrace::getregs(pid).map(|r| r.rip).unwrap_or(0);
                        return Err(Error::RemoteCall {
                            tid,
                            function,
                            detail: format!("it faulted ({signal} at {at:#x})"),
                        });
                    }
                    Event::Signal(signal) => {
                        self.threads[index].pending_signal.get_or_insert(signal);
                        ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
                    }
                    Event::Gone => {
                        return Err(Error::ThreadGone {
                            tid,
                            during: "the wait for the called function",
                        });
                    }
                    Event::TimedOut => {
                        // It did not come back: stop it where it is.
                        let _ = ptrace::interrupt(pid);
                        let _ = waitpid(pid, Some(WaitPidFlag::__WALL));
                        return Err(Error::RemoteCall {
                            tid,
                            function,
                            detail: "it did not return within a second".into(),
                        });
                    }
                }
            }
            let after = ptrace::getregs(pid).map_err(ptrace_error(tid, "PTRACE_GETREGS"))?;
            if after.rip != trap + 1 {
                return Err(Error::RemoteCall {
                    tid,
                    function,
                    detail: format!("it trapped at {:#x}", after.rip),
                });
            }
            Ok(after.rax)
        })();
        ptrace::setregs(pid, saved).map_err(ptrace_error(tid, "PTRACE_SETREGS"))?;
        self.settle(index)?;
        result
    }

    /// Lets one stopped thread run alone for about `slice` while every other thread stays
    /// stopped, then stops it again; its registers are updated. Used when a thread is found
    /// inside code about to be replaced although it is runnable (it was merely preempted):
    /// it usually leaves within microseconds. Returns false when the thread exited meanwhile
    /// (it is then dropped from the stopped set).
    pub fn let_run(&mut self, tid: i32, slice: Duration) -> Result<bool, Error> {
        let Some(index) = self.threads.iter().position(|t| t.tid == tid) else {
            return Ok(false);
        };
        if self.threads[index].job_stopped {
            return Ok(true);
        }
        self.target_runs();
        let pid = Pid::from_raw(tid);
        // Hand it back exactly as it stopped (a restarted call restarts).
        let mut regs = self.threads[index].regs;
        let t = &self.threads[index];
        if t.restart && !interrupted_for_real(self.process_of(t.pid), tid, t.pending_signal) {
            regs.rip -= 2;
            regs.rax = regs.orig_rax;
            ptrace::setregs(pid, regs).map_err(ptrace_error(tid, "PTRACE_SETREGS"))?;
        }
        self.threads[index].restart = false;
        ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
        let let_go = Instant::now();
        std::thread::sleep(slice);
        let watchdog = Watchdog::start(Duration::from_secs(2));
        self.threads[index].ran += let_go.elapsed();
        match ptrace::interrupt(pid) {
            Ok(()) => {}
            Err(Errno::ESRCH) => {
                self.threads.remove(index);
                return Ok(false);
            }
            Err(e) => return Err(ptrace_error(tid, "PTRACE_INTERRUPT")(e)),
        }
        loop {
            match wait(tid, &watchdog)? {
                Event::Interrupted(_) => break,
                Event::Signal(signal) => {
                    self.threads[index].pending_signal.get_or_insert(signal);
                    ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
                }
                Event::Trap | Event::Other => {
                    ptrace::cont(pid, None).map_err(ptrace_error(tid, "PTRACE_CONT"))?;
                }
                Event::Gone => {
                    self.threads.remove(index);
                    return Ok(false);
                }
                Event::TimedOut => return Err(Error::ThreadWontStop { tid }),
            }
        }
        let regs = ptrace::getregs(pid).map_err(ptrace_error(tid, "PTRACE_GETREGS"))?;
        let t = &self.threads[index];
        let restart = t.pending_signal.is_none()
            && (regs.orig_rax as i64) >= 0
            && regs.rax as i64 == -(libc::EINTR as i64);
        let stack_top = self.stack_top(regs.rsp);
        let t = &mut self.threads[index];
        t.regs = regs;
        t.restart = restart;
        t.stack_top = stack_top;
        Ok(true)
    }

    /// Lets every thread go (delivering signals that arrived meanwhile) and reports how long
    /// each was stopped.
    pub fn release(mut self) -> Pause {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Pause {
        if self.released {
            return Pause::default();
        }
        self.released = true;
        let mut per_thread = Vec::with_capacity(self.threads.len());
        let mut released = Vec::with_capacity(self.threads.len());
        for t in &self.threads {
            let process = self.process_of(t.pid);
            // Re-issue a call that got `EINTR` only from our stop — unless a signal that would
            // interrupt it arrived meanwhile: then it returns `EINTR` after the handler runs,
            // as it would have without hotsplice.
            if t.restart && !interrupted_for_real(process, t.tid, t.pending_signal) {
                let mut regs = t.regs;
                regs.rip -= 2;
                regs.rax = regs.orig_rax;
                let _ = ptrace::setregs(Pid::from_raw(t.tid), regs);
            }
            let waited = t
                .run_delay_before
                .and_then(|a| Some(run_delay(t.pid, t.tid)?.saturating_sub(a)))
                .map_or(Duration::ZERO, Duration::from_nanos);
            let _ = ptrace::detach(Pid::from_raw(t.tid), t.pending_signal);
            let released_at = Instant::now();
            per_thread.push((
                t.tid,
                released_at
                    .saturating_duration_since(t.interrupted_at)
                    .saturating_sub(waited)
                    .saturating_sub(t.ran),
            ));
            released.push(released_at);
        }
        let (now, now_ns) = (Instant::now(), monotonic_ns());
        // Threads that were running, to see running again ([`Pause::settle`]); a blocked one
        // would not have run anyway, and a job-stopped one stays stopped. Their counters are
        // read only now, every thread let go first.
        let mut waking = Vec::new();
        for (index, t) in self.threads.iter().enumerate() {
            if !t.was_running() || t.job_stopped {
                continue;
            }
            if let Some((file, counters)) = SchedStat::open(t.pid, t.tid) {
                waking.push(Waking {
                    index,
                    until_release: per_thread[index].1,
                    released_at: released[index],
                    file,
                    released: counters,
                    last_seen: Instant::now(),
                });
            }
        }
        let window = self
            .threads
            .iter()
            .map(|t| t.interrupted_at)
            .min()
            .map(|first| {
                let since = now.saturating_duration_since(first).as_nanos() as u64;
                (now_ns.saturating_sub(since), now_ns)
            });
        Pause {
            longest: per_thread.iter().map(|&(_, d)| d).max().unwrap_or_default(),
            threads: per_thread.len(),
            per_thread,
            window,
            waking,
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.detach_all();
    }
}
