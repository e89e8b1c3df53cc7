//! Run-pre matching of arbitrary pre-build code, relocations and running code (what a process
//! holds is not under hotsplice's control): `match_function` must return a match or a
//! mismatch, never panic, and a match must stay inside the memory it was given.
#![no_main]

use hotsplice_matcher::{Memory, PreCode, PreReloc, match_function};
use hotsplice_reloc::RelocClass;
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x40_1000;

struct Bytes<'a>(&'a [u8]);

impl Memory for Bytes<'_> {
    fn read(&self, address: u64, buf: &mut [u8]) -> bool {
        let Some(start) = address.checked_sub(BASE) else {
            return false;
        };
        let Ok(start) = usize::try_from(start) else {
            return false;
        };
        match self.0.get(start..start.saturating_add(buf.len())) {
            Some(src) if src.len() == buf.len() => {
                buf.copy_from_slice(src);
                true
            }
            _ => false,
        }
    }
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>, Vec<(u8, u8, i32, bool)>)| {
    let (pre, running, relocs) = input;
    // The relocation types gcc emits in code that hotsplice links.
    let types: Vec<u32> = (0..64).filter(|&t| RelocClass::of(t).linked).collect();
    let mut relocs: Vec<PreReloc> = relocs
        .into_iter()
        .filter(|(offset, ..)| usize::from(*offset) < pre.len())
        .map(|(offset, kind, addend, named)| PreReloc {
            offset: u64::from(offset),
            r_type: types[usize::from(kind) % types.len()],
            symbol: named.then(|| format!("s{}", kind % 4)),
            addend: i64::from(addend),
        })
        .collect();
    relocs.sort_by_key(|r| r.offset);
    relocs.dedup_by_key(|r| r.offset);
    let pre = PreCode {
        code: &pre,
        relocs: &relocs,
    };
    let window = running.len() as u64;
    if let Ok(matched) = match_function(pre, BASE, window, &Bytes(&running)) {
        assert!(matched.address == BASE);
        assert!(matched.len <= window, "{} > {window}", matched.len);
    }
});
