//! What the commands print with `--json`: one `Serialize` report type per command, and
//! [`emit`], the one function that writes them.
//!
//! These types *are* the JSON interface (docs/json.md, generated from them with the schemas
//! in `docs/json/`): a field is renamed or removed here only on purpose. They are built from
//! the libraries' results and never are the libraries' own types (the state record, the
//! object diff), so an internal change does not change the output. The audit log's
//! [`AuditRecord`] lives here too.
//!
//! Addresses are strings (`"0x401136"`); durations are numbers of micro- (`_us`) or seconds
//! (`seconds`, `_seconds`); a field that may be unknown is `null`, never absent, unless its
//! doc says "absent when".

use std::io::{self, Write};

use serde::Serialize;

use crate::exit::ErrorClass;

/// Writes one report as pretty-printed JSON and a newline.
pub fn emit(out: &mut impl Write, report: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report).map_err(io::Error::from)?;
    writeln!(out)?;
    out.flush()
}

/// An address, as JSON shows it: `0x` and lowercase hex.
pub fn hex(address: u64) -> String {
    format!("{address:#x}")
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A failed command (every command with `--json` but `build`): printed instead of its report.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct ErrorReport {
    /// Always `false`.
    pub ok: bool,
    /// The class of failure; it gives the exit status (refused 1, bad-input 2, environment
    /// and interrupted 3).
    pub class: ErrorClass,
    /// The error and its causes, `: `-separated.
    pub error: String,
    /// `check`, `apply`, `undo`, `list`, `recover`: how long the target was stopped before
    /// the failure (zeros when it never was). Absent for the other commands, and for failures
    /// found before the operation started (bad arguments, an unreadable or untrusted bundle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// A failed command's JSON object.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Failure {
    /// Every command but `build`.
    Command(ErrorReport),
    /// `build`.
    Build(BuildError),
}

/// The stops of a live operation, over every process and attempt.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct Pause {
    /// The longest time one thread was kept stopped (its stops summed), in µs.
    pub longest_us: u64,
    /// How many times the target was stopped.
    pub stops: u32,
    /// How many threads were stopped. Absent in the audit records of `install`/`watch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

impl Pause {
    /// The stops of a pause log.
    pub fn of(pauses: &hotsplice_apply::PauseLog) -> Self {
        Pause {
            longest_us: pauses.longest().as_micros() as u64,
            stops: pauses.stops,
            threads: Some(pauses.threads()),
        }
    }
}

/// One process where an operation failed (`--each`, `list`, `recover`, `install`).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct ProcessError {
    /// The process.
    pub pid: i32,
    /// The class of failure.
    pub class: ErrorClass,
    /// What went wrong.
    pub error: String,
}

// ---------------------------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------------------------

/// `hotsplice diff --json`: which functions and variables changed, and whether the change
/// can be applied live.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct DiffReport {
    /// Every function of every object pair, with its status.
    pub functions: Vec<DiffFunction>,
    /// Every variable and constant, with its status.
    pub data: Vec<DiffData>,
    /// The function-local statics changed code uses, and what they bind to in the running
    /// program.
    pub bindings: Vec<DiffBinding>,
    /// Why the change cannot be applied live (empty when it can).
    pub refusals: Vec<Refusal>,
    /// Things worth knowing that do not refuse the change.
    pub warnings: Vec<DiffWarning>,
    /// Counts.
    pub summary: DiffSummary,
    /// Whether the change can be applied live (no refusal).
    pub patchable: bool,
}

/// A function of `diff`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct DiffFunction {
    /// Its symbol name (post build).
    pub name: String,
    /// The object (relative path of the pair).
    pub object: String,
    /// `changed`, `new`, `removed` or `unchanged`.
    pub status: String,
    /// Why it is changed (the first differing byte or relocation), for humans.
    pub reasons: Vec<String>,
    /// Whether the symbol is global.
    pub global: bool,
    /// For a compiler clone (`.isra`, `.cold`, ...): the function it was cloned from. Absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The clone kind (`isra`, `constprop`, `part`, `cold`, `localalias`). Absent for a
    /// function that is not a clone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clone: Option<String>,
    /// Its name in the pre build when it differs (a clone renumbered). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_name: Option<String>,
}

/// A variable or constant of `diff`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct DiffData {
    /// Its symbol name (post build).
    pub name: String,
    /// The object.
    pub object: String,
    /// `changed`, `new`, `removed` or `unchanged`.
    pub status: String,
    /// Its section kind: `data`, `rodata`, `bss` or `tls`.
    pub kind: String,
    /// Whether the compiler made it (`CSWTCH`, `__func__`, a string table).
    pub compiler_private: bool,
    /// Why it is changed, for humans.
    pub reasons: Vec<String>,
    /// Its name in the pre build when it differs. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_name: Option<String>,
}

/// A function-local static that changed code uses.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct DiffBinding {
    /// The function using it.
    pub function: String,
    /// The static's symbol in the post build.
    pub symbol: String,
    /// The object.
    pub object: String,
    /// The pre-build static whose state the patch keeps using; `null` for a new instance or a
    /// compiler-private copy.
    pub binds_to: Option<String>,
    /// Whether it is compiler-private (a fresh copy is used).
    pub compiler_private: bool,
}

/// Why a change cannot be applied live (`diff`, `build`).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct Refusal {
    /// The refusal kind (`data-changed`, `layout-changed`, `depends-on-refused`, ... — the
    /// table in the README).
    pub kind: String,
    /// The symbol, type or section at fault.
    pub symbol: String,
    /// The object (empty when the refusal is not about one object).
    pub object: String,
    /// For humans.
    pub detail: String,
    /// The changed functions involved.
    pub functions: Vec<String>,
}

impl From<&hotsplice_bundle::Refusal> for Refusal {
    fn from(r: &hotsplice_bundle::Refusal) -> Self {
        Refusal {
            kind: r.kind.as_str().to_string(),
            symbol: r.symbol.clone(),
            object: r.object.clone(),
            detail: r.detail.clone(),
            functions: r.functions.clone(),
        }
    }
}

/// A warning of `diff`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct DiffWarning {
    /// The object.
    pub object: String,
    /// The warning.
    pub warning: String,
}

/// The counts of `diff`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct DiffSummary {
    /// Object pairs compared.
    pub objects: usize,
    /// Changed functions.
    pub changed: usize,
    /// New functions.
    pub new: usize,
    /// Removed functions.
    pub removed: usize,
    /// Unchanged functions.
    pub unchanged: usize,
}

// ---------------------------------------------------------------------------------------------
// info
// ---------------------------------------------------------------------------------------------

/// `hotsplice info --json`: the bundle's envelope and content, as stored (docs/bundle-format.md
/// describes every field).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct InfoReport<'a> {
    /// The envelope: format version, content hash, signatures.
    #[cfg_attr(test, schemars(with = "BundleObject"))]
    pub envelope: &'a hotsplice_bundle::Envelope,
    /// The content: target, provenance, objects and their pieces, refusals, warnings.
    #[cfg_attr(test, schemars(with = "BundleObject"))]
    pub bundle: &'a hotsplice_bundle::Bundle,
}

/// An object of the bundle format (docs/bundle-format.md), not restated here.
#[cfg(test)]
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
pub struct BundleObject(serde_json::Map<String, serde_json::Value>);

// ---------------------------------------------------------------------------------------------
// build
// ---------------------------------------------------------------------------------------------

/// What a build concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// A bundle (or kernel module) was written.
    Written,
    /// The diff changes no function of the target: nothing written (exit 1).
    NothingToPatch,
    /// The change cannot be applied live: nothing written (exit 1).
    Refused,
}

impl From<hotsplice_build::Verdict> for Verdict {
    fn from(v: hotsplice_build::Verdict) -> Self {
        match v {
            hotsplice_build::Verdict::Written => Verdict::Written,
            hotsplice_build::Verdict::NothingToPatch => Verdict::NothingToPatch,
            hotsplice_build::Verdict::Refused => Verdict::Refused,
        }
    }
}

impl Verdict {
    /// Its word in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Written => "written",
            Verdict::NothingToPatch => "nothing-to-patch",
            Verdict::Refused => "refused",
        }
    }
}

/// The `outcome` of a failed build.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Failed {
    /// The build failed: `exit` and `error` say how.
    Error,
}

/// `hotsplice build --json` when the build failed (any `build`, `--kernel` too).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct BuildError {
    /// `error`.
    pub outcome: Failed,
    /// The exit status (2 bad input, 3 environment; 1 for `depends-on-refused`).
    pub exit: u8,
    /// The error and its causes.
    pub error: String,
}

/// `hotsplice build --json` for one diff (and each built patch of a series).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct PatchReport {
    /// What the build concluded.
    pub outcome: Verdict,
    /// The diff.
    pub diff: String,
    /// The bundle written; `null` unless `outcome` is `written`.
    pub bundle: Option<String>,
    /// The id of the key that signed the bundle; `null` when unsigned or not written.
    pub signed_by: Option<String>,
    /// The patch id (`hs-...`), also when no bundle was written.
    pub id: String,
    /// The target binary, relative to the build tree.
    pub target: String,
    /// The functions the bundle replaces.
    pub replaced: Vec<String>,
    /// The functions the fix adds.
    pub new: Vec<String>,
    /// Why the fix cannot be applied live (the object diff's and the build's own).
    pub refusals: Vec<Refusal>,
    /// Warnings of the diff and the build.
    pub warnings: Vec<String>,
    /// Every file of the diff and what became of it.
    pub files: Vec<FileReport>,
    /// The paths of `files` with status `ignored`.
    pub ignored: Vec<String>,
    /// Objects of the target the post build recompiled.
    pub rebuilt: Vec<String>,
    /// Objects hotsplice recompiled itself (the build did not).
    pub recompiled: Vec<String>,
    /// Objects the diff changes that are not linked into the target.
    pub not_in_target: Vec<String>,
    /// Other binaries of the build the fix changes.
    pub other_targets: Vec<String>,
    /// In a series: the earlier patches this bundle must be applied after.
    pub stacks_on: Vec<String>,
    /// Whether the pre build came from the cache.
    pub pre_cached: bool,
    /// Time per step.
    pub seconds: PatchSeconds,
}

/// A file of the diff, in a build report.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct FileReport {
    /// The path, relative to the tree.
    pub path: String,
    /// What it is to the build: `source`, `generator`, `test`, `documentation`, `unread` or
    /// `build` (build configuration).
    pub role: String,
    /// What became of it: `rebuilt` (objects of the target recompiled from it or including
    /// it), `not-in-target`, `not-used`, `ignored` or `refused`.
    pub status: String,
    /// Why, for humans (may be empty).
    pub detail: String,
}

/// The time of a build's steps, in seconds.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct PatchSeconds {
    /// The pre build (0 when cached, and for every patch of a series but the first).
    pub pre_build: f64,
    /// Restoring the tree and applying the diff.
    pub prepare: f64,
    /// The incremental post build, with hotsplice's own recompiles.
    pub post_build: f64,
    /// Diffing the objects.
    pub diff: f64,
    /// The whole command. Absent in the patches of a series (the series has its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
}

/// The `outcome` of a series.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum SeriesOutcome {
    /// A series was built: see `patches`.
    Series,
}

/// `hotsplice build --series ... --json` (and `--debian ... --update-to`).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct SeriesReport {
    /// `series`.
    pub outcome: SeriesOutcome,
    /// The target binary.
    pub target: String,
    /// The directory of the bundles.
    pub output: String,
    /// Whether the pre build came from the cache.
    pub pre_cached: bool,
    /// How many bundles were written.
    pub written: usize,
    /// Each patch, in order.
    pub patches: Vec<SeriesPatch>,
    /// Time, in seconds.
    pub seconds: SeriesSeconds,
}

/// A patch of a series.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum SeriesPatch {
    /// It was built (whatever the verdict).
    Built(Box<PatchReport>),
    /// It applies only on top of a refused patch: refused without a build.
    DependsOnRefused(DependsOnRefused),
    /// Its build failed.
    Failed(SeriesFailure),
}

/// A patch of a series refused because it needs a refused one.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct DependsOnRefused {
    /// `refused`.
    pub outcome: Verdict,
    /// The diff.
    pub diff: String,
    /// One refusal of kind `depends-on-refused`, naming the refused patches.
    pub refusals: Vec<Refusal>,
    /// Empty.
    pub replaced: Vec<String>,
    /// Empty.
    pub files: Vec<FileReport>,
}

/// A patch of a series whose build failed.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct SeriesFailure {
    /// `error`.
    pub outcome: Failed,
    /// The diff.
    pub diff: String,
    /// The exit status this failure gives (2 bad input, 3 environment).
    pub exit: u8,
    /// The error and its causes.
    pub error: String,
}

/// The time of a series, in seconds.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct SeriesSeconds {
    /// The one pre build (0 when cached).
    pub pre_build: f64,
    /// The whole command.
    pub total: f64,
}

/// `hotsplice build --json`, whichever way it ends.
#[cfg(test)]
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BuildJson {
    /// One diff built.
    Patch(PatchReport),
    /// A series built.
    Series(SeriesReport),
    /// `--kernel`: a module written.
    KernelModule(KernelModuleReport),
    /// `--kernel`: refused.
    KernelRefused(KernelRefusedReport),
    /// `--kernel`: nothing to patch.
    KernelNothing(KernelNothingReport),
    /// Any build that failed.
    Error(BuildError),
}

// ---------------------------------------------------------------------------------------------
// build --kernel
// ---------------------------------------------------------------------------------------------

/// `hotsplice build --kernel --json` when a module was written.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelModuleReport {
    /// `written`.
    pub outcome: Verdict,
    /// The module file written.
    pub module: String,
    /// The livepatch's name (the module name; `kernel list` shows it).
    pub name: String,
    /// The replaced functions.
    pub replaced: Vec<KernelFunction>,
    /// The objects the diff recompiled.
    pub objects: Vec<String>,
    /// The functions each object diff found changed or new, with why.
    pub changes: Vec<KernelChange>,
    /// The callbacks the module registers.
    pub callbacks: Vec<KernelCallback>,
    /// Relocations turned into livepatch relocations.
    pub klp_relocations: usize,
    /// Each replaced function, proven equal to the pre build in the target kernel.
    pub run_pre: Vec<RunPre>,
    /// modpost's warnings, besides the expected ones.
    pub warnings: Vec<String>,
    /// For a changed header: the units it reached; `null` when the diff changes no header.
    pub headers: Option<HeaderScope>,
    /// Whether this build prepared the kernel tree (else it came from the cache).
    pub fresh_tree: bool,
    /// Time per step.
    pub seconds: KernelSeconds,
}

/// A function a kernel module replaces.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelFunction {
    /// Its name in the running kernel.
    pub function: String,
    /// Its position among same-named symbols (kallsyms order; 0 when unique).
    pub sympos: u64,
    /// The object it was compiled into.
    pub object: String,
    /// The module it lives in; `null` for vmlinux.
    pub module: Option<String>,
}

/// A changed or new function of a kernel build.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelChange {
    /// The object.
    pub object: String,
    /// The function.
    pub function: String,
    /// `changed` or `new`.
    pub status: String,
    /// Why it changed, for humans.
    pub why: Vec<String>,
}

/// A callback of a kernel module.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelCallback {
    /// `pre-patch`, `post-patch`, `pre-unpatch` or `post-unpatch`.
    pub kind: String,
    /// The object it is registered for (`vmlinux` or a module).
    pub object: String,
}

/// A function proven by run-pre matching in the target kernel.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct RunPre {
    /// The function.
    pub function: String,
    /// Its address in the image (`0x...`, without the KASLR slide).
    pub address: String,
    /// Its position among same-named symbols.
    pub sympos: u64,
    /// Instruction bytes compared.
    pub bytes_matched: u64,
}

/// What a changed header reached.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct HeaderScope {
    /// The changed headers.
    pub changed: Vec<String>,
    /// Units that include them.
    pub including_units: usize,
    /// Of those, the units kbuild builds on their own.
    pub buildable_units: usize,
    /// Of those, the units in the running kernel (all compiled before and after).
    pub units_in_running_kernel: usize,
    /// Whether the include graph came from the cache.
    pub include_graph_cached: bool,
    /// Time to scan the include graph, in seconds.
    pub scan_seconds: f64,
}

/// The time of a kernel build's steps, in seconds.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelSeconds {
    /// Preparing the tree (0 when cached).
    pub prepare: f64,
    /// The pre build of the objects.
    pub pre: f64,
    /// The post build of the objects.
    pub post: f64,
    /// Diffing, linking and converting the module.
    pub module: f64,
    /// The whole command.
    pub total: f64,
}

/// `hotsplice build --kernel --json` when the fix cannot be applied live.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelRefusedReport {
    /// `refused`.
    pub outcome: Verdict,
    /// Why.
    pub refusals: Vec<KernelRefusal>,
    /// The objects compiled (empty when refused before compiling).
    pub objects: Vec<String>,
}

/// Why a kernel fix cannot be applied live.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelRefusal {
    /// The refusal kind.
    pub kind: String,
    /// The symbol or file at fault.
    pub symbol: String,
    /// For humans.
    pub detail: String,
}

/// `hotsplice build --kernel --json` when the diff changes no function code.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelNothingReport {
    /// `nothing-to-patch`.
    pub outcome: Verdict,
    /// The objects compiled.
    pub objects: Vec<String>,
    /// For a changed header: the units it reached; `null` when the diff changes no header.
    pub headers: Option<HeaderScope>,
}

// ---------------------------------------------------------------------------------------------
// check, apply, undo
// ---------------------------------------------------------------------------------------------

/// What a live command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `check`.
    Checked,
    /// `apply`.
    Applied,
    /// `undo`.
    Undid,
}

impl Action {
    /// The word, as in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Checked => "checked",
            Action::Applied => "applied",
            Action::Undid => "undid",
        }
    }
}

/// `hotsplice check | apply | undo --json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct LiveReport {
    /// `false` when a process failed (`--each`).
    pub ok: bool,
    /// `checked`, `applied` or `undid`.
    pub action: Action,
    /// The patch id.
    pub patch: String,
    /// Wall-clock time of the command, in µs.
    pub wall_us: u64,
    /// Each process done.
    pub processes: Vec<ProcessReport>,
    /// Processes found but left alone (another build, already applied), and why.
    pub skipped: Vec<Skipped>,
    /// With `--each`: processes where it failed.
    pub failed: Vec<FailedProcess>,
    /// `check` only: the hooks apply would run. Absent for `apply` and `undo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Vec<BundleHook>>,
}

/// One process of a live command.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct ProcessReport {
    /// The process.
    pub pid: i32,
    /// Processes sharing its memory, stopped and patched with it.
    pub sharers: Vec<i32>,
    /// The mapped file patched (executable or library).
    pub module: String,
    /// The longest time one of its threads was kept stopped (stops summed), in µs.
    pub pause_us: u64,
    /// How many times it was stopped.
    pub stops: u32,
    /// Every thread's total stopped time.
    pub stopped_threads: Vec<StoppedThread>,
    /// Each stop, from the first thread's interrupt to the last thread's release.
    pub stop_windows: Vec<StopWindow>,
    /// Attempts (retries while a thread was busy in a replaced function).
    pub attempts: u32,
    /// Threads stopped.
    pub threads: usize,
    /// Whether hotsplice ran at real-time priority.
    pub realtime: bool,
    /// Whether the process runs the bundle's own build (same build-id); `null` when unknown
    /// (no build-id, or `undo`).
    pub same_build: Option<bool>,
    /// `check`: what apply would do about a thread busy in a replaced function now; `null`
    /// when apply would write at once (and for `apply`, `undo`).
    pub prediction: Option<Prediction>,
    /// Hooks that ran.
    pub hooks: Vec<HookRun>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Shadow data of the patch (`undo`); `null` when it has none.
    pub shadows: Option<Shadows>,
    /// The functions replaced (or checked, or restored).
    pub functions: Vec<LiveFunction>,
    /// The process's namespaces when they are not hotsplice's own; `null` otherwise.
    pub namespace: Option<Namespace>,
}

/// A thread's stopped time.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct StoppedThread {
    /// The thread.
    pub tid: i32,
    /// Its total stopped time, in µs.
    pub stopped_us: u64,
    /// How many times it was stopped.
    pub stops: u32,
}

/// When one stop happened, on the clock a program reads with `clock_gettime(CLOCK_MONOTONIC)`
/// (so that its own timing can be lined up with hotsplice's stops).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct StopWindow {
    /// The first thread's interrupt, in ns.
    pub start_ns: u64,
    /// The last thread's release, in ns.
    pub end_ns: u64,
    /// How many threads it stopped (all of them, or one to run a system call in the target).
    pub threads: usize,
}

/// What apply would do now (`check`).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct Prediction {
    /// `wait` (let the runnable thread leave first), `retry` (stop again later) or `refuse`.
    pub action: String,
    /// The thread and function, and why.
    pub detail: String,
}

/// A hook that ran in the target.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct HookRun {
    /// `pre-apply`, `post-apply`, `pre-undo` or `post-undo`.
    pub kind: String,
    /// How long it ran, in µs (every thread stopped meanwhile).
    pub took_us: u64,
    /// What it returned.
    pub result: i32,
}

/// A patch's shadow data in a process.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct Shadows {
    /// Shadow variables alive.
    pub live: u64,
    /// Allocations made in all.
    pub allocations: u64,
    /// Bytes of the arena used.
    pub arena_used: u64,
}

/// A function of a live command.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct LiveFunction {
    /// The function.
    pub name: String,
    /// Its entry in the process (`0x...`).
    pub entry: String,
    /// Where its new code is (`0x...`; `0x0` for `check`).
    pub new_address: String,
    /// How it was located: `symbol table`, `function start (.eh_frame)`, `address learnt
    /// from another function`, `identical to another replaced function`; for `undo`, `state
    /// record, checked against the process`.
    pub found_by: String,
    /// The earlier patch whose version of the function this one replaces; `null` when none.
    pub replaces_patch: Option<String>,
}

/// A process found but not patched.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct Skipped {
    /// The process.
    pub pid: i32,
    /// Why.
    pub reason: String,
    /// Its namespaces when not hotsplice's own; `null` otherwise.
    pub namespace: Option<Namespace>,
}

/// A process where a live command failed (`--each`).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct FailedProcess {
    /// The process.
    pub pid: i32,
    /// The class of failure.
    pub class: ErrorClass,
    /// What went wrong.
    pub error: String,
    /// Its namespaces when not hotsplice's own; `null` otherwise.
    pub namespace: Option<Namespace>,
}

/// The namespaces of a process in a container.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct Namespace {
    /// Its pid namespace (inode).
    pub pid_ns: u64,
    /// Its mount namespace (inode).
    pub mnt_ns: u64,
    /// Its pid inside its pid namespace.
    pub pid_inside: i32,
}

/// A hook a bundle carries (`check`).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct BundleHook {
    /// `pre-apply`, `post-apply`, `pre-undo` or `post-undo`.
    pub kind: String,
    /// The function it runs.
    pub function: String,
}

/// `hotsplice check | apply | undo --json`, whichever way it ends.
#[cfg(test)]
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum LiveJson {
    /// The report.
    Report(LiveReport),
    /// A failure.
    Error(ErrorReport),
}

// ---------------------------------------------------------------------------------------------
// list, recover
// ---------------------------------------------------------------------------------------------

/// `hotsplice list --json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct ListReport {
    /// `false` when a process could not be read (exit 3).
    pub ok: bool,
    /// Each process with recorded patches (or each `--pid`).
    pub processes: Vec<Listed>,
}

/// A process of `list`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Listed {
    /// Its patches.
    Patches(ListedProcess),
    /// It could not be read.
    Error(ProcessError),
}

/// The patches of a process.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct ListedProcess {
    /// The process.
    pub pid: i32,
    /// The patches applied, oldest first.
    pub patches: Vec<ListedPatch>,
    /// Patches recorded whose jumps are not in the code (the program exec'd): their records
    /// were dropped.
    pub stale_records_dropped: Vec<String>,
    /// Patches whose memory is mapped but not in use (forked during an apply); harmless.
    pub unused_patch_memory: Vec<String>,
}

/// A patch applied to a process.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct ListedPatch {
    /// The patch id.
    pub id: String,
    /// The mapped file patched.
    pub module: String,
    /// The bundle's target.
    pub target: String,
    /// The SHA-256 of the bundle's content.
    pub bundle_sha256: String,
    /// When it was applied (Unix time, seconds).
    pub applied_unix: u64,
    /// The pause of its apply, in µs.
    pub pause_us: u64,
    /// The memory it mapped.
    pub regions: Vec<Region>,
    /// The functions it replaces.
    pub functions: Vec<ListedFunction>,
}

/// A region of patch memory.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct Region {
    /// Its start (`0x...`).
    pub address: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A function a patch replaces.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct ListedFunction {
    /// The function.
    pub name: String,
    /// Its entry, where the jump is (`0x...`).
    pub entry: String,
    /// Its new code (`0x...`).
    pub new_address: String,
}

impl ListedPatch {
    /// The report of a recorded patch (the state record itself is not the interface).
    pub fn of(p: &hotsplice_apply::AppliedPatch) -> Self {
        ListedPatch {
            id: p.id.clone(),
            module: p.module.clone(),
            target: p.target.clone(),
            bundle_sha256: p.bundle_sha256.clone(),
            applied_unix: p.applied_unix,
            pause_us: p.pause_us,
            regions: p
                .regions
                .iter()
                .map(|r| Region {
                    address: hex(r.address),
                    size: r.size,
                })
                .collect(),
            functions: p
                .functions
                .iter()
                .map(|f| ListedFunction {
                    name: f.name.clone(),
                    entry: hex(f.entry),
                    new_address: hex(f.new_address),
                })
                .collect(),
        }
    }
}

/// `hotsplice recover --json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct RecoverReport {
    /// `false` when a process could not be recovered.
    pub ok: bool,
    /// Each interrupted operation found.
    pub recovered: Vec<RecoverRow>,
}

/// One interrupted operation of `recover`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum RecoverRow {
    /// What was done.
    Done(Recovered),
    /// It could not be recovered.
    Error(ProcessError),
}

/// An interrupted operation, recovered.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct Recovered {
    /// The process.
    pub pid: i32,
    /// The patch.
    pub patch: String,
    /// `apply` or `undo`: what was interrupted.
    pub operation: String,
    /// What recover did.
    pub outcome: RecoverOutcome,
}

/// What `recover` did with an interrupted operation.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub enum RecoverOutcome {
    /// The process is gone; its record was dropped.
    #[serde(rename = "process gone; record dropped")]
    ProcessGone,
    /// Every original byte was written back.
    #[serde(rename = "rolled back")]
    RolledBack,
    /// Every jump was written.
    #[serde(rename = "completed")]
    Completed,
    /// Another hotsplice is still running it; left alone.
    #[serde(rename = "still running in another hotsplice; left alone")]
    InProgress,
}

impl RecoverOutcome {
    /// Its words, as in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoverOutcome::ProcessGone => "process gone; record dropped",
            RecoverOutcome::RolledBack => "rolled back",
            RecoverOutcome::Completed => "completed",
            RecoverOutcome::InProgress => "still running in another hotsplice; left alone",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// install, uninstall, status
// ---------------------------------------------------------------------------------------------

/// `hotsplice install --json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct InstallReport {
    /// `false` when a process could not be patched (exit 1).
    pub ok: bool,
    /// The patch id installed.
    pub installed: String,
    /// What it is installed for: the file, or `build-id ...`.
    pub target: String,
    /// Processes patched now.
    pub patched: Vec<i32>,
    /// Processes where the apply failed.
    pub failed: Vec<PidError>,
    /// Processes that map another build of the file (the fixed one, after an upgrade): not
    /// patched.
    pub other_build: Vec<OtherBuild>,
}

/// A process that maps another build of an installed patch's file.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct OtherBuild {
    /// The process.
    pub pid: i32,
    /// The build-id of the file it maps, if it has one.
    pub build_id: Option<String>,
}

/// `hotsplice uninstall --json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct UninstallReport {
    /// `false` when a process could not be restored (exit 1).
    pub ok: bool,
    /// The patch id uninstalled.
    pub uninstalled: String,
    /// Processes where it was undone.
    pub undone: Vec<i32>,
    /// Processes where the undo failed.
    pub failed: Vec<PidError>,
}

/// A process where `install` or `uninstall` failed.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct PidError {
    /// The process.
    pub pid: i32,
    /// What went wrong.
    pub error: String,
}

/// `hotsplice status --json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct StatusReport {
    /// `false` when a process that needs a patch lacks it (exit 1).
    pub ok: bool,
    /// Each installed patch.
    pub installed: Vec<StatusPatch>,
}

/// An installed patch and the processes mapping its file.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct StatusPatch {
    /// The patch id.
    pub patch: String,
    /// What it is installed for: the file, or `build-id ...`.
    pub target: String,
    /// Every process mapping the file.
    pub processes: Vec<StatusProcess>,
}

/// Whether a process has an installed patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PatchState {
    /// It has the patch.
    Patched,
    /// It needs the patch and lacks it.
    Unpatched,
    /// It maps another build of the file (already fixed): never patched.
    OtherBuild,
}

impl PatchState {
    /// Every state, in the order metrics list them.
    pub const ALL: [PatchState; 3] = [
        PatchState::Patched,
        PatchState::Unpatched,
        PatchState::OtherBuild,
    ];

    /// Its word, as in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            PatchState::Patched => "patched",
            PatchState::Unpatched => "unpatched",
            PatchState::OtherBuild => "other-build",
        }
    }
}

/// A process of `status`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct StatusProcess {
    /// The process.
    pub pid: i32,
    /// Its command name.
    pub comm: String,
    /// The file it maps, as it maps it.
    pub mapped: String,
    /// Whether it has the patch.
    pub state: PatchState,
    /// Its pid inside its pid namespace.
    pub pid_inside: i32,
}

// ---------------------------------------------------------------------------------------------
// kernel apply | undo | list
// ---------------------------------------------------------------------------------------------

/// How a kernel livepatch transition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum KernelOutcome {
    /// `apply`: every task runs the new code.
    Applied,
    /// `undo`: every task is back on the original code and the module is unloaded.
    Undone,
    /// Tasks still run the old code after the timeout (exit 3); livepatch keeps trying.
    TransitionPending,
    /// `undo`: disabled, but unloading the module failed (audit log only: the command fails).
    UnloadFailed,
}

impl KernelOutcome {
    /// Its word, as in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelOutcome::Applied => "applied",
            KernelOutcome::Undone => "undone",
            KernelOutcome::TransitionPending => "transition-pending",
            KernelOutcome::UnloadFailed => "unload-failed",
        }
    }
}

/// `hotsplice kernel apply --json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelApplyReport {
    /// `applied` or `transition-pending`.
    pub outcome: KernelOutcome,
    /// The livepatch's name.
    pub name: String,
    /// The trusted key that signed the module, or `unverified (...; --allow-unsigned)`.
    pub signer: String,
    /// Time to load the module, in seconds.
    pub load_seconds: f64,
    /// Time from load to the end of the transition (or the timeout), in seconds.
    pub transition_seconds: f64,
    /// The tasks still running old code.
    pub stalled: Vec<StalledTask>,
}

/// `hotsplice kernel undo --json`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelUndoReport {
    /// `undone` or `transition-pending`.
    pub outcome: KernelOutcome,
    /// The livepatch's name.
    pub name: String,
    /// Time of the transition, in seconds.
    pub transition_seconds: f64,
    /// The tasks still running the patch's code.
    pub stalled: Vec<StalledTask>,
}

/// A task holding up a livepatch transition.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct StalledTask {
    /// Its process.
    pub pid: i32,
    /// The task.
    pub tid: i32,
    /// Its command name.
    pub comm: String,
}

impl StalledTask {
    /// The tasks of a transition.
    pub fn all(stalled: &[hotsplice_kernel::livepatch::StalledTask]) -> Vec<Self> {
        stalled
            .iter()
            .map(|t| StalledTask {
                pid: t.pid,
                tid: t.tid,
                comm: t.comm.clone(),
            })
            .collect()
    }
}

/// A live patch of the running kernel (`hotsplice kernel list --json` prints an array of
/// them).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
pub struct KernelPatch {
    /// Its name.
    pub name: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Whether a transition is in progress.
    pub transition: bool,
    /// The functions it replaces.
    pub functions: Vec<String>,
}

/// `hotsplice kernel apply | undo --json`, whichever way it ends.
#[cfg(test)]
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum KernelJson {
    /// `kernel apply`.
    Apply(KernelApplyReport),
    /// `kernel undo`.
    Undo(KernelUndoReport),
    /// A failure.
    Error(ErrorReport),
}

// ---------------------------------------------------------------------------------------------
// The audit log
// ---------------------------------------------------------------------------------------------

/// One record of the audit log (a JSON line): every apply, undo, recovery and refusal.
/// Fields that do not apply to an action are absent.
#[derive(Debug, Default, Serialize)]
pub struct AuditRecord {
    /// `check`, `apply`, `undo`, `install`, `watch`, `recover`, `kernel-apply`, `kernel-undo`.
    pub action: &'static str,
    /// Who acted, when not the command itself (`install/watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'static str>,
    /// The patch id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// The processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<i32>>,
    /// The bundle file (a refused bundle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// The bundle's content hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_sha256: Option<String>,
    /// A kernel module file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// A kernel module's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A kernel module's SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Who vouched for the bundle or module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// `recover`: the interrupted operation (`apply`, `undo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    /// `done`, an error class, a kernel outcome, or what `recover` did.
    pub outcome: String,
    /// Why it failed or was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The stops, over every process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// Per process: its pause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_us: Option<Vec<ProcessPause>>,
    /// A kernel transition's time, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition_seconds: Option<f64>,
    /// The tasks holding up a kernel transition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<Vec<StalledTask>>,
    /// When (Unix time, seconds); set by `trust::audit`.
    pub time_unix: u64,
    /// hotsplice's own pid; set by `trust::audit`.
    pub hotsplice_pid: u32,
}

/// One process's pause, in the audit log.
#[derive(Debug, Serialize)]
pub struct ProcessPause {
    /// The process.
    pub pid: i32,
    /// Its longest thread pause, in µs.
    pub pause_us: u64,
    /// How many times it was stopped.
    pub stops: u32,
}
