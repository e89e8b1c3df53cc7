//! Which objects of the build reach a binary: its link's object inputs, the members of static
//! archives the linker really pulled in (from the link map), and the inputs of partial links
//! (`-r`), recursively.
//!
//! An object whose source a diff changes but which is not in the target's closure is not part
//! of the target; one that is must be recompiled and diffed, or the build is incomplete.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use object::read::archive::ArchiveFile;
use serde::{Deserialize, Serialize};

use crate::linkmap;
use crate::record::{Record, RecordKind};
use crate::tree;

/// The objects linked into one binary of the build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// The binary (tree-relative).
    pub target: String,
    /// Objects compiled by the build and linked into it (tree-relative).
    pub objects: BTreeSet<String>,
    /// Inputs from the tree that no compile of the build produced (objects, archive members
    /// as `lib.a(member.o)`): already there before the build, or made by other tools.
    pub foreign: Vec<String>,
    /// Whether the link (or a compile of one of its objects) used `-flto`.
    pub lto: bool,
    /// Whether the linker's map said which archive members it used (else every member of
    /// each archive input counts).
    pub from_map: bool,
}

/// The build's records, indexed: the latest compile of each object and link of each output.
pub struct Index<'a> {
    root: &'a Path,
    compiles: HashMap<String, &'a Record>,
    links: HashMap<String, &'a Record>,
}

impl<'a> Index<'a> {
    /// Indexes `records` of a build in the tree at `root` (later records win).
    pub fn new(root: &'a Path, records: &'a [Record]) -> Self {
        let mut compiles = HashMap::new();
        let mut links = HashMap::new();
        for record in records {
            let Some(output) = record
                .output
                .as_deref()
                .and_then(|o| tree::relative(root, &record.directory, o))
            else {
                continue;
            };
            match record.kind {
                RecordKind::Compile => {
                    compiles.insert(output, record);
                }
                RecordKind::Link => {
                    links.insert(output, record);
                }
            }
        }
        Index {
            root,
            compiles,
            links,
        }
    }

    /// The latest compile that wrote `object` (tree-relative).
    pub fn compile_of(&self, object: &str) -> Option<&'a Record> {
        self.compiles.get(object).copied()
    }

    /// Every compiled object (tree-relative) with its latest compile.
    pub fn compiles(&self) -> impl Iterator<Item = (&String, &&'a Record)> {
        self.compiles.iter()
    }

    /// The latest link that wrote `output` (tree-relative).
    pub fn link_of(&self, output: &str) -> Option<&'a Record> {
        self.links.get(output).copied()
    }

    /// Outputs of final (not `-r`) links that still exist in the tree, sorted.
    pub fn binaries(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .links
            .iter()
            .filter(|(output, r)| !r.relocatable && self.root.join(output).is_file())
            .map(|(o, _)| o.clone())
            .collect();
        out.sort();
        out
    }

    /// The closure of the binary `target`, reading link maps and archives in `tree_dir`
    /// (the tree the records were made in, or a copy of it). `None` when the build never
    /// linked it.
    pub fn closure(&self, target: &str, tree_dir: &Path) -> Option<Closure> {
        let link = self.link_of(target)?;
        let mut closure = Closure {
            target: target.to_string(),
            from_map: true,
            ..Closure::default()
        };
        let mut archives: HashMap<String, Vec<(String, Vec<u8>)>> = HashMap::new();
        let mut visited = BTreeSet::new();
        self.visit(link, tree_dir, &mut closure, &mut archives, &mut visited);
        closure.foreign.sort();
        closure.foreign.dedup();
        Some(closure)
    }

    fn in_tree_dir(&self, tree_dir: &Path, path: &str) -> Option<PathBuf> {
        // Paths in records and maps name the build tree; read them from `tree_dir`.
        let absolute = Path::new(path);
        if absolute.is_absolute() {
            let rel = absolute.strip_prefix(self.root).ok()?;
            return Some(tree_dir.join(rel));
        }
        Some(tree_dir.join(path))
    }

    fn visit(
        &self,
        link: &Record,
        tree_dir: &Path,
        closure: &mut Closure,
        archives: &mut HashMap<String, Vec<(String, Vec<u8>)>>,
        visited: &mut BTreeSet<String>,
    ) {
        closure.lto |= link.lto;
        let map = link
            .map
            .as_deref()
            .and_then(|m| self.in_tree_dir(tree_dir, m).or(Some(PathBuf::from(m))))
            .and_then(|m| std::fs::read_to_string(m).ok())
            .map(|text| linkmap::parse(&text));
        let (files, members): (Vec<String>, Vec<(String, Option<String>)>) = match &map {
            Some(map) if !map.loaded.is_empty() => (
                map.loaded
                    .iter()
                    .filter(|f| !f.ends_with(".a"))
                    .cloned()
                    .collect(),
                map.members
                    .iter()
                    .map(|(a, m)| (a.clone(), Some(m.clone())))
                    .collect(),
            ),
            _ => {
                closure.from_map = false;
                (
                    link.inputs
                        .iter()
                        .filter(|f| !f.ends_with(".a"))
                        .cloned()
                        .collect(),
                    link.inputs
                        .iter()
                        .filter(|f| f.ends_with(".a"))
                        .map(|a| (a.clone(), None))
                        .collect(),
                )
            }
        };
        for file in files {
            let Some(rel) = tree::relative(self.root, &link.directory, &file) else {
                continue;
            };
            self.add_object(&rel, tree_dir, closure, archives, visited);
        }
        for (archive, member) in members {
            let Some(rel) = tree::relative(self.root, &link.directory, &archive) else {
                continue;
            };
            let entries = archives
                .entry(rel.clone())
                .or_insert_with(|| read_archive(&tree_dir.join(&rel)))
                .clone();
            for (name, data) in entries {
                if member.as_ref().is_some_and(|m| *m != name) {
                    continue;
                }
                match self.member_object(&rel, &name, &data, tree_dir) {
                    Some(object) => {
                        self.add_object(&object, tree_dir, closure, archives, visited);
                    }
                    None => closure.foreign.push(format!("{rel}({name})")),
                }
            }
        }
    }

    fn add_object(
        &self,
        rel: &str,
        tree_dir: &Path,
        closure: &mut Closure,
        archives: &mut HashMap<String, Vec<(String, Vec<u8>)>>,
        visited: &mut BTreeSet<String>,
    ) {
        if let Some(partial) = self.link_of(rel).filter(|r| r.relocatable) {
            if visited.insert(rel.to_string()) {
                self.visit(partial, tree_dir, closure, archives, visited);
            }
            return;
        }
        if let Some(compile) = self.compile_of(rel) {
            closure.lto |= compile.lto;
            closure.objects.insert(rel.to_string());
            return;
        }
        // Shared libraries and linker scripts are not part of this binary's code; an
        // object file nobody compiled is foreign.
        let is_object = std::fs::read(tree_dir.join(rel))
            .ok()
            .is_some_and(|b| is_relocatable(&b));
        if is_object {
            closure.foreign.push(rel.to_string());
        }
    }

    /// The compiled object an archive member is a copy of: same file name and same bytes
    /// (or the only compiled object of that name).
    fn member_object(
        &self,
        archive: &str,
        name: &str,
        data: &[u8],
        tree_dir: &Path,
    ) -> Option<String> {
        if data.is_empty() {
            // A thin archive names its members by path, relative to the archive.
            let dir = Path::new(archive).parent().unwrap_or(Path::new(""));
            let rel = tree::relative(self.root, &self.root.join(dir).to_string_lossy(), name)?;
            return self.compiles.contains_key(&rel).then_some(rel);
        }
        let candidates: Vec<&String> = self
            .compiles
            .keys()
            .filter(|o| Path::new(o).file_name().is_some_and(|n| n == name))
            .collect();
        let same_bytes = candidates
            .iter()
            .find(|o| std::fs::read(tree_dir.join(o)).is_ok_and(|b| b == data));
        match (same_bytes, candidates.as_slice()) {
            (Some(o), _) => Some((*o).clone()),
            (None, [only]) => Some((*only).clone()),
            _ => None,
        }
    }
}

/// Whether `bytes` are an x86-64 ELF relocatable object.
pub fn is_relocatable(bytes: &[u8]) -> bool {
    bytes.len() > 18 && bytes.starts_with(b"\x7fELF") && bytes[16] == 1 && bytes[17] == 0
}

/// The members of an archive: (name, bytes; empty for a thin member).
fn read_archive(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(archive) = ArchiveFile::parse(&*bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for member in archive.members().flatten() {
        let name = String::from_utf8_lossy(member.name()).into_owned();
        let data = member.data(&*bytes).unwrap_or_default().to_vec();
        out.push((name, data));
    }
    out
}

/// For each of `objects`, the binaries of the build (other than `except`) it is linked into.
pub fn linked_into(
    index: &Index<'_>,
    tree_dir: &Path,
    objects: &[String],
    except: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if objects.is_empty() {
        return out;
    }
    for binary in index.binaries() {
        if binary == except {
            continue;
        }
        let Some(closure) = index.closure(&binary, tree_dir) else {
            continue;
        };
        for object in objects {
            if closure.objects.contains(object) {
                out.entry(object.clone()).or_default().push(binary.clone());
            }
        }
    }
    out
}
