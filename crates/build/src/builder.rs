//! `hotsplice build`: from a source tree, its build command and a unified diff (or a series
//! of them), to bundles.
//!
//! 1. The **pre build** runs the project's own build command in a cached copy of the source
//!    tree, at a fixed path, with the compiler shims first in `PATH`. The built tree is kept
//!    (`pristine/`) with what the shims recorded, the target's *closure* (the objects its link
//!    used, through archives and partial links) and which files the build read, under a key
//!    made of the source's content, the build command and the compiler, so the next patch for
//!    the same source skips it.
//! 2. For each patch of the series, in order: the diff is applied in the tree (the state left
//!    by the previous patch; the pristine tree for the first), `#line` directives keep
//!    `__LINE__` of the code below each hunk at its value in the running program, and the
//!    build command runs again: only what the diff touches is recompiled.
//! 3. **Accounting**: every object of the target whose source, or a file it includes, the
//!    diff (or a generator it feeds) changed must have been recompiled; hotsplice recompiles
//!    with the recorded command what the build did not, and refuses when it cannot. Each file
//!    of the diff is reported: recompiled and diffed, not part of the target, ignored (tests,
//!    documentation, files the build never reads) or refused (build configuration).
//! 4. The recompiled objects of the target are diffed against the state before the patch;
//!    their patch sets become the bundle. A bundle that is refused (or a patch whose build
//!    fails) is taken out of the tree again, so the next patch builds on what is live.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hotsplice_bundle::{
    Bundle, Link, ObjectProvenance, Provenance, TargetIdentity, convert, sha256_hex,
};
use hotsplice_objdiff::{ObjectDiff, Report, Status, patch_objects};
use serde::{Deserialize, Serialize};

use crate::classify::{self, Reads, Role};
use crate::closure::{self, Closure, Index};
use crate::record::{Record, RecordKind, read_log};
use crate::{Error, access, debian, deps, identity, shim, tree, unified};

/// What to build.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source tree (never modified).
    pub source: PathBuf,
    /// The unified diffs, applied in this order (a series); usually one.
    pub diffs: Vec<PathBuf>,
    /// The target binary, relative to the build tree (`objs/nginx`).
    pub target: String,
    /// The build command, run with `sh -c` in the tree (default `make`).
    pub build_command: String,
    /// The command for the incremental post build, when it differs from `build_command`
    /// (e.g. `make -C debian/build-bin` after a `debian/rules build-arch` pre build).
    pub post_build_command: Option<String>,
    /// Directories of the tree (relative) holding copies of the sources that the build made
    /// (Debian's `debian/build-bin`): patched files are copied into them too.
    pub mirrors: Vec<String>,
    /// Extra environment for both builds (`DEB_BUILD_OPTIONS`, ...).
    pub env: Vec<(String, String)>,
    /// A Debian package build: after the pre build, find the source copies and the post-build
    /// command (`debian/build-*`), and resolve an installed path (`usr/sbin/nginx`) given as
    /// the target to the built file.
    pub debian: bool,
    /// Where pre builds are cached.
    pub cache: PathBuf,
    /// Parallel jobs (`MAKEFLAGS=-jN`, and hotsplice's own recompiles).
    pub jobs: usize,
    /// The program the compiler shims run (the hotsplice binary).
    pub shim_program: PathBuf,
}

/// How long each step took.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// The pre build (zero when cached, and for every patch of a series but the first).
    pub pre_build: Duration,
    /// Restoring the tree and applying the diff.
    pub prepare: Duration,
    /// The post (incremental) build, with hotsplice's own recompiles.
    pub post_build: Duration,
    /// Diffing the rebuilt objects.
    pub diff: Duration,
}

/// What became of one file the diff touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file, relative to the tree.
    pub path: String,
    /// What it is to the build.
    pub role: Role,
    /// `rebuilt` (objects of the target recompiled and diffed), `regenerated` (a generator
    /// input whose outputs changed), `not-in-target`, `not-used` (compiled or included by no
    /// object of the target), `ignored` (tests, documentation, unread), `refused`.
    pub status: &'static str,
    /// Details: the objects, the binaries, the reason.
    pub detail: String,
}

/// The verdict on one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A bundle can be written.
    Written,
    /// The change cannot be applied live.
    Refused,
    /// The diff changes no function of the target.
    NothingToPatch,
}

impl Verdict {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Written => "written",
            Verdict::Refused => "refused",
            Verdict::NothingToPatch => "nothing-to-patch",
        }
    }
}

/// The result of building one patch.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The diff.
    pub diff: PathBuf,
    /// The bundle (its `refusals` say whether it can be applied).
    pub bundle: Bundle,
    /// The object diff of every rebuilt object of the target.
    pub report: Report,
    /// Whether the pre build came from the cache.
    pub pre_cached: bool,
    /// Objects of the target recompiled after the diff and diffed (relative to the tree).
    pub rebuilt: Vec<String>,
    /// Those hotsplice recompiled itself because the build did not (a sub-make built once,
    /// no dependency tracking).
    pub recompiled: Vec<String>,
    /// Objects recompiled by the post build that are not linked into the target (ignored).
    pub not_in_target: Vec<String>,
    /// Other binaries of the build those objects are linked into (relative to the tree): the
    /// targets to build a patch for instead (a dynamic module, a library).
    pub other_targets: Vec<String>,
    /// Every file of the diff: its role and what became of it.
    pub files: Vec<FileReport>,
    /// Earlier bundles of the series whose functions this one replaces again (it must be
    /// applied after them).
    pub stacks_on: Vec<String>,
    /// Step durations.
    pub timings: Timings,
}

impl Outcome {
    /// Whether the diff changes any function of the target.
    pub fn has_changes(&self) -> bool {
        self.report
            .objects
            .iter()
            .any(|o| o.functions.iter().any(|f| f.status != Status::Unchanged))
    }

    /// Written, refused or nothing to patch. A diff that only adds functions no existing
    /// function calls has nothing to patch: the new code could never run.
    pub fn verdict(&self) -> Verdict {
        let replaces = self
            .bundle
            .objects
            .iter()
            .any(|o| !o.replacements.is_empty());
        if !self.bundle.refusals.is_empty() {
            Verdict::Refused
        } else if !self.has_changes() || !replaces {
            Verdict::NothingToPatch
        } else {
            Verdict::Written
        }
    }
}

/// The result of one patch of a series: built (whatever the verdict), or an error (the diff
/// does not apply, its build failed).
#[derive(Debug)]
pub enum PatchResult {
    /// Built; see the outcome's verdict.
    Built(Box<Outcome>),
    /// Not built.
    Failed {
        /// The diff.
        diff: PathBuf,
        /// Why.
        error: Error,
    },
}

/// The result of a series.
#[derive(Debug)]
pub struct Series {
    /// The target (the binary of the base build, which every bundle applies to).
    pub target: TargetIdentity,
    /// Whether the base build came from the cache.
    pub pre_cached: bool,
    /// The base build's duration (zero when cached).
    pub pre_build: Duration,
    /// One result per diff, in order.
    pub patches: Vec<PatchResult>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn compiler_version() -> String {
    Command::new("gcc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown compiler".to_string())
}

/// Creates the shim directory: links named like compilers, pointing at the shim program.
fn make_shims(dir: &Path, program: &Path) -> Result<(), Error> {
    tree::remove(dir).map_err(io_error(dir))?;
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for name in shim::COMPILER_NAMES.iter().chain(shim::LAUNCHER_NAMES) {
        let link = dir.join(name);
        std::os::unix::fs::symlink(program, &link).map_err(io_error(&link))?;
    }
    Ok(())
}

/// The cache entry of one source + build: fixed paths.
struct Workspace {
    root: PathBuf,
    tree: PathBuf,
    pristine: PathBuf,
    prev: PathBuf,
    shims: PathBuf,
}

impl Workspace {
    fn new(root: &Path) -> Self {
        Workspace {
            root: root.to_path_buf(),
            tree: root.join("tree"),
            pristine: root.join("pristine"),
            prev: root.join("prev"),
            shims: root.join("shims"),
        }
    }

    fn path_with_shims(&self) -> Result<std::ffi::OsString, Error> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.shims.clone()];
        paths.extend(std::env::split_paths(&path));
        std::env::join_paths(paths).map_err(|e| Error::Io {
            path: self.shims.clone(),
            source: std::io::Error::other(e),
        })
    }

    fn run_build(
        &self,
        request: &Request,
        command: &str,
        phase: &'static str,
    ) -> Result<Vec<Record>, Error> {
        let log = self.root.join(format!("{phase}.jsonl"));
        let _ = std::fs::remove_file(&log);
        // The pre build's link maps are kept (closures of any target of the cached build are
        // computed from them); each post build's replace the previous ones.
        let maps = self.root.join(format!("maps-{phase}"));
        tree::remove(&maps).map_err(io_error(&maps))?;
        std::fs::create_dir_all(&maps).map_err(io_error(&maps))?;
        let output_log = self.root.join(format!("{phase}-build.log"));
        let out = File::create(&output_log).map_err(io_error(&output_log))?;
        let err = out.try_clone().map_err(io_error(&output_log))?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.tree)
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", self.path_with_shims()?)
            .env("CC", "gcc")
            .env("CXX", "g++")
            .env("CCACHE_DISABLE", "1")
            .env("MAKEFLAGS", format!("-j{}", request.jobs.max(1)))
            .env(shim::ENV_DIR, &self.shims)
            .env(shim::ENV_LOG, &log)
            .env(shim::ENV_TREE, &self.tree)
            .env(shim::ENV_MAPS, &maps)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(io_error(&self.tree))?;
        if !status.success() {
            return Err(Error::BuildFailed {
                phase,
                command: command.to_string(),
                status: status.to_string(),
                log: output_log,
            });
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(read_log(&text).0)
    }

    /// Makes the tree a copy of `from` (same path, so paths baked into objects hold).
    fn restore_tree(&self, from: &Path) -> Result<(), Error> {
        tree::sync(from, &self.tree).map_err(io_error(&self.tree))
    }
}

/// What the cache keeps about the pre build, besides the pristine tree and its link maps.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    records: Vec<Record>,
    /// Files the pre build read (`None`: the file system keeps no access times).
    reads: Option<BTreeSet<String>>,
}

/// The pre build as one request uses it: the cached part, and its target.
#[derive(Debug, Clone)]
struct BaseState {
    records: Vec<Record>,
    reads: Option<BTreeSet<String>>,
    target: String,
    closure: Closure,
    post_command: String,
    mirrors: Vec<String>,
}

/// Up to `limit` build outputs (ELF files) already in a source tree.
fn existing_outputs(source: &Path, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(files) = tree::files(source) else {
        return out;
    };
    for rel in files {
        let Ok(mut file) = File::open(source.join(&rel)) else {
            continue;
        };
        let mut magic = [0u8; 8];
        let is_output = std::io::Read::read(&mut file, &mut magic)
            .is_ok_and(|n| n >= 4 && (magic.starts_with(b"\x7fELF") || magic == *b"!<arch>\n"));
        if is_output {
            out.push(rel.to_string_lossy().into_owned());
            if out.len() >= limit {
                break;
            }
        }
    }
    out
}

/// Runs `f` over `items` on up to `jobs` threads; results in order.
fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if let Ok(mut all) = results.lock() {
                        all[i] = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

/// One file a diff touches.
struct Patched {
    path: PathBuf,
    created: bool,
    deleted: bool,
}

fn is_c_like(path: &Path) -> bool {
    [
        "c", "h", "cc", "cpp", "cxx", "hh", "hpp", "hxx", "inc", "inl", "ipp",
    ]
    .iter()
    .any(|e| path.extension().is_some_and(|x| x == *e))
        || path.extension().is_some_and(|x| x == "C" || x == "H")
}

/// Applies the diff in `tree_dir` with `patch` (strip level found by dry run). Returns the
/// level and the parsed file diffs.
fn run_patch(
    tree_dir: &Path,
    diff: &Path,
    text: &str,
) -> Result<(usize, Vec<unified::FileDiff>), Error> {
    let files = unified::parse(text).map_err(|message| Error::DiffParse {
        path: diff.to_path_buf(),
        message,
    })?;
    let mut last_output = String::new();
    let mut level = None;
    for p in [1, 0, 2] {
        let out = Command::new("patch")
            .arg(format!("-p{p}"))
            .args(["--dry-run", "--batch", "--forward", "--silent", "-i"])
            .arg(diff)
            .current_dir(tree_dir)
            .output()
            .map_err(io_error(tree_dir))?;
        if out.status.success() {
            level = Some(p);
            break;
        }
        if p == 1 {
            last_output = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let Some(level) = level else {
        return Err(Error::DiffDoesNotApply {
            path: diff.to_path_buf(),
            output: last_output.trim().to_string(),
        });
    };
    let out = Command::new("patch")
        .arg(format!("-p{level}"))
        .args([
            "--batch",
            "--forward",
            "--silent",
            "--no-backup-if-mismatch",
            "-i",
        ])
        .arg(diff)
        .current_dir(tree_dir)
        .output()
        .map_err(io_error(tree_dir))?;
    if !out.status.success() {
        return Err(Error::DiffDoesNotApply {
            path: diff.to_path_buf(),
            output: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    Ok((level, files))
}

fn stripped(path: &str, level: usize) -> PathBuf {
    Path::new(path).components().skip(level).collect()
}

/// Applies the diff in `tree`: finds the strip level with a dry run, applies it, and adds
/// `#line` directives to the patched C files. Returns the patched files (tree-relative).
pub fn apply_diff(tree_dir: &Path, diff: &Path, text: &str) -> Result<Vec<PathBuf>, Error> {
    let (level, files) = run_patch(tree_dir, diff, text)?;
    let mut patched = Vec::new();
    for file in files.iter().filter(|f| !f.deletes()) {
        let path_rel = stripped(&file.new_path, level);
        patched.push(path_rel.clone());
        if file.creates() || !is_c_like(&path_rel) {
            continue;
        }
        let path = tree_dir.join(&path_rel);
        let Ok(content) = std::fs::read_to_string(&path) else {
            continue;
        };
        let updated = unified::with_line_directives(&content, &file.hunks);
        if updated != content {
            std::fs::write(&path, updated).map_err(io_error(&path))?;
        }
    }
    Ok(patched)
}

/// The hunks taking `base` to `current` (`diff -u`), for `#line` directives relative to the
/// base after several patches of a series touched a file.
fn hunks_between(base: &Path, current: &Path) -> Option<Vec<unified::Hunk>> {
    let out = Command::new("diff")
        .args(["-U3", "--"])
        .arg(base)
        .arg(current)
        .output()
        .ok()?;
    match out.status.code() {
        Some(0) => Some(Vec::new()),
        Some(1) => unified::parse(&String::from_utf8_lossy(&out.stdout))
            .ok()
            .and_then(|mut f| f.pop())
            .map(|f| f.hunks),
        _ => None,
    }
}

/// Patched files without hotsplice's `#line` directives (`None`: deleted).
type CleanTexts = HashMap<PathBuf, Option<Vec<u8>>>;

/// The state of the series as it goes: what the tree holds now.
#[derive(Clone)]
struct State {
    /// Compile and link records of every build of the current state (later ones win).
    records: Vec<Record>,
    /// The target's closure in the current state.
    closure: Closure,
    /// Patched files without hotsplice's `#line` directives (the series' source text).
    clean: HashMap<PathBuf, Option<Vec<u8>>>,
    /// Names new in an earlier bundle of the series (they live only in that bundle's memory):
    /// name → bundle id.
    new_symbols: HashMap<String, String>,
    /// Functions replaced by an earlier bundle of the series: name → bundle id.
    replaced: HashMap<String, String>,
    /// Ids of the bundles of the series so far.
    chain: Vec<String>,
    /// For a target linked with `-flto`: its link-time code in the current state (the
    /// merged ltrans objects), or why there is none.
    lto: Option<Result<PathBuf, String>>,
}

struct Context<'a> {
    request: &'a Request,
    ws: Workspace,
    base: BaseState,
    target: TargetIdentity,
    source_id: String,
    compiler: String,
    atime: bool,
    /// Dependencies of objects, computed on demand: object → files (tree-relative).
    deps: HashMap<String, Vec<String>>,
}

/// Builds the live patch of one diff (`request.diffs` must hold exactly one).
pub fn build(request: &Request, progress: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
    let series = build_series(request, progress)?;
    match series.patches.into_iter().next() {
        Some(PatchResult::Built(outcome)) => Ok(*outcome),
        Some(PatchResult::Failed { error, .. }) => Err(error),
        None => Err(Error::DiffParse {
            path: PathBuf::new(),
            message: "no diff given".to_string(),
        }),
    }
}

/// Builds a series: one full build of the source, then for each diff in order an incremental
/// build on top of the previous one, and a bundle that stacks on the previous bundles.
pub fn build_series(request: &Request, progress: &mut dyn FnMut(&str)) -> Result<Series, Error> {
    let source = request
        .source
        .canonicalize()
        .map_err(io_error(&request.source))?;
    // Every diff must parse before anything is built.
    let mut diffs = Vec::new();
    for diff in &request.diffs {
        let bytes = std::fs::read(diff).map_err(io_error(diff))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        unified::parse(&text).map_err(|message| Error::DiffParse {
            path: diff.clone(),
            message,
        })?;
        // `patch` runs inside the build tree: give it an absolute path.
        let absolute = diff.canonicalize().map_err(io_error(diff))?;
        diffs.push((diff.clone(), absolute, text, sha256_hex(&bytes)));
    }

    progress("hashing the source tree");
    let source_id = tree::content_id(&source).map_err(io_error(&source))?;
    let compiler = compiler_version();
    let key = sha256_hex(
        format!(
            "{source_id}\n{}\n{:?}\n{compiler}\nshim-2 {}\n",
            request.build_command,
            request.env,
            shim::SECTION_FLAGS.join(" "),
        )
        .as_bytes(),
    );
    std::fs::create_dir_all(&request.cache).map_err(io_error(&request.cache))?;
    let cache = request
        .cache
        .canonicalize()
        .map_err(io_error(&request.cache))?;
    let root = cache.join(&key[..16]);
    std::fs::create_dir_all(&root).map_err(io_error(&root))?;
    let ws = Workspace::new(&root);
    let lock_path = root.join("lock");
    let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
    lock.lock().map_err(io_error(&lock_path))?;
    make_shims(&ws.shims, &request.shim_program)?;
    let atime = access::supported(&root);

    let started = Instant::now();
    let (cached, pre_cached) = pre_build(request, &ws, &source, atime, progress)?;
    let base = match base_for_target(request, &ws, cached) {
        Ok(base) => base,
        Err(e) => {
            // A tree that held build outputs made the cached build useless: drop it.
            if matches!(&e, Error::TargetNotLinked { outputs, .. } if !outputs.is_empty())
                || matches!(e, Error::TreeHasOutputs { .. })
            {
                let _ = std::fs::remove_file(ws.root.join("complete"));
                let _ = tree::remove(&ws.tree);
                let _ = tree::remove(&ws.pristine);
            }
            return Err(e);
        }
    };
    let pre_time = if pre_cached {
        Duration::ZERO
    } else {
        started.elapsed()
    };
    let target_bytes =
        std::fs::read(ws.pristine.join(&base.target)).map_err(|_| Error::TargetMissing {
            target: base.target.clone(),
            tree: ws.pristine.clone(),
        })?;
    let target =
        identity::identify(&base.target, &target_bytes).ok_or_else(|| Error::TargetNotElf {
            target: base.target.clone(),
        })?;

    let mut ctx = Context {
        request,
        ws,
        target: target.clone(),
        source_id,
        compiler,
        atime,
        deps: HashMap::new(),
        base,
    };
    let mut state = State {
        records: ctx.base.records.clone(),
        closure: ctx.base.closure.clone(),
        clean: HashMap::new(),
        new_symbols: HashMap::new(),
        replaced: HashMap::new(),
        chain: Vec::new(),
        lto: None,
    };
    if ctx.base.closure.lto {
        let link = Index::new(&ctx.ws.tree, &ctx.base.records)
            .link_of(&ctx.base.target)
            .cloned();
        state.lto = Some(merged_ltrans(
            link.as_ref(),
            &ctx.ws.root.join("lto-base.o"),
            &ctx.base.target,
        ));
    }
    ctx.ws.restore_tree(&ctx.ws.pristine)?;
    let mut pre_dir = ctx.ws.pristine.clone();
    let mut results = Vec::new();
    // Patches taken out of the tree again (refused, failed), in order.
    let mut reverted: Vec<PathBuf> = Vec::new();
    let count = diffs.len();
    for (k, (diff, absolute, text, sha)) in diffs.iter().enumerate() {
        if count > 1 {
            progress(&format!("patch {} of {count}: {}", k + 1, diff.display()));
        }
        let started = Instant::now();
        let result = build_patch(
            &mut ctx, &state, &pre_dir, diff, absolute, text, sha, progress,
        )
        .map_err(|e| match e {
            // It may only apply on top of a patch that was taken out again.
            Error::DiffDoesNotApply { .. } if !reverted.is_empty() => {
                let on = applies_after(&ctx.ws, &reverted, absolute, text);
                if on.is_empty() {
                    e
                } else {
                    Error::DependsOnRefused {
                        diff: diff.clone(),
                        on,
                    }
                }
            }
            e => e,
        });
        let last = k + 1 == count;
        match result {
            Ok((mut outcome, post)) => {
                outcome.pre_cached = pre_cached;
                if k == 0 {
                    outcome.timings.pre_build = pre_time;
                }
                let verdict = outcome.verdict();
                progress(&format!(
                    "{}: {} ({:.1} s)",
                    diff.display(),
                    verdict.as_str(),
                    started.elapsed().as_secs_f64()
                ));
                if verdict == Verdict::Refused {
                    // Not applied live: the next patch builds on the state without it.
                    reverted.push(absolute.clone());
                    if !last {
                        ctx.ws.restore_tree(&pre_dir)?;
                    }
                } else {
                    accept(&mut ctx, &mut state, &outcome, post);
                    if !last {
                        tree::sync(&ctx.ws.tree, &ctx.ws.prev).map_err(io_error(&ctx.ws.prev))?;
                        pre_dir = ctx.ws.prev.clone();
                    }
                }
                results.push(PatchResult::Built(Box::new(outcome)));
            }
            Err(error) => {
                progress(&format!("{}: failed: {error}", diff.display()));
                reverted.push(absolute.clone());
                // A diff that did not apply left the tree as it was.
                let untouched = matches!(
                    error,
                    Error::DiffDoesNotApply { .. } | Error::DependsOnRefused { .. }
                );
                if !last && !untouched {
                    ctx.ws.restore_tree(&pre_dir)?;
                }
                results.push(PatchResult::Failed {
                    diff: diff.clone(),
                    error,
                });
            }
        }
    }
    Ok(Series {
        target,
        pre_cached,
        pre_build: pre_time,
        patches: results,
    })
}

/// The patches among `reverted` that `diff` (which does not apply to the tree) needs: it
/// applies once they are, on a scratch copy of the files it touches. Empty when it does not
/// apply even then.
fn applies_after(ws: &Workspace, reverted: &[PathBuf], diff: &Path, text: &str) -> Vec<String> {
    let Ok(files) = unified::parse(text) else {
        return Vec::new();
    };
    let scratch = ws.root.join("depends");
    let _ = tree::remove(&scratch);
    let mut wanted = BTreeSet::new();
    for file in &files {
        for level in 0..3 {
            for path in [&file.old_path, &file.new_path] {
                let rel = stripped(path, level);
                let from = ws.tree.join(&rel);
                if from.is_file() && wanted.insert(rel.clone()) {
                    let to = scratch.join(&rel);
                    if let Some(dir) = to.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let _ = std::fs::copy(&from, &to);
                }
            }
        }
    }
    let _ = std::fs::create_dir_all(&scratch);
    let mut needed = Vec::new();
    for earlier in reverted {
        let before = tree::content_id(&scratch).ok();
        let _ = Command::new("patch")
            .args([
                "-p1",
                "--batch",
                "--forward",
                "--silent",
                "--no-backup-if-mismatch",
                "-r",
                "-",
                "-i",
            ])
            .arg(earlier)
            .current_dir(&scratch)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if tree::content_id(&scratch).ok() != before {
            needed.push(
                earlier
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    let applies = [1, 0, 2].iter().any(|level| {
        Command::new("patch")
            .arg(format!("-p{level}"))
            .args(["--dry-run", "--batch", "--forward", "--silent", "-i"])
            .arg(diff)
            .current_dir(&scratch)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let _ = tree::remove(&scratch);
    if applies { needed } else { Vec::new() }
}

/// The pre build, or its cached result.
fn pre_build(
    request: &Request,
    ws: &Workspace,
    source: &Path,
    atime: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(Cached, bool), Error> {
    let complete = ws.root.join("complete");
    let state_path = ws.root.join("pre-state.json");
    if complete.exists() && ws.pristine.is_dir() {
        let cached = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok());
        if let Some(state) = cached {
            progress("pre build: cached");
            return Ok((state, true));
        }
    }
    progress(&format!(
        "pre build: `{}` in a copy of {} (cached for later patches)",
        request.build_command,
        source.display()
    ));
    let _ = std::fs::remove_file(&complete);
    let result = pre_build_uncached(request, ws, source, atime);
    match result {
        Ok(state) => {
            let json = serde_json::to_vec(&state).map_err(|e| Error::Io {
                path: state_path.clone(),
                source: std::io::Error::other(e),
            })?;
            std::fs::write(&state_path, json).map_err(io_error(&state_path))?;
            File::create(&complete).map_err(io_error(&complete))?;
            Ok((state, false))
        }
        Err(e) => {
            // Never leave a half-made entry: only the logs stay, for the user to read.
            let _ = tree::remove(&ws.tree);
            let _ = tree::remove(&ws.pristine);
            let _ = tree::remove(&ws.prev);
            let _ = std::fs::remove_file(&state_path);
            Err(e)
        }
    }
}

fn pre_build_uncached(
    request: &Request,
    ws: &Workspace,
    source: &Path,
    atime: bool,
) -> Result<Cached, Error> {
    tree::remove(&ws.tree).map_err(io_error(&ws.tree))?;
    tree::remove(&ws.pristine).map_err(io_error(&ws.pristine))?;
    tree::remove(&ws.prev).map_err(io_error(&ws.prev))?;
    tree::copy(source, &ws.tree).map_err(io_error(&ws.tree))?;
    if atime {
        access::reset_tree(&ws.tree).map_err(io_error(&ws.tree))?;
    }
    let records = ws.run_build(request, &request.build_command, "pre")?;
    if !records.iter().any(|r| r.kind == RecordKind::Compile) {
        return Err(Error::NoCompilations {
            command: request.build_command.clone(),
            outputs: existing_outputs(source, 5),
        });
    }
    let reads = if atime {
        Some(
            access::read_files(&ws.tree)
                .map_err(io_error(&ws.tree))?
                .into_iter()
                .collect(),
        )
    } else {
        None
    };
    tree::copy(&ws.tree, &ws.pristine).map_err(io_error(&ws.pristine))?;
    Ok(Cached { records, reads })
}

/// The request's target in the pre build: its path (a Debian installed path resolved), its
/// closure, and the post-build command and mirrors.
fn base_for_target(request: &Request, ws: &Workspace, cached: Cached) -> Result<BaseState, Error> {
    let source = &request.source;
    let (target, post_command, mirrors) = if request.debian {
        let (command, mirrors) = debian::post_build(&ws.pristine);
        let target = if ws.pristine.join(&request.target).is_file() {
            request.target.clone()
        } else {
            debian::find_target(&ws.pristine, &request.target)?
        };
        (
            target,
            request.post_build_command.clone().unwrap_or(command),
            mirrors,
        )
    } else {
        (
            request.target.clone(),
            request
                .post_build_command
                .clone()
                .unwrap_or_else(|| request.build_command.clone()),
            request.mirrors.clone(),
        )
    };
    if !ws.pristine.join(&target).is_file() {
        return Err(Error::TargetMissing {
            target,
            tree: ws.tree.clone(),
        });
    }
    let index = Index::new(&ws.tree, &cached.records);
    let Some(closure) = index.closure(&target, &ws.pristine) else {
        return Err(Error::TargetNotLinked {
            target,
            outputs: existing_outputs(source, 5),
        });
    };
    if !closure.foreign.is_empty() {
        let outputs = existing_outputs(source, 5);
        if !outputs.is_empty() {
            return Err(Error::TreeHasOutputs {
                target,
                objects: closure.foreign.iter().take(5).cloned().collect(),
            });
        }
    }
    Ok(BaseState {
        records: cached.records,
        reads: cached.reads,
        target,
        closure,
        post_command,
        mirrors,
    })
}

/// After a patch is kept in the tree: its builds become part of the state.
fn accept(ctx: &mut Context<'_>, state: &mut State, outcome: &Outcome, post: PostState) {
    for record in &post.records {
        if let Some(object) = record
            .output
            .as_deref()
            .and_then(|o| tree::relative(&ctx.ws.tree, &record.directory, o))
        {
            ctx.deps.remove(&object);
        }
    }
    let relinked = post.records.iter().any(|r| {
        r.kind == RecordKind::Link
            && r.output
                .as_deref()
                .and_then(|o| tree::relative(&ctx.ws.tree, &r.directory, o))
                .is_some_and(|o| o == state.closure.target)
    });
    state.records.extend(post.records);
    if relinked {
        let index = Index::new(&ctx.ws.tree, &state.records);
        if let Some(closure) = index.closure(&state.closure.target, &ctx.ws.tree) {
            state.closure = closure;
        }
    }
    state.clean = post.clean;
    if let Some(post_lto) = post.lto {
        let kept = ctx
            .ws
            .root
            .join(format!("lto-state-{}.o", state.chain.len()));
        state.lto = Some(
            std::fs::copy(&post_lto, &kept)
                .map(|_| kept)
                .map_err(|e| format!("{}: {e}", post_lto.display())),
        );
    }
    if outcome.verdict() == Verdict::Written {
        let id = outcome.bundle.id.clone();
        for object in &outcome.report.objects {
            for f in &object.functions {
                match f.status {
                    Status::New => {
                        state.new_symbols.insert(f.name.clone(), id.clone());
                    }
                    Status::Changed => {
                        state
                            .replaced
                            .insert(f.pre_name.clone().unwrap_or(f.name.clone()), id.clone());
                    }
                    _ => {}
                }
            }
            for d in &object.data {
                if d.status == Status::New {
                    state.new_symbols.insert(d.name.clone(), id.clone());
                }
            }
        }
        state.chain.push(id);
    }
}

/// The link-time code of `link` (its ltrans objects merged) at `out`, or why there is none.
fn merged_ltrans(link: Option<&Record>, out: &Path, target: &str) -> Result<PathBuf, String> {
    let Some(link) = link else {
        return Err(format!("hotsplice saw no link of {target}"));
    };
    if link.ltrans.is_empty() {
        return Err(format!(
            "the link of {target} kept no link-time objects (it must run through the \
             compiler shims, as cc/gcc/g++ with -flto)"
        ));
    }
    let ltrans: Vec<PathBuf> = link.ltrans.iter().map(PathBuf::from).collect();
    crate::lto::merge(&ltrans, out)
        .map(|()| out.to_path_buf())
        .map_err(|e| e.to_string())
}

/// Runs the target's recorded LTO link again (the build recompiled, or hotsplice did, but
/// nothing relinked), keeping its link-time objects.
fn relink_lto(ctx: &Context<'_>, index: &Index<'_>, target: &str) -> Result<Record, String> {
    let Some(link) = index.link_of(target) else {
        return Err(format!("hotsplice saw no link of {target}"));
    };
    let compiler = if link.compiler.is_empty() {
        "gcc"
    } else {
        link.compiler.as_str()
    };
    let started = SystemTime::now();
    let out = Command::new(compiler)
        .args(&link.arguments)
        .current_dir(&link.directory)
        .envs(ctx.request.env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|e| format!("cannot run {compiler}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "relinking {target} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let output = ctx.ws.tree.join(target);
    let kept = crate::lto::keep_temps(&output, &ctx.ws.root.join("lto-relink"), started)
        .map_err(|e| format!("keeping the link-time objects of {target}: {e}"))?;
    let mut record = link.clone();
    record.ltrans = kept.iter().map(|p| p.display().to_string()).collect();
    Ok(record)
}

/// Whether a compile is C++ with exceptions on (gcc's default for C++).
fn cxx_with_exceptions(record: &Record) -> bool {
    let args = &record.arguments;
    if args.iter().any(|a| a == "-fno-exceptions") {
        return false;
    }
    let forced = args
        .windows(2)
        .filter(|w| w[0] == "-x")
        .map(|w| w[1].as_str())
        .chain(args.iter().filter_map(|a| a.strip_prefix("-x")))
        .any(crate::cmdline::is_cxx_language);
    let by_name = record
        .sources
        .first()
        .and_then(|s| crate::cmdline::language_of(s))
        .is_some_and(crate::cmdline::is_cxx_language);
    let driver = Path::new(&record.compiler)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("++"));
    forced || by_name || driver
}

/// What a patch's build leaves for the state, if the patch is kept.
struct PostState {
    records: Vec<Record>,
    clean: HashMap<PathBuf, Option<Vec<u8>>>,
    /// The link-time code after the patch (LTO targets).
    lto: Option<PathBuf>,
}

fn refusal(kind: &str, symbol: &str, detail: String) -> hotsplice_bundle::Refusal {
    hotsplice_bundle::Refusal {
        kind: kind.to_string(),
        symbol: symbol.to_string(),
        object: String::new(),
        detail,
        functions: Vec::new(),
    }
}

/// Applies one diff on the current tree, with `#line` directives relative to the base.
fn apply_in_series(
    ctx: &Context<'_>,
    state: &State,
    diff_path: &Path,
    text: &str,
) -> Result<(Vec<Patched>, CleanTexts), Error> {
    let tree_dir = &ctx.ws.tree;
    let files = unified::parse(text).map_err(|message| Error::DiffParse {
        path: diff_path.to_path_buf(),
        message,
    })?;
    // Files an earlier patch of the series touched hold `#line` directives: give `patch` their
    // clean text (the files this diff may touch, whatever its strip level), and restore the
    // others afterwards with their times, so the build does not recompile them.
    let maybe_touched: BTreeSet<PathBuf> = files
        .iter()
        .flat_map(|f| {
            (0..3).flat_map(move |p| [stripped(&f.old_path, p), stripped(&f.new_path, p)])
        })
        .collect();
    let mut swapped: Vec<(PathBuf, Vec<u8>, Option<std::fs::FileTimes>)> = Vec::new();
    for (path, clean) in &state.clean {
        if !maybe_touched.contains(path) {
            continue;
        }
        let full = tree_dir.join(path);
        if let (Some(clean), Ok(current)) = (clean, std::fs::read(&full))
            && *clean != current
        {
            let times = std::fs::metadata(&full).ok().and_then(|m| {
                Some(
                    std::fs::FileTimes::new()
                        .set_modified(m.modified().ok()?)
                        .set_accessed(m.accessed().ok()?),
                )
            });
            std::fs::write(&full, clean).map_err(io_error(&full))?;
            swapped.push((path.clone(), current, times));
        }
    }
    let restore = |swapped: &[(PathBuf, Vec<u8>, Option<std::fs::FileTimes>)]| {
        for (path, bytes, times) in swapped {
            let full = tree_dir.join(path);
            let _ = std::fs::write(&full, bytes);
            if let Some(times) = times
                && let Ok(f) = File::options().write(true).open(&full)
            {
                let _ = f.set_times(*times);
            }
        }
    };
    let (level, _) = match run_patch(tree_dir, diff_path, text) {
        Ok(r) => r,
        Err(e) => {
            restore(&swapped);
            return Err(e);
        }
    };
    let touched: BTreeSet<PathBuf> = files
        .iter()
        .flat_map(|f| [stripped(&f.old_path, level), stripped(&f.new_path, level)])
        .collect();
    let untouched: Vec<_> = swapped
        .into_iter()
        .filter(|(path, _, _)| !touched.contains(path))
        .collect();
    restore(&untouched);
    let mut clean = state.clean.clone();
    let mut patched = Vec::new();
    for file in &files {
        let deleted = file.deletes();
        let rel = if deleted {
            stripped(&file.old_path, level)
        } else {
            stripped(&file.new_path, level)
        };
        let full = tree_dir.join(&rel);
        let content = std::fs::read(&full).ok();
        clean.insert(rel.clone(), content.clone());
        patched.push(Patched {
            path: rel.clone(),
            created: file.creates(),
            deleted,
        });
        if deleted || file.creates() || !is_c_like(&rel) {
            continue;
        }
        let Some(content) = content.and_then(|c| String::from_utf8(c).ok()) else {
            continue;
        };
        let base = ctx.ws.pristine.join(&rel);
        let hunks = if state.clean.contains_key(&rel) {
            // Touched before in the series: directives relative to the base's numbering.
            match hunks_between(&base, &full) {
                Some(h) => h,
                None => continue,
            }
        } else {
            file.hunks.clone()
        };
        let updated = unified::with_line_directives(&content, &hunks);
        if updated != content {
            std::fs::write(&full, updated).map_err(io_error(&full))?;
        }
    }
    Ok((patched, clean))
}

/// Copies patched files into the mirrors (copies of the sources the build made): only where
/// the mirror holds a copy of the file (a VPATH build directory holds none).
fn update_mirrors(
    ctx: &Context<'_>,
    pre_dir: &Path,
    patched: &[Patched],
    diff_path: &Path,
) -> Result<BTreeMap<PathBuf, Vec<PathBuf>>, Error> {
    let tree_dir = &ctx.ws.tree;
    let mut copies: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for mirror in &ctx.base.mirrors {
        for file in patched.iter().filter(|f| !f.deleted) {
            let copy = tree_dir.join(mirror).join(&file.path);
            let source = tree_dir.join(&file.path);
            let mirrored = if file.created {
                // A new file goes where its directory was copied.
                let parent = file.path.parent().unwrap_or(Path::new(""));
                std::fs::read_dir(tree_dir.join(parent))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| {
                        e.file_type().is_ok_and(|t| t.is_file())
                            && tree_dir
                                .join(mirror)
                                .join(parent)
                                .join(e.file_name())
                                .is_file()
                    })
            } else {
                copy.is_file()
            };
            if !mirrored || !source.is_file() {
                continue;
            }
            if !file.created && !tree::same_contents(&copy, &pre_dir.join(&file.path)) {
                return Err(Error::Mirror {
                    diff: diff_path.to_path_buf(),
                    file: file.path.clone(),
                    mirror: mirror.clone(),
                });
            }
            std::fs::copy(&source, &copy).map_err(io_error(&copy))?;
            copies
                .entry(file.path.clone())
                .or_default()
                .push(Path::new(mirror).join(&file.path));
        }
    }
    Ok(copies)
}

#[allow(clippy::too_many_arguments)]
fn build_patch(
    ctx: &mut Context<'_>,
    state: &State,
    pre_dir: &Path,
    diff: &Path,
    diff_path: &Path,
    diff_text: &str,
    diff_sha: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(Outcome, PostState), Error> {
    let request = ctx.request;
    let mut timings = Timings::default();
    progress(&format!("applying {}", diff.display()));
    let started = Instant::now();
    let since = SystemTime::now() - Duration::from_secs(1);
    let (patched, clean) = apply_in_series(ctx, state, diff_path, diff_text)?;
    let copies = update_mirrors(ctx, pre_dir, &patched, diff)?;
    // Where each patched file is compiled from: its copies in the mirrors, if any.
    let compiled_as = |path: &Path| -> Vec<String> {
        let mut out = vec![path.to_string_lossy().into_owned()];
        if let Some(c) = copies.get(path) {
            out.extend(c.iter().map(|p| p.to_string_lossy().into_owned()));
        }
        out
    };
    let mirrored_originals: BTreeSet<String> = copies
        .keys()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let patched_paths: Vec<PathBuf> = patched.iter().map(|p| p.path.clone()).collect();
    if ctx.atime {
        access::reset_files(&ctx.ws.tree, &patched_paths).map_err(io_error(&ctx.ws.tree))?;
    }
    timings.prepare = started.elapsed();

    // What each file is, as far as known before building.
    let reads_of = |file: &Patched, post: Option<bool>| Reads {
        by_pre_build: ctx
            .base
            .reads
            .as_ref()
            .map(|r| !file.created && r.contains(file.path.to_string_lossy().as_ref())),
        by_post_build: post,
    };
    let pre_roles: Vec<Role> = patched
        .iter()
        .map(|f| classify::classify(&f.path, reads_of(f, None)))
        .collect();
    let build_changed = pre_roles.contains(&Role::Build)
        || patched
            .iter()
            .zip(&pre_roles)
            .any(|(f, r)| f.deleted && *r == Role::Source);

    progress("post build (incremental)");
    let started = Instant::now();
    let mut warnings = Vec::new();
    let post_records = match ctx.ws.run_build(request, &ctx.base.post_command, "post") {
        Ok(records) => records,
        // A diff that changes the build configuration is refused whatever its build does.
        Err(Error::BuildFailed { log, .. }) if build_changed => {
            warnings.push(format!(
                "the post build failed (see {}); the diff changes the build configuration",
                log.display()
            ));
            progress("post build failed; the diff changes the build configuration");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let mut roles: Vec<Role> = patched
        .iter()
        .map(|f| {
            let post = ctx
                .atime
                .then(|| access::was_read(&ctx.ws.tree, &f.path).unwrap_or(false));
            classify::classify(&f.path, reads_of(f, post))
        })
        .collect();

    // Files whose content the diff or the build changed.
    let mut candidates: BTreeSet<PathBuf> = patched_paths.iter().cloned().collect();
    candidates.extend(tree::modified_since(&ctx.ws.tree, since).map_err(io_error(&ctx.ws.tree))?);
    let changed: BTreeSet<String> = candidates
        .into_iter()
        .filter(|p| !p.starts_with(".hotsplice"))
        .filter(|p| !tree::same_contents(&ctx.ws.tree.join(p), &pre_dir.join(p)))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let changed_code: BTreeSet<String> = changed
        .iter()
        .filter(|p| {
            let path = Path::new(p.as_str());
            classify::classify(
                path,
                Reads {
                    by_pre_build: None,
                    by_post_build: None,
                },
            ) == Role::Source
        })
        .cloned()
        .collect();

    let pre_index = Index::new(&ctx.ws.tree, &state.records);
    let closure = &state.closure;
    let source_of = |object: &str| -> Option<String> {
        let record = pre_index.compile_of(object)?;
        record
            .sources
            .first()
            .and_then(|s| tree::relative(&ctx.ws.tree, &record.directory, s))
    };
    let primary_sources: BTreeSet<String> = pre_index
        .compiles()
        .filter_map(|(o, _)| source_of(o))
        .collect();
    // A C file of a test suite that the build does not compile (a unit test) is a test.
    let post_sources: BTreeSet<String> = Index::new(&ctx.ws.tree, &post_records)
        .compiles()
        .filter_map(|(_, r)| {
            r.sources
                .first()
                .and_then(|s| tree::relative(&ctx.ws.tree, &r.directory, s))
        })
        .collect();
    let uncompiled_test = |path: &str| {
        classify::is_test_path(Path::new(path))
            && !primary_sources.contains(path)
            && !post_sources.contains(path)
    };
    for (file, role) in patched.iter().zip(roles.iter_mut()) {
        if *role == Role::Source && uncompiled_test(&file.path.to_string_lossy()) {
            *role = Role::Test;
        }
    }
    let changed_code: BTreeSet<String> = changed_code
        .into_iter()
        .filter(|p| !uncompiled_test(p))
        .collect();
    let has_generator = roles.contains(&Role::Generator);
    // A changed file that no compile names as its source (a header, an included file, or a
    // mirrored original whose copy is not compiled): which objects read it must be listed.
    let need_deps = has_generator
        || changed_code.iter().any(|f| {
            let copy_compiled = mirrored_originals.contains(f)
                && copies.get(Path::new(f.as_str())).is_some_and(|c| {
                    c.iter()
                        .any(|c| primary_sources.contains(c.to_string_lossy().as_ref()))
                });
            !primary_sources.contains(f) && !copy_compiled
        });

    // Objects of the target that must be recompiled.
    let mut deps_failed: Vec<(String, String)> = Vec::new();
    if need_deps {
        let missing: Vec<String> = closure
            .objects
            .iter()
            .filter(|o| !ctx.deps.contains_key(*o))
            .cloned()
            .collect();
        if !missing.is_empty() {
            progress(&format!(
                "listing the includes of {} object(s) of the target (the diff changes a header or generated file)",
                missing.len()
            ));
        }
        let tree_dir = ctx.ws.tree.clone();
        let env = request.env.clone();
        let found = parallel(&missing, request.jobs, |object| {
            let result = match pre_index.compile_of(object) {
                Some(record) => deps::dependencies(record, &tree_dir, &env),
                None => Err("no compile record".to_string()),
            };
            (object.clone(), result)
        });
        for (object, result) in found {
            match result {
                Ok(list) => {
                    ctx.deps.insert(object, list);
                }
                Err(e) => deps_failed.push((object, e)),
            }
        }
    }
    let depends_on = |object: &str, file: &str| -> bool {
        source_of(object).as_deref() == Some(file)
            || ctx
                .deps
                .get(object)
                .is_some_and(|d| d.iter().any(|x| x == file))
    };
    let post_index = Index::new(&ctx.ws.tree, &post_records);
    let compiled_by_build: BTreeSet<String> = post_index
        .compiles()
        .map(|(o, _)| o.clone())
        .filter(|o| ctx.ws.tree.join(o).is_file())
        .collect();
    let needs: Vec<String> = closure
        .objects
        .iter()
        .filter(|o| changed_code.iter().any(|f| depends_on(o, f)))
        .cloned()
        .collect();
    let mut missing: Vec<String> = needs
        .iter()
        .filter(|o| !compiled_by_build.contains(*o))
        .cloned()
        .collect();
    // Objects the post build compiled with other arguments than the build before it: the
    // post-build command does not reproduce the build's environment (a make variable the
    // packaging passes, say). The diff changes no build file (that is refused), so the
    // recorded arguments are the right ones: recompile with them.
    let mut flags_differ = Vec::new();
    for (object, post) in post_index.compiles() {
        if let Some(pre) = pre_index.compile_of(object)
            && pre.arguments != post.arguments
            && closure.objects.contains(object)
        {
            let first = pre
                .arguments
                .iter()
                .find(|a| !post.arguments.contains(a))
                .or_else(|| post.arguments.iter().find(|a| !pre.arguments.contains(a)))
                .cloned()
                .unwrap_or_default();
            flags_differ.push((object.clone(), first));
            if !missing.contains(object) {
                missing.push(object.clone());
            }
        }
    }
    flags_differ.sort();
    if let Some((object, arg)) = flags_differ.first() {
        warnings.push(format!(
            "the post build compiled {} object(s) with other arguments than the build before \
             it (e.g. {object}: `{arg}`); hotsplice recompiled them with the recorded ones",
            flags_differ.len()
        ));
    }
    missing.sort();
    let mut refusals = Vec::new();
    let mut extra_records = Vec::new();
    let mut recompiled = Vec::new();
    if !missing.is_empty() {
        progress(&format!(
            "recompiling {} object(s) of the target with their recorded commands: {}",
            missing.len(),
            missing.join(", ")
        ));
        let env = request.env.clone();
        let results = parallel(&missing, request.jobs, |object| {
            let Some(record) = pre_index.compile_of(object) else {
                return (object.clone(), Err("no compile record".to_string()));
            };
            let compiler = if record.compiler.is_empty() {
                "gcc"
            } else {
                record.compiler.as_str()
            };
            let out = Command::new(compiler)
                .args(&record.arguments)
                .current_dir(&record.directory)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .output();
            let result = match out {
                Ok(o) if o.status.success() => Ok(record.clone()),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .filter(|l| l.contains("error"))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("; ")),
                Err(e) => Err(format!("cannot run {compiler}: {e}")),
            };
            (object.clone(), result)
        });
        for (object, result) in results {
            match result {
                Ok(record) => {
                    extra_records.push(record);
                    recompiled.push(object);
                }
                Err(e) => refusals.push(refusal(
                    "incomplete-build",
                    &source_of(&object).unwrap_or(object.clone()),
                    format!(
                        "the diff changes what {object} is compiled from, the build did not \
                         recompile it, and recompiling it with its recorded command failed: {e}"
                    ),
                )),
            }
        }
    }
    timings.post_build = started.elapsed();

    // Every file of the diff, accounted for.
    let mut files = Vec::new();
    for (file, role) in patched.iter().zip(&roles) {
        let path = file.path.to_string_lossy().into_owned();
        let (status, detail) = match role {
            Role::Test | Role::Documentation | Role::Unread => (
                "ignored",
                match role {
                    Role::Test => "part of a test suite".to_string(),
                    Role::Documentation => "documentation".to_string(),
                    _ => "the build does not read it".to_string(),
                },
            ),
            Role::Build => {
                let detail = format!(
                    "the diff changes {path}, which the build reads (build configuration): an \
                     incremental rebuild does not reproduce its effect, and a live patch cannot \
                     re-run the build's configuration or register what it adds (modules, files, \
                     flags)"
                );
                refusals.push(refusal("build-changed", &path, detail.clone()));
                ("refused", detail)
            }
            Role::Source if file.deleted => {
                let users: Vec<&String> = closure
                    .objects
                    .iter()
                    .filter(|o| depends_on(o, &path))
                    .collect();
                let _ = &compiled_as;
                if users.is_empty() {
                    (
                        "not-used",
                        "deleted; no object of the target was compiled from it".to_string(),
                    )
                } else {
                    let detail = format!(
                        "the diff deletes {path}, a source of the target: the build itself changes"
                    );
                    refusals.push(refusal("build-changed", &path, detail.clone()));
                    ("refused", detail)
                }
            }
            Role::Source => {
                let effective = compiled_as(&file.path);
                let users: Vec<String> = closure
                    .objects
                    .iter()
                    .filter(|o| effective.iter().any(|e| depends_on(o, e)))
                    .cloned()
                    .collect();
                if !users.is_empty() {
                    ("rebuilt", users.join(", "))
                } else {
                    let compiled: Vec<String> = pre_index
                        .compiles()
                        .filter(|(o, _)| source_of(o).is_some_and(|s| effective.contains(&s)))
                        .map(|(o, _)| o.clone())
                        .collect();
                    if !effective.iter().any(|e| changed.contains(e)) {
                        ("not-used", "unchanged after the build".to_string())
                    } else if !compiled.is_empty() {
                        (
                            "not-in-target",
                            format!("compiled into {}", compiled.join(", ")),
                        )
                    } else if !need_deps {
                        ("not-used", "not compiled by this build".to_string())
                    } else if !deps_failed.is_empty() || !closure.foreign.is_empty() {
                        let why = if deps_failed.is_empty() {
                            format!(
                                "the target links objects the build did not compile ({})",
                                closure.foreign.join(", ")
                            )
                        } else {
                            format!(
                                "the includes of {} could not be listed ({})",
                                deps_failed[0].0, deps_failed[0].1
                            )
                        };
                        let detail = format!(
                            "{path} is not compiled by this build, and hotsplice cannot show it \
                             is not part of the target: {why}"
                        );
                        refusals.push(refusal("incomplete-build", &path, detail.clone()));
                        ("refused", detail)
                    } else {
                        (
                            "not-used",
                            "neither compiled nor included by any object of the target".to_string(),
                        )
                    }
                }
            }
            Role::Generator => {
                let stem = file
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let outputs: Vec<&String> = changed_code
                    .iter()
                    .filter(|c| !patched_paths.iter().any(|p| p.to_string_lossy() == **c))
                    .filter(|c| {
                        let name = Path::new(c.as_str())
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        name.contains(&stem)
                            || name.starts_with("y.tab")
                            || name.starts_with("lex.yy")
                    })
                    .collect();
                if outputs.is_empty() && !file.deleted {
                    let detail = format!(
                        "{path} is a generator input, but the build regenerated nothing from it \
                         (no generated C file changed): the fix would not reach the binary"
                    );
                    refusals.push(refusal("generator-not-run", &path, detail.clone()));
                    ("refused", detail)
                } else {
                    (
                        "regenerated",
                        outputs
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                }
            }
        };
        files.push(FileReport {
            path,
            role: *role,
            status,
            detail,
        });
    }

    // The objects to diff: those of the target recompiled by the build or by hotsplice.
    let started = Instant::now();
    let mut rebuilt = Vec::new();
    let mut not_in_target = Vec::new();
    let mut provenance_objects = Vec::new();
    let mut all_post = post_records.clone();
    all_post.extend(extra_records.iter().cloned());
    let all_index = Index::new(&ctx.ws.tree, &all_post);
    let mut compiled: Vec<(String, &Record)> =
        all_index.compiles().map(|(o, r)| (o.clone(), *r)).collect();
    compiled.sort_by(|a, b| a.0.cmp(&b.0));
    for (object, record) in compiled {
        if !ctx.ws.tree.join(&object).is_file() {
            // Compiled then deleted during the build (a probe): not part of anything.
            continue;
        }
        if !closure.objects.contains(&object) {
            not_in_target.push(object);
            continue;
        }
        provenance_objects.push(ObjectProvenance {
            object: object.clone(),
            source: record
                .sources
                .first()
                .and_then(|s| tree::relative(&ctx.ws.tree, &record.directory, s))
                .unwrap_or_default(),
            arguments: record.arguments.clone(),
            directory: tree::relative(&ctx.ws.tree, &record.directory, ".").unwrap_or_default(),
        });
        rebuilt.push(object);
    }
    for object in &needs {
        if !rebuilt.contains(object) && !recompiled.contains(object) {
            refusals.push(refusal(
                "incomplete-build",
                &source_of(object).unwrap_or(object.clone()),
                format!("{object} must be recompiled after the diff, but it is not in the tree after the build"),
            ));
        }
    }
    // Other binaries the fix changes: those linking objects compiled from changed code (a
    // relink that merely recompiled a caller does not count).
    let changed_elsewhere: Vec<String> = not_in_target
        .iter()
        .filter(|o| {
            all_index
                .compile_of(o)
                .and_then(|r| {
                    r.sources
                        .first()
                        .and_then(|s| tree::relative(&ctx.ws.tree, &r.directory, s))
                })
                .is_some_and(|s| changed_code.contains(&s))
                || ctx
                    .deps
                    .get(*o)
                    .is_some_and(|d| d.iter().any(|f| changed_code.contains(f)))
        })
        .cloned()
        .collect();
    let other_targets: Vec<String> = {
        let links = closure::linked_into(
            &pre_index,
            &ctx.ws.tree,
            &changed_elsewhere,
            &closure.target,
        );
        let mut set: BTreeSet<String> = links.into_values().flatten().collect();
        set.remove(&closure.target);
        set.into_iter().collect()
    };
    // Link-time optimisation: the code is the link's, not the compiles'. Diff the link-time
    // objects of the target's link before and after (relinking if the build did not).
    let mut post_lto = None;
    let mut lto_pair: Option<(PathBuf, PathBuf)> = None;
    let lto_object = format!("{} (link-time code)", closure.target);
    if closure.lto && !rebuilt.is_empty() {
        let post_link = all_index
            .link_of(&closure.target)
            .filter(|l| !l.ltrans.is_empty())
            .cloned();
        let post_link = match post_link {
            Some(l) => Ok(l),
            None => relink_lto(ctx, &pre_index, &closure.target),
        };
        let post_merged = post_link.and_then(|l| {
            merged_ltrans(Some(&l), &ctx.ws.root.join("lto-post.o"), &closure.target)
        });
        match (state.lto.as_ref(), post_merged.as_ref()) {
            (Some(Ok(pre)), Ok(post)) => {
                lto_pair = Some((pre.clone(), post.clone()));
                post_lto = Some(post.clone());
            }
            (Some(Err(why)), _) | (_, Err(why)) => refusals.push(refusal(
                "lto",
                &closure.target,
                format!(
                    "{} is linked with link-time optimisation (-flto), whose code is made at \
                     link time; {why}",
                    closure.target
                ),
            )),
            (None, _) => {}
        }
    }
    let is_lto_object =
        |object: &str| closure.lto && all_index.compile_of(object).is_some_and(|r| r.lto);
    let mut to_diff: Vec<(String, Option<Vec<u8>>, Vec<u8>)> = Vec::new();
    for object in rebuilt.iter().filter(|o| !is_lto_object(o)) {
        let pre = std::fs::read(pre_dir.join(object)).ok();
        let post_path = ctx.ws.tree.join(object);
        let post = std::fs::read(&post_path).map_err(io_error(&post_path))?;
        to_diff.push((object.clone(), pre, post));
    }
    if let Some((pre, post)) = &lto_pair {
        let pre = std::fs::read(pre).map_err(io_error(pre))?;
        let post = std::fs::read(post).map_err(io_error(post))?;
        to_diff.push((lto_object.clone(), Some(pre), post));
    }
    progress(&format!("diffing {} rebuilt object(s)", to_diff.len()));
    let mut report = Report::default();
    let mut objects = Vec::new();
    for (object, pre, post) in &to_diff {
        let (diff, set): (ObjectDiff, _) = patch_objects(object, pre.as_deref(), Some(post))
            .map_err(|source| Error::Objdiff {
                object: object.clone(),
                source,
            })?;
        refusals.extend(convert::refusals(&diff));
        warnings.extend(diff.warnings.iter().map(|w| format!("{object}: {w}")));
        if diff.has_changes() {
            let patch = convert::object_patch(&diff, &set);
            let cxx = if *object == lto_object {
                closure
                    .objects
                    .iter()
                    .any(|o| pre_index.compile_of(o).is_some_and(cxx_with_exceptions))
            } else {
                all_index
                    .compile_of(object)
                    .is_some_and(cxx_with_exceptions)
            };
            if cxx {
                for (function, why) in crate::unwind::may_unwind(&patch) {
                    refusals.push(hotsplice_bundle::Refusal {
                        kind: "cxx-unwind".to_string(),
                        symbol: function.clone(),
                        object: object.clone(),
                        detail: format!(
                            "C++ exceptions may unwind through {function} ({why}): hotsplice \
                             apply does not register unwind tables (.eh_frame) for patch code, \
                             so a throw through the new code would end the program"
                        ),
                        functions: vec![function],
                    });
                }
            }
            objects.push(patch);
        }
        report.objects.push(diff);
    }
    timings.diff = started.elapsed();

    // Stacking on earlier bundles of the series.
    let mut stacks_on = BTreeSet::new();
    let mut needs_new = BTreeMap::new();
    for object in &objects {
        for r in &object.replacements {
            if let Some(id) = state.replaced.get(&r.name) {
                stacks_on.insert(id.clone());
            }
            if let Some(id) = state.new_symbols.get(&r.name) {
                needs_new.insert(r.name.clone(), id.clone());
            }
        }
        for piece in &object.pieces {
            for reloc in &piece.relocs {
                if let Link::Symbol { symbol } = &reloc.target
                    && let Some(id) = state.new_symbols.get(&symbol.name)
                {
                    needs_new.insert(symbol.name.clone(), id.clone());
                }
            }
        }
    }
    for (name, id) in needs_new {
        refusals.push(refusal(
            "series-new-symbol",
            &name,
            format!(
                "{name} is new in the earlier patch {id} of this series: it exists only in that \
                 patch's memory, which hotsplice apply does not link other patches against"
            ),
        ));
    }

    let created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id_seed = format!(
        "{diff_sha}\n{}\n{}\n{}\n",
        ctx.target.sha256.clone().unwrap_or_default(),
        ctx.source_id,
        state.chain.join(" ")
    );
    let bundle = Bundle {
        id: format!("hs-{}", &sha256_hex(id_seed.as_bytes())[..12]),
        target: ctx.target.clone(),
        objects,
        refusals,
        warnings,
        provenance: Provenance {
            diff_name: diff
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            diff_sha256: diff_sha.to_string(),
            source_id: ctx.source_id.clone(),
            compiler: ctx.compiler.clone(),
            build_command: request.build_command.clone(),
            objects: provenance_objects,
            created_unix,
            hotsplice_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    };
    let mut records = post_records;
    records.extend(extra_records);
    Ok((
        Outcome {
            diff: diff.to_path_buf(),
            bundle,
            report,
            pre_cached: false,
            rebuilt,
            recompiled,
            not_in_target,
            other_targets,
            files,
            stacks_on: stacks_on.into_iter().collect(),
            timings,
        },
        PostState {
            records,
            clean,
            lto: post_lto,
        },
    ))
}
