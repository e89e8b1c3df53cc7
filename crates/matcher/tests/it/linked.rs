//! Run-pre matching against real binaries built by gcc: the pre code comes from a
//! `-ffunction-sections` object (through the object diff's patch set), the "running" code from
//! an ordinary link of the same source, read from the file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hotsplice_matcher::{Found, Image, Learned, Memory, PreCode, PreReloc, Via, Wanted, locate};
use hotsplice_objdiff::patch_objects;
use hotsplice_objdiff::patchset::PreTarget;
use object::read::elf::{FileHeader, ProgramHeader};

const SOURCE: &str = r#"
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#ifndef P
#define P 0
#endif

static int counter;
int limit = 10;
static const char *names[] = { "zero", "one", "two" };

static __attribute__((noinline)) int helper(int x) { return x * 3 + counter + P; }
static __attribute__((noinline)) int other_helper(int x) { return x * 5 + P; }

int compute(int x)
{
    counter++;
    if (x > limit)
        printf("big %d\n", x);
    return helper(x) + other_helper(x) + P;
}

const char *name_of(int i)
{
    switch (i + P) {
    case 0: return "zero!";
    case 1: return names[1];
    case 2: return "two!";
    case 3: return "three!";
    case 4: return "four!";
    case 5: return strchr("five", 'v');
    default: return "many";
    }
}

int main(int argc, char **argv)
{
    printf("%d %s\n", compute(argc), name_of(argc));
    return 0;
}
"#;

struct Built {
    pre_o: Vec<u8>,
    post_o: Vec<u8>,
    exe: Vec<u8>,
    stripped: Vec<u8>,
}

fn build(name: &str, extra: &[&str]) -> Built {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("matcher")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("t.c");
    std::fs::write(&src, SOURCE).unwrap();
    let gcc = |args: &[&str], out: &PathBuf| {
        let status = Command::new("gcc")
            .args(["-O2", "-g"])
            .args(extra)
            .args(args)
            .arg(&src)
            .arg("-o")
            .arg(out)
            .status()
            .unwrap();
        assert!(status.success());
    };
    let ffs = ["-c", "-ffunction-sections", "-fdata-sections"];
    gcc(&ffs, &dir.join("pre.o"));
    gcc(&[&ffs[..], &["-DP=1"]].concat(), &dir.join("post.o"));
    gcc(&[], &dir.join("exe"));
    let status = Command::new("strip")
        .arg("-o")
        .arg(dir.join("exe.stripped"))
        .arg(dir.join("exe"))
        .status()
        .unwrap();
    assert!(status.success());
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    Built {
        pre_o: read("pre.o"),
        post_o: read("post.o"),
        exe: read("exe"),
        stripped: read("exe.stripped"),
    }
}

/// A linked file seen as process memory at bias 0, with optional overrides.
struct FileMemory {
    segments: Vec<(u64, u64, u64)>, // vaddr, filesz, offset
    bytes: Vec<u8>,
    overrides: RefCell<HashMap<u64, u8>>,
}

impl FileMemory {
    fn new(bytes: &[u8]) -> Self {
        let header = object::elf::FileHeader64::<object::LittleEndian>::parse(bytes).unwrap();
        let e = object::LittleEndian;
        let segments = header
            .program_headers(e, bytes)
            .unwrap()
            .iter()
            .filter(|p| p.p_type(e) == object::elf::PT_LOAD)
            .map(|p| (p.p_vaddr(e), p.p_filesz(e), p.p_offset(e)))
            .collect();
        FileMemory {
            segments,
            bytes: bytes.to_vec(),
            overrides: RefCell::new(HashMap::new()),
        }
    }
}

impl Memory for FileMemory {
    fn read(&self, address: u64, buf: &mut [u8]) -> bool {
        let Some(&(vaddr, _, offset)) = self
            .segments
            .iter()
            .find(|(v, s, _)| address >= *v && address + buf.len() as u64 <= v + s)
        else {
            return false;
        };
        let start = (offset + address - vaddr) as usize;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        for (i, b) in buf.iter_mut().enumerate() {
            if let Some(v) = self.overrides.borrow().get(&(address + i as u64)) {
                *b = *v;
            }
        }
        true
    }
}

struct Function {
    name: String,
    local: bool,
    code: Vec<u8>,
    relocs: Vec<PreReloc>,
}

fn pre_functions(built: &Built) -> Vec<Function> {
    let (_, set) = patch_objects("t.o", Some(&built.pre_o), Some(&built.post_o)).unwrap();
    set.replacements
        .iter()
        .map(|r| Function {
            name: r.name.clone(),
            local: r.local,
            code: r.pre_code.clone(),
            relocs: r
                .pre_relocs
                .iter()
                .map(|x| PreReloc {
                    offset: x.offset,
                    r_type: x.r_type,
                    symbol: match &x.target {
                        PreTarget::Symbol(s) => Some(s.name.clone()),
                        PreTarget::Anonymous(_) => None,
                    },
                    addend: x.addend,
                })
                .collect(),
        })
        .collect()
}

fn wanted(functions: &[Function]) -> Vec<Wanted<'_>> {
    functions
        .iter()
        .map(|f| Wanted {
            name: &f.name,
            local: f.local,
            source_file: Some("t.c"),
            pre: PreCode {
                code: &f.code,
                relocs: &f.relocs,
            },
        })
        .collect()
}

fn truth(exe: &[u8]) -> HashMap<String, u64> {
    Image::parse(exe)
        .unwrap()
        .symbols
        .iter()
        .filter(|s| s.function)
        .map(|s| (s.name.clone(), s.address))
        .collect()
}

fn check_all_located(name: &str, extra: &[&str]) {
    let built = build(name, extra);
    let functions = pre_functions(&built);
    let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
    for expected in ["compute", "helper", "other_helper", "name_of"] {
        assert!(
            names.contains(&expected),
            "{expected} not replaced: {names:?}"
        );
    }
    let truth = truth(&built.exe);
    for (label, binary) in [("unstripped", &built.exe), ("stripped", &built.stripped)] {
        let image = Image::parse(binary).unwrap();
        let memory = FileMemory::new(binary);
        let found = locate(&image, 0, &wanted(&functions), &memory);
        for (f, outcome) in functions.iter().zip(&found) {
            match outcome {
                Found::Located { matched, via } => {
                    assert_eq!(
                        matched.address, truth[&f.name],
                        "{name}/{label}: {} located at the wrong address",
                        f.name
                    );
                    if label == "unstripped" {
                        assert_eq!(*via, Via::Symbol);
                    }
                }
                other => panic!("{name}/{label}: {} not located: {other:?}", f.name),
            }
        }
        // compute's relocation fields teach where its static callees are.
        let compute = functions.iter().position(|f| f.name == "compute").unwrap();
        let Found::Located { matched, .. } = &found[compute] else {
            unreachable!()
        };
        let learned: HashMap<&str, Learned> = matched
            .learned
            .iter()
            .map(|l| (l.symbol.as_str(), l.value))
            .collect();
        assert_eq!(
            learned.get("helper"),
            Some(&Learned::Address(truth["helper"])),
            "{name}/{label}"
        );
        assert!(
            learned.contains_key("counter") && learned.contains_key("limit"),
            "{learned:?}"
        );
    }
}

#[test]
fn locates_every_function_of_a_pie() {
    check_all_located("pie", &["-fPIE", "-pie"]);
}

#[test]
fn locates_every_function_of_a_pic_pie() {
    // -fPIC objects in a PIE link: GOTPCRELX loads are relaxed to lea by the linker.
    check_all_located("pic", &["-fPIC", "-pie"]);
}

#[test]
fn locates_every_function_of_a_non_pie() {
    check_all_located("nopie", &["-fno-pie", "-no-pie"]);
}

#[test]
fn a_changed_byte_is_a_mismatch_naming_the_instruction() {
    let built = build("mismatch", &["-fPIE", "-pie"]);
    let functions = pre_functions(&built);
    let truth = truth(&built.exe);
    let image = Image::parse(&built.exe).unwrap();
    let memory = FileMemory::new(&built.exe);
    let target = functions
        .iter()
        .position(|f| f.name == "other_helper")
        .unwrap();
    // `x * 5` is `lea (%rdi,%rdi,4),%eax`: make it `x * 3` (scale 2).
    let base = truth["other_helper"];
    let mut code = vec![0u8; functions[target].code.len()];
    assert!(memory.read(base, &mut code));
    let at = code
        .windows(2)
        .position(|w| w == [0x8d, 0x04])
        .expect("lea in other_helper") as u64
        + 2;
    memory
        .overrides
        .borrow_mut()
        .insert(base + at, code[at as usize] ^ 0x40);
    let found = locate(&image, 0, &wanted(&functions), &memory);
    match &found[target] {
        Found::NotFound {
            mismatch: Some(m), ..
        } => {
            assert!(m.expected.contains("lea"), "{m}");
            assert!(m.found.contains("lea"), "{m}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let compute = functions.iter().position(|f| f.name == "compute").unwrap();
    assert!(
        matches!(found[compute], Found::Located { .. }),
        "the others still match"
    );
}

/// Reads `file` as `hotsplice_ptrace::Process::mapped_file_parts` does: only the ranges
/// `ranges_needed` asks for, zeros elsewhere. Returns the bytes and how many were read.
fn read_as_asked(file: &[u8]) -> (Vec<u8>, usize) {
    let mut known = vec![0u8; file.len()];
    let mut read = 0;
    for _ in 0..8 {
        let wanted: Vec<_> = hotsplice_matcher::ranges_needed(&known)
            .into_iter()
            .filter(|r| known[r.clone()] != file[r.clone()])
            .collect();
        if wanted.is_empty() {
            break;
        }
        for r in wanted {
            known[r.clone()].copy_from_slice(&file[r.clone()]);
            read += r.len();
        }
    }
    (known, read)
}

#[test]
fn an_image_parsed_from_the_ranges_it_asks_for_equals_the_whole_files() {
    let built = build("ranges", &[]);
    let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").ok();
    let mut files = vec![("exe", built.exe), ("stripped", built.stripped)];
    files.extend(libc.map(|l| ("libc.so.6", l)));
    for (label, file) in files {
        let (sparse, read) = read_as_asked(&file);
        let whole = Image::parse(&file).unwrap();
        let parts = Image::parse(&sparse).unwrap();
        assert_eq!(parts.symbols, whole.symbols, "{label}");
        assert_eq!(parts.fdes, whole.fdes, "{label}");
        assert_eq!(parts.build_id, whole.build_id, "{label}");
        assert!(whole.build_id.is_some(), "{label}");
        assert_eq!(parts.tls, whole.tls, "{label}");
        assert_eq!(parts.first_load, whole.first_load, "{label}");
        assert_eq!(
            parts.eh_frame.as_ref().map(|e| (&e.data, &e.fdes)),
            whole.eh_frame.as_ref().map(|e| (&e.data, &e.fdes)),
            "{label}"
        );
        assert!(!whole.fdes.is_empty(), "{label}");
        assert!(read < file.len(), "{label}: read {read} of {}", file.len());
        println!("{label}: read {read} of {} bytes", file.len());
    }
}

#[test]
fn ranges_needed_of_garbage_ask_for_the_header_only_and_never_panic() {
    assert_eq!(
        hotsplice_matcher::ranges_needed(&[]),
        Vec::<std::ops::Range<usize>>::new()
    );
    assert_eq!(hotsplice_matcher::ranges_needed(&[0u8; 10]), vec![0..10]);
    let mut bytes = vec![0u8; 4096];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[4] = 2;
    bytes[5] = 1;
    // A section table far beyond the end, and one of 2^64 bytes: clamped, no panic.
    bytes[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
    bytes[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    bytes[0x3c..0x3e].copy_from_slice(&u16::MAX.to_le_bytes());
    for r in hotsplice_matcher::ranges_needed(&bytes) {
        assert!(r.start < r.end && r.end <= bytes.len(), "{r:?}");
    }
}
