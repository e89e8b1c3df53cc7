//! Malformed and foreign input must give a typed error, never a panic.

use std::path::Path;

use hotsplice_objdiff::{Error, Side, diff_objects, patch_objects};

const SOURCE: &str = "struct s { int a; long b; };\n\
    static int n; int f(struct s *p, int x) { static int c; c += x; return c + n + p->a; }\n\
    const char *g(void) { return \"hello\"; }\nint t[4] = {1, 2, 3, 4};\n\
    int h(int k) { switch (k) { case 0: return 3; case 1: return 8; case 2: return 1; \
    case 3: return 7; case 4: return 9; default: return 0; } }\n";

fn compile_source(name: &str, source: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("objdiff-malformed");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!("{name}.o"));
    crate::fixtures::compile(&src, &out, &["-O2"]);
    std::fs::read(out).unwrap()
}

// Built once: tests run in parallel and would race on the same files.
fn valid_object() -> Vec<u8> {
    static OBJECT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    OBJECT.get_or_init(|| compile_source("m", SOURCE)).clone()
}

/// The same source with every function changed, so a diff against it reads the DWARF too.
fn changed_object() -> Vec<u8> {
    static OBJECT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    OBJECT
        .get_or_init(|| {
            compile_source(
                "m2",
                &SOURCE
                    .replace("c + n", "c - n")
                    .replace("hello", "hullo")
                    .replace("return 8", "return 6"),
            )
        })
        .clone()
}

#[test]
fn not_elf_is_an_error() {
    let good = valid_object();
    let err = diff_objects("x.o", Some(b"hello world"), Some(&good)).unwrap_err();
    assert!(
        matches!(&err, Error::InBuild { side: Side::Pre, source } if matches!(**source, Error::NotElf)),
        "{err:?}"
    );
}

#[test]
fn wrong_arch_is_an_error() {
    let mut bad = valid_object();
    bad[18] = 183; // e_machine = EM_AARCH64
    let err = diff_objects("x.o", Some(&bad), Some(&bad)).unwrap_err();
    assert!(
        matches!(&err, Error::InBuild { source, .. } if matches!(**source, Error::WrongArch(_))),
        "{err:?}"
    );
}

#[test]
fn executable_is_refused_as_not_relocatable() {
    let mut bad = valid_object();
    bad[16] = 3; // e_type = ET_DYN
    let err = diff_objects("x.o", Some(&bad), Some(&bad)).unwrap_err();
    assert!(
        matches!(&err, Error::InBuild { source, .. } if matches!(**source, Error::NotRelocatable(3))),
        "{err:?}"
    );
}

/// Every truncation and a sweep of single-byte corruptions over the headers and tables: the
/// diff may fail, but it must return.
#[test]
fn corrupted_objects_never_panic() {
    let good = valid_object();
    let changed = changed_object();
    assert!(
        diff_objects("x.o", Some(&good), Some(&changed))
            .unwrap()
            .has_changes()
    );
    for len in (0..good.len()).step_by(7) {
        let _ = diff_objects("x.o", Some(&good[..len]), Some(&good));
        let _ = diff_objects("x.o", Some(&changed), Some(&good[..len]));
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..4000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bad = good.clone();
        let at = (seed as usize) % bad.len();
        bad[at] = (seed >> 32) as u8;
        let _ = diff_objects("x.o", Some(&good), Some(&bad));
        let _ = diff_objects("x.o", Some(&bad), Some(&good));
        let _ = diff_objects("x.o", Some(&changed), Some(&bad));
        let _ = diff_objects("x.o", Some(&bad), Some(&bad));
    }
}

#[test]
fn identical_objects_have_no_changes() {
    let good = valid_object();
    let diff = diff_objects("x.o", Some(&good), Some(&good)).unwrap();
    assert!(!diff.has_changes(), "{diff:#?}");
    assert!(diff.refusals.is_empty());
}

#[test]
fn object_in_one_build_only() {
    let good = valid_object();
    let added = diff_objects("x.o", None, Some(&good)).unwrap();
    assert!(
        added
            .functions
            .iter()
            .all(|f| f.status == hotsplice_objdiff::Status::New)
    );
    let removed = diff_objects("x.o", Some(&good), None).unwrap();
    assert!(
        removed
            .functions
            .iter()
            .all(|f| f.status == hotsplice_objdiff::Status::Removed)
    );
    assert!(!removed.functions.is_empty());
}

/// Inputs the fuzzer (`scripts/fuzz`) found crashing, kept as regressions: each must give a
/// report or an error, on either side of a diff.
#[test]
fn fuzzer_findings_never_panic() {
    let reference = valid_object();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("fuzz-"))
        {
            continue;
        }
        seen += 1;
        let data = std::fs::read(&path).unwrap();
        let _ = patch_objects("f.o", Some(&data), Some(&data));
        let _ = patch_objects("f.o", Some(&reference), Some(&data));
        let _ = patch_objects("f.o", Some(&data), Some(&reference));
        let _ = patch_objects("f.o", Some(&data), None);
    }
    assert!(seen > 0, "no fuzzer findings in {}", dir.display());
}
