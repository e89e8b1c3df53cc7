//! Golden tests over `fixtures/objdiff/<case>/`: each case's `pre.c` and `post.c` are compiled
//! by gcc at test time in four variants (`-O2`, `-O2 -fPIC`, `-O3`, `-O3 -fPIC`, all with
//! `-g -ffunction-sections -fdata-sections`), diffed, and the classification compared with
//! `expected` (or `expected.<variant>` where a variant legitimately differs). A case may add
//! compiler flags in a `flags` file.
//!
//! `UPDATE_EXPECT=1 cargo test -p hotsplice-objdiff --test it fixtures` rewrites the goldens;
//! review the diff before committing it.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use hotsplice_objdiff::{ObjectDiff, Status, diff_objects, name::canonical};

const VARIANTS: &[(&str, &[&str])] = &[
    ("O2", &["-O2"]),
    ("O2-pic", &["-O2", "-fPIC"]),
    ("O3", &["-O3"]),
    ("O3-pic", &["-O3", "-fPIC"]),
];

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/objdiff")
}

/// Compiles `source` with the fixture flags into `out`; panics with gcc's output on failure.
pub fn compile(source: &Path, out: &Path, flags: &[&str]) {
    let output = Command::new("gcc")
        .args(["-c", "-g", "-ffunction-sections", "-fdata-sections"])
        .args(flags)
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .expect("gcc must be installed (scripts/setup installs it)");
    assert!(
        output.status.success(),
        "gcc failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The golden form of a diff: classifications and refusals, one per line, sorted. Names are
/// shown without GCC's counters, so goldens do not depend on numbering.
pub fn render(diff: &ObjectDiff) -> String {
    let mut lines = Vec::new();
    for f in diff
        .functions
        .iter()
        .filter(|f| f.status != Status::Unchanged)
    {
        lines.push(format!("function {} {}", f.status, canonical(&f.name)));
    }
    for d in diff.data.iter().filter(|d| d.status != Status::Unchanged) {
        lines.push(format!("data {} {}", d.status, canonical(&d.name)));
    }
    for b in &diff.bindings {
        let to = match (&b.existing, b.compiler_private) {
            (_, true) => "fresh".to_string(),
            (Some(e), false) => canonical(e),
            (None, false) => "new".to_string(),
        };
        lines.push(format!(
            "binding {} {} -> {to}",
            canonical(&b.function),
            canonical(&b.symbol)
        ));
    }
    for r in &diff.refusals {
        lines.push(format!("refusal {} {}", r.kind, canonical(&r.symbol)));
    }
    lines.sort();
    lines.dedup();
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "patchable {}",
        if diff.refusals.is_empty() {
            "yes"
        } else {
            "no"
        }
    );
    out
}

fn run_case(case: &Path, failures: &Mutex<Vec<String>>) {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let extra = std::fs::read_to_string(case.join("flags")).unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut outputs = Vec::new();
    for (variant, flags) in VARIANTS {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("objdiff-fixtures")
            .join(&name)
            .join(variant);
        std::fs::create_dir_all(&dir).unwrap();
        let flags: Vec<&str> = flags.iter().copied().chain(extra.iter().copied()).collect();
        compile(&case.join("pre.c"), &dir.join("pre.o"), &flags);
        compile(&case.join("post.c"), &dir.join("post.o"), &flags);
        let pre = std::fs::read(dir.join("pre.o")).unwrap();
        let post = std::fs::read(dir.join("post.o")).unwrap();
        let diff = diff_objects(&format!("{name}.o"), Some(&pre), Some(&post))
            .unwrap_or_else(|e| panic!("{name} [{variant}]: diff failed: {e}"));
        outputs.push((*variant, render(&diff)));
    }
    if update {
        let base = outputs[0].1.clone();
        std::fs::write(case.join("expected"), &base).unwrap();
        for (variant, out) in &outputs {
            let path = case.join(format!("expected.{variant}"));
            if *out != base {
                std::fs::write(path, out).unwrap();
            } else if path.exists() {
                std::fs::remove_file(path).unwrap();
            }
        }
        return;
    }
    for (variant, out) in outputs {
        let specific = case.join(format!("expected.{variant}"));
        let path = if specific.exists() {
            specific
        } else {
            case.join("expected")
        };
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != out {
            failures.lock().unwrap().push(format!(
                "{name} [{variant}] differs from {}:\n--- expected\n{expected}--- actual\n{out}",
                path.display()
            ));
        }
    }
}

#[test]
fn fixtures() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("fixtures/objdiff exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("pre.c").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "expected at least 30 fixture cases, found {}",
        cases.len()
    );
    let failures = Mutex::new(Vec::new());
    let next = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let index = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    let Some(case) = cases.get(index) else { break };
                    run_case(case, &failures);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} fixture variant(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A `layout-changed` refusal says which members moved and points to the shadow-data rewrite.
#[test]
fn layout_refusal_names_the_members_and_the_way_out() {
    let case = fixtures_root().join("layout-member-added");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("objdiff-layout-detail");
    std::fs::create_dir_all(&dir).unwrap();
    compile(&case.join("pre.c"), &dir.join("pre.o"), &["-O2"]);
    compile(&case.join("post.c"), &dir.join("post.o"), &["-O2"]);
    let pre = std::fs::read(dir.join("pre.o")).unwrap();
    let post = std::fs::read(dir.join("post.o")).unwrap();
    let diff = diff_objects("conn.o", Some(&pre), Some(&post)).unwrap();
    let refusal = diff
        .refusals
        .iter()
        .find(|r| r.kind.to_string() == "layout-changed")
        .expect("a layout-changed refusal");
    let detail = &refusal.detail;
    assert!(
        detail.contains("member `flags` moved from offset 4 to offset 8"),
        "{detail}"
    );
    assert!(
        detail.contains("member `state` added at offset 4"),
        "{detail}"
    );
    assert!(
        detail.contains("attach `state` to live objects")
            && detail.contains("docs/semantic-patches.md"),
        "{detail}"
    );
}
