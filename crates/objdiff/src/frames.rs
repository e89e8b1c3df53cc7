//! The call-frame information (`.eh_frame`) of carried functions, reduced to what hotsplice's
//! unwinder evaluates, so that a thread's stack can be walked through patch code too.
//!
//! In a relocatable object an FDE's `pc_begin` is a relocation against the function's
//! section; the rows are read with `gimli` and given as offsets in the function.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};

use crate::elf::ElfObject;

/// How to find the caller's frame from one instruction on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRow {
    /// Offset in the function where the row starts to hold (until the next row, or the
    /// function's end).
    pub offset: u64,
    /// The rule, or `None` where it is one the unwinder does not evaluate (a DWARF
    /// expression, a register other than `rsp`/`rbp` for the CFA...).
    pub rule: Option<FrameRule>,
}

/// Where the caller's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRule {
    /// The canonical frame address is `rbp` (else `rsp`) plus `cfa_offset`.
    pub cfa_from_rbp: bool,
    /// Added to that register.
    pub cfa_offset: i64,
    /// The return address is at CFA plus this.
    pub ra: i64,
    /// The caller's `rbp` is saved at CFA plus this (`None`: `rbp` is unchanged).
    pub rbp: Option<i64>,
}

/// The rows of every FDE of `elf`, by the place its function starts: `(section, offset in
/// the section, rows)`. Entries that do not parse, or whose start is not a relocation against
/// a section of the object, are left out (the unwinder then scans that code's callers'
/// stacks conservatively, as it does for code without CFI).
pub fn frames(elf: &ElfObject<'_>) -> Vec<(usize, u64, Vec<FrameRow>)> {
    let Some(section) = elf.section_by_name(".eh_frame") else {
        return Vec::new();
    };
    let eh = EhFrame::new(section.data, LittleEndian);
    let bases = BaseAddresses::default().set_eh_frame(0);
    let mut ctx = UnwindContext::new();
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
            continue;
        };
        // `pc_begin` follows the 4-byte length and the 4-byte CIE pointer.
        let field = fde.offset() as u64 + 8;
        let Some(reloc) = section.relocs.iter().find(|r| r.offset == field) else {
            continue;
        };
        let Some(symbol) = elf.symbols.get(reloc.symbol) else {
            continue;
        };
        let Some(target) = symbol.section() else {
            continue;
        };
        let Some(start) = symbol.value.checked_add_signed(reloc.addend) else {
            continue;
        };
        let Some(rows) = rows(&eh, &bases, &mut ctx, &fde) else {
            continue;
        };
        out.push((target, start, rows));
    }
    out
}

fn rows(
    eh: &EhFrame<gimli::EndianSlice<'_, LittleEndian>>,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    fde: &gimli::FrameDescriptionEntry<gimli::EndianSlice<'_, LittleEndian>>,
) -> Option<Vec<FrameRow>> {
    let first = fde.initial_address();
    let mut table = fde.rows(eh, bases, ctx).ok()?;
    let mut out = Vec::new();
    while let Some(row) = table.next_row().ok()? {
        out.push(FrameRow {
            offset: row.start_address().checked_sub(first)?,
            rule: match row_rule(row) {
                RowRule::Frame(rule) => Some(rule),
                // Patch code is never a thread's outermost frame.
                RowRule::End | RowRule::Unknown => None,
            },
        });
    }
    Some(out)
}

/// What one row of call-frame information says about finding the caller, as far as
/// hotsplice's unwinder evaluates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowRule {
    /// The caller's frame, found by this rule.
    Frame(FrameRule),
    /// The outermost frame (`_start`, `clone`): its return address is undefined.
    End,
    /// Not evaluated here (a DWARF expression, a register other than `rsp`/`rbp` for the
    /// CFA...).
    Unknown,
}

/// The one reduction of a `gimli` unwind row to what the unwinder evaluates: for the rows a
/// bundle carries and for the code of mapped files alike, so both are walked the same way.
pub fn row_rule(row: &gimli::UnwindTableRow<usize>) -> RowRule {
    let (cfa_from_rbp, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            (false, *offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => {
            (true, *offset)
        }
        _ => return RowRule::Unknown,
    };
    let ra = match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(n)) => n,
        None | Some(RegisterRule::Undefined) => return RowRule::End,
        _ => return RowRule::Unknown,
    };
    let rbp = match row.register(X86_64::RBP) {
        Some(RegisterRule::Offset(n)) => Some(n),
        None | Some(RegisterRule::SameValue) => None,
        // Undefined (the caller's `rbp` is lost) among the rest: not followed.
        _ => return RowRule::Unknown,
    };
    RowRule::Frame(FrameRule {
        cfa_from_rbp,
        cfa_offset,
        ra,
        rbp,
    })
}
