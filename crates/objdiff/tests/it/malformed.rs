//! Malformed and foreign input must give a typed error, never a panic.

use std::path::Path;

use hotsplice_objdiff::{Error, Side, diff_objects};

fn valid_object() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("objdiff-malformed");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("m.c");
    std::fs::write(
        &src,
        "static int n; int f(int x) { static int c; c += x; return c + n; }\n\
         const char *g(void) { return \"hello\"; }\nint t[4] = {1, 2, 3, 4};\n",
    )
    .unwrap();
    let out = dir.join("m.o");
    crate::fixtures::compile(&src, &out, &["-O2"]);
    std::fs::read(out).unwrap()
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
    for len in (0..good.len()).step_by(7) {
        let _ = diff_objects("x.o", Some(&good[..len]), Some(&good));
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bad = good.clone();
        let at = (seed as usize) % bad.len();
        bad[at] = (seed >> 32) as u8;
        let _ = diff_objects("x.o", Some(&good), Some(&bad));
        let _ = diff_objects("x.o", Some(&bad), Some(&good));
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
