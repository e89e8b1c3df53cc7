//! `hotsplice check | apply | undo | list`: live patches on running processes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use hotsplice_apply::{ErrorClass, Options, ProcessReport};
use serde_json::{Value, json};

use crate::{EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_OK, EXIT_REFUSED, Exit};

/// Which processes.
#[derive(Debug, Args)]
pub struct Targets {
    /// A process to patch (repeatable).
    #[arg(long = "pid", value_name = "PID", required_unless_present = "exe")]
    pids: Vec<i32>,
    /// Every process running this executable.
    #[arg(long, value_name = "PATH", conflicts_with = "pids")]
    exe: Option<PathBuf>,
}

/// Shared options.
#[derive(Debug, Args)]
pub struct LiveOptions {
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Retries while a thread is busy in a function being replaced.
    #[arg(long, value_name = "N", default_value_t = 5)]
    retries: u32,
    /// Milliseconds between retries.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    retry_delay: u64,
    /// Where applied patches are recorded.
    #[arg(long, value_name = "DIR", default_value = hotsplice_apply::state::DEFAULT_DIR, env = "HOTSPLICE_STATE_DIR")]
    state_dir: PathBuf,
}

/// Which bundles are trusted.
#[derive(Debug, Args)]
pub struct TrustOptions {
    /// Directory of trusted public keys (`*.pub`); it and its keys must belong to root and be
    /// writable by no one else.
    #[arg(long, value_name = "DIR", default_value = crate::trust::DEFAULT_TRUST_DIR, env = "HOTSPLICE_TRUST_DIR")]
    trust_dir: PathBuf,
    /// Accept a bundle that is unsigned or signed by no trusted key (recorded in the audit log).
    #[arg(long)]
    allow_unsigned: bool,
}

impl LiveOptions {
    fn options(&self) -> Options {
        Options {
            retries: self.retries,
            retry_delay: Duration::from_millis(self.retry_delay),
            state_dir: self.state_dir.clone(),
            ..Options::default()
        }
    }
}

const LIVE_HELP: &str = "Exit status: 0 done; 1 refused (the code does not match the bundle's pre build, a thread is \
busy in a replaced function, ...) with the target untouched; 2 bad input; 3 environment (permissions, \
the process exited).";

/// Dry run: prove a bundle applies to running processes, without changing them.
///
/// Locates every function to replace in each process's memory and proves its code is the
/// bundle's pre-build code (run-pre matching), resolves every symbol the new code needs, and
/// stops the process for a moment to see whether any thread is in a function to replace.
#[derive(Debug, Args)]
#[command(after_help = LIVE_HELP)]
pub struct CheckArgs {
    /// The bundle (from `hotsplice build`).
    bundle: PathBuf,
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    trust: TrustOptions,
    #[command(flatten)]
    options: LiveOptions,
}

/// Apply a bundle to running processes, with no restart.
///
/// Proves the running code is the bundle's pre build, maps the new code near the program,
/// then stops every thread for well under a millisecond to check none is in a function being
/// replaced and to write a jump at each old entry. With several processes (`--exe`, or
/// several `--pid`), all are checked first and patched all or none. Needs root (or the
/// same user and CAP_SYS_PTRACE).
#[derive(Debug, Args)]
#[command(after_help = LIVE_HELP)]
pub struct ApplyArgs {
    /// The bundle (from `hotsplice build`).
    bundle: PathBuf,
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    trust: TrustOptions,
    #[command(flatten)]
    options: LiveOptions,
}

/// Undo an applied patch: restore every original byte and unmap its memory.
#[derive(Debug, Args)]
#[command(after_help = LIVE_HELP)]
pub struct UndoArgs {
    /// The patch id (`hs-...`, see `hotsplice list`).
    patch: String,
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    options: LiveOptions,
}

/// List the patches applied to processes.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only these processes (default: every process hotsplice has patched).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<i32>,
    #[command(flatten)]
    options: LiveOptions,
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

/// A bundle read from disk and accepted by the trust policy.
struct Accepted {
    bundle: hotsplice_bundle::Bundle,
    sha256: String,
    signer: String,
}

fn read_bundle(path: &Path, trust: &TrustOptions, action: &str) -> Result<Accepted, Exit> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Exit::bad_input)?;
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

fn audit_outcome(
    action: &str,
    patch: &str,
    accepted: Option<&Accepted>,
    pids: &[i32],
    result: Result<&[ProcessReport], &hotsplice_apply::Error>,
) {
    let mut record = json!({"action": action, "patch": patch, "pids": pids});
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
                    .map(|r| json!({"pid": r.pid, "pause_us": r.pause.as_micros() as u64}))
                    .collect::<Vec<_>>()
            );
        }
        Err(e) => {
            record["outcome"] = json!(match e.class() {
                ErrorClass::Refused => "refused",
                ErrorClass::BadInput => "bad-input",
                ErrorClass::Environment => "failed",
            });
            record["reason"] = json!(e.to_string());
        }
    }
    crate::trust::audit(record);
}

fn fail(error: hotsplice_apply::Error, json_out: bool) -> Exit {
    let code = match error.class() {
        ErrorClass::Refused => EXIT_REFUSED,
        ErrorClass::BadInput => EXIT_BAD_INPUT,
        ErrorClass::Environment => EXIT_ENVIRONMENT,
    };
    if json_out {
        let class = match error.class() {
            ErrorClass::Refused => "refused",
            ErrorClass::BadInput => "bad-input",
            ErrorClass::Environment => "environment",
        };
        println!(
            "{}",
            json!({"ok": false, "class": class, "error": error.to_string()})
        );
    }
    Exit {
        code,
        error: anyhow::Error::new(error),
    }
}

fn report_json(r: &ProcessReport) -> Value {
    json!({
        "pid": r.pid,
        "module": r.module,
        "pause_us": r.pause.as_micros() as u64,
        "attempts": r.attempts,
        "threads": r.threads,
        "realtime": r.realtime,
        "busy": r.busy,
        "functions": r.functions.iter().map(|f| json!({
            "name": f.name,
            "entry": format!("{:#x}", f.entry),
            "new_address": format!("{:#x}", f.new_address),
            "found_by": f.via,
            "replaces_patch": f.stacked_on,
        })).collect::<Vec<_>>(),
    })
}

fn print_reports(verb: &str, id: &str, reports: &[ProcessReport], json_out: bool) {
    let mut out = std::io::stdout().lock();
    if json_out {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": true,
                "action": verb,
                "patch": id,
                "processes": reports.iter().map(report_json).collect::<Vec<_>>(),
            }))
            .unwrap_or_default()
        );
        return;
    }
    for r in reports {
        let pause = r.pause.as_secs_f64() * 1000.0;
        let _ = writeln!(
            out,
            "{verb} {id} {} pid {} ({}): {} function(s); longest pause {pause:.3} ms ({} thread(s), {} attempt(s){})",
            if verb == "checked" { "against" } else { "in" },
            r.pid,
            r.module,
            r.functions.len(),
            r.threads,
            r.attempts.max(1),
            if r.realtime {
                ", real-time priority"
            } else {
                ""
            }
        );
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
            let _ = writeln!(
                out,
                "  {:<32} {:#x}{new}  (found by {}{stacked})",
                f.name, f.entry, f.via
            );
        }
        if let Some(busy) = &r.busy {
            let _ = writeln!(out, "  note: right now {busy}; apply would wait and retry");
        }
    }
}

/// Finish or roll back an apply or undo that was interrupted (hotsplice killed, machine
/// trouble), so each process ends either untouched or fully patched — never a mix.
///
/// Reads the journal an interrupted operation left in the state directory, looks at the code
/// of the process, and writes the original bytes back where that is safe (no thread in the
/// patch's code), otherwise every jump (no thread in the old code). `apply` and `undo` refuse
/// to touch a process with an interrupted operation until it is recovered.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Only these processes (default: every interrupted operation recorded).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<i32>,
    #[command(flatten)]
    options: LiveOptions,
}

/// `hotsplice recover`.
pub fn recover(args: &RecoverArgs) -> Result<ExitCode, Exit> {
    let results = hotsplice_apply::recover(&args.pids, &args.options.options());
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
                if args.options.json {
                    json_rows.push(json!({"pid": pid, "patch": journal.patch.id, "operation": operation, "outcome": what}));
                } else {
                    let _ = writeln!(
                        out,
                        "pid {pid}: interrupted {operation} of {}: {what}",
                        journal.patch.id
                    );
                }
            }
            Err(e) => {
                crate::trust::audit(json!({
                    "action": "recover",
                    "pids": [pid],
                    "outcome": "failed",
                    "reason": e.to_string(),
                }));
                worst = worst.max(match e.class() {
                    ErrorClass::Refused => EXIT_REFUSED,
                    ErrorClass::BadInput => EXIT_BAD_INPUT,
                    ErrorClass::Environment => EXIT_ENVIRONMENT,
                });
                if args.options.json {
                    json_rows.push(json!({"pid": pid, "error": e.to_string()}));
                } else {
                    let _ = writeln!(out, "pid {pid}: {e}");
                }
            }
        }
    }
    if args.options.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({"recovered": json_rows})).unwrap_or_default()
        );
    } else if results.is_empty() {
        let _ = writeln!(out, "nothing to recover");
    }
    Ok(ExitCode::from(worst))
}

/// `hotsplice check`.
pub fn check(args: &CheckArgs) -> Result<ExitCode, Exit> {
    let accepted = read_bundle(&args.bundle, &args.trust, "check")?;
    let pids = pids(&args.targets)?;
    let reports = hotsplice_apply::check(&accepted.bundle, &pids, &args.options.options())
        .map_err(|e| fail(e, args.options.json))?;
    print_reports("checked", &accepted.bundle.id, &reports, args.options.json);
    Ok(ExitCode::from(EXIT_OK))
}

/// `hotsplice apply`.
pub fn apply(args: &ApplyArgs) -> Result<ExitCode, Exit> {
    let accepted = read_bundle(&args.bundle, &args.trust, "apply")?;
    let pids = pids(&args.targets)?;
    let result = hotsplice_apply::apply(
        &accepted.bundle,
        &accepted.sha256,
        &pids,
        &args.options.options(),
    );
    let id = &accepted.bundle.id;
    audit_outcome("apply", id, Some(&accepted), &pids, result.as_deref());
    let reports = result.map_err(|e| fail(e, args.options.json))?;
    print_reports("applied", id, &reports, args.options.json);
    Ok(ExitCode::from(EXIT_OK))
}

/// `hotsplice undo`.
pub fn undo(args: &UndoArgs) -> Result<ExitCode, Exit> {
    let pids = pids(&args.targets)?;
    let result = hotsplice_apply::undo(&args.patch, &pids, &args.options.options());
    audit_outcome("undo", &args.patch, None, &pids, result.as_deref());
    let reports = result.map_err(|e| fail(e, args.options.json))?;
    print_reports("undid", &args.patch, &reports, args.options.json);
    Ok(ExitCode::from(EXIT_OK))
}

/// `hotsplice list`.
pub fn list(args: &ListArgs) -> Result<ExitCode, Exit> {
    let listing = hotsplice_apply::list(&args.pids, &args.options.options());
    let mut out = std::io::stdout().lock();
    if args.options.json {
        let ids = |patches: &[hotsplice_apply::AppliedPatch]| -> Vec<String> {
            patches.iter().map(|p| p.id.clone()).collect()
        };
        let processes: Vec<Value> = listing
            .iter()
            .map(|(pid, observed)| match observed {
                Ok(o) => json!({
                    "pid": pid,
                    "patches": o.state.patches,
                    "stale_records_dropped": ids(&o.stale),
                    "unused_patch_memory": ids(&o.unused),
                }),
                Err(e) => json!({"pid": pid, "error": e.to_string()}),
            })
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({ "processes": processes })).unwrap_or_default()
        );
        return Ok(ExitCode::from(EXIT_OK));
    }
    if listing.is_empty() {
        let _ = writeln!(out, "no live patches recorded");
    }
    for (pid, observed) in &listing {
        let o = match observed {
            Ok(o) => o,
            Err(e) => {
                let _ = writeln!(out, "pid {pid}: {e}");
                continue;
            }
        };
        if o.state.patches.is_empty() {
            let _ = writeln!(out, "pid {pid}: no patches");
        }
        for p in &o.state.patches {
            let names: Vec<&str> = p.functions.iter().map(|f| f.name.as_str()).collect();
            let _ = writeln!(
                out,
                "pid {pid}: {} on {} ({}), paused {} µs",
                p.id,
                p.module,
                names.join(", "),
                p.pause_us
            );
        }
        for p in &o.stale {
            let _ = writeln!(
                out,
                "pid {pid}: {} was recorded, but its jumps are not in the code (the program exec'd?): record dropped",
                p.id
            );
        }
        for p in &o.unused {
            let _ = writeln!(
                out,
                "pid {pid}: memory of {} is mapped but not in use (forked during an apply?); harmless",
                p.id
            );
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}
