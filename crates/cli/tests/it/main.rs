//! End-to-end tests of the `hotsplice` binary: real C compiled by gcc, the binary run as a
//! user would, exit codes and output checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// Bad inputs and their outcomes (the table: `cargo xtask bad-input-table`).
mod bad_input;
/// `hotsplice build` and `info` on the bundled fixture project.
mod build;
/// Crash consistency: hotsplice killed at each step, then `recover`.
#[cfg(feature = "fault-injection")]
mod crash;
/// `hotsplice diff`.
mod diff;
/// Hostile conditions: concurrency, sharers, seccomp, signals, forged state, bad keys.
#[cfg(feature = "fault-injection")]
mod hostile;
/// The target exits, execs, forks, takes signals or is job-stopped during an apply.
#[cfg(feature = "fault-injection")]
mod lifecycle;
/// `hotsplice check | apply | undo | list` on real processes.
mod live;
/// Every command's `--json` output against its documented schema (docs/json.md).
mod schema;
/// Semantic patches: hooks and shadow data (`hotsplice.h`).
mod semantic;
/// `hotsplice build` on the ways projects build: one-call compile+link, bundled static
/// libraries, libtool, generated parsers, launchers, series; bad trees and failed builds.
mod styles;
/// The hostile fixture's target and bundles.
mod targets;
/// Signed bundles, trusted keys and the audit log.
mod trust;

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `hotsplice build --source SOURCE --diff DIFF --target TARGET --json --cache DIR/cache -o OUT`
/// and `extra` arguments (`--build CMD`...), which must succeed; the bundle's id.
pub fn build_bundle(
    source: &Path,
    diff: &Path,
    target: &str,
    extra: &[&str],
    dir: &Path,
    out: &Path,
) -> String {
    let result = hs()
        .arg("build")
        .arg("--source")
        .arg(source)
        .arg("--diff")
        .arg(diff)
        .args(["--target", target, "--json"])
        .args(extra)
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    succeeded(&result);
    json("build", &result)["id"].as_str().unwrap().to_string()
}

/// Asserts that a command exited 0, showing its stdout and stderr when it did not.
pub fn succeeded(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON on a command's stdout, checked against its documented schema
/// (`docs/json/<schema>.schema.json`).
pub fn json(schema: &str, output: &Output) -> Value {
    let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    if let Err(problems) = schema::check(schema, &value) {
        panic!("{problems}\nstdout:\n{value:#}");
    }
    value
}

/// The JSON on a command's stdout, checked against the schema of the command whose report
/// it is (by the keys only that report has: see `schema::infer`).
pub fn json_any(output: &Output) -> Value {
    let value: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    json(schema::infer(&value), output)
}

/// Where the test key pair lives: (secret key, trusted-keys directory, audit log).
pub fn test_keys() -> &'static (PathBuf, PathBuf, PathBuf) {
    static KEYS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = scratch("test-keys");
        let trusted = dir.join("trusted");
        std::fs::create_dir(&trusted).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hotsplice"))
            .args(["key", "generate", "--out"])
            .arg(trusted.join("tests"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let secret = dir.join("tests.key");
        std::fs::rename(trusted.join("tests.key"), &secret).unwrap();
        (secret, trusted, dir.join("audit.log"))
    })
}

/// The hotsplice binary, configured as a machine that trusts the tests' key: `build` signs
/// with it, `check`/`apply` trust it, and the audit log goes to a file under the target dir.
pub fn hs() -> Command {
    let (secret, trusted, audit) = test_keys();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hotsplice"));
    cmd.env("HOTSPLICE_SIGNING_KEY", secret)
        .env("HOTSPLICE_TRUST_DIR", trusted)
        .env("HOTSPLICE_AUDIT_LOG", audit);
    cmd
}

/// `make -s` in `dir`, which must succeed.
pub fn make(dir: &Path) {
    let out = Command::new("make")
        .arg("-s")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of the source tree `source` at `dest`, built with `make -s`.
pub fn built_copy(source: &Path, dest: &Path) {
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(source)
            .arg(dest)
            .status()
            .unwrap()
            .success()
    );
    make(dest);
}
