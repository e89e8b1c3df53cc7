//! A small, validated model of one relocatable x86-64 ELF object.
//!
//! [`ElfObject::parse`] reads the bytes with `object`'s low-level ELF API and keeps what the
//! diff needs: sections (with their bytes and relocations attached) and symbols. Every index
//! in the model has been bounds-checked, so later passes can index without panicking.

use object::elf;
use object::read::elf::{FileHeader, Rela, SectionHeader, Sym};
use object::{LittleEndian, read::StringTable};

use crate::Error;

/// One relocatable x86-64 ELF object, parsed and validated.
#[derive(Debug)]
pub struct ElfObject<'a> {
    /// Sections, indexed by their ELF section index (index 0 is the null section).
    pub sections: Vec<Section<'a>>,
    /// Symbols of `.symtab`, indexed by their ELF symbol index (index 0 is the null symbol).
    pub symbols: Vec<Symbol>,
    /// The `.comment` section's strings (compiler identification), if present.
    pub comment: Vec<String>,
}

/// One section of an [`ElfObject`].
#[derive(Debug)]
pub struct Section<'a> {
    /// ELF section index.
    pub index: usize,
    /// Section name, e.g. `.text.foo`.
    pub name: String,
    /// `sh_type`.
    pub sh_type: u32,
    /// `sh_flags`.
    pub flags: u64,
    /// Size in memory (for `SHT_NOBITS` there are no bytes in the file).
    pub size: u64,
    /// `sh_entsize`, meaningful for merge sections.
    pub entsize: u64,
    /// `sh_addralign`.
    pub align: u64,
    /// The bytes in the file; empty for `SHT_NOBITS`.
    pub data: &'a [u8],
    /// Relocations that apply to this section, sorted by offset.
    pub relocs: Vec<Reloc>,
}

/// One `RELA` relocation, attached to the section it patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloc {
    /// Offset of the patched field inside the section.
    pub offset: u64,
    /// `R_X86_64_*` type.
    pub r_type: u32,
    /// Index into [`ElfObject::symbols`] (0 means no symbol).
    pub symbol: usize,
    /// Explicit addend.
    pub addend: i64,
}

/// What a symbol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymbolKind {
    /// `STT_NOTYPE` (labels such as `.LC0`, undefined references).
    NoType,
    /// `STT_OBJECT`: a variable.
    Object,
    /// `STT_FUNC`: a function.
    Func,
    /// `STT_SECTION`: stands for a whole section.
    Section,
    /// `STT_FILE`: the source file name.
    File,
    /// `STT_TLS`: a thread-local variable.
    Tls,
    /// `STT_COMMON` or anything else.
    Other,
}

/// Symbol binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `STB_LOCAL`: visible in this object only.
    Local,
    /// `STB_GLOBAL`.
    Global,
    /// `STB_WEAK`.
    Weak,
}

/// Where a symbol is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Definition {
    /// Not defined here (`SHN_UNDEF`): a reference to another object or library.
    Undefined,
    /// An absolute value (`SHN_ABS`).
    Absolute,
    /// A common symbol (`SHN_COMMON`, from `-fcommon`).
    Common,
    /// Defined in the section with this index.
    Section(usize),
}

/// One symbol of `.symtab`.
#[derive(Debug, Clone)]
pub struct Symbol {
    /// ELF symbol index.
    pub index: usize,
    /// Symbol name (for section symbols: the section's name).
    pub name: String,
    /// What the symbol names.
    pub kind: SymbolKind,
    /// Binding.
    pub binding: Binding,
    /// Where it is defined.
    pub definition: Definition,
    /// `st_value`: offset inside its section.
    pub value: u64,
    /// `st_size`.
    pub size: u64,
}

impl Symbol {
    /// The section this symbol is defined in, if any.
    pub fn section(&self) -> Option<usize> {
        match self.definition {
            Definition::Section(index) => Some(index),
            _ => None,
        }
    }

    /// Whether the symbol is visible outside its object.
    pub fn is_global(&self) -> bool {
        self.binding != Binding::Local
    }
}

impl Section<'_> {
    /// Whether the section is loaded into memory.
    pub fn is_alloc(&self) -> bool {
        self.flags & elf::SHF_ALLOC.0 != 0
    }

    /// Whether the section holds code.
    pub fn is_code(&self) -> bool {
        self.flags & elf::SHF_EXECINSTR.0 != 0
    }

    /// Whether the section is a merge section of strings (`.rodata.str1.1`) of characters
    /// 1, 2 or 4 bytes wide (any other width is malformed: the section is then plain data).
    pub fn is_merge_strings(&self) -> bool {
        self.flags & (elf::SHF_MERGE.0 | elf::SHF_STRINGS.0)
            == elf::SHF_MERGE.0 | elf::SHF_STRINGS.0
            && matches!(self.entsize, 0 | 1 | 2 | 4)
    }

    /// Whether the section is a merge section of fixed-size constants (`.rodata.cst8`).
    pub fn is_merge_constants(&self) -> bool {
        self.flags & (elf::SHF_MERGE.0 | elf::SHF_STRINGS.0) == elf::SHF_MERGE.0 && self.entsize > 0
    }

    /// Whether the section has no bytes in the file (`.bss`).
    pub fn is_nobits(&self) -> bool {
        self.sh_type == elf::SHT_NOBITS.0
    }

    /// The bytes of `[start, end)`, or `None` when out of range (or `SHT_NOBITS`).
    pub fn bytes(&self, start: u64, end: u64) -> Option<&[u8]> {
        let start = usize::try_from(start).ok()?;
        let end = usize::try_from(end).ok()?;
        self.data.get(start..end)
    }

    /// Relocations whose patched field starts inside `[start, end)`.
    pub fn relocs_in(&self, start: u64, end: u64) -> &[Reloc] {
        let lo = self.relocs.partition_point(|r| r.offset < start);
        let hi = self.relocs.partition_point(|r| r.offset < end);
        &self.relocs[lo..hi]
    }
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

impl<'a> ElfObject<'a> {
    /// An object with no sections and no symbols: the stand-in for an object that exists in
    /// one build only.
    pub fn empty() -> Self {
        ElfObject {
            sections: Vec::new(),
            symbols: Vec::new(),
            comment: Vec::new(),
        }
    }

    /// Parses and validates a relocatable x86-64 ELF object.
    ///
    /// Errors (never panics) on anything that is not a well-formed little-endian ELF64
    /// `ET_REL` object for `EM_X86_64`.
    pub fn parse(data: &'a [u8]) -> Result<Self, Error> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(Error::NotElf);
        }
        if data.len() < 6 || data[4] != elf::ELFCLASS64.0 || data[5] != elf::ELFDATA2LSB.0 {
            return Err(Error::WrongArch("not a 64-bit little-endian ELF".into()));
        }
        let header = elf::FileHeader64::<LittleEndian>::parse(data)
            .map_err(|e| malformed(format!("ELF header: {e}")))?;
        let endian = LittleEndian;
        let machine = header.e_machine(endian).0;
        if machine != elf::EM_X86_64.0 {
            return Err(Error::WrongArch(format!(
                "e_machine {machine} is not x86-64 (62)"
            )));
        }
        let e_type = header.e_type(endian).0;
        if e_type != elf::ET_REL.0 {
            return Err(Error::NotRelocatable(e_type));
        }
        let table = header
            .sections(endian, data)
            .map_err(|e| malformed(format!("section table: {e}")))?;

        let mut sections = Vec::with_capacity(table.len());
        for (index, sh) in table.enumerate() {
            let name = table
                .section_name(endian, sh)
                .map_err(|e| malformed(format!("name of section {}: {e}", index.0)))?;
            let name = String::from_utf8_lossy(name).into_owned();
            let sh_type = sh.sh_type(endian).0;
            let section_data = if sh_type == elf::SHT_NOBITS.0 {
                &[][..]
            } else {
                sh.data(endian, data)
                    .map_err(|e| malformed(format!("data of section {name}: {e}")))?
            };
            sections.push(Section {
                index: index.0,
                name,
                sh_type,
                flags: sh.sh_flags(endian).0,
                size: sh.sh_size(endian),
                entsize: sh.sh_entsize(endian),
                align: sh.sh_addralign(endian),
                data: section_data,
                relocs: Vec::new(),
            });
        }

        let symtab = table
            .symbols(endian, data, elf::SHT_SYMTAB)
            .map_err(|e| malformed(format!("symbol table: {e}")))?;
        let strings: StringTable<'a> = symtab.strings();
        let mut symbols = Vec::with_capacity(symtab.len());
        for (index, sym) in symtab.enumerate() {
            let kind = match sym.st_type().0 {
                0 => SymbolKind::NoType,
                1 => SymbolKind::Object,
                2 => SymbolKind::Func,
                3 => SymbolKind::Section,
                4 => SymbolKind::File,
                6 => SymbolKind::Tls,
                _ => SymbolKind::Other,
            };
            let binding = match sym.st_bind().0 {
                0 => Binding::Local,
                2 => Binding::Weak,
                _ => Binding::Global,
            };
            let shndx = symtab
                .symbol_section(endian, sym, index)
                .map_err(|e| malformed(format!("section of symbol {}: {e}", index.0)))?;
            let raw_shndx = sym.st_shndx(endian).0;
            let definition = match shndx {
                Some(section) if section.0 < sections.len() => Definition::Section(section.0),
                Some(section) => {
                    return Err(malformed(format!(
                        "symbol {} refers to section {} of {}",
                        index.0,
                        section.0,
                        sections.len()
                    )));
                }
                None if raw_shndx == elf::SHN_ABS.0 => Definition::Absolute,
                None if raw_shndx == elf::SHN_COMMON.0 => Definition::Common,
                None => Definition::Undefined,
            };
            let name = if kind == SymbolKind::Section {
                match definition {
                    Definition::Section(s) => sections[s].name.clone(),
                    _ => String::new(),
                }
            } else {
                let raw = sym
                    .name(endian, strings)
                    .map_err(|e| malformed(format!("name of symbol {}: {e}", index.0)))?;
                String::from_utf8_lossy(raw).into_owned()
            };
            symbols.push(Symbol {
                index: index.0,
                name,
                kind,
                binding,
                definition,
                value: sym.st_value(endian),
                size: sym.st_size(endian),
            });
        }

        for (index, sh) in table.enumerate() {
            if sh.sh_type(endian) == elf::SHT_REL {
                return Err(Error::Unsupported(format!(
                    "section {} uses REL relocations; x86-64 objects use RELA",
                    sections[index.0].name
                )));
            }
            let Some((relas, _link)) = sh
                .rela(endian, data)
                .map_err(|e| malformed(format!("relocations of section {}: {e}", index.0)))?
            else {
                continue;
            };
            let target = sh.info_link(endian).0;
            if target == 0 || target >= sections.len() {
                return Err(malformed(format!(
                    "relocation section {} applies to section {target}",
                    sections[index.0].name
                )));
            }
            let mut relocs = Vec::with_capacity(relas.len());
            for rela in relas {
                let symbol = rela.r_sym(endian, false) as usize;
                if symbol >= symbols.len() {
                    return Err(malformed(format!(
                        "relocation in {} names symbol {symbol} of {}",
                        sections[index.0].name,
                        symbols.len()
                    )));
                }
                relocs.push(Reloc {
                    offset: rela.r_offset(endian),
                    r_type: rela.r_type(endian, false).0,
                    symbol,
                    addend: rela.r_addend(endian),
                });
            }
            relocs.sort_by_key(|r| r.offset);
            sections[target].relocs.extend(relocs);
            sections[target].relocs.sort_by_key(|r| r.offset);
        }

        let comment = sections
            .iter()
            .find(|s| s.name == ".comment")
            .map(|s| {
                s.data
                    .split(|&b| b == 0)
                    .filter(|part| !part.is_empty())
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect()
            })
            .unwrap_or_default();

        Ok(ElfObject {
            sections,
            symbols,
            comment,
        })
    }

    /// The name of the first `STT_FILE` symbol: the source file the object was compiled from.
    pub fn source_file(&self) -> Option<&str> {
        self.symbols
            .iter()
            .find(|s| s.kind == SymbolKind::File && !s.name.is_empty())
            .map(|s| s.name.as_str())
    }

    /// The section with this name, if any.
    pub fn section_by_name(&self, name: &str) -> Option<&Section<'a>> {
        self.sections.iter().find(|s| s.name == name)
    }
}
