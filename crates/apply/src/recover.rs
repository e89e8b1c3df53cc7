//! `recover`: finish or roll back an apply or undo whose hotsplice died, from its journal —
//! checked against the process like any record — so the process ends untouched or fully
//! patched, never a mix. An operation another live hotsplice holds is never touched.

use std::cell::Cell;
use std::time::Duration;

use hotsplice_ptrace::{AddressSpace, Mapping, Process};

use crate::mapped::Cfi;
use crate::safety::{self, Range};
use crate::state::{self, Journal, Operation, Region, StateDir};
use crate::switch::{self, Decision, PauseLog, Proceed, SiteWrite, Stage};
use crate::{Error, Options, RecoveryOutcome, link, target, undo, verify};

/// What `recover` did for one interrupted operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The process is gone (or is another process with the same pid): the record was dropped.
    ProcessGone,
    /// The operation was rolled back: the process is as before it.
    RolledBack,
    /// The operation was completed.
    Completed,
    /// Another hotsplice is still running it: left alone.
    InProgress,
}

/// `hotsplice recover`: every journal in the state directory when `pids` is empty.
pub fn recover(pids: &[i32], options: &Options) -> Result<Vec<(i32, RecoveryOutcome)>, Error> {
    let dir = StateDir::open(&options.state_dir)?;
    if !pids.is_empty() {
        return Ok(pids
            .iter()
            .map(|&pid| (pid, recover_one(&dir, pid, options)))
            .collect());
    }
    // Every journal found: one that another hotsplice finishes meanwhile is not an error, and
    // one it is still running is left alone.
    Ok(dir
        .journal_pids()
        .into_iter()
        .filter_map(|pid| match recover_one(&dir, pid, options) {
            Err(Error::NotInterrupted { .. }) => None,
            Err(Error::Locked { .. }) => dir
                .read_journal(pid)
                .ok()
                .flatten()
                .map(|j| (pid, Ok((j, Recovered::InProgress)))),
            other => Some((pid, other)),
        })
        .collect())
}

/// The memory an interrupted operation may have mapped: its recorded regions, any anonymous
/// mapping whose header names the patch, and any fresh (all-zero) anonymous mapping exactly at
/// one of the candidate addresses it was about to use.
fn memory_of(process: &Process, maps: &[Mapping], journal: &Journal) -> Vec<Region> {
    let id = &journal.patch.id;
    let mut out: Vec<Region> = Vec::new();
    let anonymous = |m: &Mapping| m.inode == 0 && m.path.is_none();
    for m in maps.iter().filter(|m| anonymous(m)) {
        let region = Region {
            address: m.start,
            size: m.end - m.start,
        };
        let mut head = vec![0u8; (link::HEADER_SIZE as usize).min(region.size as usize)];
        if process.read(m.start, &mut head).is_err() {
            continue;
        }
        let ours = m.exec && state::header_id(&head).as_deref() == Some(id.as_str());
        let tagged = head.starts_with(&state::data_tag(id));
        let planned =
            journal.patch.regions.contains(&region) || journal.candidates.contains(&region);
        let fresh = planned && head.iter().all(|&b| b == 0);
        if ours || tagged || fresh {
            out.push(region);
        }
    }
    out
}

fn recover_one(dir: &StateDir, pid: i32, options: &Options) -> RecoveryOutcome {
    let Some(journal) = dir.read_journal(pid)? else {
        return Err(Error::NotInterrupted { pid });
    };
    let mut pids = vec![pid];
    pids.extend(&journal.sharers);
    // The operation may still be running in another hotsplice: then it is not ours to touch.
    let _lock = dir.lock(&pids, Duration::from_millis(100))?;
    if dir.read_journal(pid)?.as_ref() != Some(&journal) {
        // It finished while we waited for the lock.
        return Err(Error::NotInterrupted { pid });
    }
    let mut space = match AddressSpace::open(pid) {
        Ok(space) if space.primary().start_time().ok() == Some(journal.start_time) => space,
        _ => {
            dir.remove_journal(pid)?;
            return Ok((journal, Recovered::ProcessGone));
        }
    };
    let process = space.primary().clone();
    let maps = process.maps()?;
    let patch = &journal.patch;
    let mut record = dir.load(pid, journal.start_time)?;
    let below: Vec<state::AppliedPatch> = record
        .patches
        .iter()
        .filter(|p| p.id != patch.id)
        .cloned()
        .collect();
    // Which sites hold the jump, which the original bytes — each checked against the process.
    let mut jumped = Vec::new();
    for f in &patch.functions {
        let mut now = [0u8; 5];
        process.read(f.site, &mut now)?;
        verify::original(&process, &maps, patch, f.site, &f.replaced.0, &below)?;
        if now == f.jump.0 {
            verify::jump(pid, patch, f.site, &f.jump.0)?;
            jumped.push(true);
        } else if now == f.replaced.0 {
            jumped.push(false);
        } else {
            return Err(Error::Tampered {
                pid,
                address: f.site,
            });
        }
    }
    let memory = memory_of(&process, &maps, &journal);
    if jumped.iter().any(|&j| j) {
        // Jumps lead into the patch's memory: it must be there, and be ours.
        verify::regions(&process, &maps, patch)?;
    }
    let all = jumped.iter().all(|&j| j);
    let none = jumped.iter().all(|&j| !j);
    let code: Vec<Range> = memory
        .iter()
        .map(|r| Range {
            start: r.address,
            end: r.end(),
            name: format!("the code of {}", patch.id),
        })
        .collect();
    let old_code: Vec<Range> = patch
        .functions
        .iter()
        .zip(&jumped)
        .filter(|&(_, &j)| !j)
        .map(|(f, _)| Range {
            start: f.entry,
            end: f.entry + f.len.max(5),
            name: f.name.clone(),
        })
        .collect();
    let to_original: Vec<SiteWrite> = patch
        .functions
        .iter()
        .zip(&jumped)
        .filter(|&(_, &j)| j)
        .map(|(f, _)| SiteWrite {
            site: f.site,
            expect: f.jump.0,
            write: f.replaced.0,
        })
        .collect();
    let to_jump: Vec<SiteWrite> = patch
        .functions
        .iter()
        .zip(&jumped)
        .filter(|&(_, &j)| !j)
        .map(|(f, _)| SiteWrite {
            site: f.site,
            expect: f.replaced.0,
            write: f.jump.0,
        })
        .collect();
    let patched = Cell::new(false);
    // The patch's own rows too: once a jump leads into its code, that code is complete.
    let cfi = Cfi::load(&process, &maps)
        .with_patches(&below)
        .with_patches(std::slice::from_ref(patch));
    let mut pauses = PauseLog::new();
    switch::switch(
        &mut space,
        &cfi,
        options,
        &mut pauses,
        &mut |views| {
            // Prefer the original code when that is safe (no jump leads into the patch memory,
            // or no thread is in it): that rolls back an apply and completes an undo. Otherwise
            // write every jump when no thread is in the old code still reachable.
            let originals = if none {
                None
            } else {
                safety::check(views, &code)
            };
            match originals {
                None => {
                    patched.set(false);
                    Decision::Write(to_original.clone())
                }
                Some(busy) => {
                    let jumps = if all {
                        None
                    } else {
                        safety::check(views, &old_code)
                    };
                    match jumps {
                        None => {
                            patched.set(true);
                            Decision::Write(to_jump.clone())
                        }
                        Some(_) => Decision::Busy(busy),
                    }
                }
            }
        },
        &mut |stopped, stage| {
            if stage == Stage::AfterWrites && !patched.get() {
                undo::unmap(stopped, &memory)?;
            }
            Ok(Proceed::Yes)
        },
    )?;
    let patched = patched.get();
    // For an undo, "before" is the patched state: `patched` says where we are now.
    let outcome = match (journal.operation, patched) {
        (Operation::Apply, true) | (Operation::Undo, false) => Recovered::Completed,
        _ => Recovered::RolledBack,
    };
    record.patches.retain(|p| p.id != patch.id);
    if patched {
        record.patches.push(patch.clone());
    }
    target::save(dir, &space, &record)?;
    dir.remove_journal(pid)?;
    Ok((journal, outcome))
}
