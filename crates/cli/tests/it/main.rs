//! End-to-end tests of the `hotsplice` binary: real C compiled by gcc, the binary run as a
//! user would, exit codes and output checked.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// `hotsplice build` and `info` on the bundled fixture project.
mod build;
/// Crash consistency: hotsplice killed at each step, then `recover`.
mod crash;
/// `hotsplice diff`.
mod diff;
/// `hotsplice check | apply | undo | list` on real processes.
mod live;

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The JSON on a command's stdout.
pub fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
