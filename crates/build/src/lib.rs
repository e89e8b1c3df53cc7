//! The hotsplice patch builder: from a source tree, its build command and a unified diff to
//! a live-patch bundle — without touching the user's tree.
//!
//! - [`build`] runs the whole pipeline for a [`Request`] with one diff and returns an
//!   [`Outcome`]: the [`Bundle`](hotsplice_bundle::Bundle), the object-diff report, which
//!   objects were rebuilt (by the build or by hotsplice), what became of every file of the
//!   diff ([`FileReport`]), and step [`Timings`]. [`build_series`] does the same for several
//!   diffs in order, each built on the previous one ([`Series`]).
//! - [`shim`] is the compiler wrapper the `hotsplice` binary becomes when invoked as `cc`,
//!   `gcc`, `g++`, `ccache`...: it adds `-ffunction-sections -fdata-sections`, splits
//!   compile-and-link calls so objects are kept, asks links for a map, and logs a
//!   [`Record`](record::Record) of every compile and link ([`cmdline`] parses the calls).
//! - [`closure`] finds the objects a binary is linked from (archives through the link map,
//!   partial links); [`classify`] says what each file of a diff is to the build; [`deps`]
//!   lists what a compile includes; [`access`] tells which files a build read.
//! - [`series`] reads patch series and Debian updates; diffs themselves (parsing, `patch`,
//!   the `#line` directives that keep `__LINE__` stable below each hunk) are
//!   `hotsplice-srcpatch`'s, shared with the kernel builder.
//!
//! ```no_run
//! use hotsplice_build::{Request, build};
//! let request = Request {
//!     source: "src".into(),
//!     diffs: vec!["fix.patch".into()],
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

pub mod access;
pub mod binding;
mod builder;
pub mod classify;
pub mod closure;
pub mod cmdline;
pub mod debian;
pub mod deps;
mod identity;
pub mod linkmap;
pub mod lto;
mod patching;
pub mod record;
mod request;
pub mod series;
pub mod shim;
mod state;
mod step;
pub mod tree;
pub mod unwind;
mod workspace;

use std::path::{Path, PathBuf};

pub use builder::{build, build_series};
pub use identity::identify;
pub use request::{FileReport, Outcome, PatchResult, Request, Series, Timings, Verdict};

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
    /// In a series, the diff applies only on top of earlier patches that were refused (or
    /// failed) and so are not part of what runs.
    #[error(
        "{} applies only on top of {}, which cannot be applied live: it depends on them",
        diff.display(),
        on.join(", ")
    )]
    DependsOnRefused {
        /// The diff.
        diff: PathBuf,
        /// The earlier patches it needs.
        on: Vec<String>,
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
        "`{command}` compiled nothing through hotsplice's compiler shims{}",
        outputs_hint(outputs)
    )]
    NoCompilations {
        /// The command.
        command: String,
        /// Build outputs already in the source tree (a few), if any.
        outputs: Vec<String>,
    },
    /// The pre build did not link the target through the shims.
    #[error(
        "the pre build did not link {target} through hotsplice's compiler shims{}",
        outputs_hint(outputs)
    )]
    TargetNotLinked {
        /// The target.
        target: String,
        /// Build outputs already in the source tree (a few), if any.
        outputs: Vec<String>,
    },
    /// The target links objects the pre build did not compile, and the source tree already
    /// held build outputs.
    #[error(
        "{target} links objects the pre build did not compile ({}): the source tree already \
         contains build outputs, so the build did not rebuild them and hotsplice cannot record \
         how they were built; give a clean tree (`make clean`, `git clean -xdf`, a fresh \
         `apt-get source`) or a --build command that rebuilds everything (`make clean && make`)",
        objects.join(", ")
    )]
    TreeHasOutputs {
        /// The target.
        target: String,
        /// Some of the objects.
        objects: Vec<String>,
    },
    /// A mirror (a copy of the sources the build made) holds a different version of a file
    /// the diff changes.
    #[error(
        "{}: {} in {mirror} differs from the source tree's copy; hotsplice cannot tell which one the build compiles",
        diff.display(),
        file.display()
    )]
    Mirror {
        /// The diff.
        diff: PathBuf,
        /// The file (tree-relative).
        file: PathBuf,
        /// The mirror directory.
        mirror: String,
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

fn outputs_hint(outputs: &[String]) -> String {
    if outputs.is_empty() {
        "; the build must call the compiler as cc/gcc/g++ or $CC (not by absolute path), and \
         --target must name a binary it links"
            .to_string()
    } else {
        format!(
            "; the source tree already contains build outputs ({}...), so the build did not \
             rebuild them: give a clean tree (`make clean`, `git clean -xdf`, a fresh \
             `apt-get source`) or a --build command that rebuilds everything \
             (`make clean && make`)",
            outputs.join(", ")
        )
    }
}

/// The error of an IO operation on `path`, for `map_err`.
pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
