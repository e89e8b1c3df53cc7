//! `hotsplice`: live patching for Linux from a unified diff.
//!
//! This binary is the command line over the library crates: it parses arguments, does the IO,
//! prints reports and maps outcomes to exit codes. See `ARCHITECTURE.md`.

mod args;
mod build;
mod diff;
mod exit;
mod info;
mod installed;
mod kernel;
mod live;
mod output;
#[cfg(test)]
mod schema;
mod trust;

use std::process::ExitCode;

use args::{Cli, Command};
use clap::Parser;

pub use exit::{
    EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_OK, EXIT_REFUSED, ErrorClass, Exit, Reported,
};

impl From<std::io::Error> for Exit {
    /// A report that could not be written (a closed pipe among others: see `main`).
    fn from(error: std::io::Error) -> Self {
        Exit::environment(anyhow::Error::new(error).context("writing the report"))
    }
}

/// Whether an error is stdout's reader having gone away (`hotsplice list | head -1`).
fn broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The JSON object of a failed command, when it was asked for JSON.
fn error_report(command: &Command, exit: &Exit) -> Option<output::Failure> {
    let error = format!("{:#}", exit.error);
    match command {
        // `build --json` reports every outcome in its own shape, errors included.
        Command::Build(args) => args.json.then(|| {
            output::Failure::Build(output::BuildError {
                outcome: output::Failed::Error,
                exit: exit.code(),
                error,
            })
        }),
        command => command
            .json()
            .then_some(output::Failure::Command(output::ErrorReport {
                ok: false,
                class: exit.class,
                error,
                pause: None,
            })),
    }
}

fn run(cli: &Cli) -> Result<ExitCode, Exit> {
    match &cli.command {
        Command::Build(args) if args.kernel.enabled => kernel::build(args),
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
        // SIGSTOP, which cannot wait, is undone at once by the guardian (forked, so before
        // any thread starts).
        hotsplice_ptrace::signals::defer_interruptions();
        let guardian = stops_threads.then(hotsplice_ptrace::signals::Guardian::start);
        hotsplice_ptrace::prepare_watchdog();
        guardian
    } else {
        None
    };
    let code = match run(&cli) {
        Ok(code) => code,
        // The reader of the report went away: nothing more to say, and no one to say it to.
        Err(exit) if broken_pipe(&exit.error) => ExitCode::from(EXIT_OK),
        Err(exit) => {
            if !exit.error.is::<Reported>() {
                // With `--json`, every failure is a JSON object on stdout too.
                let report = error_report(&cli.command, &exit);
                if let Some(Err(e)) =
                    report.map(|r| output::emit(&mut std::io::stdout().lock(), &r))
                    && e.kind() != std::io::ErrorKind::BrokenPipe
                {
                    eprintln!("hotsplice: error: writing the error report: {e}");
                }
            }
            eprintln!("hotsplice: error: {:#}", exit.error);
            ExitCode::from(exit.code())
        }
    };
    if cli.command.live() {
        use std::io::Write;
        if let Err(e) = std::io::stdout().flush()
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("hotsplice: error: writing the report: {e}");
        }
        // The target is released: a held-back stop now takes effect, and the guardian must
        // not undo it.
        drop(guardian);
        hotsplice_ptrace::signals::allow_interruptions();
    }
    code
}
