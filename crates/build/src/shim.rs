//! The compiler shim: the `hotsplice` binary itself, run under the name `cc`, `gcc`, `g++`...
//!
//! During a build hotsplice puts a directory of links named like compilers first in `PATH`
//! (and sets `CC`/`CXX`), so every compiler invocation — from make, configure scripts or
//! `debian/rules` — goes through [`run`]. The shim adds `-ffunction-sections -fdata-sections`
//! to compilations, appends a [`Record`] (arguments, directory, sources, output) to the log
//! named by `HOTSPLICE_SHIM_LOG`, and runs the real compiler found in `PATH` after the shim
//! directory.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::record::{Record, RecordKind};

/// Environment variable naming the shim directory (removed from `PATH` to find the compiler).
pub const ENV_DIR: &str = "HOTSPLICE_SHIM_DIR";
/// Environment variable naming the log file the shim appends records to.
pub const ENV_LOG: &str = "HOTSPLICE_SHIM_LOG";

/// The names the shim answers to.
pub const COMPILER_NAMES: &[&str] = &[
    "cc",
    "gcc",
    "c++",
    "g++",
    "gcc-12",
    "g++-12",
    "x86_64-linux-gnu-gcc",
    "x86_64-linux-gnu-g++",
    "x86_64-linux-gnu-gcc-12",
    "x86_64-linux-gnu-g++-12",
];

/// The flags every compilation gets.
pub const SECTION_FLAGS: &[&str] = &["-ffunction-sections", "-fdata-sections"];

/// Whether a program name (argv\[0\]'s file name) is one the shim answers to.
pub fn is_compiler_name(name: &str) -> bool {
    COMPILER_NAMES.contains(&name)
}

fn source_like(arg: &str) -> bool {
    [".c", ".cc", ".cpp", ".cxx", ".C", ".s", ".S", ".i"]
        .iter()
        .any(|ext| arg.ends_with(ext))
}

/// Classifies a compiler command line and finds its sources and output.
pub fn classify(args: &[String], cwd: &Path) -> Record {
    let mut compile = false;
    let mut preprocess_only = false;
    let mut output = None;
    let mut sources = Vec::new();
    let mut inputs = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        match arg.as_str() {
            "-c" => compile = true,
            "-E" | "-S" | "-M" | "-MM" => preprocess_only = true,
            "-o" => {
                output = args.get(i + 1).cloned();
                i += 1;
            }
            // Options whose value is the next argument.
            "-MF" | "-MT" | "-MQ" | "-I" | "-D" | "-U" | "-include" | "-isystem" | "-x" | "-L"
            | "-l" | "-Xlinker" | "-idirafter" | "-iquote" => i += 1,
            _ if arg.starts_with("-o") && arg.len() > 2 => output = Some(arg[2..].to_string()),
            _ if arg.starts_with('-') => {}
            _ if source_like(arg) => sources.push(arg.clone()),
            _ => inputs.push(arg.clone()),
        }
        i += 1;
    }
    let kind = if preprocess_only {
        RecordKind::Other
    } else if compile && !sources.is_empty() {
        RecordKind::Compile
    } else if !compile && (!inputs.is_empty() || !sources.is_empty()) {
        RecordKind::Link
    } else {
        RecordKind::Other
    };
    if kind == RecordKind::Compile && output.is_none() && sources.len() == 1 {
        // `gcc -c dir/foo.c` writes foo.o in the current directory.
        let stem = Path::new(&sources[0])
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        output = Some(format!("{stem}.o"));
    }
    Record {
        kind,
        arguments: args.to_vec(),
        directory: cwd.display().to_string(),
        sources,
        inputs,
        output,
    }
}

/// The real compiler: `name` in `PATH`, skipping the shim directory.
fn real_compiler(name: &str, shim_dir: Option<&Path>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        if shim_dir.is_some_and(|s| same_dir(s, &dir)) {
            continue;
        }
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Runs as the compiler shim. `argv0` is the name it was invoked under; `args` the arguments.
/// Returns only on failure (on success the process becomes the real compiler).
pub fn run(argv0: &str, args: Vec<OsString>) -> i32 {
    let name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| argv0.to_string());
    let shim_dir = std::env::var_os(ENV_DIR).map(PathBuf::from);
    let Some(real) = real_compiler(&name, shim_dir.as_deref()) else {
        eprintln!("hotsplice shim: no real `{name}` found in PATH after the shim directory");
        return 127;
    };
    let mut args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut record = classify(&args, &cwd);
    if record.kind == RecordKind::Compile {
        for flag in SECTION_FLAGS {
            if !args.iter().any(|a| a == flag) {
                args.push((*flag).to_string());
            }
        }
        record.arguments = args.clone();
    }
    if record.kind != RecordKind::Other
        && let Some(log) = std::env::var_os(ENV_LOG)
    {
        let line = serde_json::to_string(&record).unwrap_or_default();
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            eprintln!(
                "hotsplice shim: cannot append to {}: {e}",
                PathBuf::from(&log).display()
            );
            return 1;
        }
    }
    // argv[0] is the real path: gcc finds cc1 relative to it.
    let error = Command::new(&real).args(&args).exec();
    eprintln!("hotsplice shim: cannot run {}: {error}", real.display());
    127
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn classifies_compiles_links_and_others() {
        let cwd = Path::new("/b");
        let r = classify(&args("-c -O2 -I src -o objs/a.o src/a.c"), cwd);
        assert_eq!(r.kind, RecordKind::Compile);
        assert_eq!(r.sources, ["src/a.c"]);
        assert_eq!(r.output.as_deref(), Some("objs/a.o"));

        let r = classify(&args("-c src/b.c"), cwd);
        assert_eq!(r.output.as_deref(), Some("b.o"));

        let r = classify(&args("-o prog a.o b.o -lm"), cwd);
        assert_eq!(r.kind, RecordKind::Link);
        assert_eq!(r.inputs, ["a.o", "b.o"]);

        assert_eq!(classify(&args("-E x.c"), cwd).kind, RecordKind::Other);
        assert_eq!(classify(&args("--version"), cwd).kind, RecordKind::Other);
        assert_eq!(
            classify(&args("-MM -MF deps x.c"), cwd).kind,
            RecordKind::Other
        );
    }
}
