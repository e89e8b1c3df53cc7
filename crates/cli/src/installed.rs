//! Keeping a system patched: `hotsplice install | uninstall | status | watch`.
//!
//! Installed bundles live in a store (`/var/lib/hotsplice/installed/<id>.hsp`, plus
//! `<id>.json`: the file it is for, when given). `install` puts a bundle there and applies it
//! to every running process that needs it; `watch` (a small daemon, `packaging/
//! hotsplice-watch.service`) applies every installed bundle to processes that start later —
//! on each `exec` the kernel reports, and in a periodic sweep that also catches libraries
//! loaded with `dlopen`; `status` says, per installed patch, which processes have it and which
//! do not (and why), as text, JSON, or Prometheus metrics for node_exporter's textfile
//! collector. A process that maps another build of the file (the fixed one, after a package
//! upgrade) is never patched: it already runs the fix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use hotsplice_apply::discover::{Select, Version, discover, discover_in};
use hotsplice_apply::{Options, PauseLog};
use serde::{Deserialize, Serialize};

use crate::args::{InstallArgs, StatusArgs, TrustOptions, UninstallArgs, WatchArgs};
use crate::exit::class_of;
use crate::output::{self, AuditRecord, PatchState, Pause};
use crate::{EXIT_OK, Exit};

/// `<id>.json` beside an installed bundle in the store.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct StoreEntry {
    /// The patch id.
    id: String,
    /// The file it is installed for (`install --file`); else processes are found by build-id.
    file: Option<String>,
    /// The build-id the file had at install time: processes mapping that build are targets
    /// too (a bundle built elsewhere from the same source).
    file_build_id: Option<String>,
    /// When it was installed (Unix time, seconds).
    installed_unix: u64,
    /// The SHA-256 of the bundle's content.
    bundle_sha256: String,
}

impl StoreEntry {
    /// The entry of the bundle at `bundle` (`<id>.hsp`); an empty one when it is missing or
    /// does not parse.
    fn read(bundle: &Path) -> Self {
        std::fs::read_to_string(bundle.with_extension("json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }
}

/// An installed bundle.
struct Installed {
    bundle: hotsplice_bundle::Bundle,
    sha256: String,
    file: Option<PathBuf>,
    /// The build-id `file` had when the bundle was installed.
    file_build_id: Option<String>,
}

impl Installed {
    fn select(&self) -> Select {
        match &self.file {
            Some(f) => Select::Installed {
                path: f.clone(),
                build_id: self.file_build_id.clone(),
            },
            None => Select::BuildId,
        }
    }

    fn target(&self) -> String {
        self.file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| {
                format!(
                    "build-id {}",
                    self.bundle.target.build_id.as_deref().unwrap_or("none")
                )
            })
    }
}

fn env_error(error: anyhow::Error) -> Exit {
    Exit::environment(error)
}

/// The store's directory of installed bundles, checked.
fn installed_dir(store: &Path) -> Result<PathBuf, Exit> {
    let dir = store.join("installed");
    hotsplice_apply::state::StateDir::open(&dir)
        .map(|d| d.path().to_path_buf())
        .map_err(|e| env_error(anyhow::Error::new(e)))
}

/// How long `install` and `uninstall` wait for a `watch` sweep (or another install) to end.
const STORE_WAIT: Duration = Duration::from_secs(60);

/// The store's lock: `install`, `uninstall` and each pass of `watch` hold it, so a sweep never
/// applies a patch that is being uninstalled (and undone) meanwhile.
fn lock_store(store: &Path, wait: Duration) -> Result<hotsplice_apply::state::Lock, Exit> {
    hotsplice_apply::state::StateDir::open(&store.join("installed"))
        .and_then(|d| d.lock_all(wait))
        .map_err(|e| env_error(anyhow::Error::new(e)))
}

/// Every installed bundle that still passes the trust policy.
fn load(store: &Path, trust: &TrustOptions) -> Result<Vec<Installed>, Exit> {
    let dir = installed_dir(store)?;
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())
        .map_err(env_error)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "hsp"))
        .collect();
    paths.sort();
    for path in paths {
        let accepted = crate::live::read_bundle(&path, trust, "watch")?;
        let entry = StoreEntry::read(&path);
        out.push(Installed {
            file: entry.file.map(PathBuf::from),
            file_build_id: entry.file_build_id,
            bundle: accepted.bundle,
            sha256: accepted.sha256,
        });
    }
    Ok(out)
}

/// What applying an installed bundle to some processes did.
#[derive(Default)]
struct Rollout {
    patched: Vec<i32>,
    failed: Vec<(i32, String)>,
    /// Processes that map another build of the file (never patched), with that build-id.
    other: Vec<(i32, Option<String>)>,
}

/// Applies `installed` to those of `pids` (all processes when `None`) that map its file and
/// lack it, each on its own.
fn roll_out(installed: &Installed, pids: Option<&[i32]>, options: &Options) -> Rollout {
    let select = installed.select();
    let found = match pids {
        Some(pids) => discover_in(&select, &installed.bundle, pids),
        None => discover(&select, &installed.bundle),
    };
    let mut rollout = Rollout::default();
    let Ok(found) = found else {
        return rollout;
    };
    for f in found {
        if let Version::Other { build_id } = f.version {
            rollout.other.push((f.pid, build_id));
            continue;
        }
        let has = hotsplice_apply::list(&[f.pid], options)
            .ok()
            .and_then(|l| l.into_iter().next())
            .and_then(|(_, o)| o.ok())
            .is_some_and(|o| o.state.patches.iter().any(|p| p.id == installed.bundle.id));
        if has {
            continue;
        }
        let mut pauses = PauseLog::new();
        let result = hotsplice_apply::apply(
            &installed.bundle,
            &installed.sha256,
            &[f.pid],
            options,
            &mut pauses,
        );
        crate::trust::audit(AuditRecord {
            action: "apply",
            by: Some("install/watch"),
            patch: Some(installed.bundle.id.clone()),
            pids: Some(vec![f.pid]),
            outcome: match &result {
                Ok(_) => "done",
                Err(e) => class_of(e).as_str(),
            }
            .to_string(),
            reason: result.as_ref().err().map(|e| e.to_string()),
            pause: Some(Pause {
                threads: None,
                ..Pause::of(&pauses)
            }),
            ..AuditRecord::default()
        });
        match result {
            Ok(_) => rollout.patched.push(f.pid),
            Err(e) => rollout.failed.push((f.pid, e.to_string())),
        }
    }
    rollout
}

/// `hotsplice install`.
pub fn install(args: &InstallArgs) -> Result<ExitCode, Exit> {
    let accepted = crate::live::read_bundle(&args.bundle, &args.trust, "install")?;
    if let Some(file) = &args.file
        && !file.exists()
    {
        return Err(Exit::bad_input(anyhow!("{}: no such file", file.display())));
    }
    let dir = installed_dir(&args.store.store)?;
    let _lock = lock_store(&args.store.store, STORE_WAIT)?;
    let id = accepted.bundle.id.clone();
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| args.bundle.display().to_string())
        .map_err(Exit::bad_input)?;
    let write = |name: String, data: &[u8]| -> anyhow::Result<()> {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, dir.join(name))?;
        Ok(())
    };
    // The file's build now: processes that map it are the bundle's target even when the
    // bundle was built elsewhere from the same source (run-pre matching proves that per
    // process); after an upgrade, the new build is not.
    let file_build_id = args
        .file
        .as_deref()
        .and_then(hotsplice_apply::discover::file_build_id);
    let meta = StoreEntry {
        id: id.clone(),
        file: args.file.as_ref().map(|f| f.display().to_string()),
        file_build_id: file_build_id.clone(),
        installed_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        bundle_sha256: accepted.sha256.clone(),
    };
    let meta = serde_json::to_vec(&meta).map_err(|e| env_error(e.into()))?;
    write(format!("{id}.json"), &meta)
        .and_then(|()| write(format!("{id}.hsp"), &bytes))
        .map_err(env_error)?;
    let installed = Installed {
        bundle: accepted.bundle,
        sha256: accepted.sha256,
        file: args.file.clone(),
        file_build_id,
    };
    let rollout = if args.no_apply {
        Rollout::default()
    } else {
        roll_out(&installed, None, &args.options.options())
    };
    let mut out = std::io::stdout().lock();
    if args.options.json {
        output::emit(
            &mut out,
            &output::InstallReport {
                ok: rollout.failed.is_empty(),
                installed: id,
                target: installed.target(),
                patched: rollout.patched.clone(),
                failed: pid_errors(&rollout.failed),
                other_build: rollout
                    .other
                    .iter()
                    .map(|(pid, build_id)| output::OtherBuild {
                        pid: *pid,
                        build_id: build_id.clone(),
                    })
                    .collect(),
            },
        )?;
    } else {
        writeln!(
            out,
            "installed {id} for {}: patched {} running process(es){}",
            installed.target(),
            rollout.patched.len(),
            if args.no_apply { " (--no-apply)" } else { "" }
        )?;
        if let (Some(have), Some(built)) = (
            installed.file_build_id.as_deref(),
            installed.bundle.target.build_id.as_deref(),
        ) && have != built
        {
            writeln!(
                out,
                "note: the file's build-id is {have}, the bundle was built from {built}: each \
                 process's code is proven the same by run-pre matching before it is patched"
            )?;
        }
        for (pid, e) in &rollout.failed {
            writeln!(out, "failed pid {pid}: {e}")?;
        }
        for (pid, build_id) in &rollout.other {
            writeln!(
                out,
                "skipped pid {pid}: it maps another build of the file (build-id {}): not patched",
                build_id.as_deref().unwrap_or("none")
            )?;
        }
    }
    Ok(ExitCode::from(if rollout.failed.is_empty() {
        EXIT_OK
    } else {
        crate::EXIT_REFUSED
    }))
}

/// `hotsplice uninstall`.
pub fn uninstall(args: &UninstallArgs) -> Result<ExitCode, Exit> {
    let dir = installed_dir(&args.store.store)?;
    let _lock = lock_store(&args.store.store, STORE_WAIT)?;
    let bundle = dir.join(format!("{}.hsp", args.patch));
    if !bundle.exists() || args.patch.contains('/') {
        return Err(Exit::bad_input(anyhow!(
            "no patch {} is installed",
            args.patch
        )));
    }
    // Which processes the installed patch is for: those of its file (or build-id) only — the
    // same patch applied to another file by hand, or by another store, stays.
    let file = StoreEntry::read(&bundle).file.map(PathBuf::from);
    let by_build_id = std::fs::read(&bundle)
        .ok()
        .and_then(|b| hotsplice_bundle::read(&b).ok())
        .map(|sealed| sealed.bundle);
    std::fs::remove_file(&bundle)
        .and_then(
            |()| match std::fs::remove_file(bundle.with_extension("json")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        )
        .with_context(|| bundle.display().to_string())
        .map_err(env_error)?;
    let options = args.options.options();
    let mut undone = Vec::new();
    let mut failed = Vec::new();
    if !args.keep_applied {
        let mut holders = hotsplice_apply::holders(&args.patch, &options)
            .map_err(|e| env_error(anyhow::Error::new(e)))?;
        if let Some(file) = &file {
            holders = hotsplice_apply::discover::mapping_file(file, &holders);
        } else if let Some(bundle) = &by_build_id {
            holders = discover_in(&Select::BuildId, bundle, &holders)
                .map(|found| found.into_iter().map(|f| f.pid).collect())
                .unwrap_or(holders);
        }
        for pid in holders {
            let mut pauses = PauseLog::new();
            match hotsplice_apply::undo(&args.patch, &[pid], &options, &mut pauses) {
                Ok(_) => undone.push(pid),
                Err(e) => failed.push((pid, e.to_string())),
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if args.options.json {
        output::emit(
            &mut out,
            &output::UninstallReport {
                ok: failed.is_empty(),
                uninstalled: args.patch.clone(),
                undone: undone.clone(),
                failed: pid_errors(&failed),
            },
        )?;
    } else {
        writeln!(
            out,
            "uninstalled {}: undone in {} process(es)",
            args.patch,
            undone.len()
        )?;
        for (pid, e) in &failed {
            writeln!(out, "failed pid {pid}: {e}")?;
        }
    }
    Ok(ExitCode::from(if failed.is_empty() {
        EXIT_OK
    } else {
        crate::EXIT_REFUSED
    }))
}

/// `hotsplice status`.
pub fn status(args: &StatusArgs) -> Result<ExitCode, Exit> {
    let options = args.options.options();
    let installed = load(&args.store.store, &args.trust)?;
    let mut rows = Vec::new();
    let mut missing = 0usize;
    for i in &installed {
        let found = discover(&i.select(), &i.bundle).unwrap_or_default();
        let mut processes = Vec::new();
        for f in found {
            let state = match f.version {
                Version::Other { .. } => PatchState::OtherBuild,
                Version::Target => {
                    let has = hotsplice_apply::list(&[f.pid], &options)
                        .ok()
                        .and_then(|l| l.into_iter().next())
                        .and_then(|(_, o)| o.ok())
                        .is_some_and(|o| o.state.patches.iter().any(|p| p.id == i.bundle.id));
                    if has {
                        PatchState::Patched
                    } else {
                        missing += 1;
                        PatchState::Unpatched
                    }
                }
            };
            processes.push(output::StatusProcess {
                pid: f.pid,
                comm: hotsplice_ptrace::comm_of(f.pid),
                mapped: f.mapped,
                state,
                pid_inside: f.namespaces.inner_pid,
            });
        }
        rows.push(output::StatusPatch {
            patch: i.bundle.id.clone(),
            target: i.target(),
            processes,
        });
    }
    if let Some(file) = &args.prometheus {
        let mut text = String::from(
            "# HELP hotsplice_patch_processes Processes mapping an installed patch's file, by state.\n\
             # TYPE hotsplice_patch_processes gauge\n",
        );
        for r in &rows {
            for state in PatchState::ALL {
                let n = r.processes.iter().filter(|p| p.state == state).count();
                text.push_str(&format!(
                    "hotsplice_patch_processes{{patch=\"{}\",target=\"{}\",state=\"{}\"}} {n}\n",
                    r.patch,
                    r.target.replace('"', "'"),
                    state.as_str().replace('-', "_")
                ));
            }
        }
        let tmp = file.with_extension("prom.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, file))
            .with_context(|| file.display().to_string())
            .map_err(env_error)?;
    }
    let mut out = std::io::stdout().lock();
    if args.options.json {
        output::emit(
            &mut out,
            &output::StatusReport {
                ok: missing == 0,
                installed: rows,
            },
        )?;
    } else {
        if rows.is_empty() {
            writeln!(out, "no patch installed")?;
        }
        for r in &rows {
            writeln!(out, "{} for {}:", r.patch, r.target)?;
            for p in &r.processes {
                writeln!(out, "  pid {} ({}): {}", p.pid, p.comm, p.state.as_str())?;
            }
        }
    }
    Ok(ExitCode::from(if missing == 0 {
        EXIT_OK
    } else {
        crate::EXIT_REFUSED
    }))
}

/// The processes where `install` or `uninstall` failed, for `--json`.
fn pid_errors(failed: &[(i32, String)]) -> Vec<output::PidError> {
    failed
        .iter()
        .map(|(pid, error)| output::PidError {
            pid: *pid,
            error: error.clone(),
        })
        .collect()
}

/// `hotsplice watch`.
pub fn watch(args: &WatchArgs) -> Result<ExitCode, Exit> {
    let options = args.options.options();
    let interval = Duration::from_secs(args.interval.max(1));
    let mut events = match hotsplice_ptrace::exec_events::ExecEvents::open() {
        Ok(events) => Some(events),
        Err(e) => {
            eprintln!("hotsplice watch: {e}; relying on sweeps every {interval:?}");
            None
        }
    };
    eprintln!(
        "hotsplice watch: watching (store {})",
        args.store.store.display()
    );
    let mut next_sweep = Instant::now();
    loop {
        if let Some(signal) = hotsplice_ptrace::signals::take_interruption() {
            eprintln!("hotsplice watch: {signal} received, stopping");
            return Ok(ExitCode::from(EXIT_OK));
        }
        let now = Instant::now();
        let pids: Option<Vec<i32>> = if now >= next_sweep {
            next_sweep = now + interval;
            None
        } else {
            let wait = next_sweep
                .saturating_duration_since(now)
                .min(Duration::from_millis(500));
            match &mut events {
                Some(ev) => match ev.next(wait) {
                    Ok(p) if p.is_empty() => continue,
                    Ok(p) => {
                        // Let the dynamic loader map the program's libraries first.
                        std::thread::sleep(Duration::from_millis(20));
                        Some(p)
                    }
                    Err(e) => {
                        eprintln!("hotsplice watch: {e}");
                        events = None;
                        continue;
                    }
                },
                None => {
                    std::thread::sleep(wait);
                    continue;
                }
            }
        };
        // A pass holds the store's lock: an uninstall waits for it, and the next pass no
        // longer sees the uninstalled patch.
        let _lock = match lock_store(&args.store.store, Duration::from_secs(5)) {
            Ok(lock) => lock,
            Err(e) => {
                eprintln!("hotsplice watch: {:#}", e.error);
                continue;
            }
        };
        let installed = match load(&args.store.store, &args.trust) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("hotsplice watch: {:#}", e.error);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        for i in &installed {
            let rollout = roll_out(i, pids.as_deref(), &options);
            for pid in &rollout.patched {
                eprintln!(
                    "hotsplice watch: applied {} to pid {pid} ({})",
                    i.bundle.id,
                    hotsplice_ptrace::comm_of(*pid)
                );
            }
            for (pid, e) in &rollout.failed {
                eprintln!("hotsplice watch: {} in pid {pid}: {e}", i.bundle.id);
            }
        }
    }
}
