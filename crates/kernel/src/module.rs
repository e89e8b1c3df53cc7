//! The patch object of a livepatch module, and the C file that registers it.
//!
//! [`patch_object`] turns the [`PatchSet`]s of the changed translation units into one
//! relocatable ELF object: a section per piece (code, data, and the kernel tables the pieces
//! own, under their own names so the module loader finds them), a global `__hsp_new_N`
//! symbol at each replacement's entry, and relocations to symbols of the running kernel — by
//! plain name when vmlinux exports them (the module loader resolves those), else to a
//! `.klp.sym.vmlinux.NAME,POS` symbol that [`crate::klp::convert`] turns into livepatch's
//! own relocation format once kbuild has linked the module.
//!
//! Pure: bytes in, bytes out.

use object::write::{Object, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionFlags, SectionKind,
    SymbolFlags, SymbolKind, SymbolScope, elf,
};

use hotsplice_objdiff::PatchSet;
use hotsplice_objdiff::patchset::{HookKind, Link, PieceKind, PieceReloc, SymbolRef};

use crate::Error;

/// How the module reaches a symbol of the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// vmlinux exports it: an ordinary undefined symbol the module loader resolves.
    Exported(String),
    /// A new global the patch itself defines, in another of its translation units (the
    /// running kernel has no such symbol yet).
    Patch {
        /// The translation unit defining it.
        object: String,
        /// Its name.
        name: String,
    },
    /// Not exported (or static): a livepatch symbol, found by name and position at enable.
    Klp {
        /// The object it is in: `vmlinux` or a module's name.
        object: String,
        /// The kallsyms name.
        name: String,
        /// Its `sympos` (0: unique).
        sympos: u64,
    },
}

impl Resolution {
    /// The undefined symbol name written into the patch object.
    pub fn symbol_name(&self) -> String {
        match self {
            Resolution::Exported(name) | Resolution::Patch { name, .. } => name.clone(),
            Resolution::Klp {
                object,
                name,
                sympos,
            } => format!(".klp.sym.{object}.{name},{sympos}"),
        }
    }
}

/// A function the module replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlpFunction {
    /// The old function's name in the running kernel.
    pub old_name: String,
    /// Its `sympos`.
    pub sympos: u64,
    /// The global symbol of the new version in the patch object.
    pub new_symbol: String,
    /// The object (translation unit) it comes from.
    pub object: String,
    /// The module it is in, `None` for vmlinux.
    pub module: Option<String>,
}

/// The patch object and what it replaces.
#[derive(Debug, Clone)]
pub struct PatchObject {
    /// The relocatable object's bytes.
    pub bytes: Vec<u8>,
    /// The functions to register with livepatch, in order.
    pub functions: Vec<KlpFunction>,
    /// The callbacks the patch declares (`hotsplice-klp.h`, `kpatch-macros.h`), in order.
    pub callbacks: Vec<KlpCallback>,
}

/// A livepatch callback of the patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlpCallback {
    /// When it runs: pre-patch (`PreApply`), post-patch, pre-unpatch (`PreUndo`), post-unpatch.
    pub kind: HookKind,
    /// The global symbol of the function in the patch object.
    pub symbol: String,
    /// The object it is a callback of: the module, `None` for vmlinux.
    pub module: Option<String>,
}

/// Builds the patch object. `resolve` says how to reach a symbol of the running kernel
/// referenced from object `object` (the first argument); `sympos` gives the position of a
/// replaced function; `modules[i]` is the module `sets[i]` is part of (`None`: vmlinux).
pub fn patch_object(
    sets: &[PatchSet],
    modules: &[Option<String>],
    resolve: &mut dyn FnMut(&str, &SymbolRef) -> Result<Resolution, Error>,
    sympos: &mut dyn FnMut(&str, &str) -> Result<u64, Error>,
) -> Result<PatchObject, Error> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let mut functions = Vec::new();
    let mut callbacks = Vec::new();
    let mut undefined: std::collections::HashMap<String, SymbolId> =
        std::collections::HashMap::new();
    let keyed: Vec<PatchSet> = sets
        .iter()
        .map(|set| static_keys(set, resolve))
        .collect::<Result<_, _>>()?;
    let mut all_sections: Vec<Vec<SectionId>> = Vec::with_capacity(keyed.len());
    for (o, set) in keyed.iter().enumerate() {
        // One section per piece.
        let mut sections: Vec<SectionId> = Vec::with_capacity(set.pieces.len());
        for (i, piece) in set.pieces.iter().enumerate() {
            let (name, kind, flags) = match (&piece.table, piece.kind) {
                (Some(table), kind) => (table.clone(), section_kind(kind), sh_flags(kind)),
                (None, PieceKind::Code) => (
                    format!(".text.hsp.{o}.{i}"),
                    SectionKind::Text,
                    sh_flags(PieceKind::Code),
                ),
                (None, kind) => (
                    format!("{}.hsp.{o}.{i}", prefix(kind)),
                    section_kind(kind),
                    sh_flags(kind),
                ),
            };
            let id = obj.add_section(Vec::new(), name.into_bytes(), kind);
            obj.section_mut(id).flags = SectionFlags::Elf {
                sh_type: if piece.kind == PieceKind::Bss {
                    elf::SHT_NOBITS
                } else {
                    elf::SHT_PROGBITS
                },
                sh_flags: flags,
            };
            if piece.kind == PieceKind::Bss {
                obj.append_section_bss(id, piece.size, piece.align);
            } else {
                obj.set_section_data(id, piece.bytes.clone(), piece.align);
            }
            if let Some(symbol) = &piece.symbol {
                obj.add_symbol(Symbol {
                    name: symbol.clone().into_bytes(),
                    value: 0,
                    size: piece.size,
                    kind: if piece.kind == PieceKind::Code {
                        SymbolKind::Text
                    } else {
                        SymbolKind::Data
                    },
                    scope: SymbolScope::Compilation,
                    weak: false,
                    section: SymbolSection::Section(id),
                    flags: SymbolFlags::None,
                });
            }
            sections.push(id);
        }
        for r in &set.replacements {
            let Some(&section) = sections.get(r.piece) else {
                return Err(Error::Malformed(format!(
                    "replacement {} points at piece {} of {}",
                    r.name,
                    r.piece,
                    set.pieces.len()
                )));
            };
            let new_symbol = format!("__hsp_new_{}", functions.len());
            obj.add_symbol(Symbol {
                name: new_symbol.clone().into_bytes(),
                value: 0,
                size: set.pieces[r.piece].size,
                kind: SymbolKind::Text,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Section(section),
                flags: SymbolFlags::None,
            });
            functions.push(KlpFunction {
                old_name: r.name.clone(),
                sympos: sympos(&set.object, &r.name)?,
                new_symbol,
                object: set.object.clone(),
                module: modules.get(o).cloned().flatten(),
            });
        }
        for hook in &set.hooks {
            let Some(&section) = sections.get(hook.piece) else {
                return Err(Error::Malformed(format!(
                    "a callback points at piece {} of {}",
                    hook.piece,
                    set.pieces.len()
                )));
            };
            let symbol = format!("__hsp_cb_{}", callbacks.len());
            obj.add_symbol(Symbol {
                name: symbol.clone().into_bytes(),
                value: 0,
                size: set.pieces[hook.piece].size,
                kind: SymbolKind::Text,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Section(section),
                flags: SymbolFlags::None,
            });
            callbacks.push(KlpCallback {
                kind: hook.kind,
                symbol,
                module: modules.get(o).cloned().flatten(),
            });
        }
        all_sections.push(sections);
    }
    for (o, set) in keyed.iter().enumerate() {
        let sections = &all_sections[o];
        for (i, piece) in set.pieces.iter().enumerate() {
            for reloc in &piece.relocs {
                let (symbol, addend) = match &reloc.target {
                    Link::Piece(j) => {
                        let Some(&target) = sections.get(*j) else {
                            return Err(Error::Malformed(format!(
                                "piece {} relocates against piece {j} of {}",
                                piece.name,
                                set.pieces.len()
                            )));
                        };
                        (obj.section_symbol(target), reloc.addend)
                    }
                    Link::Symbol(s) => {
                        let resolution = resolve(&set.object, s)?;
                        if let Resolution::Patch { object, name } = &resolution {
                            // A new global of another patched object: its piece.
                            let found = keyed.iter().zip(&all_sections).find_map(|(t, ids)| {
                                let k = t.pieces.iter().position(|p| {
                                    t.object == *object && p.symbol.as_deref() == Some(name)
                                })?;
                                ids.get(k).copied()
                            });
                            let Some(target) = found else {
                                return Err(Error::MissingSymbol {
                                    name: name.clone(),
                                    object: set.object.clone(),
                                });
                            };
                            let symbol = obj.section_symbol(target);
                            obj.add_relocation(
                                sections[i],
                                Relocation {
                                    offset: reloc.offset,
                                    symbol,
                                    addend: reloc.addend,
                                    flags: RelocationFlags::Elf {
                                        r_type: elf::RelocationType(reloc.r_type),
                                    },
                                },
                            )
                            .map_err(|e| Error::Malformed(format!("{}: {e}", piece.name)))?;
                            continue;
                        }
                        let name = resolution.symbol_name();
                        let id = *undefined.entry(name.clone()).or_insert_with(|| {
                            obj.add_symbol(Symbol {
                                name: name.into_bytes(),
                                value: 0,
                                size: 0,
                                kind: SymbolKind::Unknown,
                                scope: SymbolScope::Linkage,
                                weak: false,
                                section: SymbolSection::Undefined,
                                flags: SymbolFlags::None,
                            })
                        });
                        (id, reloc.addend)
                    }
                    Link::Nothing => {
                        return Err(Error::Unsupported {
                            symbol: piece.name.clone(),
                            detail: format!(
                                "{}: a relocation with no symbol at {}+{:#x}",
                                set.object, piece.name, reloc.offset
                            ),
                        });
                    }
                };
                obj.add_relocation(
                    sections[i],
                    Relocation {
                        offset: reloc.offset,
                        symbol,
                        addend,
                        flags: RelocationFlags::Elf {
                            r_type: elf::RelocationType(reloc.r_type),
                        },
                    },
                )
                .map_err(|e| Error::Malformed(format!("{}: {e}", piece.name)))?;
            }
        }
    }
    let bytes = obj
        .write()
        .map_err(|e| Error::Malformed(format!("writing the patch object: {e}")))?;
    Ok(PatchObject {
        bytes,
        functions,
        callbacks,
    })
}

/// Checks the keys of the jump labels and static calls the patch carries (`__jump_table`,
/// `.static_call_sites` entries), and returns the set with the inert ones dropped.
///
/// The module loader reads those keys when the livepatch module loads (jump-label and
/// static-call setup at `MODULE_STATE_COMING`). A key vmlinux does not export is reached
/// through a `.klp.rela.vmlinux.*` relocation, which the loader applies before that
/// (`apply_relocations` → `klp_apply_section_relocs`, Linux 5.8 and later): it works. A key
/// in a *module* is reached through `.klp.rela.MODULE.*`, which livepatch applies only when
/// that module is (or becomes) live — after this module's jump labels were set up from a
/// key field still zero: refused, except a tracepoint's, whose entry is dropped so the site
/// stays as compiled (a NOP: the tracepoint does not fire in the new code).
fn static_keys(
    set: &PatchSet,
    resolve: &mut dyn FnMut(&str, &SymbolRef) -> Result<Resolution, Error>,
) -> Result<PatchSet, Error> {
    let mut out = set.clone();
    for piece in &mut out.pieces {
        let Some(table) = piece
            .table
            .as_deref()
            .and_then(hotsplice_objdiff::table::table_of)
        else {
            continue;
        };
        let Some(key_at) = table.key_at_load else {
            continue;
        };
        let mut dropped = std::collections::BTreeSet::new();
        for reloc in &piece.relocs {
            let Link::Symbol(key) = &reloc.target else {
                continue;
            };
            if reloc.offset % table.entry != key_at {
                continue;
            }
            let Resolution::Klp { object, .. } = resolve(&set.object, key)? else {
                continue;
            };
            if object == "vmlinux" {
                continue;
            }
            if key.name.starts_with("__tracepoint_") && table.name == "__jump_table" {
                dropped.insert(reloc.offset / table.entry);
                continue;
            }
            return Err(Error::Unsupported {
                symbol: key.name.clone(),
                detail: format!(
                    "{}: the new code uses the {} {} of module {object}: the module loader sets up a livepatch module's {} when it loads, and livepatch writes references into another module only when that module is live, later — so the key would be read as zero (use static_key_enabled() or the static call's function pointer instead)",
                    set.object,
                    if table.name == "__jump_table" {
                        "static key"
                    } else {
                        "static call"
                    },
                    key.name,
                    if table.name == "__jump_table" {
                        "jump labels"
                    } else {
                        "static calls"
                    },
                ),
            });
        }
        if dropped.is_empty() {
            continue;
        }
        let keep = |offset: u64| !dropped.contains(&(offset / table.entry));
        let shift = |offset: u64| {
            let before = dropped.range(..offset / table.entry).count() as u64;
            offset - before * table.entry
        };
        piece.bytes = piece
            .bytes
            .chunks(table.entry as usize)
            .enumerate()
            .filter(|(i, _)| keep(*i as u64 * table.entry))
            .flat_map(|(_, chunk)| chunk.iter().copied())
            .collect();
        piece.size = piece.bytes.len() as u64;
        piece.relocs = piece
            .relocs
            .iter()
            .filter(|r| keep(r.offset))
            .map(|r| PieceReloc {
                offset: shift(r.offset),
                ..r.clone()
            })
            .collect();
    }
    Ok(out)
}

fn prefix(kind: PieceKind) -> &'static str {
    match kind {
        PieceKind::Code => ".text",
        PieceKind::ReadOnly => ".rodata",
        PieceKind::Data => ".data",
        PieceKind::Bss => ".bss",
    }
}

fn section_kind(kind: PieceKind) -> SectionKind {
    match kind {
        PieceKind::Code => SectionKind::Text,
        PieceKind::ReadOnly => SectionKind::ReadOnlyData,
        PieceKind::Data => SectionKind::Data,
        PieceKind::Bss => SectionKind::UninitializedData,
    }
}

fn sh_flags(kind: PieceKind) -> elf::SectionFlags {
    match kind {
        PieceKind::Code => elf::SHF_ALLOC | elf::SHF_EXECINSTR,
        PieceKind::ReadOnly => elf::SHF_ALLOC,
        PieceKind::Data | PieceKind::Bss => elf::SHF_ALLOC | elf::SHF_WRITE,
    }
}

/// The C file that registers the patch with livepatch (compiled by kbuild with the module):
/// one `klp_object` per patched object (vmlinux or a module) with its functions and, where
/// the patch declares any, its callbacks — several of one kind (from several translation
/// units) run in order through a generated callback; a pre-patch callback's error stops
/// the rest and refuses the patch.
pub fn registration_source(
    functions: &[KlpFunction],
    callbacks: &[KlpCallback],
    module: &str,
) -> String {
    let mut c = String::new();
    c.push_str(&format!(
        "// Generated by hotsplice: registers the live patch {module} with livepatch.\n\
         #include <linux/kernel.h>\n#include <linux/module.h>\n#include <linux/livepatch.h>\n\n"
    ));
    for f in functions {
        c.push_str(&format!("extern char {}[];\n", f.new_symbol));
    }
    for cb in callbacks {
        let ret = if cb.kind == HookKind::PreApply {
            "int"
        } else {
            "void"
        };
        c.push_str(&format!(
            "extern {ret} {}(struct klp_object *);\n",
            cb.symbol
        ));
    }
    let mut objects: Vec<Option<String>> = Vec::new();
    for m in functions
        .iter()
        .map(|f| &f.module)
        .chain(callbacks.iter().map(|cb| &cb.module))
    {
        if !objects.contains(m) {
            objects.push(m.clone());
        }
    }
    let kinds = [
        (HookKind::PreApply, "pre_patch"),
        (HookKind::PostApply, "post_patch"),
        (HookKind::PreUndo, "pre_unpatch"),
        (HookKind::PostUndo, "post_unpatch"),
    ];
    for (i, object) in objects.iter().enumerate() {
        c.push_str(&format!("\nstatic struct klp_func hsp_funcs_{i}[] = {{\n"));
        for f in functions.iter().filter(|f| &f.module == object) {
            c.push_str(&format!(
                "\t{{ .old_name = \"{}\", .new_func = {}, .old_sympos = {} }},\n",
                f.old_name, f.new_symbol, f.sympos
            ));
        }
        c.push_str("\t{ }\n};\n");
        for (kind, field) in kinds {
            let ours: Vec<&KlpCallback> = callbacks
                .iter()
                .filter(|cb| &cb.module == object && cb.kind == kind)
                .collect();
            if ours.is_empty() {
                continue;
            }
            if kind == HookKind::PreApply {
                c.push_str(&format!(
                    "\nstatic int hsp_{field}_{i}(struct klp_object *obj)\n{{\n\tint ret;\n\n"
                ));
                for cb in &ours {
                    c.push_str(&format!(
                        "\tret = {}(obj);\n\tif (ret)\n\t\treturn ret;\n",
                        cb.symbol
                    ));
                }
                c.push_str("\treturn 0;\n}\n");
            } else {
                c.push_str(&format!(
                    "\nstatic void hsp_{field}_{i}(struct klp_object *obj)\n{{\n"
                ));
                for cb in &ours {
                    c.push_str(&format!("\t{}(obj);\n", cb.symbol));
                }
                c.push_str("}\n");
            }
        }
    }
    c.push_str("\nstatic struct klp_object hsp_objs[] = {\n");
    for (i, object) in objects.iter().enumerate() {
        let name = object
            .as_ref()
            .map_or("NULL".to_string(), |m| format!("\"{m}\""));
        let mut fields = String::new();
        for (kind, field) in kinds {
            if callbacks
                .iter()
                .any(|cb| &cb.module == object && cb.kind == kind)
            {
                fields.push_str(&format!(" .{field} = hsp_{field}_{i},"));
            }
        }
        let callbacks = if fields.is_empty() {
            String::new()
        } else {
            format!(", .callbacks = {{{} }}", fields.trim_end_matches(','))
        };
        c.push_str(&format!(
            "\t{{ .name = {name}, .funcs = hsp_funcs_{i}{callbacks} }},\n"
        ));
    }
    c.push_str(
        "\t{ }\n};\n\n\
         static struct klp_patch hsp_patch = {\n\t.mod = THIS_MODULE,\n\t.objs = hsp_objs,\n};\n\n\
         static int __init hsp_init(void)\n{\n\treturn klp_enable_patch(&hsp_patch);\n}\n\n\
         static void __exit hsp_exit(void)\n{\n}\n\n\
         module_init(hsp_init);\nmodule_exit(hsp_exit);\n\
         MODULE_LICENSE(\"GPL\");\nMODULE_INFO(livepatch, \"Y\");\n",
    );
    c.push_str(&format!(
        "MODULE_DESCRIPTION(\"hotsplice live patch {module}\");\n"
    ));
    c
}

#[cfg(test)]
mod tests {
    use hotsplice_objdiff::patchset::{Piece, PieceReloc, Replacement, SymbolClass};
    use object::{Object, ObjectSymbol};

    use super::*;

    /// One replaced function whose code has a jump label on `key`.
    fn set() -> PatchSet {
        let key = SymbolRef {
            name: "some_key".into(),
            class: SymbolClass::Data,
            local: false,
        };
        PatchSet {
            object: "x.o".into(),
            source_file: None,
            referenced: Vec::new(),
            hooks: Vec::new(),
            pieces: vec![
                Piece {
                    name: "f".into(),
                    symbol: Some("f".into()),
                    kind: PieceKind::Code,
                    align: 16,
                    size: 8,
                    bytes: vec![0x90; 8],
                    relocs: Vec::new(),
                    table: None,
                    frames: Vec::new(),
                },
                Piece {
                    name: "__jump_table".into(),
                    symbol: None,
                    kind: PieceKind::Data,
                    align: 8,
                    size: 16,
                    bytes: vec![0; 16],
                    relocs: vec![
                        PieceReloc {
                            offset: 0,
                            r_type: elf::R_X86_64_PC32.0,
                            target: Link::Piece(0),
                            addend: 0,
                        },
                        PieceReloc {
                            offset: 8,
                            r_type: elf::R_X86_64_PC64.0,
                            target: Link::Symbol(key),
                            addend: 0,
                        },
                    ],
                    table: Some("__jump_table".into()),
                    frames: Vec::new(),
                },
            ],
            replacements: vec![Replacement {
                name: "f".into(),
                post_name: "f".into(),
                local: false,
                piece: 0,
                pre_code: Vec::new(),
                pre_relocs: Vec::new(),
            }],
        }
    }

    fn klp_in(object: &'static str) -> impl FnMut(&str, &SymbolRef) -> Result<Resolution, Error> {
        move |_: &str, s: &SymbolRef| {
            Ok(Resolution::Klp {
                object: object.into(),
                name: s.name.clone(),
                sympos: 0,
            })
        }
    }

    #[test]
    fn jump_label_on_an_unexported_vmlinux_key_is_a_livepatch_relocation() {
        let patch =
            patch_object(&[set()], &[None], &mut klp_in("vmlinux"), &mut |_, _| Ok(0)).unwrap();
        let file = object::File::parse(&*patch.bytes).unwrap();
        let names: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        assert!(names.contains(&".klp.sym.vmlinux.some_key,0"), "{names:?}");
    }

    #[test]
    fn jump_label_on_a_module_key_is_refused_naming_it() {
        let err =
            patch_object(&[set()], &[None], &mut klp_in("xfs"), &mut |_, _| Ok(0)).unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { symbol, .. } if symbol == "some_key"),
            "{err}"
        );
    }

    #[test]
    fn a_module_tracepoint_entry_is_dropped() {
        let mut set = set();
        if let Link::Symbol(key) = &mut set.pieces[1].relocs[1].target {
            key.name = "__tracepoint_xfs_thing".into();
        }
        let out = static_keys(&set, &mut klp_in("xfs")).unwrap();
        assert_eq!(out.pieces[1].size, 0);
        assert!(out.pieces[1].relocs.is_empty());
    }

    #[test]
    fn exported_and_klp_symbols_are_named_as_livepatch_expects() {
        let mut resolve = |_: &str, s: &SymbolRef| Ok(Resolution::Exported(s.name.clone()));
        let patch = patch_object(&[set()], &[None], &mut resolve, &mut |_, _| Ok(3)).unwrap();
        assert_eq!(patch.functions.len(), 1);
        assert_eq!(patch.functions[0].sympos, 3);
        let file = object::File::parse(&*patch.bytes).unwrap();
        let names: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        assert!(names.contains(&"some_key"), "{names:?}");
        assert!(names.contains(&"__hsp_new_0"), "{names:?}");
        assert_eq!(
            Resolution::Klp {
                object: "vmlinux".into(),
                name: "file_systems".into(),
                sympos: 2
            }
            .symbol_name(),
            ".klp.sym.vmlinux.file_systems,2"
        );
        let c = registration_source(&patch.functions, &patch.callbacks, "fix");
        assert!(c.contains(".old_name = \"f\", .new_func = __hsp_new_0, .old_sympos = 3"));
        assert!(c.contains("{ .name = NULL, .funcs = hsp_funcs_0 }"), "{c}");
        assert!(c.contains("MODULE_INFO(livepatch, \"Y\")"));
    }
}
