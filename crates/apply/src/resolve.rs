//! Where the symbols the new code needs are in the running process: learnt from its code by
//! run-pre matching, in the patched file's symbol tables, or defined by another loaded file
//! (an indirect function there needs its resolver run in the target).

use std::collections::HashMap;

use hotsplice_bundle::{Link, SymbolClass, SymbolRef, TargetKind};
use hotsplice_matcher::Learned;
use hotsplice_ptrace::Process;

use crate::Error;
use crate::link::Resolved;
use crate::mapped::MappedFile;
use crate::prepare::Prepared;

/// Where a symbol is, before indirect functions are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Resolved.
    Found(Resolved),
    /// An indirect function: the address of its resolver.
    Ifunc(u64),
}

/// Symbol resolution for one prepared process.
pub struct Resolver<'a, 'b> {
    prepared: &'a Prepared<'b>,
    process: &'a Process,
    others: &'a [MappedFile],
    /// Implementations chosen by the `STT_GNU_IFUNC` resolvers called in the target.
    pub ifuncs: HashMap<String, u64>,
}

impl<'a, 'b> Resolver<'a, 'b> {
    /// A resolver over a prepared process.
    pub fn new(prepared: &'a Prepared<'b>, process: &'a Process, others: &'a [MappedFile]) -> Self {
        Resolver {
            prepared,
            process,
            others,
            ifuncs: HashMap::new(),
        }
    }

    fn read_u64(&self, address: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        self.process.read(address, &mut buf).ok()?;
        Some(u64::from_le_bytes(buf))
    }

    /// Where a symbol of the running program is.
    pub fn resolve(&self, object: usize, symbol: &SymbolRef) -> Option<Resolved> {
        match self.lookup(object, symbol)? {
            Lookup::Found(r) => Some(r),
            Lookup::Ifunc(_) => self.ifuncs.get(&symbol.name).map(|&a| Resolved::Address(a)),
        }
    }

    /// Where a symbol is: learnt from the running code, in the patched file's symbol tables,
    /// or defined by another loaded file (an indirect function there needs its resolver run).
    pub fn lookup(&self, object: usize, symbol: &SymbolRef) -> Option<Lookup> {
        if symbol.name == crate::runtime::SYMBOL {
            // Placed with the patch (see `link::plan`); never a symbol of the program.
            return Some(Lookup::Found(Resolved::Address(self.prepared.module.start)));
        }
        let key = (symbol.local.then_some(object), symbol.name.clone());
        if let Some(value) = self.prepared.learned.get(&key) {
            return match *value {
                Learned::Address(a) => Some(Lookup::Found(Resolved::Address(a))),
                Learned::GotSlot(slot) => self
                    .read_u64(slot)
                    .map(|a| Lookup::Found(Resolved::Address(a))),
                Learned::TpOffset(t) => Some(Lookup::Found(Resolved::TpOffset(t))),
                Learned::TpOffsetSlot(slot) => self
                    .read_u64(slot)
                    .map(|t| Lookup::Found(Resolved::TpOffset(t as i64))),
            };
        }
        let image = &self.prepared.module.image;
        let source_file = self.prepared.bundle.objects[object].source_file.as_deref();
        let mut named: Vec<_> = image
            .symbols_named(&symbol.name)
            .filter(|s| s.local == symbol.local)
            .collect();
        if symbol.local && named.len() > 1 {
            named.retain(|s| s.file.as_deref() == source_file);
        }
        if let [s] = named.as_slice() {
            if s.tls {
                return if image.position_independent && !self.is_executable() {
                    None
                } else {
                    image
                        .tpoff(s.address)
                        .map(|t| Lookup::Found(Resolved::TpOffset(t)))
                };
            }
            let address = s.address.wrapping_add(self.prepared.module.bias);
            return Some(if s.ifunc {
                Lookup::Ifunc(address)
            } else {
                Lookup::Found(Resolved::Address(address))
            });
        }
        if named.is_empty()
            && symbol.class != SymbolClass::Tls
            && let Some((_, address)) = self.earlier(source_file, &symbol.name)
        {
            return Some(Lookup::Found(Resolved::Address(address)));
        }
        if symbol.local || symbol.class == SymbolClass::Tls {
            return None;
        }
        // A library symbol: the first definition among the other mapped objects.
        for other in self.others {
            if let Some(s) = other
                .image
                .symbols_named(&symbol.name)
                .find(|s| !s.local && !s.tls && s.address != 0)
            {
                let address = s.address.wrapping_add(other.bias);
                return Some(if s.ifunc {
                    Lookup::Ifunc(address)
                } else {
                    Lookup::Found(Resolved::Address(address))
                });
            }
        }
        None
    }

    /// A function or variable new in a patch already applied to the file: (patch id,
    /// address).
    fn earlier(&self, source_file: Option<&str>, name: &str) -> Option<(&str, u64)> {
        let address =
            crate::prepare::earlier_definition(&self.prepared.earlier, source_file, name)?;
        let (id, _) = self
            .prepared
            .earlier
            .iter()
            .rev()
            .find(|(_, s)| s.name == name && s.address == address)?;
        Some((id.as_str(), address))
    }

    /// The patches already applied whose definitions the new code uses (found by their
    /// symbol tables here, or proven by run-pre matching in their memory).
    pub fn earlier_used(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (o, object) in self.prepared.bundle.objects.iter().enumerate() {
            for piece in &object.pieces {
                for reloc in &piece.relocs {
                    let Link::Symbol { symbol } = &reloc.target else {
                        continue;
                    };
                    let Some(Resolved::Address(address)) = self.resolve(o, symbol) else {
                        continue;
                    };
                    for (id, s) in &self.prepared.earlier {
                        if s.name == symbol.name && s.address == address && !out.contains(id) {
                            out.push(id.clone());
                        }
                    }
                }
            }
        }
        out
    }

    /// The indirect functions the new code calls: (name, resolver address).
    pub fn ifuncs_needed(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for (o, object) in self.prepared.bundle.objects.iter().enumerate() {
            for piece in &object.pieces {
                for reloc in &piece.relocs {
                    if let Link::Symbol { symbol } = &reloc.target
                        && let Some(Lookup::Ifunc(resolver)) = self.lookup(o, symbol)
                        && !out.iter().any(|(n, _)| *n == symbol.name)
                    {
                        out.push((symbol.name.clone(), resolver));
                    }
                }
            }
        }
        out
    }

    fn is_executable(&self) -> bool {
        self.prepared.bundle.target.kind == TargetKind::Executable
    }

    /// Whether an address may be beyond rel32 reach of patch memory placed near the module.
    pub fn far(&self, address: u64) -> bool {
        const REACH: u64 = 1 << 30;
        address < self.prepared.module.start.saturating_sub(REACH)
            || address > self.prepared.module.end + REACH
    }

    /// Fails naming the first symbol of the new code that cannot be found.
    pub fn resolve_all(&self) -> Result<(), Error> {
        for (o, object) in self.prepared.bundle.objects.iter().enumerate() {
            for piece in &object.pieces {
                for reloc in &piece.relocs {
                    if let Link::Symbol { symbol } = &reloc.target
                        && self.lookup(o, symbol).is_none()
                    {
                        return Err(Error::Unresolved {
                            pid: self.process.pid(),
                            symbol: symbol.name.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
