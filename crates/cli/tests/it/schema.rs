//! The documented JSON schemas (`docs/json/*.schema.json`, generated from the report types)
//! hold for what the binary really prints. `crate::json` checks every output the other tests
//! parse; the tests here run the commands that need no live target or build.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::scratch;

/// The validator of `docs/json/<name>.schema.json`, compiled once.
fn validator(name: &str) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(name.to_string())
        .or_insert_with(|| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../docs/json")
                .join(format!("{name}.schema.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let schema: Value = serde_json::from_str(&text).unwrap();
            Arc::new(jsonschema::validator_for(&schema).unwrap())
        })
        .clone()
}

/// Whether `value` is a document of `docs/json/<name>.schema.json`; else every problem.
pub fn check(name: &str, value: &Value) -> Result<(), String> {
    let validator = validator(name);
    let problems: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not a document of docs/json/{name}.schema.json:\n{}",
            problems.join("\n")
        ))
    }
}

/// The schema of a document whose command the caller does not name, by the keys only that
/// command's report has (an error object is valid in every schema but `build`'s).
pub fn infer(value: &Value) -> &'static str {
    let has = |key: &str| value.get(key).is_some();
    if value.is_array() {
        "kernel-list"
    } else if has("outcome") && !has("ok") {
        if has("transition_seconds") {
            "kernel"
        } else {
            "build"
        }
    } else if has("action") {
        "live"
    } else if has("recovered") {
        "recover"
    } else if has("uninstalled") {
        "uninstall"
    } else if has("installed") && has("patched") {
        "install"
    } else if has("installed") {
        "status"
    } else if has("envelope") {
        "info"
    } else if has("summary") {
        "diff"
    } else {
        "list"
    }
}

/// A root-owned directory no one else may write (what the state and store checks want).
fn private_dir(name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch(name);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    crate::hs().args(args).output().unwrap()
}

/// A process to list: a child that sleeps until dropped.
struct Sleeper(std::process::Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn outputs_without_a_live_target_match_their_schemas() {
    let state = private_dir("schema-state");
    let state = state.to_str().unwrap();
    let store = private_dir("schema-store");
    let store = store.to_str().unwrap();
    let sleeper = Sleeper(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    let cases: Vec<(&str, Vec<&str>, i32)> = vec![
        ("list", vec!["list", "--json", "--state-dir", state], 0),
        (
            "list",
            vec!["list", "--json", "--state-dir", state, "--pid", &pid],
            0,
        ),
        (
            "recover",
            vec!["recover", "--json", "--state-dir", state],
            0,
        ),
        (
            "status",
            vec!["status", "--json", "--state-dir", state, "--store", store],
            0,
        ),
        (
            "uninstall",
            vec!["uninstall", "hs-none", "--json", "--store", store],
            2,
        ),
        ("info", vec!["info", "/nonexistent.hsp", "--json"], 2),
        (
            "live",
            vec!["check", "/nonexistent.hsp", "--pid", &pid, "--json"],
            2,
        ),
        (
            "install",
            vec!["install", "/nonexistent.hsp", "--json", "--store", store],
            2,
        ),
        (
            "diff",
            vec!["diff", "/nonexistent.o", "/nonexistent.o", "--json"],
            2,
        ),
        (
            "build",
            vec![
                "build",
                "--source",
                "/nonexistent",
                "--diff",
                "/nonexistent.patch",
                "--target",
                "app",
                "-o",
                "/nonexistent/dir/fix.hsp",
                "--json",
            ],
            2,
        ),
        (
            "kernel",
            vec!["kernel", "undo", "hotsplice_no_such_patch", "--json"],
            -1,
        ),
        ("kernel-list", vec!["kernel", "list", "--json"], -1),
    ];
    for (schema, args, code) in &cases {
        let out = run(args);
        if *code >= 0 {
            assert_eq!(
                out.status.code(),
                Some(*code),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        crate::json(schema, &out);
    }
    drop(sleeper);
}

/// What a mutation does, and how.
type Mutation = (&'static str, fn(&mut Value));

/// The check can fail on real output: a field dropped, one added, a type changed, a word no
/// one documented.
#[test]
fn a_mutated_output_fails_its_schema() {
    let state = private_dir("schema-mutated");
    let sleeper = Sleeper(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    let out = run(&[
        "list",
        "--json",
        "--state-dir",
        state.to_str().unwrap(),
        "--pid",
        &pid,
    ]);
    let good = crate::json("list", &out);
    assert_eq!(good["processes"][0]["patches"], json!([]), "{good:#}");
    let mutations: [Mutation; 4] = [
        ("field dropped", |v| {
            v["processes"][0]
                .as_object_mut()
                .unwrap()
                .remove("unused_patch_memory");
        }),
        ("field added", |v| v["processes"][0]["state"] = json!({})),
        ("type changed", |v| v["processes"][0]["pid"] = json!("1")),
        ("ok not a boolean", |v| v["ok"] = json!("yes")),
    ];
    for (what, mutate) in mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(check("list", &bad).is_err(), "{what}: still valid: {bad:#}");
    }
    // An error object with a class word no one documented.
    let mut error = json!({"ok": false, "class": "bad-input", "error": "x"});
    assert!(check("list", &error).is_ok());
    error["class"] = json!("failed");
    assert!(check("list", &error).is_err());
    // Another command's document.
    assert!(check("recover", &good).is_err());
    drop(sleeper);
}

/// `hotsplice list | head -1`, `... --json | head -c 10`: a reader that went away ends the
/// command quietly — status 0, nothing on stderr, no panic (here the reader is gone before
/// the first write).
#[test]
fn a_closed_stdout_ends_quietly() {
    let state = private_dir("schema-closed-stdout");
    let state = state.to_str().unwrap();
    let sleeper = Sleeper(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    for args in [
        vec!["list", "--state-dir", state, "--pid", &pid],
        vec!["list", "--json", "--state-dir", state, "--pid", &pid],
        vec!["recover", "--json", "--state-dir", state],
        vec!["header"],
        vec!["info", "/nonexistent.hsp", "--json"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = crate::hs()
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if args[0] == "info" {
            // A failure is still reported on stderr, with its own status.
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
            assert!(stderr.is_empty(), "{args:?}: {stderr}");
        }
    }
    drop(sleeper);
}
