//! The hotsplice patch builder: from a source tree, its build command and a unified diff to
//! a live-patch bundle — without touching the user's tree.
//!
//! - [`build`] runs the whole pipeline for a [`Request`] and returns an [`Outcome`]: the
//!   [`Bundle`](hotsplice_bundle::Bundle), the object-diff report, which objects were rebuilt,
//!   and step [`Timings`].
//! - [`shim`] is the compiler wrapper the `hotsplice` binary becomes when invoked as `cc`,
//!   `gcc`, `g++`...: it adds `-ffunction-sections -fdata-sections` and logs a
//!   [`Record`](record::Record) of every compile and link.
//! - [`unified`] parses unified diffs and inserts the `#line` directives that keep
//!   `__LINE__` stable below each hunk.
//!
//! ```no_run
//! use hotsplice_build::{Request, build};
//! let request = Request {
//!     source: "src".into(),
//!     diff: "fix.patch".into(),
//!     target: "prog".into(),
//!     build_command: "make".into(),
//!     post_build_command: None,
//!     mirrors: Vec::new(),
//!     env: Vec::new(),
//!     debian: false,
//!     cache: "/var/cache/hotsplice".into(),
//!     jobs: 2,
//!     shim_program: std::env::current_exe().unwrap(),
//! };
//! let outcome = build(&request, &mut |step| eprintln!("{step}")).unwrap();
//! println!("{}", outcome.bundle.id);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod builder;
pub mod debian;
mod identity;
pub mod record;
pub mod shim;
pub mod tree;
pub mod unified;

use std::path::PathBuf;

pub use builder::{Outcome, Request, Timings, apply_diff, build};
pub use identity::identify;

/// Why a build failed. Each variant names the file, command or object involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The diff is not a unified diff.
    #[error("{}: not a usable unified diff: {message}", path.display())]
    DiffParse {
        /// The diff file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `patch` could not apply the diff to the source.
    #[error("{} does not apply to the source tree (is it for another version?):\n{output}", path.display())]
    DiffDoesNotApply {
        /// The diff file.
        path: PathBuf,
        /// What `patch` said.
        output: String,
    },
    /// The project's build command failed.
    #[error("the {phase} build failed: `{command}` exited with {status}; see {}", log.display())]
    BuildFailed {
        /// `pre` or `post`.
        phase: &'static str,
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// Its output.
        log: PathBuf,
    },
    /// The build compiled nothing through the shims.
    #[error(
        "`{command}` compiled nothing through hotsplice's compiler shims; the build must call the compiler as cc/gcc/g++ (or $CC), not by absolute path"
    )]
    NoCompilations {
        /// The command.
        command: String,
    },
    /// The target binary is not in the built tree.
    #[error("the build produced no {target} (looked in {})", tree.display())]
    TargetMissing {
        /// The target path.
        target: String,
        /// The built tree.
        tree: PathBuf,
    },
    /// The target is not an x86-64 ELF executable or shared library.
    #[error("{target} is not an x86-64 ELF executable or shared library")]
    TargetNotElf {
        /// The target path.
        target: String,
    },
    /// A Debian-native build could not be prepared (source, build dependencies, target).
    #[error("{message}")]
    Debian {
        /// What is wrong and what to do.
        message: String,
    },
    /// The object diff failed on a rebuilt object.
    #[error("diffing {object}")]
    Objdiff {
        /// The object.
        object: String,
        /// The diff error.
        #[source]
        source: hotsplice_objdiff::Error,
    },
}
