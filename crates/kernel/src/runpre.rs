//! Run-pre matching against the target kernel: every function the module replaces must be,
//! instruction for instruction, the function the pre build compiled — in the target's
//! vmlinux, at the address its kallsyms gives. Relocation fields are wildcards, and what they
//! hold teaches the addresses of the symbols they name, which tells same-named static
//! symbols apart (livepatch's `sympos`). A mismatch means the source, configuration or
//! compiler is not the running kernel's: the build is refused.
//!
//! Pure: reads the vmlinux bytes it is given.

use std::collections::HashMap;

use hotsplice_matcher::{Learned, Memory, PreCode, PreReloc, match_function};
use hotsplice_objdiff::PatchSet;
use hotsplice_objdiff::patchset::PreTarget;
use object::{Object, ObjectSegment};

use crate::Error;
use crate::kallsyms::Kallsyms;

/// A vmlinux image, read by link address.
pub struct Vmlinux<'a> {
    file: object::File<'a>,
    /// The link address of `_text` (the first executable segment).
    pub text: u64,
}

impl<'a> Vmlinux<'a> {
    /// Parses an (uncompressed, ELF) vmlinux.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let file = object::File::parse(bytes)
            .map_err(|e| Error::Malformed(format!("vmlinux is not an ELF image: {e}")))?;
        let text = file
            .segments()
            .filter(|s| s.address() != 0)
            .map(|s| s.address())
            .min()
            .ok_or_else(|| Error::Malformed("vmlinux has no loadable segment".into()))?;
        Ok(Vmlinux { file, text })
    }
}

impl Memory for Vmlinux<'_> {
    fn read(&self, address: u64, buf: &mut [u8]) -> bool {
        for segment in self.file.segments() {
            if let Ok(Some(data)) = segment.data_range(address, buf.len() as u64)
                && data.len() == buf.len()
            {
                buf.copy_from_slice(data);
                return true;
            }
        }
        false
    }
}

/// A module's `.ko` (relocatable), each allocated section at its own synthetic address, so
/// functions can be read by address like vmlinux's.
pub struct ModuleImage<'a> {
    sections: Vec<(u64, &'a [u8])>,
    /// Defined symbols in symbol-table order: (name, address). Livepatch counts `sympos` in
    /// this order.
    pub symbols: Vec<(String, u64)>,
}

/// Where section `i` of a module image is placed.
fn section_base(i: usize) -> u64 {
    0x1000_0000_0000 + (i as u64) * 0x1_0000_0000
}

impl<'a> ModuleImage<'a> {
    /// Parses a module.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        use object::{ObjectSection, ObjectSymbol, SymbolSection};
        let file = object::File::parse(bytes)
            .map_err(|e| Error::Malformed(format!("not a kernel module: {e}")))?;
        let mut sections = Vec::new();
        for section in file.sections() {
            if let Ok(data) = section.data() {
                sections.push((section_base(section.index().0), data));
            }
        }
        let symbols = file
            .symbols()
            .filter_map(|s| match s.section() {
                SymbolSection::Section(i) => {
                    Some((s.name().ok()?.to_string(), section_base(i.0) + s.address()))
                }
                _ => None,
            })
            .collect();
        Ok(ModuleImage { sections, symbols })
    }

    /// The `sympos` of `name` (0 when unique) and its address, if the module defines it.
    pub fn find(&self, name: &str, index: usize) -> Option<(u64, u64)> {
        let all: Vec<u64> = self
            .symbols
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .collect();
        let address = *all.get(index)?;
        Some((if all.len() == 1 { 0 } else { index as u64 + 1 }, address))
    }

    /// How many symbols the module defines under `name`.
    pub fn count(&self, name: &str) -> usize {
        self.symbols.iter().filter(|(n, _)| n == name).count()
    }
}

impl Memory for ModuleImage<'_> {
    fn read(&self, address: u64, buf: &mut [u8]) -> bool {
        for (base, data) in &self.sections {
            let Some(offset) = address.checked_sub(*base) else {
                continue;
            };
            let Ok(start) = usize::try_from(offset) else {
                continue;
            };
            if let Some(src) = data.get(start..start.saturating_add(buf.len()))
                && src.len() == buf.len()
            {
                buf.copy_from_slice(src);
                return true;
            }
        }
        false
    }
}

/// Matches the replaced functions of `set` (an object of module `module`) against the
/// module's own code, as shipped in its `.ko`.
pub fn match_module(set: &PatchSet, module: &str, image: &ModuleImage<'_>, into: &mut RunPre) {
    let place = format!("module {module}");
    for r in &set.replacements {
        let candidates: Vec<(u64, u64)> = (0..image.count(&r.name))
            .filter_map(|i| image.find(&r.name, i))
            .map(|(_, address)| (address, address))
            .collect();
        match prove(r, &candidates, image, &place) {
            Ok((sympos, address, m)) => into.proven.push(Proven {
                name: r.name.clone(),
                address,
                sympos,
                bytes: m.len,
            }),
            Err(why) => into.mismatches.push((r.name.clone(), why)),
        }
    }
}

/// Tries the pre code of `r` at each candidate — (run-time address, address to read it at)
/// in symbol order — and returns the one that matches: its `sympos` (0 when the name is
/// unique), run-time address and match; or why none, or more than one, does. `place` names
/// where the candidates are, for the message.
fn prove(
    r: &hotsplice_objdiff::patchset::Replacement,
    candidates: &[(u64, u64)],
    memory: &dyn Memory,
    place: &str,
) -> Result<(u64, u64, hotsplice_matcher::Matched), String> {
    if candidates.is_empty() {
        return Err(format!(
            "{} is not in {place}'s symbols (inlined or renamed there? another source or configuration?)",
            r.name
        ));
    }
    let relocs = pre_relocs(r);
    let pre = PreCode {
        code: &r.pre_code,
        relocs: &relocs,
    };
    let window = r.pre_code.len() as u64 + 16;
    let mut matched = Vec::new();
    let mut first_mismatch = None;
    for (i, &(address, read_at)) in candidates.iter().enumerate() {
        match match_function(pre, read_at, window, memory) {
            Ok(m) => matched.push((i, address, m)),
            Err(e) => {
                first_mismatch.get_or_insert_with(|| e.to_string());
            }
        }
    }
    match matched.len() {
        1 => {
            let (i, address, m) = matched.remove(0);
            let sympos = if candidates.len() == 1 {
                0
            } else {
                i as u64 + 1
            };
            Ok((sympos, address, m))
        }
        0 => Err(format!(
            "{place}'s {} is not the pre build's code ({}): the source, configuration or compiler is not the running kernel's",
            r.name,
            first_mismatch.unwrap_or_default()
        )),
        n => Err(format!(
            "{n} of {place}'s {} functions named {} match the pre build: which one the diff changes is ambiguous",
            candidates.len(),
            r.name
        )),
    }
}

fn pre_relocs(r: &hotsplice_objdiff::patchset::Replacement) -> Vec<PreReloc> {
    r.pre_relocs
        .iter()
        .map(|p| PreReloc {
            offset: p.offset,
            r_type: p.r_type,
            symbol: match &p.target {
                PreTarget::Symbol(s) => Some(s.name.clone()),
                PreTarget::Anonymous(_) => None,
            },
            addend: p.addend,
        })
        .collect()
}

/// A replaced function proven equal to the pre build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// Its name.
    pub name: String,
    /// Its run-time address (kallsyms).
    pub address: u64,
    /// Its `sympos`.
    pub sympos: u64,
    /// Instructions compared (bytes).
    pub bytes: u64,
}

/// What run-pre matching found.
#[derive(Debug, Clone, Default)]
pub struct RunPre {
    /// Every replaced function, proven.
    pub proven: Vec<Proven>,
    /// Addresses (run-time) the code's relocation fields taught, by symbol name.
    pub learned: HashMap<String, Vec<u64>>,
    /// Why a function does not match (then the build is refused).
    pub mismatches: Vec<(String, String)>,
}

/// Matches the replaced functions of `sets` against `vmlinux`, at the addresses `kallsyms`
/// gives (run-time addresses; the slide is taken from `_text`).
pub fn match_kernel(sets: &[&PatchSet], vmlinux: &Vmlinux<'_>, kallsyms: &Kallsyms) -> RunPre {
    let slide = kallsyms.slide(vmlinux.text).unwrap_or(0);
    let mut result = RunPre::default();
    for r in sets.iter().flat_map(|set| &set.replacements) {
        let candidates: Vec<(u64, u64)> = kallsyms
            .named(&r.name)
            .map(|s| (s.address, s.address.wrapping_sub(slide)))
            .collect();
        match prove(r, &candidates, vmlinux, "the target kernel") {
            Ok((sympos, address, m)) => {
                for l in &m.learned {
                    if let Learned::Address(a) = l.value {
                        let list = result.learned.entry(l.symbol.clone()).or_default();
                        for candidate in [a.wrapping_add(slide), a] {
                            if !list.contains(&candidate) {
                                list.push(candidate);
                            }
                        }
                    }
                }
                result.proven.push(Proven {
                    name: r.name.clone(),
                    address,
                    sympos,
                    bytes: m.len,
                });
            }
            Err(why) => result.mismatches.push((r.name.clone(), why)),
        }
    }
    result
}
