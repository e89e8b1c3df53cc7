//! The diff of one pre/post object pair: statuses, bindings and refusals.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use hotsplice_reloc::{Op, RelocClass};
use object::elf::{
    SHF_TLS, SHF_WRITE, SHT_FINI_ARRAY, SHT_INIT_ARRAY, SHT_NOTE, SHT_PREINIT_ARRAY,
    SHT_X86_64_UNWIND, SectionType,
};

use crate::compare::{Comparer, Range, is_private_data};
use crate::correlate::{self, Correlation};
use crate::elf::{self, Definition, ElfObject, SymbolKind};
use crate::error::{Error, Side};
use crate::layout;
use crate::name::{self, CloneKind};
use crate::reference::{Resolved, Target};
use crate::report::{
    DataDiff, DataKind, FunctionDiff, ObjectDiff, PostSym, PreSym, Refusal, RefusalKind,
    StaticBinding, Status,
};

/// Diffs one object pair. `None` stands for an object that exists in one build only (all its
/// functions are then new, or removed).
///
/// `object` is the name reported for the pair (its path relative to the build tree).
pub fn diff_objects(
    object: &str,
    pre: Option<&[u8]>,
    post: Option<&[u8]>,
) -> Result<ObjectDiff, Error> {
    let pre = parse(pre, Side::Pre)?;
    let post = parse(post, Side::Post)?;
    let correlation = correlate::correlate(&pre, &post);
    Ok(analyze(object, &pre, &post, &correlation))
}

/// The diff of a parsed, correlated pair.
pub(crate) fn analyze(
    object: &str,
    pre: &Resolved<'_>,
    post: &Resolved<'_>,
    correlation: &Correlation,
) -> ObjectDiff {
    let mut diff = ObjectDiff {
        object: object.to_string(),
        ..ObjectDiff::default()
    };
    let comparer = Comparer::new(pre, post, correlation);
    diff.functions = function_statuses(pre, post, correlation, &comparer);
    diff.data = data_statuses(pre, post, correlation, &comparer);

    let changed: Vec<PostSym> = diff
        .functions
        .iter()
        .filter(|f| matches!(f.status, Status::Changed | Status::New))
        .filter_map(|f| f.post_symbol)
        .collect();
    diff.bindings = bindings(pre, post, correlation, &changed);
    let mut refusals = refuse_data(post, &diff.data, &changed);
    refusals.extend(refuse_init(pre, post, &comparer, &diff.functions));
    refusals.extend(refuse_sections(pre, post, &comparer));
    refusals.extend(refuse_relocations(post, &diff.functions, &diff.data));
    diff.refusals = refusals;
    let changed_pre: Vec<PreSym> = diff
        .functions
        .iter()
        .filter(|f| f.status == Status::Changed)
        .filter_map(|f| f.pre_symbol)
        .collect();
    match layout::check(pre, post, &changed, &changed_pre) {
        layout::Checked::Done(refusals) => diff.refusals.extend(refusals),
        layout::Checked::NotNeeded => {}
        layout::Checked::NoDebugInfo => diff.warnings.push(
            "no DWARF debugging information (build with -g): struct layouts were not checked"
                .to_string(),
        ),
    }

    if !pre.elf.comment.is_empty()
        && !post.elf.comment.is_empty()
        && pre.elf.comment != post.elf.comment
    {
        diff.warnings.push(format!(
            "the two objects were built by different compilers: {:?} vs {:?}",
            pre.elf.comment.join("; "),
            post.elf.comment.join("; ")
        ));
    }
    diff.refusals
        .sort_by(|a, b| (a.kind, &a.symbol).cmp(&(b.kind, &b.symbol)));
    diff.refusals
        .dedup_by(|a, b| a.kind == b.kind && a.symbol == b.symbol && a.detail == b.detail);
    diff
}

/// One object of the pair, parsed and resolved (`None`: the object does not exist on this side).
pub(crate) fn parse(bytes: Option<&[u8]>, side: Side) -> Result<Resolved<'_>, Error> {
    let elf = match bytes {
        Some(bytes) => ElfObject::parse(bytes).map_err(|e| e.in_build(side))?,
        None => ElfObject::empty(),
    };
    Ok(Resolved::new(elf))
}

fn is_function(side: &Resolved<'_>, index: usize) -> bool {
    let sym = &side.elf.symbols[index];
    sym.kind == SymbolKind::Func
        && sym
            .section()
            .is_some_and(|s| side.elf.sections[s].is_alloc())
}

fn is_data(side: &Resolved<'_>, index: usize) -> bool {
    let sym = &side.elf.symbols[index];
    matches!(sym.kind, SymbolKind::Object | SymbolKind::Tls)
        && match sym.definition {
            Definition::Section(s) => side.elf.sections[s].is_alloc(),
            Definition::Common => true,
            _ => false,
        }
}

fn function_statuses(
    pre: &Resolved<'_>,
    post: &Resolved<'_>,
    correlation: &Correlation,
    comparer: &Comparer<'_, '_>,
) -> Vec<FunctionDiff> {
    let mut functions = Vec::new();
    let entry = |side: &Resolved<'_>, index: usize, status: Status| {
        let sym = &side.elf.symbols[index];
        let (parent, clone) = match name::cold_owner(&sym.name) {
            Some(owner) => (Some(owner.to_string()), Some(CloneKind::Cold)),
            None => match name::clone_parent(&sym.name) {
                (parent, Some(kind)) => (Some(parent.to_string()), Some(kind)),
                (_, None) => (None, None),
            },
        };
        FunctionDiff {
            name: sym.name.clone(),
            pre_name: None,
            status,
            parent,
            clone,
            global: sym.is_global(),
            reasons: Vec::new(),
            pre_symbol: None,
            post_symbol: None,
        }
    };
    for j in (0..post.elf.symbols.len()).filter(|&j| is_function(post, j)) {
        let paired = correlation
            .pre_of(PostSym(j))
            .map(|i| i.0)
            .filter(|&i| is_function(pre, i));
        let mut f = entry(post, j, Status::New);
        f.post_symbol = Some(PostSym(j));
        if let Some(i) = paired {
            f.pre_symbol = Some(PreSym(i));
            let pre_name = &pre.elf.symbols[i].name;
            if *pre_name != f.name {
                f.pre_name = Some(pre_name.clone());
            }
            let (Some(a), Some(b)) = (Range::of_symbol(pre, i), Range::of_symbol(post, j)) else {
                continue;
            };
            match comparer.difference(a, b) {
                None => f.status = Status::Unchanged,
                Some(reason) => {
                    f.status = Status::Changed;
                    f.reasons.push(reason);
                }
            }
        }
        functions.push(f);
    }
    for i in (0..pre.elf.symbols.len()).filter(|&i| is_function(pre, i)) {
        let paired = correlation
            .post_of(PreSym(i))
            .is_some_and(|j| is_function(post, j.0));
        if !paired {
            let mut f = entry(pre, i, Status::Removed);
            f.pre_symbol = Some(PreSym(i));
            functions.push(f);
        }
    }

    // A cold part is entered by jumps into its middle, never at its start: when it changes,
    // the function owning it must be replaced too.
    let changed_cold: Vec<(String, String)> = functions
        .iter()
        .filter(|f| f.clone == Some(CloneKind::Cold) && f.status == Status::Changed)
        .filter_map(|f| Some((f.parent.clone()?, f.name.clone())))
        .collect();
    for (owner, cold) in changed_cold {
        if let Some(f) = functions
            .iter_mut()
            .find(|f| f.name == owner && f.status == Status::Unchanged)
        {
            f.status = Status::Changed;
            f.reasons.push(format!("its cold part {cold} changed"));
        }
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.status.cmp(&b.status)));
    functions
}

fn data_kind(side: &Resolved<'_>, index: usize) -> DataKind {
    let sym = &side.elf.symbols[index];
    if sym.kind == SymbolKind::Tls {
        return DataKind::Tls;
    }
    match sym.section() {
        Some(s) => {
            let section = &side.elf.sections[s];
            if section.flags & SHF_TLS.0 != 0 {
                DataKind::Tls
            } else if section.is_nobits() {
                DataKind::Bss
            } else if section.flags & SHF_WRITE.0 == 0 {
                DataKind::ReadOnly
            } else {
                DataKind::Data
            }
        }
        None => DataKind::Bss,
    }
}

fn data_statuses(
    pre: &Resolved<'_>,
    post: &Resolved<'_>,
    correlation: &Correlation,
    comparer: &Comparer<'_, '_>,
) -> Vec<DataDiff> {
    let mut data = Vec::new();
    let entry = |side: &Resolved<'_>, index: usize, status: Status| {
        let sym = &side.elf.symbols[index];
        DataDiff {
            name: sym.name.clone(),
            pre_name: None,
            status,
            kind: data_kind(side, index),
            compiler_private: !sym.is_global() && is_private_data(sym.kind, &sym.name),
            reasons: Vec::new(),
            pre_symbol: None,
            post_symbol: None,
        }
    };
    for j in (0..post.elf.symbols.len()).filter(|&j| is_data(post, j)) {
        let mut d = entry(post, j, Status::New);
        d.post_symbol = Some(PostSym(j));
        if let Some(i) = correlation
            .pre_of(PostSym(j))
            .map(|i| i.0)
            .filter(|&i| is_data(pre, i))
        {
            d.pre_symbol = Some(PreSym(i));
            let (pre_sym, post_sym) = (&pre.elf.symbols[i], &post.elf.symbols[j]);
            if pre_sym.name != post_sym.name {
                d.pre_name = Some(pre_sym.name.clone());
            }
            let pre_kind = data_kind(pre, i);
            let difference = match (Range::of_symbol(pre, i), Range::of_symbol(post, j)) {
                _ if pre_kind != d.kind
                    && (pre_kind == DataKind::Tls || d.kind == DataKind::Tls) =>
                {
                    Some(format!(
                        "storage changed from {} to {}",
                        pre_kind.as_str(),
                        d.kind.as_str()
                    ))
                }
                (Some(a), Some(b)) => comparer.difference(a, b),
                _ => (pre_sym.size != post_sym.size)
                    .then(|| format!("size {} → {} bytes", pre_sym.size, post_sym.size)),
            };
            match difference {
                None => d.status = Status::Unchanged,
                Some(reason) => {
                    d.status = Status::Changed;
                    d.reasons.push(reason);
                }
            }
        }
        if d.compiler_private && d.status != Status::Unchanged {
            d.reasons
                .push("compiler-private: patched code takes a fresh copy".to_string());
        }
        data.push(d);
    }
    for i in (0..pre.elf.symbols.len()).filter(|&i| is_data(pre, i)) {
        if !correlation
            .post_of(PreSym(i))
            .is_some_and(|j| is_data(post, j.0))
        {
            let mut d = entry(pre, i, Status::Removed);
            d.pre_symbol = Some(PreSym(i));
            data.push(d);
        }
    }
    data.sort_by(|a, b| a.name.cmp(&b.name).then(a.status.cmp(&b.status)));
    data
}

/// Symbols referenced by the code of a post function.
fn referenced_symbols(post: &Resolved<'_>, function: PostSym) -> Vec<PostSym> {
    let Some(range) = Range::of_symbol(post, function.0) else {
        return Vec::new();
    };
    post.references_in(
        range.section,
        range.start,
        range.end.max(range.start.saturating_add(1)),
    )
    .iter()
    .filter_map(|r| match r.target {
        Target::Symbol(s) => Some(PostSym(s)),
        _ => None,
    })
    .collect()
}

fn bindings(
    pre: &Resolved<'_>,
    post: &Resolved<'_>,
    correlation: &Correlation,
    changed: &[PostSym],
) -> Vec<StaticBinding> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &function in changed {
        for target in referenced_symbols(post, function) {
            if !correlate::is_static_local(post, target.0) || !seen.insert((function, target)) {
                continue;
            }
            let sym = &post.elf.symbols[target.0];
            let private = is_private_data(sym.kind, &sym.name);
            let existing = if private {
                None
            } else {
                correlation
                    .pre_of(target)
                    .map(|i| pre.elf.symbols[i.0].name.clone())
            };
            out.push(StaticBinding {
                function: post.elf.symbols[function.0].name.clone(),
                symbol: sym.name.clone(),
                existing,
                compiler_private: private,
            });
        }
    }
    out.sort_by(|a, b| (&a.function, &a.symbol).cmp(&(&b.function, &b.symbol)));
    out
}

/// Changed post functions whose code references `symbol`.
fn users(post: &Resolved<'_>, changed: &[PostSym], symbol: PostSym) -> Vec<String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for &f in changed {
        if referenced_symbols(post, f).contains(&symbol) {
            names.insert(post.elf.symbols[f.0].name.clone());
        }
    }
    names.into_iter().collect()
}

fn refuse_data(post: &Resolved<'_>, data: &[DataDiff], changed: &[PostSym]) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for d in data {
        let functions = d
            .post_symbol
            .map(|s| users(post, changed, s))
            .unwrap_or_default();
        let used_by = if functions.is_empty() {
            String::new()
        } else {
            format!(" (used by {})", functions.join(", "))
        };
        let refusal = match (d.status, d.kind) {
            (Status::New, DataKind::Tls) => Refusal {
                kind: RefusalKind::TlsNew,
                symbol: d.name.clone(),
                detail: format!(
                    "new thread-local variable {}: threads already running have no storage for it{used_by}",
                    d.name
                ),
                functions,
            },
            (Status::Changed, DataKind::Tls) => Refusal {
                kind: RefusalKind::TlsChanged,
                symbol: d.name.clone(),
                detail: format!(
                    "thread-local variable {} changed ({}); every running thread holds the old one{used_by}",
                    d.name,
                    d.reasons.join("; ")
                ),
                functions,
            },
            (Status::Changed, _) if !d.compiler_private => Refusal {
                kind: RefusalKind::DataChanged,
                symbol: d.name.clone(),
                detail: format!(
                    "existing {} variable {} changed ({}); the running program keeps the old value, so this needs a data migration{used_by}",
                    d.kind.as_str(),
                    d.name,
                    d.reasons.join("; ")
                ),
                functions,
            },
            _ => continue,
        };
        refusals.push(refusal);
    }
    refusals
}

fn is_init_section(section: &elf::Section<'_>) -> bool {
    matches!(
        SectionType(section.sh_type),
        SHT_INIT_ARRAY | SHT_PREINIT_ARRAY | SHT_FINI_ARRAY
    ) || section.name.starts_with(".ctors")
        || section.name.starts_with(".dtors")
        || section.name.starts_with(".init_array")
        || section.name.starts_with(".fini_array")
}

fn is_fini_section(section: &elf::Section<'_>) -> bool {
    section.sh_type == SHT_FINI_ARRAY.0
        || section.name.starts_with(".fini_array")
        || section.name.starts_with(".dtors")
}

fn refuse_init(
    pre: &Resolved<'_>,
    post: &Resolved<'_>,
    comparer: &Comparer<'_, '_>,
    functions: &[FunctionDiff],
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let mut constructors: BTreeMap<PostSym, bool> = BTreeMap::new();
    for section in post.elf.sections.iter().filter(|s| is_init_section(s)) {
        for reference in &post.references[section.index] {
            if let Target::Symbol(s) = reference.target {
                constructors.insert(PostSym(s), is_fini_section(section));
            }
        }
        let pre_section = pre.elf.section_by_name(&section.name);
        let difference = match pre_section {
            None => Some("new".to_string()),
            Some(p) => comparer.difference(
                Range::of_section(pre, p.index),
                Range::of_section(post, section.index),
            ),
        };
        if let Some(why) = difference {
            let targets: Vec<String> = post.references[section.index]
                .iter()
                .map(|r| crate::compare::describe(post, r))
                .collect();
            let what = if is_fini_section(section) {
                "destructors"
            } else {
                "constructors"
            };
            refusals.push(Refusal {
                kind: RefusalKind::InitChanged,
                symbol: section.name.clone(),
                detail: format!(
                    "the list of {what} in {} changed ({why}; now: {}); it is read once by the loader, so a live patch cannot change it",
                    section.name,
                    targets.join(", ")
                ),
                functions: targets,
            });
        }
    }
    for f in functions {
        let Some(j) = f.post_symbol else { continue };
        if f.status != Status::Changed {
            continue;
        }
        if let Some(&fini) = constructors.get(&j) {
            if fini {
                continue; // A destructor runs at exit: replacing it takes effect.
            }
            refusals.push(Refusal {
                kind: RefusalKind::InitChanged,
                symbol: f.name.clone(),
                detail: format!(
                    "constructor {} changed; it ran when the program started, so the change would never take effect",
                    f.name
                ),
                functions: vec![f.name.clone()],
            });
        }
    }
    refusals
}

/// Allocated sections with no symbol of their own that nothing references as a section:
/// their contents cannot be attributed to a function or a variable, so a change to them
/// cannot be applied.
fn refuse_sections(
    pre: &Resolved<'_>,
    post: &Resolved<'_>,
    comparer: &Comparer<'_, '_>,
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let mut referenced: HashSet<usize> = HashSet::new();
    for refs in &post.references {
        for r in refs {
            if let Target::Section(s) = r.target {
                referenced.insert(s);
            }
        }
    }
    for section in &post.elf.sections {
        if !section.is_alloc()
            || section.size == 0
            || !post.by_section[section.index].is_empty()
            || referenced.contains(&section.index)
            || section.is_merge_strings()
            || section.is_merge_constants()
            || is_init_section(section)
            || section.sh_type == SHT_NOTE.0
            || section.sh_type == SHT_X86_64_UNWIND.0
            || section.name == ".eh_frame"
            || section.name.starts_with(".note")
            || crate::table::is_table_section(&section.name)
            || crate::table::is_discarded(&section.name)
        {
            continue;
        }
        let difference = match pre.elf.section_by_name(&section.name) {
            None => Some("it is new".to_string()),
            Some(p) => comparer.difference(
                Range::of_section(pre, p.index),
                Range::of_section(post, section.index),
            ),
        };
        if let Some(why) = difference {
            refusals.push(Refusal {
                kind: RefusalKind::UnsupportedSection,
                symbol: section.name.clone(),
                detail: format!(
                    "section {} holds no function or variable symbol and changed ({why})",
                    section.name
                ),
                functions: Vec::new(),
            });
        }
    }
    refusals
}

fn refuse_relocations(
    post: &Resolved<'_>,
    functions: &[FunctionDiff],
    data: &[DataDiff],
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let elements = functions
        .iter()
        .filter(|f| matches!(f.status, Status::Changed | Status::New))
        .filter_map(|f| f.post_symbol)
        .chain(
            data.iter()
                .filter(|d| {
                    d.status == Status::New || (d.compiler_private && d.status == Status::Changed)
                })
                .filter_map(|d| d.post_symbol),
        );
    for symbol in elements {
        let Some(range) = Range::of_symbol(post, symbol.0) else {
            continue;
        };
        let mut reported = HashSet::new();
        for r in post.references_in(range.section, range.start, range.end) {
            // R_X86_64_NONE writes nothing (objtool leaves it where it turned a call into
            // a NOP): a no-op, not a reference.
            let class = RelocClass::of(r.r_type);
            if class.op == Op::None || class.linked || !reported.insert(r.r_type) {
                continue;
            }
            let name = &post.elf.symbols[symbol.0].name;
            refusals.push(Refusal {
                kind: RefusalKind::UnsupportedRelocation,
                symbol: name.clone(),
                detail: format!(
                    "{} at {name}+{:#x} (to {}): {}",
                    hotsplice_reloc::name(r.r_type),
                    r.offset - range.start,
                    crate::compare::describe(post, r),
                    hotsplice_reloc::unsupported_reason(r.r_type)
                ),
                functions: vec![name.clone()],
            });
        }
    }
    refusals
}
