//! The files a process maps: which one a bundle patches (and its load bias), the others (for
//! library symbols), and the call-frame information of all of them (for unwinding stacks).

use hotsplice_bundle::{Bundle, TargetKind, hex};
use hotsplice_matcher::{EhFrameSection, Image};
use hotsplice_ptrace::{Mapping, Process};

use crate::{Error, unwind};

/// A file mapped by the process, parsed.
#[derive(Debug)]
pub struct MappedFile {
    /// Its path as `/proc/PID/maps` shows it.
    pub path: String,
    /// First mapped address.
    pub start: u64,
    /// One past the last mapped address.
    pub end: u64,
    /// Run-time address minus link-time address.
    pub bias: u64,
    /// The parsed file.
    pub image: Image,
}

/// Every file of `maps` whose first page (offset 0) is mapped, with its mappings.
fn files(maps: &[Mapping]) -> Vec<(&str, Vec<&Mapping>)> {
    let mut out: Vec<(&str, Vec<&Mapping>)> = Vec::new();
    for m in maps {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        if m.inode == 0 {
            continue;
        }
        match out.iter_mut().find(|(p, _)| *p == path) {
            Some((_, list)) => list.push(m),
            None => out.push((path, vec![m])),
        }
    }
    out
}

/// Parses one mapped file; `None` when it cannot be read or is not an ELF file.
fn parse(process: &Process, path: &str, mappings: &[&Mapping]) -> Option<MappedFile> {
    let first = mappings.iter().find(|m| m.offset == 0)?;
    let bytes = process.mapped_file(first).ok()?;
    let image = Image::parse(&bytes).ok()?;
    Some(MappedFile {
        path: path.to_string(),
        start: mappings.iter().map(|m| m.start).min()?,
        end: mappings.iter().map(|m| m.end).max()?,
        bias: if image.position_independent {
            first.start.wrapping_sub(image.first_load)
        } else {
            0
        },
        image,
    })
}

/// Finds the file a bundle patches among a process's mappings: by build-id, else the
/// executable (for an executable's bundle) or a library of the same file name.
pub fn target(process: &Process, maps: &[Mapping], bundle: &Bundle) -> Result<MappedFile, Error> {
    let pid = process.pid();
    let exe = process.exe()?.display().to_string();
    let wanted_name = std::path::Path::new(&bundle.target.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut by_kind: Option<MappedFile> = None;
    let mut exe_problem = None;
    for (path, mappings) in files(maps) {
        if !mappings.iter().any(|m| m.exec) {
            continue;
        }
        // A file replaced or deleted on disk shows as "PATH (deleted)".
        let plain = path.strip_suffix(" (deleted)").unwrap_or(path);
        let is_exe = path == exe || plain == exe.strip_suffix(" (deleted)").unwrap_or(&exe);
        let name_matches = std::path::Path::new(plain)
            .file_name()
            .is_some_and(|n| n.to_string_lossy() == wanted_name);
        let kind_matches = match bundle.target.kind {
            TargetKind::Executable => is_exe,
            TargetKind::SharedLibrary => !is_exe && name_matches,
        };
        let Some(file) = parse(process, path, &mappings) else {
            if is_exe {
                exe_problem = Some(format!("{path}: not a readable ELF file"));
            }
            continue;
        };
        let id_matches = match (&bundle.target.build_id, &file.image.build_id) {
            (Some(want), Some(have)) => *want == hex::encode(have),
            _ => false,
        };
        if id_matches {
            return Ok(file);
        }
        if kind_matches && by_kind.is_none() {
            by_kind = Some(file);
        }
    }
    by_kind.ok_or_else(|| Error::NoModule {
        pid,
        target: match exe_problem {
            Some(problem) => format!("{} (its executable is {problem})", bundle.target.path),
            None => bundle.target.path.clone(),
        },
    })
}

/// Every other ELF file the process maps (for symbols the new code takes from libraries).
pub fn others(process: &Process, maps: &[Mapping], except: &str) -> Vec<MappedFile> {
    files(maps)
        .into_iter()
        .filter(|(path, _)| *path != except)
        .filter_map(|(path, mappings)| parse(process, path, &mappings))
        .collect()
}

/// The call-frame information of every file mapped by the process.
pub struct Cfi {
    modules: Vec<(u64, u64, u64, EhFrameSection)>,
}

impl Cfi {
    /// Reads the `.eh_frame` of every mapped file (done while the program runs).
    pub fn load(process: &Process, maps: &[Mapping]) -> Cfi {
        let modules = files(maps)
            .into_iter()
            .filter_map(|(path, mappings)| parse(process, path, &mappings))
            .filter_map(|f| {
                let eh = f.image.eh_frame?;
                Some((f.start, f.end, f.bias, eh))
            })
            .collect();
        Cfi { modules }
    }

    /// The modules, as the unwinder takes them.
    pub fn modules(&self) -> Vec<unwind::CfiModule<'_>> {
        self.modules
            .iter()
            .map(|(start, end, bias, eh)| unwind::CfiModule {
                start: *start,
                end: *end,
                bias: *bias,
                eh_frame: eh,
            })
            .collect()
    }
}

/// The original bytes of a file-backed code address, from the file the process maps there
/// (read through `/proc/PID/map_files`): what the code held before anyone wrote to it. `None`
/// when the address is not file-backed.
pub fn file_bytes(
    process: &Process,
    maps: &[Mapping],
    address: u64,
    len: usize,
) -> Option<Vec<u8>> {
    let m = maps
        .iter()
        .find(|m| m.inode != 0 && address >= m.start && address + len as u64 <= m.end)?;
    process
        .mapped_file_range(m, address - m.start + m.offset, len)
        .ok()
}
