//! Symbol bindings as the linked binary has them.
//!
//! The object diff names the symbols patch code uses with their binding in the object. A
//! link can make a global local: a version script (`local: *;`, as libcurl's), or hidden
//! visibility (`-fvisibility=hidden`). In the binary such a function is only in `.symtab`,
//! as a local symbol, and apply looks it up among the binary's locals only when the bundle
//! says it is local. [`localize`] rewrites the bundle's references to match the binary.

use std::collections::HashSet;

use hotsplice_bundle::{Link, ObjectPatch, PreTarget, SymbolRef};
use object::{Object, ObjectSymbol};

/// Names defined only as local symbols in the binary `bytes` (not exported, not global).
pub fn local_only(bytes: &[u8]) -> HashSet<String> {
    let Ok(file) = object::File::parse(bytes) else {
        return HashSet::new();
    };
    let mut global = HashSet::new();
    let mut local = HashSet::new();
    for symbol in file.symbols().chain(file.dynamic_symbols()) {
        if symbol.is_undefined() {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        if symbol.is_local() {
            local.insert(name.to_string());
        } else {
            global.insert(name.to_string());
        }
    }
    local.retain(|n| !global.contains(n));
    local
}

fn fix(symbol: &mut SymbolRef, local_only: &HashSet<String>) -> bool {
    if !symbol.local && local_only.contains(&symbol.name) {
        symbol.local = true;
        return true;
    }
    false
}

/// Marks as local every global the patch references that the binary has only as a local
/// symbol; returns their names.
pub fn localize(objects: &mut [ObjectPatch], local_only: &HashSet<String>) -> Vec<String> {
    let mut changed = Vec::new();
    for object in objects {
        for piece in &mut object.pieces {
            for reloc in &mut piece.relocs {
                if let Link::Symbol { symbol } = &mut reloc.target
                    && fix(symbol, local_only)
                {
                    changed.push(symbol.name.clone());
                }
            }
        }
        for replacement in &mut object.replacements {
            for reloc in &mut replacement.pre_relocs {
                if let PreTarget::Symbol { symbol } = &mut reloc.target
                    && fix(symbol, local_only)
                {
                    changed.push(symbol.name.clone());
                }
            }
        }
    }
    changed.sort();
    changed.dedup();
    changed
}
