//! Deciding whether two byte ranges (a function, a variable, a jump table) are the same.
//!
//! Two ranges are equal when they have the same size, the same bytes outside relocation
//! fields, and the same relocations: offset, type, addend and target, where targets are
//! compared through the [`Correlation`] (symbols), by content (strings, constants, compiler
//! private tables) or recursively (anonymous sections such as jump tables).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;

use hotsplice_reloc::RelocClass;

use crate::correlate::Correlation;
use crate::elf::SymbolKind;
use crate::name;
use crate::reference::{Reference, Resolved, Target};
use crate::report::{PostSym, PreSym};

/// A byte range of one section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Range {
    /// Section index.
    pub section: usize,
    /// Start offset.
    pub start: u64,
    /// End offset (exclusive).
    pub end: u64,
}

impl Range {
    /// The range a symbol covers.
    pub fn of_symbol(side: &Resolved<'_>, index: usize) -> Option<Range> {
        let sym = &side.elf.symbols[index];
        let section = sym.section()?;
        Some(Range {
            section,
            start: sym.value,
            end: sym.value.saturating_add(sym.size),
        })
    }

    /// The whole of a section.
    pub fn of_section(side: &Resolved<'_>, section: usize) -> Range {
        Range {
            section,
            start: 0,
            end: side.elf.sections[section].size,
        }
    }

    fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// Compares ranges of the pre and post builds; remembers results of recursive comparisons.
pub struct Comparer<'c, 'a> {
    pre: &'c Resolved<'a>,
    post: &'c Resolved<'a>,
    correlation: &'c Correlation,
    memo: RefCell<HashMap<(Range, Range), bool>>,
}

impl<'c, 'a> Comparer<'c, 'a> {
    /// A comparer for one pair of objects.
    pub fn new(
        pre: &'c Resolved<'a>,
        post: &'c Resolved<'a>,
        correlation: &'c Correlation,
    ) -> Self {
        Comparer {
            pre,
            post,
            correlation,
            memo: RefCell::new(HashMap::new()),
        }
    }

    /// `None` when equal; otherwise a sentence saying where the first difference is.
    pub fn difference(&self, a: Range, b: Range) -> Option<String> {
        let (pre_section, post_section) = (
            &self.pre.elf.sections[a.section],
            &self.post.elf.sections[b.section],
        );
        let what = if post_section.is_code() {
            "code"
        } else {
            "contents"
        };
        if a.len() != b.len() {
            return Some(format!("size {} → {} bytes", a.len(), b.len()));
        }
        if pre_section.is_nobits() != post_section.is_nobits() {
            return Some(if post_section.is_nobits() {
                "initialiser became all zeroes (moved to .bss)".to_string()
            } else {
                "initialiser became non-zero (moved out of .bss)".to_string()
            });
        }
        if (pre_section.flags ^ post_section.flags) & object::elf::SHF_WRITE.0 != 0 {
            return Some("writability changed (const added or removed)".to_string());
        }
        let pre_refs = self.pre.references_in(a.section, a.start, a.end);
        let post_refs = self.post.references_in(b.section, b.start, b.end);

        if !pre_section.is_nobits() {
            let (Some(pre_bytes), Some(post_bytes)) = (
                pre_section.bytes(a.start, a.end),
                post_section.bytes(b.start, b.end),
            ) else {
                return Some("bytes lie outside their section".to_string());
            };
            let pre_mask = mask(a, pre_refs);
            let post_mask = mask(b, post_refs);
            let line = (post_section.name == DYNDBG_SECTION).then(|| dyndbg_line_bits(b));
            for i in 0..pre_bytes.len() {
                let masked = pre_mask.get(i).copied().unwrap_or(false)
                    && post_mask.get(i).copied().unwrap_or(false);
                let ignored = line.as_ref().and_then(|l| l.get(i)).copied().unwrap_or(0);
                if !masked && (pre_bytes[i] ^ post_bytes[i]) & !ignored != 0 {
                    return Some(format!("{what} at +{i:#x}"));
                }
            }
        }

        if pre_refs.len() != post_refs.len() {
            return Some(format!(
                "{} → {} relocations",
                pre_refs.len(),
                post_refs.len()
            ));
        }
        for (x, y) in pre_refs.iter().zip(post_refs) {
            let at = x.offset - a.start;
            if at != y.offset - b.start {
                return Some(format!(
                    "relocation at +{at:#x} moved to +{:#x}",
                    y.offset - b.start
                ));
            }
            if let Some(why) = self.block_difference(x, y) {
                match why {
                    Some(why) => return Some(format!("relocation at +{at:#x}: {why}")),
                    None => continue,
                }
            }
            if x.r_type != y.r_type {
                return Some(format!(
                    "relocation at +{at:#x}: {} → {}",
                    hotsplice_reloc::name(x.r_type),
                    hotsplice_reloc::name(y.r_type)
                ));
            }
            if x.addend != y.addend {
                return Some(format!(
                    "relocation at +{at:#x} to {}: addend {} → {}",
                    self.describe_post(y),
                    x.addend,
                    y.addend
                ));
            }
            if let Some(why) = self.target_difference(x, y) {
                return Some(format!("relocation at +{at:#x}: {why}"));
            }
        }
        None
    }

    /// Describes what a post reference points at, for messages.
    pub fn describe_post(&self, reference: &Reference<'_>) -> String {
        describe(self.post, reference)
    }

    fn target_difference(&self, x: &Reference<'a>, y: &Reference<'a>) -> Option<String> {
        match (x.target, y.target) {
            (Target::Nothing, Target::Nothing) => None,
            (Target::Str(_, p), Target::Str(_, q)) => {
                (p != q).then(|| format!("string {} → {}", quote(p), quote(q)))
            }
            (Target::Constant(_, p), Target::Constant(_, q)) => {
                (p != q).then(|| format!("constant {p:02x?} → {q:02x?}"))
            }
            (Target::Section(p), Target::Section(q)) => {
                let (ps, qs) = (&self.pre.elf.sections[p], &self.post.elf.sections[q]);
                if name::canonical(&ps.name) != name::canonical(&qs.name) {
                    return Some(format!("now refers to {} (was {})", qs.name, ps.name));
                }
                self.recursive(
                    Range::of_section(self.pre, p),
                    Range::of_section(self.post, q),
                )
                .map(|why| format!("{} changed: {why}", qs.name))
            }
            (Target::Symbol(p), Target::Symbol(q)) => {
                let paired = self.correlation.post_of(PreSym(p)) == Some(PostSym(q));
                let (ps, qs) = (&self.pre.elf.symbols[p], &self.post.elf.symbols[q]);
                let private =
                    is_private_data(ps.kind, &ps.name) && is_private_data(qs.kind, &qs.name);
                if private && name::canonical(&ps.name) == name::canonical(&qs.name) {
                    // A compiler-private table goes with the patch: compare its contents.
                    let (Some(a), Some(b)) = (
                        Range::of_symbol(self.pre, p),
                        Range::of_symbol(self.post, q),
                    ) else {
                        return (!paired)
                            .then(|| format!("now refers to {} (was {})", qs.name, ps.name));
                    };
                    return self
                        .recursive(a, b)
                        .map(|why| format!("{} changed: {why}", qs.name));
                }
                (!paired).then(|| format!("now refers to {} (was {})", qs.name, ps.name))
            }
            _ => Some(format!(
                "now refers to {} (was {})",
                describe(self.post, y),
                describe(self.pre, x)
            )),
        }
    }

    /// For two references into a section of blocks (`.altinstr_aux`: the slow paths of
    /// `static_cpu_has`, one block per use, jumping back into the function that owns it),
    /// whether the two designated blocks differ: `Some(None)` when equal, `Some(Some(why))`
    /// when not, `None` when the references are not of that kind. The whole section is not
    /// compared (another function's block changing would drag in every user), nor the
    /// addend (an earlier block added or removed moves this one).
    fn block_difference(&self, x: &Reference<'a>, y: &Reference<'a>) -> Option<Option<String>> {
        let (Target::Section(p), Target::Section(q)) = (x.target, y.target) else {
            return None;
        };
        let (ps, qs) = (&self.pre.elf.sections[p], &self.post.elf.sections[q]);
        if ps.name != BLOCK_SECTION || qs.name != BLOCK_SECTION || x.r_type != y.r_type {
            return None;
        }
        let block = |side: &Resolved<'_>, section: usize, r: &Reference<'_>| {
            let start = u64::try_from(r.designated).ok()?;
            let size = side.elf.sections[section].size;
            let end = side
                .designated_in(section)
                .into_iter()
                .find(|&o| o > start)
                .unwrap_or(size);
            (start < size).then_some(Range {
                section,
                start,
                end,
            })
        };
        let (Some(a), Some(b)) = (block(self.pre, p, x), block(self.post, q, y)) else {
            return None;
        };
        Some(
            self.recursive(a, b)
                .map(|why| format!("{BLOCK_SECTION} block changed: {why}")),
        )
    }

    fn recursive(&self, a: Range, b: Range) -> Option<String> {
        if let Some(&equal) = self.memo.borrow().get(&(a, b)) {
            return (!equal).then(|| "contents differ".to_string());
        }
        // Assume equal while comparing, so cycles (a jump table pointing back into its
        // function) terminate.
        self.memo.borrow_mut().insert((a, b), true);
        let result = self.difference(a, b);
        self.memo.borrow_mut().insert((a, b), result.is_none());
        result
    }
}

/// The kernel's section of `static_cpu_has` slow paths: blocks, each used by one site.
const BLOCK_SECTION: &str = ".altinstr_aux";

/// The section of the kernel's dynamic-debug descriptors (`struct _ddebug`, one per
/// `pr_debug`/`dev_dbg` call site).
pub const DYNDBG_SECTION: &str = "__dyndbg";

/// Per byte of a range of `__dyndbg`, the bits that hold a descriptor's `lineno` (its 18-bit
/// bit-field at offset 32 of the 8-byte-aligned 56-byte `struct _ddebug` of Linux 6.1 on
/// x86-64): a line number is where the call is, not what it does, so two descriptors that
/// differ only there are the same (`#line` keeps most of them equal; a hunk inside the
/// function moves the ones below it).
fn dyndbg_line_bits(range: Range) -> Vec<u8> {
    const SIZE: u64 = 56;
    const LINENO: u64 = 32;
    let mut bits = vec![0u8; range.len() as usize];
    for (i, b) in bits.iter_mut().enumerate() {
        let at = (range.start + i as u64) % SIZE;
        *b = match at.checked_sub(LINENO) {
            Some(0 | 1) => 0xff,
            Some(2) => 0x03,
            _ => 0,
        };
    }
    bits
}

/// Whether a local symbol is compiler-private data (taken as new by patched functions).
pub fn is_private_data(kind: SymbolKind, name: &str) -> bool {
    matches!(kind, SymbolKind::Object) && name::is_compiler_private(name)
}

fn mask(range: Range, refs: &[Reference<'_>]) -> Vec<bool> {
    let mut mask = vec![false; range.len() as usize];
    for r in refs {
        let start = (r.offset - range.start) as usize;
        let end = (start + usize::from(RelocClass::of(r.r_type).width)).min(mask.len());
        for m in mask.iter_mut().take(end).skip(start) {
            *m = true;
        }
    }
    mask
}

/// A printable description of a reference's target.
pub fn describe(side: &Resolved<'_>, reference: &Reference<'_>) -> String {
    match reference.target {
        Target::Nothing => "no symbol".to_string(),
        Target::Symbol(i) => side.elf.symbols[i].name.clone(),
        Target::Str(_, s) => format!("string {}", quote(s)),
        Target::Constant(_, c) => format!("constant {c:02x?}"),
        Target::Section(s) => side.elf.sections[s].name.clone(),
    }
}

fn quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes.iter().take(60) {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > 60 {
        out.push_str("...");
    }
    out.push('"');
    out
}
