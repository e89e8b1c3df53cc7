//! `derive` over a record, patch-memory headers and the bytes at the patched sites, as table
//! rows: each row builds a process's memory and its record and names the patches it expects
//! live, stale (dropped from the record) and unused (patch memory no jump uses).

use super::*;
use crate::state::{AppliedFunction, Code5, Region};

/// A fake address space: a few readable ranges.
#[derive(Default)]
struct Fake {
    ranges: Vec<(u64, Vec<u8>)>,
}

impl Fake {
    fn put(&mut self, address: u64, bytes: &[u8]) {
        self.ranges.push((address, bytes.to_vec()));
    }
}

impl Memory for Fake {
    fn read(&self, address: u64, buf: &mut [u8]) -> bool {
        for (start, bytes) in self.ranges.iter().rev() {
            let Some(from) = address.checked_sub(*start) else {
                continue;
            };
            if let Some(src) = bytes.get(from as usize..from as usize + buf.len()) {
                buf.copy_from_slice(src);
                return true;
            }
        }
        false
    }
}

/// Where patch `n`'s code region is.
fn region(n: u64) -> u64 {
    0x7f00_0000_0000 + n * 0x10_0000
}

/// The jump patch `n` writes at a site.
fn jump(n: u8) -> [u8; 5] {
    [0xe9, n, 0x10, 0x00, 0x00]
}

const ORIGINAL: [u8; 5] = [0x55, 0x48, 0x89, 0xe5, 0x53];
const SITE_A: u64 = 0x40_1000;
const SITE_B: u64 = 0x40_2000;

/// Patch `n` (applied at time `n`) redirecting `sites`.
fn patch(n: u8, sites: &[u64]) -> AppliedPatch {
    AppliedPatch {
        id: format!("p{n}"),
        bundle_sha256: String::new(),
        target: "app".into(),
        module: "/app".into(),
        applied_unix: n as u64,
        pause_us: 0,
        regions: vec![Region {
            address: region(n as u64),
            size: 0x2000,
        }],
        functions: sites
            .iter()
            .map(|&site| AppliedFunction {
                name: format!("f{site:x}"),
                entry: site,
                len: 32,
                site,
                replaced: Code5(ORIGINAL),
                jump: Code5(jump(n)),
                new_address: region(n as u64) + link::HEADER_SIZE,
            })
            .collect(),
        hooks: Vec::new(),
        runtime: None,
        symbols: Vec::new(),
        uses: Vec::new(),
        frames: Vec::new(),
    }
}

/// A row: the record, the patches whose header is in memory, what each site holds.
struct Row {
    recorded: Vec<AppliedPatch>,
    headers: Vec<AppliedPatch>,
    /// Extra anonymous executable mappings holding no header (garbage).
    garbage: usize,
    sites: Vec<(u64, [u8; 5])>,
}

fn ids(patches: &[AppliedPatch]) -> String {
    patches
        .iter()
        .map(|p| p.id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `live [..] stale [..] unused [..]`.
fn run(row: Row) -> String {
    let mut memory = Fake::default();
    let mut candidates = Vec::new();
    for p in &row.headers {
        let start = p.regions[0].address;
        let mut head = state::header(p, link::HEADER_SIZE as usize - 1);
        head.resize(link::HEADER_SIZE as usize, 0);
        memory.put(start, &head);
        candidates.push(start);
    }
    for g in 0..row.garbage {
        let start = 0x7e00_0000_0000 + g as u64 * 0x1000;
        memory.put(start, &[0xcc; link::HEADER_SIZE as usize]);
        candidates.push(start);
    }
    for (site, bytes) in &row.sites {
        memory.put(*site, bytes);
    }
    let recorded = ProcessState {
        pid: 42,
        start_time: 7,
        patches: row.recorded,
    };
    let observed = derive(&recorded, &candidates, &memory);
    assert_eq!((observed.state.pid, observed.state.start_time), (42, 7));
    format!(
        "live [{}] stale [{}] unused [{}]",
        ids(&observed.state.patches),
        ids(&observed.stale),
        ids(&observed.unused)
    )
}

/// One `#[test]` per row.
macro_rules! rows {
    ($($(#[$doc:meta])* $name:ident: $row:expr => $expect:expr;)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                assert_eq!(run($row), $expect);
            }
        )*
    };
}

rows! {
    /// Recorded, its header in memory, its jump in the code.
    applied: Row {
        recorded: vec![patch(1, &[SITE_A])],
        headers: vec![patch(1, &[SITE_A])],
        garbage: 0,
        sites: vec![(SITE_A, jump(1))],
    } => "live [p1] stale [] unused []";

    /// Undone behind the record's back (the original bytes are back): stale.
    undone: Row {
        recorded: vec![patch(1, &[SITE_A])],
        headers: vec![],
        garbage: 0,
        sites: vec![(SITE_A, ORIGINAL)],
    } => "live [] stale [p1] unused []";

    /// Someone else wrote another jump over ours: stale.
    jump_overwritten_by_someone_else: Row {
        recorded: vec![patch(1, &[SITE_A])],
        headers: vec![patch(1, &[SITE_A])],
        garbage: 0,
        sites: vec![(SITE_A, [0xe9, 0xaa, 0xbb, 0xcc, 0xdd])],
    } => "live [] stale [p1] unused []";

    /// The site is no longer mapped (the program exec'd): stale.
    site_unreadable: Row {
        recorded: vec![patch(1, &[SITE_A])],
        headers: vec![],
        garbage: 0,
        sites: vec![],
    } => "live [] stale [p1] unused []";

    /// The record is enough: the header may be missing (memory overwritten, region unmapped).
    header_missing: Row {
        recorded: vec![patch(1, &[SITE_A])],
        headers: vec![],
        garbage: 0,
        sites: vec![(SITE_A, jump(1))],
    } => "live [p1] stale [] unused []";

    /// A child forked from a patched process: no record, but the header and the jumps.
    record_missing_header_and_jumps_present: Row {
        recorded: vec![],
        headers: vec![patch(1, &[SITE_A])],
        garbage: 0,
        sites: vec![(SITE_A, jump(1))],
    } => "live [p1] stale [] unused []";

    /// A child forked while the parent's apply was mapping memory: header, no jump.
    header_without_jumps_is_unused: Row {
        recorded: vec![],
        headers: vec![patch(1, &[SITE_A])],
        garbage: 0,
        sites: vec![(SITE_A, ORIGINAL)],
    } => "live [] stale [] unused [p1]";

    /// Anonymous executable memory that is not patch memory (a JIT) is not a patch.
    garbage_mappings_are_ignored: Row {
        recorded: vec![patch(1, &[SITE_A])],
        headers: vec![],
        garbage: 2,
        sites: vec![(SITE_A, jump(1))],
    } => "live [p1] stale [] unused []";

    /// Every site of a patch must hold its jump, not just one.
    one_site_of_two_lost: Row {
        recorded: vec![patch(1, &[SITE_A, SITE_B])],
        headers: vec![],
        garbage: 0,
        sites: vec![(SITE_A, jump(1)), (SITE_B, ORIGINAL)],
    } => "live [] stale [p1] unused []";

    /// A later patch took the site over: the site holds its jump, and the earlier patch lives
    /// beneath it.
    stacked_both_live: Row {
        recorded: vec![patch(1, &[SITE_A]), patch(2, &[SITE_A, SITE_B])],
        headers: vec![],
        garbage: 0,
        sites: vec![(SITE_A, jump(2)), (SITE_B, jump(2))],
    } => "live [p1,p2] stale [] unused []";

    /// The later patch lost one of its sites: it is stale, and so is the one beneath it,
    /// whose site the stale patch had taken over.
    stacked_top_lost: Row {
        recorded: vec![patch(1, &[SITE_A]), patch(2, &[SITE_A, SITE_B])],
        headers: vec![],
        garbage: 0,
        sites: vec![(SITE_A, jump(2)), (SITE_B, ORIGINAL)],
    } => "live [] stale [p1,p2] unused []";

    /// The earlier patch's jump at a site the later one took over does not count.
    stacked_site_holds_the_older_jump: Row {
        recorded: vec![patch(1, &[SITE_A]), patch(2, &[SITE_A])],
        headers: vec![],
        garbage: 0,
        sites: vec![(SITE_A, jump(1))],
    } => "live [] stale [p1,p2] unused []";

    /// A recorded patch and an inherited one, ordered by when they were applied.
    record_and_memory_merge_in_order: Row {
        recorded: vec![patch(3, &[SITE_B])],
        headers: vec![patch(2, &[SITE_A]), patch(3, &[SITE_B])],
        garbage: 0,
        sites: vec![(SITE_A, jump(2)), (SITE_B, jump(3))],
    } => "live [p2,p3] stale [] unused []";

    /// A patch that redirects nothing is never live.
    no_functions: Row {
        recorded: vec![patch(1, &[])],
        headers: vec![],
        garbage: 0,
        sites: vec![],
    } => "live [] stale [p1] unused []";
}
