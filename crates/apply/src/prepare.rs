//! Everything about one process that can be known before anything is written to it: the
//! patched file, where every replaced function is (run-pre matching: its running code proven
//! equal to the bundle's pre-build code), which earlier patches it stacks on, and the symbol
//! addresses the running code teaches.

use std::collections::HashMap;

use hotsplice_bundle::{Bundle, PreTarget};
use hotsplice_matcher::{
    Found, Learned, Memory, PreCode, PreReloc, Via, Wanted, locate, match_function,
};
use hotsplice_ptrace::Process;

use crate::Error;
use crate::mapped::MappedFile;
use crate::state::{AppliedSymbol, ProcessState};

/// Process memory as it was before any hotsplice patch: the bytes that active patches
/// replaced are shown instead of their jumps.
pub struct LiveMemory<'p> {
    /// The process.
    pub process: &'p Process,
    /// (site, original bytes) of active patches.
    pub overlay: Vec<(u64, Vec<u8>)>,
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

/// Original bytes of the sites of active patches (bottom layer wins).
pub fn overlay(state: &ProcessState) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for patch in &state.patches {
        for f in &patch.functions {
            if !out.iter().any(|(s, _)| *s == f.site) {
                out.push((f.site, f.replaced.0.to_vec()));
            }
        }
    }
    out
}

/// A replacement located in the process.
#[derive(Debug, Clone)]
pub struct Located {
    /// Index of the bundle object.
    pub object: usize,
    /// Index of the replacement in it.
    pub replacement: usize,
    /// Entry of the original function (where the jump goes).
    pub entry: u64,
    /// The code currently live for the function (the original, or an earlier patch's
    /// version): it must be idle when the jump is written.
    pub live_start: u64,
    pub live_len: u64,
    /// Offsets of branch targets inside the function.
    pub branch_targets: Vec<u64>,
    /// How it was found.
    pub via: Via,
    /// The earlier patch whose version this one replaces.
    pub stacked_on: Option<String>,
}

/// A symbol as the patch names it: locals qualified by their object.
pub type SymbolKey = (Option<usize>, String);

/// Everything known about one process before anything is written.
pub struct Prepared<'b> {
    /// The bundle.
    pub bundle: &'b Bundle,
    /// The patched file.
    pub module: MappedFile,
    /// Every replaced function, located.
    pub located: Vec<Located>,
    /// Symbol addresses learnt from the running code.
    pub learned: HashMap<SymbolKey, Learned>,
    /// What the patches already applied to the same file define, in the order they were
    /// applied: (patch id, symbol).
    pub earlier: Vec<(String, AppliedSymbol)>,
}

/// The matcher's form of a bundle's pre-build relocations.
fn pre_relocs(relocs: &[hotsplice_bundle::PreReloc]) -> Vec<PreReloc> {
    relocs
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

/// Locates every replaced function of `bundle` in the process (its code proven equal to the
/// pre build), relative to what `state` says is applied already.
pub fn prepare<'b>(
    bundle: &'b Bundle,
    process: &Process,
    module: MappedFile,
    state: &ProcessState,
) -> Result<Prepared<'b>, Error> {
    let pid = process.pid();
    let memory = LiveMemory {
        process,
        overlay: overlay(state),
    };
    let mut located = Vec::new();
    let mut learned: HashMap<SymbolKey, Learned> = HashMap::new();
    let relocs: Vec<Vec<Vec<PreReloc>>> = bundle
        .objects
        .iter()
        .map(|object| {
            object
                .replacements
                .iter()
                .map(|r| pre_relocs(&r.pre_relocs))
                .collect()
        })
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
                            process,
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
                    // Memory that cannot be read any more: the process exited or exec'd.
                    process.check_same()?;
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
                    process.check_same()?;
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
                    process,
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
    let earlier = state
        .patches
        .iter()
        .filter(|p| p.module == module.path)
        .flat_map(|p| p.symbols.iter().map(|s| (p.id.clone(), s.clone())))
        .collect();
    Ok(Prepared {
        bundle,
        module,
        located,
        learned,
        earlier,
    })
}

/// Where a patch already applied to the file defines `name` (the latest such patch,
/// preferring a definition from the same source file).
pub fn earlier_definition(
    earlier: &[(String, AppliedSymbol)],
    source_file: Option<&str>,
    name: &str,
) -> Option<u64> {
    let mut named = earlier.iter().rev().filter(|(_, s)| s.name == name);
    let first = named.clone().next()?;
    Some(
        named
            .find(|(_, s)| s.source_file.as_deref() == source_file)
            .unwrap_or(first)
            .1
            .address,
    )
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

/// When the process runs another build than the bundle's own (its build-id differs, or one of
/// them has none), proves every function the new code uses — not only those it replaces — by
/// run-pre matching: a function of the same name with another signature would otherwise be
/// called with the wrong arguments. Their proven addresses are then what the new code is
/// linked against.
pub fn prove_referenced(
    prepared: &mut Prepared<'_>,
    process: &Process,
    state: &ProcessState,
) -> Result<(), Error> {
    let bundle = prepared.bundle;
    let running = prepared
        .module
        .image
        .build_id
        .as_ref()
        .map(|b| hotsplice_bundle::hex::encode(b));
    if running.is_some() && running == bundle.target.build_id {
        return Ok(());
    }
    let pid = process.pid();
    let memory = LiveMemory {
        process,
        overlay: overlay(state),
    };
    for (o, object) in bundle.objects.iter().enumerate() {
        let relocs: Vec<Vec<PreReloc>> = object
            .referenced
            .iter()
            .map(|r| pre_relocs(&r.pre_relocs))
            .collect();
        let wanted: Vec<Wanted<'_>> = object
            .referenced
            .iter()
            .zip(&relocs)
            .map(|(r, relocs)| Wanted {
                name: &r.name,
                local: r.local,
                source_file: object.source_file.as_deref(),
                pre: PreCode {
                    code: &r.pre_code,
                    relocs,
                },
            })
            .collect();
        let found = locate(
            &prepared.module.image,
            prepared.module.bias,
            &wanted,
            &memory,
        );
        for ((r, outcome), r_relocs) in object.referenced.iter().zip(found).zip(&relocs) {
            let unproven = |detail: String| Error::Unproven {
                pid,
                function: r.name.clone(),
                running: running.clone().unwrap_or_else(|| "none".into()),
                built: bundle
                    .target
                    .build_id
                    .clone()
                    .unwrap_or_else(|| "none".into()),
                detail,
            };
            // Its code at an address is the code the bundle was built against.
            let proven_at = |address: u64| {
                let pre = PreCode {
                    code: &r.pre_code,
                    relocs: r_relocs,
                };
                match_function(pre, address, r.pre_code.len() as u64, &memory)
            };
            match outcome {
                Found::Located { matched, .. } => {
                    prepared.learned.insert(
                        (r.local.then_some(o), r.name.clone()),
                        Learned::Address(matched.address),
                    );
                }
                // New in a patch applied earlier (the bundle was built on top of it); else, not
                // found by name or by its code (a stripped file whose symbol table does not
                // have it, a function hidden in a library), where the replaced functions call
                // it — in either case only if its code there is the code the bundle was built
                // against.
                Found::NotFound { .. }
                    if let Some(address) = earlier_definition(
                        &prepared.earlier,
                        object.source_file.as_deref(),
                        &r.name,
                    )
                    .filter(|&a| proven_at(a).is_ok())
                    .or_else(|| {
                        [Some(o), None]
                            .into_iter()
                            .find_map(|scope| {
                                match prepared.learned.get(&(scope, r.name.clone())) {
                                    Some(Learned::Address(a)) => Some(*a),
                                    _ => None,
                                }
                            })
                            .filter(|&a| proven_at(a).is_ok())
                    }) =>
                {
                    prepared.learned.insert(
                        (r.local.then_some(o), r.name.clone()),
                        Learned::Address(address),
                    );
                }
                Found::NotFound { mismatch, .. } => {
                    process.check_same()?;
                    return Err(unproven(match mismatch {
                        Some(m) => format!("its running code differs from the one the bundle was built against {m}"),
                        None => "no function of the running program matches the code the bundle was built against".into(),
                    }));
                }
                Found::Ambiguous { addresses } => {
                    // Several copies of the same code (nginx's scgi and uwsgi header parsers
                    // in a stripped binary): keep those at the address the replaced
                    // functions call, and whose relocation fields agree with what they
                    // taught; copies that teach the same addresses are interchangeable.
                    let agreeing: Vec<(u64, Vec<(String, Learned)>)> = addresses
                        .iter()
                        .filter_map(|&address| {
                            let matched = proven_at(address).ok()?;
                            let lessons: Vec<(String, Learned)> = matched
                                .learned
                                .into_iter()
                                .map(|l| (l.symbol, l.value))
                                .collect();
                            let agrees = lessons.iter().all(|(symbol, value)| {
                                [Some(o), None].into_iter().all(|scope| {
                                    prepared
                                        .learned
                                        .get(&(scope, symbol.clone()))
                                        .is_none_or(|known| known == value)
                                })
                            });
                            // Where the replaced functions call it, if they do.
                            let here = [Some(o), None].into_iter().all(|scope| {
                                prepared
                                    .learned
                                    .get(&(scope, r.name.clone()))
                                    .is_none_or(|known| *known == Learned::Address(address))
                            });
                            (agrees && here).then_some((address, lessons))
                        })
                        .collect();
                    let interchangeable = agreeing.windows(2).all(|pair| {
                        pair[0].1.len() == pair[1].1.len()
                            && pair[0].1.iter().all(|l| pair[1].1.contains(l))
                    });
                    match agreeing.first() {
                        Some(&(address, _)) if interchangeable => {
                            prepared.learned.insert(
                                (r.local.then_some(o), r.name.clone()),
                                Learned::Address(address),
                            );
                        }
                        _ => {
                            return Err(unproven(format!(
                                "its code matches at {} places, and nothing tells them apart",
                                addresses.len()
                            )));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
