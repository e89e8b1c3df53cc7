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

/// Why a change cannot be applied live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalKind {
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
}

impl RefusalKind {
    /// The kebab-case name, as used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::DataChanged => "data-changed",
            RefusalKind::LayoutChanged => "layout-changed",
            RefusalKind::InitChanged => "init-changed",
            RefusalKind::TlsNew => "tls-new",
            RefusalKind::TlsChanged => "tls-changed",
            RefusalKind::UnsupportedSection => "unsupported-section",
            RefusalKind::UnsupportedRelocation => "unsupported-relocation",
        }
    }
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
