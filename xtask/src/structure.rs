//! `cargo xtask check-structure`: structural rules of the workspace that the compiler does not
//! enforce, checked on the source text (its unit tests run them in the default suite).
//!
//! - **No module cycles.** In every crate, the modules (one per top-level file of `src/`) form
//!   a DAG: `crate::x` and `use crate::{x, y::Z}` references give the edges, a name the crate
//!   root re-exports counts as a reference to the module that defines it. Test modules
//!   (`#[cfg(test)] mod …`) are not counted.
//! - **No bare relocation numbers.** Relocation types are named (`object::elf::R_X86_64_*`)
//!   and classified (`hotsplice_reloc::RelocClass`) in one place, `crates/reloc`; anywhere
//!   else an `r_type` compared with, matched against or set to a number literal, or a
//!   `RelocationType(<number>)`, is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module cycles that are known and being fixed elsewhere: (crate directory, the cycle's
/// modules, sorted). Each entry names its issue and is removed when the fix is merged.
const ALLOWED_CYCLES: &[(&str, &[&str])] = &[];

/// The crate that owns relocation numbers: its sources are exempt from the number rule.
const RELOC_CRATE: &str = "crates/reloc";

/// This file: its tests hold bare relocation numbers on purpose.
const THIS_FILE: &str = "xtask/src/structure.rs";

/// `cargo xtask check-structure [ROOT]`: prints every violation (in the workspace at `ROOT`,
/// by default this one), fails if there is one.
pub fn check_structure(root: Option<&str>) -> anyhow::Result<()> {
    let root = root.map_or_else(workspace_root, PathBuf::from);
    let mut problems = Vec::new();
    for cycle in module_cycles(&root)? {
        if cycle.allowed {
            println!("{cycle}");
        } else {
            problems.push(cycle.to_string());
        }
    }
    problems.extend(bare_relocation_numbers(&root)?);
    if problems.is_empty() {
        println!("structure: no module cycles (but the allowed ones), no bare relocation numbers");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    anyhow::bail!("{} structural problem(s)", problems.len())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// A cycle among the modules of one crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The crate's directory, relative to the workspace (`crates/objdiff`).
    pub krate: String,
    /// Every module of the strongly connected component, sorted.
    pub modules: Vec<String>,
    /// One cycle through them, as a path that returns to its start.
    pub path: Vec<String>,
    /// Whether it is on the allow-list (known, fixed on another branch).
    pub allowed: bool,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: module cycle among {{{}}}: {}{}",
            self.krate,
            self.modules.join(", "),
            self.path.join(" -> "),
            if self.allowed { " (allowed)" } else { "" }
        )
    }
}

/// The crates of the workspace: `crates/*` and `xtask`, with their `src` directories.
fn crate_dirs(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))? {
        let path = entry?.path();
        if path.join("src").is_dir() {
            dirs.push(path);
        }
    }
    dirs.push(root.join("xtask"));
    dirs.sort();
    Ok(dirs)
}

/// Every module cycle of every crate, allowed ones included.
pub fn module_cycles(root: &Path) -> anyhow::Result<Vec<Cycle>> {
    let mut cycles = Vec::new();
    for dir in crate_dirs(root)? {
        let krate = dir
            .strip_prefix(root)
            .unwrap_or(&dir)
            .to_string_lossy()
            .into_owned();
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir.join("src"))? {
            let path = entry?.path();
            let (Some(stem), Some("rs")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            files.insert(stem.to_string(), std::fs::read_to_string(&path)?);
        }
        for mut cycle in cycles_of(&files) {
            cycle.allowed = ALLOWED_CYCLES
                .iter()
                .any(|(k, m)| *k == krate && cycle.modules == *m);
            cycle.krate = krate.clone();
            cycles.push(cycle);
        }
    }
    Ok(cycles)
}

/// The cycles among the modules of one crate, given as module name → source (the root is
/// `lib` or `main`).
pub fn cycles_of(files: &BTreeMap<String, String>) -> Vec<Cycle> {
    let modules: BTreeSet<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|m| !matches!(*m, "lib" | "main"))
        .collect();
    // Names a module defines at its top level, to follow the root's re-exports.
    let mut defined_in: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (module, text) in files {
        if !modules.contains(module.as_str()) {
            continue;
        }
        for name in top_level_items(&without_tests(&strip_comments(text))) {
            defined_in.entry(name).or_default().push(module);
        }
    }
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (module, text) in files {
        let Some(&from) = modules.get(module.as_str()) else {
            continue;
        };
        let targets = edges.entry(from).or_default();
        for name in crate_references(&without_tests(&strip_comments(text))) {
            let to = match modules.get(name.as_str()) {
                Some(&m) => Some(m),
                None => match defined_in.get(&name).map(Vec::as_slice) {
                    Some([m]) => Some(*m),
                    _ => None,
                },
            };
            if let Some(to) = to
                && to != from
            {
                targets.insert(to);
            }
        }
    }
    strongly_connected(&modules, &edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|component| {
            let path = a_cycle(&component, &edges);
            let mut modules: Vec<String> = component.iter().map(|m| m.to_string()).collect();
            modules.sort();
            Cycle {
                krate: String::new(),
                modules,
                path,
                allowed: false,
            }
        })
        .collect()
}

/// The text with `//` comments (doc comments included: their links are not dependencies)
/// and `/* */` comments removed. String literals are kept as they are.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut last = ' ';
                for n in chars.by_ref() {
                    if last == '*' && n == '/' {
                        break;
                    }
                    if n == '\n' {
                        out.push('\n');
                    }
                    last = n;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The text without its test modules: from a `#[cfg(test)]` line followed by a `mod` line
/// (at the top level, so to the end of that module) onwards.
fn without_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|l| l.starts_with("mod ") || l.starts_with("pub mod "))
        {
            if lines[i + 1].trim_end().ends_with(';') {
                // `mod tests;`: a file of its own, not one of the crate's top-level modules.
                i += 2;
                continue;
            }
            // Skip to the closing brace at column 0.
            i += 2;
            while i < lines.len() && lines[i] != "}" {
                i += 1;
            }
            i += 1;
            continue;
        }
        out.push_str(lines[i]);
        out.push('\n');
        i += 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Names defined at the top level (column 0) of a module: `pub struct X`, `pub(crate) fn y`.
fn top_level_items(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix("pub(crate) ")
            .or_else(|| line.strip_prefix("pub "))
        else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let mut kind = words.next().unwrap_or("");
        if matches!(kind, "const" | "async" | "unsafe") && rest.contains(" fn ") {
            kind = words.next().unwrap_or("");
        }
        if matches!(
            kind,
            "struct" | "enum" | "fn" | "type" | "trait" | "const" | "static" | "mod" | "union"
        ) && let Some(word) = words.next()
        {
            let name: String = word.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

/// The first path segment of every `crate::…` reference, with `crate::{a, b::c}` groups
/// expanded.
fn crate_references(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("crate::") {
        let start = at + found;
        at = start + "crate::".len();
        if start > 0 && (is_ident(bytes[start - 1] as char) || bytes[start - 1] == b'$') {
            continue;
        }
        let rest = &text[at..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && is_ident(c) => {
                        item_start = false;
                        let name: String =
                            group[i..].chars().take_while(|&c| is_ident(c)).collect();
                        names.push(name);
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names.retain(|n| !matches!(n.as_str(), "self" | "super" | "crate"));
    names
}

/// Tarjan's strongly connected components.
fn strongly_connected<'a>(
    nodes: &BTreeSet<&'a str>,
    edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, edges: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, edges, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.components.push(component);
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for &v in nodes {
        if !state.index.contains_key(v) {
            visit(v, edges, &mut state);
        }
    }
    state.components
}

/// A shortest cycle through the component's first module (breadth-first inside it).
fn a_cycle(component: &[&str], edges: &BTreeMap<&str, BTreeSet<&str>>) -> Vec<String> {
    let inside: BTreeSet<&str> = component.iter().copied().collect();
    let start = *inside.iter().next().expect("a component has a module");
    let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in edges.get(v).into_iter().flatten() {
            if !inside.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![start.to_string()];
                let mut at = v;
                while at != start {
                    path.push(at.to_string());
                    at = previous[at];
                }
                path.push(start.to_string());
                path.reverse();
                return path;
            }
            if !previous.contains_key(w) {
                previous.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    inside.iter().map(|m| m.to_string()).collect()
}

/// Every Rust file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Every bare relocation number in the workspace's sources and tests (outside
/// [`RELOC_CRATE`]), as `path:line: text`.
pub fn bare_relocation_numbers(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for dir in crate_dirs(root)? {
        if dir.ends_with(RELOC_CRATE) {
            continue;
        }
        rust_files(&dir.join("src"), &mut files)?;
        rust_files(&dir.join("tests"), &mut files)?;
    }
    rust_files(&root.join("fuzz/fuzz_targets"), &mut files)?;
    files.sort();
    let mut problems = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if shown == THIS_FILE {
            continue;
        }
        for (line, what) in relocation_numbers_in(&text) {
            problems.push(format!(
                "{shown}:{line}: bare relocation number: {}",
                what.trim()
            ));
        }
    }
    Ok(problems)
}

/// Whether `s` starts with an integer literal (`22`, `0x16`).
fn starts_with_number(s: &str) -> bool {
    s.trim_start().starts_with(|c: char| c.is_ascii_digit())
}

/// Lines (1-based, with their text) where a relocation type is a number literal:
/// `r_type == 22`, `r_type: 2`, `matches!(r.r_type, 9 | 22)`, the numeric arms of a
/// `match … r_type {`, `RelocationType(4)`, and arrays of numbers named like relocation
/// types (`const TYPES: [u32; N] = [1, 2, …]` next to an `r_type`).
pub fn relocation_numbers_in(text: &str) -> Vec<(usize, String)> {
    let text = strip_comments(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut bad = false;
        // The rest of the line, or the next line when it ends there (`matches!(\n r_type,\n 9`).
        let next = lines.get(i + 1).copied().unwrap_or("");
        for (at, _) in line.match_indices("r_type") {
            let after = line[at + "r_type".len()..].trim_start();
            let continued = |rest: &'_ str| -> bool {
                if rest.trim().is_empty() {
                    starts_with_number(next)
                } else {
                    starts_with_number(rest)
                }
            };
            let value = after
                .strip_prefix("==")
                .or_else(|| after.strip_prefix("!="))
                .or_else(|| after.strip_prefix(':').filter(|a| !a.starts_with(':')))
                .or_else(|| after.strip_prefix(','));
            if value.is_some_and(continued) {
                bad = true;
            }
        }
        if let Some(at) = line.find("RelocationType(")
            && starts_with_number(&line[at + "RelocationType(".len()..])
        {
            bad = true;
        }
        if bad {
            found.push((i + 1, line.to_string()));
        }
        // A `match` on a relocation type: its arms at the first level of the block.
        let trimmed = line.trim_start();
        if (trimmed.starts_with("match ")
            || trimmed.contains(" = match ")
            || trimmed.contains("(match "))
            && trimmed.contains("r_type")
            && trimmed.ends_with('{')
        {
            let mut depth = 0i32;
            for (k, l) in lines.iter().enumerate().skip(i) {
                if k > i && depth == 1 {
                    // The pattern of an arm (or a pattern line continued on the next one):
                    // any alternative that is a number.
                    let pattern = l.split("=>").next().unwrap_or("");
                    if pattern.split('|').any(starts_with_number)
                        && (l.contains("=>") || l.trim_end().ends_with('|'))
                    {
                        found.push((k + 1, l.to_string()));
                    }
                }
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                if k > i && depth <= 0 {
                    break;
                }
            }
        }
    }
    // Number arrays that feed an `r_type` (a fuzz target's list of types).
    if text.contains("r_type") {
        for (k, l) in lines.iter().enumerate() {
            if let Some(eq) = l.find("= [")
                && l.contains(": [u32;")
                && starts_with_number(&l[eq + 3..])
            {
                found.push((k + 1, l.to_string()));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crate_of(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(m, t)| (m.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn a_cycle_through_a_group_import_and_a_re_export_is_found() {
        let files = crate_of(&[
            ("lib", "mod a;\nmod b;\nmod c;\npub use c::Thing;\n"),
            ("a", "use crate::{b::f, Error};\n"),
            // `crate::Thing` is c's, through the root's re-export.
            ("b", "pub fn f() { crate::Thing::new(); }\n"),
            (
                "c",
                "/// See [`crate::b`].\npub struct Thing;\nfn g() { crate::a::h() }\n",
            ),
        ]);
        let cycles = cycles_of(&files);
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert_eq!(cycles[0].modules, ["a", "b", "c"]);
        assert_eq!(cycles[0].path, ["a", "b", "c", "a"]);
    }

    #[test]
    fn doc_links_and_test_modules_are_not_dependencies() {
        let files = crate_of(&[
            ("lib", "mod a;\nmod b;\n"),
            ("a", "use crate::b;\n"),
            (
                "b",
                "//! Used by [`crate::a`].\npub fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
            ),
        ]);
        assert!(cycles_of(&files).is_empty());
    }

    #[test]
    fn bare_relocation_numbers_are_found() {
        let text = "fn f(r: &R) -> u64 {
    if r.r_type == 22 { return 0; }
    if matches!(r.r_type, 9 | 41 | 42) { return 1; }
    let x = R { offset: 0, r_type: 2 };
    let y = RelocationType(4);
    match r.r_type {
        1 | 24 => 8,
        R_X86_64_PC32 => { 4 }
        R_X86_64_TLSGD | 17 => 4,
        _ => 4,
    }
    matches!(
        r_type,
        2 | 4
    )
}
";
        let lines: Vec<usize> = relocation_numbers_in(text).iter().map(|f| f.0).collect();
        assert_eq!(lines, [2, 3, 4, 5, 7, 9, 13]);
    }

    #[test]
    fn named_relocation_types_pass() {
        let text = "fn f(r: &R) -> bool {
    // r_type == 22 in a comment is fine
    let c = RelocClass::of(r.r_type);
    r.r_type == R_X86_64_NONE.0 || matches!(c.op, Op::Got)
}
";
        assert!(relocation_numbers_in(text).is_empty());
    }

    /// The workspace rule: no module cycles but the allowed ones.
    #[test]
    fn workspace_has_no_module_cycles() {
        let cycles = module_cycles(&workspace_root()).unwrap();
        for c in &cycles {
            eprintln!("{c}");
        }
        let bad: Vec<String> = cycles
            .iter()
            .filter(|c| !c.allowed)
            .map(Cycle::to_string)
            .collect();
        assert!(bad.is_empty(), "module cycles:\n{}", bad.join("\n"));
    }

    /// The workspace rule: relocation types are named outside `crates/reloc`.
    #[test]
    fn workspace_has_no_bare_relocation_numbers() {
        let found = bare_relocation_numbers(&workspace_root()).unwrap();
        assert!(found.is_empty(), "{}", found.join("\n"));
    }
}
