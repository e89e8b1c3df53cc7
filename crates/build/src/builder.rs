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
//!
//! This module holds the series loop; `request` the public types, `state` what a series
//! carries from patch to patch, `workspace` the cache entry and the pre build, `patching` the
//! application of a diff, `step` one patch (steps 2 to 4).

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hotsplice_bundle::sha256_hex;
use hotsplice_objdiff::Status;

use crate::closure::Index;
use crate::patching::{applies_after, parse_diff};
use crate::record::RecordKind;
use crate::request::{Outcome, PatchResult, Request, Series, Verdict};
use crate::state::{Context, PostState, State};
use crate::step::{build_patch, merged_ltrans};
use crate::workspace::{Workspace, base_for_target, make_shims, pre_build};
use crate::{Error, access, identity, io_error, shim, tree};

fn compiler_version() -> String {
    Command::new("gcc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown compiler".to_string())
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
        parse_diff(diff, &text)?;
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
