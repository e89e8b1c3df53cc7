//! Pairing the symbols of the pre build with those of the post build.
//!
//! Global symbols pair by exact name. Local symbols pair by their canonical name (GCC's
//! counters removed), in symbol-table order when a name repeats (two `.constprop` clones).
//! Static locals (`count.3`) also need their *owner*: the functions that reference them,
//! because two functions may each have a `static int count`.

use std::collections::{BTreeSet, HashMap};

use crate::elf::{Binding, SymbolKind};
use crate::name;
use crate::reference::{Resolved, Target};
use crate::report::{PostSym, PreSym};

/// The pairing of symbols between the two builds.
#[derive(Debug, Default)]
pub struct Correlation {
    /// Pre symbol → post symbol.
    pre_to_post: HashMap<PreSym, PostSym>,
    /// Post symbol → pre symbol.
    post_to_pre: HashMap<PostSym, PreSym>,
}

impl Correlation {
    fn pair(&mut self, pre: PreSym, post: PostSym) {
        self.pre_to_post.insert(pre, post);
        self.post_to_pre.insert(post, pre);
    }

    /// The post symbol paired with pre symbol `pre`.
    pub fn post_of(&self, pre: PreSym) -> Option<PostSym> {
        self.pre_to_post.get(&pre).copied()
    }

    /// The pre symbol paired with post symbol `post`.
    pub fn pre_of(&self, post: PostSym) -> Option<PreSym> {
        self.post_to_pre.get(&post).copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    Function,
    Data,
    Tls,
    Other,
}

fn class(kind: SymbolKind) -> Class {
    match kind {
        SymbolKind::Func => Class::Function,
        SymbolKind::Object => Class::Data,
        SymbolKind::Tls => Class::Tls,
        _ => Class::Other,
    }
}

/// For each symbol index: the parent names of the functions that reference it.
pub fn owners(side: &Resolved<'_>) -> HashMap<usize, BTreeSet<String>> {
    let mut owners: HashMap<usize, BTreeSet<String>> = HashMap::new();
    for sym in &side.elf.symbols {
        if sym.kind != SymbolKind::Func {
            continue;
        }
        let Some(section) = sym.section() else {
            continue;
        };
        let parent = name::clone_parent(&sym.name).0.to_string();
        for reference in side.references_in(
            section,
            sym.value,
            sym.value.saturating_add(sym.size.max(1)),
        ) {
            if let Target::Symbol(target) = reference.target {
                owners.entry(target).or_default().insert(parent.clone());
            }
        }
    }
    owners
}

fn is_candidate(side: &Resolved<'_>, index: usize) -> bool {
    let sym = &side.elf.symbols[index];
    index != 0
        && !sym.name.is_empty()
        && !matches!(sym.kind, SymbolKind::Section | SymbolKind::File)
        && !sym.name.starts_with(".L")
}

/// Whether a symbol is a function-local static (or other counter-suffixed local data).
pub fn is_static_local(side: &Resolved<'_>, index: usize) -> bool {
    let sym = &side.elf.symbols[index];
    sym.binding == Binding::Local
        && matches!(sym.kind, SymbolKind::Object | SymbolKind::Tls)
        && name::has_counter(&sym.name)
}

/// Pairs the symbols of `pre` and `post`.
pub fn correlate(pre: &Resolved<'_>, post: &Resolved<'_>) -> Correlation {
    let pre_owners = owners(pre);
    let post_owners = owners(post);
    let mut correlation = Correlation::default();

    // Pass 1: exact keys. Globals by name; locals by class, canonical name and, for
    // static locals, their owners.
    type Key = (bool, Class, String, BTreeSet<String>);
    let key = |side: &Resolved<'_>, owners: &HashMap<usize, BTreeSet<String>>, i: usize| -> Key {
        let sym = &side.elf.symbols[i];
        if sym.is_global() || sym.section().is_none() {
            return (true, Class::Other, sym.name.clone(), BTreeSet::new());
        }
        let owner = if is_static_local(side, i) {
            owners.get(&i).cloned().unwrap_or_default()
        } else {
            BTreeSet::new()
        };
        (false, class(sym.kind), name::canonical(&sym.name), owner)
    };
    let mut groups: HashMap<Key, (Vec<usize>, Vec<usize>)> = HashMap::new();
    for i in (0..pre.elf.symbols.len()).filter(|&i| is_candidate(pre, i)) {
        groups
            .entry(key(pre, &pre_owners, i))
            .or_default()
            .0
            .push(i);
    }
    for i in (0..post.elf.symbols.len()).filter(|&i| is_candidate(post, i)) {
        groups
            .entry(key(post, &post_owners, i))
            .or_default()
            .1
            .push(i);
    }
    let mut keys: Vec<&Key> = groups.keys().collect();
    keys.sort();
    for k in keys {
        let (pres, posts) = &groups[k];
        for (&a, &b) in pres.iter().zip(posts) {
            correlation.pair(PreSym(a), PostSym(b));
        }
    }

    // Pass 2: static locals whose owner set changed (a caller gained or lost an inlined
    // copy) still pair when the owner sets overlap and the name agrees.
    let unpaired_pre: Vec<usize> = (0..pre.elf.symbols.len())
        .filter(|&i| is_static_local(pre, i) && correlation.post_of(PreSym(i)).is_none())
        .collect();
    let unpaired_post: Vec<usize> = (0..post.elf.symbols.len())
        .filter(|&j| is_static_local(post, j) && correlation.pre_of(PostSym(j)).is_none())
        .collect();
    for j in unpaired_post {
        let post_sym = &post.elf.symbols[j];
        let post_set = post_owners.get(&j);
        let found = unpaired_pre.iter().copied().find(|&i| {
            let pre_sym = &pre.elf.symbols[i];
            correlation.post_of(PreSym(i)).is_none()
                && class(pre_sym.kind) == class(post_sym.kind)
                && name::canonical(&pre_sym.name) == name::canonical(&post_sym.name)
                && match (pre_owners.get(&i), post_set) {
                    (Some(a), Some(b)) => !a.is_disjoint(b),
                    _ => false,
                }
        });
        if let Some(i) = found {
            correlation.pair(PreSym(i), PostSym(j));
        }
    }
    correlation
}
