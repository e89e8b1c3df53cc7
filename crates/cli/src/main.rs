//! `hotsplice`: live patching for Linux from a unified diff.
//!
//! This binary is the command line over the library crates: it parses arguments, does the IO,
//! prints reports and maps outcomes to exit codes. See `ARCHITECTURE.md`.

mod args;
mod build;
mod diff;
mod info;
mod installed;
mod kernel;
mod live;
mod trust;

use std::process::ExitCode;

use args::{Cli, Command};
use clap::Parser;

/// Exit status: the change can be applied (or the command succeeded).
pub const EXIT_OK: u8 = 0;
/// Exit status: refused — the change cannot be applied safely; the report says why.
pub const EXIT_REFUSED: u8 = 1;
/// Exit status: bad input — unreadable file, not ELF, wrong architecture, bad arguments.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status: environment — a failing build, permissions, a process gone, I/O errors.
pub const EXIT_ENVIRONMENT: u8 = 3;

/// An error carrying the exit status it should produce.
#[derive(Debug)]
pub struct Exit {
    /// The exit status.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl Exit {
    /// Bad input (exit status 2).
    pub fn bad_input(error: anyhow::Error) -> Self {
        Exit {
            code: EXIT_BAD_INPUT,
            error,
        }
    }
}

/// An error whose JSON object a command already printed (with `--json`).
#[derive(Debug)]
pub struct Reported(pub anyhow::Error);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Reported {}

/// The class name of an exit status, for JSON error objects.
fn class_of(code: u8) -> &'static str {
    match code {
        EXIT_REFUSED => "refused",
        EXIT_BAD_INPUT => "bad-input",
        _ => "environment",
    }
}

fn run(cli: &Cli) -> Result<ExitCode, Exit> {
    match &cli.command {
        Command::Build(args) => build::run(args),
        Command::Header(args) => build::header(args),
        Command::Info(args) => info::run(args),
        Command::Check(args) => live::check(args),
        Command::Apply(args) => live::apply(args),
        Command::Undo(args) => live::undo(args),
        Command::List(args) => live::list(args),
        Command::Recover(args) => live::recover(args),
        Command::Install(args) => installed::install(args),
        Command::Uninstall(args) => installed::uninstall(args),
        Command::Status(args) => installed::status(args),
        Command::Watch(args) => installed::watch(args),
        Command::Diff(args) => diff::run(args),
        Command::Key(args) => trust::key(args),
        Command::Sign(args) => trust::sign(args),
        Command::Kernel(args) => kernel::run(args),
    }
}

fn main() -> ExitCode {
    // Invoked through a compiler shim link (`cc`, `gcc`, ...) during `hotsplice build`.
    let mut args = std::env::args_os();
    if let Some(argv0) = args.next() {
        let argv0 = argv0.to_string_lossy().into_owned();
        let name = std::path::Path::new(&argv0)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if hotsplice_build::shim::is_compiler_name(&name) {
            let code = hotsplice_build::shim::run(&argv0, args.collect());
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        // The guardian of a live operation (see `signals::Guardian`).
        let rest: Vec<String> = std::env::args().skip(1).collect();
        if let [cmd, pid] = rest.as_slice()
            && cmd == "__guard"
            && let Ok(pid) = pid.parse()
        {
            hotsplice_ptrace::signals::guard(pid);
            return ExitCode::SUCCESS;
        }
    }
    let cli = Cli::parse();
    let stops_threads = matches!(
        cli.command,
        Command::Check(_)
            | Command::Apply(_)
            | Command::Undo(_)
            | Command::Recover(_)
            | Command::Install(_)
            | Command::Uninstall(_)
            | Command::Watch(_)
    );
    let guardian = if cli.command.live() {
        // While hotsplice holds a target, a termination request or a job-control stop waits:
        // the operation rolls back (or finishes) first, then the signal takes effect; and a
        // SIGSTOP, which cannot wait, is undone at once by the guardian.
        hotsplice_ptrace::signals::defer_interruptions();
        hotsplice_ptrace::prepare_watchdog();
        std::env::current_exe()
            .ok()
            .filter(|_| stops_threads)
            .map(|exe| hotsplice_ptrace::signals::Guardian::start(&exe))
    } else {
        None
    };
    let code = match run(&cli) {
        Ok(code) => code,
        Err(exit) => {
            let reported = exit.error.downcast_ref::<Reported>().is_some();
            if cli.command.json() && !reported {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false,
                        "class": class_of(exit.code),
                        "error": format!("{:#}", exit.error),
                    })
                );
            }
            eprintln!("hotsplice: error: {:#}", exit.error);
            ExitCode::from(exit.code)
        }
    };
    if cli.command.live() {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // The target is released: a held-back stop now takes effect, and the guardian must
        // not undo it.
        drop(guardian);
        hotsplice_ptrace::signals::allow_interruptions();
    }
    code
}
