//! GCC's symbol naming: numeric suffixes, IPA clones and compiler-private statics.
//!
//! GCC renames things between two builds of the same source: static locals get a
//! per-translation-unit counter (`count.3`), clones carry both a kind and a counter
//! (`foo.constprop.0.isra.0`), anonymous constants are `.LC7`. Correlation must look
//! through the counters but keep the clone kind.

/// The kind of a GCC-generated variant of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloneKind {
    /// `.isra`: interprocedural scalar replacement of aggregates.
    Isra,
    /// `.constprop`: a constant argument propagated into a copy.
    Constprop,
    /// `.part`: a split-off part of a function (partial inlining).
    Part,
    /// `.cold`: the unlikely-executed blocks of a function, entered by jumps from the parent.
    Cold,
    /// `.localalias`: a local alias of a global function at the same address.
    LocalAlias,
    /// `.lto_priv`, `.specialized` and other suffixes GCC adds.
    Other,
}

impl CloneKind {
    /// The name GCC uses in the suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            CloneKind::Isra => "isra",
            CloneKind::Constprop => "constprop",
            CloneKind::Part => "part",
            CloneKind::Cold => "cold",
            CloneKind::LocalAlias => "localalias",
            CloneKind::Other => "clone",
        }
    }

    fn from_component(component: &str) -> Option<Self> {
        Some(match component {
            "isra" => CloneKind::Isra,
            "constprop" => CloneKind::Constprop,
            "part" => CloneKind::Part,
            "cold" => CloneKind::Cold,
            "localalias" => CloneKind::LocalAlias,
            "lto_priv" | "specialized" | "clone" => CloneKind::Other,
            _ => return None,
        })
    }
}

fn is_counter(component: &str) -> bool {
    !component.is_empty() && component.bytes().all(|b| b.is_ascii_digit())
}

/// The name with GCC's numeric counters removed: `count.3` → `count`,
/// `foo.constprop.0.isra.1` → `foo.constprop.isra`, `.LC7` → `.LC`, and the kernel's
/// `__COUNTER__` in `__UNIQUE_ID_<prefix><n>` names (`__UNIQUE_ID_ddebug485.47` →
/// `__UNIQUE_ID_ddebug`): a header that uses `__COUNTER__` shifts every later one.
pub fn canonical(name: &str) -> String {
    if let Some(rest) = name.strip_prefix(".L") {
        let trimmed = rest.trim_end_matches(|c: char| c.is_ascii_digit());
        return format!(".L{trimmed}");
    }
    let mut out = String::with_capacity(name.len());
    for (i, component) in name.split('.').enumerate() {
        if i > 0 && is_counter(component) {
            continue;
        }
        if i > 0 {
            out.push('.');
        }
        if i == 0 && component.starts_with(UNIQUE_ID) {
            out.push_str(component.trim_end_matches(|c: char| c.is_ascii_digit()));
        } else {
            out.push_str(component);
        }
    }
    out
}

/// The prefix of the kernel's `__UNIQUE_ID(prefix)` names (`prefix` + `__COUNTER__`).
const UNIQUE_ID: &str = "__UNIQUE_ID_";

/// The function a clone was made from, and the outermost clone kind:
/// `foo.constprop.0.isra.0` → (`foo`, Some(Constprop)), `foo.cold` → (`foo`, Some(Cold)),
/// `foo` → (`foo`, None).
pub fn clone_parent(name: &str) -> (&str, Option<CloneKind>) {
    let mut offset = 0;
    for (i, component) in name.split('.').enumerate() {
        if i > 0
            && let Some(kind) = CloneKind::from_component(component)
        {
            return (&name[..offset - 1], Some(kind));
        }
        offset += component.len() + 1;
    }
    (name, None)
}

/// Whether the name carries a GCC counter component (`count.3`, `x.constprop.0`).
pub fn has_counter(name: &str) -> bool {
    name.split('.').skip(1).any(is_counter)
}

/// Whether a local data symbol is private to the compiler: it holds no program state that
/// must survive a patch, so a patched function may use a fresh copy of it.
///
/// These are `__func__` and friends, `switch` conversion tables (`CSWTCH`), compound
/// literals, and the once-flags of warn-once style macros.
pub fn is_compiler_private(name: &str) -> bool {
    let canonical = canonical(name);
    matches!(
        canonical.as_str(),
        "__func__"
            | "__FUNCTION__"
            | "__PRETTY_FUNCTION__"
            | "CSWTCH"
            | "__compound_literal"
            | "__warned"
            | "__already_done"
            | "__print_once"
            | "__once"
            | "_rs"
            | "__key"
            | "descriptor"
    ) || canonical.starts_with("__UNIQUE_ID_")
        || canonical.starts_with(".L")
}

/// The owning function of a `.cold` part: `foo.cold` → `foo`, `foo.isra.0.cold.1` →
/// `foo.isra.0`.
pub fn cold_owner(name: &str) -> Option<&str> {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if trimmed.len() < name.len() && !name[trimmed.len()..].starts_with('.') {
        return None;
    }
    trimmed.strip_suffix(".cold")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_strips_counters_only() {
        assert_eq!(canonical("count.3"), "count");
        assert_eq!(canonical("foo.constprop.0.isra.1"), "foo.constprop.isra");
        assert_eq!(canonical("foo.cold"), "foo.cold");
        assert_eq!(canonical(".LC17"), ".LC");
        assert_eq!(canonical("main"), "main");
        assert_eq!(canonical("v2"), "v2");
        assert_eq!(canonical("CSWTCH.12"), "CSWTCH");
        assert_eq!(canonical("__UNIQUE_ID_ddebug485.47"), "__UNIQUE_ID_ddebug");
        assert_eq!(
            canonical("__UNIQUE_ID___addressable_f12"),
            "__UNIQUE_ID___addressable_f"
        );
    }

    #[test]
    fn clone_parents() {
        assert_eq!(
            clone_parent("foo.constprop.0.isra.0"),
            ("foo", Some(CloneKind::Constprop))
        );
        assert_eq!(clone_parent("foo.cold"), ("foo", Some(CloneKind::Cold)));
        assert_eq!(clone_parent("foo.part.0"), ("foo", Some(CloneKind::Part)));
        assert_eq!(clone_parent("foo"), ("foo", None));
        assert_eq!(clone_parent("count.2"), ("count.2", None));
    }

    #[test]
    fn private_statics() {
        assert!(is_compiler_private("__func__.0"));
        assert!(is_compiler_private("CSWTCH.44"));
        assert!(!is_compiler_private("count.1"));
        assert!(!is_compiler_private("table"));
    }

    #[test]
    fn cold_owners() {
        assert_eq!(cold_owner("foo.cold"), Some("foo"));
        assert_eq!(cold_owner("foo.isra.0.cold"), Some("foo.isra.0"));
        assert_eq!(cold_owner("foo.cold.1"), Some("foo"));
        assert_eq!(cold_owner("foo"), None);
        assert_eq!(cold_owner("coldfoo"), None);
    }
}
