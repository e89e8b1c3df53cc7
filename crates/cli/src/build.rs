//! `hotsplice build`: turn a source tree + unified diff (or a series of them) into live-patch
//! bundles.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow};
use hotsplice_build::{Error as BuildError, Outcome, PatchResult, Request, Verdict};
use hotsplice_objdiff::{RefusalKind, Status};

use crate::args::{BuildArgs, HeaderArgs, default_cache};
use crate::output;
use crate::{EXIT_OK, EXIT_REFUSED, ErrorClass, Exit};

/// The class of a build error.
fn class_of(error: &BuildError) -> ErrorClass {
    match error {
        BuildError::DiffParse { .. }
        | BuildError::DiffDoesNotApply { .. }
        | BuildError::TargetMissing { .. }
        | BuildError::TargetNotElf { .. }
        | BuildError::TargetNotLinked { .. }
        | BuildError::TreeHasOutputs { .. }
        | BuildError::NoCompilations { .. }
        | BuildError::Mirror { .. } => ErrorClass::BadInput,
        BuildError::DependsOnRefused { .. } => ErrorClass::Refused,
        _ => ErrorClass::Environment,
    }
}

fn exit_for(error: BuildError) -> Exit {
    Exit {
        class: class_of(&error),
        error: anyhow::Error::new(error),
    }
}

fn env_exit(error: anyhow::Error) -> Exit {
    Exit::environment(error)
}

/// `hotsplice build` (a user-space bundle; `--kernel` is `kernel::build`).
pub fn run(args: &BuildArgs) -> Result<ExitCode, Exit> {
    run_user(args)
}

/// Checks `-o` before a build that takes minutes: a file in an existing directory, or (for a
/// series) a directory that exists or can be made.
fn check_output(output: &Path, series: bool) -> Result<(), Exit> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if series {
        if output.exists() && !output.is_dir() {
            return Err(Exit::bad_input(anyhow!(
                "-o {}: a series writes one bundle per patch into a directory, and this is a file",
                output.display()
            )));
        }
        if !output.exists() && !parent.is_dir() {
            return Err(Exit::bad_input(anyhow!(
                "-o {}: its parent directory {} does not exist",
                output.display(),
                parent.display()
            )));
        }
        return std::fs::create_dir_all(output)
            .with_context(|| format!("creating {}", output.display()))
            .map_err(Exit::bad_input);
    }
    if output.is_dir() {
        return Err(Exit::bad_input(anyhow!(
            "-o {}: is a directory (give the bundle's file name)",
            output.display()
        )));
    }
    if !parent.is_dir() {
        return Err(Exit::bad_input(anyhow!(
            "-o {}: the directory {} does not exist",
            output.display(),
            parent.display()
        )));
    }
    let probe = parent.join(format!(".hotsplice-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| {
            format!(
                "-o {}: cannot write in {}",
                output.display(),
                parent.display()
            )
        })
        .map_err(Exit::bad_input)?;
    // Only a probe: a leftover empty file is harmless.
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// The diffs of `--series` arguments.
fn series_diffs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Exit> {
    let mut out = Vec::new();
    for path in paths {
        let is_patch = path.is_file()
            && std::fs::read(path)
                .map(|b| hotsplice_srcpatch::parse(&String::from_utf8_lossy(&b)).is_ok())
                .unwrap_or(false);
        if is_patch {
            out.push(path.clone());
        } else {
            out.extend(hotsplice_build::series::resolve(path).map_err(exit_for)?);
        }
    }
    Ok(out)
}

fn run_user(args: &BuildArgs) -> Result<ExitCode, Exit> {
    let target = args.target.clone().unwrap_or_default();
    // Read the key and check -o before a build that takes minutes.
    let key = args
        .sign
        .as_deref()
        .map(crate::trust::read_secret)
        .transpose()?;
    let many = !args.series.is_empty() || args.update_to.is_some();
    check_output(&args.output, many)?;
    let shim_program = std::env::current_exe()
        .context("locating the hotsplice executable for the compiler shims")
        .map_err(env_exit)?;
    let cache = args.cache.clone().unwrap_or_else(default_cache);
    let started = Instant::now();
    let mut progress = |step: &str| {
        eprintln!(
            "hotsplice build [{:6.1}s] {step}",
            started.elapsed().as_secs_f64()
        );
    };
    let mut env = Vec::new();
    for pair in &args.env {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Exit::bad_input(anyhow!(
                "--env {pair}: expected NAME=VALUE"
            )));
        };
        env.push((k.to_string(), v.to_string()));
    }
    let request = Request {
        source: PathBuf::new(),
        diffs: if args.series.is_empty() {
            vec![args.diff()]
        } else {
            series_diffs(&args.series)?
        },
        target,
        build_command: args.build_command.clone(),
        post_build_command: args.post_build_command.clone(),
        mirrors: args.mirrors.clone(),
        env,
        debian: false,
        cache: cache.clone(),
        jobs: args.jobs,
        shim_program,
    };
    let request = match (&args.source, &args.debian) {
        (Some(source), _) => Request {
            source: source.clone(),
            ..request
        },
        (None, Some(spec)) => hotsplice_build::debian::request(
            spec,
            args.update_to.as_deref(),
            request,
            &mut progress,
        )
        .map_err(exit_for)?,
        (None, None) => unreachable!("clap requires --source or --debian"),
    };
    if many {
        return run_series(args, &request, key.as_ref(), started, &mut progress);
    }
    let outcome = hotsplice_build::build(&request, &mut progress).map_err(exit_for)?;
    let verdict = outcome.verdict();
    if verdict == Verdict::Written {
        write_bundle(&outcome, &args.output, key.as_ref())?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut report = patch_report(&outcome, &args.output, key.as_ref());
        report.seconds.total = Some(started.elapsed().as_secs_f64());
        output::emit(&mut out, &report)?;
    } else {
        crate::diff::write_human(&mut out, &outcome.report, false)?;
        write_accounting(&mut out, &outcome, false)?;
        writeln!(
            out,
            "{}",
            verdict_line(&outcome, &args.output, key.as_ref())
        )?;
    }
    Ok(ExitCode::from(match verdict {
        Verdict::Written => EXIT_OK,
        _ => EXIT_REFUSED,
    }))
}

fn write_bundle(
    outcome: &Outcome,
    path: &Path,
    key: Option<&hotsplice_bundle::signature::SecretKey>,
) -> Result<(), Exit> {
    let bytes = hotsplice_bundle::write_signed(&outcome.bundle, key)
        .context("sealing the bundle")
        .map_err(env_exit)?;
    std::fs::write(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
        .map_err(env_exit)
}

fn replaced(outcome: &Outcome) -> Vec<String> {
    outcome
        .bundle
        .objects
        .iter()
        .flat_map(|o| o.replacements.iter().map(|r| r.name.clone()))
        .collect()
}

fn new_functions(outcome: &Outcome) -> Vec<String> {
    outcome
        .report
        .objects
        .iter()
        .flat_map(|o| &o.functions)
        .filter(|f| f.status == Status::New)
        .map(|f| f.name.clone())
        .collect()
}

/// The report of one built patch.
fn patch_report(
    outcome: &Outcome,
    output: &Path,
    key: Option<&hotsplice_bundle::signature::SecretKey>,
) -> output::PatchReport {
    let bundle = &outcome.bundle;
    let written = outcome.verdict() == Verdict::Written;
    let t = &outcome.timings;
    output::PatchReport {
        outcome: outcome.verdict().into(),
        diff: outcome.diff.display().to_string(),
        bundle: written.then(|| output.display().to_string()),
        signed_by: key.filter(|_| written).map(|k| k.public().id()),
        id: bundle.id.clone(),
        target: bundle.target.path.clone(),
        replaced: replaced(outcome),
        new: new_functions(outcome),
        refusals: bundle.refusals.iter().map(output::Refusal::from).collect(),
        warnings: bundle.warnings.clone(),
        files: outcome
            .files
            .iter()
            .map(|f| output::FileReport {
                path: f.path.clone(),
                role: f.role.as_str().to_string(),
                status: f.status.to_string(),
                detail: f.detail.clone(),
            })
            .collect(),
        ignored: outcome
            .files
            .iter()
            .filter(|f| f.status == "ignored")
            .map(|f| f.path.clone())
            .collect(),
        rebuilt: outcome.rebuilt.clone(),
        recompiled: outcome.recompiled.clone(),
        not_in_target: outcome.not_in_target.clone(),
        other_targets: outcome.other_targets.clone(),
        stacks_on: outcome.stacks_on.clone(),
        pre_cached: outcome.pre_cached,
        seconds: output::PatchSeconds {
            pre_build: t.pre_build.as_secs_f64(),
            prepare: t.prepare.as_secs_f64(),
            post_build: t.post_build.as_secs_f64(),
            diff: t.diff.as_secs_f64(),
            total: None,
        },
    }
}

fn write_accounting(
    out: &mut impl Write,
    outcome: &Outcome,
    all_refusals: bool,
) -> std::io::Result<()> {
    for f in &outcome.files {
        writeln!(
            out,
            "  {} ({}): {}{}",
            f.path,
            f.role.as_str(),
            f.status,
            if f.detail.is_empty() || f.status == "refused" {
                String::new()
            } else {
                format!(" — {}", f.detail)
            }
        )?;
    }
    if !outcome.recompiled.is_empty() {
        writeln!(
            out,
            "recompiled by hotsplice (the build did not): {}",
            outcome.recompiled.join(", ")
        )?;
    }
    if !outcome.not_in_target.is_empty() {
        writeln!(
            out,
            "not linked into {} (ignored): {}",
            outcome.bundle.target.path,
            outcome.not_in_target.join(", ")
        )?;
    }
    if !outcome.other_targets.is_empty() {
        writeln!(
            out,
            "the fix changes other binaries of the build: {} (build a patch for each with --target)",
            outcome.other_targets.join(", ")
        )?;
    }
    // The object diff's own refusals are in its report; these are the build's.
    for r in &outcome.bundle.refusals {
        if r.object.is_empty() || all_refusals || r.kind.is_build() {
            writeln!(out, "refused ({}): {}", r.kind, r.detail)?;
        }
    }
    if !outcome.stacks_on.is_empty() {
        writeln!(
            out,
            "stacks on {} (apply after it)",
            outcome.stacks_on.join(", ")
        )?;
    }
    Ok(())
}

fn verdict_line(
    outcome: &Outcome,
    output: &Path,
    key: Option<&hotsplice_bundle::signature::SecretKey>,
) -> String {
    let bundle = &outcome.bundle;
    let new = new_functions(outcome);
    match outcome.verdict() {
        Verdict::Written => format!(
            "wrote {} ({}{}): replaces {}{}",
            output.display(),
            bundle.id,
            key.map(|k| format!(", signed by {}", k.public().id()))
                .unwrap_or_else(|| ", unsigned".to_string()),
            replaced(outcome).join(", "),
            if new.is_empty() {
                String::new()
            } else {
                format!("; adds {}", new.join(", "))
            }
        ),
        Verdict::NothingToPatch if !outcome.other_targets.is_empty() => format!(
            "nothing to patch in {}: the diff changes only {} (no bundle written)",
            bundle.target.path,
            outcome.other_targets.join(", ")
        ),
        Verdict::NothingToPatch => format!(
            "nothing to patch: the diff changes no function of {} in this build (no bundle written)",
            bundle.target.path
        ),
        Verdict::Refused => {
            "refused: the fix cannot be applied live (no bundle written); see the refusals above"
                .to_string()
        }
    }
}

/// A bundle's file name in a series' output directory.
fn series_bundle_name(k: usize, diff: &Path) -> String {
    let stem = diff
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "patch".to_string());
    // `01-fix.patch` → `01-fix.hsp`, not `01-01-fix.hsp`.
    let digits = stem.chars().take_while(char::is_ascii_digit).count();
    let stem = match stem[digits..].strip_prefix(['-', '_']) {
        Some(rest) if digits > 0 && !rest.is_empty() => rest.to_string(),
        _ => stem,
    };
    format!("{:02}-{stem}.hsp", k + 1)
}

fn run_series(
    args: &BuildArgs,
    request: &Request,
    key: Option<&hotsplice_bundle::signature::SecretKey>,
    started: Instant,
    progress: &mut dyn FnMut(&str),
) -> Result<ExitCode, Exit> {
    let series = hotsplice_build::build_series(request, progress).map_err(exit_for)?;
    let mut code = EXIT_OK;
    let mut written = 0;
    // Every bundle is written before anything is printed (a closed stdout ends the command).
    let mut paths = Vec::new();
    for (k, result) in series.patches.iter().enumerate() {
        match result {
            PatchResult::Built(outcome) => {
                let path = args.output.join(series_bundle_name(k, &outcome.diff));
                match outcome.verdict() {
                    Verdict::Written => {
                        write_bundle(outcome, &path, key)?;
                        written += 1;
                    }
                    Verdict::Refused => code = code.max(EXIT_REFUSED),
                    Verdict::NothingToPatch => {}
                }
                paths.push(path);
            }
            PatchResult::Failed {
                error: BuildError::DependsOnRefused { .. },
                ..
            } => code = code.max(EXIT_REFUSED),
            PatchResult::Failed { error, .. } => code = code.max(class_of(error).exit_code()),
        }
    }
    if written == 0 {
        code = code.max(EXIT_REFUSED);
    }
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();
    let mut paths = paths.iter();
    for (k, result) in series.patches.iter().enumerate() {
        match result {
            PatchResult::Built(outcome) => {
                let path = paths.next().expect("a path per built patch");
                if args.json {
                    rows.push(output::SeriesPatch::Built(Box::new(patch_report(
                        outcome, path, key,
                    ))));
                } else {
                    let verdict = output::Verdict::from(outcome.verdict());
                    writeln!(
                        out,
                        "{:02} {}: {}",
                        k + 1,
                        outcome.diff.display(),
                        verdict.as_str()
                    )?;
                    write_accounting(&mut out, outcome, true)?;
                    writeln!(out, "   {}", verdict_line(outcome, path, key))?;
                }
            }
            PatchResult::Failed {
                diff,
                error: BuildError::DependsOnRefused { on, .. },
            } => {
                let detail = format!(
                    "applies only on top of {}, which cannot be applied live",
                    on.join(", ")
                );
                if args.json {
                    rows.push(output::SeriesPatch::DependsOnRefused(
                        output::DependsOnRefused {
                            outcome: output::Verdict::Refused,
                            diff: diff.display().to_string(),
                            refusals: vec![output::Refusal {
                                kind: RefusalKind::DependsOnRefused.as_str().to_string(),
                                symbol: on.join(", "),
                                object: String::new(),
                                detail,
                                functions: Vec::new(),
                            }],
                            replaced: Vec::new(),
                            files: Vec::new(),
                        },
                    ));
                } else {
                    writeln!(out, "{:02} {}: refused", k + 1, diff.display())?;
                    writeln!(out, "refused (depends-on-refused): {detail}")?;
                }
            }
            PatchResult::Failed { diff, error } => {
                if args.json {
                    rows.push(output::SeriesPatch::Failed(output::SeriesFailure {
                        outcome: output::Failed::Error,
                        diff: diff.display().to_string(),
                        exit: class_of(error).exit_code(),
                        error: format!("{:#}", clone_error(error)),
                    }));
                } else {
                    writeln!(out, "{:02} {}: error: {error}", k + 1, diff.display())?;
                }
            }
        }
    }
    if args.json {
        output::emit(
            &mut out,
            &output::SeriesReport {
                outcome: output::SeriesOutcome::Series,
                target: series.target.path.clone(),
                output: args.output.display().to_string(),
                pre_cached: series.pre_cached,
                written,
                patches: rows,
                seconds: output::SeriesSeconds {
                    pre_build: series.pre_build.as_secs_f64(),
                    total: started.elapsed().as_secs_f64(),
                },
            },
        )?;
    } else {
        writeln!(
            out,
            "series: {written} bundle(s) of {} patch(es) in {} (apply them in order)",
            series.patches.len(),
            args.output.display()
        )?;
    }
    Ok(ExitCode::from(code))
}

/// An error's message chain as a new error (library errors are not `Clone`).
fn clone_error(error: &BuildError) -> anyhow::Error {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    anyhow!(message)
}

/// `hotsplice header`.
pub fn header(args: &HeaderArgs) -> Result<ExitCode, Exit> {
    let text = hotsplice_build::shim::HEADER;
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(Exit::environment)?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::from(EXIT_OK))
}
