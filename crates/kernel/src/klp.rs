//! Livepatch's ELF format for references to non-exported kernel symbols.
//!
//! kbuild links and modposts the module with such references as ordinary undefined
//! symbols named `.klp.sym.vmlinux.NAME,POS`. [`convert`] then rewrites the linked `.ko`
//! the way `Documentation/livepatch/module-elf-format.rst` specifies: those symbols get
//! `st_shndx = SHN_LIVEPATCH` (the module loader leaves them alone), and the relocations
//! that use them move from `.rela.X` into `.klp.rela.vmlinux.X` sections flagged
//! `SHF_RELA_LIVEPATCH` (and `SHF_ALLOC`, so their contents outlive the load), which
//! livepatch applies itself when the patch is enabled.
//!
//! Pure: bytes in, bytes out.

use object::build::Id;
use object::build::elf::{Builder, SectionData};
use object::elf;

use crate::Error;

/// `SHN_LIVEPATCH`: section index of livepatch symbols.
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// `SHF_RELA_LIVEPATCH`: flag of livepatch relocation sections.
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
/// The prefix of livepatch symbol names.
pub const SYMBOL_PREFIX: &str = ".klp.sym.";

/// What [`convert`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Converted {
    /// The rewritten module.
    pub bytes: Vec<u8>,
    /// Livepatch symbols marked.
    pub symbols: usize,
    /// Relocations moved into `.klp.rela.*` sections.
    pub relocations: usize,
}

/// Rewrites a linked livepatch module's `.klp.sym.*` references into livepatch's format.
pub fn convert(ko: &[u8]) -> Result<Converted, Error> {
    let mut builder =
        Builder::read(ko).map_err(|e| Error::Malformed(format!("reading the module: {e}")))?;
    // Symbol index → the object (`vmlinux`, a module) it is in: `.klp.sym.OBJ.NAME,POS`.
    let mut klp = std::collections::HashMap::new();
    for sym in builder.symbols.iter_mut() {
        if sym.name.starts_with(SYMBOL_PREFIX.as_bytes()) {
            if sym.section.is_some() {
                return Err(Error::Malformed(format!(
                    "livepatch symbol {} is defined in the module",
                    String::from_utf8_lossy(&sym.name)
                )));
            }
            sym.st_shndx = elf::SymbolSection(SHN_LIVEPATCH);
            let object = sym.name[SYMBOL_PREFIX.len()..]
                .split(|&b| b == b'.')
                .next()
                .unwrap_or_default()
                .to_vec();
            klp.insert(sym.id().index(), object);
        }
    }
    let symtab = builder
        .sections
        .iter()
        .find(|s| matches!(s.data, SectionData::Symbol))
        .map(|s| s.id());
    let mut moved = 0;
    let mut new_sections = Vec::new();
    for section in builder.sections.iter_mut() {
        let SectionData::Relocation(relocs) = &mut section.data else {
            continue;
        };
        if section.sh_type != elf::SHT_RELA {
            continue;
        }
        let target_name = section
            .name
            .strip_prefix(b".rela")
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let mut by_object: std::collections::BTreeMap<Vec<u8>, Vec<_>> = Default::default();
        let mut rest = Vec::new();
        for r in std::mem::take(relocs) {
            match r.symbol.and_then(|s| klp.get(&s.index())) {
                Some(object) => by_object.entry(object.clone()).or_default().push(r),
                None => rest.push(r),
            }
        }
        *relocs = rest;
        for (object, ours) in by_object {
            moved += ours.len();
            new_sections.push((object, target_name.clone(), section.sh_info_section, ours));
        }
    }
    for (object, target, info, relocs) in new_sections {
        let mut name = b".klp.rela.".to_vec();
        name.extend_from_slice(&object);
        name.push(b'.');
        name.extend_from_slice(&target);
        let s = builder.sections.add();
        s.name = name.into();
        s.sh_type = elf::SHT_RELA;
        s.sh_flags =
            elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0 | SHF_RELA_LIVEPATCH);
        s.sh_link_section = symtab;
        s.sh_info_section = info;
        s.sh_addralign = 8;
        s.sh_entsize = 24;
        s.data = SectionData::Relocation(relocs);
    }
    let mut bytes = Vec::new();
    builder
        .write(&mut bytes)
        .map_err(|e| Error::Malformed(format!("writing the module: {e}")))?;
    Ok(Converted {
        bytes,
        symbols: klp.len(),
        relocations: moved,
    })
}

/// The `.modinfo` of a module: `key=value` strings (`name`, `vermagic`, `livepatch`...).
pub fn modinfo(ko: &[u8]) -> Result<Vec<(String, String)>, Error> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(ko)
        .map_err(|e| Error::Malformed(format!("not a kernel module: {e}")))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| Error::Malformed("not a kernel module: no .modinfo section".into()))?;
    let data = section
        .data()
        .map_err(|e| Error::Malformed(format!("reading .modinfo: {e}")))?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (k, v) = text.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use object::read::elf::{ElfFile64, FileHeader, SectionHeader, Sym};
    use object::{Endianness, Object, ObjectSection};

    use super::*;

    /// A relocatable object with a call to `.klp.sym.vmlinux.helper,2` and one to `printk`.
    fn object() -> Vec<u8> {
        use object::write::{Object as W, Relocation, Symbol, SymbolSection};
        use object::{
            Architecture, BinaryFormat, RelocationFlags, SectionKind, SymbolFlags, SymbolKind,
            SymbolScope,
        };
        let mut o = W::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = o.add_section(Vec::new(), b".text.f".to_vec(), SectionKind::Text);
        o.set_section_data(text, vec![0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0], 16);
        let mut undefined = |name: &str| {
            o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: SymbolKind::Unknown,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Undefined,
                flags: SymbolFlags::None,
            })
        };
        let klp = undefined(".klp.sym.vmlinux.helper,2");
        let printk = undefined("printk");
        for (offset, symbol) in [(1, klp), (6, printk)] {
            o.add_relocation(
                text,
                Relocation {
                    offset,
                    symbol,
                    addend: -4,
                    flags: RelocationFlags::Elf {
                        r_type: elf::R_X86_64_PLT32,
                    },
                },
            )
            .unwrap();
        }
        o.write().unwrap()
    }

    #[test]
    fn klp_references_move_to_livepatch_sections() {
        let converted = convert(&object()).unwrap();
        assert_eq!((converted.symbols, converted.relocations), (1, 1));
        let file = ElfFile64::<Endianness>::parse(&*converted.bytes).unwrap();
        let klp = file
            .section_by_name(".klp.rela.vmlinux..text.f")
            .expect("klp section");
        let header = klp.elf_section_header();
        let flags = header.sh_flags(Endianness::Little).0;
        assert_ne!(flags & SHF_RELA_LIVEPATCH, 0);
        assert_ne!(flags & elf::SHF_ALLOC.0, 0);
        assert_eq!(klp.size(), 24, "one relocation");
        let rest = file.section_by_name(".rela.text.f");
        assert_eq!(
            rest.map_or(0, |s| s.size()),
            24,
            "printk's stays an ordinary relocation"
        );
        let symbols = file.elf_symbol_table();
        let strings = symbols.strings();
        let marked = symbols
            .symbols()
            .iter()
            .find(|s| s.name(Endianness::Little, strings) == Ok(b".klp.sym.vmlinux.helper,2"))
            .unwrap();
        assert_eq!(marked.st_shndx(Endianness::Little).0, SHN_LIVEPATCH);
        let _ = file.elf_header().e_shnum(Endianness::Little);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(convert(b"not a module").is_err());
        assert!(modinfo(b"not a module").is_err());
    }
}
