//! The one primitive that changes live code: stop every thread of the address space, look at
//! every stack, and — only if no thread is in (or due to return into) code that must be idle —
//! check that each site still holds what it should, write it, read it back, and let the
//! threads go. Apply, undo and recover all go through [`switch`]; they differ only in what
//! they decide from the stopped threads and in what they do inside the stop around the
//! writes.
//!
//! A thread found inside such code while it is runnable (merely preempted there) is let run
//! alone for moments, the others staying stopped, until it leaves ([`Options::let_run`]);
//! a thread blocked in a system call under it makes the whole attempt wait and retry
//! ([`Options::retries`]). Between attempts the target runs. Every stop is accounted per
//! thread ([`PauseLog`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hotsplice_ptrace::{AddressSpace, Mapping, Pause, Realtime, Stopped, signals};

use crate::mapped::Cfi;
use crate::safety::{self, Busy, ThreadView};
use crate::{Error, Options, faults, unwind};

/// The longest wait to see released threads run again: enough on an idle machine (tens of
/// µs); on a busy one a thread may wait far longer for a CPU, which is contention, not the
/// stop, and such a thread is counted until its release.
const SETTLE: Duration = Duration::from_millis(5);

/// How long each thread was stopped by one invocation, over all its stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseLog {
    per_thread: HashMap<i32, (Duration, u32)>,
    /// How many times threads were stopped (all-thread and one-thread stops).
    pub stops: u32,
    /// Whether every stop ran at real-time priority.
    pub realtime: bool,
    /// Each stop, from its first interrupt to its last release, in `CLOCK_MONOTONIC` ns, and
    /// how many threads it stopped.
    pub windows: Vec<(u64, u64, usize)>,
}

impl PauseLog {
    /// A log with nothing stopped yet.
    pub fn new() -> PauseLog {
        PauseLog {
            realtime: true,
            ..PauseLog::default()
        }
    }

    /// Adds one stop, just released: leaves real-time priority (`rt`), then waits to see the
    /// threads that were running run again ([`Pause::settle`]: a released thread is not
    /// running until its CPU picks it up).
    pub fn add(&mut self, mut pause: Pause, rt: Realtime) {
        self.stops += 1;
        self.realtime &= rt.active();
        drop(rt);
        pause.settle(SETTLE);
        self.windows
            .extend(pause.window.map(|(start, end)| (start, end, pause.threads)));
        for &(tid, d) in &pause.per_thread {
            let e = self.per_thread.entry(tid).or_default();
            e.0 += d;
            e.1 += 1;
        }
    }

    /// Adds every stop of another log.
    pub fn merge(&mut self, other: &PauseLog) {
        self.stops += other.stops;
        self.realtime &= other.realtime;
        self.windows.extend_from_slice(&other.windows);
        for (&tid, &(d, n)) in &other.per_thread {
            let e = self.per_thread.entry(tid).or_default();
            e.0 += d;
            e.1 += n;
        }
    }

    /// The longest total time any one thread was stopped.
    pub fn longest(&self) -> Duration {
        self.per_thread
            .values()
            .map(|&(d, _)| d)
            .max()
            .unwrap_or_default()
    }

    /// Threads stopped at least once.
    pub fn threads(&self) -> usize {
        self.per_thread.len()
    }

    /// Every thread stopped: (tid, total stopped time, stops), by tid.
    pub fn per_thread(&self) -> Vec<(i32, Duration, u32)> {
        let mut out: Vec<_> = self
            .per_thread
            .iter()
            .map(|(&tid, &(d, n))| (tid, d, n))
            .collect();
        out.sort_unstable();
        out
    }
}

/// A site to change: what it must hold now, and what to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteWrite {
    /// Address.
    pub site: u64,
    /// What it must hold before the write.
    pub expect: [u8; 5],
    /// What to write.
    pub write: [u8; 5],
}

/// What the caller decides from the stopped threads.
#[derive(Debug)]
pub enum Decision {
    /// Write these sites.
    Write(Vec<SiteWrite>),
    /// A thread is in code that must be idle.
    Busy(Busy),
}

/// Inside the stop, around the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Every check passed, nothing written yet.
    BeforeWrites,
    /// Every site written and read back.
    AfterWrites,
}

/// What a hook asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proceed {
    /// Go on.
    Yes,
    /// Let the threads go without writing anything; the caller will plan again.
    Replan,
}

/// How a switch ended.
#[derive(Debug, Clone)]
pub struct Switched {
    /// Stops it took.
    pub attempts: u32,
    /// The sites written (empty after [`Proceed::Replan`]).
    pub written: Vec<SiteWrite>,
    /// Threads stopped in the last stop.
    pub threads: usize,
}

/// Fails with [`Error::Stopped`] when hotsplice was asked to stop (SIGINT, SIGTERM...).
pub fn interrupted() -> Result<(), Error> {
    match signals::pending_interruption() {
        Some(signal) => Err(Error::Stopped {
            signal: signal.as_str(),
        }),
        None => Ok(()),
    }
}

/// Sleeps, waking early to fail when hotsplice is asked to stop.
pub fn sleep(duration: Duration) -> Result<(), Error> {
    let until = Instant::now() + duration;
    loop {
        interrupted()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// Waits (a bounded time) while a thread of the address space sits in `vfork`: it cannot be
/// stopped until its child execs or exits, which is normally a matter of milliseconds.
fn wait_for_vfork(space: &AddressSpace, options: &Options) -> Result<(), Error> {
    let deadline = Instant::now() + options.stop_timeout;
    loop {
        let waiting = space
            .members()
            .iter()
            .find_map(|p| p.vforking().map(|tid| (p.pid(), tid)));
        match waiting {
            None => return Ok(()),
            Some((pid, tid)) if Instant::now() >= deadline => {
                return Err(hotsplice_ptrace::Error::Vforking { pid, tid }.into());
            }
            Some(_) => sleep(Duration::from_millis(1))?,
        }
    }
}

/// Stops every thread of the space (at real-time priority where permitted), retrying briefly
/// while a thread waits in `vfork`.
pub fn stop_all(space: &mut AddressSpace, options: &Options) -> Result<(Stopped, Realtime), Error> {
    loop {
        wait_for_vfork(space, options)?;
        let rt = Realtime::raise();
        match Stopped::stop(space, options.stop_timeout) {
            Ok(stopped) => return Ok((stopped, rt)),
            Err(hotsplice_ptrace::Error::Vforking { .. }) => {
                drop(rt);
                sleep(Duration::from_millis(1))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What each thread looks like to the safety check: its IP, the return addresses on its
/// stack (by unwinding), and the part of the stack unwinding could not account for. `maps`
/// is read before the stop (re-read only for a stack it does not cover); memory is read
/// through the stopped process: this runs inside the pause. `only` limits it to one thread.
pub fn thread_views(
    stopped: &mut Stopped,
    cfi: &Cfi,
    maps: &[Mapping],
    only: Option<i32>,
) -> Vec<ThreadView> {
    let tables = cfi.tables();
    let mut cache = unwind::StepCache::default();
    let mut fresh: Option<Vec<Mapping>> = None;
    let (threads, tops): (Vec<_>, Vec<_>) = stopped
        .threads()
        .iter()
        .filter(|t| only.is_none_or(|tid| tid == t.tid))
        .map(|t| {
            let regs = (t.tid, t.regs.rip, t.regs.rsp, t.regs.rbp, t.in_syscall());
            (regs, t.stack_top.clone())
        })
        .unzip();
    // Where each stack ends (its mapping's end, at most 16 MiB on).
    let mut ranges = Vec::with_capacity(threads.len());
    for &(_, _, rsp, _, _) in &threads {
        let covering = |maps: &[Mapping]| {
            maps.iter()
                .find(|m| rsp >= m.start && rsp < m.end)
                .map(|m| m.end)
        };
        let end = match covering(maps) {
            Some(end) => end,
            None => {
                let pid = stopped.pid();
                let again = fresh.get_or_insert_with(|| {
                    std::fs::read_to_string(format!("/proc/{pid}/maps"))
                        .map(|t| hotsplice_ptrace::parse_maps(&t))
                        .unwrap_or_default()
                });
                covering(again).unwrap_or(rsp)
            }
        };
        ranges.push((rsp, (end - rsp).min(16 << 20) as usize));
    }
    // First the top of each stack, read as each thread stopped: a complete walk seldom needs
    // more (the rest, down to the mapping's end, holds the thread's descriptor and TLS, a few
    // KB each: reading every byte of 64 stacks took 300 µs of the stop). A walk that needs
    // more, or that ends early and so must scan the whole stack, gets its whole stack in one
    // more read.
    let mut stacks: Vec<Vec<u8>> = tops
        .into_iter()
        .zip(&ranges)
        .map(|(mut top, &(_, len))| {
            top.truncate(len);
            top
        })
        .collect();
    let walk = |cache: &mut unwind::StepCache,
                (rip, rsp, rbp): (u64, u64, u64),
                stack: &[u8],
                whole: usize| {
        let short = std::cell::Cell::new(false);
        let read = |address: u64| -> Option<u64> {
            let at = address.checked_sub(rsp)? as usize;
            match stack.get(at..at.checked_add(8)?) {
                Some(word) => Some(u64::from_le_bytes(word.try_into().ok()?)),
                None => {
                    short.set(short.get() || at + 8 <= whole);
                    None
                }
            }
        };
        let walked = unwind::walk(rip, rsp, rbp, &tables, cache, &read);
        let complete = walked.unknown_from.is_none() && !short.get();
        (walked, complete || stack.len() >= whole)
    };
    let mut walks = Vec::with_capacity(threads.len());
    let mut again = Vec::new();
    for (i, &(_, rip, rsp, rbp, _)) in threads.iter().enumerate() {
        let (walked, enough) = walk(&mut cache, (rip, rsp, rbp), &stacks[i], ranges[i].1);
        if !enough {
            again.push(i);
        }
        walks.push(walked);
    }
    let whole: Vec<(u64, usize)> = again.iter().map(|&i| ranges[i]).collect();
    for (&i, stack) in again.iter().zip(stopped.read_many(&whole)) {
        let (_, rip, rsp, rbp, _) = threads[i];
        walks[i] = walk(&mut cache, (rip, rsp, rbp), &stack, ranges[i].1).0;
        stacks[i] = stack;
    }
    let mut views = Vec::with_capacity(threads.len());
    for (((tid, rip, rsp, _, blocked), stack), walked) in threads.into_iter().zip(stacks).zip(walks)
    {
        let end = rsp + stack.len() as u64;
        let (conservative, start) = match walked.unknown_from {
            Some(from) if from >= rsp => {
                let skip = ((from - rsp) as usize).min(stack.len());
                (stack[skip..].to_vec(), from)
            }
            Some(_) => (stack.clone(), rsp),
            None => (Vec::new(), end),
        };
        views.push(ThreadView {
            tid,
            blocked,
            rip,
            complete: walked.unknown_from.is_none(),
            return_addresses: walked.return_addresses,
            stack: conservative,
            stack_start: start,
        });
    }
    views
}

/// The error for a switch that found a thread busy at every attempt.
pub fn busy_error(pid: i32, history: &[Busy], attempts: u32, options: &Options) -> Error {
    let last = history.last().expect("at least one attempt");
    let same = history
        .iter()
        .all(|b| b.tid == last.tid && b.function == last.function);
    if same && history.len() > 1 && last.main_loop() {
        return Error::AlwaysBusy {
            pid,
            tid: last.tid,
            function: last.function.clone(),
            attempts,
        };
    }
    let why = if last.blocked {
        format!(
            "{last} (waiting for I/O, a lock or a timer); retry when it is idle, or give it longer with --retries/--retry-delay"
        )
    } else {
        format!(
            "{last}, and did not leave it while let run alone for {} µs; retry later",
            options.let_run.as_micros()
        )
    };
    Error::Busy {
        pid,
        detail: why,
        attempts,
    }
}

/// Stops the address space until no thread is busy (by `decide`), then checks and writes the
/// sites `decide` returns. `hook` runs inside the stop before and after the writes (it may
/// ask to [`Proceed::Replan`]). Fails without writing anything if a site does not hold what it
/// should ([`Error::Tampered`]) or a thread stays busy; a write that does not read back is
/// rolled back ([`Error::WriteFailed`]).
pub fn switch(
    space: &mut AddressSpace,
    cfi: &Cfi,
    options: &Options,
    pauses: &mut PauseLog,
    decide: &mut dyn FnMut(&[ThreadView]) -> Decision,
    hook: &mut dyn FnMut(&mut Stopped, Stage) -> Result<Proceed, Error>,
) -> Result<Switched, Error> {
    let pid = space.primary().pid();
    let mut history: Vec<Busy> = Vec::new();
    for attempt in 1..=options.retries + 1 {
        interrupted()?;
        let maps = space.primary().maps()?;
        let (mut stopped, rt) = stop_all(space, options)?;
        let outcome = decide_with_let_run(&mut stopped, cfi, &maps, options, decide);
        let writes = match outcome {
            Ok(Decision::Write(writes)) => writes,
            Ok(Decision::Busy(busy)) => {
                pauses.add(stopped.release(), rt);
                history.push(busy);
                if attempt <= options.retries {
                    sleep(options.retry_delay)?;
                }
                continue;
            }
            Err(e) => {
                pauses.add(stopped.release(), rt);
                return Err(e);
            }
        };
        faults::point("checked");
        let result = write_sites(&mut stopped, pid, &writes, hook);
        let pause = stopped.release();
        let threads = pause.threads;
        pauses.add(pause, rt);
        faults::point("released");
        return match result {
            Ok(Proceed::Yes) => Ok(Switched {
                attempts: attempt,
                written: writes,
                threads,
            }),
            Ok(Proceed::Replan) => Ok(Switched {
                attempts: attempt,
                written: Vec::new(),
                threads,
            }),
            Err(e) => Err(e),
        };
    }
    Err(busy_error(pid, &history, options.retries + 1, options))
}

/// Decides; while a runnable thread is busy, lets it run alone in growing slices (the others
/// stay stopped) within the let-run budget, and decides again. A thread still busy after its
/// slice may be waiting for another stopped one (a lock it holds), so the next slice goes to
/// another busy thread when there is one; the decision returned is always made over every
/// thread.
fn decide_with_let_run(
    stopped: &mut Stopped,
    cfi: &Cfi,
    maps: &[Mapping],
    options: &Options,
    decide: &mut dyn FnMut(&[ThreadView]) -> Decision,
) -> Result<Decision, Error> {
    let mut views = thread_views(stopped, cfi, maps, None);
    let started = Instant::now();
    let mut slice = Duration::ZERO;
    // Threads let run that did not leave.
    let mut stuck: Vec<i32> = Vec::new();
    let mut last: Option<i32> = None;
    loop {
        let decision = decide(&views);
        let Decision::Busy(first) = &decision else {
            return Ok(decision);
        };
        if started.elapsed() >= options.let_run {
            return Ok(decision);
        }
        let runnable = |busy: &Busy| {
            !busy.blocked
                && !matches!(busy.how, safety::How::StackWord(_))
                && stopped
                    .threads()
                    .iter()
                    .any(|t| t.tid == busy.tid && !t.job_stopped)
        };
        // Was the thread let run last still busy when its slice ended?
        if let Some(tid) = last
            && !stuck.contains(&tid)
            && views
                .iter()
                .find(|v| v.tid == tid)
                .is_some_and(|v| matches!(decide(std::slice::from_ref(v)), Decision::Busy(_)))
        {
            stuck.push(tid);
        }
        // A busy thread that has not had its turn yet, if any; else start the round again.
        let others: Vec<ThreadView> = views
            .iter()
            .filter(|v| !stuck.contains(&v.tid))
            .cloned()
            .collect();
        let busy = match decide(&others) {
            Decision::Busy(b) if runnable(&b) => b,
            _ => {
                stuck.clear();
                first.clone()
            }
        };
        if !runnable(&busy) {
            // The decision over every thread, made last (`decide` may keep state).
            return Ok(decide(&views));
        }
        let tid = busy.tid;
        last = Some(tid);
        let alive = stopped.let_run(tid, slice)?;
        slice = (slice * 2)
            .max(Duration::from_micros(20))
            .min(Duration::from_micros(200));
        views.retain(|v| v.tid != tid);
        if alive {
            views.extend(thread_views(stopped, cfi, maps, Some(tid)));
        }
    }
}

/// Inside the stop: checks every site, runs the hook, writes and reads back, rolls back on
/// failure.
fn write_sites(
    stopped: &mut Stopped,
    pid: i32,
    writes: &[SiteWrite],
    hook: &mut dyn FnMut(&mut Stopped, Stage) -> Result<Proceed, Error>,
) -> Result<Proceed, Error> {
    for w in writes {
        let mut now = [0u8; 5];
        stopped.read(w.site, &mut now)?;
        if now != w.expect {
            return Err(Error::Tampered {
                pid,
                address: w.site,
            });
        }
    }
    if hook(stopped, Stage::BeforeWrites)? == Proceed::Replan {
        return Ok(Proceed::Replan);
    }
    let mut done: Vec<&SiteWrite> = Vec::new();
    for w in writes {
        let mut back = [0u8; 5];
        let ok = stopped.write(w.site, &w.write).is_ok()
            && stopped.read(w.site, &mut back).is_ok()
            && back == w.write;
        if !ok {
            for d in done.iter().rev() {
                let _ = stopped.write(d.site, &d.expect);
            }
            let _ = stopped.write(w.site, &w.expect);
            return Err(Error::WriteFailed {
                pid,
                address: w.site,
            });
        }
        done.push(w);
        if done.len() == 1 && writes.len() > 1 {
            faults::point("between-writes");
        }
    }
    faults::point("written");
    hook(stopped, Stage::AfterWrites)
}

/// One stop to look: what `decide` says of the threads right now, and how long it took
/// (`check`'s dry run of the safety check).
pub fn look(
    space: &mut AddressSpace,
    cfi: &Cfi,
    options: &Options,
    pauses: &mut PauseLog,
    decide: &mut dyn FnMut(&[ThreadView]) -> Decision,
) -> Result<Decision, Error> {
    let maps = space.primary().maps()?;
    let (mut stopped, rt) = stop_all(space, options)?;
    let views = thread_views(&mut stopped, cfi, &maps, None);
    let decision = decide(&views);
    pauses.add(stopped.release(), rt);
    Ok(decision)
}
