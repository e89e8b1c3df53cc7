//! Checking, applying and undoing a bundle on one process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hotsplice_bundle::{Bundle, PreTarget, SymbolClass, SymbolRef, hex};
use hotsplice_matcher::{
    Found, Image, Learned, Memory, PreCode, PreReloc, Via, Wanted, locate, match_function,
};
use hotsplice_ptrace::{
    MAP_ANON_FIXED_NOREPLACE, Mapping, PROT_EXEC, PROT_READ, PROT_WRITE, Process, Realtime,
    SYS_MMAP, SYS_MUNMAP, Stopped,
};

use crate::link::{self, Resolved};
use crate::safety::{self, Range, ThreadView};
use crate::state::{self, AppliedFunction, AppliedPatch, ProcessState, Region};
use crate::{Error, FunctionReport, Options, ProcessReport, redirect, unwind};

/// The mapped file being patched.
#[derive(Debug)]
struct Module {
    path: String,
    start: u64,
    end: u64,
    bias: u64,
    image: Image,
}

/// Process memory as it was before any hotsplice patch: the bytes that active patches
/// replaced are shown instead of their jumps.
struct LiveMemory<'p> {
    process: &'p Process,
    overlay: Vec<(u64, Vec<u8>)>,
}

impl Memory for LiveMemory<'_> {
    fn read(&self, address: u64, buf: &mut [u8]) -> bool {
        if self.process.read(address, buf).is_err() {
            return false;
        }
        let end = address + buf.len() as u64;
        for (site, bytes) in &self.overlay {
            for (i, b) in bytes.iter().enumerate() {
                let at = site + i as u64;
                if at >= address && at < end {
                    buf[(at - address) as usize] = *b;
                }
            }
        }
        true
    }
}

/// A replacement located in the process.
#[derive(Debug, Clone)]
struct Located {
    object: usize,
    replacement: usize,
    /// Entry of the original function (where the jump goes).
    entry: u64,
    /// The code currently live for the function (the original, or an earlier patch's
    /// version): it must be idle when the jump is written.
    live_start: u64,
    live_len: u64,
    branch_targets: Vec<u64>,
    via: Via,
    /// The earlier patch whose version this one replaces.
    stacked_on: Option<String>,
}

type SymbolKey = (Option<usize>, String);

/// Everything known about one process before anything is written.
struct Prepared<'b> {
    bundle: &'b Bundle,
    process: Process,
    state: ProcessState,
    module: Module,
    located: Vec<Located>,
    learned: HashMap<SymbolKey, Learned>,
    others: RefCell<Option<Vec<(u64, Image)>>>,
    /// Implementations chosen by the `STT_GNU_IFUNC` resolvers called in the target.
    ifuncs: RefCell<HashMap<String, u64>>,
}

/// Where a symbol is, before indirect functions are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Found(Resolved),
    /// An indirect function: the address of its resolver.
    Ifunc(u64),
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn find_module(process: &Process, bundle: &Bundle) -> Result<Module, Error> {
    let pid = process.pid();
    let maps = process.maps()?;
    let exe = process.exe()?.display().to_string();
    let wanted_name = std::path::Path::new(&bundle.target.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let want_build_id = bundle.target.build_id.clone();
    let mut paths: Vec<String> = maps
        .iter()
        .filter(|m| m.exec && m.inode != 0)
        .filter_map(|m| m.path.clone())
        .collect();
    paths.sort();
    paths.dedup();
    let mut candidates: Vec<(String, Vec<u8>)> = Vec::new();
    let mut exe_problem = None;
    for path in &paths {
        let is_exe = *path == exe;
        let name_matches = std::path::Path::new(path)
            .file_name()
            .is_some_and(|n| n.to_string_lossy() == wanted_name);
        let kind_matches = match bundle.target.kind {
            hotsplice_bundle::TargetKind::Executable => is_exe,
            hotsplice_bundle::TargetKind::SharedLibrary => !is_exe && name_matches,
        };
        let Some(first) = maps.iter().find(|m| m.path.as_ref() == Some(path)) else {
            continue;
        };
        let bytes = match process.mapped_file(first) {
            Ok(bytes) => bytes,
            Err(_) => continue,
        };
        let image = match Image::parse(&bytes) {
            Ok(image) => image,
            Err(e) => {
                if is_exe {
                    exe_problem = Some(format!("{path}: {e}"));
                }
                continue;
            }
        };
        let id_matches = match (&want_build_id, &image.build_id) {
            (Some(want), Some(have)) => *want == hex::encode(have),
            _ => false,
        };
        if id_matches || kind_matches {
            candidates.push((path.clone(), bytes));
            if id_matches {
                candidates.retain(|(p, _)| p == path);
                break;
            }
        }
    }
    let Some((path, bytes)) = candidates.into_iter().next() else {
        return Err(Error::NoModule {
            pid,
            target: match exe_problem {
                Some(problem) => format!("{} (its executable is {problem})", bundle.target.path),
                None => bundle.target.path.clone(),
            },
        });
    };
    let image = Image::parse(&bytes).map_err(|e| Error::NoModule {
        pid,
        target: format!("{} ({e})", bundle.target.path),
    })?;
    let mapped: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.path.as_ref() == Some(&path))
        .collect();
    let start = mapped.iter().map(|m| m.start).min().unwrap_or(0);
    let end = mapped.iter().map(|m| m.end).max().unwrap_or(0);
    let base = mapped
        .iter()
        .find(|m| m.offset == 0)
        .map_or(start, |m| m.start);
    let bias = if image.position_independent {
        base - image.first_load
    } else {
        0
    };
    Ok(Module {
        path,
        start,
        end,
        bias,
        image,
    })
}

/// Test-only fault injection: with `HOTSPLICE_FAULT=<point>` in the environment, hotsplice
/// kills itself with `SIGKILL` when it reaches that point, so the crash-consistency tests can
/// stop it between any two steps of an apply or undo.
///
/// With `HOTSPLICE_HOLD=<point>:<dir>`, it instead creates `<dir>/reached` there and waits (at
/// most a minute) for `<dir>/release`, so a test can act on the target — kill it, make it
/// exec, fork or take a signal — at exactly that step.
fn fault(point: &str) {
    if std::env::var_os("HOTSPLICE_FAULT").is_some_and(|v| v == point) {
        hotsplice_ptrace::die_now();
    }
    if let Some(hold) = std::env::var_os("HOTSPLICE_HOLD")
        && let Some((at, dir)) = hold.to_string_lossy().split_once(':')
        && at == point
    {
        let dir = std::path::Path::new(dir);
        let _ = std::fs::write(dir.join("reached"), point);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !dir.join("release").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Original bytes of the sites of active patches (bottom layer wins).
fn overlay(state: &ProcessState) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for patch in &state.patches {
        for f in &patch.functions {
            if !out.iter().any(|(s, _)| *s == f.site)
                && let Some(bytes) = hex::decode(&f.replaced)
            {
                out.push((f.site, bytes));
            }
        }
    }
    out
}

/// An earlier operation on this process was interrupted: it must be recovered first.
fn refuse_if_interrupted(dir: &std::path::Path, pid: i32, start_time: u64) -> Result<(), Error> {
    match state::read_journal(dir, pid) {
        Some(j) if j.start_time == start_time => Err(Error::Interrupted {
            pid,
            id: j.patch.id,
        }),
        // A journal of an earlier process with the same pid: stale.
        Some(_) => state::remove_journal(dir, pid),
        None => Ok(()),
    }
}

fn pre_relocs(replacement: &hotsplice_bundle::Replacement) -> Vec<PreReloc> {
    replacement
        .pre_relocs
        .iter()
        .map(|r| PreReloc {
            offset: r.offset,
            r_type: r.r_type,
            symbol: match &r.target {
                PreTarget::Symbol { symbol } => Some(symbol.name.clone()),
                PreTarget::Anonymous { .. } => None,
            },
            addend: r.addend,
        })
        .collect()
}

fn prepare<'b>(bundle: &'b Bundle, pid: i32, options: &Options) -> Result<Prepared<'b>, Error> {
    if !bundle.refusals.is_empty() {
        return Err(Error::Refused {
            reasons: bundle
                .refusals
                .iter()
                .map(|r| format!("{} {}: {}", r.kind, r.symbol, r.detail))
                .collect(),
        });
    }
    let process = Process::new(pid)?;
    let start_time = process.start_time()?;
    refuse_if_interrupted(&options.state_dir, pid, start_time)?;
    let state = observe(&process, start_time, options)?.state;
    if state.patches.iter().any(|p| p.id == bundle.id) {
        return Err(Error::AlreadyApplied {
            pid,
            id: bundle.id.clone(),
        });
    }
    let module = find_module(&process, bundle)?;
    let memory = LiveMemory {
        process: &process,
        overlay: overlay(&state),
    };
    let mut located = Vec::new();
    let mut learned: HashMap<SymbolKey, Learned> = HashMap::new();
    let relocs: Vec<Vec<Vec<PreReloc>>> = bundle
        .objects
        .iter()
        .map(|object| object.replacements.iter().map(pre_relocs).collect())
        .collect();
    let wanted_all: Vec<Vec<Wanted<'_>>> = bundle
        .objects
        .iter()
        .zip(&relocs)
        .map(|(object, relocs)| {
            object
                .replacements
                .iter()
                .zip(relocs)
                .map(|(r, relocs)| Wanted {
                    name: &r.name,
                    local: r.local,
                    source_file: object.source_file.as_deref(),
                    pre: PreCode {
                        code: &r.pre_code,
                        relocs,
                    },
                })
                .collect()
        })
        .collect();
    let mut found_all: Vec<Vec<Found>> = wanted_all
        .iter()
        .map(|wanted| locate(&module.image, module.bias, wanted, &memory))
        .collect();
    settle_interchangeable(bundle, &wanted_all, &mut found_all, &memory);
    for ((o, object), found) in bundle.objects.iter().enumerate().zip(found_all) {
        let wanted = &wanted_all[o];
        // Which names are local in this object (learnt addresses of locals are per object).
        let mut local_names: HashMap<&str, bool> = HashMap::new();
        for r in &object.replacements {
            for x in &r.pre_relocs {
                if let PreTarget::Symbol { symbol } = &x.target {
                    local_names.insert(&symbol.name, symbol.local);
                }
            }
        }
        for (k, outcome) in found.into_iter().enumerate() {
            let replacement = &object.replacements[k];
            // Replaced already by an earlier patch, and this bundle built on top of it? Its
            // pre code is then that patch's version, which lives in the patch memory.
            let earlier_version = |name: &str| {
                state.patches.iter().rev().find_map(|p| {
                    p.functions
                        .iter()
                        .find(|f| f.name == name)
                        .map(|f| (p.id.clone(), f.clone()))
                })
            };
            let outcome = match outcome {
                Found::NotFound { .. } => match earlier_version(&replacement.name) {
                    Some((_, f)) => {
                        let plain = LiveMemory {
                            process: &process,
                            overlay: Vec::new(),
                        };
                        let window = replacement.pre_code.len() as u64 + 64;
                        match match_function(wanted[k].pre, f.new_address, window, &plain) {
                            // Report it as found at the original entry; the stacking check
                            // below then takes the earlier patch's version.
                            Ok(mut m) => {
                                m.address = f.entry;
                                Found::Located {
                                    matched: m,
                                    via: Via::Symbol,
                                }
                            }
                            Err(_) => outcome,
                        }
                    }
                    None => outcome,
                },
                other => other,
            };
            let (matched, via) = match outcome {
                Found::Located { matched, via } => (matched, via),
                Found::NotFound {
                    mismatch,
                    candidates,
                } => {
                    return Err(Error::NotFound {
                        pid,
                        function: replacement.name.clone(),
                        detail: match mismatch {
                            Some(m) => format!("the running code differs from the pre build {m}"),
                            None => format!(
                                "no function of {} matches its pre-build code ({candidates} candidates)",
                                module.path
                            ),
                        },
                    });
                }
                Found::Ambiguous { addresses } => {
                    return Err(Error::Ambiguous {
                        pid,
                        function: replacement.name.clone(),
                        addresses,
                    });
                }
            };
            let mut entry_located = Located {
                object: o,
                replacement: k,
                entry: matched.address,
                live_start: matched.address,
                live_len: matched.len,
                branch_targets: matched.branch_targets.clone(),
                via,
                stacked_on: None,
            };
            let mut lessons = matched.learned.clone();
            // Already replaced by an earlier patch? Then this bundle must have been built on top
            // of it: its pre code is that patch's version.
            let earlier = state.patches.iter().rev().find_map(|p| {
                p.functions
                    .iter()
                    .find(|f| f.entry == matched.address)
                    .map(|f| (p.id.clone(), f.clone()))
            });
            if let Some((earlier_id, f)) = earlier {
                let plain = LiveMemory {
                    process: &process,
                    overlay: Vec::new(),
                };
                let window = replacement.pre_code.len() as u64 + 64;
                match match_function(wanted[k].pre, f.new_address, window, &plain) {
                    Ok(on_top) => {
                        entry_located.live_start = on_top.address;
                        entry_located.live_len = on_top.len;
                        entry_located.stacked_on = Some(earlier_id);
                        lessons = on_top.learned;
                    }
                    Err(_) => {
                        return Err(Error::StackedWithoutBase {
                            pid,
                            function: replacement.name.clone(),
                            patch: earlier_id,
                        });
                    }
                }
            }
            for lesson in lessons {
                let local = local_names
                    .get(lesson.symbol.as_str())
                    .copied()
                    .unwrap_or(false);
                let key = (local.then_some(o), lesson.symbol.clone());
                match learned.get(&key) {
                    Some(previous) if *previous != lesson.value => {
                        return Err(Error::Conflict {
                            pid,
                            symbol: lesson.symbol,
                            detail: format!(
                                "{previous:?} from one function, {:?} from {} at {:#x}",
                                lesson.value, replacement.name, lesson.at
                            ),
                        });
                    }
                    _ => {
                        learned.insert(key, lesson.value);
                    }
                }
            }
            located.push(entry_located);
        }
    }
    Ok(Prepared {
        bundle,
        process,
        state,
        module,
        located,
        learned,
        others: RefCell::new(None),
        ifuncs: RefCell::new(HashMap::new()),
    })
}

/// Whether two pieces (of the same or different objects of a bundle) are the same code or
/// data, comparing the pieces they link to by content too.
fn same_piece(bundle: &Bundle, a: (usize, usize), b: (usize, usize), depth: usize) -> bool {
    use hotsplice_bundle::Link;
    if a == b {
        return true;
    }
    let (pa, pb) = (
        &bundle.objects[a.0].pieces[a.1],
        &bundle.objects[b.0].pieces[b.1],
    );
    if depth > 8
        || pa.kind != pb.kind
        || pa.size != pb.size
        || pa.bytes != pb.bytes
        || pa.relocs.len() != pb.relocs.len()
    {
        return false;
    }
    pa.relocs.iter().zip(&pb.relocs).all(|(x, y)| {
        x.offset == y.offset
            && x.r_type == y.r_type
            && x.addend == y.addend
            && match (&x.target, &y.target) {
                (Link::Piece { index: i }, Link::Piece { index: j }) => {
                    // A self-reference (a recursive call) is the same in both.
                    (*i == a.1 && *j == b.1) || same_piece(bundle, (a.0, *i), (b.0, *j), depth + 1)
                }
                (Link::Symbol { symbol: s }, Link::Symbol { symbol: t }) => {
                    // A local symbol names a different variable in each object.
                    s == t && (!s.local || a.0 == b.0)
                }
                (t, u) => t == u,
            }
    })
}

/// Functions that are identical in the running program and are all replaced by identical new
/// code (nginx's `uwsgi` and `scgi` status-line parsers): each matches every one of the same
/// addresses, and nothing tells them apart — but nothing needs to. Assigns the addresses in
/// order.
fn settle_interchangeable(
    bundle: &Bundle,
    wanted: &[Vec<Wanted<'_>>],
    found: &mut [Vec<Found>],
    memory: &dyn Memory,
) {
    let sorted = |f: &Found| match f {
        Found::Ambiguous { addresses } => {
            let mut a = addresses.clone();
            a.sort_unstable();
            Some(a)
        }
        _ => None,
    };
    let ambiguous: Vec<(usize, usize)> = found
        .iter()
        .enumerate()
        .flat_map(|(o, list)| {
            list.iter()
                .enumerate()
                .filter(|(_, f)| matches!(f, Found::Ambiguous { .. }))
                .map(move |(k, _)| (o, k))
        })
        .collect();
    let mut settled: Vec<(usize, usize)> = Vec::new();
    for &(o, k) in &ambiguous {
        if settled.contains(&(o, k)) {
            continue;
        }
        let Some(addresses) = sorted(&found[o][k]) else {
            continue;
        };
        let ri = &bundle.objects[o].replacements[k];
        let group: Vec<(usize, usize)> = ambiguous
            .iter()
            .copied()
            .filter(|&(p, j)| {
                let rj = &bundle.objects[p].replacements[j];
                sorted(&found[p][j]).as_ref() == Some(&addresses)
                    && rj.pre_code == ri.pre_code
                    && rj.pre_relocs == ri.pre_relocs
                    && same_piece(bundle, (o, ri.piece), (p, rj.piece), 0)
            })
            .collect();
        if group.len() != addresses.len() {
            continue;
        }
        for (&(p, j), &address) in group.iter().zip(&addresses) {
            let window = wanted[p][j].pre.code.len() as u64 + 64;
            if let Ok(matched) = match_function(wanted[p][j].pre, address, window, memory) {
                found[p][j] = Found::Located {
                    matched,
                    via: Via::Interchangeable,
                };
                settled.push((p, j));
            }
        }
    }
}

impl Prepared<'_> {
    fn read_u64(&self, address: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        self.process.read(address, &mut buf).ok()?;
        Some(u64::from_le_bytes(buf))
    }

    /// Where a symbol of the running program is.
    fn resolve(&self, object: usize, symbol: &SymbolRef) -> Option<Resolved> {
        match self.lookup(object, symbol)? {
            Lookup::Found(r) => Some(r),
            Lookup::Ifunc(_) => self
                .ifuncs
                .borrow()
                .get(&symbol.name)
                .map(|&a| Resolved::Address(a)),
        }
    }

    /// Where a symbol is: learnt from the running code, in the patched file's symbol tables,
    /// or defined by another loaded file (an indirect function there needs its resolver run).
    fn lookup(&self, object: usize, symbol: &SymbolRef) -> Option<Lookup> {
        let key = (symbol.local.then_some(object), symbol.name.clone());
        if let Some(value) = self.learned.get(&key) {
            return match *value {
                Learned::Address(a) => Some(Lookup::Found(Resolved::Address(a))),
                Learned::GotSlot(slot) => self
                    .read_u64(slot)
                    .map(|a| Lookup::Found(Resolved::Address(a))),
                Learned::TpOffset(t) => Some(Lookup::Found(Resolved::TpOffset(t))),
                Learned::TpOffsetSlot(slot) => self
                    .read_u64(slot)
                    .map(|t| Lookup::Found(Resolved::TpOffset(t as i64))),
            };
        }
        let image = &self.module.image;
        let source_file = self.bundle.objects[object].source_file.as_deref();
        let mut named: Vec<_> = image
            .symbols_named(&symbol.name)
            .filter(|s| s.local == symbol.local)
            .collect();
        if symbol.local && named.len() > 1 {
            named.retain(|s| s.file.as_deref() == source_file);
        }
        if let [s] = named.as_slice() {
            if s.tls {
                return if image.position_independent && !self.is_executable() {
                    None
                } else {
                    image
                        .tpoff(s.address)
                        .map(|t| Lookup::Found(Resolved::TpOffset(t)))
                };
            }
            let address = s.address.wrapping_add(self.module.bias);
            return Some(if s.ifunc {
                Lookup::Ifunc(address)
            } else {
                Lookup::Found(Resolved::Address(address))
            });
        }
        if symbol.local || symbol.class == SymbolClass::Tls {
            return None;
        }
        // A library symbol: the first definition among the other mapped objects.
        let mut others = self.others.borrow_mut();
        let others = others.get_or_insert_with(|| self.other_modules());
        for (bias, image) in others.iter() {
            if let Some(s) = image
                .symbols_named(&symbol.name)
                .find(|s| !s.local && !s.tls && s.address != 0)
            {
                let address = s.address.wrapping_add(*bias);
                return Some(if s.ifunc {
                    Lookup::Ifunc(address)
                } else {
                    Lookup::Found(Resolved::Address(address))
                });
            }
        }
        None
    }

    /// The indirect functions the new code calls: (name, resolver address).
    fn ifuncs_needed(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for (o, object) in self.bundle.objects.iter().enumerate() {
            for piece in &object.pieces {
                for reloc in &piece.relocs {
                    if let hotsplice_bundle::Link::Symbol { symbol } = &reloc.target
                        && let Some(Lookup::Ifunc(resolver)) = self.lookup(o, symbol)
                        && !out.iter().any(|(n, _)| *n == symbol.name)
                    {
                        out.push((symbol.name.clone(), resolver));
                    }
                }
            }
        }
        out
    }

    fn is_executable(&self) -> bool {
        self.bundle.target.kind == hotsplice_bundle::TargetKind::Executable
    }

    fn other_modules(&self) -> Vec<(u64, Image)> {
        let Ok(maps) = self.process.maps() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for m in &maps {
            let Some(path) = &m.path else { continue };
            if m.inode == 0 || m.offset != 0 || *path == self.module.path || seen.contains(path) {
                continue;
            }
            seen.push(path.clone());
            let Ok(bytes) = self.process.mapped_file(m) else {
                continue;
            };
            let Ok(image) = Image::parse(&bytes) else {
                continue;
            };
            let bias = if image.position_independent {
                m.start - image.first_load
            } else {
                0
            };
            out.push((bias, image));
        }
        out
    }

    /// Whether an address may be beyond rel32 reach of patch memory placed near the module.
    fn far(&self, address: u64) -> bool {
        const REACH: u64 = 1 << 30;
        address < self.module.start.saturating_sub(REACH) || address > self.module.end + REACH
    }
}

/// Maps `size` bytes near the module, within rel32 reach of it.
fn map_near(stopped: &mut Stopped, module: &Module, size: u64, prot: u64) -> Result<u64, Error> {
    let below = module.start.saturating_sub(size + (2 << 20)) & !0xfff;
    let mut hints = Vec::new();
    for k in 0..16u64 {
        hints.push(below.saturating_sub(k * (64 << 20)));
    }
    for k in 0..16u64 {
        hints.push((module.end + (2 << 20) + k * (64 << 20)) & !0xfff);
    }
    for hint in hints.into_iter().filter(|&h| h >= 1 << 16) {
        let args = [hint, size, prot, MAP_ANON_FIXED_NOREPLACE, u64::MAX, 0];
        match stopped.syscall(SYS_MMAP, args) {
            Ok(address) if address as u64 == hint => return Ok(hint),
            Ok(address) => {
                // An old kernel took the hint as a hint: not where we need it.
                let _ = stopped.syscall(SYS_MUNMAP, [address as u64, size, 0, 0, 0, 0]);
            }
            Err(hotsplice_ptrace::Error::RemoteSyscall { errno, .. })
                if errno == 17 /* EEXIST */ || errno == 12 /* ENOMEM */ => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::NoPlacement {
        pid: stopped.pid(),
        size,
    })
}

/// The call-frame information of every file mapped by the process.
struct Cfi {
    modules: Vec<(u64, u64, u64, hotsplice_matcher::EhFrameSection)>,
}

impl Cfi {
    fn load(process: &Process) -> Cfi {
        let Ok(maps) = process.maps() else {
            return Cfi {
                modules: Vec::new(),
            };
        };
        let mut modules = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for m in &maps {
            let Some(path) = m.path.as_deref() else {
                continue;
            };
            if m.inode == 0 || seen.contains(&path) {
                continue;
            }
            seen.push(path);
            let mapped: Vec<&Mapping> = maps
                .iter()
                .filter(|x| x.path.as_deref() == Some(path))
                .collect();
            let Some(first) = mapped.iter().find(|x| x.offset == 0) else {
                continue;
            };
            let Ok(bytes) = process.mapped_file(first) else {
                continue;
            };
            let Ok(image) = Image::parse(&bytes) else {
                continue;
            };
            let Some(eh) = image.eh_frame else { continue };
            let start = mapped.iter().map(|x| x.start).min().unwrap_or(0);
            let end = mapped.iter().map(|x| x.end).max().unwrap_or(0);
            let bias = if image.position_independent {
                first.start - image.first_load
            } else {
                0
            };
            modules.push((start, end, bias, eh));
        }
        Cfi { modules }
    }

    fn modules(&self) -> Vec<unwind::CfiModule<'_>> {
        self.modules
            .iter()
            .map(|(start, end, bias, eh)| unwind::CfiModule {
                start: *start,
                end: *end,
                bias: *bias,
                eh_frame: eh,
            })
            .collect()
    }
}

/// What each thread looks like to the safety check: its IP, the return addresses on its
/// stack (by unwinding), and the part of the stack unwinding could not account for. `maps`
/// is read before the stop (re-read only for a stack it does not cover); memory is read
/// through the stopped process's open `/proc/PID/mem`: this runs inside the pause.
fn thread_views(
    process: &Process,
    stopped: &mut Stopped,
    cfi: &Cfi,
    maps: &[Mapping],
) -> Result<Vec<ThreadView>, Error> {
    let modules = cfi.modules();
    let mut cache = unwind::StepCache::default();
    let mut fresh: Option<Vec<Mapping>> = None;
    let threads: Vec<(i32, u64, u64, u64)> = stopped
        .threads()
        .iter()
        .map(|t| (t.tid, t.regs.rip, t.regs.rsp, t.regs.rbp))
        .collect();
    // Where each stack ends, then all stacks in one read.
    let mut ranges = Vec::with_capacity(threads.len());
    for &(_, _, rsp, _) in &threads {
        let covering = |maps: &[Mapping]| {
            maps.iter()
                .find(|m| rsp >= m.start && rsp < m.end)
                .map(|m| m.end)
        };
        let end = match covering(maps) {
            Some(end) => end,
            None => {
                let again = fresh.get_or_insert_with(|| process.maps().unwrap_or_default());
                covering(again).unwrap_or(rsp)
            }
        };
        ranges.push((rsp, (end - rsp).min(16 << 20) as usize));
    }
    let stacks = stopped.read_many(&ranges);
    let mut views = Vec::new();
    for ((tid, rip, rsp, rbp), stack) in threads.into_iter().zip(stacks) {
        let end = rsp + stack.len() as u64;
        let read = |address: u64| -> Option<u64> {
            let at = address.checked_sub(rsp)? as usize;
            let word = stack.get(at..at + 8)?;
            Some(u64::from_le_bytes(word.try_into().ok()?))
        };
        let walked = unwind::walk(rip, rsp, rbp, &modules, &mut cache, &read);
        let (conservative, start) = match walked.unknown_from {
            Some(from) if from >= rsp => {
                let skip = ((from - rsp) as usize).min(stack.len());
                (stack[skip..].to_vec(), from)
            }
            Some(_) => (stack.clone(), rsp),
            None => (Vec::new(), end),
        };
        views.push(ThreadView {
            tid,
            rip,
            return_addresses: walked.return_addresses,
            stack: conservative,
            stack_start: start,
        });
    }
    Ok(views)
}

/// Unmaps patch memory (best effort, used when an apply cannot complete).
fn unmap(process: &Process, regions: &[Region], options: &Options) {
    if regions.is_empty() {
        return;
    }
    let _rt = Realtime::raise();
    if let Ok(mut stopped) = Stopped::stop(process, options.stop_timeout) {
        for r in regions {
            let _ = stopped.syscall(SYS_MUNMAP, [r.address, r.size, 0, 0, 0, 0]);
        }
        stopped.release();
    }
}

/// Checks a bundle against one process: everything up to, not including, the first change.
pub fn check_one(bundle: &Bundle, pid: i32, options: &Options) -> Result<ProcessReport, Error> {
    let prepared = prepare(bundle, pid, options)?;
    resolve_all(&prepared)?;
    let mut report = report_for(&prepared);
    let cfi = Cfi::load(&prepared.process);
    let maps = prepared.process.maps()?;
    let _rt = Realtime::raise();
    let mut stopped = Stopped::stop(&prepared.process, options.stop_timeout)?;
    let views = thread_views(&prepared.process, &mut stopped, &cfi, &maps);
    let pause = stopped.release();
    report.pause = pause.longest;
    report.threads = pause.threads;
    if let Some(busy) = safety::check(&views?, &ranges(&prepared)) {
        report.busy = Some(busy_message(&busy));
    }
    Ok(report)
}

fn resolve_all(prepared: &Prepared<'_>) -> Result<(), Error> {
    for (o, object) in prepared.bundle.objects.iter().enumerate() {
        for piece in &object.pieces {
            for reloc in &piece.relocs {
                if let hotsplice_bundle::Link::Symbol { symbol } = &reloc.target
                    && prepared.lookup(o, symbol).is_none()
                {
                    return Err(Error::Unresolved {
                        symbol: symbol.name.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn ranges(prepared: &Prepared<'_>) -> Vec<Range> {
    prepared
        .located
        .iter()
        .map(|l| Range {
            start: l.live_start,
            end: l.live_start + l.live_len,
            name: prepared.bundle.objects[l.object].replacements[l.replacement]
                .name
                .clone(),
        })
        .collect()
}

fn busy_message(busy: &safety::Busy) -> String {
    match busy.stack_word_at {
        None => format!("thread {} is executing {}", busy.tid, busy.function),
        Some(0) => format!("thread {} will return into {}", busy.tid, busy.function),
        Some(at) => format!(
            "thread {} will return into {} (stack word at {at:#x})",
            busy.tid, busy.function
        ),
    }
}

fn report_for(prepared: &Prepared<'_>) -> ProcessReport {
    ProcessReport {
        pid: prepared.process.pid(),
        module: prepared.module.path.clone(),
        patch: prepared.bundle.id.clone(),
        functions: prepared
            .located
            .iter()
            .map(|l| FunctionReport {
                name: prepared.bundle.objects[l.object].replacements[l.replacement]
                    .name
                    .clone(),
                entry: l.entry,
                new_address: 0,
                via: match l.via {
                    Via::Symbol => "symbol table",
                    Via::FunctionStart => "function start (.eh_frame)",
                    Via::Learned => "address learnt from another function",
                    Via::Interchangeable => "identical to another replaced function",
                }
                .to_string(),
                stacked_on: l.stacked_on.clone(),
            })
            .collect(),
        pause: Duration::ZERO,
        attempts: 0,
        threads: 0,
        realtime: false,
        busy: None,
    }
}

/// Applies a bundle to one process (see the crate documentation for the steps).
pub fn apply_one(
    bundle: &Bundle,
    bundle_sha: &str,
    pid: i32,
    options: &Options,
) -> Result<ProcessReport, Error> {
    let prepared = prepare(bundle, pid, options)?;
    resolve_all(&prepared)?;
    let process = &prepared.process;
    let objects = &bundle.objects;
    let layout = link::plan(objects, &|o, s| match prepared.lookup(o, s) {
        Some(Lookup::Found(Resolved::Address(a)) | Lookup::Ifunc(a)) => prepared.far(a),
        _ => false,
    });
    let ifuncs = prepared.ifuncs_needed();

    // Stop 1: map patch memory.
    let realtime;
    let (code_base, data_base, first_pause) = {
        let rt = Realtime::raise();
        realtime = rt.active();
        let mut stopped = Stopped::stop(process, options.stop_timeout)?;
        fault("attached");
        let code = map_near(
            &mut stopped,
            &prepared.module,
            layout.code_size,
            PROT_READ | PROT_EXEC,
        );
        let data = match (&code, layout.data_size) {
            (Ok(_), 0) => Ok(0),
            (Ok(_), size) => map_near(&mut stopped, &prepared.module, size, PROT_READ | PROT_WRITE),
            (Err(_), _) => Ok(0),
        };
        let (code, data) = match (code, data) {
            (Ok(c), Ok(d)) => (c, d),
            (Ok(c), Err(e)) => {
                let _ = stopped.syscall(SYS_MUNMAP, [c, layout.code_size, 0, 0, 0, 0]);
                return Err(e);
            }
            (Err(e), _) => return Err(e),
        };
        // Indirect functions (glibc's string functions): run their resolvers in the target,
        // returning to an `int3` at the end of the header page.
        if !ifuncs.is_empty() {
            let trap = code + link::HEADER_SIZE - 1;
            let called = stopped
                .write(trap, &[0xcc])
                .map_err(Error::from)
                .and_then(|()| {
                    for (name, resolver) in &ifuncs {
                        let implementation = stopped.call(*resolver, trap)?;
                        prepared
                            .ifuncs
                            .borrow_mut()
                            .insert(name.clone(), implementation);
                    }
                    Ok(())
                });
            if let Err(e) = called {
                let _ = stopped.syscall(SYS_MUNMAP, [code, layout.code_size, 0, 0, 0, 0]);
                if data != 0 {
                    let _ = stopped.syscall(SYS_MUNMAP, [data, layout.data_size, 0, 0, 0, 0]);
                }
                return Err(e);
            }
        }
        // Recorded before the threads go: if hotsplice dies from here on, `recover` unmaps
        // this memory (or finishes the job).
        let mut regions = vec![Region {
            address: code,
            size: layout.code_size,
        }];
        if layout.data_size > 0 {
            regions.push(Region {
                address: data,
                size: layout.data_size,
            });
        }
        let journal = state::Journal {
            pid: prepared.process.pid(),
            start_time: prepared.state.start_time,
            operation: state::Operation::Apply,
            phase: state::Phase::Mapped,
            patch: AppliedPatch {
                id: bundle.id.clone(),
                bundle_sha256: bundle_sha.to_string(),
                target: bundle.target.path.clone(),
                module: prepared.module.path.clone(),
                applied_unix: now_unix(),
                pause_us: 0,
                regions,
                functions: Vec::new(),
            },
        };
        // A header naming the patch (no functions yet): memory a forked child inherits from
        // here on is attributable, and never taken for a live patch.
        let written = stopped
            .write(
                code,
                &state::header(&journal.patch, link::HEADER_SIZE as usize),
            )
            .map_err(Error::from)
            .and_then(|()| state::write_journal(&options.state_dir, &journal));
        if let Err(e) = written {
            for r in &journal.patch.regions {
                let _ = stopped.syscall(SYS_MUNMAP, [r.address, r.size, 0, 0, 0, 0]);
            }
            return Err(e);
        }
        fault("mapped");
        let pause = stopped.release();
        (code, data, pause.longest)
    };
    let mut regions = vec![Region {
        address: code_base,
        size: layout.code_size,
    }];
    if layout.data_size > 0 {
        regions.push(Region {
            address: data_base,
            size: layout.data_size,
        });
    }
    let result = write_and_redirect(
        &prepared, &layout, code_base, data_base, &regions, bundle_sha, options,
    );
    match result {
        Ok((mut report, second_pause, attempts, threads)) => {
            report.pause = first_pause.max(second_pause);
            report.attempts = attempts;
            report.threads = threads;
            report.realtime = realtime;
            Ok(report)
        }
        Err(e) => {
            unmap(process, &regions, options);
            let _ = state::remove_journal(&options.state_dir, process.pid());
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_and_redirect(
    prepared: &Prepared<'_>,
    layout: &link::Layout,
    code_base: u64,
    data_base: u64,
    regions: &[Region],
    bundle_sha: &str,
    options: &Options,
) -> Result<(ProcessReport, Duration, u32, usize), Error> {
    let bundle = prepared.bundle;
    let process = &prepared.process;
    let pid = process.pid();
    // Link and load while the program runs: nothing uses this memory yet.
    let writes = link::link(&bundle.objects, layout, code_base, data_base, &|o, s| {
        prepared.resolve(o, s)
    })?;
    for w in &writes {
        process.write(w.address, &w.bytes)?;
    }
    fault("loaded");
    let mut report = report_for(prepared);
    let mut redirects = Vec::new();
    for (i, l) in prepared.located.iter().enumerate() {
        let replacement = &bundle.objects[l.object].replacements[l.replacement];
        let new_address =
            link::piece_address(layout, l.object, replacement.piece, code_base, data_base);
        let r = redirect::plan(
            &replacement.name,
            l.entry,
            &replacement.pre_code,
            if l.stacked_on.is_some() {
                u64::MAX
            } else {
                l.live_len
            },
            if l.stacked_on.is_some() {
                &[]
            } else {
                &l.branch_targets
            },
            new_address,
        )?;
        report.functions[i].new_address = new_address;
        redirects.push(r);
    }
    // What the sites hold now: the original code, or an earlier patch's jump.
    let mut expected = Vec::new();
    for r in &redirects {
        let mut now = [0u8; 5];
        process.read(r.site, &mut now)?;
        expected.push(now);
    }
    let mut applied = AppliedPatch {
        id: bundle.id.clone(),
        bundle_sha256: bundle_sha.to_string(),
        target: bundle.target.path.clone(),
        module: prepared.module.path.clone(),
        applied_unix: now_unix(),
        pause_us: 0,
        regions: regions.to_vec(),
        functions: prepared
            .located
            .iter()
            .zip(&redirects)
            .zip(&expected)
            .map(|((l, r), before)| AppliedFunction {
                name: bundle.objects[l.object].replacements[l.replacement]
                    .name
                    .clone(),
                entry: l.entry,
                len: l.live_len,
                site: r.site,
                replaced: hex::encode(before),
                jump: hex::encode(&r.jump),
                new_address: report_new_address(&report, l),
            })
            .collect(),
    };
    process.write(
        code_base,
        &state::header(&applied, link::HEADER_SIZE as usize),
    )?;
    // The jumps about to be written, with the bytes they replace: what `recover` needs to
    // finish or roll back if hotsplice dies while writing them. (Written before the stop, so
    // the pause does no file IO.)
    state::write_journal(
        &options.state_dir,
        &state::Journal {
            pid,
            start_time: prepared.state.start_time,
            operation: state::Operation::Apply,
            phase: state::Phase::Switching,
            patch: applied.clone(),
        },
    )?;

    // Stop 2 (retried while busy): safety check, then the jumps.
    let ranges = ranges(prepared);
    let cfi = Cfi::load(process);
    let mut history: Vec<safety::Busy> = Vec::new();
    for attempt in 1..=options.retries + 1 {
        let maps = process.maps()?;
        let _rt = Realtime::raise();
        let mut stopped = Stopped::stop(process, options.stop_timeout)?;
        let views = thread_views(process, &mut stopped, &cfi, &maps)?;
        if let Some(busy) = safety::check(&views, &ranges) {
            stopped.release();
            history.push(busy);
            if attempt <= options.retries {
                std::thread::sleep(options.retry_delay);
            }
            continue;
        }
        fault("checked");
        // The sites must still hold what was matched.
        for (r, before) in redirects.iter().zip(&expected) {
            let mut now = [0u8; 5];
            stopped.read(r.site, &mut now)?;
            if now != *before {
                return Err(Error::Tampered {
                    pid,
                    address: r.site,
                });
            }
        }
        let mut written = Vec::new();
        let mut failure = None;
        for (r, before) in redirects.iter().zip(&expected) {
            let mut back = [0u8; 5];
            let ok = stopped.write(r.site, &r.jump).is_ok()
                && stopped.read(r.site, &mut back).is_ok()
                && back == r.jump;
            if !ok {
                failure = Some(r.site);
                break;
            }
            written.push((r.site, *before));
            if written.len() == 1 && redirects.len() > 1 {
                fault("between-jumps");
            }
        }
        fault("jumped");
        if let Some(site) = failure {
            for (site, before) in written {
                let _ = stopped.write(site, &before);
            }
            stopped.release();
            return Err(Error::WriteFailed { pid, address: site });
        }
        let pause = stopped.release();
        drop(_rt);
        fault("released");
        applied.pause_us = pause.longest.as_micros() as u64;
        let mut state = prepared.state.clone();
        state.patches.push(applied.clone());
        state::save(&options.state_dir, &state)?;
        state::remove_journal(&options.state_dir, pid)?;
        let _ = process.write(
            code_base,
            &state::header(&applied, link::HEADER_SIZE as usize),
        );
        return Ok((report, pause.longest, attempt, pause.threads));
    }
    Err(busy_error(pid, &history, options.retries + 1))
}

fn report_new_address(report: &ProcessReport, located: &Located) -> u64 {
    report
        .functions
        .iter()
        .find(|f| f.entry == located.entry)
        .map_or(0, |f| f.new_address)
}

fn busy_error(pid: i32, history: &[safety::Busy], attempts: u32) -> Error {
    let last = history.last().expect("at least one attempt");
    let always = history
        .iter()
        .all(|b| b.tid == last.tid && b.function == last.function);
    if always && history.len() > 1 {
        Error::AlwaysBusy {
            pid,
            tid: last.tid,
            function: last.function.clone(),
            attempts,
        }
    } else {
        Error::Busy {
            pid,
            detail: busy_message(last),
            attempts,
        }
    }
}

/// Undoes patch `id` in one process.
pub fn undo_one(id: &str, pid: i32, options: &Options) -> Result<ProcessReport, Error> {
    let process = Process::new(pid)?;
    let start_time = process.start_time()?;
    refuse_if_interrupted(&options.state_dir, pid, start_time)?;
    let mut state = observe(&process, start_time, options)?.state;
    let Some(index) = state.patches.iter().position(|p| p.id == id) else {
        return Err(Error::NotApplied {
            pid,
            id: id.to_string(),
        });
    };
    let patch = state.patches[index].clone();
    if let Some(later) = state.patches[index + 1..].iter().find(|p| {
        p.functions
            .iter()
            .any(|f| patch.functions.iter().any(|g| g.site == f.site))
    }) {
        return Err(Error::DependentPatch {
            pid,
            id: id.to_string(),
            later: later.id.clone(),
        });
    }
    let ranges: Vec<Range> = patch
        .regions
        .iter()
        .map(|r| Range {
            start: r.address,
            end: r.address + r.size,
            name: format!("the code of {id}"),
        })
        .collect();
    let mut history = Vec::new();
    let cfi = Cfi::load(&process);
    let mut journal = state::Journal {
        pid,
        start_time,
        operation: state::Operation::Undo,
        phase: state::Phase::Switching,
        patch: patch.clone(),
    };
    state::write_journal(&options.state_dir, &journal)?;
    for attempt in 1..=options.retries + 1 {
        let maps = process.maps()?;
        let rt = Realtime::raise();
        let realtime = rt.active();
        let mut stopped = Stopped::stop(&process, options.stop_timeout)?;
        let views = thread_views(&process, &mut stopped, &cfi, &maps)?;
        if let Some(busy) = safety::check(&views, &ranges) {
            stopped.release();
            history.push(busy);
            if attempt <= options.retries {
                std::thread::sleep(options.retry_delay);
            }
            continue;
        }
        fault("undo-checked");
        for f in &patch.functions {
            let mut now = [0u8; 5];
            stopped.read(f.site, &mut now)?;
            if hex::encode(&now) != f.jump {
                return Err(Error::Tampered {
                    pid,
                    address: f.site,
                });
            }
        }
        for (k, f) in patch.functions.iter().enumerate() {
            let original = hex::decode(&f.replaced).unwrap_or_default();
            stopped.write(f.site, &original)?;
            let mut back = vec![0u8; original.len()];
            stopped.read(f.site, &mut back)?;
            if back != original {
                return Err(Error::WriteFailed {
                    pid,
                    address: f.site,
                });
            }
            if k == 0 && patch.functions.len() > 1 {
                fault("undo-between");
            }
        }
        fault("undo-restored");
        let first = stopped.release();
        state.patches.remove(index);
        state::save(&options.state_dir, &state)?;
        journal.phase = state::Phase::Restored;
        state::write_journal(&options.state_dir, &journal)?;
        fault("undo-unmap");
        // No jump leads into the patch memory any more and no thread was in it: unmap it in
        // a second, short stop (keeping each pause small).
        let mut stopped = Stopped::stop(&process, options.stop_timeout)?;
        for r in &patch.regions {
            stopped.syscall(SYS_MUNMAP, [r.address, r.size, 0, 0, 0, 0])?;
        }
        let second = stopped.release();
        drop(rt);
        state::remove_journal(&options.state_dir, pid)?;
        let pause = hotsplice_ptrace::Pause {
            longest: first.longest.max(second.longest),
            threads: first.threads.max(second.threads),
        };
        return Ok(ProcessReport {
            pid,
            module: patch.module.clone(),
            patch: id.to_string(),
            functions: patch
                .functions
                .iter()
                .map(|f| FunctionReport {
                    name: f.name.clone(),
                    entry: f.entry,
                    new_address: f.new_address,
                    via: "state record".to_string(),
                    stacked_on: None,
                })
                .collect(),
            pause: pause.longest,
            attempts: attempt,
            threads: pause.threads,
            realtime,
            busy: None,
        });
    }
    state::remove_journal(&options.state_dir, pid)?;
    Err(busy_error(pid, &history, options.retries + 1))
}

/// The patches applied to a process: see [`observe`].
pub fn list_one(pid: i32, options: &Options) -> Result<Observed, Error> {
    let process = Process::new(pid)?;
    let start_time = process.start_time()?;
    observe(&process, start_time, options)
}

/// What is applied to a process, as its code shows it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The record, holding only patches whose jumps are in the code.
    pub state: ProcessState,
    /// Recorded patches whose jumps are not in the code (the program exec'd, or something
    /// else rewrote its code): dropped from the record.
    pub stale: Vec<AppliedPatch>,
    /// Patch memory found in the process that no live jump uses (a child forked while a
    /// patch was being applied to its parent): harmless, never executed.
    pub unused: Vec<AppliedPatch>,
}

/// The patches live in a process: those of its state record, and those described by the
/// headers of patch memory found in it (a child forked from a patched process inherits its
/// patches but has no record) — each kept only if the process's code holds its jumps. A
/// record found stale is rewritten.
fn observe(process: &Process, start_time: u64, options: &Options) -> Result<Observed, Error> {
    let pid = process.pid();
    let recorded = state::load(&options.state_dir, pid, start_time)?;
    let mut in_memory = Vec::new();
    for m in process.maps()? {
        if m.exec && m.inode == 0 && m.path.is_none() {
            let mut head = vec![0u8; link::HEADER_SIZE as usize];
            if process.read(m.start, &mut head).is_ok()
                && let Some(patch) = state::parse_header(&head)
                && !recorded.patches.iter().any(|p| p.id == patch.id)
            {
                in_memory.push(patch);
            }
        }
    }
    in_memory.sort_by_key(|p| p.applied_unix);
    let from_memory: Vec<String> = in_memory.iter().map(|p| p.id.clone()).collect();
    let mut all = in_memory;
    all.extend(recorded.patches.iter().cloned());
    all.sort_by_key(|p| p.applied_unix);

    // The jump each site must hold: the latest patch's.
    let mut top: HashMap<u64, (usize, &str)> = HashMap::new();
    for (i, p) in all.iter().enumerate() {
        for f in &p.functions {
            top.insert(f.site, (i, f.jump.as_str()));
        }
    }
    let mut live = vec![true; all.len()];
    for (i, p) in all.iter().enumerate() {
        if p.functions.is_empty() {
            live[i] = false;
        }
    }
    for (&site, &(i, jump)) in &top {
        let mut now = [0u8; 5];
        if process.read(site, &mut now).is_err() || hex::encode(&now) != jump {
            live[i] = false;
        }
    }
    // A patch whose every site a later patch took over lives while those do.
    for (i, p) in all.iter().enumerate() {
        if p.functions.iter().any(|f| !live[top[&f.site].0]) {
            live[i] = false;
        }
    }
    let mut observed = Observed {
        state: ProcessState {
            pid,
            start_time,
            patches: Vec::new(),
        },
        ..Observed::default()
    };
    for (p, live) in all.into_iter().zip(live) {
        match (live, from_memory.contains(&p.id)) {
            (true, _) => observed.state.patches.push(p),
            (false, true) => observed.unused.push(p),
            (false, false) => observed.stale.push(p),
        }
    }
    if !observed.stale.is_empty() {
        let mut kept = recorded.clone();
        kept.patches
            .retain(|p| !observed.stale.iter().any(|s| s.id == p.id));
        state::save(&options.state_dir, &kept)?;
    }
    Ok(observed)
}

/// Every process running the executable at `path`.
pub fn pids_of_exe(path: &std::path::Path) -> Vec<i32> {
    let want: PathBuf = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == want))
        .collect();
    pids.sort_unstable();
    pids
}

/// What `recover` did for one interrupted operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The process is gone (or is another process with the same pid): the record was dropped.
    ProcessGone,
    /// The operation was rolled back: the process is as before it.
    RolledBack,
    /// The operation was completed.
    Completed,
}

/// Finishes or rolls back the interrupted operation recorded for `pid`, so that the process
/// ends either untouched or fully patched (for an undo: fully unpatched or still patched).
pub fn recover_one(pid: i32, options: &Options) -> Result<(state::Journal, Recovered), Error> {
    let dir = &options.state_dir;
    let Some(journal) = state::read_journal(dir, pid) else {
        return Err(Error::NotInterrupted { pid });
    };
    let Ok(process) = Process::new(pid) else {
        state::remove_journal(dir, pid)?;
        return Ok((journal, Recovered::ProcessGone));
    };
    if process.start_time().ok() != Some(journal.start_time) {
        state::remove_journal(dir, pid)?;
        return Ok((journal, Recovered::ProcessGone));
    }
    let patch = &journal.patch;
    let mut state = state::load(dir, pid, journal.start_time)?;
    let code: Vec<Range> = patch
        .regions
        .iter()
        .map(|r| Range {
            start: r.address,
            end: r.address + r.size,
            name: format!("the code of {}", patch.id),
        })
        .collect();
    let decode = |h: &str| hex::decode(h).unwrap_or_default();
    let cfi = Cfi::load(&process);
    for _attempt in 0..=options.retries {
        let maps = process.maps()?;
        let _rt = Realtime::raise();
        let mut stopped = Stopped::stop(&process, options.stop_timeout)?;
        // Which sites hold the jump, which the original bytes.
        let mut jumped = Vec::new();
        for f in &patch.functions {
            let mut now = vec![0u8; 5];
            stopped.read(f.site, &mut now)?;
            if now == decode(&f.jump) {
                jumped.push(true);
            } else if now == decode(&f.replaced) {
                jumped.push(false);
            } else {
                return Err(Error::Tampered {
                    pid,
                    address: f.site,
                });
            }
        }
        let all = jumped.iter().all(|&j| j);
        let none = jumped.iter().all(|&j| !j);
        let views = thread_views(&process, &mut stopped, &cfi, &maps)?;
        let old_code: Vec<Range> = patch
            .functions
            .iter()
            .zip(&jumped)
            .filter(|&(_, &j)| !j)
            .map(|(f, _)| Range {
                start: f.entry,
                end: f.entry + f.len.max(5),
                name: f.name.clone(),
            })
            .collect();
        let write_all = |stopped: &mut Stopped, jumps: bool| -> Result<(), Error> {
            for f in &patch.functions {
                let bytes = decode(if jumps { &f.jump } else { &f.replaced });
                stopped.write(f.site, &bytes)?;
                let mut back = vec![0u8; bytes.len()];
                stopped.read(f.site, &mut back)?;
                if back != bytes {
                    return Err(Error::WriteFailed {
                        pid,
                        address: f.site,
                    });
                }
            }
            Ok(())
        };
        // Prefer the original code when that is safe (no jump leads into the patch memory, or
        // no thread is in it): that rolls back an apply and completes an undo. Otherwise write
        // every jump when no thread is in the old code still reachable.
        let originals_safe = none || safety::check(&views, &code).is_none();
        let jumps_safe = all || safety::check(&views, &old_code).is_none();
        let patched = if originals_safe {
            write_all(&mut stopped, false)?;
            false
        } else if jumps_safe {
            write_all(&mut stopped, true)?;
            true
        } else {
            stopped.release();
            std::thread::sleep(options.retry_delay);
            continue;
        };
        // For an undo, "before" is the patched state: `patched` says where we are now.
        let outcome = match (journal.operation, patched) {
            (state::Operation::Apply, true) | (state::Operation::Undo, false) => {
                Recovered::Completed
            }
            _ => Recovered::RolledBack,
        };
        if !patched {
            for r in &patch.regions {
                let _ = stopped.syscall(SYS_MUNMAP, [r.address, r.size, 0, 0, 0, 0]);
            }
        }
        stopped.release();
        state.patches.retain(|p| p.id != patch.id);
        if patched {
            state.patches.push(patch.clone());
        }
        state::save(dir, &state)?;
        state::remove_journal(dir, pid)?;
        return Ok((journal, outcome));
    }
    Err(Error::Busy {
        pid,
        detail: format!(
            "threads keep running in both the old and the new code of {}; the journal is kept, run recover again",
            patch.id
        ),
        attempts: options.retries + 1,
    })
}
