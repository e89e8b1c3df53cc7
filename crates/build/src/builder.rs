//! `hotsplice build`: from a source tree, its build command and a unified diff, to a bundle.
//!
//! 1. The **pre build** runs the project's own build command in a cached copy of the source
//!    tree, at a fixed path, with the compiler shims first in `PATH`. The built tree is kept
//!    (`pristine/`) under a key made of the source's content, the build command and the
//!    compiler, so the next patch for the same source skips it.
//! 2. For a patch, the pristine tree is copied back to the same fixed path (so paths baked
//!    into objects match), the diff is applied with `patch`, `#line` directives keep
//!    `__LINE__` stable below each hunk, and the build command runs again: only what the
//!    diff touches is recompiled.
//! 3. The objects the shim saw recompiled are paired with their pre-build versions and
//!    diffed; the patch sets of those linked into the target become the bundle.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hotsplice_bundle::{Bundle, ObjectProvenance, Provenance, convert, sha256_hex};
use hotsplice_objdiff::{ObjectDiff, Report, Status, patch_objects};

use crate::record::{Record, RecordKind, read_log};
use crate::{Error, debian, identity, shim, tree, unified};

/// What to build.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source tree (never modified).
    pub source: PathBuf,
    /// The unified diff.
    pub diff: PathBuf,
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
    /// Parallel jobs (`MAKEFLAGS=-jN`).
    pub jobs: usize,
    /// The program the compiler shims run (the hotsplice binary).
    pub shim_program: PathBuf,
}

/// How long each step took.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// The pre build (zero when cached).
    pub pre_build: Duration,
    /// Restoring the pristine tree and applying the diff.
    pub prepare: Duration,
    /// The post (incremental) build.
    pub post_build: Duration,
    /// Diffing the rebuilt objects.
    pub diff: Duration,
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The bundle (its `refusals` say whether it can be applied).
    pub bundle: Bundle,
    /// The object diff of every rebuilt object of the target.
    pub report: Report,
    /// Whether the pre build came from the cache.
    pub pre_cached: bool,
    /// Objects recompiled by the post build (relative to the tree).
    pub rebuilt: Vec<String>,
    /// Rebuilt objects that are not linked into the target (ignored).
    pub not_in_target: Vec<String>,
    /// Other binaries of the build those objects are linked into (relative to the tree): the
    /// targets to build a patch for instead (a dynamic module, a library).
    pub other_targets: Vec<String>,
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
    for name in shim::COMPILER_NAMES {
        let link = dir.join(name);
        std::os::unix::fs::symlink(program, &link).map_err(io_error(&link))?;
    }
    Ok(())
}

struct Workspace {
    root: PathBuf,
    tree: PathBuf,
    pristine: PathBuf,
    shims: PathBuf,
}

impl Workspace {
    fn run_build(
        &self,
        request: &Request,
        command: &str,
        phase: &'static str,
        log: &Path,
    ) -> Result<Vec<Record>, Error> {
        let _ = std::fs::remove_file(log);
        let output_log = self.root.join(format!("{phase}-build.log"));
        let out = File::create(&output_log).map_err(io_error(&output_log))?;
        let err = out.try_clone().map_err(io_error(&output_log))?;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.shims.clone()];
        paths.extend(std::env::split_paths(&path));
        let joined = std::env::join_paths(paths).map_err(|e| Error::Io {
            path: self.shims.clone(),
            source: std::io::Error::other(e),
        })?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.tree)
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", joined)
            .env("CC", "gcc")
            .env("CXX", "g++")
            .env("MAKEFLAGS", format!("-j{}", request.jobs.max(1)))
            .env(shim::ENV_DIR, &self.shims)
            .env(shim::ENV_LOG, log)
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
        let text = std::fs::read_to_string(log).unwrap_or_default();
        Ok(read_log(&text).0)
    }
}

/// A path made relative to the tree root, normalised (`a/./b/../c` → `a/c`); `None` outside.
fn tree_relative(root: &Path, directory: &str, path: &str) -> Option<String> {
    let joined = Path::new(directory).join(path);
    let mut parts: Vec<String> = Vec::new();
    for c in joined.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => parts.clear(),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
        }
    }
    let absolute = PathBuf::from("/").join(parts.join("/"));
    absolute
        .strip_prefix(root)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Applies the diff in `tree`: finds the strip level with a dry run, applies it, and adds
/// `#line` directives to the patched C files. Returns the patched files (tree-relative).
pub fn apply_diff(tree_dir: &Path, diff: &Path, text: &str) -> Result<Vec<PathBuf>, Error> {
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
        .args(["--batch", "--forward", "--silent", "-i"])
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
    let mut patched = Vec::new();
    for file in files.iter().filter(|f| !f.deletes()) {
        let stripped: PathBuf = Path::new(&file.new_path).components().skip(level).collect();
        patched.push(stripped.clone());
        if file.creates() {
            continue;
        }
        let is_c = ["c", "h", "cc", "cpp", "cxx", "hh", "hpp"]
            .iter()
            .any(|e| stripped.extension().is_some_and(|x| x == *e));
        if !is_c {
            continue;
        }
        let path = tree_dir.join(&stripped);
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

/// Objects linked into the target, relative to the tree, from the pre build's link record.
/// `None` when no link of the target was seen or it links archives (then every object counts).
fn target_objects(records: &[Record], root: &Path, target: &str) -> Option<BTreeSet<String>> {
    let link = records.iter().rev().find(|r| {
        r.kind == RecordKind::Link
            && r.output
                .as_deref()
                .and_then(|o| tree_relative(root, &r.directory, o))
                .as_deref()
                == Some(target)
    })?;
    if link.inputs.iter().any(|i| i.ends_with(".a")) {
        return None;
    }
    Some(
        link.inputs
            .iter()
            .filter(|i| i.ends_with(".o"))
            .filter_map(|i| tree_relative(root, &link.directory, i))
            .collect(),
    )
}

/// The binaries (other than the target) that link any of `objects`.
fn linked_into(records: &[Record], root: &Path, objects: &[String]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for link in records.iter().filter(|r| r.kind == RecordKind::Link) {
        let inputs: BTreeSet<String> = link
            .inputs
            .iter()
            .filter_map(|i| tree_relative(root, &link.directory, i))
            .collect();
        if objects.iter().any(|o| inputs.contains(o))
            && let Some(output) = link
                .output
                .as_deref()
                .and_then(|o| tree_relative(root, &link.directory, o))
        {
            out.insert(output);
        }
    }
    out.into_iter().collect()
}

/// Builds the live patch of `request`, reporting progress through `progress`.
pub fn build(request: &Request, progress: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
    let source = request
        .source
        .canonicalize()
        .map_err(io_error(&request.source))?;
    let diff_text = std::fs::read(&request.diff).map_err(io_error(&request.diff))?;
    // `patch` runs inside the build tree: give it an absolute path.
    let diff_path = request
        .diff
        .canonicalize()
        .map_err(io_error(&request.diff))?;
    let diff_sha = sha256_hex(&diff_text);
    let diff_string = String::from_utf8_lossy(&diff_text).into_owned();
    unified::parse(&diff_string).map_err(|message| Error::DiffParse {
        path: request.diff.clone(),
        message,
    })?;

    progress("hashing the source tree");
    let source_id = tree::content_id(&source).map_err(io_error(&source))?;
    let compiler = compiler_version();
    let key = sha256_hex(
        format!(
            "{source_id}\n{}\n{:?}\n{compiler}\nshim-1 {}\n",
            request.build_command,
            request.env,
            shim::SECTION_FLAGS.join(" ")
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
    let ws = Workspace {
        tree: root.join("tree"),
        pristine: root.join("pristine"),
        shims: root.join("shims"),
        root: root.clone(),
    };
    let lock_path = root.join("lock");
    let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
    lock.lock().map_err(io_error(&lock_path))?;
    make_shims(&ws.shims, &request.shim_program)?;

    let mut timings = Timings::default();
    let complete = root.join("complete");
    let pre_log = root.join("pre.jsonl");
    let pre_cached = complete.exists() && ws.pristine.is_dir();
    if !pre_cached {
        progress(&format!(
            "pre build: `{}` in a copy of {} (cached for later patches)",
            request.build_command,
            source.display()
        ));
        let started = Instant::now();
        let _ = std::fs::remove_file(&complete);
        tree::remove(&ws.tree).map_err(io_error(&ws.tree))?;
        tree::remove(&ws.pristine).map_err(io_error(&ws.pristine))?;
        tree::copy(&source, &ws.tree).map_err(io_error(&ws.tree))?;
        let records = ws.run_build(request, &request.build_command, "pre", &pre_log)?;
        if !records.iter().any(|r| r.kind == RecordKind::Compile) {
            return Err(Error::NoCompilations {
                command: request.build_command.clone(),
            });
        }
        tree::copy(&ws.tree, &ws.pristine).map_err(io_error(&ws.pristine))?;
        File::create(&complete).map_err(io_error(&complete))?;
        timings.pre_build = started.elapsed();
    } else {
        progress("pre build: cached");
    }
    let pre_records = read_log(&std::fs::read_to_string(&pre_log).unwrap_or_default()).0;
    let (target_path, post_command, mirrors) = if request.debian {
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
    let target_bytes =
        std::fs::read(ws.pristine.join(&target_path)).map_err(|_| Error::TargetMissing {
            target: target_path.clone(),
            tree: ws.pristine.clone(),
        })?;
    let target =
        identity::identify(&target_path, &target_bytes).ok_or_else(|| Error::TargetNotElf {
            target: target_path.clone(),
        })?;

    progress(&format!("applying {}", request.diff.display()));
    let started = Instant::now();
    tree::remove(&ws.tree).map_err(io_error(&ws.tree))?;
    tree::copy(&ws.pristine, &ws.tree).map_err(io_error(&ws.tree))?;
    let patched = apply_diff(&ws.tree, &diff_path, &diff_string)?;
    // Copies of the sources the build made (`debian/build-bin/src/...`) get the patched
    // files too, including files the diff creates (where the directory was copied).
    for mirror in &mirrors {
        for file in &patched {
            let copy = ws.tree.join(mirror).join(file);
            let source = ws.tree.join(file);
            if source.is_file() && copy.parent().is_some_and(Path::is_dir) {
                std::fs::copy(&source, &copy).map_err(io_error(&copy))?;
            }
        }
    }
    timings.prepare = started.elapsed();

    // A diff that changes the build configuration (module lists, configure, Makefiles) is
    // not reproduced by an incremental rebuild, and its effect (new modules, files, flags)
    // could not be applied to a running program anyway.
    let build_refusals: Vec<hotsplice_bundle::Refusal> = patched
        .iter()
        .filter(|path| unified::file_kind(path) == unified::FileKind::Build)
        .map(|path| hotsplice_bundle::Refusal {
            kind: "build-changed".to_string(),
            symbol: path.display().to_string(),
            object: String::new(),
            detail: format!(
                "the diff changes the build configuration ({}): a live patch cannot re-run the \
                 build's configuration or register what it adds (modules, files, flags)",
                path.display()
            ),
            functions: Vec::new(),
        })
        .collect();

    progress("post build (incremental)");
    let started = Instant::now();
    let post_log = root.join("post.jsonl");
    let post_records = match ws.run_build(request, &post_command, "post", &post_log) {
        Ok(records) => records,
        // Without re-running the configuration the build may well fail: the refusal is the
        // answer, not the build error.
        Err(Error::BuildFailed { .. }) if !build_refusals.is_empty() => {
            progress("post build failed; the diff changes the build configuration");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    timings.post_build = started.elapsed();

    let started = Instant::now();
    let linked = target_objects(&pre_records, &ws.tree, &target_path);
    let mut rebuilt = Vec::new();
    let mut not_in_target = Vec::new();
    let mut provenance_objects = Vec::new();
    for record in post_records
        .iter()
        .filter(|r| r.kind == RecordKind::Compile)
    {
        let Some(object) = record
            .output
            .as_deref()
            .and_then(|o| tree_relative(&ws.tree, &record.directory, o))
        else {
            continue;
        };
        if rebuilt.contains(&object) {
            continue;
        }
        if linked.as_ref().is_some_and(|l| !l.contains(&object)) {
            not_in_target.push(object);
            continue;
        }
        provenance_objects.push(ObjectProvenance {
            object: object.clone(),
            source: record
                .sources
                .first()
                .and_then(|s| tree_relative(&ws.tree, &record.directory, s))
                .unwrap_or_default(),
            arguments: record.arguments.clone(),
            directory: tree_relative(&ws.tree, &record.directory, ".").unwrap_or_default(),
        });
        rebuilt.push(object);
    }
    let other_targets = linked_into(&pre_records, &ws.tree, &not_in_target);
    progress(&format!("diffing {} rebuilt object(s)", rebuilt.len()));
    let mut report = Report::default();
    let mut objects = Vec::new();
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    for object in &rebuilt {
        let pre_path = ws.pristine.join(object);
        let post_path = ws.tree.join(object);
        let pre = std::fs::read(&pre_path).ok();
        let post = std::fs::read(&post_path).map_err(io_error(&post_path))?;
        let (diff, set): (ObjectDiff, _) = patch_objects(object, pre.as_deref(), Some(&post))
            .map_err(|source| Error::Objdiff {
                object: object.clone(),
                source,
            })?;
        refusals.extend(convert::refusals(&diff));
        warnings.extend(diff.warnings.iter().map(|w| format!("{object}: {w}")));
        if diff.has_changes() {
            objects.push(convert::object_patch(&diff, &set));
        }
        report.objects.push(diff);
    }
    timings.diff = started.elapsed();

    let created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id_seed = format!(
        "{diff_sha}\n{}\n{source_id}\n",
        target.sha256.clone().unwrap_or_default()
    );
    refusals.extend(build_refusals);
    let bundle = Bundle {
        id: format!("hs-{}", &sha256_hex(id_seed.as_bytes())[..12]),
        target,
        objects,
        refusals,
        warnings,
        provenance: Provenance {
            diff_name: request
                .diff
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            diff_sha256: diff_sha,
            source_id,
            compiler,
            build_command: request.build_command.clone(),
            objects: provenance_objects,
            created_unix,
            hotsplice_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    };
    Ok(Outcome {
        bundle,
        report,
        pre_cached,
        rebuilt,
        not_in_target,
        other_targets,
        timings,
    })
}
