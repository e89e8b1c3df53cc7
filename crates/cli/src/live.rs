//! `hotsplice check | apply | undo | list | recover`: live patches on running processes.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hotsplice_apply::{ErrorClass, Options, PauseLog, ProcessReport};
use serde_json::{Value, json};

use crate::args::{ApplyArgs, CheckArgs, ListArgs, RecoverArgs, Targets, TrustOptions, UndoArgs};
use crate::{EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_OK, EXIT_REFUSED, Exit};

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
fn namespace_note(pid: i32) -> Option<Value> {
    let ns = hotsplice_ptrace::namespaces_of(pid);
    let own = hotsplice_ptrace::own_namespaces();
    (ns.pid_ns != own.pid_ns || ns.mnt_ns != own.mnt_ns)
        .then(|| json!({"pid_ns": ns.pid_ns, "mnt_ns": ns.mnt_ns, "pid_inside": ns.inner_pid}))
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
        code: exit_code(e.class()),
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

/// The exit status for a failure class.
pub fn exit_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Refused => EXIT_REFUSED,
        ErrorClass::BadInput => EXIT_BAD_INPUT,
        ErrorClass::Environment | ErrorClass::Interrupted => EXIT_ENVIRONMENT,
    }
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

/// Reads a regular file of at most `cap` bytes, without blocking on a FIFO or device.
pub fn read_regular(path: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Err(anyhow!("{} is not a regular file", path.display()));
    }
    if meta.len() > cap {
        return Err(anyhow!(
            "{} is {} bytes, more than the {} MiB hotsplice reads",
            path.display(),
            meta.len(),
            cap >> 20
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    Read::by_ref(&mut file)
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

pub(crate) fn read_bundle(
    path: &Path,
    trust: &TrustOptions,
    action: &str,
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
            crate::trust::audit(json!({
                "action": action,
                "outcome": "refused",
                "reason": format!("{:#}", exit.error),
                "bundle": path.display().to_string(),
                "bundle_sha256": sha256,
                "patch": sealed.bundle.id,
            }));
            Err(exit)
        }
    }
}

fn pause_json(pauses: &PauseLog) -> Value {
    json!({
        "longest_us": pauses.longest().as_micros() as u64,
        "stops": pauses.stops,
        "threads": pauses.threads(),
    })
}

fn audit_outcome(
    action: &str,
    patch: &str,
    accepted: Option<&Accepted>,
    pids: &[i32],
    pauses: &PauseLog,
    result: Result<&[ProcessReport], &hotsplice_apply::Error>,
) {
    let mut record = json!({
        "action": action,
        "patch": patch,
        "pids": pids,
        "pause": pause_json(pauses),
    });
    if let Some(a) = accepted {
        record["bundle_sha256"] = json!(a.sha256);
        record["signer"] = json!(a.signer);
    }
    match result {
        Ok(reports) => {
            record["outcome"] = json!("done");
            record["pause_us"] = json!(
                reports
                    .iter()
                    .map(|r| json!({"pid": r.pid, "pause_us": r.pause.as_micros() as u64, "stops": r.stops}))
                    .collect::<Vec<_>>()
            );
        }
        Err(e) => {
            record["outcome"] = json!(e.class().as_str());
            record["reason"] = json!(e.to_string());
        }
    }
    crate::trust::audit(record);
}

/// The exit for a failed live operation; with `--json`, its error object is printed (with
/// how long the target was stopped before the failure).
fn fail(error: hotsplice_apply::Error, json_out: bool, pauses: &PauseLog) -> Exit {
    let class = error.class();
    if json_out {
        println!(
            "{}",
            json!({
                "ok": false,
                "class": class.as_str(),
                "error": error.to_string(),
                "pause": pause_json(pauses),
            })
        );
    }
    let error = anyhow::Error::new(error);
    Exit {
        code: exit_code(class),
        error: if json_out {
            anyhow::Error::new(crate::Reported(error))
        } else {
            error
        },
    }
}

fn report_json(r: &ProcessReport) -> Value {
    json!({
        "pid": r.pid,
        "sharers": r.sharers,
        "module": r.module,
        "pause_us": r.pause.as_micros() as u64,
        "stops": r.stops,
        "stopped_threads": r.per_thread.iter().map(|(tid, d, n)| json!({
            "tid": tid, "stopped_us": d.as_micros() as u64, "stops": n,
        })).collect::<Vec<_>>(),
        "attempts": r.attempts,
        "threads": r.threads,
        "realtime": r.realtime,
        "same_build": r.same_build,
        "prediction": r.prediction.as_ref().map(|p| json!({"action": p.action, "detail": p.detail})),
        "hooks": r.hooks.iter().map(|h| json!({
            "kind": h.kind, "took_us": h.took.as_micros() as u64, "result": h.result,
        })).collect::<Vec<_>>(),
        "warnings": r.warnings,
        "shadows": r.shadows.map(|s| json!({
            "live": s.live, "allocations": s.allocations, "arena_used": s.arena_used,
        })),
        "functions": r.functions.iter().map(|f| json!({
            "name": f.name,
            "entry": format!("{:#x}", f.entry),
            "new_address": format!("{:#x}", f.new_address),
            "found_by": f.via,
            "replaces_patch": f.stacked_on,
        })).collect::<Vec<_>>(),
    })
}

/// What happened to every process of a command.
struct Outcome<'a> {
    verb: &'a str,
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
    let (verb, id, reports) = (o.verb, o.id, o.reports);
    let mut out = std::io::stdout().lock();
    if json_out {
        let mut doc = json!({
            "ok": o.failed.is_empty(),
            "action": verb,
            "patch": id,
            "wall_us": o.wall.as_micros() as u64,
            "processes": reports.iter().map(|r| {
                let mut v = report_json(r);
                v["namespace"] = namespace_note(r.pid).unwrap_or(Value::Null);
                v
            }).collect::<Vec<_>>(),
            "skipped": o.skipped.iter().map(|s| json!({
                "pid": s.pid, "reason": s.reason, "namespace": namespace_note(s.pid),
            })).collect::<Vec<_>>(),
            "failed": o.failed.iter().map(|(pid, e)| json!({
                "pid": pid, "class": e.class().as_str(), "error": e.to_string(),
                "namespace": namespace_note(*pid),
            })).collect::<Vec<_>>(),
        });
        if verb == "checked" {
            doc["hooks"] = o
                .hooks
                .iter()
                .map(|(kind, function)| json!({"kind": kind.as_str(), "function": function}))
                .collect();
        }
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
    }
    for s in o.skipped {
        writeln!(out, "skipped pid {}: {}", s.pid, s.reason)?;
    }
    for (pid, e) in o.failed {
        writeln!(out, "failed pid {pid}: {e}")?;
    }
    if reports.is_empty() && o.failed.is_empty() {
        let what = match verb {
            "applied" => "needs the patch",
            "undid" => "has the patch",
            _ => "to check",
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
                r.pid, ns["pid_inside"], ns["pid_ns"], ns["mnt_ns"]
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
            if verb == "checked" { "against" } else { "in" },
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

/// Output errors: a closed pipe ends quietly (like `head` closing its input), others fail.
pub fn output(result: std::io::Result<()>) -> Result<(), Exit> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Exit {
            code: EXIT_ENVIRONMENT,
            error: anyhow::Error::new(e).context("writing the report"),
        }),
    }
}

/// `hotsplice recover`.
pub fn recover(args: &RecoverArgs) -> Result<ExitCode, Exit> {
    let json_out = args.options.json;
    let results = hotsplice_apply::recover(&args.pids, &args.options.options())
        .map_err(|e| fail(e, json_out, &PauseLog::new()))?;
    let mut out = std::io::stdout().lock();
    let mut worst = EXIT_OK;
    let mut json_rows = Vec::new();
    for (pid, result) in &results {
        match result {
            Ok((journal, outcome)) => {
                let what = match outcome {
                    hotsplice_apply::Recovered::ProcessGone => "process gone; record dropped",
                    hotsplice_apply::Recovered::RolledBack => "rolled back",
                    hotsplice_apply::Recovered::Completed => "completed",
                    hotsplice_apply::Recovered::InProgress => {
                        "still running in another hotsplice; left alone"
                    }
                };
                let operation = match journal.operation {
                    hotsplice_apply::state::Operation::Apply => "apply",
                    hotsplice_apply::state::Operation::Undo => "undo",
                };
                crate::trust::audit(json!({
                    "action": "recover",
                    "patch": journal.patch.id,
                    "pids": [pid],
                    "interrupted": operation,
                    "outcome": what,
                }));
                if json_out {
                    json_rows.push(json!({"pid": pid, "patch": journal.patch.id, "operation": operation, "outcome": what}));
                } else {
                    output(writeln!(
                        out,
                        "pid {pid}: interrupted {operation} of {}: {what}",
                        journal.patch.id
                    ))?;
                }
            }
            Err(e) => {
                crate::trust::audit(json!({
                    "action": "recover",
                    "pids": [pid],
                    "outcome": e.class().as_str(),
                    "reason": e.to_string(),
                }));
                worst = worst.max(exit_code(e.class()));
                if json_out {
                    json_rows.push(
                        json!({"pid": pid, "class": e.class().as_str(), "error": e.to_string()}),
                    );
                } else {
                    output(writeln!(out, "pid {pid}: {e}"))?;
                }
            }
        }
    }
    if json_out {
        output(writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({"ok": worst == EXIT_OK, "recovered": json_rows}))
                .unwrap_or_default()
        ))?;
    } else if results.is_empty() {
        output(writeln!(out, "nothing to recover"))?;
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
    output(print_reports(
        &Outcome {
            verb: "checked",
            id: &accepted.bundle.id,
            reports: &reports,
            skipped: &chosen.skipped,
            failed: &failed,
            wall: started.elapsed(),
            hooks: crate::info::hooks(&accepted.bundle),
        },
        args.options.json,
    ))?;
    if let Some(code) = failed.iter().map(|(_, e)| exit_code(e.class())).max() {
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
    output(print_reports(
        &Outcome {
            verb: "applied",
            id,
            reports: &reports,
            skipped: &chosen.skipped,
            failed: &failed,
            wall: started.elapsed(),
            hooks: Vec::new(),
        },
        args.options.json,
    ))?;
    Ok(ExitCode::from(
        failed
            .iter()
            .map(|(_, e)| exit_code(e.class()))
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
    output(print_reports(
        &Outcome {
            verb: "undid",
            id: &args.patch,
            reports: &reports,
            skipped: &chosen.skipped,
            failed: &failed,
            wall: started.elapsed(),
            hooks: Vec::new(),
        },
        args.options.json,
    ))?;
    Ok(ExitCode::from(
        failed
            .iter()
            .map(|(_, e)| exit_code(e.class()))
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
        .map(|e| exit_code(e.class()))
        .max()
        .unwrap_or(EXIT_OK);
    let mut out = std::io::stdout().lock();
    if json_out {
        let ids = |patches: &[hotsplice_apply::AppliedPatch]| -> Vec<String> {
            patches.iter().map(|p| p.id.clone()).collect()
        };
        let processes: Vec<Value> = listing
            .iter()
            .map(|(pid, observed)| match observed {
                Ok(o) => json!({
                    "pid": pid,
                    "patches": o.state.patches.iter().map(|p| json!({
                        "id": p.id,
                        "module": p.module,
                        "target": p.target,
                        "bundle_sha256": p.bundle_sha256,
                        "applied_unix": p.applied_unix,
                        "pause_us": p.pause_us,
                        "regions": p.regions.iter().map(|r| json!({
                            "address": format!("{:#x}", r.address),
                            "size": r.size,
                        })).collect::<Vec<_>>(),
                        "functions": p.functions.iter().map(|f| json!({
                            "name": f.name,
                            "entry": format!("{:#x}", f.entry),
                            "new_address": format!("{:#x}", f.new_address),
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "stale_records_dropped": ids(&o.stale),
                    "unused_patch_memory": ids(&o.unused),
                }),
                Err(e) => json!({"pid": pid, "class": e.class().as_str(), "error": e.to_string()}),
            })
            .collect();
        output(writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(
                &json!({ "ok": worst == EXIT_OK, "processes": processes })
            )
            .unwrap_or_default()
        ))?;
        return Ok(ExitCode::from(worst));
    }
    if listing.is_empty() {
        output(writeln!(out, "no live patches recorded"))?;
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
            output(writeln!(out, "pid {pid}: no patches"))?;
        }
        for p in &o.state.patches {
            let names: Vec<&str> = p.functions.iter().map(|f| f.name.as_str()).collect();
            output(writeln!(
                out,
                "pid {pid}: {} on {} ({}), paused {} µs",
                p.id,
                p.module,
                names.join(", "),
                p.pause_us
            ))?;
        }
        for p in &o.stale {
            output(writeln!(
                out,
                "pid {pid}: {} was recorded, but its jumps are not in the code (the program exec'd?): record dropped",
                p.id
            ))?;
        }
        for p in &o.unused {
            output(writeln!(
                out,
                "pid {pid}: memory of {} is mapped but not in use (forked during an apply?); harmless",
                p.id
            ))?;
        }
    }
    Ok(ExitCode::from(worst))
}
