//! Driving kbuild: a prepared kernel tree (cached), the changed translation units compiled
//! before and after the diff, and the livepatch module linked against the target's headers.
//!
//! This module runs commands and touches files; everything else in the crate is pure.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The compiler Debian builds its kernel with (`CONFIG_CC_VERSION_TEXT` must match).
pub const CC: &str = "gcc-12";
/// Flags that give every function and variable its own section.
pub const KCFLAGS: &str = "-ffunction-sections -fdata-sections";

/// A kernel tree configured and `make prepare`d, ready to compile single objects.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The tree.
    pub dir: PathBuf,
    /// The pristine source it mirrors (hard links).
    pub source: PathBuf,
    /// Whether this call prepared it (false: reused from the cache).
    pub fresh: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a command; its output is returned on failure as part of the error.
fn run(what: &str, command: &mut Command) -> Result<String, Error> {
    let out = command.output().map_err(|e| Error::Command {
        what: what.to_string(),
        output: format!("cannot run {:?}: {e}", command.get_program()),
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        return Err(Error::Command {
            what: what.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(text)
}

/// A short, stable hash of some strings (FNV-1a), for cache keys.
fn key(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Prepares (or reuses) the tree for `source` + `config` under `cache`. The tree mirrors the
/// source with hard links (the diff is applied by `patch`, which writes new files, and undone
/// by relinking), so preparing costs a `make prepare`, not a copy of 1.5 GB.
pub fn prepare(
    source: &Path,
    config: &Path,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Tree, Error> {
    let source = source.canonicalize().map_err(io(source))?;
    let makefile = std::fs::read(source.join("Makefile")).map_err(io(&source))?;
    let config_bytes = std::fs::read(config).map_err(io(config))?;
    let compiler = run("gcc-12 --version", Command::new(CC).arg("--version"))?;
    let dir = cache.join("kernel-tree").join(key(&[
        source.as_os_str().as_encoded_bytes(),
        &makefile,
        &config_bytes,
        compiler.as_bytes(),
    ]));
    let tree = dir.join("linux");
    let marker = dir.join("prepared");
    if marker.exists() {
        return Ok(Tree {
            dir: tree,
            source,
            fresh: false,
        });
    }
    progress("preparing the kernel tree (hard-linked copy, olddefconfig, make prepare)");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let linked = Command::new("cp")
        .arg("-al")
        .arg(&source)
        .arg(&tree)
        .status()
        .map_err(io(&tree))?;
    if !linked.success() {
        // Another file system: a real copy.
        let _ = std::fs::remove_dir_all(&tree);
        run(
            "copying the kernel source",
            Command::new("cp").arg("-a").arg(&source).arg(&tree),
        )?;
    }
    let dot_config = tree.join(".config");
    std::fs::copy(config, &dot_config).map_err(io(&dot_config))?;
    // Debian signs modules outside the build; without these a build would try to.
    run(
        "scripts/config",
        Command::new("scripts/config")
            .args(["--disable", "MODULE_SIG_ALL"])
            .args(["--set-str", "MODULE_SIG_KEY", ""])
            .args(["--set-str", "SYSTEM_TRUSTED_KEYS", ""])
            .current_dir(&tree),
    )?;
    run("make olddefconfig", make(&tree).arg("olddefconfig"))?;
    run("make prepare", make(&tree).arg("-j2").arg("prepare"))?;
    std::fs::write(&marker, b"").map_err(io(&marker))?;
    Ok(Tree {
        dir: tree,
        source,
        fresh: true,
    })
}

/// The headers a kernel patch may include (`#include "hotsplice-klp.h"`, or kpatch's
/// `"kpatch-macros.h"` and `"kpatch-syscall.h"`), embedded in the binary.
pub const HEADERS: &[(&str, &str)] = &[
    (
        "hotsplice-klp.h",
        include_str!("../include/hotsplice-klp.h"),
    ),
    (
        "kpatch-macros.h",
        include_str!("../include/kpatch-macros.h"),
    ),
    (
        "kpatch-syscall.h",
        include_str!("../include/kpatch-syscall.h"),
    ),
];

/// Where the patch headers of a tree are: beside it, searched after every kernel include
/// directory (`-idirafter`), so they never shadow a kernel header.
fn headers_dir(tree: &Path) -> PathBuf {
    tree.parent().unwrap_or(tree).join("hotsplice-include")
}

/// Writes the patch headers beside the tree (each build: they may be newer than the tree).
pub fn write_headers(tree: &Tree) -> Result<(), Error> {
    let dir = headers_dir(&tree.dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for (name, text) in HEADERS {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::write(&path, text).map_err(io(&path))?;
        }
    }
    Ok(())
}

fn make(tree: &Path) -> Command {
    let mut c = Command::new("make");
    c.current_dir(tree)
        .arg("-s")
        .arg(format!("CC={CC}"))
        .arg(format!(
            "KCFLAGS={KCFLAGS} -idirafter {}",
            headers_dir(tree).display()
        ));
    c
}

/// Compiles `objects` (tree-relative `.o` paths) and returns their bytes.
pub fn compile(tree: &Tree, objects: &[String]) -> Result<Vec<Vec<u8>>, Error> {
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    for object in objects {
        if !named(tree, object) {
            return Err(Error::NotBuilt(object.clone()));
        }
    }
    run(
        "compiling the changed translation units",
        make(&tree.dir).arg("-j2").args(objects),
    )?;
    objects
        .iter()
        .map(|o| {
            let path = tree.dir.join(o);
            std::fs::read(&path).map_err(io(&path))
        })
        .collect()
}

/// The `#include` graph of the tree (see [`crate::includes`]), scanned once per prepared
/// tree and cached beside it (`includes.txt`). Returns it and whether it came from the cache.
pub fn include_graph(tree: &Tree) -> Result<(crate::includes::Graph, bool), Error> {
    use crate::includes::{Graph, parse};
    let cache = tree.dir.parent().unwrap_or(&tree.dir).join("includes.txt");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        return Ok((Graph::from_text(&text), true));
    }
    let mut files: Vec<(String, Vec<crate::includes::Include>)> = Vec::new();
    let mut stack = vec![tree.dir.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(&tree.dir) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skip = [
                    "tools",
                    "Documentation",
                    "scripts",
                    "samples",
                    "usr",
                    ".git",
                ];
                let other_arch =
                    rel.starts_with("arch/") && rel.matches('/').count() == 1 && rel != "arch/x86";
                if !skip.contains(&rel.as_str()) && !other_arch {
                    stack.push(path);
                }
            } else if rel.ends_with(".c") || rel.ends_with(".h") {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                files.push((rel, parse(&String::from_utf8_lossy(&bytes))));
            }
        }
    }
    let known: std::collections::HashSet<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
    let graph = Graph::build(
        files.iter().map(|(f, i)| (f.as_str(), i.as_slice())),
        &|p| known.contains(p),
    );
    std::fs::write(&cache, graph.to_text()).map_err(io(&cache))?;
    Ok((graph, false))
}

/// Whether kbuild builds `object` on its own: its directory's Makefile (or Kbuild) names it.
/// A `.c` `#include`d by another (kernel/sched/*.c) is named nowhere.
pub fn named(tree: &Tree, object: &str) -> bool {
    let path = Path::new(object);
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    let dir = tree.dir.join(path.parent().unwrap_or(Path::new("")));
    ["Makefile", "Kbuild"].iter().any(|m| {
        std::fs::read_to_string(dir.join(m)).is_ok_and(|text| {
            file.as_deref().is_some_and(|f| {
                text.split(|c: char| c.is_whitespace() || c == '=' || c == ':' || c == '+')
                    .any(|token| token == f)
            })
        })
    })
}

/// Compiles what it can of `objects` (`make -k`): the bytes of each that built, `None` for
/// those that did not (a unit the configuration leaves out may not compile at all).
pub fn compile_some(tree: &Tree, objects: &[String]) -> Vec<Option<Vec<u8>>> {
    if objects.is_empty() {
        return Vec::new();
    }
    for object in objects {
        let _ = std::fs::remove_file(tree.dir.join(object));
    }
    let _ = make(&tree.dir).arg("-k").arg("-j2").args(objects).output();
    objects
        .iter()
        .map(|o| std::fs::read(tree.dir.join(o)).ok())
        .collect()
}

/// The module a compiled object belongs to (`-DMODULE` in its kbuild command), if any.
pub fn module_of(tree: &Tree, object: &str) -> Option<String> {
    let path = Path::new(object);
    let cmd = tree
        .dir
        .join(path.parent()?)
        .join(format!(".{}.cmd", path.file_name()?.to_string_lossy()));
    let text = std::fs::read_to_string(cmd).ok()?;
    if !text.contains("-DMODULE") {
        return None;
    }
    let name = text
        .split("-DKBUILD_MODNAME='\"")
        .nth(1)?
        .split('"')
        .next()?;
    Some(name.to_string())
}

/// Puts `files` (tree-relative) back as in the pristine source and removes the objects built
/// from them, so the next build starts from the pre state.
pub fn restore(tree: &Tree, files: &[PathBuf], objects: &[String]) -> Result<(), Error> {
    for file in files {
        let path = tree.dir.join(file);
        let original = tree.source.join(file);
        let _ = std::fs::remove_file(&path);
        for suffix in [".orig", ".rej"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        if original.exists() {
            std::fs::hard_link(&original, &path)
                .or_else(|_| std::fs::copy(&original, &path).map(|_| ()))
                .map_err(io(&path))?;
        }
    }
    for object in objects {
        let _ = std::fs::remove_file(tree.dir.join(object));
    }
    Ok(())
}

/// Links the livepatch module `name` from the patch object and registration source against
/// the kernel headers in `headers`, in `work`. Returns the linked `.ko` bytes and modpost's
/// warnings other than the expected undefined `.klp.sym.*` ones.
pub fn link_module(
    headers: &Path,
    work: &Path,
    name: &str,
    patch_object: &[u8],
    registration: &str,
) -> Result<(Vec<u8>, Vec<String>), Error> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(io(work))?;
    let write = |file: &str, bytes: &[u8]| {
        let path = work.join(file);
        std::fs::write(&path, bytes).map_err(io(&path))
    };
    write(
        "Kbuild",
        format!("obj-m := {name}.o\n{name}-y := hsp_register.o hsp_patch.o\n").as_bytes(),
    )?;
    write("hsp_patch.o_shipped", patch_object)?;
    // modpost reads each object's .cmd file for its sources (for srcversion); kbuild's copy
    // of a shipped object writes none.
    write(
        ".hsp_patch.o.cmd",
        b"cmd_hsp_patch.o := cp hsp_patch.o_shipped hsp_patch.o (made by hotsplice)\n",
    )?;
    write("hsp_register.c", registration.as_bytes())?;
    let out = run(
        "building the livepatch module (kbuild)",
        Command::new("make")
            .arg("-C")
            .arg(headers)
            .arg(format!("M={}", work.display()))
            .arg(format!("CC={CC}"))
            .arg("KBUILD_MODPOST_WARN=1")
            .arg("modules"),
    )?;
    let warnings = out
        .lines()
        .filter(|l| l.contains("WARNING") && !l.contains(".klp.sym."))
        // The count of the same expected warnings, when modpost summarises them.
        .filter(|l| !l.contains("unresolved symbol warnings because there were too many"))
        .map(str::to_string)
        .collect();
    let ko = work.join(format!("{name}.ko"));
    let bytes = std::fs::read(&ko).map_err(io(&ko))?;
    Ok((bytes, warnings))
}

/// Symbols vmlinux exports, from the headers' `Module.symvers`.
pub fn vmlinux_exports(headers: &Path) -> Result<std::collections::HashSet<String>, Error> {
    let path = headers.join("Module.symvers");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_crc, symbol, module) = (f.next()?, f.next()?, f.next()?);
            (module == "vmlinux").then(|| symbol.to_string())
        })
        .collect())
}

/// The target's vmlinux as an ELF image: `path` itself when it is one, else extracted from
/// a compressed kernel (`vmlinuz`) with the kernel tree's own `scripts/extract-vmlinux`.
pub fn vmlinux(tree: &Tree, path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    if bytes.starts_with(b"\x7fELF") {
        return Ok(bytes);
    }
    let out = Command::new(tree.dir.join("scripts/extract-vmlinux"))
        .arg(path)
        .output()
        .map_err(io(path))?;
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        return Err(Error::Command {
            what: format!("extracting vmlinux from {}", path.display()),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}
