//! The files a process maps: which one a bundle patches (and its load bias), the others (for
//! library symbols), and the call-frame information of all of them and of the vDSO (for
//! unwinding stacks).

use hotsplice_bundle::{Bundle, TargetKind, hex};
use hotsplice_matcher::{EhFrameSection, Image};
use hotsplice_ptrace::{Mapping, Process};

use crate::state::{AppliedFrames, AppliedPatch};
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
    let bytes = process
        .mapped_file_parts(first, hotsplice_matcher::ranges_needed)
        .ok()?;
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

/// The vDSO's call-frame information, read from the process's memory: the vDSO is the
/// kernel's code mapped into every process (`clock_gettime`...), an ELF image but no file.
/// Threads of a program that asks the time often are often stopped in it.
fn vdso(process: &Process, maps: &[Mapping]) -> Option<(u64, u64, u64, EhFrameSection)> {
    let m = maps.iter().find(|m| m.path.as_deref() == Some("[vdso]"))?;
    let mut bytes = vec![
        0u8;
        usize::try_from(m.end.checked_sub(m.start)?)
            .ok()?
            .min(1 << 20)
    ];
    process.read(m.start, &mut bytes).ok()?;
    let image = Image::parse(&bytes).ok()?;
    let bias = m.start.wrapping_sub(image.first_load);
    Some((m.start, m.end, bias, image.eh_frame?))
}

/// Every ELF file a process maps, each read and parsed once per operation.
pub struct Files {
    files: Vec<MappedFile>,
    /// Files that could not be read or parsed: (path, why).
    unreadable: Vec<(String, String)>,
    /// The vDSO's call-frame information (only that: its symbols are not the program's).
    vdso: Option<(u64, u64, u64, EhFrameSection)>,
}

impl Files {
    /// Reads and parses every mapped file (while the program runs).
    pub fn load(process: &Process, maps: &[Mapping]) -> Files {
        let mut out = Files {
            files: Vec::new(),
            unreadable: Vec::new(),
            vdso: vdso(process, maps),
        };
        for (path, mappings) in files(maps) {
            match parse(process, path, &mappings) {
                Some(f) => out.files.push(f),
                None => out
                    .unreadable
                    .push((path.to_string(), "not a readable ELF file".to_string())),
            }
        }
        out
    }

    /// The call-frame information of every file.
    pub fn cfi(&self) -> Cfi {
        Cfi {
            modules: self
                .files
                .iter()
                .filter_map(|f| Some((f.start, f.end, f.bias, f.image.eh_frame.clone()?)))
                .chain(self.vdso.clone())
                .collect(),
            patches: Vec::new(),
        }
    }

    /// Takes out the file a bundle patches: by build-id, else the executable (for an
    /// executable's bundle) or a library of the same file name. The others stay.
    pub fn take_target(&mut self, process: &Process, bundle: &Bundle) -> Result<MappedFile, Error> {
        let pid = process.pid();
        let exe = process.exe()?.display().to_string();
        let plain = |p: &str| p.strip_suffix(" (deleted)").unwrap_or(p).to_string();
        let wanted_name = std::path::Path::new(&bundle.target.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_exe = |f: &MappedFile| plain(&f.path) == plain(&exe);
        let by_id =
            self.files
                .iter()
                .position(|f| match (&bundle.target.build_id, &f.image.build_id) {
                    (Some(want), Some(have)) => *want == hex::encode(have),
                    _ => false,
                });
        let by_kind = || {
            self.files.iter().position(|f| match bundle.target.kind {
                TargetKind::Executable => is_exe(f),
                TargetKind::SharedLibrary => {
                    !is_exe(f)
                        && std::path::Path::new(&plain(&f.path))
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy() == wanted_name)
                }
            })
        };
        match by_id.or_else(by_kind) {
            Some(i) => Ok(self.files.remove(i)),
            None => Err(Error::NoModule {
                pid,
                target: match self
                    .unreadable
                    .iter()
                    .find(|(p, _)| plain(p) == plain(&exe))
                {
                    Some((p, why)) if bundle.target.kind == TargetKind::Executable => {
                        format!("{} (its executable {p} is {why})", bundle.target.path)
                    }
                    _ => bundle.target.path.clone(),
                },
            }),
        }
    }

    /// The files (after [`Files::take_target`]: the others).
    pub fn into_files(self) -> Vec<MappedFile> {
        self.files
    }
}

/// The call-frame information of every file mapped by the process, and of the code of the
/// patches applied to it.
pub struct Cfi {
    modules: Vec<(u64, u64, u64, EhFrameSection)>,
    patches: Vec<AppliedFrames>,
}

impl Cfi {
    /// Reads the `.eh_frame` of every mapped file (done while the program runs).
    pub fn load(process: &Process, maps: &[Mapping]) -> Cfi {
        Files::load(process, maps).cfi()
    }

    /// Adds the rows recorded for the code of `patches` (applied to the process).
    pub fn with_patches(mut self, patches: &[AppliedPatch]) -> Cfi {
        self.patches
            .extend(patches.iter().flat_map(|p| p.frames.iter().cloned()));
        self
    }

    /// The tables, as the unwinder takes them.
    pub fn tables(&self) -> unwind::Tables<'_> {
        unwind::Tables {
            files: self
                .modules
                .iter()
                .map(|(start, end, bias, eh)| unwind::CfiModule {
                    start: *start,
                    end: *end,
                    bias: *bias,
                    eh_frame: eh,
                })
                .collect(),
            patches: self
                .patches
                .iter()
                .map(|f| unwind::PatchCode {
                    start: f.address,
                    end: f.address.saturating_add(f.size),
                    rows: &f.rows,
                })
                .collect(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vdso_has_call_frame_information() {
        // This test's own process: the kernel maps a vDSO into it.
        let process = Process::new(std::process::id() as i32).unwrap();
        let maps = process.maps().unwrap();
        let vdso = maps
            .iter()
            .find(|m| m.path.as_deref() == Some("[vdso]"))
            .expect("a vDSO is mapped");
        let cfi = Files::load(&process, &maps).cfi();
        let tables = cfi.tables();
        let module = tables
            .files
            .iter()
            .find(|m| m.start == vdso.start && m.end == vdso.end)
            .expect("the vDSO's call-frame information is loaded");
        assert!(!module.eh_frame.fdes.is_empty());
        // Its functions, at their run-time addresses, lie in the mapping.
        for &(start, len, _) in &module.eh_frame.fdes {
            let at = start.wrapping_add(module.bias);
            assert!(at >= vdso.start && at + len <= vdso.end, "{at:#x}");
        }
    }
}
