//! The unwinder on a real stack: `fixtures/unwind/stack.c` is compiled by gcc (a PIE, so the
//! load bias is not 0) and run; it saves its own registers and stack from inside a leaf four
//! calls deep, and the return address and CFA of each frame as the compiler knows them. The
//! walk over the executable's `.eh_frame` must find exactly those return addresses and stop
//! where call-frame information ends (main's caller, in libc, which is not given as a module).
//! Then the saved stack is edited to put code without CFI in the way, or cut short. The
//! executable is linked from one object built with `-ffunction-sections`, so the rows a bundle
//! would carry for its functions (the object diff's) describe exactly the code that ran: a walk
//! that takes them as patch code must find the same frames.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use hotsplice_matcher::Image;

use super::*;

/// What the fixture printed, and its executable.
struct Saved {
    exe: Vec<u8>,
    /// The object it was linked from.
    object: Vec<u8>,
    bias: u64,
    module: (u64, u64),
    rip: u64,
    rsp: u64,
    rbp: u64,
    /// Return addresses of capture, work, framed, main (the oracle).
    ra: [u64; 4],
    /// CFAs of capture, work, framed, main (the oracle).
    cfa: [u64; 4],
    nocfi: u64,
    /// Stack words from `rsp` up.
    stack: Vec<u64>,
}

fn saved() -> &'static Saved {
    static SAVED: OnceLock<Saved> = OnceLock::new();
    SAVED.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/unwind/stack.c");
        let dir = std::env::temp_dir().join(format!("hotsplice-unwind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (object, exe) = (dir.join("stack.o"), dir.join("stack"));
        let gcc = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("gcc")
                .args(args)
                .output()
                .expect("gcc must be installed (scripts/setup installs it)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        gcc(&[
            "-O2".as_ref(),
            "-fPIE".as_ref(),
            "-ffunction-sections".as_ref(),
            "-c".as_ref(),
            source.as_os_str(),
            "-o".as_ref(),
            object.as_os_str(),
        ]);
        gcc(&[
            "-pie".as_ref(),
            object.as_os_str(),
            "-o".as_ref(),
            exe.as_os_str(),
        ]);
        let run = Command::new(&exe).output().unwrap();
        assert!(run.status.success());
        let bytes = std::fs::read(&exe).unwrap();
        let object = std::fs::read(&object).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut saved = parse(bytes, &String::from_utf8(run.stdout).unwrap());
        saved.object = object;
        saved
    })
}

fn parse(exe: Vec<u8>, text: &str) -> Saved {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let mut fields: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut stack = Vec::new();
    let mut lines = text.lines();
    for line in lines.by_ref() {
        let mut words = line.split_whitespace();
        let key = words.next().unwrap();
        if key == "stack" {
            break;
        }
        fields.insert(key, words.map(hex).collect());
    }
    for line in lines {
        stack.push(hex(line));
    }
    let one = |k: &str| fields[k][0];
    let four = |k: &str| <[u64; 4]>::try_from(fields[k].as_slice()).unwrap();
    Saved {
        exe,
        object: Vec::new(),
        bias: one("bias"),
        module: (fields["module"][0], fields["module"][1]),
        rip: one("rip"),
        rsp: one("rsp"),
        rbp: one("rbp"),
        ra: four("ra"),
        cfa: four("cfa"),
        nocfi: one("nocfi"),
        stack,
    }
}

impl Saved {
    /// Reads a stack word, as the safety check does from a stopped thread's saved stack;
    /// `edits` replace words, and nothing at or above `limit` is readable.
    fn read(&self, address: u64, edits: &HashMap<u64, u64>, limit: u64) -> Option<u64> {
        if let Some(&v) = edits.get(&address) {
            return Some(v);
        }
        if address < self.rsp || address + 8 > limit || !(address - self.rsp).is_multiple_of(8) {
            return None;
        }
        self.stack.get(((address - self.rsp) / 8) as usize).copied()
    }

    fn top(&self) -> u64 {
        self.rsp + 8 * self.stack.len() as u64
    }

    /// The run-time range of a function of the executable.
    fn function(&self, name: &str) -> std::ops::Range<u64> {
        let image = Image::parse(&self.exe).unwrap();
        let s = image.symbols_named(name).next().unwrap();
        self.bias + s.address..self.bias + s.address + s.size
    }
}

/// The executable's `.eh_frame`.
fn eh_frame(saved: &Saved) -> EhFrameSection {
    let image = Image::parse(&saved.exe).unwrap();
    image.eh_frame.expect("the fixture has .eh_frame")
}

/// The tables of the executable alone, as loaded.
fn linked<'a>(saved: &Saved, eh_frame: &'a EhFrameSection) -> Tables<'a> {
    Tables {
        files: vec![CfiModule {
            start: saved.module.0,
            end: saved.module.1,
            bias: saved.bias,
            eh_frame,
        }],
        patches: Vec::new(),
    }
}

fn walk_saved(
    saved: &Saved,
    (rip, rsp, rbp): (u64, u64, u64),
    edits: &HashMap<u64, u64>,
    limit: u64,
) -> Walk {
    let eh_frame = eh_frame(saved);
    let tables = linked(saved, &eh_frame);
    let mut cache = StepCache::default();
    let read = |a: u64| saved.read(a, edits, limit);
    let first = walk(rip, rsp, rbp, &tables, &mut cache, &read);
    // The step cache changes nothing: a second walk through it finds the same.
    let again = walk(rip, rsp, rbp, &tables, &mut cache, &read);
    assert_eq!(first, again);
    first
}

/// Addresses in hex, for readable assertion failures.
fn hex(addresses: &[u64]) -> Vec<String> {
    addresses.iter().map(|a| format!("{a:#x}")).collect()
}

fn registers(s: &Saved) -> (u64, u64, u64) {
    (s.rip, s.rsp, s.rbp)
}

#[test]
fn a_saved_stack_unwinds_to_where_cfi_ends() {
    let s = saved();
    assert_ne!(s.bias, 0, "a PIE, loaded at a bias");
    let w = walk_saved(s, registers(s), &HashMap::new(), s.top());
    assert_eq!(
        hex(&w.return_addresses),
        hex(&s.ra),
        "capture → work → framed → main → libc"
    );
    // main's caller is in libc, which has no module here: unknown from main's CFA up.
    assert_eq!(w.unknown_from, Some(s.cfa[3]));
}

#[test]
fn the_frames_inside_functions_being_replaced_are_found() {
    let s = saved();
    let w = walk_saved(s, registers(s), &HashMap::new(), s.top());
    let work = s.function("work");
    let framed = s.function("framed");
    assert_eq!(
        w.return_addresses
            .iter()
            .filter(|a| work.contains(a))
            .count(),
        1,
        "one frame returns into work"
    );
    assert!(w.return_addresses.iter().any(|a| framed.contains(a)));
    assert!(
        s.function("capture").contains(&s.rip),
        "stopped in the leaf"
    );
}

#[test]
fn a_leaf_at_its_first_instruction() {
    // A thread stopped on work's entry: rsp points at its return address (CFA = rsp + 8), and
    // rbp is still framed's frame pointer (framed's CFA - 16).
    let s = saved();
    let entry = s.function("work").start;
    let w = walk_saved(
        s,
        (entry, s.cfa[1] - 8, s.cfa[2] - 16),
        &HashMap::new(),
        s.top(),
    );
    assert_eq!(hex(&w.return_addresses), hex(&s.ra[1..]));
    assert_eq!(w.unknown_from, Some(s.cfa[3]));
}

#[test]
fn stopped_in_code_without_cfi() {
    // Patch memory: no module covers it; the whole stack is to be scanned.
    let s = saved();
    let patch_memory = 0x7f00_0000_1000;
    let w = walk_saved(s, (patch_memory, s.rsp, s.rbp), &HashMap::new(), s.top());
    assert_eq!(hex(&w.return_addresses), hex(&[]));
    assert_eq!(w.unknown_from, Some(s.rsp));
    // In the program but outside every FDE.
    let w = walk_saved(s, (s.nocfi, s.rsp, s.rbp), &HashMap::new(), s.top());
    assert_eq!((w.return_addresses.len(), w.unknown_from), (0, Some(s.rsp)));
}

#[test]
fn a_return_into_code_without_cfi_ends_the_walk_there() {
    let s = saved();
    // work returns into a function without FDE (as it would into a patch's new code).
    for target in [s.nocfi + 1, 0x7f00_0000_1234] {
        let edits = HashMap::from([(s.cfa[1] - 8, target)]);
        let w = walk_saved(s, registers(s), &edits, s.top());
        assert_eq!(hex(&w.return_addresses), hex(&[s.ra[0], target]));
        assert_eq!(
            w.unknown_from,
            Some(s.cfa[1]),
            "scan from work's caller's frame up"
        );
    }
}

#[test]
fn patch_code_is_walked_through_with_the_rows_its_bundle_carries() {
    // Every function of the object as a bundle would carry it (all new), at the address it
    // has in the executable; the executable's own `.eh_frame` is not given.
    let s = saved();
    let (_, set) = hotsplice_objdiff::patch_objects("stack.o", None, Some(&s.object)).unwrap();
    let patch = hotsplice_bundle::convert::object_patch(
        &hotsplice_objdiff::diff_objects("stack.o", None, Some(&s.object)).unwrap(),
        &set,
    );
    let code: Vec<(std::ops::Range<u64>, &[hotsplice_bundle::FrameRow])> =
        ["capture", "work", "framed", "main"]
            .into_iter()
            .map(|name| {
                let piece = patch
                    .pieces
                    .iter()
                    .find(|p| p.symbol.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("{name} is carried"));
                let range = s.function(name);
                assert_eq!(range.end - range.start, piece.size, "{name}: the same code");
                assert!(!piece.frames.is_empty(), "{name} has rows");
                (range, piece.frames.as_slice())
            })
            .collect();
    let tables = Tables {
        files: Vec::new(),
        patches: code
            .iter()
            .map(|(range, rows)| PatchCode {
                start: range.start,
                end: range.end,
                rows,
            })
            .collect(),
    };
    // At every byte of these functions, the rows give the step the executable's `.eh_frame`
    // gives.
    let eh_frame = eh_frame(s);
    let linked = linked(s, &eh_frame);
    let mut ctx = UnwindContext::new();
    for (range, _) in &code {
        for address in range.clone() {
            assert_eq!(
                step_for(address, &tables, &mut ctx),
                step_for(address, &linked, &mut ctx),
                "at {address:#x}"
            );
        }
    }
    let read = |a: u64| s.read(a, &HashMap::new(), s.top());
    let w = walk(
        s.rip,
        s.rsp,
        s.rbp,
        &tables,
        &mut StepCache::default(),
        &read,
    );
    assert_eq!(
        hex(&w.return_addresses),
        hex(&s.ra),
        "capture → work → framed (through rbp) → main → libc"
    );
    assert_eq!(w.unknown_from, Some(s.cfa[3]));
    // Without rows for framed (a patch built before bundles carried them), the walk stops at
    // its frame and the rest is to be scanned.
    let mut without = tables;
    without.patches[2].rows = &[];
    let w = walk(
        s.rip,
        s.rsp,
        s.rbp,
        &without,
        &mut StepCache::default(),
        &read,
    );
    assert_eq!(hex(&w.return_addresses), hex(&s.ra[..2]));
    assert_eq!(w.unknown_from, Some(s.cfa[1]));
}

#[test]
fn an_unreadable_stack_ends_the_walk() {
    // Only capture's frame is readable: work's return address is not.
    let s = saved();
    let w = walk_saved(s, registers(s), &HashMap::new(), s.cfa[1] - 8);
    assert_eq!(hex(&w.return_addresses), hex(&[s.ra[0]]));
    assert_eq!(w.unknown_from, Some(s.cfa[0]));
}
