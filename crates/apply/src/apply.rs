//! `apply`: every address space is prepared first (nothing written), then patched in turn; if
//! one fails, those already patched are undone — all or none.
//!
//! Per address space: the patch memory is mapped by one thread while the others run (or, in a
//! single-threaded target, inside the one stop), the new code is linked and loaded while the
//! program runs, and one [`switch`] writes the jumps. The journal is written before and after
//! stops, never during one.

use std::time::{SystemTime, UNIX_EPOCH};

use hotsplice_bundle::{Bundle, HookKind, hex};
use hotsplice_matcher::Via;
use hotsplice_ptrace::{
    AddressSpace, Mapping, PROT_EXEC, PROT_READ, PROT_WRITE, Realtime, Stopped,
};

use crate::hooks::{self, HookRun};
use crate::link::{self, Layout, Resolved};
use crate::mapped::{Cfi, Files, MappedFile};
use crate::observe::observe;
use crate::prepare::{Prepared, prepare, prove_referenced};
use crate::redirect::{self, Redirect};
use crate::resolve::{Lookup, Resolver};
use crate::safety::{self, Range};
use crate::state::{
    self, AppliedFrames, AppliedFunction, AppliedHook, AppliedPatch, AppliedSymbol, Code5, Journal,
    Operation, Phase, ProcessState, Region, StateDir, Transaction,
};
use crate::switch::{self, Decision, PauseLog, Proceed, SiteWrite, Stage};
use crate::{Error, FunctionReport, HookReport, Options, ProcessReport, faults, target, undo};

/// Everything known about one address space before anything is written to it.
pub struct Plan<'b> {
    /// What was found in it.
    pub prepared: Prepared<'b>,
    /// Its memory map when prepared.
    pub maps: Vec<Mapping>,
    /// Its record.
    pub state: ProcessState,
    /// The other files it maps (libraries the new code may use).
    pub others: Vec<MappedFile>,
    /// The call-frame information of every mapped file.
    pub cfi: Cfi,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Refuses a bundle that is not a patch, or that replaces one function twice.
pub fn check_bundle(bundle: &Bundle) -> Result<(), Error> {
    if !bundle.refusals.is_empty() {
        return Err(Error::Refused {
            reasons: bundle
                .refusals
                .iter()
                .map(|r| format!("{} {}: {}", r.kind, r.symbol, r.detail))
                .collect(),
        });
    }
    let mut seen: Vec<(&str, &str, bool, Option<&str>)> = Vec::new();
    for object in &bundle.objects {
        for r in &object.replacements {
            let file = object.source_file.as_deref();
            if let Some(&(_, first, _, _)) = seen
                .iter()
                .find(|(name, _, local, f)| *name == r.name && (!r.local || !*local || *f == file))
            {
                return Err(Error::Duplicate {
                    function: r.name.clone(),
                    first: first.to_string(),
                    second: object.object.clone(),
                });
            }
            seen.push((&r.name, &object.object, r.local, file));
        }
    }
    Ok(())
}

/// Prepares one address space: refuses an interrupted or repeated operation, locates every
/// function and resolves every symbol, writing nothing.
pub fn plan<'b>(
    bundle: &'b Bundle,
    space: &AddressSpace,
    dir: &StateDir,
) -> Result<Plan<'b>, Error> {
    let process = space.primary();
    let pid = process.pid();
    let start_time = process.start_time()?;
    dir.refuse_if_interrupted(pid, start_time)?;
    let state = observe(process, start_time, dir, true)?.state;
    if state.patches.iter().any(|p| p.id == bundle.id) {
        return Err(Error::AlreadyApplied {
            pid,
            id: bundle.id.clone(),
        });
    }
    let maps = process.maps()?;
    let mut files = Files::load(process, &maps);
    let cfi = files.cfi().with_patches(&state.patches);
    let module = files.take_target(process, bundle)?;
    let others = files.into_files();
    let mut prepared = prepare(bundle, process, module, &state)?;
    prove_referenced(&mut prepared, process, &state)?;
    Resolver::new(&prepared, process, &others).resolve_all()?;
    Ok(Plan {
        prepared,
        maps,
        state,
        others,
        cfi,
    })
}

/// `hotsplice apply` over several processes.
pub fn apply(
    bundle: &Bundle,
    bundle_sha: &str,
    pids: &[i32],
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<Vec<ProcessReport>, Error> {
    check_bundle(bundle)?;
    let dir = StateDir::open(&options.state_dir)?;
    let mut spaces = target::open(pids)?;
    let _lock = target::lock(&dir, &spaces, options)?;
    let mut plans = Vec::new();
    for space in &spaces {
        plans.push(plan(bundle, space, &dir)?);
    }
    let mut done: Vec<ProcessReport> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let result = switch::interrupted().and_then(|()| {
            apply_one(
                bundle,
                bundle_sha,
                &mut spaces[i],
                plan,
                &dir,
                options,
                pauses,
            )
        });
        match result {
            Ok(report) => done.push(report),
            Err(e) => {
                for (j, report) in done.iter().enumerate().rev() {
                    let _ = undo::undo_locked(&dir, &mut spaces[j], &report.patch, options, pauses);
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Where patch memory may go: page-aligned addresses within reach of the patched file,
/// below it first, that are free in `maps`.
fn hints(start: u64, end: u64, size: u64, maps: &[Mapping]) -> Vec<u64> {
    let below = start.saturating_sub(size + (2 << 20)) & !0xfff;
    let mut hints = Vec::new();
    for k in 0..16u64 {
        hints.push(below.saturating_sub(k * (64 << 20)));
    }
    for k in 0..16u64 {
        hints.push((end + (2 << 20) + k * (64 << 20)) & !0xfff);
    }
    hints
        .into_iter()
        .filter(|&h| h >= 1 << 16)
        .filter(|&h| !maps.iter().any(|m| m.start < h + size && h < m.end))
        .collect()
}

/// What the indirect functions' resolvers returned: (name, implementation).
type Resolvers = Vec<(String, u64)>;

/// What the single-stop path puts into the memory inside the stop.
struct Load {
    code: Region,
    data: Option<Region>,
    writes: Vec<link::Write>,
    header: Vec<u8>,
    tag: Vec<u8>,
}

fn map_region(stopped: &mut Stopped, region: &Region, prot: u64) -> Result<bool, Error> {
    // The memory must be unmappable again (undo, or a failure): the target's seccomp filters
    // must allow that too.
    stopped.check_syscall(
        nix::libc::SYS_munmap,
        [region.address, region.size, 0, 0, 0, 0],
    )?;
    match stopped.mmap(region.address, region.size, prot) {
        Ok(address) if address == region.address => Ok(true),
        Ok(address) => {
            // An old kernel took the hint as a hint: not where we need it.
            let _ = stopped.munmap(address, region.size);
            Ok(false)
        }
        Err(hotsplice_ptrace::Error::RemoteSyscall { errno, .. })
            if errno == nix::libc::EEXIST || errno == nix::libc::ENOMEM =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Inside a stop: maps and fills the memory of the single-stop path. `Replan` when an
/// address was taken meanwhile.
fn map_and_load(stopped: &mut Stopped, load: &Load) -> Result<Proceed, Error> {
    if !map_region(stopped, &load.code, PROT_READ | PROT_EXEC)? {
        return Ok(Proceed::Replan);
    }
    if let Some(data) = &load.data
        && !map_region(stopped, data, PROT_READ | PROT_WRITE)?
    {
        let _ = stopped.munmap(load.code.address, load.code.size);
        return Ok(Proceed::Replan);
    }
    faults::point("mapped");
    let filled = (|| {
        stopped.write(load.code.address, &load.header)?;
        if let Some(data) = &load.data {
            stopped.write(data.address, &load.tag)?;
        }
        for w in &load.writes {
            stopped.write(w.address, &w.bytes)?;
        }
        Ok::<(), hotsplice_ptrace::Error>(())
    })();
    if let Err(e) = filled {
        let _ = stopped.munmap(load.code.address, load.code.size);
        if let Some(data) = &load.data {
            let _ = stopped.munmap(data.address, data.size);
        }
        return Err(e.into());
    }
    faults::point("loaded");
    Ok(Proceed::Yes)
}

/// One stop of one thread: maps patch memory at the first free hint and runs the indirect
/// functions' resolvers. Returns the regions and the resolvers' answers.
fn map_alone(
    space: &AddressSpace,
    layout: &Layout,
    id: &str,
    code_hints: &[u64],
    ifuncs: &[(String, u64)],
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<(Vec<Region>, Resolvers), Error> {
    let pid = space.primary().pid();
    let rt = Realtime::raise();
    let mut stopped = Stopped::stop_one(space, options.stop_timeout)?;
    faults::point("attached");
    let result = (|| {
        let mut regions = Vec::new();
        for &hint in code_hints {
            let code = Region {
                address: hint,
                size: layout.code_size,
            };
            if map_region(&mut stopped, &code, PROT_READ | PROT_EXEC)? {
                regions.push(code);
                break;
            }
        }
        let Some(code) = regions.first().cloned() else {
            return Err(Error::NoPlacement {
                pid,
                size: layout.code_size,
            });
        };
        if layout.data_size > 0 {
            let maps = space.primary().maps()?;
            let data_hints = hints(code.address, code.end(), layout.data_size, &maps);
            for hint in data_hints {
                let data = Region {
                    address: hint,
                    size: layout.data_size,
                };
                if map_region(&mut stopped, &data, PROT_READ | PROT_WRITE)? {
                    regions.push(data);
                    break;
                }
            }
            if regions.len() < 2 {
                let _ = stopped.munmap(code.address, code.size);
                return Err(Error::NoPlacement {
                    pid,
                    size: layout.data_size,
                });
            }
        }
        let skeleton = skeleton(id, &regions);
        let tagged = (|| {
            stopped.write(
                code.address,
                &state::header(&skeleton, link::HEADER_SIZE as usize - 1),
            )?;
            if let Some(data) = regions.get(1) {
                stopped.write(data.address, &state::data_tag(id))?;
            }
            Ok::<(), Error>(())
        })();
        // Indirect functions (glibc's string functions): run their resolvers in the target,
        // returning to an `int3` at the end of the header page.
        let called = tagged.and_then(|()| {
            let mut answers = Vec::new();
            if !ifuncs.is_empty() {
                let trap = code.address + link::HEADER_SIZE - 1;
                stopped.write(trap, &[0xcc])?;
                for (name, resolver) in ifuncs {
                    answers.push((name.clone(), stopped.call(*resolver, trap)?));
                }
            }
            Ok(answers)
        });
        match called {
            Ok(answers) => Ok((regions, answers)),
            Err(e) => {
                for r in &regions {
                    let _ = stopped.munmap(r.address, r.size);
                }
                Err(e)
            }
        }
    })();
    pauses.add(stopped.release(), rt);
    result
}

fn skeleton(id: &str, regions: &[Region]) -> AppliedPatch {
    AppliedPatch {
        id: id.to_string(),
        bundle_sha256: String::new(),
        target: String::new(),
        module: String::new(),
        applied_unix: now_unix(),
        pause_us: 0,
        regions: regions.to_vec(),
        functions: Vec::new(),
        hooks: Vec::new(),
        runtime: None,
        symbols: Vec::new(),
        uses: Vec::new(),
        frames: Vec::new(),
    }
}

/// Unmaps patch memory after a failed apply (one thread stopped), if it is mapped.
pub fn discard(
    space: &AddressSpace,
    regions: &[Region],
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<(), Error> {
    let maps = space.primary().maps()?;
    let present: Vec<&Region> = regions
        .iter()
        .filter(|r| {
            maps.iter()
                .any(|m| m.start == r.address && m.end == r.end() && m.inode == 0)
        })
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let rt = Realtime::raise();
    let mut stopped = Stopped::stop_one(space, options.stop_timeout)?;
    let mut result = Ok(());
    for r in present {
        if let Err(e) = stopped.munmap(r.address, r.size) {
            result = Err(e.into());
        }
    }
    pauses.add(stopped.release(), rt);
    result
}

/// The ranges that must be idle when the jumps go in: the code currently live for each
/// replaced function.
pub fn idle_ranges(prepared: &Prepared<'_>) -> Vec<Range> {
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

/// The report's list of functions.
pub fn function_reports(prepared: &Prepared<'_>) -> Vec<FunctionReport> {
    prepared
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
        .collect()
}

/// Whether the process runs the bundle's own build.
pub fn same_build(prepared: &Prepared<'_>) -> Option<bool> {
    let want = prepared.bundle.target.build_id.as_ref()?;
    Some(
        prepared
            .module
            .image
            .build_id
            .as_ref()
            .is_some_and(|have| hex::encode(have) == *want),
    )
}

/// The linked new code for memory at `code`/`data`, and the jumps to it.
struct Linked {
    writes: Vec<link::Write>,
    redirects: Vec<Redirect>,
    applied: AppliedPatch,
}

#[allow(clippy::too_many_arguments)]
fn link_at(
    bundle: &Bundle,
    bundle_sha: &str,
    plan: &Plan<'_>,
    resolver: &Resolver<'_, '_>,
    layout: &Layout,
    regions: &[Region],
    expected: &[[u8; 5]],
    pid: i32,
) -> Result<Linked, Error> {
    let prepared = &plan.prepared;
    let code = regions[0].address;
    let data = regions.get(1).map_or(0, |r| r.address);
    let mut writes = link::link(pid, &bundle.objects, layout, code, data, &|o, s| {
        resolver.resolve(o, s)
    })?;
    if bundle.objects.iter().any(|o| !o.hooks.is_empty()) {
        // Hooks return to an `int3` at the end of the header page.
        writes.push(link::Write {
            address: code + link::HEADER_SIZE - 1,
            bytes: vec![0xcc],
        });
    }
    let mut redirects = Vec::new();
    let mut functions = Vec::new();
    let hooks = bundle
        .objects
        .iter()
        .enumerate()
        .flat_map(|(o, object)| {
            object.hooks.iter().map(move |h| AppliedHook {
                kind: h.kind,
                address: link::piece_address(layout, o, h.piece, code, data),
            })
        })
        .collect();
    for (l, before) in prepared.located.iter().zip(expected) {
        let replacement = &bundle.objects[l.object].replacements[l.replacement];
        let new_address = link::piece_address(layout, l.object, replacement.piece, code, data);
        let stacked = l.stacked_on.is_some();
        let r = redirect::plan(
            &replacement.name,
            l.entry,
            &replacement.pre_code,
            if stacked { u64::MAX } else { l.live_len },
            if stacked { &[] } else { &l.branch_targets },
            new_address,
        )?;
        functions.push(AppliedFunction {
            name: replacement.name.clone(),
            entry: l.entry,
            len: l.live_len,
            site: r.site,
            replaced: Code5(*before),
            jump: Code5(r.jump),
            new_address,
        });
        redirects.push(r);
    }
    // Every piece with the object it is of and its address in patch memory.
    let placed = || {
        bundle.objects.iter().enumerate().flat_map(|(o, object)| {
            object.pieces.iter().enumerate().map(move |(p, piece)| {
                (object, piece, link::piece_address(layout, o, p, code, data))
            })
        })
    };
    Ok(Linked {
        writes,
        redirects,
        applied: AppliedPatch {
            id: bundle.id.clone(),
            bundle_sha256: bundle_sha.to_string(),
            target: bundle.target.path.clone(),
            module: prepared.module.path.clone(),
            applied_unix: now_unix(),
            pause_us: 0,
            regions: regions.to_vec(),
            functions,
            hooks,
            runtime: layout.runtime.map(|offset| data + offset),
            symbols: placed()
                .filter_map(|(object, piece, address)| {
                    Some(AppliedSymbol {
                        name: piece.symbol.clone()?,
                        source_file: object.source_file.clone(),
                        address,
                    })
                })
                .collect(),
            uses: resolver.earlier_used(),
            frames: placed()
                .filter(|(_, piece, _)| !piece.frames.is_empty())
                .map(|(_, piece, address)| AppliedFrames {
                    address,
                    size: piece.size,
                    rows: piece.frames.clone(),
                })
                .collect(),
        },
    })
}

/// Applies to one address space.
fn apply_one(
    bundle: &Bundle,
    bundle_sha: &str,
    space: &mut AddressSpace,
    plan: &Plan<'_>,
    dir: &StateDir,
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<ProcessReport, Error> {
    let process = space.primary().clone();
    let pid = process.pid();
    let prepared = &plan.prepared;
    let mut mine = PauseLog::new();
    let mut resolver = Resolver::new(prepared, &process, &plan.others);
    let layout = link::plan(&bundle.objects, &|o, s| match resolver.lookup(o, s) {
        Some(Lookup::Found(Resolved::Address(a)) | Lookup::Ifunc(a)) => resolver.far(a),
        _ => false,
    });
    let ifuncs = resolver.ifuncs_needed();
    let maps = process.maps()?;
    let code_hints = hints(
        prepared.module.start,
        prepared.module.end,
        layout.code_size,
        &maps,
    );
    // What each site holds now: the original code, or an earlier patch's jump (checked).
    let mut expected = Vec::new();
    for l in &prepared.located {
        let replacement = &bundle.objects[l.object].replacements[l.replacement];
        let site = l.entry
            + if replacement.pre_code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
                4
            } else {
                0
            };
        let mut now = [0u8; 5];
        process.read(site, &mut now)?;
        expected.push(now);
    }
    let ranges = idle_ranges(prepared);
    let cfi = &plan.cfi;
    let single = target::thread_count(space) == 1 && ifuncs.is_empty();
    let candidates: Vec<Region> = code_hints
        .iter()
        .map(|&a| Region {
            address: a,
            size: layout.code_size,
        })
        .collect();
    let mut txn = Transaction::begin(
        dir,
        Journal {
            pid,
            start_time: plan.state.start_time,
            sharers: space.pids()[1..].to_vec(),
            operation: Operation::Apply,
            phase: Phase::Mapped,
            candidates: candidates.clone(),
            patch: skeleton(&bundle.id, &[]),
        },
    )?;
    let outcome = if single {
        apply_in_one_stop(
            bundle,
            bundle_sha,
            space,
            plan,
            &resolver,
            &layout,
            &expected,
            &ranges,
            cfi,
            &code_hints,
            &mut txn,
            options,
            &mut mine,
        )
    } else {
        apply_in_two(
            bundle,
            bundle_sha,
            space,
            plan,
            &mut resolver,
            &layout,
            &ifuncs,
            &expected,
            &ranges,
            cfi,
            &code_hints,
            &mut txn,
            options,
            &mut mine,
        )
    };
    pauses.merge(&mine);
    let Done {
        mut applied,
        attempts,
        threads,
        hooks: runs,
        warnings,
    } = match outcome {
        Ok(done) => done,
        Err(e) => {
            // Nothing jumps into the memory: unmap it. If that fails the journal stays, and
            // `recover` (or the next operation's refusal) says so.
            let regions = txn.journal().patch.regions.clone();
            if discard(space, &regions, options, pauses).is_ok() {
                txn.abort()?;
            }
            return Err(e);
        }
    };
    applied.pause_us = mine.longest().as_micros() as u64;
    let mut state = plan.state.clone();
    state.patches.push(applied.clone());
    target::save(dir, space, &state)?;
    txn.commit()?;
    let _ = process.write(
        applied.regions[0].address,
        &state::header(&applied, link::HEADER_SIZE as usize - 1),
    );
    let mut functions = function_reports(prepared);
    for (f, a) in functions.iter_mut().zip(&applied.functions) {
        f.new_address = a.new_address;
    }
    Ok(ProcessReport {
        pid,
        sharers: space.pids()[1..].to_vec(),
        module: prepared.module.path.clone(),
        patch: bundle.id.clone(),
        functions,
        pause: mine.longest(),
        stops: mine.stops,
        per_thread: mine.per_thread(),
        windows: mine.windows.clone(),
        attempts,
        threads,
        realtime: mine.realtime,
        same_build: same_build(prepared),
        prediction: None,
        hooks: runs.iter().map(HookReport::from).collect(),
        warnings,
        shadows: None,
    })
}

fn site_writes(linked: &Linked, expected: &[[u8; 5]]) -> Vec<SiteWrite> {
    linked
        .redirects
        .iter()
        .zip(expected)
        .map(|(r, e)| SiteWrite {
            site: r.site,
            expect: *e,
            write: r.jump,
        })
        .collect()
}

fn decide_idle<'r>(
    ranges: &'r [Range],
    writes: Vec<SiteWrite>,
) -> impl FnMut(&[safety::ThreadView]) -> Decision + 'r {
    move |views| match safety::check(views, ranges) {
        Some(busy) => Decision::Busy(busy),
        None => Decision::Write(writes.clone()),
    }
}

/// What applying to one address space did.
struct Done {
    applied: AppliedPatch,
    attempts: u32,
    threads: usize,
    hooks: Vec<HookRun>,
    warnings: Vec<String>,
}

/// Journals the jumps about to be written (before the stop), then switches.
#[allow(clippy::too_many_arguments)]
fn journal_and_switch(
    txn: &mut Transaction<'_>,
    linked: &Linked,
    space: &mut AddressSpace,
    cfi: &Cfi,
    options: &Options,
    pauses: &mut PauseLog,
    ranges: &[Range],
    expected: &[[u8; 5]],
    hook: &mut dyn FnMut(&mut Stopped, Stage) -> Result<Proceed, Error>,
) -> Result<switch::Switched, Error> {
    txn.advance(|j| {
        j.phase = Phase::Switching;
        j.patch = linked.applied.clone();
    })?;
    switch::switch(
        space,
        cfi,
        options,
        pauses,
        &mut decide_idle(ranges, site_writes(linked, expected)),
        hook,
    )
}

/// A single-threaded target: everything happens in one stop — map at an address chosen from
/// the memory map, load the code linked for it beforehand, check, jump.
#[allow(clippy::too_many_arguments)]
fn apply_in_one_stop(
    bundle: &Bundle,
    bundle_sha: &str,
    space: &mut AddressSpace,
    plan: &Plan<'_>,
    resolver: &Resolver<'_, '_>,
    layout: &Layout,
    expected: &[[u8; 5]],
    ranges: &[Range],
    cfi: &Cfi,
    code_hints: &[u64],
    txn: &mut Transaction<'_>,
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<Done, Error> {
    let pid = space.primary().pid();
    let mut attempts = 0;
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    for &code_at in code_hints {
        let code = Region {
            address: code_at,
            size: layout.code_size,
        };
        let data = (layout.data_size > 0).then(|| {
            let maps: Vec<Mapping> = plan.maps.clone();
            let free = hints(code.address, code.end(), layout.data_size, &maps);
            free.into_iter()
                .find(|&h| h + layout.data_size <= code.address || h >= code.end())
                .map(|address| Region {
                    address,
                    size: layout.data_size,
                })
        });
        let data = match data {
            Some(None) => {
                return Err(Error::NoPlacement {
                    pid,
                    size: layout.data_size,
                });
            }
            Some(Some(d)) => Some(d),
            None => None,
        };
        let mut regions = vec![code.clone()];
        regions.extend(data.clone());
        let linked = link_at(
            bundle, bundle_sha, plan, resolver, layout, &regions, expected, pid,
        )?;
        let load = Load {
            code: code.clone(),
            data: data.clone(),
            writes: linked.writes.clone(),
            header: state::header(&linked.applied, link::HEADER_SIZE as usize - 1),
            tag: state::data_tag(&bundle.id),
        };
        let switched = journal_and_switch(
            txn,
            &linked,
            space,
            cfi,
            options,
            pauses,
            ranges,
            expected,
            &mut |stopped, stage| match stage {
                Stage::BeforeWrites => match map_and_load(stopped, &load)? {
                    Proceed::Yes => {
                        hooks::run(stopped, &linked.applied, HookKind::PreApply, &mut runs)?;
                        Ok(Proceed::Yes)
                    }
                    replan => Ok(replan),
                },
                Stage::AfterWrites => {
                    hooks::run_post(
                        stopped,
                        &linked.applied,
                        HookKind::PostApply,
                        &mut runs,
                        &mut warnings,
                    );
                    Ok(Proceed::Yes)
                }
            },
        )?;
        attempts += switched.attempts;
        if switched.written.is_empty() {
            // The address was taken meanwhile: plan again at the next one.
            txn.advance(|j| j.patch.regions.clear())?;
            continue;
        }
        return Ok(Done {
            applied: linked.applied,
            attempts,
            threads: switched.threads,
            hooks: runs,
            warnings,
        });
    }
    Err(Error::NoPlacement {
        pid,
        size: layout.code_size,
    })
}

/// A multi-threaded target: one thread maps the memory (the others run), the code is loaded
/// while all run, and one stop of every thread writes the jumps.
#[allow(clippy::too_many_arguments)]
fn apply_in_two(
    bundle: &Bundle,
    bundle_sha: &str,
    space: &mut AddressSpace,
    plan: &Plan<'_>,
    resolver: &mut Resolver<'_, '_>,
    layout: &Layout,
    ifuncs: &[(String, u64)],
    expected: &[[u8; 5]],
    ranges: &[Range],
    cfi: &Cfi,
    code_hints: &[u64],
    txn: &mut Transaction<'_>,
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<Done, Error> {
    let process = space.primary().clone();
    let pid = process.pid();
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    let (regions, answers) = map_alone(
        space, layout, &bundle.id, code_hints, ifuncs, options, pauses,
    )?;
    // Not journaled yet: `recover` finds this memory by its header (written in the same stop
    // as the mmap), which saves a synchronous write here.
    faults::point("mapped");
    resolver.ifuncs.extend(answers);
    let linked = link_at(
        bundle, bundle_sha, plan, resolver, layout, &regions, expected, pid,
    )?;
    // Load while the program runs: nothing uses this memory yet.
    for w in &linked.writes {
        process.write(w.address, &w.bytes)?;
    }
    process.write(
        regions[0].address,
        &state::header(&linked.applied, link::HEADER_SIZE as usize - 1),
    )?;
    faults::point("loaded");
    let switched = journal_and_switch(
        txn,
        &linked,
        space,
        cfi,
        options,
        pauses,
        ranges,
        expected,
        &mut |stopped, stage| {
            match stage {
                Stage::BeforeWrites => {
                    hooks::run(stopped, &linked.applied, HookKind::PreApply, &mut runs)?;
                }
                Stage::AfterWrites => hooks::run_post(
                    stopped,
                    &linked.applied,
                    HookKind::PostApply,
                    &mut runs,
                    &mut warnings,
                ),
            }
            Ok(Proceed::Yes)
        },
    )?;
    Ok(Done {
        applied: linked.applied,
        attempts: switched.attempts,
        threads: switched.threads,
        hooks: runs,
        warnings,
    })
}
