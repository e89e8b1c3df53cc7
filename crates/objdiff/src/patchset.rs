//! What a live patch of one object carries, extracted from a diffed pre/post pair.
//!
//! A [`PatchSet`] is a tiny relocatable image: [`Piece`]s of code and data to load into the
//! target (the changed and new functions, plus everything their code must bring along —
//! string literals, merged constants, jump tables, compiler-private tables, new variables),
//! with relocations that point either at another piece or at a [`SymbolRef`]: a symbol that
//! already exists in the running program (an unchanged function, an existing variable —
//! under its *pre-build* name, so a bound static local keeps its state — or a library
//! symbol). Each [`Replacement`] names a function to redirect and carries its pre-build code
//! and relocations, which run-pre matching compares against the running code.

use std::collections::{HashMap, HashSet};

use hotsplice_reloc::{Op, RelocClass};

use crate::correlate::{self, Correlation};
use crate::diff::{analyze, parse};
use crate::elf::{self, SymbolKind};
use crate::error::{Error, Side};
pub use crate::frames::{FrameRow, FrameRule, RowRule, row_rule};
use crate::name::{CloneKind, cold_owner};
use crate::reference::{Reference, Resolved, Target};
use crate::report::{ObjectDiff, PostSym, PreSym, Status};
use crate::table;

/// Diffs one object pair and extracts the [`PatchSet`] that applies its change: the code of
/// the changed and new functions with everything they carry, and the pre code of every
/// replaced function.
pub fn patch_objects(
    object: &str,
    pre: Option<&[u8]>,
    post: Option<&[u8]>,
) -> Result<(ObjectDiff, PatchSet), Error> {
    let pre = parse(pre, Side::Pre)?;
    let post = parse(post, Side::Post)?;
    let correlation = correlate::correlate(&pre, &post);
    let diff = analyze(object, &pre, &post, &correlation);
    let set = extract(&pre, &post, &correlation, &diff);
    Ok((diff, set))
}

/// What kind of memory a piece needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceKind {
    /// Executable code.
    Code,
    /// Read-only data.
    ReadOnly,
    /// Writable, initialised data.
    Data,
    /// Writable, zero-initialised data (no bytes carried).
    Bss,
}

/// The class of a symbol referenced in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymbolClass {
    /// A function.
    Function,
    /// A variable.
    Data,
    /// A thread-local variable.
    Tls,
    /// Not known (an undefined reference without a type).
    Unknown,
}

/// A symbol that exists in the running program or its libraries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SymbolRef {
    /// Its name in the pre build (what the running program was built with).
    pub name: String,
    /// Its class.
    pub class: SymbolClass,
    /// Local to its object (`static`): must be found in this object of the target.
    pub local: bool,
}

/// Where a relocation of a piece points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// The start of another piece of the same patch set.
    Piece(usize),
    /// A symbol of the running program.
    Symbol(SymbolRef),
    /// No symbol (`r_sym == 0`): the addend alone.
    Nothing,
}

/// One relocation of a piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceReloc {
    /// Offset of the field inside the piece.
    pub offset: u64,
    /// `R_X86_64_*` type.
    pub r_type: u32,
    /// What it points at.
    pub target: Link,
    /// Addend, relative to the start of the target (piece or symbol).
    pub addend: i64,
}

/// One piece of code or data to load into the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// What it is, for people: `handle`, `string "hello"`, `.rodata.sw`.
    pub name: String,
    /// The function or variable it holds (post-build name), if any.
    pub symbol: Option<String>,
    /// Memory kind.
    pub kind: PieceKind,
    /// Required alignment (a power of two, at least 1).
    pub align: u64,
    /// Size in memory.
    pub size: u64,
    /// Contents (empty for [`PieceKind::Bss`]).
    pub bytes: Vec<u8>,
    /// Relocations to resolve after placement.
    pub relocs: Vec<PieceReloc>,
    /// For the entries of a table (a kernel special section such as `__ex_table`, see
    /// [`crate::table`]): the section they must be emitted as. `None` for code and data.
    pub table: Option<String>,
    /// For code: its call-frame information, by offset, from the object's `.eh_frame` (empty
    /// when it has none).
    pub frames: Vec<FrameRow>,
}

/// Where a relocation of pre-build code points, for run-pre matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreTarget {
    /// A named symbol: its run-time address can be learnt from the running code.
    Symbol(SymbolRef),
    /// Something anonymous (a string literal, a constant, a jump table): a wildcard.
    Anonymous(String),
}

/// One relocation of pre-build code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreReloc {
    /// Offset of the field inside the function.
    pub offset: u64,
    /// `R_X86_64_*` type.
    pub r_type: u32,
    /// What it points at.
    pub target: PreTarget,
    /// Addend, relative to the start of the target symbol.
    pub addend: i64,
}

/// A function of the running program to redirect to its new version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// Its name in the pre build (as in the running program).
    pub name: String,
    /// Its name in the post build.
    pub post_name: String,
    /// Local to its object (`static`).
    pub local: bool,
    /// The piece holding the new version (which starts at the new entry).
    pub piece: usize,
    /// The pre-build code, for run-pre matching.
    pub pre_code: Vec<u8>,
    /// The pre-build code's relocations.
    pub pre_relocs: Vec<PreReloc>,
}

/// A function of the running program that the new code calls or takes the address of, with
/// its pre-build code: when the running program is not the very build the patch was made from,
/// run-pre matching proves it is still the function the new code expects (same name, other
/// signature across versions would otherwise crash the program).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referenced {
    /// Its name in the pre build.
    pub name: String,
    /// Local to its object (`static`).
    pub local: bool,
    /// The pre-build code.
    pub pre_code: Vec<u8>,
    /// The pre-build code's relocations.
    pub pre_relocs: Vec<PreReloc>,
}

/// When a hook of a patch runs (`HOTSPLICE_PRE_APPLY(fn)` and friends in `hotsplice.h`: a
/// pointer to the function in section `.hotsplice.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Before the jumps are written; may refuse.
    PreApply,
    /// After the jumps are written.
    PostApply,
    /// Before the originals are restored; may refuse.
    PreUndo,
    /// After the originals are restored.
    PostUndo,
}

impl HookKind {
    /// The kind a `.hotsplice.<kind>` section holds.
    pub fn of_section(name: &str) -> Option<HookKind> {
        match name.strip_prefix(".hotsplice.")? {
            "pre_apply" => Some(HookKind::PreApply),
            "post_apply" => Some(HookKind::PostApply),
            "pre_undo" => Some(HookKind::PreUndo),
            "post_undo" => Some(HookKind::PostUndo),
            _ => None,
        }
    }
}

/// A hook of the patch: its kind and the piece holding the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// When it runs.
    pub kind: HookKind,
    /// The piece holding the function.
    pub piece: usize,
}

/// Everything needed to apply one object's change to a running program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchSet {
    /// The object's name (relative path in the build).
    pub object: String,
    /// The source file name recorded in the object (`STT_FILE`), to find its local symbols in
    /// an unstripped target.
    pub source_file: Option<String>,
    /// Code and data to load.
    pub pieces: Vec<Piece>,
    /// Functions to redirect.
    pub replacements: Vec<Replacement>,
    /// Functions of this object the new code uses without replacing them.
    pub referenced: Vec<Referenced>,
    /// Hooks the patch declares, in their order in the object.
    pub hooks: Vec<Hook>,
}

/// The pre-build code and relocations of a function of `pre`, for run-pre matching.
fn pre_code_of(pre: &Resolved<'_>, index: PreSym) -> Option<(Vec<u8>, Vec<PreReloc>)> {
    let sym = &pre.elf.symbols[index.0];
    let section = sym.section()?;
    let end = sym.value.saturating_add(sym.size);
    let code = pre.elf.sections[section].bytes(sym.value, end)?.to_vec();
    let relocs = pre
        .references_in(section, sym.value, end)
        .iter()
        .map(|r| PreReloc {
            offset: r.offset - sym.value,
            r_type: r.r_type,
            target: match r.target {
                Target::Symbol(s) => {
                    let t = &pre.elf.symbols[s];
                    PreTarget::Symbol(SymbolRef {
                        name: t.name.clone(),
                        class: class_of(t.kind),
                        local: !t.is_global() && t.section().is_some(),
                    })
                }
                _ => PreTarget::Anonymous(crate::compare::describe(pre, r)),
            },
            addend: r.addend,
        })
        .collect();
    Some((code, relocs))
}

/// The pre-build code of the function named `name` (a global one, or a local one when
/// `local`) defined in the object `bytes`, if it defines one: for proving a function of
/// another object that the new code calls.
pub fn function_pre_code(
    bytes: &[u8],
    name: &str,
    local: bool,
) -> Result<Option<Referenced>, Error> {
    let elf = crate::elf::ElfObject::parse(bytes).map_err(|e| e.in_build(Side::Pre))?;
    let Some(index) = elf.symbols.iter().position(|s| {
        s.name == name
            && s.kind == crate::elf::SymbolKind::Func
            && s.section().is_some()
            && s.is_global() != local
    }) else {
        return Ok(None);
    };
    let resolved = Resolved::new(elf);
    Ok(
        pre_code_of(&resolved, PreSym(index)).map(|(pre_code, pre_relocs)| Referenced {
            name: name.to_string(),
            local,
            pre_code,
            pre_relocs,
        }),
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key<'a> {
    Range(usize, u64),
    Str(&'a [u8], u64),
    Constant(&'a [u8], u64),
}

fn class_of(kind: SymbolKind) -> SymbolClass {
    match kind {
        SymbolKind::Func => SymbolClass::Function,
        SymbolKind::Object => SymbolClass::Data,
        SymbolKind::Tls => SymbolClass::Tls,
        _ => SymbolClass::Unknown,
    }
}

fn piece_kind(section: &elf::Section<'_>) -> PieceKind {
    if section.is_code() {
        PieceKind::Code
    } else if section.flags & object::elf::SHF_WRITE.0 == 0 {
        PieceKind::ReadOnly
    } else if section.is_nobits() {
        PieceKind::Bss
    } else {
        PieceKind::Data
    }
}

struct Extractor<'x, 'a> {
    pre: &'x Resolved<'a>,
    post: &'x Resolved<'a>,
    correlation: &'x Correlation,
    /// Post symbols whose code or data the patch carries.
    carried: HashSet<PostSym>,
    set: PatchSet,
    index: HashMap<Key<'a>, usize>,
    queue: Vec<(usize, usize, u64, u64)>,
}

impl<'x, 'a> Extractor<'x, 'a> {
    fn symbol_ref_pre(&self, index: PreSym) -> SymbolRef {
        let sym = &self.pre.elf.symbols[index.0];
        SymbolRef {
            name: sym.name.clone(),
            class: class_of(sym.kind),
            local: !sym.is_global() && sym.section().is_some(),
        }
    }

    /// A piece for the bytes `[start, end)` of a post section; queued for its relocations.
    fn piece_for_range(
        &mut self,
        name: String,
        symbol: Option<String>,
        section: usize,
        start: u64,
        end: u64,
    ) -> usize {
        if let Some(&index) = self.index.get(&Key::Range(section, start)) {
            return index;
        }
        let s = &self.post.elf.sections[section];
        let kind = piece_kind(s);
        let bytes = if kind == PieceKind::Bss {
            Vec::new()
        } else {
            s.bytes(start, end).map(<[u8]>::to_vec).unwrap_or_default()
        };
        let index = self.set.pieces.len();
        self.set.pieces.push(Piece {
            name,
            symbol,
            kind,
            align: s.align.max(1),
            size: end.saturating_sub(start),
            bytes,
            relocs: Vec::new(),
            // A dynamic-debug descriptor must sit in `__dyndbg`, where the module loader
            // registers it (else `pr_debug` in the new code can never be enabled).
            table: (s.name == crate::compare::DYNDBG_SECTION).then(|| s.name.clone()),
            frames: Vec::new(),
        });
        self.index.insert(Key::Range(section, start), index);
        self.queue.push((index, section, start, end));
        index
    }

    fn piece_for_symbol(&mut self, symbol: PostSym) -> usize {
        let sym = &self.post.elf.symbols[symbol.0];
        let section = sym.section().unwrap_or(0);
        let (name, start, end) = (
            sym.name.clone(),
            sym.value,
            sym.value.saturating_add(sym.size),
        );
        self.piece_for_range(name.clone(), Some(name), section, start, end)
    }

    fn piece_for_literal(
        &mut self,
        key: Key<'a>,
        section: usize,
        bytes: &'a [u8],
        terminator: u64,
    ) -> usize {
        if let Some(&index) = self.index.get(&key) {
            return index;
        }
        let s = &self.post.elf.sections[section];
        let mut data = bytes.to_vec();
        data.extend(std::iter::repeat_n(0u8, terminator as usize));
        let name = match key {
            Key::Str(..) => format!(
                "string \"{}\"",
                String::from_utf8_lossy(bytes).escape_debug()
            ),
            _ => format!("constant {bytes:02x?}"),
        };
        let index = self.set.pieces.len();
        self.set.pieces.push(Piece {
            name,
            symbol: None,
            kind: PieceKind::ReadOnly,
            align: s.align.max(1),
            size: data.len() as u64,
            bytes: data,
            relocs: Vec::new(),
            table: None,
            frames: Vec::new(),
        });
        self.index.insert(key, index);
        index
    }

    /// Where a reference of carried code or data points, in the patch or in the target.
    fn link(&mut self, reference: &Reference<'a>) -> Link {
        match reference.target {
            Target::Nothing => Link::Nothing,
            Target::Str(section, bytes) => {
                let width = self.post.elf.sections[section].entsize.max(1);
                Link::Piece(self.piece_for_literal(Key::Str(bytes, width), section, bytes, width))
            }
            Target::Constant(section, bytes) => Link::Piece(self.piece_for_literal(
                Key::Constant(bytes, bytes.len() as u64),
                section,
                bytes,
                0,
            )),
            Target::Section(section) => {
                let s = &self.post.elf.sections[section];
                let name = s.name.clone();
                Link::Piece(self.piece_for_range(name, None, section, 0, s.size))
            }
            Target::Symbol(index) => {
                let symbol = PostSym(index);
                let sym = &self.post.elf.symbols[index];
                if self.carried.contains(&symbol) {
                    return Link::Piece(self.piece_for_symbol(symbol));
                }
                if sym.section().is_none() {
                    // Undefined here: another object of the program, or a library.
                    return Link::Symbol(SymbolRef {
                        name: sym.name.clone(),
                        class: class_of(sym.kind),
                        local: false,
                    });
                }
                let is_data = matches!(sym.kind, SymbolKind::Object | SymbolKind::Tls);
                let private = is_data && crate::compare::is_private_data(sym.kind, &sym.name);
                match self.correlation.pre_of(symbol) {
                    Some(pre) if !private => Link::Symbol(self.symbol_ref_pre(pre)),
                    // New or compiler-private data: the patch brings its own copy. (A new
                    // function not selected as new cannot happen for a correct diff; it is
                    // carried too rather than linked to nothing.)
                    _ => {
                        self.carried.insert(symbol);
                        Link::Piece(self.piece_for_symbol(symbol))
                    }
                }
            }
        }
    }

    /// The piece holding the carried function a table entry's owner field points into, if
    /// the patch carries it.
    fn owner_piece(&self, reference: &Reference<'a>) -> Option<usize> {
        let Target::Symbol(index) = reference.target else {
            return None;
        };
        if !self.carried.contains(&PostSym(index)) {
            return None;
        }
        let sym = &self.post.elf.symbols[index];
        self.index
            .get(&Key::Range(sym.section()?, sym.value))
            .copied()
    }

    /// Adds, for each table of the post object, a piece with the entries owned by carried
    /// functions (and their parallel entries), relocated like any other piece.
    fn tables(&mut self) {
        let post = self.post;
        for section in &post.elf.sections {
            let Some(kind) = table::table_of(&section.name) else {
                continue;
            };
            if !section.is_alloc() || kind.entry == 0 {
                continue;
            }
            let references: Vec<Reference<'a>> = post.references[section.index].clone();
            let mut bytes = Vec::new();
            let mut relocs = Vec::new();
            let mut kept = Vec::new();
            let count = section.size / kind.entry;
            for i in 0..count {
                let start = i * kind.entry;
                let end = start + kind.entry;
                let owner = references
                    .iter()
                    .find(|r| r.offset == start + kind.owner)
                    .and_then(|r| self.owner_piece(r));
                if owner.is_none() {
                    continue;
                }
                let Some(entry) = section.bytes(start, end) else {
                    continue;
                };
                let base = bytes.len() as u64;
                bytes.extend_from_slice(entry);
                for r in references
                    .iter()
                    .filter(|r| r.offset >= start && r.offset < end)
                {
                    let target = self.link(r);
                    relocs.push(PieceReloc {
                        offset: base + (r.offset - start),
                        r_type: r.r_type,
                        target,
                        addend: r.addend,
                    });
                }
                kept.push(i);
            }
            if kept.is_empty() {
                continue;
            }
            let kind_of = piece_kind(section);
            self.set.pieces.push(Piece {
                name: section.name.clone(),
                symbol: None,
                kind: kind_of,
                align: section.align.max(1),
                size: bytes.len() as u64,
                bytes,
                relocs,
                table: Some(section.name.clone()),
                frames: Vec::new(),
            });
            if let Some((parallel, size)) = kind.parallel
                && let Some(p) = post.elf.section_by_name(parallel)
            {
                let mut bytes = Vec::with_capacity(kept.len() * size as usize);
                for &i in &kept {
                    if let Some(entry) = p.bytes(i * size, (i + 1) * size) {
                        bytes.extend_from_slice(entry);
                    }
                }
                self.set.pieces.push(Piece {
                    name: parallel.to_string(),
                    symbol: None,
                    kind: piece_kind(p),
                    align: p.align.max(1),
                    size: bytes.len() as u64,
                    bytes,
                    relocs: Vec::new(),
                    table: Some(parallel.to_string()),
                    frames: Vec::new(),
                });
            }
        }
    }

    fn drain(&mut self) {
        while let Some((piece, section, start, end)) = self.queue.pop() {
            let references: Vec<Reference<'a>> =
                self.post.references_in(section, start, end).to_vec();
            let mut relocs = Vec::with_capacity(references.len());
            // R_X86_64_NONE writes nothing: nothing to carry or resolve.
            for r in references
                .iter()
                .filter(|r| RelocClass::of(r.r_type).op != Op::None)
            {
                let target = self.link(r);
                relocs.push(PieceReloc {
                    offset: r.offset - start,
                    r_type: r.r_type,
                    target,
                    addend: r.addend,
                });
            }
            self.set.pieces[piece].relocs = relocs;
        }
    }
}

/// Extracts the patch set of a diffed pair.
fn extract(
    pre: &Resolved<'_>,
    post: &Resolved<'_>,
    correlation: &Correlation,
    diff: &ObjectDiff,
) -> PatchSet {
    let mut x = Extractor {
        pre,
        post,
        correlation,
        carried: HashSet::new(),
        set: PatchSet {
            object: diff.object.clone(),
            source_file: pre
                .elf
                .source_file()
                .or(post.elf.source_file())
                .map(str::to_string),
            ..PatchSet::default()
        },
        index: HashMap::new(),
        queue: Vec::new(),
    };
    // Carried functions: the changed and new ones, and the cold parts of those.
    let included: Vec<&crate::report::FunctionDiff> = diff
        .functions
        .iter()
        .filter(|f| matches!(f.status, Status::Changed | Status::New))
        .collect();
    for f in &included {
        if let Some(j) = f.post_symbol {
            x.carried.insert(j);
        }
    }
    for f in &diff.functions {
        if let (Some(j), Some(owner)) = (f.post_symbol, cold_owner(&f.name))
            && included.iter().any(|g| g.name == owner)
        {
            x.carried.insert(j);
        }
    }
    for f in &included {
        let Some(j) = f.post_symbol else { continue };
        let piece = x.piece_for_symbol(j);
        if f.status != Status::Changed
            || matches!(f.clone, Some(CloneKind::Cold | CloneKind::LocalAlias))
        {
            continue;
        }
        let Some(i) = f.pre_symbol else { continue };
        let sym = &pre.elf.symbols[i.0];
        if sym.section().is_none() {
            continue;
        }
        let (pre_code, pre_relocs) = pre_code_of(pre, i).unwrap_or_default();
        x.set.replacements.push(Replacement {
            name: sym.name.clone(),
            post_name: f.name.clone(),
            local: !sym.is_global(),
            piece,
            pre_code,
            pre_relocs,
        });
    }
    // Hooks: each `.hotsplice.<kind>` section points at functions of the patch.
    for section in &post.elf.sections {
        let Some(kind) = HookKind::of_section(&section.name) else {
            continue;
        };
        let references: Vec<Reference<'_>> =
            post.references_in(section.index, 0, section.size).to_vec();
        for r in references {
            if let Target::Symbol(s) = r.target
                && post.elf.symbols[s].kind == SymbolKind::Func
            {
                let piece = x.piece_for_symbol(PostSym(s));
                x.set.hooks.push(Hook { kind, piece });
            }
        }
    }
    x.drain();
    x.tables();
    x.drain();
    // Each carried function's rows of the object's `.eh_frame`, for unwinding through it.
    for (section, start, mut rows) in crate::frames::frames(&post.elf) {
        if let Some(&i) = x.index.get(&Key::Range(section, start))
            && x.set.pieces[i].kind == PieceKind::Code
        {
            let size = x.set.pieces[i].size;
            rows.retain(|r| r.offset < size);
            x.set.pieces[i].frames = rows;
        }
    }
    // Functions of this object the new code uses and does not replace.
    let mut wanted: Vec<SymbolRef> = Vec::new();
    for piece in &x.set.pieces {
        for r in &piece.relocs {
            if let Link::Symbol(s) = &r.target
                && s.class == SymbolClass::Function
                && !wanted.contains(s)
                && !x.set.replacements.iter().any(|rep| rep.name == s.name)
            {
                wanted.push(s.clone());
            }
        }
    }
    for s in wanted {
        let Some(index) = pre.elf.symbols.iter().position(|p| {
            p.name == s.name
                && p.kind == crate::elf::SymbolKind::Func
                && p.section().is_some()
                && p.is_global() != s.local
        }) else {
            continue;
        };
        if let Some((pre_code, pre_relocs)) = pre_code_of(pre, PreSym(index)) {
            x.set.referenced.push(Referenced {
                name: s.name,
                local: s.local,
                pre_code,
                pre_relocs,
            });
        }
    }
    x.set
}
