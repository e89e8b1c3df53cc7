//! `hotsplice build` on the ways real projects build (`fixtures/build/styles/`): one compiler
//! call that compiles and links (with a response file, `-x c` and a probe compiled and deleted
//! during the build), a bundled static library the incremental build never rebuilds, a
//! libtool shared library, a bison grammar, a series of patches; and the bad trees and failed
//! builds around them. Each program is built by plain `make` as a user would, run, patched
//! live with the bundle, and the patch undone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::live::{App, ok};
use crate::{json, scratch};

fn styles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/build/styles")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A copy of `styles/<style>/src` built with plain `make`, as the running program.
fn built_style(dir: &Path, style: &str) -> PathBuf {
    let tree = dir.join("run");
    crate::built_copy(&styles().join(style).join("src"), &tree);
    tree
}

/// `hotsplice build --json` of `styles/<style>/src` with `patch`.
fn build(dir: &Path, style: &str, patch: &str, target: &str, extra: &[&str]) -> Output {
    crate::hs()
        .arg("build")
        .arg("--source")
        .arg(styles().join(style).join("src"))
        .arg("--diff")
        .arg(styles().join(style).join(patch))
        .args(["--target", target, "--json", "-j", "2"])
        .args(extra)
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(dir.join(format!("{patch}.hsp")))
        .output()
        .unwrap()
}

fn written(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    let v = json("build", out);
    assert_eq!(v["outcome"], "written", "{v:#}");
    v
}

fn file_status<'a>(v: &'a Value, path: &str) -> (&'a str, &'a str) {
    let f = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in {:#}", v["files"]));
    (f["role"].as_str().unwrap(), f["status"].as_str().unwrap())
}

fn live(verb: &str, what: &str, pid: u32, state: &Path) -> Output {
    crate::hs()
        .args([
            verb,
            what,
            "--pid",
            &pid.to_string(),
            "--json",
            "--state-dir",
        ])
        .arg(state)
        .output()
        .unwrap()
}

/// Applies `bundle` to `app`, expects `after`, undoes it, expects `before`.
fn apply_and_undo(app: &App, bundle: &Path, before: &str, after: &str, state: &Path) {
    let applied = ok(&live("apply", bundle.to_str().unwrap(), app.pid(), state));
    app.expect(after);
    let id = applied["patch"].as_str().unwrap().to_string();
    ok(&live("undo", &id, app.pid(), state));
    app.expect(before);
}

fn start(path: &Path, env: &[(&str, &Path)]) -> App {
    let mut command = Command::new(path);
    command.current_dir(path.parent().unwrap());
    for (k, v) in env {
        command.env(k, v);
    }
    App::spawn(command)
}

#[test]
fn one_call_compile_and_link_with_a_probe_and_a_response_file_applies_live() {
    let dir = scratch("style-oneshot");
    let tree = built_style(&dir, "oneshot");
    let out = build(&dir, "oneshot", "fix.patch", "app", &[]);
    let v = written(&out);
    assert_eq!(v["replaced"], serde_json::json!(["compute"]));
    // The fix's regression test and its data are listed as ignored, not refused.
    assert_eq!(file_status(&v, "tests/run.sh"), ("test", "ignored"));
    assert_eq!(file_status(&v, "tests/expected.txt"), ("test", "ignored"));
    assert_eq!(file_status(&v, "work.c"), ("source", "rebuilt"));
    assert!(v["refusals"].as_array().unwrap().is_empty(), "{v:#}");

    let app = start(&tree.join("app"), &[]);
    app.expect("value 14 hello");
    apply_and_undo(
        &app,
        &dir.join("fix.patch.hsp"),
        "value 14 hello",
        "value 15 hello",
        &dir.join("state"),
    );
}

#[test]
fn a_fix_to_a_bundled_static_library_the_build_does_not_rebuild_is_recompiled() {
    let dir = scratch("style-vendored");
    let tree = built_style(&dir, "vendored");
    let out = build(&dir, "vendored", "scale.patch", "app", &[]);
    let v = written(&out);
    assert_eq!(v["recompiled"], serde_json::json!(["vendor/scale.o"]));
    assert_eq!(file_status(&v, "vendor/scale.c"), ("source", "rebuilt"));
    // The same through a header the sub-make's rule does not even list as a dependency of
    // the object: found by listing the object's includes.
    let out = build(&dir, "vendored", "offset.patch", "app", &[]);
    let offset = written(&out);
    assert_eq!(
        file_status(&offset, "vendor/scale.h"),
        ("source", "rebuilt")
    );
    assert_eq!(offset["recompiled"], serde_json::json!(["vendor/scale.o"]));

    let app = start(&tree.join("app"), &[]);
    app.expect("value 14");
    let state = dir.join("state");
    apply_and_undo(
        &app,
        &dir.join("scale.patch.hsp"),
        "value 14",
        "value 15",
        &state,
    );
    apply_and_undo(
        &app,
        &dir.join("offset.patch.hsp"),
        "value 14",
        "value 16",
        &state,
    );

    // A member of the archive the linker did not pull in is not part of the program.
    let out = build(&dir, "vendored", "unused.patch", "app", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json("build", &out);
    assert_eq!(v["outcome"], "nothing-to-patch");
    assert_eq!(
        file_status(&v, "vendor/unused.c"),
        ("source", "not-in-target")
    );
}

#[test]
fn a_libtool_shared_library_is_patched_in_the_running_program() {
    let dir = scratch("style-libtool");
    let tree = built_style(&dir, "libtool");
    let out = build(&dir, "libtool", "fix.patch", ".libs/libgreet.so.0.0.0", &[]);
    let v = written(&out);
    assert_eq!(v["replaced"], serde_json::json!(["greet_value"]));
    assert_eq!(v["rebuilt"], serde_json::json!([".libs/greet.o"]));
    // The fix calls greet_offset(), global in greet.o but local in the library (not
    // exported): the bundle must say so, or apply would not find it.

    let libs = tree.join(".libs");
    let app = start(&libs.join("app"), &[("LD_LIBRARY_PATH", &libs)]);
    app.expect("value 14");
    apply_and_undo(
        &app,
        &dir.join("fix.patch.hsp"),
        "value 14",
        "value 15",
        &dir.join("state"),
    );
}

#[test]
fn a_grammar_fix_is_regenerated_and_applied() {
    let dir = scratch("style-generator");
    let tree = built_style(&dir, "generator");
    let out = build(&dir, "generator", "fix.patch", "app", &[]);
    let v = written(&out);
    assert_eq!(file_status(&v, "parse.y"), ("generator", "regenerated"));
    assert_eq!(v["replaced"], serde_json::json!(["yyparse"]));
    let app = start(&tree.join("app"), &[]);
    app.expect("value 14");
    apply_and_undo(
        &app,
        &dir.join("fix.patch.hsp"),
        "value 14",
        "value 15",
        &dir.join("state"),
    );
}

#[test]
fn a_compiler_launcher_in_front_is_bypassed() {
    // `ccache` is not even installed: the shim runs the compiler it names itself (a cache
    // could answer with objects compiled without the section flags).
    let dir = scratch("style-ccache");
    let out = build(
        &dir,
        "oneshot",
        "fix.patch",
        "app",
        &["--build", "make CC='ccache gcc'"],
    );
    let v = written(&out);
    assert_eq!(v["replaced"], serde_json::json!(["compute"]));
}

#[test]
fn a_failed_build_is_reported_as_a_failed_build() {
    let dir = scratch("style-broken");
    let patch = dir.join("broken.patch");
    let fix = std::fs::read_to_string(styles().join("oneshot/fix.patch")).unwrap();
    std::fs::write(&patch, fix.replace("scale(x) + 1;", "scale(x) + ;")).unwrap();
    let out = crate::hs()
        .arg("build")
        .arg("--source")
        .arg(styles().join("oneshot/src"))
        .arg("--diff")
        .arg(&patch)
        .args(["--target", "app", "--json", "--cache"])
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(dir.join("b.hsp"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v = json("build", &out);
    assert_eq!(v["outcome"], "error");
    assert!(
        v["error"].as_str().unwrap().contains("post build failed"),
        "{v:#}"
    );
}

#[test]
fn a_tree_with_build_outputs_is_refused_with_what_to_do() {
    let dir = scratch("style-prebuilt");
    let tree = dir.join("src");
    crate::built_copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/build/server"),
        &tree,
    );
    let cache = dir.join("cache");
    let out = crate::hs()
        .arg("build")
        .arg("--source")
        .arg(&tree)
        .arg("--diff")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/build/patches/fix.patch"))
        .args(["--target", "server", "--json", "--cache"])
        .arg(&cache)
        .arg("-o")
        .arg(dir.join("f.hsp"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let error = json("build", &out)["error"].as_str().unwrap().to_string();
    assert!(error.contains("already contains build outputs"), "{error}");
    assert!(error.contains("make clean"), "{error}");
    // No cache entry is left half made.
    for entry in std::fs::read_dir(&cache).unwrap() {
        let entry = entry.unwrap().path();
        assert!(!entry.join("complete").exists());
        assert!(!entry.join("pristine").exists());
        assert!(!entry.join("tree").exists());
    }
    // With a build command that rebuilds everything, the same tree builds.
    let out = crate::hs()
        .arg("build")
        .arg("--source")
        .arg(&tree)
        .arg("--diff")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/build/patches/fix.patch"))
        .args([
            "--target",
            "server",
            "--json",
            "--build",
            "make clean && make",
            "--cache",
        ])
        .arg(&cache)
        .arg("-o")
        .arg(dir.join("f.hsp"))
        .output()
        .unwrap();
    written(&out);
}

#[test]
fn an_unusable_output_path_is_bad_input_before_building() {
    let dir = scratch("style-output");
    let out = crate::hs()
        .arg("build")
        .arg("--source")
        .arg(styles().join("oneshot/src"))
        .arg("--diff")
        .arg(styles().join("oneshot/fix.patch"))
        .args(["--target", "app", "--cache"])
        .arg(dir.join("cache"))
        .args(["-o", "/nonexistent-dir/fix.hsp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!dir.join("cache").exists(), "nothing was built");
}

#[test]
fn a_series_builds_each_patch_on_the_previous_and_applies_in_order() {
    let dir = scratch("style-series");
    let live_fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/live");
    let tree = dir.join("run");
    crate::built_copy(&live_fixtures.join("app"), &tree);
    let bundles = dir.join("bundles");
    let out = crate::hs()
        .arg("build")
        .arg("--source")
        .arg(live_fixtures.join("app"))
        .arg("--series")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/build/series"))
        .args(["--target", "app", "--json", "--cache"])
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(&bundles)
        .output()
        .unwrap();
    // One patch is refused: exit 1, the others still get their bundles.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json("build", &out);
    let patches = v["patches"].as_array().unwrap();
    let outcomes: Vec<&str> = patches
        .iter()
        .map(|p| p["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "written",
            "refused",
            "written",
            "nothing-to-patch",
            "written",
            "written"
        ]
    );
    assert_eq!(patches[1]["refusals"][0]["kind"], "data-changed");
    // The third is built on the first: its pre code is the first's post code.
    assert_eq!(
        patches[2]["stacks_on"],
        serde_json::json!([patches[0]["id"]])
    );
    assert_eq!(
        file_status(&patches[3], "tests/compute.sh"),
        ("test", "ignored")
    );
    // One full build, then incremental ones.
    assert!(patches[0]["seconds"]["pre_build"].as_f64().unwrap() > 0.0);
    for p in &patches[1..] {
        assert_eq!(p["seconds"]["pre_build"].as_f64(), Some(0.0));
    }
    let mut names: Vec<String> = std::fs::read_dir(&bundles)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "01-compute.hsp",
            "03-compute-again.hsp",
            "05-greeting.hsp",
            "06-uses-polite.hsp"
        ]
    );
    // The sixth calls polite(), new in the fifth: it needs the fifth (and the third, whose
    // compute() it replaces again) applied first.
    let mut needs: Vec<&str> = patches[5]["stacks_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    needs.sort_unstable();
    let mut want = [
        patches[2]["id"].as_str().unwrap(),
        patches[4]["id"].as_str().unwrap(),
    ];
    want.sort_unstable();
    assert_eq!(needs, want);

    let app = App::start(&tree.join("app"), 2);
    let state = dir.join("state");
    let pid = app.pid();
    // Out of order, the stacked bundle is refused: its pre code is not what runs.
    let early = live(
        "apply",
        bundles.join("03-compute-again.hsp").to_str().unwrap(),
        pid,
        &state,
    );
    assert_eq!(early.status.code(), Some(1), "{}", stderr(&early));
    app.expect("value 14 hello");
    let mut ids = Vec::new();
    for (name, expect) in [
        ("01-compute.hsp", "value 15 hello"),
        ("03-compute-again.hsp", "value 16 hello"),
        ("05-greeting.hsp", "value 16 hello, patched"),
        ("06-uses-polite.hsp", "value 17 hello, patched"),
    ] {
        let applied = ok(&live(
            "apply",
            bundles.join(name).to_str().unwrap(),
            pid,
            &state,
        ));
        ids.push(applied["patch"].as_str().unwrap().to_string());
        app.expect(expect);
    }
    // Undone in reverse order; the fifth cannot go before the sixth, which calls into it.
    let refused = live("undo", &ids[2], pid, &state);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    for (id, expect) in ids.iter().rev().zip([
        "value 16 hello, patched",
        "value 16 hello",
        "value 15 hello",
        "value 14 hello",
    ]) {
        ok(&live("undo", id, pid, &state));
        app.expect(expect);
    }
}

#[test]
fn a_link_time_optimised_program_is_patched_from_its_link_time_code() {
    let dir = scratch("style-lto");
    let tree = built_style(&dir, "lto");
    let out = build(&dir, "lto", "fix.patch", "app", &[]);
    let v = written(&out);
    assert_eq!(v["replaced"], serde_json::json!(["compute"]));
    // label() is inlined into main() at link time, across files: the fix changes main.
    let out = build(&dir, "lto", "inlined.patch", "app", &[]);
    let inlined = written(&out);
    assert_eq!(inlined["replaced"], serde_json::json!(["main"]));

    let app = start(&tree.join("app"), &[]);
    app.expect("value 14 lto");
    let state = dir.join("state");
    apply_and_undo(
        &app,
        &dir.join("fix.patch.hsp"),
        "value 14 lto",
        "value 15 lto",
        &state,
    );
    // main never returns: run-pre matching proves the code, the safety check refuses it.
    let busy = live(
        "apply",
        dir.join("inlined.patch.hsp").to_str().unwrap(),
        app.pid(),
        &state,
    );
    assert_eq!(busy.status.code(), Some(1), "{}", stderr(&busy));
    assert!(stderr(&busy).contains("main"), "{}", stderr(&busy));
    app.expect("value 14 lto");
}

#[test]
fn a_cxx_program_is_patched_and_exceptions_through_patch_code_are_refused() {
    let dir = scratch("style-cxx");
    let tree = built_style(&dir, "cxx");
    let out = build(&dir, "cxx", "fix.patch", "app", &[]);
    let v = written(&out);
    assert_eq!(
        v["replaced"],
        serde_json::json!(["_ZNK4shop7Counter5scaleEi"])
    );
    // An inline member function, emitted by both files: both copies are replaced.
    let out = build(&dir, "cxx", "inline.patch", "app", &[]);
    let inline = written(&out);
    assert_eq!(
        inline["replaced"].as_array().unwrap().len(),
        2,
        "{inline:#}"
    );
    // label() calls checked(), which throws: an exception would unwind through the new
    // code, which has no registered unwind table.
    let out = build(&dir, "cxx", "throw.patch", "app", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let refused = json("build", &out);
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["refusals"][0]["kind"], "cxx-unwind");
    assert_eq!(refused["refusals"][0]["symbol"], "_ZN4shop5labelB5cxx11Ei");
    assert!(!dir.join("throw.patch.hsp").exists());

    let app = start(&tree.join("app"), &[]);
    app.expect("value 14 n7 caught");
    let state = dir.join("state");
    apply_and_undo(
        &app,
        &dir.join("fix.patch.hsp"),
        "value 14 n7 caught",
        "value 15 n7 caught",
        &state,
    );
    // The exception thrown by checked() is still caught with the inline patch applied.
    apply_and_undo(
        &app,
        &dir.join("inline.patch.hsp"),
        "value 14 n7 caught",
        "value 16 n9 caught",
        &state,
    );
}
