//! `hotsplice build`: turn a source tree + unified diff into a live-patch bundle.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use hotsplice_build::{Error as BuildError, Request};
use hotsplice_objdiff::Status;
use serde_json::json;

use crate::{EXIT_ENVIRONMENT, EXIT_OK, EXIT_REFUSED, Exit};

/// Build a live patch from the program's source, its build command and a unified diff.
///
/// Runs the project's own build twice — before and after the diff — in a cached copy of the
/// source (the tree you give is never modified), with compiler shims that add
/// `-ffunction-sections -fdata-sections`; diffs the objects the fix recompiled; and writes a
/// bundle for `hotsplice check`/`apply`, or explains why the fix cannot be applied live.
/// The pre build is cached (by source content, build command and compiler): the next patch
/// for the same source costs only the incremental rebuild.
///
/// Exit status: 0 bundle written; 1 refused or nothing to patch (no bundle written; the
/// report says why); 2 bad input (unreadable or non-applying diff, missing target);
/// 3 environment (the build itself failed, I/O errors).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  hotsplice build --source ~/src/app --diff CVE-2024-1234.patch --target app -o cve.hsp\n  hotsplice build --source nginx-1.22.1 --build './configure && make' --target objs/nginx --diff fix.patch -o fix.hsp\n  hotsplice build --debian nginx --diff fix.patch --target usr/sbin/nginx -o fix.hsp\n  hotsplice build --kernel --source /usr/src/linux-source-6.1 --config /boot/config-$(uname -r) --diff fix.patch -o fix.ko"
)]
#[command(group(clap::ArgGroup::new("origin").required(true).args(["source", "debian"])))]
pub struct BuildArgs {
    /// Build a livepatch module for the Linux kernel instead of a bundle: --source is the
    /// kernel source the running kernel was built from (Debian: linux-source-6.1), --config
    /// its configuration; only the translation units the diff touches are compiled, in a
    /// prepared tree cached between builds. Load the module with `hotsplice kernel apply`.
    #[arg(long, requires = "config", conflicts_with_all = ["debian", "target", "build_command", "post_build_command", "mirrors"])]
    pub(crate) kernel: bool,
    /// The kernel's configuration (`/boot/config-$(uname -r)`). With --kernel.
    #[arg(long, value_name = "CONFIG", requires = "kernel")]
    pub(crate) config: Option<PathBuf>,
    /// The target kernel's headers: a kbuild tree with its Module.symvers. With --kernel.
    /// [default: /lib/modules/$(uname -r)/build]
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub(crate) headers: Option<PathBuf>,
    /// The target kernel's symbols (a copy of its /proc/kallsyms, read as root). With
    /// --kernel. [default: /proc/kallsyms]
    #[arg(long, value_name = "KALLSYMS", requires = "kernel")]
    pub(crate) symbols: Option<PathBuf>,
    /// The target kernel's image, for run-pre matching: a vmlinux, or the vmlinuz it boots
    /// (extracted with the source's scripts/extract-vmlinux). With --kernel.
    /// [default: /boot/vmlinuz-$(uname -r)]
    #[arg(long, value_name = "VMLINUX", requires = "kernel")]
    pub(crate) vmlinux: Option<PathBuf>,
    /// The target kernel's modules, for fixes to code built as a module (its .ko is what
    /// run-pre matching proves the code against). With --kernel.
    /// [default: /lib/modules/$(uname -r)]
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub(crate) modules: Option<PathBuf>,
    /// The program's source tree (as the running binary was built from).
    #[arg(long, value_name = "DIR")]
    pub(crate) source: Option<PathBuf>,
    /// Build a Debian package instead: fetch the source of the installed version of PACKAGE
    /// (or of VERSION) with `apt-get source`, with its patch series applied, and build it
    /// through `debian/rules` as Debian does. --target may then be the installed path
    /// (`usr/sbin/nginx`). Needs a deb-src entry and the package's build dependencies.
    #[arg(long, value_name = "PACKAGE[=VERSION]", conflicts_with_all = ["build_command", "mirrors"])]
    debian: Option<String>,
    /// The fix, as a unified diff (`diff -u`, `git diff`, a Debian patch).
    #[arg(long, value_name = "FIX.patch")]
    pub(crate) diff: PathBuf,
    /// The patched binary, relative to the build tree (`objs/nginx`, `src/redis-server`).
    #[arg(long, value_name = "REL/PATH", required_unless_present = "kernel")]
    target: Option<String>,
    /// The build command, run with `sh -c` in the tree.
    #[arg(long = "build", value_name = "CMD", default_value = "make")]
    build_command: String,
    /// The command for the incremental post build, if not the same as --build.
    #[arg(long = "post-build", value_name = "CMD")]
    post_build_command: Option<String>,
    /// A directory of the tree holding a copy of the sources made by the build (Debian's
    /// `debian/build-bin`): patched files are copied there too. Repeatable.
    #[arg(long = "mirror", value_name = "REL/DIR")]
    mirrors: Vec<String>,
    /// Where pre builds are cached [default: $HOTSPLICE_CACHE, else ~/.cache/hotsplice].
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
    /// Parallel build jobs.
    #[arg(short = 'j', long, value_name = "N", default_value_t = 2)]
    jobs: usize,
    /// Where to write the bundle.
    #[arg(short = 'o', long, value_name = "FIX.hsp")]
    pub(crate) output: PathBuf,
    /// Sign the bundle with this secret key (from `hotsplice key generate`); machines that
    /// trust its public key will apply the bundle. Also: `HOTSPLICE_SIGNING_KEY`.
    #[arg(long, value_name = "KEY", env = "HOTSPLICE_SIGNING_KEY")]
    pub(crate) sign: Option<PathBuf>,
    /// Print a JSON summary on stdout (progress still goes to stderr).
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOTSPLICE_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("hotsplice");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/hotsplice"),
        None => PathBuf::from("/var/cache/hotsplice"),
    }
}

fn exit_for(error: BuildError) -> Exit {
    let code = match &error {
        BuildError::DiffParse { .. }
        | BuildError::DiffDoesNotApply { .. }
        | BuildError::TargetMissing { .. }
        | BuildError::TargetNotElf { .. } => crate::EXIT_BAD_INPUT,
        _ => EXIT_ENVIRONMENT,
    };
    Exit {
        code,
        error: anyhow::Error::new(error),
    }
}

/// `hotsplice build`.
pub fn run(args: &BuildArgs) -> Result<ExitCode, Exit> {
    if args.kernel {
        return crate::kernel::build(args);
    }
    let target = args.target.clone().unwrap_or_default();
    // Read the key before a build that takes minutes, so a bad key fails at once.
    let key = args
        .sign
        .as_deref()
        .map(crate::trust::read_secret)
        .transpose()?;
    let shim_program = std::env::current_exe()
        .context("locating the hotsplice executable for the compiler shims")
        .map_err(|error| Exit {
            code: EXIT_ENVIRONMENT,
            error,
        })?;
    let cache = args.cache.clone().unwrap_or_else(default_cache);
    let started = Instant::now();
    let mut progress = |step: &str| {
        eprintln!(
            "hotsplice build [{:6.1}s] {step}",
            started.elapsed().as_secs_f64()
        );
    };
    let mut request = Request {
        source: PathBuf::new(),
        diff: args.diff.clone(),
        target,
        build_command: args.build_command.clone(),
        post_build_command: args.post_build_command.clone(),
        mirrors: args.mirrors.clone(),
        env: Vec::new(),
        debian: false,
        cache: cache.clone(),
        jobs: args.jobs,
        shim_program,
    };
    match (&args.source, &args.debian) {
        (Some(source), _) => request.source = source.clone(),
        (None, Some(spec)) => {
            let source =
                hotsplice_build::debian::fetch(spec, &cache, &mut progress).map_err(exit_for)?;
            hotsplice_build::debian::check_build_deps(&source.tree, spec).map_err(exit_for)?;
            progress(&format!(
                "Debian source {} {}: {}",
                source.package,
                source.version,
                source.tree.display()
            ));
            request.source = source.tree;
            request.build_command = "debian/rules build-arch".to_string();
            request.env = vec![(
                "DEB_BUILD_OPTIONS".to_string(),
                format!("nocheck parallel={}", args.jobs.max(1)),
            )];
            request.debian = true;
        }
        (None, None) => unreachable!("clap requires --source or --debian"),
    }
    let outcome = hotsplice_build::build(&request, &mut progress).map_err(exit_for)?;
    let bundle = &outcome.bundle;

    let changed: Vec<String> = bundle
        .objects
        .iter()
        .flat_map(|o| o.replacements.iter().map(|r| r.name.clone()))
        .collect();
    let new: Vec<String> = outcome
        .report
        .objects
        .iter()
        .flat_map(|o| &o.functions)
        .filter(|f| f.status == Status::New)
        .map(|f| f.name.clone())
        .collect();
    let (verdict, code) = if !bundle.refusals.is_empty() {
        ("refused", EXIT_REFUSED)
    } else if !outcome.has_changes() {
        ("nothing-to-patch", EXIT_REFUSED)
    } else {
        ("written", EXIT_OK)
    };
    if verdict == "written" {
        let bytes = hotsplice_bundle::write_signed(bundle, key.as_ref())
            .context("sealing the bundle")
            .map_err(|error| Exit {
                code: EXIT_ENVIRONMENT,
                error,
            })?;
        std::fs::write(&args.output, bytes)
            .with_context(|| format!("writing {}", args.output.display()))
            .map_err(|error| Exit {
                code: EXIT_ENVIRONMENT,
                error,
            })?;
    }

    let t = &outcome.timings;
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary = json!({
            "outcome": verdict,
            "bundle": (verdict == "written").then(|| args.output.display().to_string()),
            "signed_by": key.as_ref().filter(|_| verdict == "written").map(|k| k.public().id()),
            "id": bundle.id,
            "target": bundle.target.path,
            "replaced": changed,
            "new": new,
            "refusals": bundle.refusals,
            "warnings": bundle.warnings,
            "rebuilt": outcome.rebuilt,
            "not_in_target": outcome.not_in_target,
            "other_targets": outcome.other_targets,
            "pre_cached": outcome.pre_cached,
            "seconds": {
                "pre_build": t.pre_build.as_secs_f64(),
                "prepare": t.prepare.as_secs_f64(),
                "post_build": t.post_build.as_secs_f64(),
                "diff": t.diff.as_secs_f64(),
                "total": started.elapsed().as_secs_f64(),
            },
        });
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        let _ = crate::diff::write_human(&mut out, &outcome.report, false);
        if !outcome.not_in_target.is_empty() {
            let _ = writeln!(
                out,
                "not linked into {} (ignored): {}",
                bundle.target.path,
                outcome.not_in_target.join(", ")
            );
        }
        if !outcome.other_targets.is_empty() {
            let _ = writeln!(
                out,
                "the fix changes other binaries of the build: {} (build a patch for each with --target)",
                outcome.other_targets.join(", ")
            );
        }
        let _ = match verdict {
            "written" => writeln!(
                out,
                "wrote {} ({}{}): replaces {}{}",
                args.output.display(),
                bundle.id,
                key.as_ref()
                    .map(|k| format!(", signed by {}", k.public().id()))
                    .unwrap_or_else(|| ", unsigned".to_string()),
                changed.join(", "),
                if new.is_empty() {
                    String::new()
                } else {
                    format!("; adds {}", new.join(", "))
                }
            ),
            "nothing-to-patch" if !outcome.other_targets.is_empty() => writeln!(
                out,
                "nothing to patch in {}: the diff changes only {} (no bundle written)",
                bundle.target.path,
                outcome.other_targets.join(", ")
            ),
            "nothing-to-patch" => writeln!(
                out,
                "nothing to patch: the diff changes no function of {} in this build (no bundle written)",
                bundle.target.path
            ),
            _ => writeln!(
                out,
                "refused: the fix cannot be applied live (no bundle written); see the refusals above"
            ),
        };
    }
    Ok(ExitCode::from(code))
}
