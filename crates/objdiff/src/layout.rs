//! Struct and union layout changes, found through DWARF.
//!
//! Data already in the running program was laid out by the pre build. If a patch changes the
//! layout of a type that changed code uses — a member added, moved (even inside padding, with
//! the same `sizeof`), renamed or retyped — the new code would misread the old data. The types
//! checked are those reachable from the changed and new functions: their parameters, return
//! types, local variables (including those of inlined callees), the globals their code
//! touches, and everything reachable from those through pointers, typedefs, arrays and
//! members.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;

use gimli::DwTag;

use crate::dwarf::{DieTree, read};
use crate::name;
use crate::reference::{Resolved, Target};
use crate::report::{PostSym, PreSym, Refusal, RefusalKind};

/// One member of a laid-out aggregate, flattened through anonymous members.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    offset_bits: u64,
    bit_size: Option<u64>,
    type_name: String,
}

/// The layout of one struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    size: Option<u64>,
    members: BTreeMap<String, Member>,
    order: Vec<String>,
}

struct Types<'t> {
    tree: &'t DieTree,
    /// Anonymous aggregate → the typedef naming it.
    typedef_names: HashMap<usize, String>,
    /// Complete (non-declaration) aggregates by name.
    by_name: HashMap<String, usize>,
}

fn is_aggregate(tag: DwTag) -> bool {
    matches!(
        tag,
        gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_class_type
    )
}

fn keyword(tag: DwTag) -> &'static str {
    match tag {
        gimli::DW_TAG_union_type => "union",
        gimli::DW_TAG_enumeration_type => "enum",
        _ => "struct",
    }
}

impl<'t> Types<'t> {
    fn new(tree: &'t DieTree) -> Self {
        let mut typedef_names = HashMap::new();
        for die in &tree.dies {
            if die.tag == gimli::DW_TAG_typedef
                && let (Some(name), Some(target)) = (&die.name, die.type_ref)
                && is_aggregate(tree.dies[target].tag)
                && tree.dies[target].name.is_none()
            {
                typedef_names.entry(target).or_insert_with(|| name.clone());
            }
        }
        let mut types = Types {
            tree,
            typedef_names,
            by_name: HashMap::new(),
        };
        for (index, die) in tree.dies.iter().enumerate() {
            if is_aggregate(die.tag)
                && !die.declaration
                && let Some(name) = types.aggregate_name(index)
            {
                types.by_name.entry(name).or_insert(index);
            }
        }
        types
    }

    /// The name an aggregate is known by across builds: `struct conn`, or a typedef's name
    /// for an anonymous struct.
    fn aggregate_name(&self, index: usize) -> Option<String> {
        let die = &self.tree.dies[index];
        match &die.name {
            Some(name) => Some(format!("{} {name}", keyword(die.tag))),
            None => self.typedef_names.get(&index).cloned(),
        }
    }

    /// A type rendered as C-like text; anonymous aggregates are rendered with their layout so
    /// that a change inside them shows in the enclosing member's type.
    fn render(&self, index: Option<usize>, depth: usize) -> String {
        let Some(index) = index else {
            return "void".to_string();
        };
        if depth > 12 {
            return "...".to_string();
        }
        let die = &self.tree.dies[index];
        let inner = || self.render(die.type_ref, depth + 1);
        match die.tag {
            gimli::DW_TAG_pointer_type => format!("{} *", inner()),
            gimli::DW_TAG_const_type => format!("const {}", inner()),
            gimli::DW_TAG_volatile_type => format!("volatile {}", inner()),
            gimli::DW_TAG_restrict_type => format!("{} restrict", inner()),
            gimli::DW_TAG_atomic_type => format!("_Atomic {}", inner()),
            gimli::DW_TAG_array_type => {
                let mut dims = String::new();
                for &c in &die.children {
                    let sub = &self.tree.dies[c];
                    if sub.tag == gimli::DW_TAG_subrange_type {
                        match sub.count {
                            Some(n) => {
                                let _ = write!(dims, "[{n}]");
                            }
                            None => dims.push_str("[]"),
                        }
                    }
                }
                format!("{}{dims}", inner())
            }
            gimli::DW_TAG_subroutine_type => {
                let params: Vec<String> = die
                    .children
                    .iter()
                    .filter(|&&c| self.tree.dies[c].tag == gimli::DW_TAG_formal_parameter)
                    .map(|&c| self.render(self.tree.dies[c].type_ref, depth + 1))
                    .collect();
                format!("{}({})", inner(), params.join(", "))
            }
            tag if is_aggregate(tag) || tag == gimli::DW_TAG_enumeration_type => {
                if let Some(name) = &die.name {
                    return format!("{} {name}", keyword(tag));
                }
                if is_aggregate(tag) && depth < 4 {
                    let layout = self.layout(index, depth + 1);
                    let members: Vec<String> = layout
                        .order
                        .iter()
                        .map(|m| {
                            let member = &layout.members[m];
                            format!("{} {m}@{}", member.type_name, member.offset_bits)
                        })
                        .collect();
                    return format!("{} {{{}}}", keyword(tag), members.join("; "));
                }
                format!("{} <anonymous>", keyword(tag))
            }
            _ => die.name.clone().unwrap_or_else(|| "?".to_string()),
        }
    }

    /// The layout of an aggregate, anonymous members flattened into it.
    fn layout(&self, index: usize, depth: usize) -> Layout {
        let die = &self.tree.dies[index];
        let mut layout = Layout {
            size: die.byte_size,
            members: BTreeMap::new(),
            order: Vec::new(),
        };
        self.collect_members(index, 0, depth, &mut layout);
        layout
    }

    fn collect_members(&self, index: usize, base_bits: u64, depth: usize, layout: &mut Layout) {
        let die = &self.tree.dies[index];
        for &c in &die.children {
            let member = &self.tree.dies[c];
            if member.tag != gimli::DW_TAG_member {
                continue;
            }
            let offset_bits = member
                .bit_offset
                .or(member.member_offset.map(|o| o * 8))
                .unwrap_or(0)
                + base_bits;
            let target = member.type_ref.map(|t| self.strip_cv(t));
            match (&member.name, target) {
                (None, Some(t)) if is_aggregate(self.tree.dies[t].tag) && depth < 16 => {
                    self.collect_members(t, offset_bits, depth + 1, layout);
                }
                _ => {
                    let name = member
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("<anonymous@{offset_bits}>"));
                    let entry = Member {
                        offset_bits,
                        bit_size: member.bit_size,
                        type_name: self.render(member.type_ref, depth),
                    };
                    if layout.members.insert(name.clone(), entry).is_none() {
                        layout.order.push(name);
                    }
                }
            }
        }
    }

    fn strip_cv(&self, mut index: usize) -> usize {
        for _ in 0..8 {
            let die = &self.tree.dies[index];
            match (die.tag, die.type_ref) {
                (
                    gimli::DW_TAG_const_type
                    | gimli::DW_TAG_volatile_type
                    | gimli::DW_TAG_atomic_type,
                    Some(t),
                ) => index = t,
                _ => break,
            }
        }
        index
    }

    /// Every aggregate reachable from `roots`, by name.
    fn reachable_aggregates(&self, roots: &[usize]) -> BTreeSet<String> {
        let mut seen = HashSet::new();
        let mut stack: Vec<usize> = roots.to_vec();
        let mut out = BTreeSet::new();
        while let Some(index) = stack.pop() {
            if !seen.insert(index) {
                continue;
            }
            let die = &self.tree.dies[index];
            let mut index = index;
            if is_aggregate(die.tag) && die.declaration {
                // A forward declaration: continue with the definition of the same name.
                if let Some(&def) = self
                    .aggregate_name(index)
                    .and_then(|n| self.by_name.get(&n))
                {
                    index = def;
                    if !seen.insert(index) {
                        continue;
                    }
                }
            }
            let die = &self.tree.dies[index];
            if is_aggregate(die.tag) {
                if let Some(name) = self.aggregate_name(index) {
                    out.insert(name);
                }
                for &c in &die.children {
                    stack.push(c);
                }
            }
            if die.tag == gimli::DW_TAG_subroutine_type || die.tag == gimli::DW_TAG_array_type {
                stack.extend(die.children.iter().copied());
            }
            if let Some(t) = die.type_ref {
                stack.push(t);
            }
        }
        out
    }

    /// Type roots of a function: return type, parameters and variables of its subprogram
    /// DIEs (and of the functions inlined into them), recursively through lexical blocks.
    fn function_roots(&self, subprograms: &[usize]) -> Vec<usize> {
        let mut roots = Vec::new();
        let mut seen = HashSet::new();
        let mut stack: Vec<usize> = subprograms.to_vec();
        while let Some(index) = stack.pop() {
            if !seen.insert(index) {
                continue;
            }
            let die = &self.tree.dies[index];
            if let Some(t) = self.tree.type_of(index) {
                roots.push(t);
            }
            if let Some(origin) = die.abstract_origin.or(die.specification) {
                stack.push(origin);
            }
            for &c in &die.children {
                let child = &self.tree.dies[c];
                match child.tag {
                    gimli::DW_TAG_formal_parameter
                    | gimli::DW_TAG_variable
                    | gimli::DW_TAG_lexical_block
                    | gimli::DW_TAG_inlined_subroutine => stack.push(c),
                    _ => {}
                }
            }
        }
        roots
    }
}

/// Subprogram DIEs by name (abstract and concrete ones carrying a name), and global variables
/// by name.
fn index_names(tree: &DieTree) -> (HashMap<String, Vec<usize>>, HashMap<String, Vec<usize>>) {
    let mut functions: HashMap<String, Vec<usize>> = HashMap::new();
    let mut variables: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, die) in tree.dies.iter().enumerate() {
        let at_top = die
            .parent
            .is_some_and(|p| tree.dies[p].tag == gimli::DW_TAG_compile_unit);
        match die.tag {
            gimli::DW_TAG_subprogram => {
                if let Some(name) = tree.name_of(index) {
                    functions.entry(name.to_string()).or_default().push(index);
                }
            }
            gimli::DW_TAG_variable if at_top => {
                if let Some(name) = tree.name_of(index) {
                    variables.entry(name.to_string()).or_default().push(index);
                }
            }
            _ => {}
        }
    }
    (functions, variables)
}

/// The bare symbol indices of one side's typed ones.
fn indices<T: Copy>(symbols: &[T], index: impl Fn(T) -> usize) -> Vec<usize> {
    symbols.iter().map(|&s| index(s)).collect()
}

/// Type roots of the given functions of one build: their own types and those of the globals
/// their code references.
fn roots_for(
    side: &Resolved<'_>,
    tree: &DieTree,
    types: &Types<'_>,
    functions: &[usize],
) -> Vec<(String, Vec<usize>)> {
    let (by_function, by_variable) = index_names(tree);
    let mut out = Vec::new();
    for &f in functions {
        let sym = &side.elf.symbols[f];
        let parent = name::clone_parent(&sym.name).0;
        let subprograms = by_function
            .get(sym.name.as_str())
            .or_else(|| by_function.get(parent))
            .cloned()
            .unwrap_or_default();
        let mut roots = types.function_roots(&subprograms);
        if let Some(section) = sym.section() {
            for r in side.references_in(
                section,
                sym.value,
                sym.value.saturating_add(sym.size.max(1)),
            ) {
                if let Target::Symbol(t) = r.target {
                    let target = &side.elf.symbols[t];
                    if let Some(vars) = by_variable.get(target.name.as_str()) {
                        roots.extend(vars.iter().filter_map(|&v| tree.type_of(v)));
                    }
                }
            }
        }
        out.push((sym.name.clone(), roots));
    }
    out
}

fn describe_change(name: &str, pre: &Layout, post: &Layout) -> Option<String> {
    let mut changes = Vec::new();
    if pre.size != post.size {
        changes.push(format!(
            "size {} → {} bytes",
            pre.size.map_or("?".to_string(), |s| s.to_string()),
            post.size.map_or("?".to_string(), |s| s.to_string())
        ));
    }
    let offset = |m: &Member| {
        if m.offset_bits.is_multiple_of(8) && m.bit_size.is_none() {
            format!("offset {}", m.offset_bits / 8)
        } else {
            format!("bit offset {}", m.offset_bits)
        }
    };
    for member in &pre.order {
        let before = &pre.members[member];
        match post.members.get(member) {
            None => changes.push(format!(
                "member `{member}` removed (was at {})",
                offset(before)
            )),
            Some(after) => {
                if before.offset_bits != after.offset_bits {
                    changes.push(format!(
                        "member `{member}` moved from {} to {}",
                        offset(before),
                        offset(after)
                    ));
                }
                if before.type_name != after.type_name {
                    changes.push(format!(
                        "member `{member}` changed type from `{}` to `{}`",
                        before.type_name, after.type_name
                    ));
                }
                if before.bit_size != after.bit_size {
                    changes.push(format!("member `{member}` changed bit-field width"));
                }
            }
        }
    }
    for member in &post.order {
        if !pre.members.contains_key(member) {
            changes.push(format!(
                "member `{member}` added at {}",
                offset(&post.members[member])
            ));
        }
    }
    if changes.is_empty() {
        return None;
    }
    Some(format!("{name} changed layout: {}", changes.join("; ")))
}

/// How a layout change can still go in live: keep the old layout and move what the fix adds
/// into shadow data (`hotsplice.h`).
fn way_out(name: &str, pre: &Layout, post: &Layout) -> String {
    let added: Vec<String> = post
        .order
        .iter()
        .filter(|m| !pre.members.contains_key(*m))
        .map(|m| format!("`{m}`"))
        .collect();
    let what = if added.is_empty() {
        "the new data".to_string()
    } else {
        added.join(", ")
    };
    format!(
        "A shadow-data rewrite can apply it: keep {name} as it was and attach {what} to live \
         objects with hotsplice_shadow_get_or_alloc() from <hotsplice.h> \
         (see docs/semantic-patches.md)"
    )
}

/// The outcome of the layout check.
pub enum Checked {
    /// The check ran; these are its refusals (possibly none).
    Done(Vec<Refusal>),
    /// Nothing changed, so there was nothing to check.
    NotNeeded,
    /// An object has no DWARF: layouts could not be checked.
    NoDebugInfo,
}

/// Layout refusals for the aggregates reachable from the changed and new functions
/// (`changed_post`, post symbol indices) and from the pre versions of the changed ones
/// (`changed_pre`, pre symbol indices).
pub fn check(
    pre: &Resolved<'_>,
    post: &Resolved<'_>,
    changed_post: &[PostSym],
    changed_pre: &[PreSym],
) -> Checked {
    if changed_post.is_empty() && changed_pre.is_empty() {
        return Checked::NotNeeded;
    }
    let (Some(pre_tree), Some(post_tree)) = (read(&pre.elf), read(&post.elf)) else {
        return Checked::NoDebugInfo;
    };
    let pre_types = Types::new(&pre_tree);
    let post_types = Types::new(&post_tree);

    // Which functions reach which aggregate, on either side.
    let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (function, roots) in roots_for(
        post,
        &post_tree,
        &post_types,
        &indices(changed_post, |s| s.0),
    ) {
        for aggregate in post_types.reachable_aggregates(&roots) {
            users.entry(aggregate).or_default().insert(function.clone());
        }
    }
    for (function, roots) in roots_for(pre, &pre_tree, &pre_types, &indices(changed_pre, |s| s.0)) {
        for aggregate in pre_types.reachable_aggregates(&roots) {
            users.entry(aggregate).or_default().insert(function.clone());
        }
    }

    let mut refusals = Vec::new();
    for (aggregate, functions) in users {
        let (Some(&a), Some(&b)) = (
            pre_types.by_name.get(&aggregate),
            post_types.by_name.get(&aggregate),
        ) else {
            continue; // A type of one build only: nothing in memory has its layout.
        };
        let before = pre_types.layout(a, 0);
        let after = post_types.layout(b, 0);
        if let Some(change) = describe_change(&aggregate, &before, &after) {
            let functions: Vec<String> = functions.into_iter().collect();
            refusals.push(Refusal {
                kind: RefusalKind::LayoutChanged,
                detail: format!(
                    "{change}; data laid out by the running program would be misread (used by {}). {}",
                    functions.join(", "),
                    way_out(&aggregate, &before, &after)
                ),
                symbol: aggregate,
                functions,
            });
        }
    }
    Checked::Done(refusals)
}
