//! What is applied to a process, as its code shows it: the state record merged with the
//! headers of patch memory found in the process, each patch kept only if the code holds its
//! jumps.

use std::collections::HashMap;

use hotsplice_matcher::Memory;
use hotsplice_ptrace::{AddressSpace, Process};

use crate::prepare::LiveMemory;
use crate::state::{self, AppliedPatch, ProcessState, StateDir};
use crate::{Error, Options, link, target};

/// What is applied to a process, as its code shows it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The record, holding only patches whose jumps are in the code.
    pub state: ProcessState,
    /// Recorded patches whose jumps are not in the code (the program exec'd, or something
    /// else rewrote its code): dropped from the record.
    pub stale: Vec<AppliedPatch>,
    /// Patch memory found in the process that no live jump uses (a child forked while a
    /// patch was being applied to its parent): harmless, never executed.
    pub unused: Vec<AppliedPatch>,
}

/// The patches live in a process: those of its state record, and those described by the
/// headers of patch memory found in it (a child forked from a patched process inherits its
/// patches but has no record) — each kept only if the process's code holds its jumps. A
/// record found stale is rewritten.
pub fn observe(
    process: &Process,
    start_time: u64,
    dir: &StateDir,
    save: bool,
) -> Result<Observed, Error> {
    let pid = process.pid();
    let recorded = dir.load(pid, start_time)?;
    let candidates: Vec<u64> = process
        .maps()?
        .iter()
        .filter(|m| m.exec && m.inode == 0 && m.path.is_none())
        .map(|m| m.start)
        .collect();
    let memory = LiveMemory {
        process,
        overlay: Vec::new(),
    };
    let observed = derive(&recorded, &candidates, &memory);
    if save && !observed.stale.is_empty() {
        let mut kept = recorded.clone();
        kept.patches
            .retain(|p| !observed.stale.iter().any(|s| s.id == p.id));
        dir.save(&kept)?;
    }
    Ok(observed)
}

/// The pure part of [`observe`]: the record, the start addresses of the anonymous executable
/// mappings (where patch memory may be) and the process's memory → what is applied.
fn derive(recorded: &ProcessState, candidates: &[u64], memory: &dyn Memory) -> Observed {
    let mut in_memory = Vec::new();
    for &start in candidates {
        let mut head = vec![0u8; link::HEADER_SIZE as usize];
        if memory.read(start, &mut head)
            && let Some(patch) = state::parse_header(&head)
            && !recorded.patches.iter().any(|p| p.id == patch.id)
        {
            in_memory.push(patch);
        }
    }
    in_memory.sort_by_key(|p| p.applied_unix);
    let from_memory: Vec<String> = in_memory.iter().map(|p| p.id.clone()).collect();
    let mut all = in_memory;
    all.extend(recorded.patches.iter().cloned());
    all.sort_by_key(|p| p.applied_unix);

    // The jump each site must hold: the latest patch's.
    let mut top: HashMap<u64, (usize, [u8; 5])> = HashMap::new();
    for (i, p) in all.iter().enumerate() {
        for f in &p.functions {
            top.insert(f.site, (i, f.jump.0));
        }
    }
    let mut live = vec![true; all.len()];
    for (i, p) in all.iter().enumerate() {
        if p.functions.is_empty() {
            live[i] = false;
        }
    }
    for (&site, &(i, jump)) in &top {
        let mut now = [0u8; 5];
        if !memory.read(site, &mut now) || now != jump {
            live[i] = false;
        }
    }
    // A patch whose every site a later patch took over lives while those do.
    for (i, p) in all.iter().enumerate() {
        if p.functions.iter().any(|f| !live[top[&f.site].0]) {
            live[i] = false;
        }
    }
    let mut observed = Observed {
        state: ProcessState {
            pid: recorded.pid,
            start_time: recorded.start_time,
            patches: Vec::new(),
        },
        ..Observed::default()
    };
    for (p, live) in all.into_iter().zip(live) {
        match (live, from_memory.contains(&p.id)) {
            (true, _) => observed.state.patches.push(p),
            (false, true) => observed.unused.push(p),
            (false, false) => observed.stale.push(p),
        }
    }
    observed
}

/// What `list` shows for each process: every recorded process when `pids` is empty.
pub fn list(pids: &[i32], options: &Options) -> Result<Vec<crate::Listed>, Error> {
    let dir = StateDir::open(&options.state_dir)?;
    let pids: Vec<i32> = if pids.is_empty() {
        dir.all().into_iter().map(|s| s.pid).collect()
    } else {
        pids.to_vec()
    };
    Ok(pids
        .into_iter()
        .map(|pid| (pid, list_one(&dir, pid)))
        .collect())
}

fn list_one(dir: &StateDir, pid: i32) -> Result<Observed, Error> {
    let space = AddressSpace::open(pid)?;
    // Records made stale are dropped only when no other hotsplice is at work on the process.
    let lock = dir.lock(&space.pids(), std::time::Duration::from_millis(200));
    let process = space.primary();
    let observed = observe(process, process.start_time()?, dir, lock.is_ok())?;
    if lock.is_ok() && !observed.stale.is_empty() {
        target::save(dir, &space, &observed.state)?;
    }
    Ok(observed)
}

/// Every process that has patch `id`: those whose record lists it, and those whose memory holds
/// patch memory naming it (a child forked from a patched process has no record of its own).
pub fn holders(id: &str, options: &Options) -> Result<Vec<i32>, Error> {
    let dir = StateDir::open(&options.state_dir)?;
    let mut pids: Vec<i32> = dir
        .all()
        .into_iter()
        .filter(|s| s.patches.iter().any(|p| p.id == id))
        .map(|s| s.pid)
        .collect();
    let me = std::process::id() as i32;
    for pid in hotsplice_ptrace::all_pids() {
        if pid == me || pids.contains(&pid) {
            continue;
        }
        let Some(maps) = hotsplice_ptrace::maps_of(pid) else {
            continue;
        };
        let candidates: Vec<u64> = maps
            .iter()
            .filter(|m| m.exec && m.inode == 0 && m.path.is_none())
            .map(|m| m.start)
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let Ok(process) = Process::new(pid) else {
            continue;
        };
        let named = candidates.into_iter().any(|start| {
            let mut head = vec![0u8; link::HEADER_SIZE as usize];
            process.read(start, &mut head).is_ok() && state::header_id(&head).as_deref() == Some(id)
        });
        if named {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    // Only processes that still exist and whose code really holds the patch.
    Ok(pids
        .into_iter()
        .filter(|&pid| {
            Process::new(pid).is_ok_and(|p| {
                p.start_time()
                    .ok()
                    .and_then(|t| observe(&p, t, &dir, false).ok())
                    .is_some_and(|o| o.state.patches.iter().any(|x| x.id == id))
            })
        })
        .collect())
}

#[cfg(test)]
mod tests;
