//! `hotsplice check | apply | undo | list | recover`: live patches on running processes.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hotsplice_apply::{Options, PauseLog, ProcessReport};

use crate::args::{ApplyArgs, CheckArgs, ListArgs, RecoverArgs, Targets, TrustOptions, UndoArgs};
use crate::exit::class_of;
use crate::output::{self, Action, AuditRecord, Pause};
use crate::{EXIT_OK, EXIT_REFUSED, Exit, Reported};

/// The largest bundle `check`/`apply` read (a bundle of a large program is a few MiB).
const MAX_BUNDLE: u64 = 256 << 20;

/// A process found but not patched, and why.
struct Skipped {
    pid: i32,
    reason: String,
}

/// The processes to work on: the named ones, or those found across the system.
struct Chosen {
    pids: Vec<i32>,
    skipped: Vec<Skipped>,
    /// Found across the system (not named by the user): already-applied processes are
    /// skipped rather than refused, and finding none is not an error.
    discovered: bool,
}

/// How a namespace other than hotsplice's own shows in reports.
fn namespace_note(pid: i32) -> Option<output::Namespace> {
    let ns = hotsplice_ptrace::namespaces_of(pid);
    let own = hotsplice_ptrace::own_namespaces();
    (ns.pid_ns != own.pid_ns || ns.mnt_ns != own.mnt_ns).then_some(output::Namespace {
        pid_ns: ns.pid_ns,
        mnt_ns: ns.mnt_ns,
        pid_inside: ns.inner_pid,
    })
}

fn choose(
    targets: &Targets,
    bundle: &hotsplice_bundle::Bundle,
    options: &Options,
) -> Result<Chosen, Exit> {
    if !targets.pids.is_empty() || targets.exe.is_some() {
        return Ok(Chosen {
            pids: pids(targets)?,
            skipped: Vec::new(),
            discovered: false,
        });
    }
    let select = match &targets.file {
        Some(path) => hotsplice_apply::discover::Select::File(path.clone()),
        None => hotsplice_apply::discover::Select::BuildId,
    };
    let found = hotsplice_apply::discover::discover(&select, bundle).map_err(|e| Exit {
        class: class_of(&e),
        error: anyhow::Error::new(e),
    })?;
    let mut chosen = Chosen {
        pids: Vec::new(),
        skipped: Vec::new(),
        discovered: true,
    };
    for f in found {
        match f.version {
            hotsplice_apply::discover::Version::Other { build_id } if !targets.any_build => {
                chosen.skipped.push(Skipped {
                    pid: f.pid,
                    reason: format!(
                        "maps another build of the file ({}: build-id {}, the bundle's is {})",
                        f.mapped,
                        build_id.as_deref().unwrap_or("none"),
                        bundle.target.build_id.as_deref().unwrap_or("none")
                    ),
                });
            }
            _ => chosen.pids.push(f.pid),
        }
    }
    // Already patched: nothing to do there (a second run of a rollout changes nothing).
    let listed = hotsplice_apply::list(&chosen.pids, options).unwrap_or_default();
    for (pid, observed) in listed {
        if observed.is_ok_and(|o| o.state.patches.iter().any(|p| p.id == bundle.id)) {
            chosen.pids.retain(|&p| p != pid);
            chosen.skipped.push(Skipped {
                pid,
                reason: "already applied".into(),
            });
        }
    }
    Ok(chosen)
}

fn pids(targets: &Targets) -> Result<Vec<i32>, Exit> {
    if let Some(exe) = &targets.exe {
        let pids = hotsplice_apply::pids_of_exe(exe);
        if pids.is_empty() {
            return Err(Exit::bad_input(anyhow!(
                "no running process executes {}",
                exe.display()
            )));
        }
        return Ok(pids);
    }
    Ok(targets.pids.clone())
}

/// What an operation did: the processes done, and (with `--each`) those where it failed.
type Ran = (Vec<ProcessReport>, Vec<(i32, hotsplice_apply::Error)>);

/// Runs an operation on the chosen processes: all or none (one call), or with `each` one call
/// per process, collecting the failures.
fn run_on(
    chosen: &Chosen,
    each: bool,
    mut op: impl FnMut(&[i32]) -> Result<Vec<ProcessReport>, hotsplice_apply::Error>,
) -> Result<Ran, hotsplice_apply::Error> {
    // Found across the system and none needs it: a success with nothing done.
    if chosen.pids.is_empty() && chosen.discovered {
        return Ok((Vec::new(), Vec::new()));
    }
    if !each {
        return op(&chosen.pids).map(|r| (r, Vec::new()));
    }
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for &pid in &chosen.pids {
        match op(&[pid]) {
            Ok(r) => reports.extend(r),
            Err(e @ hotsplice_apply::Error::Stopped { .. }) => return Err(e),
            Err(e) => failed.push((pid, e)),
        }
    }
    Ok((reports, failed))
}

/// A bundle read from disk and accepted by the trust policy.
pub(crate) struct Accepted {
    pub(crate) bundle: hotsplice_bundle::Bundle,
    pub(crate) sha256: String,
    signer: String,
}

/// Reads a regular file of at most `cap` bytes, without blocking on a FIFO or device
/// (`hotsplice_trust::read_regular`).
pub fn read_regular(path: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    Ok(hotsplice_trust::read_regular(path, cap)?)
}

pub(crate) fn read_bundle(
    path: &Path,
    trust: &TrustOptions,
    action: &'static str,
) -> Result<Accepted, Exit> {
    let bytes = read_regular(path, MAX_BUNDLE).map_err(Exit::bad_input)?;
    let sealed = hotsplice_bundle::read(&bytes)
        .with_context(|| path.display().to_string())
        .map_err(Exit::bad_input)?;
    let sha256 = sealed.envelope.content_sha256.clone();
    match crate::trust::accept(&sealed, &trust.trust_dir, trust.allow_unsigned) {
        Ok(signer) => Ok(Accepted {
            bundle: sealed.bundle,
            sha256,
            signer,
        }),
        Err(exit) => {
            crate::trust::audit(AuditRecord {
                action,
                outcome: exit.class.as_str().to_string(),
                reason: Some(format!("{:#}", exit.error)),
                bundle: Some(path.display().to_string()),
                bundle_sha256: Some(sha256),
                patch: Some(sealed.bundle.id),
                ..AuditRecord::default()
            });
            Err(exit)
        }
    }
}

fn audit_outcome(
    action: &'static str,
    patch: &str,
    accepted: Option<&Accepted>,
    pids: &[i32],
    pauses: &PauseLog,
    result: Result<&[ProcessReport], &hotsplice_apply::Error>,
) {
    let mut record = AuditRecord {
        action,
        patch: Some(patch.to_string()),
        pids: Some(pids.to_vec()),
        pause: Some(Pause::of(pauses)),
        bundle_sha256: accepted.map(|a| a.sha256.clone()),
        signer: accepted.map(|a| a.signer.clone()),
        ..AuditRecord::default()
    };
    match result {
        Ok(reports) => {
            record.outcome = "done".to_string();
            record.pause_us = Some(
                reports
                    .iter()
                    .map(|r| output::ProcessPause {
                        pid: r.pid,
                        pause_us: r.pause.as_micros() as u64,
                        stops: r.stops,
                    })
                    .collect(),
            );
        }
        Err(e) => {
            record.outcome = class_of(e).as_str().to_string();
            record.reason = Some(e.to_string());
        }
    }
    crate::trust::audit(record);
}

/// The exit for a failed live operation; with `--json`, its error object is printed (with
/// how long the target was stopped before the failure).
fn fail(error: hotsplice_apply::Error, json_out: bool, pauses: &PauseLog) -> Exit {
    let class = class_of(&error);
    let message = error.to_string();
    let mut error = anyhow::Error::new(error);
    if json_out {
        let report = output::ErrorReport {
            ok: false,
            class,
            error: message,
            pause: Some(Pause::of(pauses)),
        };
        match output::emit(&mut std::io::stdout().lock(), &report) {
            Ok(()) => error = anyhow::Error::new(Reported(error)),
            // `main` reports the failure on stderr either way.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => eprintln!("hotsplice: error: writing the error report: {e}"),
        }
    }
    Exit { class, error }
}

/// A process's report, for `--json`.
fn process_report(r: &ProcessReport) -> output::ProcessReport {
    output::ProcessReport {
        pid: r.pid,
        sharers: r.sharers.clone(),
        module: r.module.clone(),
        pause_us: r.pause.as_micros() as u64,
        stops: r.stops,
        stopped_threads: r
            .per_thread
            .iter()
            .map(|&(tid, d, n)| output::StoppedThread {
                tid,
                stopped_us: d.as_micros() as u64,
                stops: n,
            })
            .collect(),
        stop_windows: r
            .windows
            .iter()
            .map(|&(start_ns, end_ns, threads)| output::StopWindow {
                start_ns,
                end_ns,
                threads,
            })
            .collect(),
        attempts: r.attempts,
        threads: r.threads,
        realtime: r.realtime,
        same_build: r.same_build,
        prediction: r.prediction.as_ref().map(|p| output::Prediction {
            action: p.action.to_string(),
            detail: p.detail.clone(),
        }),
        hooks: r
            .hooks
            .iter()
            .map(|h| output::HookRun {
                kind: h.kind.to_string(),
                took_us: h.took.as_micros() as u64,
                result: h.result,
            })
            .collect(),
        warnings: r.warnings.clone(),
        shadows: r.shadows.map(|s| output::Shadows {
            live: s.live,
            allocations: s.allocations,
            arena_used: s.arena_used,
        }),
        functions: r
            .functions
            .iter()
            .map(|f| output::LiveFunction {
                name: f.name.clone(),
                entry: output::hex(f.entry),
                new_address: output::hex(f.new_address),
                found_by: f.via.clone(),
                replaces_patch: f.stacked_on.clone(),
            })
            .collect(),
        namespace: namespace_note(r.pid),
    }
}

/// What happened to every process of a command.
struct Outcome<'a> {
    action: Action,
    id: &'a str,
    reports: &'a [ProcessReport],
    skipped: &'a [Skipped],
    /// With `--each`: the processes where it failed.
    failed: &'a [(i32, hotsplice_apply::Error)],
    wall: Duration,
    /// `check`: the hooks apply would run (kind, function).
    hooks: Vec<(hotsplice_bundle::HookKind, String)>,
}

fn print_reports(o: &Outcome<'_>, json_out: bool) -> std::io::Result<()> {
    let (action, id, reports) = (o.action, o.id, o.reports);
    let verb = action.as_str();
    let mut out = std::io::stdout().lock();
    if json_out {
        let report = output::LiveReport {
            ok: o.failed.is_empty(),
            action,
            patch: id.to_string(),
            wall_us: o.wall.as_micros() as u64,
            processes: reports.iter().map(process_report).collect(),
            skipped: o
                .skipped
                .iter()
                .map(|s| output::Skipped {
                    pid: s.pid,
                    reason: s.reason.clone(),
                    namespace: namespace_note(s.pid),
                })
                .collect(),
            failed: o
                .failed
                .iter()
                .map(|(pid, e)| output::FailedProcess {
                    pid: *pid,
                    class: class_of(e),
                    error: e.to_string(),
                    namespace: namespace_note(*pid),
                })
                .collect(),
            hooks: (action == Action::Checked).then(|| {
                o.hooks
                    .iter()
                    .map(|(kind, function)| output::BundleHook {
                        kind: kind.as_str().to_string(),
                        function: function.clone(),
                    })
                    .collect()
            }),
        };
        return output::emit(&mut out, &report);
    }
    for s in o.skipped {
        writeln!(out, "skipped pid {}: {}", s.pid, s.reason)?;
    }
    for (pid, e) in o.failed {
        writeln!(out, "failed pid {pid}: {e}")?;
    }
    if reports.is_empty() && o.failed.is_empty() {
        let what = match action {
            Action::Applied => "needs the patch",
            Action::Undid => "has the patch",
            Action::Checked => "to check",
        };
        writeln!(out, "no running process {what}")?;
    }
    for (kind, function) in &o.hooks {
        writeln!(
            out,
            "apply runs the {kind} hook {function} in each process, every other thread stopped"
        )?;
    }
    for r in reports {
        if let Some(ns) = namespace_note(r.pid) {
            writeln!(
                out,
                "pid {} lives in another namespace (pid {} inside; pid ns {}, mount ns {})",
                r.pid, ns.pid_inside, ns.pid_ns, ns.mnt_ns
            )?;
        }
        let pause = r.pause.as_secs_f64() * 1000.0;
        let sharers = if r.sharers.is_empty() {
            String::new()
        } else {
            format!(
                " and {} sharing its memory",
                r.sharers
                    .iter()
                    .map(|p| format!("pid {p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        writeln!(
            out,
            "{verb} {id} {} pid {}{sharers} ({}): {} function(s); longest pause {pause:.3} ms over {} stop(s) ({} thread(s), {} attempt(s){})",
            if action == Action::Checked {
                "against"
            } else {
                "in"
            },
            r.pid,
            r.module,
            r.functions.len(),
            r.stops,
            r.threads,
            r.attempts.max(1),
            if r.realtime {
                ", real-time priority"
            } else {
                ""
            }
        )?;
        match r.same_build {
            Some(true) => writeln!(
                out,
                "  the process runs the bundle's own build (same build-id)"
            )?,
            Some(false) => writeln!(
                out,
                "  the process runs another build of the program; its code was proven to match"
            )?,
            None => {}
        }
        for f in &r.functions {
            let new = if f.new_address != 0 {
                format!(" → {:#x}", f.new_address)
            } else {
                String::new()
            };
            let stacked = f
                .stacked_on
                .as_ref()
                .map(|p| format!(", replacing {p}'s version"))
                .unwrap_or_default();
            writeln!(
                out,
                "  {:<32} {:#x}{new}  (found by {}{stacked})",
                f.name, f.entry, f.via
            )?;
        }
        if let Some(p) = &r.prediction {
            writeln!(out, "  apply would {}: {}", p.action, p.detail)?;
        }
        for h in &r.hooks {
            writeln!(
                out,
                "  {} hook ran in {} µs (returned {}; every thread stopped meanwhile)",
                h.kind,
                h.took.as_micros(),
                h.result
            )?;
        }
        for w in &r.warnings {
            writeln!(out, "  warning: {w}")?;
        }
        if let Some(s) = r.shadows {
            writeln!(
                out,
                "  shadow data: {} live, {} allocated in all, {} bytes of arena used (all freed with the patch memory)",
                s.live, s.allocations, s.arena_used
            )?;
        }
    }
    Ok(())
}

/// `hotsplice recover`.
pub fn recover(args: &RecoverArgs) -> Result<ExitCode, Exit> {
    let json_out = args.options.json;
    let results = hotsplice_apply::recover(&args.pids, &args.options.options())
        .map_err(|e| fail(e, json_out, &PauseLog::new()))?;
    let mut worst = EXIT_OK;
    // Every result is audited before anything is printed (a closed stdout ends the command).
    let mut rows = Vec::new();
    for (pid, result) in &results {
        match result {
            Ok((journal, outcome)) => {
                let outcome = match outcome {
                    hotsplice_apply::Recovered::ProcessGone => output::RecoverOutcome::ProcessGone,
                    hotsplice_apply::Recovered::RolledBack => output::RecoverOutcome::RolledBack,
                    hotsplice_apply::Recovered::Completed => output::RecoverOutcome::Completed,
                    hotsplice_apply::Recovered::InProgress => output::RecoverOutcome::InProgress,
                };
                let operation = match journal.operation {
                    hotsplice_apply::state::Operation::Apply => "apply",
                    hotsplice_apply::state::Operation::Undo => "undo",
                };
                crate::trust::audit(AuditRecord {
                    action: "recover",
                    patch: Some(journal.patch.id.clone()),
                    pids: Some(vec![*pid]),
                    interrupted: Some(operation.to_string()),
                    outcome: outcome.as_str().to_string(),
                    ..AuditRecord::default()
                });
                rows.push(output::RecoverRow::Done(output::Recovered {
                    pid: *pid,
                    patch: journal.patch.id.clone(),
                    operation: operation.to_string(),
                    outcome,
                }));
            }
            Err(e) => {
                let class = class_of(e);
                crate::trust::audit(AuditRecord {
                    action: "recover",
                    pids: Some(vec![*pid]),
                    outcome: class.as_str().to_string(),
                    reason: Some(e.to_string()),
                    ..AuditRecord::default()
                });
                worst = worst.max(class.exit_code());
                rows.push(output::RecoverRow::Error(output::ProcessError {
                    pid: *pid,
                    class,
                    error: e.to_string(),
                }));
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if json_out {
        output::emit(
            &mut out,
            &output::RecoverReport {
                ok: worst == EXIT_OK,
                recovered: rows,
            },
        )?;
    } else if rows.is_empty() {
        writeln!(out, "nothing to recover")?;
    } else {
        for row in &rows {
            match row {
                output::RecoverRow::Done(r) => writeln!(
                    out,
                    "pid {}: interrupted {} of {}: {}",
                    r.pid,
                    r.operation,
                    r.patch,
                    r.outcome.as_str()
                )?,
                output::RecoverRow::Error(e) => writeln!(out, "pid {}: {}", e.pid, e.error)?,
            }
        }
    }
    Ok(ExitCode::from(worst))
}

/// `hotsplice check`.
pub fn check(args: &CheckArgs) -> Result<ExitCode, Exit> {
    let started = Instant::now();
    let accepted = read_bundle(&args.bundle, &args.trust, "check")?;
    let options = args.options.options();
    let chosen = choose(&args.targets, &accepted.bundle, &options)?;
    let mut pauses = PauseLog::new();
    let (reports, failed) = run_on(&chosen, args.targets.each, |pids| {
        hotsplice_apply::check(&accepted.bundle, pids, &options, &mut pauses)
    })
    .map_err(|e| fail(e, args.options.json, &pauses))?;
    print_reports(
        &Outcome {
            action: Action::Checked,
            id: &accepted.bundle.id,
            reports: &reports,
            skipped: &chosen.skipped,
            failed: &failed,
            wall: started.elapsed(),
            hooks: crate::info::hooks(&accepted.bundle),
        },
        args.options.json,
    )?;
    if let Some(code) = failed.iter().map(|(_, e)| class_of(e).exit_code()).max() {
        return Ok(ExitCode::from(code));
    }
    let refuse = reports
        .iter()
        .any(|r| r.prediction.as_ref().is_some_and(|p| p.action == "refuse"));
    Ok(ExitCode::from(if refuse { EXIT_REFUSED } else { EXIT_OK }))
}

/// `hotsplice apply`.
pub fn apply(args: &ApplyArgs) -> Result<ExitCode, Exit> {
    let started = Instant::now();
    let accepted = read_bundle(&args.bundle, &args.trust, "apply")?;
    let options = args.options.options();
    let chosen = choose(&args.targets, &accepted.bundle, &options)?;
    let mut pauses = PauseLog::new();
    let id = &accepted.bundle.id;
    let result = run_on(&chosen, args.targets.each, |pids| {
        let result = hotsplice_apply::apply(
            &accepted.bundle,
            &accepted.sha256,
            pids,
            &options,
            &mut pauses,
        );
        audit_outcome(
            "apply",
            id,
            Some(&accepted),
            pids,
            &pauses,
            result.as_deref(),
        );
        result
    });
    let (reports, failed) = result.map_err(|e| fail(e, args.options.json, &pauses))?;
    print_reports(
        &Outcome {
            action: Action::Applied,
            id,
            reports: &reports,
            skipped: &chosen.skipped,
            failed: &failed,
            wall: started.elapsed(),
            hooks: Vec::new(),
        },
        args.options.json,
    )?;
    Ok(ExitCode::from(
        failed
            .iter()
            .map(|(_, e)| class_of(e).exit_code())
            .max()
            .unwrap_or(EXIT_OK),
    ))
}

/// `hotsplice undo`.
pub fn undo(args: &UndoArgs) -> Result<ExitCode, Exit> {
    let started = Instant::now();
    let options = args.options.options();
    let chosen = if !args.targets.pids.is_empty() || args.targets.exe.is_some() {
        Chosen {
            pids: pids(&args.targets)?,
            skipped: Vec::new(),
            discovered: false,
        }
    } else {
        // Every process that has the patch (of those mapping --file, if given).
        let mut holders = hotsplice_apply::holders(&args.patch, &options)
            .map_err(|e| fail(e, args.options.json, &PauseLog::new()))?;
        if let Some(file) = &args.targets.file {
            // The same rule as `apply --file`: the file's device and inode, or its path.
            holders = hotsplice_apply::discover::mapping_file(file, &holders);
        }
        Chosen {
            pids: holders,
            skipped: Vec::new(),
            discovered: true,
        }
    };
    let mut pauses = PauseLog::new();
    let result = run_on(&chosen, args.targets.each, |pids| {
        let result = hotsplice_apply::undo(&args.patch, pids, &options, &mut pauses);
        audit_outcome("undo", &args.patch, None, pids, &pauses, result.as_deref());
        result
    });
    let (reports, failed) = result.map_err(|e| fail(e, args.options.json, &pauses))?;
    print_reports(
        &Outcome {
            action: Action::Undid,
            id: &args.patch,
            reports: &reports,
            skipped: &chosen.skipped,
            failed: &failed,
            wall: started.elapsed(),
            hooks: Vec::new(),
        },
        args.options.json,
    )?;
    Ok(ExitCode::from(
        failed
            .iter()
            .map(|(_, e)| class_of(e).exit_code())
            .max()
            .unwrap_or(EXIT_OK),
    ))
}

/// `hotsplice list`.
pub fn list(args: &ListArgs) -> Result<ExitCode, Exit> {
    let json_out = args.options.json;
    let listing = hotsplice_apply::list(&args.pids, &args.options.options())
        .map_err(|e| fail(e, json_out, &PauseLog::new()))?;
    let worst = listing
        .iter()
        .filter_map(|(_, o)| o.as_ref().err())
        .map(|e| class_of(e).exit_code())
        .max()
        .unwrap_or(EXIT_OK);
    let mut out = std::io::stdout().lock();
    if json_out {
        let ids = |patches: &[hotsplice_apply::AppliedPatch]| -> Vec<String> {
            patches.iter().map(|p| p.id.clone()).collect()
        };
        let processes = listing
            .iter()
            .map(|(pid, observed)| match observed {
                Ok(o) => output::Listed::Patches(output::ListedProcess {
                    pid: *pid,
                    patches: o
                        .state
                        .patches
                        .iter()
                        .map(output::ListedPatch::of)
                        .collect(),
                    stale_records_dropped: ids(&o.stale),
                    unused_patch_memory: ids(&o.unused),
                }),
                Err(e) => output::Listed::Error(output::ProcessError {
                    pid: *pid,
                    class: class_of(e),
                    error: e.to_string(),
                }),
            })
            .collect();
        output::emit(
            &mut out,
            &output::ListReport {
                ok: worst == EXIT_OK,
                processes,
            },
        )?;
        return Ok(ExitCode::from(worst));
    }
    if listing.is_empty() {
        writeln!(out, "no live patches recorded")?;
    }
    for (pid, observed) in &listing {
        let o = match observed {
            Ok(o) => o,
            Err(e) => {
                eprintln!("hotsplice: error: pid {pid}: {e}");
                continue;
            }
        };
        if o.state.patches.is_empty() {
            writeln!(out, "pid {pid}: no patches")?;
        }
        for p in &o.state.patches {
            let names: Vec<&str> = p.functions.iter().map(|f| f.name.as_str()).collect();
            writeln!(
                out,
                "pid {pid}: {} on {} ({}), paused {} µs",
                p.id,
                p.module,
                names.join(", "),
                p.pause_us
            )?;
        }
        for p in &o.stale {
            writeln!(
                out,
                "pid {pid}: {} was recorded, but its jumps are not in the code (the program exec'd?): record dropped",
                p.id
            )?;
        }
        for p in &o.unused {
            writeln!(
                out,
                "pid {pid}: memory of {} is mapped but not in use (forked during an apply?); harmless",
                p.id
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::from(worst))
}
