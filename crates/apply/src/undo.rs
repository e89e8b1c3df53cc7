//! `undo`: put back every original byte — checked against the process's own file, never taken
//! from a record on trust — in one [`switch`](crate::switch::switch), then unmap the patch
//! memory once no thread can be in it.

use std::cell::Cell;

use hotsplice_ptrace::{AddressSpace, Realtime, Stopped};

use crate::mapped::Cfi;
use crate::observe::observe;
use crate::safety::{self, Range};
use crate::state::{Journal, Operation, Phase, StateDir, Transaction};
use crate::switch::{self, Decision, PauseLog, Proceed, SiteWrite, Stage};
use crate::{
    Error, FunctionReport, HookReport, Options, ProcessReport, faults, hooks, runtime, target,
    verify,
};
use hotsplice_bundle::HookKind;

/// `hotsplice undo` over several processes: every one is checked before any is changed.
pub fn undo(
    id: &str,
    pids: &[i32],
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<Vec<ProcessReport>, Error> {
    let dir = StateDir::open(&options.state_dir)?;
    let mut spaces = target::open(pids)?;
    let _lock = target::lock(&dir, &spaces, options)?;
    for space in &spaces {
        find(&dir, space, id)?;
    }
    let mut reports = Vec::new();
    for space in &mut spaces {
        switch::interrupted()?;
        reports.push(undo_locked(&dir, space, id, options, pauses)?);
    }
    Ok(reports)
}

/// The patch to undo in a space, with the patches below it, after checking its record
/// against the process.
fn find(
    dir: &StateDir,
    space: &AddressSpace,
    id: &str,
) -> Result<(crate::state::ProcessState, usize), Error> {
    let process = space.primary();
    let pid = process.pid();
    let start_time = process.start_time()?;
    dir.refuse_if_interrupted(pid, start_time)?;
    let state = observe(process, start_time, dir, true)?.state;
    let Some(index) = state.patches.iter().position(|p| p.id == id) else {
        return Err(Error::NotApplied {
            pid,
            id: id.to_string(),
        });
    };
    let patch = &state.patches[index];
    if let Some(later) = state.patches[index + 1..].iter().find(|p| {
        p.uses.contains(&patch.id)
            || p.functions
                .iter()
                .any(|f| patch.functions.iter().any(|g| g.site == f.site))
    }) {
        return Err(Error::DependentPatch {
            pid,
            id: id.to_string(),
            later: later.id.clone(),
        });
    }
    let maps = process.maps()?;
    verify::regions(process, &maps, patch)?;
    verify::hooks(pid, patch)?;
    for f in &patch.functions {
        verify::jump(pid, patch, f.site, &f.jump.0)?;
        verify::original(
            process,
            &maps,
            patch,
            f.site,
            &f.replaced.0,
            &state.patches[..index],
        )?;
    }
    Ok((state, index))
}

/// Undoes patch `id` in one address space whose lock is held.
pub fn undo_locked(
    dir: &StateDir,
    space: &mut AddressSpace,
    id: &str,
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<ProcessReport, Error> {
    let (mut state, index) = find(dir, space, id)?;
    let process = space.primary().clone();
    let pid = process.pid();
    let patch = state.patches[index].clone();
    let maps = process.maps()?;
    let cfi = Cfi::load(&process, &maps).with_patches(&state.patches);
    let ranges: Vec<Range> = patch
        .regions
        .iter()
        .map(|r| Range {
            start: r.address,
            end: r.end(),
            name: format!("the code of {id}"),
        })
        .collect();
    let writes: Vec<SiteWrite> = patch
        .functions
        .iter()
        .map(|f| SiteWrite {
            site: f.site,
            expect: f.jump.0,
            write: f.replaced.0,
        })
        .collect();
    let single = target::thread_count(space) == 1;
    // Whether any thread has seccomp on, read while the program runs: if none has (the common
    // case), the check that `munmap` will be allowed is skipped inside the stop, where each
    // read of a thread's status costs 10-30 µs. A filter installed meanwhile is still obeyed:
    // the `munmap` itself is made only after its filters allow it.
    let seccomp = space.members().iter().any(|p| {
        p.threads().map_or(true, |tids| {
            tids.iter().any(|&tid| p.seccomp_mode(tid) != 0)
        })
    });
    let mut mine = PauseLog::new();
    let txn = Transaction::begin(
        dir,
        Journal {
            pid,
            start_time: state.start_time,
            sharers: space.pids()[1..].to_vec(),
            operation: Operation::Undo,
            phase: Phase::Switching,
            candidates: Vec::new(),
            patch: patch.clone(),
        },
    )?;
    let unmapped = Cell::new(false);
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    let mut shadows = None;
    let result = switch::switch(
        space,
        &cfi,
        options,
        &mut mine,
        &mut |views| match safety::check(views, &ranges) {
            Some(busy) => Decision::Busy(busy),
            None => Decision::Write(writes.clone()),
        },
        &mut |stopped, stage| {
            match stage {
                // The memory must be unmapped afterwards: make sure the target's seccomp
                // filters allow it before changing anything.
                Stage::BeforeWrites => {
                    for r in patch.regions.iter().filter(|_| seccomp) {
                        stopped.check_syscall(
                            nix::libc::SYS_munmap,
                            [r.address, r.size, 0, 0, 0, 0],
                        )?;
                    }
                    hooks::run(stopped, &patch, HookKind::PreUndo, &mut runs)?;
                    shadows = patch.runtime.and_then(|rt| runtime::stats(stopped, rt));
                }
                Stage::AfterWrites => {
                    hooks::run_post(
                        stopped,
                        &patch,
                        HookKind::PostUndo,
                        &mut runs,
                        &mut warnings,
                    );
                    // A single-threaded target: unmap in the same stop (no thread is in the
                    // memory, and no jump leads there any more).
                    if single {
                        unmapped.set(unmap(stopped, &patch.regions).is_ok());
                    }
                }
            }
            Ok(Proceed::Yes)
        },
    );
    let switched = match result {
        Ok(s) => s,
        Err(e) => {
            pauses.merge(&mine);
            // Nothing was written (a failed write is rolled back): the patch stays.
            txn.abort()?;
            return Err(e);
        }
    };
    state.patches.remove(index);
    target::save(dir, space, &state)?;
    let mut txn = txn;
    if !unmapped.get() {
        txn.advance(|j| j.phase = Phase::Restored)?;
        faults::point("restored");
        // No jump leads into the patch memory any more and no thread was in it: unmap it in
        // a short stop of one thread.
        let rt = Realtime::raise();
        let mut stopped = Stopped::stop_one(space, options.stop_timeout)?;
        let result = unmap(&mut stopped, &patch.regions);
        mine.add(stopped.release(), rt);
        result?;
    }
    txn.commit()?;
    pauses.merge(&mine);
    Ok(ProcessReport {
        pid,
        sharers: space.pids()[1..].to_vec(),
        module: patch.module.clone(),
        patch: id.to_string(),
        functions: patch
            .functions
            .iter()
            .map(|f| FunctionReport {
                name: f.name.clone(),
                entry: f.entry,
                new_address: f.new_address,
                via: "state record, checked against the process".to_string(),
                stacked_on: None,
            })
            .collect(),
        pause: mine.longest(),
        stops: mine.stops,
        per_thread: mine.per_thread(),
        windows: mine.windows.clone(),
        attempts: switched.attempts,
        threads: switched.threads,
        realtime: mine.realtime,
        same_build: None,
        prediction: None,
        hooks: runs.iter().map(HookReport::from).collect(),
        warnings,
        shadows,
    })
}

/// Unmaps regions inside a stop.
pub fn unmap(stopped: &mut Stopped, regions: &[crate::state::Region]) -> Result<(), Error> {
    for r in regions {
        stopped.munmap(r.address, r.size)?;
    }
    Ok(())
}
