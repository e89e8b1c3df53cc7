//! `hotsplice build` and `hotsplice info` on `fixtures/build/server` (a three-file C program
//! with a Makefile) and the diffs in `fixtures/build/patches/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::{json, scratch};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/build")
}

fn build(cache: &Path, patch: &str, out: &Path) -> Output {
    let fixtures = fixtures();
    crate::hs()
        .arg("build")
        .arg("--source")
        .arg(fixtures.join("server"))
        .arg("--diff")
        .arg(fixtures.join("patches").join(patch))
        .args(["--target", "server", "--json", "-j", "2"])
        .arg("--cache")
        .arg(cache)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run hotsplice build")
}

fn tree_listing(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        out.push((path.clone(), std::fs::read(&path).unwrap()));
    }
    out.sort();
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn builds_a_bundle_and_keeps_line_numbers_below_the_hunk() {
    let dir = scratch("build-fix");
    let before = tree_listing(&fixtures().join("server"));
    let out = build(&dir.join("cache"), "fix.patch", &dir.join("fix.hsp"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json("build", &out);
    assert_eq!(v["outcome"], "written");
    // `checksum` sits below the hunk and contains an assert (__LINE__): it must not change.
    assert_eq!(strings(&v["replaced"]), ["clamp"]);
    assert_eq!(strings(&v["rebuilt"]), ["util.o"]);
    assert_eq!(v["pre_cached"], Value::Bool(false));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pre build"),
        "progress is shown"
    );
    assert_eq!(
        before,
        tree_listing(&fixtures().join("server")),
        "the source tree is untouched"
    );

    let info = crate::hs()
        .arg("info")
        .arg(dir.join("fix.hsp"))
        .output()
        .unwrap();
    assert_eq!(info.status.code(), Some(0));
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("replace  clamp"), "{text}");
    assert!(text.contains("target    server (executable"), "{text}");

    let info = crate::hs()
        .args(["info", "--json"])
        .arg(dir.join("fix.hsp"))
        .output()
        .unwrap();
    let v = json("info", &info);
    assert_eq!(
        v["bundle"]["objects"][0]["replacements"][0]["name"],
        "clamp"
    );
    assert!(v["envelope"]["content_sha256"].as_str().unwrap().len() == 64);

    // The second patch for the same source reuses the pre build.
    let out = build(&dir.join("cache"), "valid.patch", &dir.join("valid.hsp"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json("build", &out);
    assert_eq!(v["pre_cached"], Value::Bool(true));
    // is_valid is inlined into handle, so handle is what changes.
    assert_eq!(strings(&v["replaced"]), ["handle"]);
}

/// The control for the test above: the same change compiled without hotsplice's `#line`
/// directive does change `checksum` (its assert's line number moves).
#[test]
fn without_line_directives_the_assert_below_the_hunk_changes() {
    let dir = scratch("build-control");
    let src = fixtures().join("server/util.c");
    let pre = std::fs::read_to_string(&src).unwrap();
    let post = pre.replace(
        "{\n    if (v < lo)",
        "{\n    if (lo > hi)\n        return lo;\n    if (v < lo)",
    );
    assert_ne!(pre, post);
    for (name, text) in [("pre", &pre), ("post", &post)] {
        let c = dir.join(format!("{name}.c"));
        std::fs::write(&c, text).unwrap();
        std::fs::copy(fixtures().join("server/util.h"), dir.join("util.h")).unwrap();
        let status = Command::new("gcc")
            .args(["-O2", "-g", "-c", "-ffunction-sections", "-fdata-sections"])
            .arg(&c)
            .arg("-o")
            .arg(dir.join(format!("{name}.o")))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let out = crate::hs()
        .args(["diff", "--json"])
        .arg(dir.join("pre.o"))
        .arg(dir.join("post.o"))
        .output()
        .unwrap();
    let v = json("diff", &out);
    let changed: Vec<&str> = v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "changed")
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(changed.contains(&"checksum"), "{changed:?}");
}

#[test]
fn data_change_is_refused_and_writes_no_bundle() {
    let dir = scratch("build-data");
    let out = build(&dir.join("cache"), "data.patch", &dir.join("data.hsp"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json("build", &out);
    assert_eq!(v["outcome"], "refused");
    assert_eq!(v["refusals"][0]["kind"], "data-changed");
    assert_eq!(v["refusals"][0]["symbol"], "max_length");
    assert!(!dir.join("data.hsp").exists());
}

#[test]
fn build_configuration_change_is_refused() {
    let dir = scratch("build-config");
    let out = build(&dir.join("cache"), "makefile.patch", &dir.join("m.hsp"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json("build", &out);
    assert_eq!(v["outcome"], "refused");
    assert_eq!(v["refusals"][0]["kind"], "build-changed");
    assert_eq!(v["refusals"][0]["symbol"], "Makefile");
    assert!(!dir.join("m.hsp").exists());
}

#[test]
fn comment_only_change_is_nothing_to_patch() {
    let dir = scratch("build-comment");
    let out = build(&dir.join("cache"), "comment.patch", &dir.join("c.hsp"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json("build", &out)["outcome"], "nothing-to-patch");
    assert!(!dir.join("c.hsp").exists());
}

#[test]
fn relative_paths_work() {
    // Regression: `patch` ran in the build tree with the diff's relative path.
    let dir = scratch("build-relative");
    let out = crate::hs()
        .current_dir(fixtures())
        .args([
            "build",
            "--source",
            "server",
            "--diff",
            "patches/fix.patch",
            "--target",
            "server",
        ])
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(dir.join("fix.hsp"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("fix.hsp").exists());
}

#[test]
fn diff_for_another_version_is_bad_input() {
    let dir = scratch("build-other");
    let out = build(
        &dir.join("cache"),
        "other-version.patch",
        &dir.join("o.hsp"),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not apply"), "{err}");
}

#[test]
fn a_diff_touching_two_files_makes_one_bundle() {
    let dir = scratch("build-two");
    let out = build(&dir.join("cache"), "two-files.patch", &dir.join("two.hsp"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json("build", &out);
    let mut replaced = strings(&v["replaced"]);
    replaced.sort();
    assert_eq!(replaced, ["clamp", "handle"]);
    let sealed = hotsplice_bundle_objects(&dir.join("two.hsp"));
    assert_eq!(sealed, ["handler.o", "util.o"]);
}

fn hotsplice_bundle_objects(path: &Path) -> Vec<String> {
    let out = crate::hs()
        .args(["info", "--json"])
        .arg(path)
        .output()
        .unwrap();
    let v = json("info", &out);
    let mut objects: Vec<String> = v["bundle"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["object"].as_str().unwrap().to_string())
        .collect();
    objects.sort();
    objects
}

#[test]
fn info_rejects_a_modified_bundle() {
    let dir = scratch("build-tamper");
    let out = build(&dir.join("cache"), "fix.patch", &dir.join("fix.hsp"));
    assert_eq!(out.status.code(), Some(0));
    let mut bytes = std::fs::read(dir.join("fix.hsp")).unwrap();
    let at = bytes.len() - 30;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(dir.join("bad.hsp"), &bytes).unwrap();
    let out = crate::hs()
        .arg("info")
        .arg(dir.join("bad.hsp"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its hash"));
}
