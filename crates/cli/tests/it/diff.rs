//! `hotsplice diff` end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{json, scratch};

use serde_json::Value;

fn compile(dir: &Path, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!("{name}.o"));
    let status = Command::new("gcc")
        .args(["-c", "-O2", "-ffunction-sections", "-fdata-sections"])
        .args(extra)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("gcc");
    assert!(status.success());
    out
}

fn hotsplice(args: &[&Path]) -> Output {
    crate::hs().args(args).output().expect("run hotsplice")
}

fn diff(args: &[&str], paths: &[&Path]) -> Output {
    let mut cmd = crate::hs();
    cmd.arg("diff").args(args).args(paths);
    cmd.output().expect("run hotsplice")
}

const PRE: &str =
    "int limit = 10;\nint check(int n) { return n < limit; }\nint twice(int n) { return 2 * n; }\n";
const FIXED: &str = "int limit = 10;\nint check(int n) { return n >= 0 && n < limit; }\nint twice(int n) { return 2 * n; }\n";
const DATA: &str =
    "int limit = 20;\nint check(int n) { return n < limit; }\nint twice(int n) { return 2 * n; }\n";

#[test]
fn patchable_change_exits_0_and_names_the_function() {
    let dir = scratch("patchable");
    let pre = compile(&dir, "pre", PRE, &["-g"]);
    let post = compile(&dir, "post", FIXED, &["-g"]);
    let out = diff(&[], &[&pre, &post]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("changed   function  check"), "{text}");
    assert!(
        !text.contains("twice"),
        "unchanged functions are not listed by default: {text}"
    );
    assert!(text.contains("patchable: 1 changed"), "{text}");

    let all = diff(&["--all"], &[&pre, &post]);
    assert!(String::from_utf8_lossy(&all.stdout).contains("unchanged function  twice"));

    let out = diff(&["--json"], &[&pre, &post]);
    assert_eq!(out.status.code(), Some(0));
    let v = json("diff", &out);
    assert_eq!(v["patchable"], Value::Bool(true));
    let functions = v["functions"].as_array().unwrap();
    let check = functions.iter().find(|f| f["name"] == "check").unwrap();
    assert_eq!(check["status"], "changed");
    assert_eq!(check["object"], "post.o");
    assert!(!check["reasons"].as_array().unwrap().is_empty());
    let twice = functions.iter().find(|f| f["name"] == "twice").unwrap();
    assert_eq!(twice["status"], "unchanged");
    assert!(v["refusals"].as_array().unwrap().is_empty());
    assert_eq!(v["summary"]["changed"], 1);
}

#[test]
fn refused_change_exits_1_with_the_symbol_named() {
    let dir = scratch("refused");
    let pre = compile(&dir, "pre", PRE, &["-g"]);
    let post = compile(&dir, "post", DATA, &["-g"]);
    let out = diff(&["--json"], &[&pre, &post]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v = json("diff", &out);
    assert_eq!(v["patchable"], Value::Bool(false));
    let refusal = &v["refusals"][0];
    assert_eq!(refusal["kind"], "data-changed");
    assert_eq!(refusal["symbol"], "limit");
    assert_eq!(refusal["object"], "post.o");
    assert!(refusal["detail"].as_str().unwrap().contains("limit"));

    let human = diff(&[], &[&pre, &post]);
    assert_eq!(human.status.code(), Some(1));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("REFUSED   data-changed limit"), "{text}");
}

#[test]
fn bad_input_exits_2_with_one_line_naming_the_file() {
    let dir = scratch("bad");
    let good = compile(&dir, "good", PRE, &[]);
    let text = dir.join("notes.o");
    std::fs::write(&text, "this is not an object file\n").unwrap();
    let out = diff(&[], &[&text, &good]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("notes.o") && err.contains("not an ELF file"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let missing = dir.join("missing.o");
    let out = diff(&[], &[&good, &missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.o"));

    let out = diff(&[], &[&good, &dir]);
    assert_eq!(out.status.code(), Some(2), "a file and a directory");

    // A linked executable is not a relocatable object.
    let exe = dir.join("exe");
    let src = dir.join("main.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    assert!(
        Command::new("gcc")
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status()
            .unwrap()
            .success()
    );
    let out = diff(&[], &[&exe, &exe]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a relocatable object"));

    let out = hotsplice(&[Path::new("diff")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing arguments is a usage error"
    );
}

#[test]
fn directories_pair_objects_by_relative_path() {
    let dir = scratch("trees");
    let (a, b) = (dir.join("a"), dir.join("b"));
    for side in [&a, &b] {
        std::fs::create_dir_all(side.join("src/core")).unwrap();
    }
    compile(&a.join("src/core"), "limits", PRE, &["-g"]);
    compile(&b.join("src/core"), "limits", FIXED, &["-g"]);
    compile(&a, "same", "int same(void) { return 1; }\n", &[]);
    compile(&b, "same", "int same(void) { return 1; }\n", &[]);
    compile(&b, "added", "int fresh(int x) { return x + 1; }\n", &[]);

    let out = diff(&["--json"], &[&a, &b]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json("diff", &out);
    let functions = v["functions"].as_array().unwrap();
    let find = |name: &str| {
        functions
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(find("check")["object"], "src/core/limits.o");
    assert_eq!(find("check")["status"], "changed");
    assert_eq!(find("fresh")["status"], "new");
    assert_eq!(find("fresh")["object"], "added.o");
    assert_eq!(find("same")["status"], "unchanged");
    assert_eq!(v["summary"]["objects"], 3);
}

#[test]
fn missing_debug_info_is_a_warning() {
    let dir = scratch("nodebug");
    let pre = compile(&dir, "pre", PRE, &[]);
    let post = compile(&dir, "post", FIXED, &[]);
    let out = diff(&["--json"], &[&pre, &post]);
    assert_eq!(out.status.code(), Some(0));
    let v = json("diff", &out);
    let warning = v["warnings"][0]["warning"].as_str().unwrap();
    assert!(
        warning.contains("struct layouts were not checked"),
        "{warning}"
    );
}

#[test]
fn help_teaches_the_exit_codes() {
    let out = crate::hs().args(["diff", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-ffunction-sections"), "{text}");
    assert!(text.contains("Exit status 0"), "{text}");
}
