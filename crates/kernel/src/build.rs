//! `hotsplice build --kernel`: from a kernel source tree, its configuration and a unified
//! diff to a livepatch module.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hotsplice_objdiff::patchset::{PreTarget, SymbolRef};
use hotsplice_objdiff::{ObjectDiff, PatchSet, PostSym, RefusalKind, Status, patch_objects};
use hotsplice_srcpatch::{self as srcpatch, FileKind};

use crate::kallsyms::Kallsyms;
use crate::module::{self, KlpFunction, Resolution};
use crate::runpre::{self, ModuleImage, Proven, RunPre, Vmlinux};
use crate::{Error, kbuild, klp};

/// What to build.
#[derive(Debug, Clone)]
pub struct Request {
    /// The kernel source (as the running kernel was built from).
    pub source: PathBuf,
    /// The kernel's configuration (`/boot/config-*`).
    pub config: PathBuf,
    /// The fix.
    pub diff: PathBuf,
    /// The target kernel's headers (a kbuild tree with `Module.symvers`).
    pub headers: PathBuf,
    /// The target kernel's symbols (`/proc/kallsyms` text).
    pub kallsyms: String,
    /// The target kernel's image: a vmlinux, or a vmlinuz to extract it from.
    pub vmlinux: PathBuf,
    /// The target kernel's modules (`/lib/modules/RELEASE`), for fixes to module code.
    pub modules: PathBuf,
    /// Where prepared trees are cached.
    pub cache: PathBuf,
    /// The module's name (a C identifier).
    pub name: String,
}

/// The target kernel's files where a Debian-like system keeps those of the running kernel:
/// what `hotsplice build --kernel` uses unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFiles {
    /// Its headers (a kbuild tree with `Module.symvers`): `/lib/modules/RELEASE/build`.
    pub headers: PathBuf,
    /// Its symbols: `/proc/kallsyms`.
    pub symbols: PathBuf,
    /// Its image: `/boot/vmlinuz-RELEASE`.
    pub vmlinux: PathBuf,
    /// Its modules: `/lib/modules/RELEASE`.
    pub modules: PathBuf,
}

impl TargetFiles {
    /// The files of the running kernel, of release `release` (`uname -r`, see
    /// [`kernel_release`](crate::livepatch::kernel_release)).
    pub fn for_running_kernel(release: &str) -> TargetFiles {
        let modules = PathBuf::from(format!("/lib/modules/{release}"));
        TargetFiles {
            headers: modules.join("build"),
            symbols: PathBuf::from("/proc/kallsyms"),
            vmlinux: PathBuf::from(format!("/boot/vmlinuz-{release}")),
            modules,
        }
    }
}

/// Why the fix is refused, per thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of refusal (`header`, `assembly`, `build-changed`, `init`, `notrace`, or an
    /// object-diff kind).
    pub kind: RefusalKind,
    /// The function, variable, type or file concerned.
    pub symbol: String,
    /// Why.
    pub detail: String,
}

/// Seconds spent per step.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Preparing (or finding) the tree.
    pub prepare: f64,
    /// Compiling the changed units before the diff.
    pub pre: f64,
    /// Compiling them after.
    pub post: f64,
    /// Diffing, linking and converting the module.
    pub module: f64,
}

/// The result of a build.
#[derive(Debug)]
pub enum Outcome {
    /// A module was made.
    Module {
        /// The `.ko`.
        bytes: Vec<u8>,
        /// The replaced functions.
        functions: Vec<KlpFunction>,
        /// The callbacks registered.
        callbacks: Vec<module::KlpCallback>,
        /// Per object diff.
        diffs: Vec<ObjectDiff>,
        /// modpost's warnings, besides the expected ones.
        warnings: Vec<String>,
        /// Relocations turned into livepatch relocations.
        klp_relocations: usize,
        /// Timings.
        timings: Timings,
        /// Whether the tree was prepared by this build.
        fresh_tree: bool,
        /// The replaced functions, proven equal to the pre build in the target vmlinux.
        proven: Vec<Proven>,
        /// For a changed header: the units it reached and what finding them cost.
        header_scope: Option<HeaderScope>,
    },
    /// The fix cannot be applied live.
    Refused {
        /// Why.
        refusals: Vec<Refusal>,
        /// Per object diff (empty when refused before compiling).
        diffs: Vec<ObjectDiff>,
    },
    /// The fix changes no code of the kernel.
    NothingToPatch {
        /// Per object diff.
        diffs: Vec<ObjectDiff>,
        /// For a changed header: the units it reached and what finding them cost.
        header_scope: Option<HeaderScope>,
    },
}

/// What a diff changes: the objects of its `.c` files and its headers; or the refusals for
/// files the kernel backend cannot patch.
type Changed = (Vec<String>, Vec<String>);

fn changed_objects(files: &[PathBuf]) -> Result<Changed, Vec<Refusal>> {
    let mut objects = Vec::new();
    let mut headers = Vec::new();
    let mut refusals = Vec::new();
    for file in files {
        let name = file.to_string_lossy().into_owned();
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        match (srcpatch::file_kind(file), ext) {
            (FileKind::Documentation, _) => {}
            (_, "c") => objects.push(format!("{}.o", &name[..name.len() - 2])),
            (_, "h") if crate::includes::FORCED.contains(&name.as_str()) => {
                refusals.push(Refusal {
                    kind: RefusalKind::Header,
                    symbol: name.clone(),
                    detail: format!(
                        "{name} is included in every translation unit (kbuild's -include): a change to it is a change to the whole kernel"
                    ),
                })
            }
            (_, "h") => headers.push(name),
            (_, "S" | "s") => refusals.push(Refusal {
                kind: RefusalKind::Assembly,
                symbol: name.clone(),
                detail: format!(
                    "{name} is assembly: it has no ftrace entry and no ORC data from the compiler, so livepatch cannot switch its functions"
                ),
            }),
            _ => refusals.push(Refusal {
                kind: RefusalKind::BuildChanged,
                symbol: name.clone(),
                detail: format!("{name} is part of the build configuration, not code"),
            }),
        }
    }
    if refusals.is_empty() {
        Ok((objects, headers))
    } else {
        Err(refusals)
    }
}

/// At most this many translation units are compiled for a changed header (twice each): more
/// is most of a kernel build.
pub const HEADER_UNITS: usize = 400;

/// What a header change cost and reached.
#[derive(Debug, Clone, Default)]
pub struct HeaderScope {
    /// The changed headers.
    pub headers: Vec<String>,
    /// Translation units that include them (the include graph's answer).
    pub including: usize,
    /// Of those, units kbuild builds on their own (named by their Makefile).
    pub candidates: usize,
    /// Of those, units this configuration builds into the running kernel (compiled, and
    /// their code found in vmlinux's symbols or their module's `.ko` present).
    pub built: usize,
    /// Whether the include graph came from the tree's cache.
    pub graph_cached: bool,
    /// Seconds spent scanning (or loading) the include graph.
    pub scan_seconds: f64,
}

/// Whether a compiled object is part of the running kernel: a module whose `.ko` the target
/// has, or vmlinux code (one of its functions, other than boot-time code, is in kallsyms).
fn in_running_kernel(
    tree: &kbuild::Tree,
    object: &str,
    bytes: &[u8],
    kallsyms: &Kallsyms,
    modules: &Path,
) -> bool {
    if let Some(m) = kbuild::module_of(tree, object) {
        return find_module(modules, &m).is_some();
    }
    let Ok(elf) = hotsplice_objdiff::elf::ElfObject::parse(bytes) else {
        return false;
    };
    elf.symbols.iter().any(|s| {
        s.kind == hotsplice_objdiff::elf::SymbolKind::Func
            && s.section()
                .and_then(|i| elf.sections.get(i))
                .is_some_and(|sec| !sec.name.starts_with(".init."))
            && kallsyms.named(&s.name).next().is_some()
    })
}

/// Kernel-specific refusals of a diffed object: changed `__init`/`__exit` code, functions
/// livepatch cannot hook (no `__fentry__` call at their entry: `notrace`).
fn kernel_refusals(post: &[u8], diff: &ObjectDiff, set: &PatchSet) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let Ok(elf) = hotsplice_objdiff::elf::ElfObject::parse(post) else {
        return refusals;
    };
    for f in diff
        .functions
        .iter()
        .filter(|f| matches!(f.status, Status::Changed | Status::New))
    {
        let section = f
            .post_symbol
            .and_then(|j| elf.symbols.get(j.0))
            .and_then(|s| s.section())
            .and_then(|s| elf.sections.get(s));
        if let Some(section) = section
            && (section.name.starts_with(".init.") || section.name.starts_with(".exit."))
        {
            refusals.push(Refusal {
                kind: RefusalKind::Init,
                symbol: f.name.clone(),
                detail: format!(
                    "{} is {} code ({}): it ran at boot or module load, or is discarded, so a change to it cannot take effect",
                    f.name,
                    if section.name.starts_with(".init.") { "__init" } else { "__exit" },
                    section.name
                ),
            });
        }
    }
    for r in &set.replacements {
        let hooked = r.pre_relocs.iter().any(|p| {
            p.offset <= 5 && matches!(&p.target, PreTarget::Symbol(s) if s.name == "__fentry__")
        });
        if !hooked {
            let detail = match r.name.strip_prefix("__do_sys_") {
                Some(call) => format!(
                    "{} is the body of the syscall {call} (SYSCALL_DEFINE makes it inline, so notrace): livepatch cannot redirect it; define the syscall with HOTSPLICE_SYSCALL_DEFINEn (#include \"hotsplice-klp.h\") or kpatch's KPATCH_SYSCALL_DEFINEn, and the traceable wrappers __x64_sys_{call} and __ia32_sys_{call} are replaced instead",
                    r.name
                ),
                None => format!(
                    "{} has no __fentry__ call at its entry (notrace, or not traceable): livepatch redirects functions through ftrace",
                    r.name
                ),
            };
            refusals.push(Refusal {
                kind: RefusalKind::Notrace,
                symbol: r.name.clone(),
                detail,
            });
        }
    }
    refusals
}

/// Refusals for kpatch's markers hotsplice does not honour (`KPATCH_IGNORE_SECTION`,
/// `KPATCH_IGNORE_FUNCTION`, `KPATCH_FORCE_UNSAFE` of `kpatch-macros.h` put a pointer in a
/// `.hotsplice.refuse.*` section).
fn marker_refusals(post: &[u8]) -> Vec<Refusal> {
    let Ok(elf) = hotsplice_objdiff::elf::ElfObject::parse(post) else {
        return Vec::new();
    };
    elf.sections
        .iter()
        .filter_map(|s| s.name.strip_prefix(".hotsplice.refuse."))
        .map(|what| Refusal {
            kind: RefusalKind::UnsupportedMarker,
            symbol: what.to_string(),
            detail: format!(
                "the patch uses kpatch's {} marker: hotsplice patches every change it finds \
                 and keeps livepatch's consistency model, so it does not ignore changes or \
                 force a function unsafe; remove the marker",
                match what {
                    "ignore_section" => "KPATCH_IGNORE_SECTION",
                    "ignore_function" => "KPATCH_IGNORE_FUNCTION",
                    _ => "KPATCH_FORCE_UNSAFE",
                }
            ),
        })
        .collect()
}

/// Builds the module.
pub fn build(request: &Request, progress: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
    let text = std::fs::read_to_string(&request.diff).map_err(|source| Error::Io {
        path: request.diff.clone(),
        source,
    })?;
    let files = srcpatch::parse(&text)
        .map_err(|m| Error::Malformed(format!("{}: {m}", request.diff.display())))?;
    let kallsyms = Kallsyms::parse(&request.kallsyms);
    if kallsyms.vmlinux.is_empty() {
        return Err(Error::Malformed(
            "the kernel symbol list is empty or unreadable".into(),
        ));
    }
    let exports = kbuild::vmlinux_exports(&request.headers)?;
    let mut timings = Timings::default();

    let started = Instant::now();
    let tree = kbuild::prepare(&request.source, &request.config, &request.cache, progress)?;
    timings.prepare = started.elapsed().as_secs_f64();

    // Which objects: the diff's paths at the strip level `patch` will use.
    let strip = srcpatch::strip_level(&tree.dir, &request.diff)
        .map_err(|e| Error::Malformed(e.to_string()))?;
    let paths: Vec<PathBuf> = files
        .iter()
        .filter(|f| !f.deletes())
        .map(|f| PathBuf::from(&f.new_path))
        .collect();
    let relative: Vec<PathBuf> = paths
        .iter()
        .map(|p| p.components().skip(strip).collect())
        .collect();
    let (mut objects, headers) = match changed_objects(&relative) {
        Ok(changed) => changed,
        Err(refusals) => {
            return Ok(Outcome::Refused {
                refusals,
                diffs: Vec::new(),
            });
        }
    };

    let started = Instant::now();
    kbuild::write_headers(&tree)?;
    kbuild::restore(&tree, &relative, &objects)?;
    // A changed header: every unit of the running kernel that includes it, compiled too.
    let mut scope = None;
    let mut header_pre: Vec<(String, Vec<u8>)> = Vec::new();
    if !headers.is_empty() {
        progress(&format!(
            "finding the translation units that include {}",
            headers.join(" ")
        ));
        let scan = Instant::now();
        let (graph, graph_cached) = kbuild::include_graph(&tree)?;
        let scan_seconds = scan.elapsed().as_secs_f64();
        let including: std::collections::BTreeSet<String> =
            headers.iter().flat_map(|h| graph.includers(h)).collect();
        let candidates: Vec<String> = including
            .iter()
            .map(|c| format!("{}.o", &c[..c.len() - 2]))
            .filter(|o| !objects.contains(o) && kbuild::named(&tree, o))
            .collect();
        if candidates.len() > HEADER_UNITS {
            return Ok(Outcome::Refused {
                refusals: vec![Refusal {
                    kind: RefusalKind::HeaderScope,
                    symbol: headers.join(" "),
                    detail: format!(
                        "{} is included by {} translation units kbuild builds on their own: compiling each twice is most of a kernel build (the limit is {HEADER_UNITS}); patch the .c files that matter, or change the header's callers instead",
                        headers.join(", "),
                        candidates.len()
                    ),
                }],
                diffs: Vec::new(),
            });
        }
        progress(&format!(
            "compiling the {} units that include it, before the fix",
            candidates.len()
        ));
        let compiled = kbuild::compile_some(&tree, &candidates);
        for (o, bytes) in candidates.iter().zip(compiled) {
            if let Some(bytes) = bytes
                && in_running_kernel(&tree, o, &bytes, &kallsyms, &request.modules)
            {
                header_pre.push((o.clone(), bytes));
            }
        }
        scope = Some(HeaderScope {
            headers: headers.clone(),
            including: including.len(),
            candidates: candidates.len(),
            built: header_pre.len(),
            graph_cached,
            scan_seconds,
        });
    }
    if !objects.is_empty() {
        progress(&format!("compiling {} before the fix", objects.join(" ")));
    }
    let pre = match kbuild::compile(&tree, &objects) {
        Err(Error::NotBuilt(object)) => {
            return Ok(Outcome::Refused {
                refusals: vec![Refusal {
                    kind: RefusalKind::NotBuilt,
                    symbol: object.clone(),
                    detail: format!(
                        "kbuild does not build {object} on its own with this configuration: its source is #included by another file (as kernel/sched/*.c are), or the configuration leaves it out"
                    ),
                }],
                diffs: Vec::new(),
            });
        }
        other => other?,
    };
    let mut pre = pre;
    for (o, bytes) in header_pre {
        objects.push(o);
        pre.push(bytes);
    }
    // Objects built into a module are patched in that module (its .ko, from the target's
    // modules directory, stands in for vmlinux).
    let mut modules: Vec<Option<String>> = Vec::new();
    let mut module_files: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut missing = Vec::new();
    for o in &objects {
        let module = kbuild::module_of(&tree, o);
        if let Some(m) = &module
            && !module_files.contains_key(m)
        {
            match find_module(&request.modules, m) {
                Some(path) => {
                    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                    module_files.insert(m.clone(), bytes);
                }
                None => missing.push(Refusal {
                    kind: RefusalKind::Module,
                    symbol: o.clone(),
                    detail: format!(
                        "{o} is part of the module {m}, and no {m}.ko is under {} to prove its code against",
                        request.modules.display()
                    ),
                }),
            }
        }
        modules.push(module);
    }
    if !missing.is_empty() {
        return Ok(Outcome::Refused {
            refusals: missing,
            diffs: Vec::new(),
        });
    }
    timings.pre = started.elapsed().as_secs_f64();

    let started = Instant::now();
    progress("applying the fix and compiling again");
    let post = (|| {
        srcpatch::apply(&tree.dir, &request.diff, &files)
            .map_err(|e| Error::Malformed(e.to_string()))?;
        // The same objects compiled before the diff: a failure now is the diff's.
        kbuild::compile(&tree, &objects).map_err(|e| match e {
            Error::Command { output, .. } => Error::DiffDoesNotCompile { output },
            other => other,
        })
    })();
    kbuild::restore(&tree, &relative, &objects)?;
    let post = post?;
    timings.post = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut diffs = Vec::new();
    let mut sets = Vec::new();
    let mut refusals = Vec::new();
    for ((object, pre), post) in objects.iter().zip(&pre).zip(&post) {
        let (diff, set) = patch_objects(object, Some(pre), Some(post))
            .map_err(|e| Error::Malformed(format!("{object}: {e}")))?;
        refusals.extend(diff.refusals.iter().map(|r| Refusal {
            kind: r.kind,
            symbol: r.symbol.clone(),
            detail: r.detail.clone(),
        }));
        refusals.extend(kernel_refusals(post, &diff, &set));
        refusals.extend(marker_refusals(post));
        diffs.push(diff);
        sets.push(set);
    }
    if !refusals.is_empty() {
        return Ok(Outcome::Refused { refusals, diffs });
    }
    if sets
        .iter()
        .all(|s| s.replacements.is_empty() && s.hooks.is_empty())
    {
        return Ok(Outcome::NothingToPatch {
            diffs,
            header_scope: scope,
        });
    }

    progress("run-pre matching the replaced functions against the target vmlinux");
    let image = kbuild::vmlinux(&tree, &request.vmlinux)?;
    let vmlinux = Vmlinux::parse(&image)?;
    let in_vmlinux: Vec<&PatchSet> = sets
        .iter()
        .zip(&modules)
        .filter(|(_, m)| m.is_none())
        .map(|(s, _)| s)
        .collect();
    let mut run_pre = runpre::match_kernel(&in_vmlinux, &vmlinux, &kallsyms);
    let mut images = std::collections::HashMap::new();
    for (m, bytes) in &module_files {
        images.insert(m.clone(), ModuleImage::parse(bytes)?);
    }
    for (set, module) in sets.iter().zip(&modules) {
        if let Some(m) = module
            && let Some(image) = images.get(m)
        {
            runpre::match_module(set, m, image, &mut run_pre);
        }
    }
    if !run_pre.mismatches.is_empty() {
        return Ok(Outcome::Refused {
            refusals: run_pre
                .mismatches
                .iter()
                .map(|(name, detail)| Refusal {
                    kind: RefusalKind::RunPre,
                    symbol: name.clone(),
                    detail: detail.clone(),
                })
                .collect(),
            diffs,
        });
    }

    progress("linking the livepatch module");
    let module_of_object: std::collections::HashMap<&str, &str> = sets
        .iter()
        .zip(&modules)
        .filter_map(|(s, m)| Some((s.object.as_str(), m.as_deref()?)))
        .collect();
    // New globals of the patched objects, by name: the object defining each (another object
    // of the patch may use it; the running kernel does not have it).
    let new_globals: std::collections::HashMap<String, String> = diffs
        .iter()
        .zip(&post)
        .flat_map(|(d, bytes)| {
            let elf = hotsplice_objdiff::elf::ElfObject::parse(bytes).ok();
            let global = |i: Option<PostSym>| {
                elf.as_ref()
                    .zip(i)
                    .and_then(|(e, i)| e.symbols.get(i.0))
                    .is_some_and(|s| s.is_global())
            };
            let functions = d
                .functions
                .iter()
                .filter(|f| f.status == Status::New && f.global)
                .map(|f| f.name.clone());
            let data = d
                .data
                .iter()
                .filter(|v| v.status == Status::New && global(v.post_symbol))
                .map(|v| v.name.clone());
            functions
                .chain(data)
                .map(|n| (n, d.object.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut resolver = |object: &str, s: &SymbolRef| {
        if !s.local
            && let Some(defining) = new_globals.get(&s.name)
            && defining != object
        {
            return Ok(Resolution::Patch {
                object: defining.clone(),
                name: s.name.clone(),
            });
        }
        // A symbol of the module the object is part of: through livepatch, in that module.
        if let Some(m) = module_of_object.get(object)
            && let Some(image) = images.get(*m)
        {
            match image.count(&s.name) {
                0 => {}
                1 => {
                    return Ok(Resolution::Klp {
                        object: m.to_string(),
                        name: s.name.clone(),
                        sympos: 0,
                    });
                }
                count => {
                    return Err(Error::Ambiguous {
                        name: s.name.clone(),
                        object: object.to_string(),
                        count,
                    });
                }
            }
        }
        resolve(&kallsyms, &exports, &run_pre, object, s)
    };
    let mut sympos = |_object: &str, name: &str| {
        Ok(run_pre
            .proven
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.sympos))
    };
    let patch = match module::patch_object(&sets, &modules, &mut resolver, &mut sympos) {
        Ok(patch) => patch,
        Err(e) => match refusal_of(&e) {
            Some(refusal) => {
                return Ok(Outcome::Refused {
                    refusals: vec![refusal],
                    diffs,
                });
            }
            None => return Err(e),
        },
    };
    let registration =
        module::registration_source(&patch.functions, &patch.callbacks, &request.name);
    let work = request.cache.join("kernel-module").join(&request.name);
    let (ko, warnings) = kbuild::link_module(
        &request.headers,
        &work,
        &request.name,
        &patch.bytes,
        &registration,
    )?;
    let converted = klp::convert(&ko)?;
    timings.module = started.elapsed().as_secs_f64();
    Ok(Outcome::Module {
        bytes: converted.bytes,
        functions: patch.functions,
        callbacks: patch.callbacks,
        diffs,
        warnings,
        klp_relocations: converted.relocations,
        timings,
        fresh_tree: tree.fresh,
        proven: run_pre.proven,
        header_scope: scope,
    })
}

/// The refusal an error of linking the patch stands for (a symbol the kernel does not have,
/// a name several kernel symbols share, a construct livepatch cannot carry); `None` for real
/// errors.
fn refusal_of(e: &Error) -> Option<Refusal> {
    let (kind, symbol) = match e {
        Error::MissingSymbol { name, .. } => (RefusalKind::MissingSymbol, name.clone()),
        Error::Ambiguous { name, .. } => (RefusalKind::AmbiguousSymbol, name.clone()),
        Error::Unsupported { symbol, .. } => (RefusalKind::Unsupported, symbol.clone()),
        _ => return None,
    };
    Some(Refusal {
        kind,
        symbol,
        detail: e.to_string(),
    })
}

/// How the module reaches `symbol`: by export, else through livepatch with its position
/// (for a name several kernel symbols share, the one run-pre matching saw the code use).
fn resolve(
    kallsyms: &Kallsyms,
    exports: &HashSet<String>,
    run_pre: &RunPre,
    object: &str,
    symbol: &SymbolRef,
) -> Result<Resolution, Error> {
    if !symbol.local && exports.contains(&symbol.name) {
        return Ok(Resolution::Exported(symbol.name.clone()));
    }
    let all: Vec<_> = kallsyms.named(&symbol.name).collect();
    match all.len() {
        0 => Err(Error::MissingSymbol {
            name: symbol.name.clone(),
            object: object.to_string(),
        }),
        1 => Ok(Resolution::Klp {
            object: "vmlinux".into(),
            name: symbol.name.clone(),
            sympos: 0,
        }),
        count => {
            let learned = run_pre.learned.get(&symbol.name);
            let positions: Vec<u64> = learned
                .into_iter()
                .flatten()
                .filter_map(|&a| kallsyms.sympos(&symbol.name, a))
                .collect();
            match positions.as_slice() {
                [sympos] => Ok(Resolution::Klp {
                    object: "vmlinux".into(),
                    name: symbol.name.clone(),
                    sympos: *sympos,
                }),
                _ => Err(Error::Ambiguous {
                    name: symbol.name.clone(),
                    object: object.to_string(),
                    count,
                }),
            }
        }
    }
}

/// The `.ko` of module `name` under `dir` (kbuild names use `_` where files may use `-`).
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let wanted = format!("{}.ko", name.replace('-', "_"));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name().to_string_lossy().replace('-', "_") == wanted {
                return Some(path);
            }
        }
    }
    None
}

/// A module name from an output path: its stem, with what is not `[A-Za-z0-9_]` as `_`.
pub fn module_name(output: &Path) -> String {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "hsp_");
    }
    name.truncate(55);
    name
}
