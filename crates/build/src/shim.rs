//! The compiler shim: the `hotsplice` binary itself, run under the name `cc`, `gcc`, `g++`...
//!
//! During a build hotsplice puts a directory of links named like compilers (and like the
//! compiler launchers `ccache`, `distcc`, `sccache`, `icecc`) first in `PATH` and sets
//! `CC`/`CXX`, so every compiler invocation — from make, configure scripts, libtool or
//! `debian/rules` — goes through [`run`]. The shim:
//!
//! - adds `-ffunction-sections -fdata-sections` to every compilation and appends one
//!   [`Record`] per object (arguments that compile exactly that object, directory, source,
//!   output) to the log named by `HOTSPLICE_SHIM_LOG`;
//! - splits a call that compiles and links at once (`cc -o prog prog.c`) into one compile per
//!   source, writing objects it keeps under `<tree>/.hotsplice/kept/`, and the link of those
//!   objects — the same program, and objects to diff;
//! - compiles `-c -o -` to a kept object and copies it to standard output;
//! - asks every link writing into the tree for a GNU ld map (`-Wl,-Map=`), which says which
//!   archive members the link really used;
//! - runs a launcher's compiler directly (`ccache gcc ...` runs the shim's `gcc`): a cache
//!   could answer with an object compiled without the section flags;
//! - runs the real compiler found in `PATH` after the shim directory, skipping launcher
//!   masquerade directories (`/usr/lib/ccache`).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cmdline::{self, CommandLine, Mode};
use crate::record::{Record, RecordKind};

/// Environment variable naming the shim directory (removed from `PATH` to find the compiler).
pub const ENV_DIR: &str = "HOTSPLICE_SHIM_DIR";
/// Environment variable naming the log file the shim appends records to.
pub const ENV_LOG: &str = "HOTSPLICE_SHIM_LOG";
/// Environment variable naming the build tree (kept objects go under `.hotsplice/kept/`).
pub const ENV_TREE: &str = "HOTSPLICE_TREE";
/// Environment variable naming the directory for link maps.
pub const ENV_MAPS: &str = "HOTSPLICE_MAP_DIR";
/// Where kept objects live, relative to the tree.
pub const KEPT_DIR: &str = ".hotsplice/kept";

/// The compiler names the shim answers to.
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

/// Compiler launchers the shim answers to: it runs their compiler itself.
pub const LAUNCHER_NAMES: &[&str] = &["ccache", "distcc", "sccache", "icecc"];

/// The flags every compilation gets.
pub const SECTION_FLAGS: &[&str] = &["-ffunction-sections", "-fdata-sections"];

/// `hotsplice.h`, the header of semantic patches (hooks and shadow data).
pub const HEADER: &str = include_str!("../include/hotsplice.h");
/// Where `hotsplice.h` is, under the shim directory; the shims add it to every compile as a
/// system include directory.
pub const INCLUDE_DIR: &str = "include";

/// Whether a program name (argv\[0\]'s file name) is one the shim answers to.
pub fn is_compiler_name(name: &str) -> bool {
    COMPILER_NAMES.contains(&name) || LAUNCHER_NAMES.contains(&name)
}

/// Classifies a compiler command line into the records the shim would log for it (compile
/// records for `-c` calls and the link record; a compile+link call is split by [`run`]).
pub fn classify(args: &[String], cwd: &Path) -> Vec<Record> {
    let cl = cmdline::parse(&cmdline::expand_response_files(args, cwd));
    let directory = cwd.display().to_string();
    match cl.mode {
        Mode::Compile => compile_records(&cl, "", &directory),
        Mode::Link => vec![link_record(&cl, "", &directory, cl.args.clone(), None)],
        Mode::CompileAndLink | Mode::Other => Vec::new(),
    }
}

fn compile_records(cl: &CommandLine, compiler: &str, directory: &str) -> Vec<Record> {
    cl.sources
        .iter()
        .filter_map(|source| {
            let output = cl.compile_output(source)?;
            if output == "-" || output == "/dev/null" || source.path == "-" {
                return None;
            }
            let arguments = if cl.sources.len() == 1 {
                with_flags(&cl.args)
            } else {
                with_header(cl.compile_args(source, &output, SECTION_FLAGS))
            };
            Some(Record {
                kind: RecordKind::Compile,
                compiler: compiler.to_string(),
                arguments,
                directory: directory.to_string(),
                sources: vec![source.path.clone()],
                inputs: Vec::new(),
                output: Some(output),
                map: None,
                lto: cl.lto,
                relocatable: false,
                ltrans: Vec::new(),
            })
        })
        .collect()
}

fn link_record(
    cl: &CommandLine,
    compiler: &str,
    directory: &str,
    arguments: Vec<String>,
    map: Option<String>,
) -> Record {
    Record {
        kind: RecordKind::Link,
        compiler: compiler.to_string(),
        arguments,
        directory: directory.to_string(),
        sources: Vec::new(),
        inputs: cl.inputs.clone(),
        output: Some(cl.link_output()),
        map,
        lto: cl.lto,
        relocatable: cl.relocatable,
        ltrans: Vec::new(),
    }
}

fn with_flags(args: &[String]) -> Vec<String> {
    let mut out = args.to_vec();
    for flag in SECTION_FLAGS {
        if !out.iter().any(|a| a == flag) {
            out.push((*flag).to_string());
        }
    }
    with_header(out)
}

/// `args` with the directory of `hotsplice.h` (under the shim directory) as a system include
/// directory, so a patch can `#include <hotsplice.h>` whatever the build's own flags.
fn with_header(mut args: Vec<String>) -> Vec<String> {
    let Some(shims) = std::env::var_os(ENV_DIR) else {
        return args;
    };
    let dir = Path::new(&shims).join(INCLUDE_DIR).display().to_string();
    if !args.windows(2).any(|w| w[0] == "-isystem" && w[1] == dir) {
        args.push("-isystem".to_string());
        args.push(dir);
    }
    args
}

/// The real program `name` in `PATH`, skipping the shim directory and directories where the
/// name is a launcher's masquerade link (`/usr/lib/ccache/gcc` → ccache).
fn real_program(name: &str, shim_dir: Option<&Path>, skip_launchers: bool) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        if shim_dir.is_some_and(|s| same_dir(s, &dir)) {
            continue;
        }
        let candidate = dir.join(name);
        if !candidate.is_file() {
            continue;
        }
        if skip_launchers
            && candidate
                .canonicalize()
                .ok()
                .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
                .is_some_and(|n| LAUNCHER_NAMES.contains(&n.as_str()))
        {
            continue;
        }
        return Some(candidate);
    }
    None
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn append_records(records: &[Record]) -> Result<(), String> {
    let Some(log) = std::env::var_os(ENV_LOG) else {
        return Ok(());
    };
    let mut text = String::new();
    for record in records {
        text.push_str(&serde_json::to_string(record).unwrap_or_default());
        text.push('\n');
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", PathBuf::from(&log).display()))
}

/// Lexically absolute form of `path` (relative to `cwd`), without touching the file system.
fn absolute(cwd: &Path, path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in cwd.join(path).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The tree the build runs in, if `path` (absolute) lies inside it.
fn in_tree(path: &Path) -> Option<PathBuf> {
    let tree = PathBuf::from(std::env::var_os(ENV_TREE)?);
    path.starts_with(&tree).then_some(tree)
}

/// Where the object of `source`, compiled for `output` in `cwd`, is kept.
fn kept_object(tree: &Path, cwd: &Path, output: &str, source: &str) -> PathBuf {
    let rel_cwd = cwd.strip_prefix(tree).unwrap_or(cwd);
    let mut hasher = Sha256::new();
    hasher.update(rel_cwd.to_string_lossy().as_bytes());
    hasher.update([0]);
    hasher.update(output.as_bytes());
    hasher.update([0]);
    hasher.update(source.as_bytes());
    let digest = hotsplice_bundle::hex::encode(&hasher.finalize());
    let stem = Path::new(source)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stdin".to_string());
    tree.join(KEPT_DIR)
        .join(format!("{stem}-{}.o", &digest[..16]))
}

/// The map file for a link writing `output` (absolute).
fn map_file(output: &Path) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(ENV_MAPS)?);
    let digest = hotsplice_bundle::sha256_hex(output.to_string_lossy().as_bytes());
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(dir.join(format!("{name}-{}.map", &digest[..16])))
}

fn status_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(1)
}

/// Runs as the compiler shim. `argv0` is the name it was invoked under; `args` the arguments.
/// Returns the exit status when it does not become the real compiler.
pub fn run(argv0: &str, args: Vec<OsString>) -> i32 {
    let mut name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| argv0.to_string());
    let shim_dir = std::env::var_os(ENV_DIR).map(PathBuf::from);
    let mut args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut real = None;
    if LAUNCHER_NAMES.contains(&name.as_str()) {
        // `ccache gcc -c x.c`: run the compiler ourselves. Anything else (`ccache -s`) goes
        // to the real launcher.
        match args.first() {
            Some(first) if !first.starts_with('-') => {
                let compiler = args.remove(0);
                let base = Path::new(&compiler)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if compiler.contains('/')
                    && !shim_dir
                        .as_deref()
                        .is_some_and(|d| Path::new(&compiler).starts_with(d))
                {
                    real = Some(PathBuf::from(&compiler));
                }
                name = base;
            }
            _ => {
                let Some(launcher) = real_program(&name, shim_dir.as_deref(), false) else {
                    eprintln!("hotsplice shim: no real `{name}` found in PATH");
                    return 127;
                };
                let error = Command::new(&launcher).args(&args).exec();
                eprintln!("hotsplice shim: cannot run {}: {error}", launcher.display());
                return 127;
            }
        }
    }
    let real = match real.or_else(|| real_program(&name, shim_dir.as_deref(), true)) {
        Some(r) => r,
        None => {
            eprintln!("hotsplice shim: no real `{name}` found in PATH after the shim directory");
            return 127;
        }
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let cl = cmdline::parse(&cmdline::expand_response_files(&args, &cwd));
    let compiler = real.display().to_string();
    let directory = cwd.display().to_string();
    match cl.mode {
        Mode::Other => exec(&real, &args),
        Mode::Compile => {
            if cl.output.as_deref() == Some("-") && cl.sources.len() == 1 {
                return compile_to_stdout(&real, &cl, &cwd);
            }
            if let Err(e) = append_records(&compile_records(&cl, &compiler, &directory)) {
                eprintln!("hotsplice shim: {e}");
                return 1;
            }
            exec(&real, &with_flags(&args))
        }
        Mode::CompileAndLink => {
            let output = absolute(&cwd, &cl.link_output());
            match in_tree(&output) {
                Some(tree) if !cl.sources.iter().any(|s| s.path == "-") => {
                    compile_then_link(&real, &cl, &cwd, &tree)
                }
                _ => exec(&real, &with_flags(&args)),
            }
        }
        Mode::Link => {
            let output = absolute(&cwd, &cl.link_output());
            if in_tree(&output).is_none() {
                return exec(&real, &args);
            }
            let record = link_record(&cl, &compiler, &directory, args.clone(), None);
            link(&real, &cl, &cwd, record, Vec::new())
        }
    }
}

/// Runs a link writing into the tree: with a map, and for `-flto` with `-save-temps` and the
/// section flags so the link-time code generator's objects are kept (see [`crate::lto`]).
/// Appends `earlier` records (the compiles of a split call) and the link's.
fn link(
    real: &Path,
    cl: &CommandLine,
    cwd: &Path,
    mut record: Record,
    earlier: Vec<Record>,
) -> i32 {
    let output = absolute(cwd, &cl.link_output());
    let map = map_file(&output);
    let mut link_args = record.arguments.clone();
    if let Some(map) = &map {
        if let Some(dir) = map.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        link_args.push(format!("-Wl,-Map={}", map.display()));
    }
    record.map = map.as_ref().map(|m| m.display().to_string());
    if !cl.lto {
        record.arguments = link_args.clone();
        let mut records = earlier;
        records.push(record);
        if let Err(e) = append_records(&records) {
            eprintln!("hotsplice shim: {e}");
            return 1;
        }
        return exec(real, &link_args);
    }
    link_args.push("-save-temps".to_string());
    for flag in SECTION_FLAGS {
        if !link_args.iter().any(|a| a == flag) {
            link_args.push((*flag).to_string());
        }
    }
    record.arguments = link_args.clone();
    let started = std::time::SystemTime::now();
    let status = match Command::new(real)
        .args(&link_args)
        .current_dir(cwd)
        .status()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hotsplice shim: cannot run {}: {e}", real.display());
            return 127;
        }
    };
    let dest = map
        .as_ref()
        .map(|m| m.with_extension("ltrans"))
        .unwrap_or_else(|| output.with_extension("hotsplice-ltrans"));
    match crate::lto::keep_temps(&output, &dest, started) {
        Ok(kept) => record.ltrans = kept.iter().map(|p| p.display().to_string()).collect(),
        Err(e) => eprintln!(
            "hotsplice shim: keeping the LTO objects of {}: {e}",
            output.display()
        ),
    }
    if !status.success() {
        return status_code(status);
    }
    let mut records = earlier;
    records.push(record);
    if let Err(e) = append_records(&records) {
        eprintln!("hotsplice shim: {e}");
        return 1;
    }
    0
}

fn exec(real: &Path, args: &[String]) -> i32 {
    // argv[0] is the real path: gcc finds cc1 relative to it.
    let error = Command::new(real).args(args).exec();
    eprintln!("hotsplice shim: cannot run {}: {error}", real.display());
    127
}

/// `gcc -c -o - x.c`: compile to a kept object, record it, copy it to standard output.
fn compile_to_stdout(real: &Path, cl: &CommandLine, cwd: &Path) -> i32 {
    let source = &cl.sources[0];
    let tree = std::env::var_os(ENV_TREE).map(PathBuf::from);
    let Some(tree) = tree.filter(|t| cwd.starts_with(t)) else {
        return exec(real, &with_flags(&cl.args));
    };
    let object = kept_object(&tree, cwd, "-", &source.path);
    if let Some(dir) = object.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let object_arg = object.display().to_string();
    let arguments = with_header(cl.compile_args(source, &object_arg, SECTION_FLAGS));
    let status = match Command::new(real)
        .args(&arguments)
        .current_dir(cwd)
        .status()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hotsplice shim: cannot run {}: {e}", real.display());
            return 127;
        }
    };
    if !status.success() {
        return status_code(status);
    }
    let record = Record {
        kind: RecordKind::Compile,
        compiler: real.display().to_string(),
        arguments,
        directory: cwd.display().to_string(),
        sources: vec![source.path.clone()],
        inputs: Vec::new(),
        output: Some(object_arg),
        map: None,
        lto: cl.lto,
        relocatable: false,
        ltrans: Vec::new(),
    };
    if let Err(e) = append_records(&[record]) {
        eprintln!("hotsplice shim: {e}");
        return 1;
    }
    match std::fs::read(&object) {
        Ok(bytes) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                return 1;
            }
            0
        }
        Err(e) => {
            eprintln!("hotsplice shim: {}: {e}", object.display());
            1
        }
    }
}

/// `cc -o prog a.c b.c ...`: compile each source to a kept object, then link them.
fn compile_then_link(real: &Path, cl: &CommandLine, cwd: &Path, tree: &Path) -> i32 {
    let output = cl.link_output();
    let directory = cwd.display().to_string();
    let compiler = real.display().to_string();
    let mut objects = Vec::new();
    let mut records = Vec::new();
    for source in &cl.sources {
        let object = kept_object(tree, cwd, &output, &source.path);
        if let Some(dir) = object.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            eprintln!("hotsplice shim: {}: {e}", dir.display());
            return 1;
        }
        let object_arg = object.display().to_string();
        let arguments = with_header(cl.compile_args(source, &object_arg, SECTION_FLAGS));
        let status = match Command::new(real)
            .args(&arguments)
            .current_dir(cwd)
            .status()
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("hotsplice shim: cannot run {}: {e}", real.display());
                return 127;
            }
        };
        if !status.success() {
            return status_code(status);
        }
        records.push(Record {
            kind: RecordKind::Compile,
            compiler: compiler.clone(),
            arguments,
            directory: directory.clone(),
            sources: vec![source.path.clone()],
            inputs: Vec::new(),
            output: Some(object_arg.clone()),
            map: None,
            lto: cl.lto,
            relocatable: false,
            ltrans: Vec::new(),
        });
        objects.push(object_arg);
    }
    let link_args = cl.link_args(&objects);
    let mut record = link_record(cl, &compiler, &directory, link_args, None);
    let mut inputs = objects.clone();
    inputs.extend(cl.inputs.iter().cloned());
    record.inputs = inputs;
    link(real, cl, cwd, record, records)
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
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, RecordKind::Compile);
        assert_eq!(r[0].sources, ["src/a.c"]);
        assert_eq!(r[0].output.as_deref(), Some("objs/a.o"));
        assert!(r[0].arguments.iter().any(|a| a == "-ffunction-sections"));

        let r = classify(&args("-c src/b.c src/c.c -O2"), cwd);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].output.as_deref(), Some("c.o"));
        assert_eq!(
            r[1].arguments.join(" "),
            "-O2 -ffunction-sections -fdata-sections -c src/c.c -o c.o"
        );

        let r = classify(&args("-o prog a.o b.o -lm"), cwd);
        assert_eq!(r[0].kind, RecordKind::Link);
        assert_eq!(r[0].inputs, ["a.o", "b.o"]);

        assert!(classify(&args("-E x.c"), cwd).is_empty());
        assert!(classify(&args("--version"), cwd).is_empty());
        assert!(classify(&args("-MM -MF deps x.c"), cwd).is_empty());
        assert!(classify(&args("-c x.c -o /dev/null"), cwd).is_empty());
    }
}
