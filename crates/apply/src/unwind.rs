//! Walking a stopped thread's stack with the call-frame information (`.eh_frame`) of the
//! loaded files and the vDSO, to find the return addresses it really holds.
//!
//! A plain scan of every stack word (Ksplice's check) also sees stale return addresses left in
//! uninitialised slots of live frames; a busy loop that calls a replaced function keeps such a
//! slot forever, and the scan then never lets the patch (or its undo) through. Unwinding finds
//! the true frames. Patch memory is walked through with the rows its bundle carried (see
//! [`PatchCode`]). Where it cannot continue — code without CFI (JIT code, a patch built before
//! bundles carried rows), a rule it does not evaluate — the rest of the stack is
//! scanned word by word, so the check stays conservative.

use gimli::{BaseAddresses, EhFrame, EhFrameOffset, LittleEndian, UnwindContext, UnwindSection};
use hotsplice_bundle::{CfaRegister, FrameRow};
use hotsplice_matcher::EhFrameSection;
use hotsplice_objdiff::patchset::{FrameRule, RowRule, row_rule};

/// A loaded file with call-frame information.
pub struct CfiModule<'a> {
    /// First mapped address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Load bias (run-time address minus link-time address).
    pub bias: u64,
    /// Its `.eh_frame`.
    pub eh_frame: &'a EhFrameSection,
}

/// A function in patch memory, with its call-frame rows (the bundle's, by offset).
pub struct PatchCode<'a> {
    /// Its address.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// Its rows, sorted by offset.
    pub rows: &'a [FrameRow],
}

/// The call-frame information a walk uses: the mapped files' and the patch code's.
#[derive(Default)]
pub struct Tables<'a> {
    /// Mapped files.
    pub files: Vec<CfiModule<'a>>,
    /// Functions in patch memory.
    pub patches: Vec<PatchCode<'a>>,
}

/// What unwinding found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// Return addresses of the frames, innermost first.
    pub return_addresses: Vec<u64>,
    /// The stack pointer where unwinding had to stop before the outermost frame: the stack
    /// from there up must be scanned conservatively.
    pub unknown_from: Option<u64>,
}

const MAX_FRAMES: usize = 512;

/// How to step over one frame: CFA = rsp + n or rbp + n, return address at CFA + ra, rbp
/// saved at CFA + bp (if any); the outermost frame; or not evaluable here (no FDE, an
/// expression rule...). The object diff's reduction, so that patch code's rows and mapped
/// files' `.eh_frame` are read alike.
type Step = RowRule;

/// Steps already computed, by address: threads of one program mostly sit at the same few
/// return addresses, and this runs while the target is stopped.
#[derive(Default)]
pub struct StepCache {
    steps: std::collections::HashMap<u64, Step>,
}

/// The step at `lookup` in patch code: the last row at or before it.
fn patch_step(lookup: u64, code: &PatchCode<'_>) -> Step {
    let offset = lookup - code.start;
    let i = code.rows.partition_point(|r| r.offset <= offset);
    match i
        .checked_sub(1)
        .and_then(|i| code.rows.get(i))
        .and_then(|r| r.rule)
    {
        Some(rule) => Step::Frame(FrameRule {
            cfa_from_rbp: rule.cfa == CfaRegister::Rbp,
            cfa_offset: rule.cfa_offset,
            ra: rule.ra,
            rbp: rule.rbp,
        }),
        None => Step::Unknown,
    }
}

fn step_for(lookup: u64, tables: &Tables<'_>, ctx: &mut UnwindContext<usize>) -> Step {
    if let Some(code) = tables
        .patches
        .iter()
        .find(|c| lookup >= c.start && lookup < c.end)
    {
        return patch_step(lookup, code);
    }
    let Some(module) = tables
        .files
        .iter()
        .find(|m| lookup >= m.start && lookup < m.end)
    else {
        return Step::Unknown;
    };
    let linked = lookup.wrapping_sub(module.bias);
    let fdes = &module.eh_frame.fdes;
    let i = fdes.partition_point(|f| f.0 <= linked);
    let Some(&(start, len, offset)) = i.checked_sub(1).and_then(|i| fdes.get(i)) else {
        return Step::Unknown;
    };
    if linked >= start + len {
        return Step::Unknown;
    }
    let eh = EhFrame::new(&module.eh_frame.data, LittleEndian);
    let bases = BaseAddresses::default().set_eh_frame(module.eh_frame.address);
    let Ok(fde) = eh.fde_from_offset(&bases, EhFrameOffset(offset), EhFrame::cie_from_offset)
    else {
        return Step::Unknown;
    };
    match fde.unwind_info_for_address(&eh, &bases, ctx, linked) {
        Ok(row) => row_rule(row),
        Err(_) => Step::Unknown,
    }
}

/// Unwinds from `rip`/`rsp`/`rbp`, reading stack words through `read`.
pub fn walk(
    rip: u64,
    rsp: u64,
    rbp: u64,
    tables: &Tables<'_>,
    cache: &mut StepCache,
    read: &dyn Fn(u64) -> Option<u64>,
) -> Walk {
    let mut ctx = UnwindContext::new();
    let (mut pc, mut sp, mut bp) = (rip, rsp, rbp);
    let mut out = Walk::default();
    for frame in 0..MAX_FRAMES {
        // After the first frame pc is a return address: look up the call instruction itself.
        let lookup = if frame == 0 { pc } else { pc.saturating_sub(1) };
        let step = *cache
            .steps
            .entry(lookup)
            .or_insert_with(|| step_for(lookup, tables, &mut ctx));
        let Step::Frame(FrameRule {
            cfa_from_rbp,
            cfa_offset,
            ra: ra_offset,
            rbp: rbp_offset,
        }) = step
        else {
            if step == Step::Unknown {
                out.unknown_from = Some(sp);
            }
            return out;
        };
        let cfa = if cfa_from_rbp { bp } else { sp }.wrapping_add(cfa_offset as u64);
        let Some(ra) = read(cfa.wrapping_add(ra_offset as u64)) else {
            out.unknown_from = Some(sp);
            return out;
        };
        if let Some(n) = rbp_offset {
            match read(cfa.wrapping_add(n as u64)) {
                Some(v) => bp = v,
                None => {
                    out.unknown_from = Some(sp);
                    return out;
                }
            }
        }
        if ra == 0 {
            return out;
        }
        if cfa <= sp && frame > 0 {
            // The stack must grow towards higher addresses as frames are popped.
            out.unknown_from = Some(sp);
            return out;
        }
        out.return_addresses.push(ra);
        pc = ra;
        sp = cfa;
    }
    out.unknown_from = Some(sp);
    out
}

#[cfg(test)]
mod tests;
