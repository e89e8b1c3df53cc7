//! Relocations rewritten into references to *things*: symbols, string literals, constants.
//!
//! GCC and GAS write the same reference in several ways: `call helper` becomes
//! `.text.helper - 4` (a section symbol), a string becomes `.LC3 - 4` in a merge section, a
//! jump table is `.rodata.sw + 0x10`. Two builds only compare once every relocation names the
//! object it really points at. [`Reference`] is that normal form; its `addend` is relative to
//! the start of the target, so `.rodata.foo - 4` and `foo - 4` are the same reference.

use std::collections::HashMap;

use hotsplice_reloc::RelocClass;
use iced_x86::{Decoder, DecoderOptions, Instruction};

use crate::elf::{ElfObject, Reloc, Section, SymbolKind};

/// What a relocation points at, after normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// No symbol (`r_sym == 0`).
    Nothing,
    /// A named symbol: a function, a variable, or an undefined external. Index into
    /// [`ElfObject::symbols`].
    Symbol(usize),
    /// A string literal in a mergeable string section (the section index), by content
    /// (without the terminator).
    Str(usize, &'a [u8]),
    /// A constant in a mergeable constant section (`.rodata.cst8`, the section index), by
    /// content.
    Constant(usize, &'a [u8]),
    /// Bytes of a section that no symbol covers (a jump table in `.rodata.foo`), by section
    /// index; compared by content.
    Section(usize),
}

/// One relocation in normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference<'a> {
    /// Offset of the patched field inside its section.
    pub offset: u64,
    /// `R_X86_64_*` type.
    pub r_type: u32,
    /// What it points at.
    pub target: Target<'a>,
    /// The addend relative to the start of the target (string, constant, symbol); for
    /// [`Target::Section`] relative to the section start.
    pub addend: i64,
    /// For [`Target::Section`]: the offset in the section of the byte the reference
    /// designates (the addend, plus for a PC-relative instruction operand the distance from
    /// the field to the end of the instruction).
    pub designated: i64,
}

/// An object with every relocation of its allocated sections resolved.
#[derive(Debug)]
pub struct Resolved<'a> {
    /// The parsed object.
    pub elf: ElfObject<'a>,
    /// Per section index: the references, parallel to `section.relocs`.
    pub references: Vec<Vec<Reference<'a>>>,
    /// Per section index: named symbols defined in it, sorted by value.
    pub by_section: Vec<Vec<usize>>,
}

impl<'a> Resolved<'a> {
    /// Resolves every relocation of every allocated section of `elf`.
    pub fn new(elf: ElfObject<'a>) -> Self {
        let mut by_section: Vec<Vec<usize>> = vec![Vec::new(); elf.sections.len()];
        for sym in &elf.symbols {
            if matches!(
                sym.kind,
                SymbolKind::Func | SymbolKind::Object | SymbolKind::Tls
            ) && let Some(section) = sym.section()
            {
                by_section[section].push(sym.index);
            }
        }
        for list in &mut by_section {
            list.sort_by_key(|&i| (elf.symbols[i].value, elf.symbols[i].index));
        }

        let mut references = Vec::with_capacity(elf.sections.len());
        for section in &elf.sections {
            if !section.is_alloc() || section.relocs.is_empty() {
                references.push(Vec::new());
                continue;
            }
            let boundaries = if section.is_code() {
                instruction_ends(&elf, section, &by_section[section.index])
            } else {
                HashMap::new()
            };
            let refs = section
                .relocs
                .iter()
                .map(|reloc| resolve(&elf, &by_section, reloc, &boundaries))
                .collect();
            references.push(refs);
        }
        Resolved {
            elf,
            references,
            by_section,
        }
    }

    /// The offsets in `section` that references of the object designate (sorted, unique):
    /// where the blocks of an anonymous section such as `.altinstr_aux` begin.
    pub fn designated_in(&self, section: usize) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .references
            .iter()
            .flatten()
            .filter(|r| r.target == Target::Section(section))
            .filter_map(|r| u64::try_from(r.designated).ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// References whose field starts inside `[start, end)` of `section`, in offset order.
    pub fn references_in(&self, section: usize, start: u64, end: u64) -> &[Reference<'a>] {
        let relocs = &self.elf.sections[section].relocs;
        let refs = &self.references[section];
        if refs.len() != relocs.len() {
            return &[];
        }
        let lo = relocs.partition_point(|r| r.offset < start);
        let hi = relocs.partition_point(|r| r.offset < end);
        &refs[lo..hi]
    }
}

fn covering(
    elf: &ElfObject<'_>,
    by_section: &[Vec<usize>],
    section: usize,
    offset: i64,
) -> Option<usize> {
    let candidates = by_section.get(section)?;
    let Ok(offset) = u64::try_from(offset) else {
        return None;
    };
    let mut best: Option<usize> = None;
    let mut end_match: Option<usize> = None;
    for &index in candidates {
        let sym = &elf.symbols[index];
        if sym.value > offset {
            break;
        }
        let end = sym.value.saturating_add(sym.size.max(1));
        if offset < end {
            let better = match best {
                None => true,
                Some(b) => rank(&elf.symbols[index]) > rank(&elf.symbols[b]),
            };
            if better {
                best = Some(index);
            }
        } else if sym.size > 0
            && sym.value.saturating_add(sym.size) == offset
            && end_match.is_none()
        {
            end_match = Some(index);
        }
    }
    best.or(end_match)
}

/// Prefers global symbols, then names without GCC suffixes (`foo` over `foo.localalias`).
fn rank(sym: &crate::elf::Symbol) -> (bool, bool) {
    (sym.is_global(), !sym.name.contains('.'))
}

/// For each relocation field inside a decodable function, the offset where its instruction
/// ends: the PC that a PC-relative field is relative to.
fn instruction_ends(
    elf: &ElfObject<'_>,
    section: &Section<'_>,
    symbols: &[usize],
) -> HashMap<u64, u64> {
    let mut ends = HashMap::new();
    let mut ranges: Vec<(u64, u64)> = symbols
        .iter()
        .map(|&i| &elf.symbols[i])
        .filter(|s| s.kind == SymbolKind::Func && s.size > 0)
        .map(|s| (s.value, s.value.saturating_add(s.size)))
        .collect();
    if ranges.is_empty() {
        ranges.push((0, section.size));
    }
    ranges.sort();
    ranges.dedup();
    let mut instruction = Instruction::default();
    for (start, end) in ranges {
        let Some(bytes) = section.bytes(start, end) else {
            continue;
        };
        let relocs = section.relocs_in(start, end);
        if relocs.is_empty() {
            continue;
        }
        let mut decoder = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
        let mut next = 0usize;
        while decoder.can_decode() && next < relocs.len() {
            decoder.decode_out(&mut instruction);
            if instruction.is_invalid() {
                break;
            }
            let (ip, end_ip) = (instruction.ip(), instruction.next_ip());
            while next < relocs.len() && relocs[next].offset < end_ip {
                if relocs[next].offset >= ip {
                    ends.insert(relocs[next].offset, end_ip);
                }
                next += 1;
            }
        }
    }
    ends
}

fn resolve<'a>(
    elf: &ElfObject<'a>,
    by_section: &[Vec<usize>],
    reloc: &Reloc,
    instruction_ends: &HashMap<u64, u64>,
) -> Reference<'a> {
    let plain = |target| Reference {
        offset: reloc.offset,
        r_type: reloc.r_type,
        target,
        addend: reloc.addend,
        designated: 0,
    };
    if reloc.symbol == 0 {
        return plain(Target::Nothing);
    }
    let sym = &elf.symbols[reloc.symbol];
    let Some(section_index) = sym.section() else {
        return plain(Target::Symbol(reloc.symbol));
    };
    let section = &elf.sections[section_index];
    // The position in the target section the relocation is relative to, and the position it
    // really designates (for an instruction operand, PC-relative values are relative to the
    // end of the instruction, not of the field).
    let raw = (sym.value as i64).wrapping_add(reloc.addend);
    let class = RelocClass::of(reloc.r_type);
    let pc_adjust = if class.pc_relative {
        match instruction_ends.get(&reloc.offset) {
            Some(end) => (end - reloc.offset) as i64,
            None => i64::from(class.width),
        }
    } else {
        0
    };
    let designated = raw.wrapping_add(pc_adjust);

    if section.is_merge_strings() {
        if let Some((start, content)) = string_at(section, designated) {
            return Reference {
                addend: raw.wrapping_sub(start as i64),
                ..plain(Target::Str(section_index, content))
            };
        }
    } else if section.is_merge_constants()
        && let Some((start, content)) = constant_at(section, designated)
    {
        return Reference {
            addend: raw.wrapping_sub(start as i64),
            ..plain(Target::Constant(section_index, content))
        };
    }

    if sym.kind != SymbolKind::Section && sym.kind != SymbolKind::NoType {
        return plain(Target::Symbol(reloc.symbol));
    }
    match covering(elf, by_section, section_index, designated) {
        Some(index) => Reference {
            addend: raw.wrapping_sub(elf.symbols[index].value as i64),
            ..plain(Target::Symbol(index))
        },
        None => Reference {
            addend: raw,
            designated,
            ..plain(Target::Section(section_index))
        },
    }
}

/// The NUL-terminated string containing `offset` in a string merge section: its start and its
/// bytes without the terminator.
fn string_at<'a>(section: &Section<'a>, offset: i64) -> Option<(u64, &'a [u8])> {
    let width = section.entsize.max(1) as usize;
    let offset = usize::try_from(offset).ok()?;
    let data = section.data;
    if offset >= data.len() {
        return None;
    }
    let is_nul = |at: usize| data[at..at + width].iter().all(|&b| b == 0);
    let mut start = offset - offset % width;
    while start >= width && !is_nul(start - width) {
        start -= width;
    }
    let mut end = start;
    while end + width <= data.len() && !is_nul(end) {
        end += width;
    }
    Some((start as u64, &data[start..end]))
}

/// The entry containing `offset` in a constant merge section.
fn constant_at<'a>(section: &Section<'a>, offset: i64) -> Option<(u64, &'a [u8])> {
    let width = section.entsize;
    let offset = u64::try_from(offset).ok()?;
    let start = offset - offset % width;
    let bytes = section
        .data
        .get(usize::try_from(start).ok()?..usize::try_from(start.checked_add(width)?).ok()?)?;
    Some((start, bytes))
}
