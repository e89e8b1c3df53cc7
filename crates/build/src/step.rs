//! One patch of a series: apply it, run the incremental build, account for every file it
//! changes (recompiling what the build did not), diff the target's rebuilt objects (or, for
//! a link-time optimised target, its link-time code) and assemble the bundle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hotsplice_bundle::{Bundle, Link, ObjectProvenance, Provenance, convert, sha256_hex};
use hotsplice_objdiff::{ObjectDiff, RefusalKind, Report, patch_objects};

use crate::classify::{self, Reads, Role};
use crate::closure::{self, Index};
use crate::patching::{Patched, apply_in_series, update_mirrors};
use crate::record::Record;
use crate::request::{FileReport, Outcome, Timings};
use crate::state::{Context, PostState, State};
use crate::{Error, access, deps, io_error, tree};

/// Runs `f` over `items` on up to `jobs` threads; results in order.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
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

/// The link-time code of `link` (its ltrans objects merged) at `out`, or why there is none.
pub(crate) fn merged_ltrans(
    link: Option<&Record>,
    out: &Path,
    target: &str,
) -> Result<PathBuf, String> {
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
pub(crate) fn relink_lto(
    ctx: &Context<'_>,
    index: &Index<'_>,
    target: &str,
) -> Result<Record, String> {
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
pub(crate) fn cxx_with_exceptions(record: &Record) -> bool {
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

pub(crate) fn refusal(
    kind: RefusalKind,
    symbol: &str,
    detail: String,
) -> hotsplice_bundle::Refusal {
    hotsplice_bundle::Refusal {
        kind,
        symbol: symbol.to_string(),
        object: String::new(),
        detail,
        functions: Vec::new(),
    }
}

/// Functions of *other* objects of the program that the new code calls or takes the address
/// of: their pre code goes into the bundle (`referenced`) beside that of the object's own, so
/// that apply can prove them by run-pre matching in a process of another build — a function of
/// the same name with another signature there would be called with the wrong arguments.
/// Functions of shared libraries are not the program's and stay bound by name.
fn cross_object_references(
    objects: &mut [hotsplice_bundle::ObjectPatch],
    closure: &BTreeSet<String>,
    pre_dir: &Path,
    lto_object: &str,
) {
    let mut read: BTreeMap<&str, Option<Vec<u8>>> = BTreeMap::new();
    for object in objects.iter_mut() {
        if object.object == lto_object {
            continue; // the link-time object holds every function of the program
        }
        let mut wanted: Vec<String> = Vec::new();
        for piece in &object.pieces {
            for reloc in &piece.relocs {
                let Link::Symbol { symbol } = &reloc.target else {
                    continue;
                };
                let known = |name: &str| {
                    object.replacements.iter().any(|r| r.name == name)
                        || object.referenced.iter().any(|r| r.name == name)
                        || object
                            .pieces
                            .iter()
                            .any(|p| p.symbol.as_deref() == Some(name))
                };
                if !symbol.local
                    && matches!(
                        symbol.class,
                        hotsplice_bundle::SymbolClass::Function
                            | hotsplice_bundle::SymbolClass::Unknown
                    )
                    && !known(&symbol.name)
                    && !wanted.contains(&symbol.name)
                {
                    wanted.push(symbol.name.clone());
                }
            }
        }
        for name in wanted {
            for other in closure.iter().filter(|o| **o != object.object) {
                let bytes = read
                    .entry(other.as_str())
                    .or_insert_with(|| std::fs::read(pre_dir.join(other)).ok());
                let Some(bytes) = bytes.as_deref() else {
                    continue;
                };
                // Cheap test first: the name must be in the object's string table.
                if !bytes
                    .windows(name.len() + 1)
                    .any(|w| w[..name.len()] == *name.as_bytes() && w[name.len()] == 0)
                {
                    continue;
                }
                if let Ok(Some(found)) =
                    hotsplice_objdiff::patchset::function_pre_code(bytes, &name, false)
                {
                    object.referenced.push(convert::referenced(&found));
                    break;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn build_patch(
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
                    RefusalKind::IncompleteBuild,
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
                refusals.push(refusal(RefusalKind::BuildChanged, &path, detail.clone()));
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
                    refusals.push(refusal(RefusalKind::BuildChanged, &path, detail.clone()));
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
                        refusals.push(refusal(RefusalKind::IncompleteBuild, &path, detail.clone()));
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
                    refusals.push(refusal(RefusalKind::GeneratorNotRun, &path, detail.clone()));
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
                RefusalKind::IncompleteBuild,
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
                RefusalKind::Lto,
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
                        kind: RefusalKind::CxxUnwind,
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
    cross_object_references(&mut objects, &closure.objects, pre_dir, &lto_object);
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
        // Calls into (or data of) code new in an earlier bundle: apply finds it in that
        // patch's memory, so the bundle needs the earlier one applied first.
        for piece in &object.pieces {
            for reloc in &piece.relocs {
                if let Link::Symbol { symbol } = &reloc.target
                    && let Some(id) = state.new_symbols.get(&symbol.name)
                {
                    stacks_on.insert(id.clone());
                }
            }
        }
    }
    for (name, id) in needs_new {
        refusals.push(refusal(
            RefusalKind::SeriesNewSymbol,
            &name,
            format!(
                "{name} is new in the earlier patch {id} of this series and changed again here: \
                 apply locates the functions it replaces in the program, not in another patch's \
                 memory; fold the two patches into one"
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
    // References to globals the link made local (version scripts, hidden visibility).
    let target_path = ctx.ws.pristine.join(&ctx.base.target);
    let local_only = std::fs::read(&target_path)
        .map(|b| crate::binding::local_only(&b))
        .unwrap_or_default();
    crate::binding::localize(&mut objects, &local_only);
    let refusals = merge_refusals(refusals);
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

/// One refusal per cause: a header's struct change is found again in every object that
/// includes it (60 objects of libcurl for one `urldata.h` member), the same words each time.
/// Those are kept once (the first object named), with the union of their functions.
fn merge_refusals(refusals: Vec<hotsplice_bundle::Refusal>) -> Vec<hotsplice_bundle::Refusal> {
    let mut out: Vec<hotsplice_bundle::Refusal> = Vec::with_capacity(refusals.len());
    for r in refusals {
        match out
            .iter_mut()
            .find(|o| o.kind == r.kind && o.symbol == r.symbol && o.detail == r.detail)
        {
            Some(same) => {
                for f in r.functions {
                    if !same.functions.contains(&f) {
                        same.functions.push(f);
                    }
                }
            }
            None => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod merge_tests {
    use super::merge_refusals;
    use hotsplice_bundle::Refusal;

    fn refusal(object: &str, detail: &str, functions: &[&str]) -> Refusal {
        Refusal {
            kind: hotsplice_objdiff::RefusalKind::LayoutChanged,
            symbol: "struct conn".into(),
            object: object.into(),
            detail: detail.into(),
            functions: functions.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn the_same_cause_found_in_several_objects_is_one_refusal() {
        let merged = merge_refusals(vec![
            refusal("a.o", "member x added", &["f"]),
            refusal("b.o", "member x added", &["g", "f"]),
            refusal("c.o", "member y moved", &["h"]),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].object, "a.o");
        assert_eq!(merged[0].functions, ["f", "g"]);
        assert_eq!(merged[1].detail, "member y moved");
    }
}
