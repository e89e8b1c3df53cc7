//! The bundle's content: what a live patch is, as stored on disk.
//!
//! These types are the on-disk format (see `docs/bundle-format.md`). They are deliberately
//! separate from the object diff's in-memory types so that the format changes only on purpose,
//! with [`FORMAT_VERSION`](crate::FORMAT_VERSION).

use hotsplice_objdiff::RefusalKind;
use serde::{Deserialize, Serialize};

use crate::hex;

/// A [`RefusalKind`] on disk: its kebab-case name (`data-changed`); a name this version does
/// not know is an error.
mod refusal_kind {
    use hotsplice_objdiff::RefusalKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(kind: &RefusalKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RefusalKind, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A live patch: what it applies to, what it loads and redirects, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The patch identifier used by `undo` and `list` (`hs-` + 12 hex digits).
    pub id: String,
    /// The program (or library) the patch applies to.
    pub target: TargetIdentity,
    /// One entry per object (translation unit) the patch changes.
    pub objects: Vec<ObjectPatch>,
    /// Why the change cannot be applied live (empty when it can).
    pub refusals: Vec<Refusal>,
    /// Notes that are not refusals.
    pub warnings: Vec<String>,
    /// How the bundle was made.
    pub provenance: Provenance,
}

/// What kind of program a patch targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// An executable (PIE or not).
    Executable,
    /// A shared library.
    SharedLibrary,
}

/// The identity of the target binary, as built by the pre build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetIdentity {
    /// Path of the binary relative to the build tree (`objs/nginx`).
    pub path: String,
    /// Executable or shared library.
    pub kind: TargetKind,
    /// GNU build-id of the pre build's binary, hex, when it has one.
    pub build_id: Option<String>,
    /// SHA-256 of the pre build's binary, hex.
    pub sha256: Option<String>,
    /// Size in bytes of the pre build's binary.
    pub size: Option<u64>,
}

/// The change to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectPatch {
    /// The object's path relative to the build tree.
    pub object: String,
    /// The source file name recorded in the object (`STT_FILE`).
    pub source_file: Option<String>,
    /// Code and data to load.
    pub pieces: Vec<Piece>,
    /// Functions to redirect.
    pub replacements: Vec<Replacement>,
    /// Functions of this object the new code calls or takes the address of without replacing
    /// them, with their pre-build code (format version 2).
    #[serde(default)]
    pub referenced: Vec<Referenced>,
    /// Hooks the patch declares (`hotsplice.h`), run in the target at apply and undo
    /// (format version 3).
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// Which existing function-local static each patched function uses.
    pub bindings: Vec<Binding>,
    /// Per function of the object that is not unchanged: name and status.
    pub functions: Vec<FunctionStatus>,
}

/// A function's status in the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionStatus {
    /// Name (post build; pre build when removed).
    pub name: String,
    /// `changed`, `new` or `removed`.
    pub status: String,
    /// Why it changed.
    pub reasons: Vec<String>,
}

/// Memory kind of a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PieceKind {
    /// Executable code.
    Code,
    /// Read-only data.
    ReadOnly,
    /// Writable initialised data.
    Data,
    /// Writable zero-initialised data.
    Bss,
}

/// A piece of code or data to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// What it is, for people.
    pub name: String,
    /// The function or variable it holds (post-build name).
    pub symbol: Option<String>,
    /// Memory kind.
    pub kind: PieceKind,
    /// Alignment (a power of two).
    pub align: u64,
    /// Size in memory.
    pub size: u64,
    /// Contents, hex in the file (empty for `bss`).
    #[serde(with = "hex")]
    pub bytes: Vec<u8>,
    /// Relocations.
    pub relocs: Vec<Reloc>,
    /// For code: how to find the caller's frame at each of its instructions (its `.eh_frame`
    /// rows), so that threads can be unwound through it. Empty: unknown (format 3 and older,
    /// or no CFI), and stacks through it are scanned word by word.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<FrameRow>,
}

/// How to find the caller's frame from one instruction of a piece on, until the next row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameRow {
    /// Offset in the piece.
    pub offset: u64,
    /// The rule; absent where it is one hotsplice does not evaluate (a DWARF expression...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<FrameRule>,
}

/// The canonical frame address (CFA) as a register plus an offset, and where the return
/// address and the caller's `rbp` are saved relative to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameRule {
    /// The register: `rsp` or `rbp`.
    pub cfa: CfaRegister,
    /// Added to it.
    pub cfa_offset: i64,
    /// The return address is saved at CFA plus this.
    pub ra: i64,
    /// The caller's `rbp` is saved at CFA plus this (absent: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbp: Option<i64>,
}

/// The register the CFA is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CfaRegister {
    /// The stack pointer.
    Rsp,
    /// The frame pointer.
    Rbp,
}

/// A symbol of the running program or its libraries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolRef {
    /// Name in the pre build.
    pub name: String,
    /// `function`, `data`, `tls` or `unknown`.
    pub class: SymbolClass,
    /// Local to its object.
    pub local: bool,
}

/// The class of a referenced symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SymbolClass {
    /// A function.
    Function,
    /// A variable.
    Data,
    /// A thread-local variable.
    Tls,
    /// Unknown.
    Unknown,
}

/// Where a piece's relocation points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Link {
    /// Another piece of the same object patch, by index.
    Piece {
        /// Index into the object's pieces.
        index: usize,
    },
    /// A symbol of the running program.
    Symbol {
        /// The symbol.
        #[serde(flatten)]
        symbol: SymbolRef,
    },
    /// No symbol.
    Nothing,
}

/// A relocation of a piece.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reloc {
    /// Offset in the piece.
    pub offset: u64,
    /// `R_X86_64_*` type number.
    pub r_type: u32,
    /// Target.
    pub target: Link,
    /// Addend relative to the target's start.
    pub addend: i64,
}

/// Where a relocation of pre-build code points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PreTarget {
    /// A named symbol (its address is learnt by run-pre matching).
    Symbol {
        /// The symbol.
        #[serde(flatten)]
        symbol: SymbolRef,
    },
    /// An anonymous target (string, constant, jump table): a wildcard.
    Anonymous {
        /// Description.
        what: String,
    },
}

/// A relocation of pre-build code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreReloc {
    /// Offset in the function.
    pub offset: u64,
    /// `R_X86_64_*` type number.
    pub r_type: u32,
    /// Target.
    pub target: PreTarget,
    /// Addend relative to the target symbol's start.
    pub addend: i64,
}

/// A function to redirect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    /// Name in the pre build.
    pub name: String,
    /// Name in the post build.
    pub post_name: String,
    /// Local (`static`).
    pub local: bool,
    /// Index of the piece holding the new version.
    pub piece: usize,
    /// Pre-build code, hex in the file.
    #[serde(with = "hex")]
    pub pre_code: Vec<u8>,
    /// Pre-build relocations.
    pub pre_relocs: Vec<PreReloc>,
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// Before the jumps are written, every other thread stopped; may refuse.
    PreApply,
    /// After the jumps are written, still stopped.
    PostApply,
    /// Before the original code is restored; may refuse.
    PreUndo,
    /// After the original code is restored.
    PostUndo,
}

impl HookKind {
    /// The name people see: `pre-apply`, `post-apply`, `pre-undo`, `post-undo`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::PreApply => "pre-apply",
            HookKind::PostApply => "post-apply",
            HookKind::PreUndo => "pre-undo",
            HookKind::PostUndo => "post-undo",
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hook of the patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// When it runs.
    pub kind: HookKind,
    /// The piece holding the function (`int fn(void)`).
    pub piece: usize,
}

/// A function the new code uses, proven by run-pre matching when the running program is not
/// the bundle's own build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Referenced {
    /// Name in the pre build.
    pub name: String,
    /// Local (`static`).
    pub local: bool,
    /// Pre-build code, hex in the file.
    #[serde(with = "hex")]
    pub pre_code: Vec<u8>,
    /// Pre-build relocations.
    pub pre_relocs: Vec<PreReloc>,
}

/// Which static a patched function uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The patched function.
    pub function: String,
    /// The static's post-build name.
    pub symbol: String,
    /// The existing instance (pre-build name), or none when the patch brings its own.
    pub binds_to: Option<String>,
    /// Compiler-private (a fresh copy is correct).
    pub compiler_private: bool,
}

/// A reason the change cannot be applied live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// `data-changed`, `layout-changed`, `build-changed`, ...: stored as its kebab-case name.
    #[serde(with = "refusal_kind")]
    pub kind: RefusalKind,
    /// The symbol, type or section at fault.
    pub symbol: String,
    /// The object.
    pub object: String,
    /// For humans.
    pub detail: String,
    /// The changed functions involved.
    pub functions: Vec<String>,
}

/// How the bundle was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// File name of the diff.
    pub diff_name: String,
    /// SHA-256 of the diff, hex.
    pub diff_sha256: String,
    /// Identifier of the pre-build source (SHA-256 over its files), hex.
    pub source_id: String,
    /// The compiler (`gcc --version` first line, and the objects' `.comment`).
    pub compiler: String,
    /// The build command.
    pub build_command: String,
    /// Per object: the compiler arguments it was built with.
    pub objects: Vec<ObjectProvenance>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The hotsplice version that made it.
    pub hotsplice_version: String,
}

/// How one object was compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectProvenance {
    /// The object's path relative to the build tree.
    pub object: String,
    /// The source file, relative to the build tree.
    pub source: String,
    /// The compiler arguments (after hotsplice's additions).
    pub arguments: Vec<String>,
    /// The directory the compiler ran in, relative to the build tree.
    pub directory: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal's kind is its kebab-case name on disk, byte for byte as before the enum; a
    /// name this version does not know is refused.
    #[test]
    fn refusal_kinds_are_their_names_on_disk() {
        let refusal = Refusal {
            kind: RefusalKind::DataChanged,
            symbol: "max_length".into(),
            object: "a.o".into(),
            detail: "changed".into(),
            functions: vec!["f".into()],
        };
        let json = serde_json::to_string(&refusal).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"data-changed","symbol":"max_length","object":"a.o","detail":"changed","functions":["f"]}"#
        );
        assert_eq!(serde_json::from_str::<Refusal>(&json).unwrap(), refusal);
        let unknown = json.replace("data-changed", "no-such-kind");
        let error = serde_json::from_str::<Refusal>(&unknown).unwrap_err();
        assert!(error.to_string().contains("no-such-kind"), "{error}");
    }
}
