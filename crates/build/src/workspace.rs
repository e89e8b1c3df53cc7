//! The cache entry of one source tree and build command, and the builds run in it.
//!
//! An entry (`<cache>/<key>/`, the key made of the source's content, the build command, its
//! environment and the compiler) holds the build tree at a fixed path (`tree/`, so paths baked
//! into objects hold from one build to the next), its copy after the pre build
//! (`pristine/`), the state before the current patch of a series (`prev/`), the compiler
//! shims, the link maps of each build (`maps-pre/`, `maps-post/`), the shim logs and the
//! builds' output. [`pre_build`] runs (or reuses) the full build; [`base_for_target`] finds
//! the target in it.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::closure::{Closure, Index};
use crate::record::{Record, RecordKind, read_log};
use crate::request::Request;
use crate::{Error, access, debian, io_error, shim, tree};

/// Creates the shim directory: links named like compilers, pointing at the shim program, and
/// `include/hotsplice.h`.
pub(crate) fn make_shims(dir: &Path, program: &Path) -> Result<(), Error> {
    tree::remove(dir).map_err(io_error(dir))?;
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for name in shim::COMPILER_NAMES.iter().chain(shim::LAUNCHER_NAMES) {
        let link = dir.join(name);
        std::os::unix::fs::symlink(program, &link).map_err(io_error(&link))?;
    }
    let include = dir.join(shim::INCLUDE_DIR);
    std::fs::create_dir_all(&include).map_err(io_error(&include))?;
    let header = include.join("hotsplice.h");
    std::fs::write(&header, shim::HEADER).map_err(io_error(&header))?;
    Ok(())
}

/// The cache entry of one source + build: fixed paths.
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
    pub(crate) tree: PathBuf,
    pub(crate) pristine: PathBuf,
    pub(crate) prev: PathBuf,
    pub(crate) shims: PathBuf,
}

impl Workspace {
    pub(crate) fn new(root: &Path) -> Self {
        Workspace {
            root: root.to_path_buf(),
            tree: root.join("tree"),
            pristine: root.join("pristine"),
            prev: root.join("prev"),
            shims: root.join("shims"),
        }
    }

    pub(crate) fn path_with_shims(&self) -> Result<std::ffi::OsString, Error> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.shims.clone()];
        paths.extend(std::env::split_paths(&path));
        std::env::join_paths(paths).map_err(|e| Error::Io {
            path: self.shims.clone(),
            source: std::io::Error::other(e),
        })
    }

    pub(crate) fn run_build(
        &self,
        request: &Request,
        command: &str,
        phase: &'static str,
    ) -> Result<Vec<Record>, Error> {
        let log = self.root.join(format!("{phase}.jsonl"));
        let _ = std::fs::remove_file(&log);
        // The pre build's link maps are kept (closures of any target of the cached build are
        // computed from them); each post build's replace the previous ones.
        let maps = self.root.join(format!("maps-{phase}"));
        tree::remove(&maps).map_err(io_error(&maps))?;
        std::fs::create_dir_all(&maps).map_err(io_error(&maps))?;
        let output_log = self.root.join(format!("{phase}-build.log"));
        let out = File::create(&output_log).map_err(io_error(&output_log))?;
        let err = out.try_clone().map_err(io_error(&output_log))?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.tree)
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", self.path_with_shims()?)
            .env("CC", "gcc")
            .env("CXX", "g++")
            .env("CCACHE_DISABLE", "1")
            .env("MAKEFLAGS", format!("-j{}", request.jobs.max(1)))
            .env(shim::ENV_DIR, &self.shims)
            .env(shim::ENV_LOG, &log)
            .env(shim::ENV_TREE, &self.tree)
            .env(shim::ENV_MAPS, &maps)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(io_error(&self.tree))?;
        if !status.success() {
            return Err(Error::BuildFailed {
                phase,
                command: command.to_string(),
                status: status.to_string(),
                log: output_log,
            });
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(read_log(&text).0)
    }

    /// Makes the tree a copy of `from` (same path, so paths baked into objects hold).
    pub(crate) fn restore_tree(&self, from: &Path) -> Result<(), Error> {
        tree::sync(from, &self.tree).map_err(io_error(&self.tree))
    }
}

/// What the cache keeps about the pre build, besides the pristine tree and its link maps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Cached {
    pub(crate) records: Vec<Record>,
    /// Files the pre build read (`None`: the file system keeps no access times).
    pub(crate) reads: Option<BTreeSet<String>>,
}

/// The pre build as one request uses it: the cached part, and its target.
#[derive(Debug, Clone)]
pub(crate) struct BaseState {
    pub(crate) records: Vec<Record>,
    pub(crate) reads: Option<BTreeSet<String>>,
    pub(crate) target: String,
    pub(crate) closure: Closure,
    pub(crate) post_command: String,
    pub(crate) mirrors: Vec<String>,
}

/// Up to `limit` build outputs (ELF files) already in a source tree.
pub(crate) fn existing_outputs(source: &Path, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(files) = tree::files(source) else {
        return out;
    };
    for rel in files {
        let Ok(mut file) = File::open(source.join(&rel)) else {
            continue;
        };
        let mut magic = [0u8; 8];
        let is_output = std::io::Read::read(&mut file, &mut magic)
            .is_ok_and(|n| n >= 4 && (magic.starts_with(b"\x7fELF") || magic == *b"!<arch>\n"));
        if is_output {
            out.push(rel.to_string_lossy().into_owned());
            if out.len() >= limit {
                break;
            }
        }
    }
    out
}

/// The pre build, or its cached result.
pub(crate) fn pre_build(
    request: &Request,
    ws: &Workspace,
    source: &Path,
    atime: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(Cached, bool), Error> {
    let complete = ws.root.join("complete");
    let state_path = ws.root.join("pre-state.json");
    if complete.exists() && ws.pristine.is_dir() {
        let cached = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok());
        if let Some(state) = cached {
            progress("pre build: cached");
            return Ok((state, true));
        }
    }
    progress(&format!(
        "pre build: `{}` in a copy of {} (cached for later patches)",
        request.build_command,
        source.display()
    ));
    let _ = std::fs::remove_file(&complete);
    let result = pre_build_uncached(request, ws, source, atime);
    match result {
        Ok(state) => {
            let json = serde_json::to_vec(&state).map_err(|e| Error::Io {
                path: state_path.clone(),
                source: std::io::Error::other(e),
            })?;
            std::fs::write(&state_path, json).map_err(io_error(&state_path))?;
            File::create(&complete).map_err(io_error(&complete))?;
            Ok((state, false))
        }
        Err(e) => {
            // Never leave a half-made entry: only the logs stay, for the user to read.
            let _ = tree::remove(&ws.tree);
            let _ = tree::remove(&ws.pristine);
            let _ = tree::remove(&ws.prev);
            let _ = std::fs::remove_file(&state_path);
            Err(e)
        }
    }
}

pub(crate) fn pre_build_uncached(
    request: &Request,
    ws: &Workspace,
    source: &Path,
    atime: bool,
) -> Result<Cached, Error> {
    tree::remove(&ws.tree).map_err(io_error(&ws.tree))?;
    tree::remove(&ws.pristine).map_err(io_error(&ws.pristine))?;
    tree::remove(&ws.prev).map_err(io_error(&ws.prev))?;
    tree::copy(source, &ws.tree).map_err(io_error(&ws.tree))?;
    if atime {
        access::reset_tree(&ws.tree).map_err(io_error(&ws.tree))?;
    }
    let records = ws.run_build(request, &request.build_command, "pre")?;
    if !records.iter().any(|r| r.kind == RecordKind::Compile) {
        return Err(Error::NoCompilations {
            command: request.build_command.clone(),
            outputs: existing_outputs(source, 5),
        });
    }
    let reads = if atime {
        Some(
            access::read_files(&ws.tree)
                .map_err(io_error(&ws.tree))?
                .into_iter()
                .collect(),
        )
    } else {
        None
    };
    tree::copy(&ws.tree, &ws.pristine).map_err(io_error(&ws.pristine))?;
    Ok(Cached { records, reads })
}

/// The request's target in the pre build: its path (a Debian installed path resolved), its
/// closure, and the post-build command and mirrors.
pub(crate) fn base_for_target(
    request: &Request,
    ws: &Workspace,
    cached: Cached,
) -> Result<BaseState, Error> {
    let source = &request.source;
    let (target, post_command, mirrors) = if request.debian {
        let (command, mirrors) = debian::post_build(&ws.pristine);
        let target = if ws.pristine.join(&request.target).is_file() {
            request.target.clone()
        } else {
            debian::find_target(&ws.pristine, &request.target)?
        };
        (
            target,
            request.post_build_command.clone().unwrap_or(command),
            mirrors,
        )
    } else {
        (
            request.target.clone(),
            request
                .post_build_command
                .clone()
                .unwrap_or_else(|| request.build_command.clone()),
            request.mirrors.clone(),
        )
    };
    if !ws.pristine.join(&target).is_file() {
        return Err(Error::TargetMissing {
            target,
            tree: ws.tree.clone(),
        });
    }
    let index = Index::new(&ws.tree, &cached.records);
    let Some(closure) = index.closure(&target, &ws.pristine) else {
        return Err(Error::TargetNotLinked {
            target,
            outputs: existing_outputs(source, 5),
        });
    };
    if !closure.foreign.is_empty() {
        let outputs = existing_outputs(source, 5);
        if !outputs.is_empty() {
            return Err(Error::TreeHasOutputs {
                target,
                objects: closure.foreign.iter().take(5).cloned().collect(),
            });
        }
    }
    Ok(BaseState {
        records: cached.records,
        reads: cached.reads,
        target,
        closure,
        post_command,
        mirrors,
    })
}
