//! The result of a diff: per function and per variable a status, plus refusals.

use std::fmt;

use crate::name::CloneKind;

/// The index of a symbol in the pre build's object (its symbol table), as object's
/// `SymbolIndex`: a pre index cannot be used where a post one is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PreSym(pub usize);

/// The index of a symbol in the post build's object (its symbol table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PostSym(pub usize);

/// How an element of the post build relates to the pre build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Same code or contents (relocations compared symbolically).
    Unchanged,
    /// Exists in both builds and differs.
    Changed,
    /// Only in the post build.
    New,
    /// Only in the pre build.
    Removed,
}

impl Status {
    /// Lower-case name, as used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unchanged => "unchanged",
            Status::Changed => "changed",
            Status::New => "new",
            Status::Removed => "removed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One function of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionDiff {
    /// Name in the post build (in the pre build when removed).
    pub name: String,
    /// Name in the pre build, when it differs (GCC renumbered a clone).
    pub pre_name: Option<String>,
    /// Status.
    pub status: Status,
    /// For clones and cold parts: the function they belong to.
    pub parent: Option<String>,
    /// For clones: the kind of clone.
    pub clone: Option<CloneKind>,
    /// Whether the symbol is global (exported from its object).
    pub global: bool,
    /// Why it is changed.
    pub reasons: Vec<String>,
    /// Symbol index in the pre object.
    pub pre_symbol: Option<PreSym>,
    /// Symbol index in the post object.
    pub post_symbol: Option<PostSym>,
}

/// The storage class of a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// Writable, initialised (`.data`, `.data.rel.*`).
    Data,
    /// Read-only (`.rodata`, `.data.rel.ro`).
    ReadOnly,
    /// Zero-initialised (`.bss`).
    Bss,
    /// Thread-local (`.tdata`, `.tbss`).
    Tls,
}

impl DataKind {
    /// Lower-case name, as used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Data => "data",
            DataKind::ReadOnly => "rodata",
            DataKind::Bss => "bss",
            DataKind::Tls => "tls",
        }
    }
}

/// One variable of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDiff {
    /// Name in the post build (in the pre build when removed).
    pub name: String,
    /// Name in the pre build, when it differs.
    pub pre_name: Option<String>,
    /// Status.
    pub status: Status,
    /// Storage class (in the post build when present).
    pub kind: DataKind,
    /// Compiler-private (`__func__`, `CSWTCH`): patched code may take a fresh copy.
    pub compiler_private: bool,
    /// Why it is changed, or how it is treated.
    pub reasons: Vec<String>,
    /// Symbol index in the pre object.
    pub pre_symbol: Option<PreSym>,
    /// Symbol index in the post object.
    pub post_symbol: Option<PostSym>,
}

/// Which instance of a function-local static a patched function uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticBinding {
    /// The changed or new function whose code references the static.
    pub function: String,
    /// The static's name in the post build.
    pub symbol: String,
    /// The existing instance (pre-build name) it binds to, so its state survives; `None` when
    /// the patch brings a new instance.
    pub existing: Option<String>,
    /// The static is compiler-private, so a fresh copy is correct.
    pub compiler_private: bool,
}

/// Why a change cannot be applied live: the one list of refusal kinds of the object diff, the
/// user-space builder and the kernel builder. Its kebab-case name ([`RefusalKind::as_str`],
/// parsed back by [`str::parse`]) is what reports, JSON output and bundles carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RefusalKind {
    // The object diff.
    /// The size or initialiser of an existing variable changed.
    DataChanged,
    /// The layout of a struct or union used by changed code changed.
    LayoutChanged,
    /// A constructor (or `.init_array` and friends) changed: it already ran.
    InitChanged,
    /// A new thread-local variable: existing threads have no storage for it.
    TlsNew,
    /// An existing thread-local variable changed size or initialiser.
    TlsChanged,
    /// A section hotsplice cannot attribute to a function or variable changed.
    UnsupportedSection,
    /// Patched code uses a relocation type hotsplice cannot link.
    UnsupportedRelocation,

    // The builders.
    /// The diff changes the build itself (a Makefile, a deleted source), not code.
    BuildChanged,
    /// An object the diff affects could not be (re)compiled, or is missing after the build.
    IncompleteBuild,
    /// The diff changes a generator's input, and the build did not regenerate its output.
    GeneratorNotRun,
    /// A name new in an earlier patch of the series is changed again.
    SeriesNewSymbol,
    /// The target is linked with link-time optimisation and its link-time code is unknown.
    Lto,
    /// C++ exceptions may unwind through patched code (no unwind tables are registered).
    CxxUnwind,
    /// A patch of a series that stacks on a refused one.
    DependsOnRefused,

    // The kernel builder.
    /// A header kbuild includes in every translation unit changed.
    Header,
    /// A changed header reaches too many translation units.
    HeaderScope,
    /// An assembly file changed.
    Assembly,
    /// `__init`/`__exit` (or discarded) code changed.
    Init,
    /// A changed function cannot be traced (`notrace`), so livepatch cannot redirect it.
    Notrace,
    /// The patch uses a kpatch marker hotsplice does not honour.
    UnsupportedMarker,
    /// kbuild does not build the changed file on its own.
    NotBuilt,
    /// The changed code is in a module whose `.ko` is not there to prove it against.
    Module,
    /// Run-pre matching could not prove a replaced function against the running kernel.
    RunPre,
    /// The patch references a symbol the kernel does not have.
    MissingSymbol,
    /// The patch references a name several kernel symbols share, and none could be chosen.
    AmbiguousSymbol,
    /// A construct the livepatch module cannot carry.
    Unsupported,
}

impl RefusalKind {
    /// Every kind, in declaration order.
    pub const ALL: [RefusalKind; 26] = [
        RefusalKind::DataChanged,
        RefusalKind::LayoutChanged,
        RefusalKind::InitChanged,
        RefusalKind::TlsNew,
        RefusalKind::TlsChanged,
        RefusalKind::UnsupportedSection,
        RefusalKind::UnsupportedRelocation,
        RefusalKind::BuildChanged,
        RefusalKind::IncompleteBuild,
        RefusalKind::GeneratorNotRun,
        RefusalKind::SeriesNewSymbol,
        RefusalKind::Lto,
        RefusalKind::CxxUnwind,
        RefusalKind::DependsOnRefused,
        RefusalKind::Header,
        RefusalKind::HeaderScope,
        RefusalKind::Assembly,
        RefusalKind::Init,
        RefusalKind::Notrace,
        RefusalKind::UnsupportedMarker,
        RefusalKind::NotBuilt,
        RefusalKind::Module,
        RefusalKind::RunPre,
        RefusalKind::MissingSymbol,
        RefusalKind::AmbiguousSymbol,
        RefusalKind::Unsupported,
    ];

    /// The kebab-case name, as used in reports, JSON and bundles.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::DataChanged => "data-changed",
            RefusalKind::LayoutChanged => "layout-changed",
            RefusalKind::InitChanged => "init-changed",
            RefusalKind::TlsNew => "tls-new",
            RefusalKind::TlsChanged => "tls-changed",
            RefusalKind::UnsupportedSection => "unsupported-section",
            RefusalKind::UnsupportedRelocation => "unsupported-relocation",
            RefusalKind::BuildChanged => "build-changed",
            RefusalKind::IncompleteBuild => "incomplete-build",
            RefusalKind::GeneratorNotRun => "generator-not-run",
            RefusalKind::SeriesNewSymbol => "series-new-symbol",
            RefusalKind::Lto => "lto",
            RefusalKind::CxxUnwind => "cxx-unwind",
            RefusalKind::DependsOnRefused => "depends-on-refused",
            RefusalKind::Header => "header",
            RefusalKind::HeaderScope => "header-scope",
            RefusalKind::Assembly => "assembly",
            RefusalKind::Init => "init",
            RefusalKind::Notrace => "notrace",
            RefusalKind::UnsupportedMarker => "unsupported-marker",
            RefusalKind::NotBuilt => "not-built",
            RefusalKind::Module => "module",
            RefusalKind::RunPre => "run-pre",
            RefusalKind::MissingSymbol => "missing-symbol",
            RefusalKind::AmbiguousSymbol => "ambiguous-symbol",
            RefusalKind::Unsupported => "unsupported",
        }
    }

    /// Whether the user-space builder refuses this itself (the build, not the object diff).
    pub fn is_build(self) -> bool {
        matches!(
            self,
            RefusalKind::BuildChanged
                | RefusalKind::IncompleteBuild
                | RefusalKind::GeneratorNotRun
                | RefusalKind::SeriesNewSymbol
                | RefusalKind::Lto
                | RefusalKind::CxxUnwind
        )
    }
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal kind name that is not one of [`RefusalKind`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRefusalKind(pub String);

impl fmt::Display for UnknownRefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown refusal kind {:?}", self.0)
    }
}

impl std::error::Error for UnknownRefusalKind {}

impl std::str::FromStr for RefusalKind {
    type Err = UnknownRefusalKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RefusalKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownRefusalKind(s.to_string()))
    }
}

/// A reason the patch cannot be applied live, naming what is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of change it is.
    pub kind: RefusalKind,
    /// The symbol (variable, function, type or section) at fault.
    pub symbol: String,
    /// A sentence for humans.
    pub detail: String,
    /// The changed functions involved, if any.
    pub functions: Vec<String>,
}

/// The diff of one pre/post object pair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectDiff {
    /// The object's name (its path relative to the build tree, or its file name).
    pub object: String,
    /// Every function of either build.
    pub functions: Vec<FunctionDiff>,
    /// Every variable of either build.
    pub data: Vec<DataDiff>,
    /// Bindings of function-local statics referenced by changed or new functions.
    pub bindings: Vec<StaticBinding>,
    /// Reasons the change cannot be applied live.
    pub refusals: Vec<Refusal>,
    /// Things worth knowing that are not refusals (a different compiler, say).
    pub warnings: Vec<String>,
}

impl ObjectDiff {
    /// Whether any function or variable differs.
    pub fn has_changes(&self) -> bool {
        self.functions.iter().any(|f| f.status != Status::Unchanged)
            || self.data.iter().any(|d| d.status != Status::Unchanged)
    }
}

/// The diff of a set of object pairs (one pair, or two whole build trees).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One entry per object pair, in the order given.
    pub objects: Vec<ObjectDiff>,
}

impl Report {
    /// Whether the change can be applied live: no refusal anywhere.
    pub fn patchable(&self) -> bool {
        self.objects.iter().all(|o| o.refusals.is_empty())
    }

    /// Number of functions with the given status, over all objects.
    pub fn count_functions(&self, status: Status) -> usize {
        self.objects
            .iter()
            .flat_map(|o| &o.functions)
            .filter(|f| f.status == status)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::RefusalKind;

    /// Every kind's name parses back to it, and no two kinds share a name (the names are the
    /// bundle format's and the JSON's).
    #[test]
    fn refusal_kind_names_round_trip() {
        let mut names = std::collections::BTreeSet::new();
        for kind in RefusalKind::ALL {
            assert_eq!(kind.as_str().parse::<RefusalKind>(), Ok(kind));
            assert!(names.insert(kind.as_str()), "{kind} twice");
        }
        assert_eq!(RefusalKind::DataChanged.as_str(), "data-changed");
        assert_eq!(RefusalKind::Notrace.to_string(), "notrace");
        assert!("no-such-kind".parse::<RefusalKind>().is_err());
    }
}
