//! The processes an operation works on: each pid's address space (the process and any process
//! sharing its memory), deduplicated, and locked for the whole operation.

use hotsplice_ptrace::AddressSpace;

use crate::state::{Lock, ProcessState, StateDir};
use crate::{Error, Options};

/// Opens the address space of every pid; a pid that shares memory with an earlier one is
/// handled with it (patching it again would patch the same memory twice).
pub fn open(pids: &[i32]) -> Result<Vec<AddressSpace>, Error> {
    let mut spaces: Vec<AddressSpace> = Vec::new();
    for &pid in pids {
        if spaces.iter().any(|s| s.pids().contains(&pid)) {
            continue;
        }
        spaces.push(AddressSpace::open(pid)?);
    }
    Ok(spaces)
}

/// Locks every process of every space.
pub fn lock(dir: &StateDir, spaces: &[AddressSpace], options: &Options) -> Result<Lock, Error> {
    let pids: Vec<i32> = spaces.iter().flat_map(AddressSpace::pids).collect();
    dir.lock(&pids, options.lock_timeout)
}

/// Threads of every process of a space, right now.
pub fn thread_count(space: &AddressSpace) -> usize {
    space
        .members()
        .iter()
        .map(|p| p.threads().map(|t| t.len()).unwrap_or(0))
        .sum()
}

/// Saves the record of the space's primary process, and the same patches for every process
/// sharing its memory.
pub fn save(dir: &StateDir, space: &AddressSpace, state: &ProcessState) -> Result<(), Error> {
    dir.save(state)?;
    for member in &space.members()[1..] {
        let Ok(start_time) = member.start_time() else {
            continue;
        };
        dir.save(&ProcessState {
            pid: member.pid(),
            start_time,
            patches: state.patches.clone(),
        })?;
    }
    Ok(())
}
