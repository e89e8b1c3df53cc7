//! Run-pre matching offline: `fixtures/kernel/runpre/pre.c` and `other.c` are compiled with
//! the kernel's code model and linked at `0xffffffff81000000` into a small ELF that stands in
//! for vmlinux; its kallsyms text is written from its symbol table at a KASLR slide. The patch
//! set comes from objdiff over `pre.c`/`post.c` compiled with `-ffunction-sections`, as kbuild
//! builds them for a patch. Both units have a static `show` and a static `count`: the match must
//! pick pre.c's (its `sympos`) and learn pre.c's `count`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use hotsplice_kernel::kallsyms::Kallsyms;
use hotsplice_kernel::runpre::{ModuleImage, RunPre, Vmlinux, match_kernel, match_module};
use hotsplice_objdiff::{PatchSet, patch_objects};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind, SymbolSection};

const FLAGS: &[&str] = &[
    "-O2",
    "-mcmodel=kernel",
    "-fno-pie",
    "-fno-stack-protector",
    "-ffreestanding",
];

/// A KASLR slide (2 MiB aligned, as the kernel's).
const SLIDE: u64 = 0x1e0_0000;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/kernel/runpre")
        .join(name)
}

fn gcc(args: &[&str], sources: &[&str], out: &Path) {
    let output = Command::new("gcc")
        .args(FLAGS)
        .args(args)
        .args(sources.iter().map(|s| fixture(s)))
        .arg("-o")
        .arg(out)
        .output()
        .expect("gcc must be installed (scripts/setup installs it)");
    assert!(
        output.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A directory of this call's own: tests run in parallel, and two that wrote the same object
/// raced (one read it while gcc rewrote it).
fn scratch(name: &str) -> PathBuf {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kernel-runpre")
        .join(format!("{name}-{call}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A stand-in vmlinux linked from `sources`.
fn vmlinux(name: &str, sources: &[&str]) -> Vec<u8> {
    let out = scratch(name).join("vmlinux");
    gcc(
        &[
            "-no-pie",
            "-nostdlib",
            "-static",
            "-Wl,-Ttext-segment=0xffffffff81000000",
            "-Wl,-e,meminfo_proc_show",
        ],
        sources,
        &out,
    );
    std::fs::read(out).unwrap()
}

/// An object as kbuild compiles a unit (`-c`, with `extra`).
fn object_file(dir: &str, source: &str, extra: &[&str]) -> Vec<u8> {
    let out = scratch(dir).join(format!("{source}.o"));
    gcc(&[&["-c"], extra].concat(), &[source], &out);
    std::fs::read(out).unwrap()
}

/// The patch set of pre.c → post.c.
fn patch_set() -> PatchSet {
    let sections = ["-ffunction-sections", "-fdata-sections"];
    let pre = object_file("set", "pre.c", &sections);
    let post = object_file("set", "post.c", &sections);
    let (diff, set) = patch_objects("fs/proc/meminfo.o", Some(&pre), Some(&post)).unwrap();
    assert!(diff.refusals.is_empty(), "{:?}", diff.refusals);
    set
}

/// vmlinux's symbols as `/proc/kallsyms` shows them at `slide`: address order, `_text` first.
/// Each is also returned with the source file its `STT_FILE` names (the oracle the kallsyms
/// text does not carry).
fn kallsyms(image: &[u8], slide: u64) -> (String, Vec<(String, String, u64)>) {
    let file = object::File::parse(image).unwrap();
    let text = file.segments().map(|s| s.address()).min().unwrap();
    let mut symbols = vec![(String::new(), "_text".to_string(), 'T', text)];
    let mut source = String::new();
    for s in file.symbols() {
        let name = s.name().unwrap().to_string();
        if s.kind() == SymbolKind::File {
            source = name;
            continue;
        }
        let SymbolSection::Section(_) = s.section() else {
            continue;
        };
        let kind = match s.kind() {
            SymbolKind::Text => 't',
            SymbolKind::Data => 'd',
            _ => continue,
        };
        let kind = if s.is_global() {
            kind.to_ascii_uppercase()
        } else {
            kind
        };
        // Globals follow every local in the table, past the last `STT_FILE`: unique by name.
        let file = if s.is_global() {
            String::new()
        } else {
            source.clone()
        };
        symbols.push((file, name, kind, s.address()));
    }
    symbols.sort_by_key(|s| s.3);
    let text: String = symbols
        .iter()
        .map(|(_, name, kind, a)| format!("{:016x} {kind} {name}\n", a + slide))
        .collect();
    let oracle = symbols
        .into_iter()
        .map(|(file, name, _, a)| (file, name, a + slide))
        .collect();
    (text, oracle)
}

/// The run-time address of `name` defined in `file` (any file for a global).
fn address_in(oracle: &[(String, String, u64)], file: &str, name: &str) -> u64 {
    oracle
        .iter()
        .find(|(f, n, _)| (f == file || f.is_empty()) && n == name)
        .unwrap_or_else(|| panic!("{name} of {file} in the stand-in vmlinux"))
        .2
}

fn run(image: &[u8], kallsyms_text: &str) -> RunPre {
    let set = patch_set();
    let vmlinux = Vmlinux::parse(image).unwrap();
    match_kernel(&[&set], &vmlinux, &Kallsyms::parse(kallsyms_text))
}

#[test]
fn proves_each_replaced_function_and_picks_the_right_static() {
    let image = vmlinux("kernel", &["pre.c", "other.c"]);
    for slide in [0, SLIDE] {
        let (text, oracle) = kallsyms(&image, slide);
        let result = run(&image, &text);
        assert_eq!(result.mismatches, Vec::new(), "slide {slide:#x}");
        let mut proven: Vec<(String, u64, u64)> = result
            .proven
            .iter()
            .map(|p| (p.name.clone(), p.address, p.sympos))
            .collect();
        proven.sort();
        // pre.c comes first in the link: its `show` is the first of the two.
        assert_eq!(
            proven,
            [
                (
                    "meminfo_proc_show".to_string(),
                    address_in(&oracle, "pre.c", "meminfo_proc_show"),
                    0
                ),
                ("show".to_string(), address_in(&oracle, "pre.c", "show"), 1),
            ],
            "slide {slide:#x}"
        );
        // The code's relocation fields taught pre.c's `count`, not other.c's.
        let count = &result.learned["count"];
        assert!(count.contains(&address_in(&oracle, "pre.c", "count")));
        assert!(!count.contains(&address_in(&oracle, "other.c", "count")));
        assert!(result.learned["other_total"].contains(&address_in(
            &oracle,
            "other.c",
            "other_total"
        )));
    }
}

#[test]
fn the_static_is_found_whatever_its_position() {
    // Linked the other way round, pre.c's `show` is the second.
    let image = vmlinux("reversed", &["other.c", "pre.c"]);
    let (text, oracle) = kallsyms(&image, SLIDE);
    let result = run(&image, &text);
    assert_eq!(result.mismatches, Vec::new());
    let show = result.proven.iter().find(|p| p.name == "show").unwrap();
    assert_eq!(
        (show.address, show.sympos),
        (address_in(&oracle, "pre.c", "show"), 2)
    );
}

#[test]
fn a_kernel_built_from_other_source_is_refused() {
    // The running kernel already has post.c's code.
    let image = vmlinux("post", &["post.c", "other.c"]);
    let (text, _) = kallsyms(&image, SLIDE);
    let result = run(&image, &text);
    assert!(result.proven.is_empty(), "{:?}", result.proven);
    let mut names: Vec<&str> = result.mismatches.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["meminfo_proc_show", "show"]);
    for (_, why) in &result.mismatches {
        assert!(why.contains("is not the pre build's code"), "{why}");
    }
}

#[test]
fn a_function_kallsyms_does_not_list_is_refused() {
    let image = vmlinux("kernel", &["pre.c", "other.c"]);
    let (text, _) = kallsyms(&image, SLIDE);
    let text: String = text
        .lines()
        .filter(|l| !l.ends_with(" meminfo_proc_show"))
        .map(|l| format!("{l}\n"))
        .collect();
    let result = run(&image, &text);
    assert_eq!(result.mismatches.len(), 1);
    let (name, why) = &result.mismatches[0];
    assert_eq!(name, "meminfo_proc_show");
    assert!(
        why.contains("is not in the target kernel's symbols"),
        "{why}"
    );
}

#[test]
fn two_matching_statics_are_ambiguous() {
    let image = vmlinux("twin", &["pre.c", "other.c", "twin.c"]);
    let (text, _) = kallsyms(&image, SLIDE);
    let result = run(&image, &text);
    let (_, why) = result
        .mismatches
        .iter()
        .find(|(n, _)| n == "show")
        .expect("show is not proven");
    assert!(
        why.contains("2 of the target kernel's 3 functions named show match"),
        "{why}"
    );
}

#[test]
fn a_module_is_matched_in_its_own_ko() {
    // A unit built into a module: the module's `.ko` (relocatable, no function sections)
    // stands in for vmlinux.
    let set = patch_set();
    let ko = object_file("module", "pre.c", &[]);
    let image = ModuleImage::parse(&ko).unwrap();
    let mut result = RunPre::default();
    match_module(&set, "meminfo_mod", &image, &mut result);
    assert_eq!(result.mismatches, Vec::new());
    let mut proven: Vec<(&str, u64)> = result
        .proven
        .iter()
        .map(|p| (p.name.as_str(), p.sympos))
        .collect();
    proven.sort();
    assert_eq!(proven, [("meminfo_proc_show", 0), ("show", 0)]);

    let ko = object_file("module-post", "post.c", &[]);
    let image = ModuleImage::parse(&ko).unwrap();
    let mut result = RunPre::default();
    match_module(&set, "meminfo_mod", &image, &mut result);
    assert!(result.proven.is_empty());
    assert!(
        result.mismatches[0].1.contains("module meminfo_mod's"),
        "{:?}",
        result.mismatches
    );
}

#[test]
fn malformed_images_are_errors() {
    assert!(Vmlinux::parse(b"not an elf").is_err());
    assert!(ModuleImage::parse(&[0x7f, b'E', b'L', b'F', 2, 1, 1]).is_err());
}
