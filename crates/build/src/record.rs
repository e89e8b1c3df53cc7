//! What the compiler shim records about each compiler invocation.

use serde::{Deserialize, Serialize};

/// What an invocation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// Compiled one source into one object. A call compiling several sources (or compiling
    /// and linking at once) is logged as one record per object.
    Compile,
    /// Linked objects into a program or library (or a relocatable object with `-r`).
    Link,
}

/// One compile or link, as logged by the shim (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Compile or link.
    pub kind: RecordKind,
    /// The real compiler that ran (absolute path).
    #[serde(default)]
    pub compiler: String,
    /// The arguments passed to the real compiler (after the shim's additions). For a compile,
    /// arguments that compile exactly this record's object when run in `directory`.
    pub arguments: Vec<String>,
    /// The directory it ran in (absolute).
    pub directory: String,
    /// Source files, as given (one for a compile).
    pub sources: Vec<String>,
    /// Other inputs (objects, archives, libraries), as given.
    pub inputs: Vec<String>,
    /// The output file, as given (derived for `-c` without `-o`; the kept object of a
    /// compile+link call).
    pub output: Option<String>,
    /// The GNU ld map file the link wrote (absolute), when the shim asked for one.
    #[serde(default)]
    pub map: Option<String>,
    /// `-flto` was given.
    #[serde(default)]
    pub lto: bool,
    /// A relocatable (partial) link, `-r`.
    #[serde(default)]
    pub relocatable: bool,
    /// For a link with `-flto`: the ltrans objects it linked (absolute; see [`crate::lto`]).
    #[serde(default)]
    pub ltrans: Vec<String>,
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
