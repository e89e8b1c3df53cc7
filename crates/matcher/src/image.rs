//! What a linked binary (executable or shared library) tells about where functions are:
//! its symbol tables (`.symtab` when not stripped, `.dynsym` always), the function boundaries
//! of `.eh_frame` (never stripped), and its TLS segment.

use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian as GimliLe, UnwindSection};
use object::LittleEndian;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};

use crate::Error;

/// A symbol of the binary, at its link-time address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSymbol {
    /// Name.
    pub name: String,
    /// Link-time address.
    pub address: u64,
    /// Size.
    pub size: u64,
    /// Local (`STB_LOCAL`).
    pub local: bool,
    /// A function (`STT_FUNC`) rather than data.
    pub function: bool,
    /// Thread-local (`STT_TLS`): `address` is then the offset in the TLS segment.
    pub tls: bool,
    /// An indirect function (`STT_GNU_IFUNC`): `address` is its resolver, which returns the
    /// implementation chosen for this CPU.
    pub ifunc: bool,
    /// The `STT_FILE` name preceding it in `.symtab` (local symbols only).
    pub file: Option<String>,
}

/// A function boundary from `.eh_frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fde {
    /// Link-time start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A copy of the `.eh_frame` section, for unwinding.
#[derive(Debug, Clone, Default)]
pub struct EhFrameSection {
    /// Link-time address of the section.
    pub address: u64,
    /// Its bytes.
    pub data: Vec<u8>,
    /// `(function start, length, offset of its FDE in the section)`, sorted by start.
    pub fdes: Vec<(u64, u64, usize)>,
}

/// The TLS segment of an executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSegment {
    /// `p_memsz`.
    pub size: u64,
    /// `p_align`.
    pub align: u64,
}

/// A linked binary, as far as matching needs it.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Symbols of `.symtab` and `.dynsym` (defined ones only).
    pub symbols: Vec<ImageSymbol>,
    /// Function boundaries, sorted by start.
    pub fdes: Vec<Fde>,
    /// The TLS segment, if any.
    pub tls: Option<TlsSegment>,
    /// `e_type` is `ET_DYN` (PIE or shared library): addresses are relative to the load bias.
    pub position_independent: bool,
    /// Whether `.symtab` was present (not stripped).
    pub has_symtab: bool,
    /// The GNU build-id, if present.
    pub build_id: Option<Vec<u8>>,
    /// The `.eh_frame` section, for unwinding stacks.
    pub eh_frame: Option<EhFrameSection>,
    /// The lowest `PT_LOAD` virtual address, page-aligned down: the load bias is the address
    /// of the file's offset-0 mapping minus this.
    pub first_load: u64,
    /// Indices into `symbols`, sorted by name.
    by_name: Vec<usize>,
}

impl Image {
    /// Parses an x86-64 ELF executable or shared library. Never panics on malformed input.
    pub fn parse(data: &[u8]) -> Result<Image, Error> {
        let endian = LittleEndian;
        if data.len() >= 5 && data[..4] == [0x7f, b'E', b'L', b'F'] && data[4] == elf::ELFCLASS32.0
        {
            return Err(Error::Image(
                "a 32-bit ELF program; hotsplice patches x86-64 programs only".into(),
            ));
        }
        let header = elf::FileHeader64::<LittleEndian>::parse(data)
            .map_err(|e| Error::Image(format!("ELF header: {e}")))?;
        if header.e_machine(endian).0 != elf::EM_X86_64.0 {
            return Err(Error::Image("not an x86-64 binary".into()));
        }
        let e_type = header.e_type(endian).0;
        if e_type != elf::ET_EXEC.0 && e_type != elf::ET_DYN.0 {
            return Err(Error::Image(format!(
                "e_type {e_type} is not a linked binary"
            )));
        }
        let mut image = Image {
            position_independent: e_type == elf::ET_DYN.0,
            ..Image::default()
        };
        if let Ok(segments) = header.program_headers(endian, data) {
            image.first_load = segments
                .iter()
                .filter(|p| p.p_type(endian).0 == elf::PT_LOAD.0)
                .map(|p| p.p_vaddr(endian) & !0xfff)
                .min()
                .unwrap_or(0);
            for p in segments {
                if p.p_type(endian).0 == elf::PT_TLS.0 {
                    image.tls = Some(TlsSegment {
                        size: p.p_memsz(endian),
                        align: p.p_align(endian).max(1),
                    });
                }
            }
        }
        let sections = header
            .sections(endian, data)
            .map_err(|e| Error::Image(format!("section table: {e}")))?;
        for (kind, sh_type) in [("symtab", elf::SHT_SYMTAB), ("dynsym", elf::SHT_DYNSYM)] {
            let Ok(table) = sections.symbols(endian, data, sh_type) else {
                continue;
            };
            if table.is_empty() {
                continue;
            }
            if kind == "symtab" {
                image.has_symtab = true;
            }
            let mut file: Option<String> = None;
            let from_symtab: std::collections::HashSet<(String, u64)> = image
                .symbols
                .iter()
                .map(|s| (s.name.clone(), s.address))
                .collect();
            for (index, sym) in table.enumerate() {
                let name = sym
                    .name(endian, table.strings())
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default();
                let st_type = sym.st_type().0;
                if st_type == elf::STT_FILE.0 {
                    file = Some(name);
                    continue;
                }
                let defined = table
                    .symbol_section(endian, sym, index)
                    .ok()
                    .flatten()
                    .is_some();
                if !defined || name.is_empty() {
                    continue;
                }
                let local = sym.st_bind().0 == elf::STB_LOCAL.0;
                let ifunc = st_type == elf::STT_GNU_IFUNC.0;
                let (function, tls) = (st_type == elf::STT_FUNC.0, st_type == elf::STT_TLS.0);
                if !function
                    && !tls
                    && !ifunc
                    && st_type != elf::STT_OBJECT.0
                    && st_type != elf::STT_NOTYPE.0
                {
                    continue;
                }
                let entry = ImageSymbol {
                    name,
                    address: sym.st_value(endian),
                    size: sym.st_size(endian),
                    local,
                    function,
                    tls,
                    ifunc,
                    file: if local { file.clone() } else { None },
                };
                if kind == "dynsym" && from_symtab.contains(&(entry.name.clone(), entry.address)) {
                    continue;
                }
                image.symbols.push(entry);
            }
        }
        for section in sections.iter() {
            let name = sections.section_name(endian, section).unwrap_or_default();
            if name == b".eh_frame"
                && let Ok(bytes) = section.data(endian, data)
            {
                let (fdes, indexed) = parse_eh_frame(bytes, section.sh_addr(endian));
                image.fdes = fdes;
                image.eh_frame = Some(EhFrameSection {
                    address: section.sh_addr(endian),
                    data: bytes.to_vec(),
                    fdes: indexed,
                });
            }
            if let Ok(Some(mut notes)) = section.notes(endian, data) {
                while let Ok(Some(note)) = notes.next() {
                    if note.name() == b"GNU" && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                        image.build_id = Some(note.desc().to_vec());
                    }
                }
            }
        }
        let mut by_name: Vec<usize> = (0..image.symbols.len()).collect();
        by_name.sort_by(|&a, &b| image.symbols[a].name.cmp(&image.symbols[b].name));
        image.by_name = by_name;
        Ok(image)
    }

    /// Symbols with this name.
    pub fn symbols_named<'i>(
        &'i self,
        name: &'i str,
    ) -> impl Iterator<Item = &'i ImageSymbol> + 'i {
        let first = self
            .by_name
            .partition_point(|&i| self.symbols[i].name.as_str() < name);
        self.by_name[first..]
            .iter()
            .map(|&i| &self.symbols[i])
            .take_while(move |s| s.name == name)
    }

    /// The FDE starting exactly at `address`, if any.
    pub fn fde_at(&self, address: u64) -> Option<Fde> {
        let i = self.fdes.partition_point(|f| f.start < address);
        self.fdes.get(i).copied().filter(|f| f.start == address)
    }

    /// The offset of a thread-local variable from the thread pointer (x86-64 variant II,
    /// executables only): `tls_address` is the symbol's offset in the TLS segment.
    pub fn tpoff(&self, tls_address: u64) -> Option<i64> {
        let tls = self.tls?;
        let block = tls.size.div_ceil(tls.align) * tls.align;
        Some(tls_address as i64 - block as i64)
    }
}

/// The byte ranges of an ELF file that [`Image::parse`] reads, as far as `known` tells: the
/// file's bytes, whole in length but zero where not read yet. It asks first for the file and
/// program headers and the section table, then for the section names, the symbol tables and
/// their strings, the notes and `.eh_frame` — not the code, most of a library. A caller that
/// reads a file piecemeal reads what it asks for and asks again, until nothing new is asked
/// (three rounds for a well-formed file). Never panics on malformed input.
pub fn ranges_needed(known: &[u8]) -> Vec<std::ops::Range<usize>> {
    let endian = LittleEndian;
    let size = std::mem::size_of::<elf::FileHeader64<LittleEndian>>();
    let mut out = Vec::new();
    out.push(0..size.min(known.len()));
    out.retain(|r| r.start < r.end);
    let Ok(header) = elf::FileHeader64::<LittleEndian>::parse(known) else {
        return out;
    };
    let table = |offset: u64, count: u64, entry: u64| {
        let start = usize::try_from(offset).ok()?;
        let len = usize::try_from(count.checked_mul(entry)?).ok()?;
        Some(start..start.checked_add(len)?.min(known.len()))
    };
    out.extend(table(
        header.e_phoff(endian),
        u64::from(header.e_phnum(endian)),
        u64::from(header.e_phentsize(endian)),
    ));
    // Extended numbering keeps the count in the first section header: ask for it first.
    let count = match header.e_shnum(endian) {
        0 => 1,
        n => u64::from(n),
    };
    out.extend(table(
        header.e_shoff(endian),
        count,
        u64::from(header.e_shentsize(endian)),
    ));
    out.retain(|r| r.start < r.end);
    let Ok(sections) = header.sections(endian, known) else {
        return out;
    };
    let range = |section: &elf::SectionHeader64<LittleEndian>| {
        section
            .file_range(endian)
            .and_then(|(offset, len)| table(offset, len, 1))
    };
    if let Ok(index) = header.shstrndx(endian, known)
        && let Ok(strings) = sections.section(object::SectionIndex(index as usize))
    {
        out.extend(range(strings));
    }
    for section in sections.iter() {
        let sh_type = section.sh_type(endian);
        let wanted = sh_type == elf::SHT_SYMTAB
            || sh_type == elf::SHT_DYNSYM
            || sh_type == elf::SHT_NOTE
            || sections.section_name(endian, section).ok() == Some(&b".eh_frame"[..]);
        if !wanted {
            continue;
        }
        out.extend(range(section));
        if sh_type == elf::SHT_SYMTAB || sh_type == elf::SHT_DYNSYM {
            let link = object::SectionIndex(section.sh_link(endian) as usize);
            if let Ok(strings) = sections.section(link) {
                out.extend(range(strings));
            }
        }
    }
    out.retain(|r| r.start < r.end);
    out
}

/// The GNU build-id of an ELF file from its first bytes (`head`): the file header, the
/// program headers and a `PT_NOTE` segment must lie within them (they do in every linked
/// binary: the notes come first). `None` when there is none, or the bytes do not say.
pub fn build_id(head: &[u8]) -> Option<Vec<u8>> {
    let endian = LittleEndian;
    let header = elf::FileHeader64::<LittleEndian>::parse(head).ok()?;
    let segments = header.program_headers(endian, head).ok()?;
    for segment in segments {
        if segment.p_type(endian) != elf::PT_NOTE {
            continue;
        }
        let Ok(Some(mut notes)) = segment.notes(endian, head) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"GNU" && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                return Some(note.desc().to_vec());
            }
        }
    }
    None
}

type IndexedFdes = Vec<(u64, u64, usize)>;

fn parse_eh_frame(bytes: &[u8], address: u64) -> (Vec<Fde>, IndexedFdes) {
    let eh = EhFrame::new(bytes, GimliLe);
    let bases = BaseAddresses::default().set_eh_frame(address);
    let mut indexed = Vec::new();
    // Most FDEs share one of a few CIEs: parse each once.
    let mut cies = Vec::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        if let CieOrFde::Fde(partial) = entry {
            let offset = partial.offset();
            let fde = partial.parse(|section, bases, cie_offset| {
                if let Some((_, cie)) = cies.iter().find(|(o, _)| *o == cie_offset) {
                    return Ok(Clone::clone(cie));
                }
                let cie = section.cie_from_offset(bases, cie_offset)?;
                cies.push((cie_offset, cie.clone()));
                Ok(cie)
            });
            if let Ok(fde) = fde {
                indexed.push((fde.initial_address(), fde.len(), offset));
            }
        }
    }
    indexed.sort_unstable();
    let fdes = indexed
        .iter()
        .map(|&(start, len, _)| Fde { start, len })
        .collect();
    (fdes, indexed)
}
