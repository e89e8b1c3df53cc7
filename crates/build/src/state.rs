//! The state a series carries from one patch to the next (what the tree holds now), and the
//! context every step of a build reads.

use std::collections::HashMap;
use std::path::PathBuf;

use hotsplice_bundle::TargetIdentity;

use crate::closure::Closure;
use crate::record::Record;
use crate::request::Request;
use crate::workspace::{BaseState, Workspace};

/// The state of the series as it goes: what the tree holds now.
#[derive(Clone)]
pub(crate) struct State {
    /// Compile and link records of every build of the current state (later ones win).
    pub(crate) records: Vec<Record>,
    /// The target's closure in the current state.
    pub(crate) closure: Closure,
    /// Patched files without hotsplice's `#line` directives (the series' source text).
    pub(crate) clean: HashMap<PathBuf, Option<Vec<u8>>>,
    /// Names new in an earlier bundle of the series (they live only in that bundle's memory):
    /// name → bundle id.
    pub(crate) new_symbols: HashMap<String, String>,
    /// Functions replaced by an earlier bundle of the series: name → bundle id.
    pub(crate) replaced: HashMap<String, String>,
    /// Ids of the bundles of the series so far.
    pub(crate) chain: Vec<String>,
    /// For a target linked with `-flto`: its link-time code in the current state (the
    /// merged ltrans objects), or why there is none.
    pub(crate) lto: Option<Result<PathBuf, String>>,
}

pub(crate) struct Context<'a> {
    pub(crate) request: &'a Request,
    pub(crate) ws: Workspace,
    pub(crate) base: BaseState,
    pub(crate) target: TargetIdentity,
    pub(crate) source_id: String,
    pub(crate) compiler: String,
    pub(crate) atime: bool,
    /// Dependencies of objects, computed on demand: object → files (tree-relative).
    pub(crate) deps: HashMap<String, Vec<String>>,
}

/// What a patch's build leaves for the state, if the patch is kept.
pub(crate) struct PostState {
    pub(crate) records: Vec<Record>,
    pub(crate) clean: HashMap<PathBuf, Option<Vec<u8>>>,
    /// The link-time code after the patch (LTO targets).
    pub(crate) lto: Option<PathBuf>,
}
