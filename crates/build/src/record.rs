//! What the compiler shim records about each compiler invocation.

use serde::{Deserialize, Serialize};

/// What an invocation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// Compiled sources into an object (`-c`).
    Compile,
    /// Linked objects into a program or library.
    Link,
    /// Anything else (preprocessing, `--version`); not logged.
    Other,
}

/// One compiler invocation, as logged by the shim (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Compile or link.
    pub kind: RecordKind,
    /// The arguments passed to the real compiler (after the shim's additions).
    pub arguments: Vec<String>,
    /// The directory it ran in (absolute).
    pub directory: String,
    /// Source files, as given.
    pub sources: Vec<String>,
    /// Other inputs (objects, archives), as given.
    pub inputs: Vec<String>,
    /// The output file, as given (or derived for `-c` without `-o`).
    pub output: Option<String>,
}

/// Reads a shim log: one record per line; lines that do not parse are skipped and counted.
pub fn read_log(text: &str) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) => bad += 1,
        }
    }
    (records, bad)
}
