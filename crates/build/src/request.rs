//! The builder's public types: what a build is asked ([`Request`]) and what it answers (an
//! [`Outcome`] per patch, with its [`Verdict`]; a [`Series`] of them).

use std::path::PathBuf;
use std::time::Duration;

use hotsplice_bundle::{Bundle, TargetIdentity};
use hotsplice_objdiff::{Report, Status};

use crate::Error;
use crate::classify::Role;

/// What to build.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source tree (never modified).
    pub source: PathBuf,
    /// The unified diffs, applied in this order (a series); usually one.
    pub diffs: Vec<PathBuf>,
    /// The target binary, relative to the build tree (`objs/nginx`).
    pub target: String,
    /// The build command, run with `sh -c` in the tree (default `make`).
    pub build_command: String,
    /// The command for the incremental post build, when it differs from `build_command`
    /// (e.g. `make -C debian/build-bin` after a `debian/rules build-arch` pre build).
    pub post_build_command: Option<String>,
    /// Directories of the tree (relative) holding copies of the sources that the build made
    /// (Debian's `debian/build-bin`): patched files are copied into them too.
    pub mirrors: Vec<String>,
    /// Extra environment for both builds (`DEB_BUILD_OPTIONS`, ...).
    pub env: Vec<(String, String)>,
    /// A Debian package build: after the pre build, find the source copies and the post-build
    /// command (`debian/build-*`), and resolve an installed path (`usr/sbin/nginx`) given as
    /// the target to the built file.
    pub debian: bool,
    /// Where pre builds are cached.
    pub cache: PathBuf,
    /// Parallel jobs (`MAKEFLAGS=-jN`, and hotsplice's own recompiles).
    pub jobs: usize,
    /// The program the compiler shims run (the hotsplice binary).
    pub shim_program: PathBuf,
}

/// How long each step took.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// The pre build (zero when cached, and for every patch of a series but the first).
    pub pre_build: Duration,
    /// Restoring the tree and applying the diff.
    pub prepare: Duration,
    /// The post (incremental) build, with hotsplice's own recompiles.
    pub post_build: Duration,
    /// Diffing the rebuilt objects.
    pub diff: Duration,
}

/// What became of one file the diff touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file, relative to the tree.
    pub path: String,
    /// What it is to the build.
    pub role: Role,
    /// `rebuilt` (objects of the target recompiled and diffed), `regenerated` (a generator
    /// input whose outputs changed), `not-in-target`, `not-used` (compiled or included by no
    /// object of the target), `ignored` (tests, documentation, unread), `refused`.
    pub status: &'static str,
    /// Details: the objects, the binaries, the reason.
    pub detail: String,
}

/// The verdict on one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A bundle can be written.
    Written,
    /// The change cannot be applied live.
    Refused,
    /// The diff changes no function of the target.
    NothingToPatch,
}

impl Verdict {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Written => "written",
            Verdict::Refused => "refused",
            Verdict::NothingToPatch => "nothing-to-patch",
        }
    }
}

/// The result of building one patch.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The diff.
    pub diff: PathBuf,
    /// The bundle (its `refusals` say whether it can be applied).
    pub bundle: Bundle,
    /// The object diff of every rebuilt object of the target.
    pub report: Report,
    /// Whether the pre build came from the cache.
    pub pre_cached: bool,
    /// Objects of the target recompiled after the diff and diffed (relative to the tree).
    pub rebuilt: Vec<String>,
    /// Those hotsplice recompiled itself because the build did not (a sub-make built once,
    /// no dependency tracking).
    pub recompiled: Vec<String>,
    /// Objects recompiled by the post build that are not linked into the target (ignored).
    pub not_in_target: Vec<String>,
    /// Other binaries of the build those objects are linked into (relative to the tree): the
    /// targets to build a patch for instead (a dynamic module, a library).
    pub other_targets: Vec<String>,
    /// Every file of the diff: its role and what became of it.
    pub files: Vec<FileReport>,
    /// Earlier bundles of the series whose functions this one replaces again (it must be
    /// applied after them).
    pub stacks_on: Vec<String>,
    /// Step durations.
    pub timings: Timings,
}

impl Outcome {
    /// Whether the diff changes any function of the target.
    pub fn has_changes(&self) -> bool {
        self.report
            .objects
            .iter()
            .any(|o| o.functions.iter().any(|f| f.status != Status::Unchanged))
    }

    /// Written, refused or nothing to patch. A diff that only adds functions no existing
    /// function calls has nothing to patch: the new code could never run.
    pub fn verdict(&self) -> Verdict {
        let replaces = self
            .bundle
            .objects
            .iter()
            .any(|o| !o.replacements.is_empty());
        if !self.bundle.refusals.is_empty() {
            Verdict::Refused
        } else if !self.has_changes() || !replaces {
            Verdict::NothingToPatch
        } else {
            Verdict::Written
        }
    }
}

/// The result of one patch of a series: built (whatever the verdict), or an error (the diff
/// does not apply, its build failed).
#[derive(Debug)]
pub enum PatchResult {
    /// Built; see the outcome's verdict.
    Built(Box<Outcome>),
    /// Not built.
    Failed {
        /// The diff.
        diff: PathBuf,
        /// Why.
        error: Error,
    },
}

/// The result of a series.
#[derive(Debug)]
pub struct Series {
    /// The target (the binary of the base build, which every bundle applies to).
    pub target: TargetIdentity,
    /// Whether the base build came from the cache.
    pub pre_cached: bool,
    /// The base build's duration (zero when cached).
    pub pre_build: Duration,
    /// One result per diff, in order.
    pub patches: Vec<PatchResult>,
}
