//! No false positives on real code: Debian's nginx source built twice, in two directories,
//! from the same source, must diff to zero changed, new or removed functions.
//!
//! Needs the source fetched by `scripts/setup --nginx` (scripts/test does it and sets
//! `HOTSPLICE_REQUIRE_NGINX=1`, which turns a missing source into a failure).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use hotsplice_objdiff::{Status, diff_objects};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn objects(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "o") {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out
}

#[test]
fn nginx_same_source_twice_has_no_changes() {
    let root = repo_root();
    let have_source = std::fs::read_dir(root.join(".cache/nginx"))
        .map(|mut d| d.any(|e| e.is_ok_and(|e| e.path().join("src/core").is_dir())))
        .unwrap_or(false);
    if !have_source {
        assert!(
            std::env::var_os("HOTSPLICE_REQUIRE_NGINX").is_none(),
            "nginx source missing under .cache/nginx (run scripts/setup --nginx)"
        );
        eprintln!("SKIPPED nginx_same_source_twice_has_no_changes: run scripts/setup --nginx");
        return;
    }
    let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nginx-pair");
    let status = Command::new(root.join("scripts/build-nginx-pair"))
        .arg(&dest)
        .status()
        .expect("run scripts/build-nginx-pair");
    assert!(status.success(), "building nginx twice failed");

    let (a, b) = (dest.join("a/objs"), dest.join("b/objs"));
    let (left, right) = (objects(&a), objects(&b));
    assert_eq!(left, right, "the two builds produced different object sets");
    assert!(left.len() > 100, "only {} objects built", left.len());

    let mut functions = 0;
    let mut problems = Vec::new();
    for rel in &left {
        let pre = std::fs::read(a.join(rel)).unwrap();
        let post = std::fs::read(b.join(rel)).unwrap();
        let diff = diff_objects(&rel.display().to_string(), Some(&pre), Some(&post))
            .unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        functions += diff.functions.len();
        for f in diff
            .functions
            .iter()
            .filter(|f| f.status != Status::Unchanged)
        {
            problems.push(format!(
                "{}: function {} {} {:?}",
                rel.display(),
                f.name,
                f.status,
                f.reasons
            ));
        }
        for d in diff.data.iter().filter(|d| d.status != Status::Unchanged) {
            problems.push(format!(
                "{}: data {} {} {:?}",
                rel.display(),
                d.name,
                d.status,
                d.reasons
            ));
        }
        for r in &diff.refusals {
            problems.push(format!(
                "{}: refusal {} {}",
                rel.display(),
                r.kind,
                r.detail
            ));
        }
    }
    assert!(functions > 1500, "only {functions} functions compared");
    assert!(
        problems.is_empty(),
        "false positives:\n{}",
        problems.join("\n")
    );
}
