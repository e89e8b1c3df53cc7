//! The debugging information of one object, as a flat tree of the DIEs the layout check needs.
//!
//! In a relocatable object `.debug_info` refers to `.debug_str` and friends through
//! relocations, so the sections are relocated first (every section at address 0), then read
//! with `gimli`.

use std::collections::HashMap;

use gimli::{AttributeValue, DwAt, DwTag, EndianSlice, LittleEndian, SectionId};

use crate::elf::ElfObject;

/// One debugging information entry.
#[derive(Debug, Clone)]
pub struct Die {
    /// `DW_TAG_*`.
    pub tag: DwTag,
    /// Index of the parent DIE, if any.
    pub parent: Option<usize>,
    /// Indices of the children, in order.
    pub children: Vec<usize>,
    /// `DW_AT_name`.
    pub name: Option<String>,
    /// `DW_AT_byte_size`.
    pub byte_size: Option<u64>,
    /// `DW_AT_type`, as a DIE index.
    pub type_ref: Option<usize>,
    /// `DW_AT_data_member_location` (a constant offset).
    pub member_offset: Option<u64>,
    /// `DW_AT_bit_size`.
    pub bit_size: Option<u64>,
    /// `DW_AT_data_bit_offset`.
    pub bit_offset: Option<u64>,
    /// `DW_AT_count`, or `DW_AT_upper_bound + 1`, for array subranges.
    pub count: Option<u64>,
    /// `DW_AT_abstract_origin`, as a DIE index.
    pub abstract_origin: Option<usize>,
    /// `DW_AT_specification`, as a DIE index.
    pub specification: Option<usize>,
    /// `DW_AT_declaration`.
    pub declaration: bool,
}

/// All DIEs of an object's `.debug_info`.
#[derive(Debug, Default)]
pub struct DieTree {
    /// The DIEs, in section order.
    pub dies: Vec<Die>,
}

impl DieTree {
    /// The name of a DIE, looking through `DW_AT_specification` and `DW_AT_abstract_origin`.
    pub fn name_of(&self, index: usize) -> Option<&str> {
        let mut at = index;
        for _ in 0..8 {
            let die = &self.dies[at];
            if let Some(name) = &die.name {
                return Some(name);
            }
            at = die.specification.or(die.abstract_origin)?;
        }
        None
    }

    /// The type of a DIE, looking through `DW_AT_specification` and `DW_AT_abstract_origin`.
    pub fn type_of(&self, index: usize) -> Option<usize> {
        let mut at = index;
        for _ in 0..8 {
            let die = &self.dies[at];
            if die.type_ref.is_some() {
                return die.type_ref;
            }
            at = die.specification.or(die.abstract_origin)?;
        }
        None
    }
}

/// Copies of the debug sections with their relocations applied (every section at address 0).
fn relocated_sections(elf: &ElfObject<'_>) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for section in &elf.sections {
        if !section.name.starts_with(".debug_") || section.is_nobits() {
            continue;
        }
        let mut bytes = section.data.to_vec();
        for reloc in &section.relocs {
            let value = elf
                .symbols
                .get(reloc.symbol)
                .map_or(0, |s| s.value as i64)
                .wrapping_add(reloc.addend);
            let width = usize::from(hotsplice_reloc::RelocClass::of(reloc.r_type).width);
            let Ok(at) = usize::try_from(reloc.offset) else {
                continue;
            };
            if let Some(field) = bytes.get_mut(at..at.saturating_add(width)) {
                let le = value.to_le_bytes();
                field.copy_from_slice(&le[..width.min(8)]);
            }
        }
        out.insert(section.name.clone(), bytes);
    }
    out
}

fn udata(value: AttributeValue<EndianSlice<'_, LittleEndian>>) -> Option<u64> {
    value.udata_value()
}

/// Reads every DIE of the object's `.debug_info`. `None` when the object has no usable
/// debugging information (no `-g`, or DWARF `gimli` cannot read).
pub fn read(elf: &ElfObject<'_>) -> Option<DieTree> {
    let sections = relocated_sections(elf);
    if !sections.contains_key(".debug_info") {
        return None;
    }
    let empty: &[u8] = &[];
    let load = |id: SectionId| -> Result<EndianSlice<'_, LittleEndian>, gimli::Error> {
        let data = sections.get(id.name()).map_or(empty, |v| v.as_slice());
        Ok(EndianSlice::new(data, LittleEndian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;

    let mut tree = DieTree::default();
    // Attribute references are resolved after every unit is read.
    let mut index_of: HashMap<usize, usize> = HashMap::new();
    let mut pending: Vec<(usize, DwAt, usize)> = Vec::new();
    let mut headers = dwarf.units();
    while let Ok(Some(header)) = headers.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut cursor = unit.entries();
        let mut stack: Vec<usize> = Vec::new();
        while let Ok(Some(entry)) = cursor.next_dfs() {
            let depth = entry.depth().max(0) as usize;
            stack.truncate(depth);
            let Some(global) = entry
                .offset()
                .to_debug_info_offset(&unit.header)
                .map(|o| o.0)
            else {
                continue;
            };
            let index = tree.dies.len();
            index_of.insert(global, index);
            let mut die = Die {
                tag: entry.tag(),
                parent: stack.last().copied(),
                children: Vec::new(),
                name: None,
                byte_size: None,
                type_ref: None,
                member_offset: None,
                bit_size: None,
                bit_offset: None,
                count: None,
                abstract_origin: None,
                specification: None,
                declaration: false,
            };
            for attr in entry.attrs() {
                let value = attr.value();
                let reference = match value {
                    AttributeValue::UnitRef(o) => o.to_debug_info_offset(&unit.header).map(|o| o.0),
                    AttributeValue::DebugInfoRef(o) => Some(o.0),
                    _ => None,
                };
                match attr.name() {
                    gimli::DW_AT_name => {
                        die.name = dwarf
                            .attr_string(&unit, value)
                            .ok()
                            .map(|s| s.to_string_lossy().into_owned());
                    }
                    gimli::DW_AT_byte_size => die.byte_size = udata(value),
                    gimli::DW_AT_data_member_location => die.member_offset = udata(value),
                    gimli::DW_AT_bit_size => die.bit_size = udata(value),
                    gimli::DW_AT_data_bit_offset => die.bit_offset = udata(value),
                    gimli::DW_AT_count => die.count = udata(value),
                    gimli::DW_AT_upper_bound if die.count.is_none() => {
                        die.count = udata(value).map(|u| u.saturating_add(1));
                    }
                    gimli::DW_AT_declaration => die.declaration = true,
                    name @ (gimli::DW_AT_type
                    | gimli::DW_AT_abstract_origin
                    | gimli::DW_AT_specification) => {
                        if let Some(target) = reference {
                            pending.push((index, name, target));
                        }
                    }
                    _ => {}
                }
            }
            if let Some(&parent) = stack.last() {
                tree.dies[parent].children.push(index);
            }
            tree.dies.push(die);
            if entry.has_children() {
                stack.push(index);
            }
        }
    }
    for (index, name, target) in pending {
        let Some(&target) = index_of.get(&target) else {
            continue;
        };
        let die = &mut tree.dies[index];
        match name {
            gimli::DW_AT_type => die.type_ref = Some(target),
            gimli::DW_AT_abstract_origin => die.abstract_origin = Some(target),
            _ => die.specification = Some(target),
        }
    }
    Some(tree)
}
