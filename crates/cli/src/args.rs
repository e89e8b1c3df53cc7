//! Every command-line argument: the clap structures of all commands, in one place.
//!
//! The command modules (`build`, `kernel`, `live`, ...) take their arguments from here and
//! never from each other; `--help` is generated from these doc comments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hotsplice_apply::Options;

/// Exit statuses, after every command's own `--help`.
const AFTER_HELP: &str = "\
Exit status:
  0  success; for `diff`, the change can be applied live
  1  refused: the change cannot be applied live (the report names why)
  2  bad input: unreadable or malformed files, wrong architecture, bad arguments
  3  environment: the project's build failed, permissions, I/O errors

Not supported: architectures other than x86-64, clang; C++ patches an exception could unwind
through are refused (cxx-unwind).";

/// Live patching for Linux: turn a source diff into a patch for running programs.
#[derive(Debug, Parser)]
#[command(name = "hotsplice", version, about, long_about = None, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    Build(Box<BuildArgs>),
    Header(HeaderArgs),
    Info(InfoArgs),
    Check(CheckArgs),
    Apply(ApplyArgs),
    Undo(UndoArgs),
    List(ListArgs),
    Recover(RecoverArgs),
    Install(InstallArgs),
    Uninstall(UninstallArgs),
    Status(StatusArgs),
    Watch(WatchArgs),
    Diff(DiffArgs),
    Key(KeyArgs),
    Sign(SignArgs),
    Kernel(KernelArgs),
}

impl Command {
    /// Whether the command was asked for JSON output.
    pub(crate) fn json(&self) -> bool {
        match self {
            // `build --json` has its own shape for errors too (`main::error_report`).
            Command::Build(_) | Command::Header(_) => false,
            Command::Info(a) => a.json,
            Command::Check(a) => a.options.json,
            Command::Apply(a) => a.options.json,
            Command::Undo(a) => a.options.json,
            Command::List(a) => a.options.json,
            Command::Recover(a) => a.options.json,
            Command::Install(a) => a.options.json,
            Command::Uninstall(a) => a.options.json,
            Command::Status(a) => a.options.json,
            Command::Watch(_) => false,
            Command::Diff(a) => a.json,
            Command::Kernel(a) => a.json(),
            Command::Key(_) | Command::Sign(_) => false,
        }
    }

    /// Whether it works on running processes (and so must not be stopped or interrupted
    /// half-way).
    pub(crate) fn live(&self) -> bool {
        matches!(
            self,
            Command::Check(_)
                | Command::Apply(_)
                | Command::Undo(_)
                | Command::Recover(_)
                | Command::List(_)
                | Command::Install(_)
                | Command::Uninstall(_)
                | Command::Status(_)
                | Command::Watch(_)
        )
    }
}

/// Build a live patch from the program's source, its build command and a unified diff.
///
/// Runs the project's own build twice — before and after the diff — in a cached copy of the
/// source (the tree you give is never modified), with compiler shims that add
/// `-ffunction-sections -fdata-sections`; diffs the objects the fix recompiled; and writes a
/// bundle for `hotsplice check`/`apply`, or explains why the fix cannot be applied live.
/// Every file of the diff is accounted for: recompiled and diffed, shown not to be part of
/// the target, ignored (tests, documentation, files the build never reads), or refused
/// (build configuration). The pre build is cached (by source content, build command and
/// compiler): the next patch for the same source costs only the incremental rebuild.
///
/// A series (--series, or --debian with --update-to) is built in order: one full build,
/// then one incremental build and one bundle per patch, each built on top of the previous
/// ones (apply them in order); -o is then a directory.
///
/// Exit status: 0 bundle(s) written (for a series: no patch refused or failed); 1 refused or
/// nothing to patch (no bundle written; the report says why); 2 bad input (unreadable or
/// non-applying diff, missing target, unusable -o); 3 environment (the build itself failed,
/// I/O errors).
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  hotsplice build --source ~/src/app --diff CVE-2024-1234.patch --target app -o cve.hsp\n  hotsplice build --source nginx-1.22.1 --build './configure && make' --target objs/nginx --diff fix.patch -o fix.hsp\n  hotsplice build --source app --series patches/ --target app -o bundles/\n  hotsplice build --debian nginx --diff fix.patch --target usr/sbin/nginx -o fix.hsp\n  hotsplice build --debian openssh-server --update-to 1:9.2p1-2+deb12u10 --target usr/sbin/sshd -o bundles/\n  hotsplice build --kernel --source /usr/src/linux-source-6.1 --config /boot/config-$(uname -r) --diff fix.patch -o fix.ko"
)]
#[command(group(clap::ArgGroup::new("origin").required(true).args(["source", "debian"])))]
pub(crate) struct BuildArgs {
    #[command(flatten)]
    pub(crate) kernel: KernelBuildArgs,
    /// The program's source tree (as the running binary was built from).
    #[arg(long, value_name = "DIR")]
    pub(crate) source: Option<PathBuf>,
    /// Build a Debian package instead: fetch the source of the installed version of PACKAGE
    /// (or of VERSION) with `apt-get source`, with its patch series applied, and build it
    /// through `debian/rules` as Debian does. --target may then be the installed path
    /// (`usr/sbin/nginx`). Needs a deb-src entry and the package's build dependencies.
    #[arg(long, value_name = "PACKAGE[=VERSION]", conflicts_with_all = ["build_command", "mirrors"])]
    pub(crate) debian: Option<String>,
    /// With --debian: build the update from that version (installed, or named) to VERSION of
    /// the same package, as a series — the patches VERSION's `debian/patches` adds, one bundle
    /// each (or one diff of the whole source when the upstream version differs).
    #[arg(long = "update-to", value_name = "VERSION", requires = "debian", conflicts_with_all = ["series", "diff_arg"])]
    pub(crate) update_to: Option<String>,
    /// The fix, as a unified diff (`diff -u`, `git diff`, a Debian patch).
    #[arg(
        long = "diff",
        value_name = "FIX.patch",
        required_unless_present_any = ["series", "update_to"]
    )]
    pub(crate) diff_arg: Option<PathBuf>,
    /// A patch series, in order: a directory with a quilt `series` file (`debian/patches`)
    /// or of `*.patch` files, a series file, or a patch (repeat to list patches). One bundle
    /// per patch, each built on top of the previous ones; -o is then a directory.
    #[arg(long, value_name = "DIR|FILE", conflicts_with = "diff_arg")]
    pub(crate) series: Vec<PathBuf>,
    /// The patched binary, relative to the build tree (`objs/nginx`, `src/redis-server`).
    #[arg(long, value_name = "REL/PATH", required_unless_present = "kernel")]
    pub(crate) target: Option<String>,
    /// The build command, run with `sh -c` in the tree.
    #[arg(long = "build", value_name = "CMD", default_value = "make")]
    pub(crate) build_command: String,
    /// The command for the incremental post build, if not the same as --build.
    #[arg(long = "post-build", value_name = "CMD")]
    pub(crate) post_build_command: Option<String>,
    /// A directory of the tree holding a copy of the sources made by the build (Debian's
    /// `debian/build-bin`): patched files are copied there too. Repeatable.
    #[arg(long = "mirror", value_name = "REL/DIR")]
    pub(crate) mirrors: Vec<String>,
    /// Extra environment for the builds, NAME=VALUE (e.g. `DEB_BUILD_PROFILES=noudeb`).
    /// Repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub(crate) env: Vec<String>,
    /// Where pre builds are cached [default: $HOTSPLICE_CACHE, else ~/.cache/hotsplice].
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
    /// Parallel build jobs.
    #[arg(short = 'j', long, value_name = "N", default_value_t = 2)]
    pub(crate) jobs: usize,
    /// Where to write the bundle (a directory for a series).
    #[arg(short = 'o', long, value_name = "FIX.hsp")]
    pub(crate) output: PathBuf,
    /// Sign the bundle with this secret key (from `hotsplice key generate`); machines that
    /// trust its public key will apply the bundle. Also: `HOTSPLICE_SIGNING_KEY`.
    #[arg(long, value_name = "KEY", env = "HOTSPLICE_SIGNING_KEY")]
    pub(crate) sign: Option<PathBuf>,
    /// Print a JSON summary on stdout (progress still goes to stderr), errors included.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The options of `build --kernel` (flattened into [`BuildArgs`]).
#[derive(Debug, Clone, Args)]
pub(crate) struct KernelBuildArgs {
    /// Build a livepatch module for the Linux kernel instead of a bundle: --source is the
    /// kernel source the running kernel was built from (Debian: linux-source-6.1), --config
    /// its configuration; only the translation units the diff touches are compiled, in a
    /// prepared tree cached between builds. Load the module with `hotsplice kernel apply`.
    #[arg(id = "kernel", long = "kernel", requires = "config", conflicts_with_all = ["debian", "target", "build_command", "post_build_command", "mirrors", "series", "update_to"])]
    pub(crate) enabled: bool,
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
}

impl BuildArgs {
    /// The diff (`--diff`; empty for a series).
    pub(crate) fn diff(&self) -> PathBuf {
        self.diff_arg.clone().unwrap_or_default()
    }
}

/// Where pre builds are cached: `$HOTSPLICE_CACHE`, else `$XDG_CACHE_HOME/hotsplice`, else
/// `~/.cache/hotsplice`.
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

/// Print hotsplice.h, the header for fixes that change data (hooks, shadow data).
///
/// Hooks run in the target during apply and undo, every other thread stopped (a pre hook may
/// refuse); shadow data attaches new members to live objects. With them a fix that changes a
/// data structure is rewritten to go in live (docs/semantic-patches.md).
///
/// `hotsplice build` puts the header on the compiler's include path by itself; this command
/// is for editors and other tools.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  hotsplice header\n  hotsplice header -o /usr/local/include/hotsplice.h"
)]
pub(crate) struct HeaderArgs {
    /// Write the header to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

/// Show what a live-patch bundle contains: target, functions, provenance.
///
/// Reads and verifies the bundle (format, content hash, structure); a malformed, truncated
/// or modified bundle is an error (exit status 2).
#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// The bundle.
    pub(crate) bundle: PathBuf,
    /// Print the bundle's envelope and content as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Compare a pre-patch and a post-patch build: which functions really changed.
///
/// PRE and POST are two relocatable objects (`.o`) of the same source file, or two
/// directories of objects paired by relative path. Both builds must use gcc with
/// `-ffunction-sections -fdata-sections` (and `-g` for the struct layout check).
/// Exit status 0 means the change can be applied live, 1 that it is refused (the report
/// names the variable, type, section or relocation at fault), 2 bad input.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  hotsplice diff build-pre/src/http.o build-post/src/http.o\n  hotsplice diff --json build-pre/ build-post/ > report.json"
)]
pub(crate) struct DiffArgs {
    /// The pre-patch object, or a directory of them.
    pub(crate) pre: PathBuf,
    /// The post-patch object, or a directory of them.
    pub(crate) post: PathBuf,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also list unchanged functions and variables in the human report.
    #[arg(long)]
    pub(crate) all: bool,
}

/// Which processes. Without `--pid`, `--exe` or `--file`: every process on the system that
/// maps a file with the bundle's build-id (for `undo`: every process that has the patch).
#[derive(Debug, Args)]
pub(crate) struct Targets {
    /// A process (repeatable). Processes sharing its memory (`clone(CLONE_VM)`, a `vfork`
    /// child) are stopped, checked and patched with it.
    #[arg(long = "pid", value_name = "PID", conflicts_with_all = ["exe", "file"])]
    pub(crate) pids: Vec<i32>,
    /// Every process running this executable (also after the file was replaced or deleted
    /// on disk by a package upgrade).
    #[arg(long, value_name = "PATH", conflicts_with = "file")]
    pub(crate) exe: Option<PathBuf>,
    /// Every process that maps this file — an executable or a shared library — including a
    /// copy since deleted or replaced on disk and the same path in a container. Processes
    /// mapping another build of the file are skipped (see --any-build).
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Patch each process on its own and report each, instead of all or none.
    #[arg(long)]
    pub(crate) each: bool,
    /// With --file: also processes mapping another build of the file (run-pre matching then
    /// decides, process by process).
    #[arg(long, requires = "file")]
    pub(crate) any_build: bool,
}

/// Shared options.
#[derive(Debug, Args)]
pub(crate) struct LiveOptions {
    /// Print one JSON object on stdout (also for errors: {"ok": false, "class", "error"}).
    #[arg(long)]
    pub(crate) json: bool,
    /// Stops to retry while a thread is blocked in a function being replaced.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub(crate) retries: u32,
    /// Milliseconds between retries (the target runs meanwhile).
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub(crate) retry_delay: u64,
    /// Microseconds a runnable thread found in a function being replaced may run alone, the
    /// others stopped, to leave it (per stop).
    #[arg(long, value_name = "US", default_value_t = 1000)]
    pub(crate) let_run: u64,
    /// Seconds to wait for another hotsplice working on the same process.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub(crate) lock_timeout: u64,
    /// Where applied patches are recorded; it must belong to root and be writable by no one
    /// else, like every directory above it.
    #[arg(long, value_name = "DIR", default_value = hotsplice_apply::state::DEFAULT_DIR, env = "HOTSPLICE_STATE_DIR")]
    pub(crate) state_dir: PathBuf,
}

/// Which bundles are trusted.
#[derive(Debug, Args)]
pub(crate) struct TrustOptions {
    /// Directory of trusted public keys (`*.pub`); it and its keys must belong to root and be
    /// writable by no one else.
    #[arg(long, value_name = "DIR", default_value = hotsplice_trust::DEFAULT_TRUST_DIR, env = "HOTSPLICE_TRUST_DIR")]
    pub(crate) trust_dir: PathBuf,
    /// Accept a bundle that is unsigned or signed by no trusted key (recorded in the audit log).
    #[arg(long)]
    pub(crate) allow_unsigned: bool,
}

impl LiveOptions {
    /// The engine's options.
    pub(crate) fn options(&self) -> Options {
        Options {
            retries: self.retries,
            retry_delay: Duration::from_millis(self.retry_delay),
            let_run: Duration::from_micros(self.let_run),
            lock_timeout: Duration::from_secs(self.lock_timeout),
            state_dir: self.state_dir.clone(),
            ..Options::default()
        }
    }
}

const LIVE_HELP: &str = "\
What \"pause\" means: for each thread, the total time hotsplice kept it stopped (every stop of
the command summed, retries and refused attempts included); the report gives the longest such
total and the number of stops. Time a thread waits for a CPU after it is released is not
counted.

Exit status: 0 done; 1 refused (the code does not match the bundle's pre build, a thread stays \
busy in a replaced function, a seccomp filter forbids what hotsplice must do, ...) with the \
target untouched; 2 bad input; 3 environment (permissions, the process exited, another tracer, \
another hotsplice still at work). SIGINT, SIGTERM or SIGHUP during an operation make hotsplice \
roll back (or, past the point of no return, finish) and then end as the signal asks; job-control \
stops (Ctrl-Z) take effect only once the target is released.";

/// Dry run: prove a bundle applies to running processes, without changing them.
///
/// Locates every function to replace in each process's memory and proves its code is the
/// bundle's pre-build code (run-pre matching), resolves every symbol the new code needs, and
/// stops the process for a moment to see what apply would do now: apply at once, let a
/// thread leave a replaced function first, retry, or refuse (exit status 1).
#[derive(Debug, Args)]
#[command(after_help = LIVE_HELP)]
pub(crate) struct CheckArgs {
    /// The bundle (from `hotsplice build`).
    pub(crate) bundle: PathBuf,
    #[command(flatten)]
    pub(crate) targets: Targets,
    #[command(flatten)]
    pub(crate) trust: TrustOptions,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// Apply a bundle to running processes, with no restart.
///
/// Proves the running code is the bundle's pre build, maps the new code near the program
/// (one thread runs the mmap while the others keep running), then stops every thread once —
/// well under a millisecond — to check none is in a function being replaced and to write a
/// jump at each old entry. With several processes (`--exe`, or several `--pid`), all are
/// prepared first and patched all or none. Needs root (or the same user and CAP_SYS_PTRACE).
#[derive(Debug, Args)]
#[command(after_help = LIVE_HELP)]
pub(crate) struct ApplyArgs {
    /// The bundle (from `hotsplice build`).
    pub(crate) bundle: PathBuf,
    #[command(flatten)]
    pub(crate) targets: Targets,
    #[command(flatten)]
    pub(crate) trust: TrustOptions,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// Undo an applied patch: restore every original byte and unmap its memory.
///
/// The bytes put back are checked against the program's own file as the process maps it, so
/// a damaged or forged state record can never make hotsplice write other code.
#[derive(Debug, Args)]
#[command(after_help = LIVE_HELP)]
pub(crate) struct UndoArgs {
    /// The patch id (`hs-...`, see `hotsplice list`).
    pub(crate) patch: String,
    #[command(flatten)]
    pub(crate) targets: Targets,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// List the patches applied to processes.
///
/// Exit status: 0 listed; 3 when a process could not be read (the others are still listed).
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only these processes (default: every process hotsplice has patched).
    #[arg(long = "pid", value_name = "PID")]
    pub(crate) pids: Vec<i32>,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// Finish or roll back an apply or undo that was interrupted (hotsplice killed, machine
/// trouble), so each process ends either untouched or fully patched — never a mix.
///
/// Reads the journal an interrupted operation left in the state directory, looks at the code
/// of the process, and writes the original bytes back where that is safe (no thread in the
/// patch's code), otherwise every jump (no thread in the old code). `apply` and `undo` refuse
/// to touch a process with an interrupted operation until it is recovered. An operation that
/// another hotsplice is still running is left alone.
#[derive(Debug, Args)]
pub(crate) struct RecoverArgs {
    /// Only these processes (default: every interrupted operation recorded).
    #[arg(long = "pid", value_name = "PID")]
    pub(crate) pids: Vec<i32>,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// The default store.
pub(crate) const DEFAULT_STORE: &str = "/var/lib/hotsplice";

/// Where installed bundles are kept.
#[derive(Debug, Args)]
pub(crate) struct StoreOptions {
    /// The store of installed patches (it must belong to root and be writable by no one
    /// else, like every directory above it).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STORE, env = "HOTSPLICE_STORE")]
    pub(crate) store: PathBuf,
}

/// Install a bundle: keep it applied to every process that maps its file, now and later.
///
/// The bundle is checked against the trusted keys, kept in the store, and applied to every
/// running process that maps its file (each on its own; see `apply --each`). `hotsplice watch`
/// then applies it to processes that start later. Without `--file`, processes are found by the
/// bundle's build-id.
#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// The bundle.
    pub(crate) bundle: PathBuf,
    /// The installed file the bundle is for (an executable or shared library).
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Keep it for `watch` only; do not apply it to running processes now.
    #[arg(long)]
    pub(crate) no_apply: bool,
    #[command(flatten)]
    pub(crate) store: StoreOptions,
    #[command(flatten)]
    pub(crate) trust: TrustOptions,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// Uninstall a patch: undo it in the processes it was installed for, and forget it.
///
/// The patch is undone in every process that has it and maps the installed file (`install
/// --file`), or a file with the bundle's build-id; the same patch applied elsewhere by hand
/// stays. Waits for a `watch` sweep in progress to end first.
#[derive(Debug, Args)]
pub(crate) struct UninstallArgs {
    /// The patch id.
    pub(crate) patch: String,
    /// Leave it applied where it is; only stop applying it to new processes.
    #[arg(long)]
    pub(crate) keep_applied: bool,
    #[command(flatten)]
    pub(crate) store: StoreOptions,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// Show, per installed patch, the processes that have it and those that do not (and why).
///
/// Exit status: 0 every process that needs a patch has it; 1 some do not.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Also write Prometheus metrics to this file (atomically; for node_exporter's textfile
    /// collector): `hotsplice_patch_processes{patch,target,state}`.
    #[arg(long, value_name = "FILE")]
    pub(crate) prometheus: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) store: StoreOptions,
    #[command(flatten)]
    pub(crate) trust: TrustOptions,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// Keep new processes patched: apply every installed patch to each process that starts a
/// program (or loads a library) it is for. Runs until SIGTERM or SIGINT.
///
/// New programs are seen at once through the kernel's process-event connector (root,
/// CONFIG_PROC_EVENTS); a sweep every `--interval` seconds catches the rest (libraries loaded
/// later with dlopen). See packaging/hotsplice-watch.service.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Seconds between sweeps of every process.
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub(crate) interval: u64,
    #[command(flatten)]
    pub(crate) store: StoreOptions,
    #[command(flatten)]
    pub(crate) trust: TrustOptions,
    #[command(flatten)]
    pub(crate) options: LiveOptions,
}

/// Manage signing keys.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    #[command(subcommand)]
    pub(crate) command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate an ed25519 key pair: PATH.key (secret, mode 0600) and PATH.pub. Install the
    /// .pub file in the trusted-keys directory of the machines that may apply its bundles.
    Generate {
        /// Path of the key pair, without extension.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

/// Sign a bundle (adds a signature; the content is unchanged), or a kernel livepatch module
/// (writes or extends its detached signature, `FILE.hsig`).
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// The bundle (signed in place unless -o is given) or kernel module.
    pub(crate) bundle: PathBuf,
    /// The secret key (from `hotsplice key generate`).
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    /// Where to write the signed bundle.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

/// Apply, undo and list live patches of the running kernel (livepatch modules made by
/// `hotsplice build --kernel`).
///
/// The kernel's livepatch core does the switching: each task moves to the new code when it
/// is not running any patched function (checked with reliable stack traces), so `apply`
/// waits for that transition and names the tasks that hold it up.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  hotsplice kernel apply fix.ko\n  hotsplice kernel list\n  hotsplice kernel undo fix\n\nNeeds root. An unsigned module taints the kernel (flags O, E, K) and cannot load under Secure Boot lockdown or module.sig_enforce=1."
)]
pub(crate) struct KernelArgs {
    #[command(subcommand)]
    pub(crate) command: KernelCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KernelCommand {
    /// Load a livepatch module and wait until every task runs the new code.
    Apply {
        /// The module (`hotsplice build --kernel -o FIX.ko`).
        module: PathBuf,
        /// Give up waiting for the transition after this many seconds (the patch stays
        /// loaded and livepatch keeps trying; `undo` reverts it).
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u64,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
        /// Its detached signature (default: MODULE.hsig, written by `build --kernel --sign`
        /// or `hotsplice sign MODULE`).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        #[command(flatten)]
        trust: TrustOptions,
    },
    /// Disable a live patch, wait until no task runs its code, and unload it.
    Undo {
        /// The patch's name (as `kernel list` shows it).
        name: String,
        /// Give up waiting for the transition after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u64,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// List the live patches of the running kernel (/sys/kernel/livepatch).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl KernelArgs {
    /// Whether JSON output was asked for.
    pub(crate) fn json(&self) -> bool {
        match &self.command {
            KernelCommand::Apply { json, .. }
            | KernelCommand::Undo { json, .. }
            | KernelCommand::List { json } => *json,
        }
    }
}
