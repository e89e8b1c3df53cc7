//! Laying a bundle's pieces out in patch memory and computing their relocations — pure: the
//! addresses of everything come in, the bytes to write go out.
//!
//! Patch memory is two regions mapped near the target: an executable one (a header, code,
//! read-only data, GOT slots, jump stubs) and, when needed, a writable one (new variables).
//! GOT-relative references get slots of their own, filled with the resolved address (or TP
//! offset); calls and jumps to symbols beyond ±2 GiB go through a stub `jmp *slot(%rip)`.

use std::collections::HashMap;

use hotsplice_bundle::{Link, ObjectPatch, PieceKind, SymbolRef};
use hotsplice_reloc::{Op, RelocClass};

use crate::Error;

/// What a symbol of the running program resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Its address.
    Address(u64),
    /// Its offset from the thread pointer (a thread-local variable).
    TpOffset(i64),
}

/// Where each piece goes, and the slots and stubs the code needs.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Size of the executable region.
    pub code_size: u64,
    /// Size of the writable region (0: none).
    pub data_size: u64,
    /// Per object, per piece: (writable region?, offset in its region).
    pub pieces: Vec<Vec<(bool, u64)>>,
    /// GOT-like slots: (symbol key, wants TP offset) → offset in the code region.
    slots: HashMap<(SymbolKey, bool), u64>,
    /// Call stubs: symbol key → offset in the code region.
    stubs: HashMap<SymbolKey, u64>,
    /// Where the `hotsplice.h` runtime state goes in the writable region, if the patch uses it.
    pub runtime: Option<u64>,
}

/// A symbol as the patch names it: locals are qualified by the object that references them
/// (two objects may each have a `static int count`).
type SymbolKey = (Option<usize>, String);

fn key(object: usize, symbol: &SymbolRef) -> SymbolKey {
    (symbol.local.then_some(object), symbol.name.clone())
}

/// Bytes reserved at the start of the code region for the identifying header.
pub const HEADER_SIZE: u64 = 4096;

fn align(value: u64, to: u64) -> u64 {
    value.div_ceil(to.max(1)) * to.max(1)
}

/// Plans the layout of `objects`: pieces, then one slot per GOT-relative symbol, then a stub
/// per called symbol that `far` says may be out of rel32 range.
pub fn plan(objects: &[ObjectPatch], far: &dyn Fn(usize, &SymbolRef) -> bool) -> Layout {
    let mut code = HEADER_SIZE;
    // The data region starts with a tag naming the patch (see `state::data_tag`).
    let mut data = crate::state::DATA_TAG_SIZE;
    let mut pieces = Vec::new();
    for object in objects {
        let mut placed = Vec::new();
        for piece in &object.pieces {
            let writable = matches!(piece.kind, PieceKind::Data | PieceKind::Bss);
            let cursor = if writable { &mut data } else { &mut code };
            *cursor = align(*cursor, piece.align);
            placed.push((writable, *cursor));
            *cursor += piece.size.max(1);
        }
        pieces.push(placed);
    }
    let runtime = crate::runtime::used_by(objects).then(|| {
        let at = align(data, 4096);
        data = at + crate::runtime::SIZE;
        at
    });
    code = align(code, 8);
    let mut slots = HashMap::new();
    let mut stubs = HashMap::new();
    for (o, object) in objects.iter().enumerate() {
        for piece in &object.pieces {
            for reloc in &piece.relocs {
                let Link::Symbol { symbol } = &reloc.target else {
                    continue;
                };
                let class = RelocClass::of(reloc.r_type);
                if class.uses_got() {
                    slots
                        .entry((key(o, symbol), class.op == Op::GotTp))
                        .or_insert_with(|| {
                            let at = code;
                            code += 8;
                            at
                        });
                } else if class.op == Op::Plt && far(o, symbol) {
                    stubs.entry(key(o, symbol)).or_insert_with(|| {
                        let at = align(code, 16);
                        code = at + 16; // ff 25 02 00 00 00, 2 bytes pad, 8-byte address
                        at
                    });
                }
            }
        }
    }
    Layout {
        code_size: align(code, 4096),
        data_size: if data == crate::state::DATA_TAG_SIZE {
            0
        } else {
            align(data, 4096)
        },
        pieces,
        slots,
        stubs,
        runtime,
    }
}

/// One write into patch memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Address.
    pub address: u64,
    /// Bytes.
    pub bytes: Vec<u8>,
}

/// Computes every byte to write into patch memory at `code_base` / `data_base`, given how
/// symbols resolve. Fails naming the symbol when one does not resolve or is out of range.
pub fn link(
    pid: i32,
    objects: &[ObjectPatch],
    layout: &Layout,
    code_base: u64,
    data_base: u64,
    resolve: &dyn Fn(usize, &SymbolRef) -> Option<Resolved>,
) -> Result<Vec<Write>, Error> {
    // The runtime's state is in the patch's own memory.
    let runtime = layout.runtime.map(|offset| data_base + offset);
    let resolve = |object: usize, symbol: &SymbolRef| match runtime {
        Some(address) if symbol.name == crate::runtime::SYMBOL => Some(Resolved::Address(address)),
        _ => resolve(object, symbol),
    };
    let resolve = &resolve;
    let piece_address = |object: usize, piece: usize| {
        let (writable, offset) = layout.pieces[object][piece];
        if writable {
            data_base + offset
        } else {
            code_base + offset
        }
    };
    let mut writes = Vec::new();
    if let Some(address) = runtime {
        writes.push(Write {
            address,
            bytes: crate::runtime::MAGIC.to_le_bytes().to_vec(),
        });
    }
    // Slots and stubs first.
    for (((object, name), tp), offset) in &layout.slots {
        let symbol = find_symbol(objects, *object, name);
        let value = match (resolve(object.unwrap_or(0), &symbol), tp) {
            (Some(Resolved::Address(a)), false) => a,
            (Some(Resolved::TpOffset(t)), true) => t as u64,
            _ => {
                return Err(Error::Unresolved {
                    pid,
                    symbol: name.clone(),
                });
            }
        };
        writes.push(Write {
            address: code_base + offset,
            bytes: value.to_le_bytes().to_vec(),
        });
    }
    for ((object, name), offset) in &layout.stubs {
        let symbol = find_symbol(objects, *object, name);
        let Some(Resolved::Address(target)) = resolve(object.unwrap_or(0), &symbol) else {
            return Err(Error::Unresolved {
                pid,
                symbol: name.clone(),
            });
        };
        let mut stub = vec![0xff, 0x25, 0x02, 0x00, 0x00, 0x00, 0xcc, 0xcc];
        stub.extend(target.to_le_bytes());
        writes.push(Write {
            address: code_base + offset,
            bytes: stub,
        });
    }
    for (o, object) in objects.iter().enumerate() {
        for (p, piece) in object.pieces.iter().enumerate() {
            if piece.kind == PieceKind::Bss {
                continue;
            }
            let base = piece_address(o, p);
            let mut bytes = piece.bytes.clone();
            for reloc in &piece.relocs {
                let place = base + reloc.offset;
                let class = RelocClass::of(reloc.r_type);
                let (s, pc_target) = match &reloc.target {
                    Link::Piece { index } => (piece_address(o, *index), None),
                    Link::Nothing => (0, None),
                    Link::Symbol { symbol } => {
                        if class.uses_got() {
                            let slot = layout.slots[&(key(o, symbol), class.op == Op::GotTp)];
                            (code_base + slot, None)
                        } else if let Some(stub) = layout.stubs.get(&key(o, symbol)) {
                            (code_base + stub, None)
                        } else {
                            match resolve(o, symbol) {
                                Some(Resolved::Address(a)) => (a, Some(a)),
                                Some(Resolved::TpOffset(t)) if class.op == Op::TpOff => {
                                    (t as u64, None)
                                }
                                _ => {
                                    return Err(Error::Unresolved {
                                        pid,
                                        symbol: symbol.name.clone(),
                                    });
                                }
                            }
                        }
                    }
                };
                let value: i128 = match class.op {
                    _ if !class.linked => {
                        return Err(Error::UnsupportedRelocation {
                            r_type: reloc.r_type,
                            piece: piece.name.clone(),
                        });
                    }
                    // PC-relative: S + A - P (GOT forms: S is the slot).
                    Op::PcRel | Op::Plt | Op::Got | Op::GotTp => {
                        s as i128 + reloc.addend as i128 - place as i128
                    }
                    Op::Abs => s as i128 + reloc.addend as i128,
                    // TP offset (negative: below the thread pointer).
                    Op::TpOff => (s as i64) as i128 + reloc.addend as i128,
                    Op::None | Op::DynamicTls | Op::Other => {
                        return Err(Error::UnsupportedRelocation {
                            r_type: reloc.r_type,
                            piece: piece.name.clone(),
                        });
                    }
                };
                let width = usize::from(class.width);
                let fits = match (class.width, class.signed) {
                    (8, _) => true,
                    (_, false) => (0..=u32::MAX as i128).contains(&value),
                    (_, true) => (i32::MIN as i128..=i32::MAX as i128).contains(&value),
                };
                if !fits {
                    let name = match &reloc.target {
                        Link::Symbol { symbol } => symbol.name.clone(),
                        _ => piece.name.clone(),
                    };
                    return Err(Error::OutOfRange {
                        symbol: name,
                        address: pc_target.unwrap_or(s),
                        from: place,
                    });
                }
                let at = reloc.offset as usize;
                let encoded = (value as i64).to_le_bytes();
                bytes[at..at + width].copy_from_slice(&encoded[..width]);
            }
            writes.push(Write {
                address: base,
                bytes,
            });
        }
    }
    Ok(writes)
}

fn find_symbol(objects: &[ObjectPatch], object: Option<usize>, name: &str) -> SymbolRef {
    for (o, object_patch) in objects.iter().enumerate() {
        if object.is_some_and(|x| x != o) {
            continue;
        }
        let object = object_patch;
        for piece in &object.pieces {
            for reloc in &piece.relocs {
                if let Link::Symbol { symbol } = &reloc.target
                    && symbol.name == name
                {
                    return symbol.clone();
                }
            }
        }
    }
    SymbolRef {
        name: name.to_string(),
        class: hotsplice_bundle::SymbolClass::Unknown,
        local: object.is_some(),
    }
}

/// The address of a piece once laid out.
pub fn piece_address(
    layout: &Layout,
    object: usize,
    piece: usize,
    code_base: u64,
    data_base: u64,
) -> u64 {
    let (writable, offset) = layout.pieces[object][piece];
    if writable {
        data_base + offset
    } else {
        code_base + offset
    }
}

#[cfg(test)]
mod tests;
