//! `hotsplice build --kernel` and `hotsplice kernel apply | undo | list`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hotsplice_kernel::build::{self, Outcome, Request, TargetFiles};
use hotsplice_kernel::livepatch::{self, NotLoadable};

use crate::args::{BuildArgs, KernelArgs, KernelCommand, TrustOptions};
use crate::output::{self, AuditRecord, KernelOutcome, Verdict};
use crate::{EXIT_ENVIRONMENT, EXIT_OK, EXIT_REFUSED, ErrorClass, Exit};

fn env_error(error: anyhow::Error) -> Exit {
    Exit::environment(error)
}

/// The class of a kernel build error.
fn class_of(error: &hotsplice_kernel::Error) -> ErrorClass {
    match error {
        hotsplice_kernel::Error::Command { .. } | hotsplice_kernel::Error::Io { .. } => {
            ErrorClass::Environment
        }
        hotsplice_kernel::Error::MissingSymbol { .. }
        | hotsplice_kernel::Error::Ambiguous { .. }
        | hotsplice_kernel::Error::Unsupported { .. } => ErrorClass::Refused,
        _ => ErrorClass::BadInput,
    }
}

/// `hotsplice build --kernel`.
pub fn build(args: &BuildArgs) -> Result<ExitCode, Exit> {
    let started = Instant::now();
    let Some(source) = args.source.clone() else {
        return Err(Exit::bad_input(anyhow!(
            "--kernel needs --source (the kernel source tree)"
        )));
    };
    let config = args.kernel.config.clone().unwrap_or_default();
    // `patch` runs in the prepared tree: the diff's path must not be relative to here.
    let diff = std::fs::canonicalize(args.diff())
        .with_context(|| format!("--diff {}", args.diff().display()))
        .map_err(Exit::bad_input)?;
    // Read the key before a build that takes minutes, so a bad key fails at once.
    let key = args
        .sign
        .as_deref()
        .map(crate::trust::read_secret)
        .transpose()?;
    let running = TargetFiles::for_running_kernel(&livepatch::kernel_release());
    let headers = args.kernel.headers.clone().unwrap_or(running.headers);
    if !headers.join("Module.symvers").exists() {
        return Err(Exit::bad_input(anyhow!(
            "{}: not a kernel headers tree with Module.symvers (install linux-headers-<version> of the target kernel, or pass --headers)",
            headers.display()
        )));
    }
    let symbols = args.kernel.symbols.clone().unwrap_or(running.symbols);
    let kallsyms = std::fs::read_to_string(&symbols)
        .with_context(|| format!("reading the kernel's symbols from {}", symbols.display()))
        .map_err(Exit::bad_input)?;
    if !hotsplice_kernel::kallsyms::Kallsyms::parse(&kallsyms).has_addresses() {
        return Err(Exit::bad_input(anyhow!(
            "{}: the addresses are hidden (read it as root, or lower kernel.kptr_restrict)",
            symbols.display()
        )));
    }
    let vmlinux = args.kernel.vmlinux.clone().unwrap_or(running.vmlinux);
    if !vmlinux.exists() {
        return Err(Exit::bad_input(anyhow!(
            "{}: no such kernel image; pass the target kernel's vmlinux or vmlinuz with --vmlinux",
            vmlinux.display()
        )));
    }
    let name = build::module_name(&args.output);
    let request = Request {
        vmlinux,
        modules: args.kernel.modules.clone().unwrap_or(running.modules),
        source,
        config,
        diff,
        headers,
        kallsyms,
        cache: args
            .cache
            .clone()
            .unwrap_or_else(crate::args::default_cache),
        name: name.clone(),
    };
    let mut progress = |step: &str| {
        eprintln!(
            "hotsplice build [{:6.1}s] {step}",
            started.elapsed().as_secs_f64()
        );
    };
    let outcome = build::build(&request, &mut progress).map_err(|e| Exit {
        class: class_of(&e),
        error: anyhow::Error::new(e),
    })?;
    let mut out = std::io::stdout().lock();
    let total = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Module {
            bytes,
            functions,
            callbacks,
            diffs,
            warnings,
            klp_relocations,
            timings,
            fresh_tree,
            proven,
            header_scope,
        } => {
            std::fs::write(&args.output, &bytes)
                .with_context(|| format!("writing {}", args.output.display()))
                .map_err(env_error)?;
            let signature = key
                .as_ref()
                .map(|k| crate::trust::sign_module(&args.output, &bytes, k))
                .transpose()
                .map_err(env_error)?;
            if signature.is_none() {
                // A stale signature of an earlier build must not sit beside the new module.
                let stale = hotsplice_trust::detached_path(&args.output);
                match std::fs::remove_file(&stale) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(env_error(anyhow::Error::new(e).context(format!(
                            "removing the stale signature {}",
                            stale.display()
                        ))));
                    }
                    _ => {}
                }
            }
            let replaced: Vec<String> = functions.iter().map(|f| f.old_name.clone()).collect();
            if args.json {
                output::emit(
                    &mut out,
                    &output::KernelModuleReport {
                        outcome: Verdict::Written,
                        module: args.output.display().to_string(),
                        name: name.clone(),
                        replaced: functions
                            .iter()
                            .map(|f| output::KernelFunction {
                                function: f.old_name.clone(),
                                sympos: f.sympos,
                                object: f.object.clone(),
                                module: f.module.clone(),
                            })
                            .collect(),
                        objects: diffs.iter().map(|d| d.object.clone()).collect(),
                        changes: changes(&diffs),
                        callbacks: callbacks
                            .iter()
                            .map(|c| output::KernelCallback {
                                kind: callback_kind(c.kind).to_string(),
                                object: c.module.as_deref().unwrap_or("vmlinux").to_string(),
                            })
                            .collect(),
                        klp_relocations,
                        run_pre: proven
                            .iter()
                            .map(|p| output::RunPre {
                                function: p.name.clone(),
                                address: output::hex(p.address),
                                sympos: p.sympos,
                                bytes_matched: p.bytes,
                            })
                            .collect(),
                        warnings: warnings.clone(),
                        headers: header_scope.as_ref().map(scope),
                        fresh_tree,
                        seconds: output::KernelSeconds {
                            prepare: timings.prepare,
                            pre: timings.pre,
                            post: timings.post,
                            module: timings.module,
                            total,
                        },
                    },
                )?;
            } else {
                for w in &warnings {
                    writeln!(out, "warning: {w}")?;
                }
                if let Some(s) = &header_scope {
                    writeln!(
                        out,
                        "  header    {}: included by {} units, {} built on their own, {} in the running kernel (all compiled before and after; include graph {} in {:.1} s)",
                        s.headers.join(", "),
                        s.including,
                        s.candidates,
                        s.built,
                        if s.graph_cached { "cached" } else { "scanned" },
                        s.scan_seconds
                    )?;
                }
                for p in &proven {
                    writeln!(
                        out,
                        "  run-pre   {} at {:#x}: {} bytes equal to the pre build",
                        p.name, p.address, p.bytes
                    )?;
                }
                for c in &callbacks {
                    writeln!(
                        out,
                        "  callback  {:?} of {}",
                        c.kind,
                        c.module.as_deref().unwrap_or("vmlinux")
                    )?;
                }
                writeln!(
                    out,
                    "wrote {} (livepatch module {name}): replaces {} ({} livepatch relocations) in {total:.1} s",
                    args.output.display(),
                    replaced.join(", "),
                    klp_relocations
                )?;
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        Outcome::Refused { refusals, diffs } => {
            if args.json {
                output::emit(
                    &mut out,
                    &output::KernelRefusedReport {
                        outcome: Verdict::Refused,
                        refusals: refusals
                            .iter()
                            .map(|r| output::KernelRefusal {
                                kind: r.kind.as_str().to_string(),
                                symbol: r.symbol.clone(),
                                detail: r.detail.clone(),
                            })
                            .collect(),
                        objects: diffs.iter().map(|d| d.object.clone()).collect(),
                    },
                )?;
            } else {
                for r in &refusals {
                    writeln!(out, "  REFUSED   {} {}: {}", r.kind, r.symbol, r.detail)?;
                }
                writeln!(
                    out,
                    "refused: the fix cannot be applied to the running kernel live (no module written)"
                )?;
            }
            Ok(ExitCode::from(EXIT_REFUSED))
        }
        Outcome::NothingToPatch {
            diffs,
            header_scope,
        } => {
            let objects: Vec<String> = diffs.iter().map(|d| d.object.clone()).collect();
            if args.json {
                output::emit(
                    &mut out,
                    &output::KernelNothingReport {
                        outcome: Verdict::NothingToPatch,
                        objects,
                        headers: header_scope.as_ref().map(scope),
                    },
                )?;
            } else {
                writeln!(
                    out,
                    "nothing to patch: the diff changes no function code in {} (no module written)",
                    objects.join(", ")
                )?;
            }
            Ok(ExitCode::from(EXIT_REFUSED))
        }
    }
}

/// What a changed header reached and what finding it cost, for `--json`.
fn scope(s: &build::HeaderScope) -> output::HeaderScope {
    output::HeaderScope {
        changed: s.headers.clone(),
        including_units: s.including,
        buildable_units: s.candidates,
        units_in_running_kernel: s.built,
        include_graph_cached: s.graph_cached,
        scan_seconds: s.scan_seconds,
    }
}

/// A callback's kind, as livepatch names it.
fn callback_kind(kind: hotsplice_objdiff::patchset::HookKind) -> &'static str {
    match kind {
        hotsplice_objdiff::patchset::HookKind::PreApply => "pre-patch",
        hotsplice_objdiff::patchset::HookKind::PostApply => "post-patch",
        hotsplice_objdiff::patchset::HookKind::PreUndo => "pre-unpatch",
        hotsplice_objdiff::patchset::HookKind::PostUndo => "post-unpatch",
    }
}

/// The functions each diff found changed or new, with why, for `--json`.
fn changes(diffs: &[hotsplice_objdiff::ObjectDiff]) -> Vec<output::KernelChange> {
    use hotsplice_objdiff::Status;
    diffs
        .iter()
        .flat_map(|d| {
            d.functions
                .iter()
                .filter(|f| matches!(f.status, Status::Changed | Status::New))
                .map(|f| output::KernelChange {
                    object: d.object.clone(),
                    function: f.name.clone(),
                    status: if f.status == Status::New {
                        "new"
                    } else {
                        "changed"
                    }
                    .to_string(),
                    why: f.reasons.clone(),
                })
        })
        .collect()
}

/// `hotsplice kernel`.
pub fn run(args: &KernelArgs) -> Result<ExitCode, Exit> {
    match &args.command {
        KernelCommand::Apply {
            module,
            timeout,
            json,
            signature,
            trust,
        } => apply(
            module,
            signature.as_deref(),
            trust,
            Duration::from_secs(*timeout),
            *json,
        ),
        KernelCommand::Undo {
            name,
            timeout,
            json,
        } => undo(name, Duration::from_secs(*timeout), *json),
        KernelCommand::List { json } => list(*json),
    }
}

/// Who vouches for a module: the trusted key whose detached signature verifies
/// (`hotsplice_trust::Policy::accept_module`).
fn accept_module(
    module: &Path,
    bytes: &[u8],
    signature: Option<&Path>,
    trust: &TrustOptions,
) -> Result<String, Exit> {
    hotsplice_trust::Policy {
        trust_dir: &trust.trust_dir,
        allow_unsigned: trust.allow_unsigned,
    }
    .accept_module(module, bytes, signature)
    .map(|signer| signer.to_string())
    .map_err(|e| Exit::refused(anyhow::Error::new(e)))
}

fn apply(
    module: &Path,
    signature: Option<&Path>,
    trust: &TrustOptions,
    timeout: Duration,
    json: bool,
) -> Result<ExitCode, Exit> {
    let bytes = crate::live::read_regular(module, 256 << 20).map_err(Exit::bad_input)?;
    let signer = match accept_module(module, &bytes, signature, trust) {
        Ok(signer) => signer,
        Err(exit) => {
            crate::trust::audit(AuditRecord {
                action: "kernel-apply",
                module: Some(module.display().to_string()),
                sha256: Some(hotsplice_bundle::sha256_hex(&bytes)),
                outcome: exit.class.as_str().to_string(),
                reason: Some(format!("{:#}", exit.error)),
                ..AuditRecord::default()
            });
            return Err(exit);
        }
    };
    let name = livepatch::check_loadable(module, &bytes, &livepatch::kernel_release())
        .map_err(|e| {
            let refused = matches!(e, NotLoadable::OtherKernel { .. });
            let error = anyhow::Error::new(e);
            if refused {
                Exit::refused(error)
            } else {
                Exit::bad_input(error)
            }
        })?
        .name;
    let sha = hotsplice_bundle::sha256_hex(&bytes);
    let started = Instant::now();
    if let Err(e) = livepatch::load(module) {
        crate::trust::audit(AuditRecord {
            action: "kernel-apply",
            module: Some(module.display().to_string()),
            name: Some(name),
            sha256: Some(sha),
            outcome: ErrorClass::Environment.as_str().to_string(),
            reason: Some(e.to_string()),
            ..AuditRecord::default()
        });
        return Err(env_error(anyhow::Error::new(e)));
    }
    let loaded = started.elapsed();
    let stalled = livepatch::wait(&name, false, timeout).map_err(|e| env_error(e.into()))?;
    let total = started.elapsed();
    let outcome = if stalled.is_empty() {
        KernelOutcome::Applied
    } else {
        KernelOutcome::TransitionPending
    };
    crate::trust::audit(AuditRecord {
        action: "kernel-apply",
        module: Some(module.display().to_string()),
        name: Some(name.clone()),
        sha256: Some(sha),
        signer: Some(signer.clone()),
        outcome: outcome.as_str().to_string(),
        transition_seconds: Some(total.as_secs_f64()),
        stalled: Some(output::StalledTask::all(&stalled)),
        ..AuditRecord::default()
    });
    let mut out = std::io::stdout().lock();
    if json {
        output::emit(
            &mut out,
            &output::KernelApplyReport {
                outcome,
                name,
                signer,
                load_seconds: loaded.as_secs_f64(),
                transition_seconds: total.as_secs_f64(),
                stalled: output::StalledTask::all(&stalled),
            },
        )?;
    } else if stalled.is_empty() {
        writeln!(
            out,
            "applied {name}: every task runs the new code ({:.3} s from load to transition complete)",
            total.as_secs_f64()
        )?;
    } else {
        let names: Vec<String> = stalled
            .iter()
            .take(20)
            .map(|t| format!("{} (pid {}, tid {})", t.comm, t.pid, t.tid))
            .collect();
        writeln!(
            out,
            "{name} is loaded but the transition is not complete after {:.0} s: {} task(s) still run old code: {}{}\nlivepatch keeps retrying; `hotsplice kernel undo {name}` reverts it",
            timeout.as_secs_f64(),
            stalled.len(),
            names.join(", "),
            if stalled.len() > 20 { ", ..." } else { "" }
        )?;
    }
    Ok(ExitCode::from(if stalled.is_empty() {
        EXIT_OK
    } else {
        EXIT_ENVIRONMENT
    }))
}

fn undo(name: &str, timeout: Duration, json: bool) -> Result<ExitCode, Exit> {
    let Some(patch) = livepatch::get(name).map_err(|e| env_error(e.into()))? else {
        return Err(Exit::bad_input(anyhow!(
            "no live patch named {name} (see `hotsplice kernel list`)"
        )));
    };
    let started = Instant::now();
    if patch.enabled {
        livepatch::disable(name).map_err(|e| env_error(e.into()))?;
    }
    let stalled = livepatch::wait(name, true, timeout).map_err(|e| env_error(e.into()))?;
    let transition = started.elapsed();
    let result = if stalled.is_empty() {
        livepatch::unload(name).map_err(|e| env_error(e.into()))
    } else {
        Ok(())
    };
    let outcome = match (&result, stalled.is_empty()) {
        (Ok(()), true) => KernelOutcome::Undone,
        (Ok(()), false) => KernelOutcome::TransitionPending,
        (Err(_), _) => KernelOutcome::UnloadFailed,
    };
    crate::trust::audit(AuditRecord {
        action: "kernel-undo",
        name: Some(name.to_string()),
        outcome: outcome.as_str().to_string(),
        transition_seconds: Some(transition.as_secs_f64()),
        ..AuditRecord::default()
    });
    result?;
    let mut out = std::io::stdout().lock();
    if json {
        output::emit(
            &mut out,
            &output::KernelUndoReport {
                outcome,
                name: name.to_string(),
                transition_seconds: transition.as_secs_f64(),
                stalled: output::StalledTask::all(&stalled),
            },
        )?;
    } else if stalled.is_empty() {
        writeln!(
            out,
            "undone {name}: disabled, every task back on the original code, module unloaded ({:.3} s)",
            transition.as_secs_f64()
        )?;
    } else {
        writeln!(
            out,
            "{name} is being disabled but {} task(s) still run its code after {:.0} s; livepatch keeps retrying, run undo again later to unload it",
            stalled.len(),
            timeout.as_secs_f64()
        )?;
    }
    Ok(ExitCode::from(if stalled.is_empty() {
        EXIT_OK
    } else {
        EXIT_ENVIRONMENT
    }))
}

fn list(json: bool) -> Result<ExitCode, Exit> {
    let patches = livepatch::list().map_err(|e| env_error(e.into()))?;
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<output::KernelPatch> = patches
            .iter()
            .map(|p| output::KernelPatch {
                name: p.name.clone(),
                enabled: p.enabled,
                transition: p.transition,
                functions: p.functions.clone(),
            })
            .collect();
        output::emit(&mut out, &list)?;
    } else if patches.is_empty() {
        writeln!(out, "no live patches loaded")?;
    } else {
        for p in &patches {
            writeln!(
                out,
                "{}  {}{}  {}",
                p.name,
                if p.enabled { "enabled" } else { "disabled" },
                if p.transition { " (in transition)" } else { "" },
                p.functions.join(" ")
            )?;
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}
