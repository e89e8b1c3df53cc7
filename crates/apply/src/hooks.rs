//! Running a patch's hooks (`hotsplice.h`) in the target: on one of its threads, while every
//! other thread is stopped, returning to an `int3` at the end of the patch's header page. A
//! pre hook that returns non-zero refuses the apply (or undo), with the reason it left in the
//! runtime state; a hook that faults or does not return within a second is reported, and its
//! fault is never delivered to the program.

use std::time::{Duration, Instant};

use hotsplice_bundle::HookKind;
use hotsplice_ptrace::Stopped;

use crate::state::AppliedPatch;
use crate::{Error, link, runtime};

/// A hook that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// When it ran.
    pub kind: HookKind,
    /// Its address.
    pub address: u64,
    /// How long it took (the threads were stopped meanwhile).
    pub took: Duration,
    /// What it returned.
    pub result: i32,
}

/// The address of the `int3` a hook returns to.
pub fn trap(patch: &AppliedPatch) -> Option<u64> {
    patch
        .regions
        .first()
        .map(|code| code.address + link::HEADER_SIZE - 1)
}

/// Runs post hooks: they cannot refuse (the switch is done); a failure is a warning.
pub fn run_post(
    stopped: &mut Stopped,
    patch: &AppliedPatch,
    kind: HookKind,
    runs: &mut Vec<HookRun>,
    warnings: &mut Vec<String>,
) {
    if let Err(e) = run(stopped, patch, kind, runs) {
        warnings.push(e.to_string());
    }
}

/// Runs every hook of `kind`, in order. For a pre hook, a non-zero result refuses.
pub fn run(
    stopped: &mut Stopped,
    patch: &AppliedPatch,
    kind: HookKind,
    runs: &mut Vec<HookRun>,
) -> Result<(), Error> {
    let pid = stopped.pid();
    let Some(trap) = trap(patch) else {
        return Ok(());
    };
    for h in patch.hooks.iter().filter(|h| h.kind == kind) {
        if let Some(rt) = patch.runtime {
            stopped.write(rt + runtime::VETO, &[0])?;
        }
        let started = Instant::now();
        let result = stopped
            .call(h.address, trap)
            .map_err(|e| Error::HookFailed {
                pid,
                hook: kind.as_str(),
                detail: e.to_string(),
            })? as i32;
        runs.push(HookRun {
            kind,
            address: h.address,
            took: started.elapsed(),
            result,
        });
        if result != 0 && matches!(kind, HookKind::PreApply | HookKind::PreUndo) {
            let reason = patch
                .runtime
                .and_then(|rt| {
                    let mut buf = vec![0u8; runtime::VETO_LEN];
                    stopped.read(rt + runtime::VETO, &mut buf).ok()?;
                    Some(runtime::text(&buf))
                })
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| format!("it returned {result}"));
            return Err(Error::Vetoed {
                pid,
                hook: kind.as_str(),
                reason,
            });
        }
    }
    Ok(())
}
