//! Finding replaced functions in a running binary, stripped or not.
//!
//! Candidates come from the binary's symbol tables when it has the name (`.symtab`, else
//! `.dynsym`; a local name defined in several files is narrowed by the object's `STT_FILE`),
//! otherwise from `.eh_frame`: every function start whose length is close to the pre-build
//! code's (branch relaxation may lengthen it a little). Every candidate is proven by
//! [`match_function`]; a function is located when exactly one candidate matches, or when
//! several match and the addresses learnt from the functions already located (their
//! relocation fields) pick one — Ksplice's way of finding static functions.

use std::collections::HashMap;

use crate::function::{Learned, Matched, Memory, Mismatch, PreCode, match_function};
use crate::image::Image;

/// A function to find.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// Its name in the pre build.
    pub name: &'a str,
    /// Local to its object.
    pub local: bool,
    /// The object's source file (`STT_FILE`), to tell same-named locals apart.
    pub source_file: Option<&'a str>,
    /// Its pre-build code.
    pub pre: PreCode<'a>,
}

/// How a function was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// By its name in the binary's symbol table.
    Symbol,
    /// By matching `.eh_frame` function starts.
    FunctionStart,
    /// Among several matching starts, by an address learnt from another function.
    Learned,
    /// One of several identical functions, all replaced by identical code: which goes where
    /// does not matter (decided by the caller, who knows the replacements).
    Interchangeable,
}

/// The outcome for one wanted function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Found and proven equal to the pre build.
    Located {
        /// The match (address, length, what it taught).
        matched: Matched,
        /// How it was found.
        via: Via,
    },
    /// No candidate matched. `mismatch` is the first difference at the first candidate that
    /// got past the quick prefix test (with a symbol table: the named function).
    NotFound {
        /// The first difference at the named candidate.
        mismatch: Option<Mismatch>,
        /// How many candidates were tried.
        candidates: usize,
    },
    /// Several places match and nothing tells them apart.
    Ambiguous {
        /// The matching addresses.
        addresses: Vec<u64>,
    },
}

fn candidates(image: &Image, bias: u64, wanted: &Wanted<'_>) -> (Vec<(u64, u64)>, bool) {
    let mut named: Vec<_> = image
        .symbols_named(wanted.name)
        .filter(|s| s.function && s.local == wanted.local)
        .collect();
    if named.len() > 1
        && let Some(file) = wanted.source_file
    {
        let narrowed: Vec<_> = named
            .iter()
            .copied()
            .filter(|s| s.file.as_deref() == Some(file))
            .collect();
        if !narrowed.is_empty() {
            named = narrowed;
        }
    }
    let pre_len = wanted.pre.code.len() as u64;
    if !named.is_empty() {
        let mut out: Vec<(u64, u64)> = named
            .iter()
            .map(|s| {
                let window = image
                    .fde_at(s.address)
                    .map_or(s.size, |f| f.len)
                    .max(pre_len + 64);
                (s.address.wrapping_add(bias), window)
            })
            .collect();
        out.sort();
        out.dedup();
        return (out, true);
    }
    let slack = (pre_len / 8).max(16);
    let out = image
        .fdes
        .iter()
        .filter(|f| f.len + 8 >= pre_len && f.len <= pre_len + slack)
        .map(|f| (f.start.wrapping_add(bias), f.len))
        .collect();
    (out, false)
}

/// Whether what a match learnt agrees with the variables the binary's symbol tables name: a
/// function identical to another but for the variable it uses (nginx's per-module handlers)
/// matches at both places, and only the variable's known address tells which is which.
fn consistent(image: &Image, bias: u64, matched: &Matched) -> bool {
    matched.learned.iter().all(|l| {
        let Learned::Address(address) = l.value else {
            return true;
        };
        let known: Vec<u64> = image
            .symbols_named(&l.symbol)
            .filter(|s| !s.function && !s.tls && !s.ifunc)
            .map(|s| s.address.wrapping_add(bias))
            .collect();
        known.is_empty() || known.contains(&address)
    })
}

/// Cheap first test: the leading bytes before the first relocation field agree (stopping
/// short of the opcode a linker relaxation may rewrite).
fn prefix_agrees(pre: &PreCode<'_>, address: u64, memory: &dyn Memory) -> bool {
    let first_reloc = pre.relocs.first().map_or(u64::MAX, |r| {
        if hotsplice_reloc::RelocClass::of(r.r_type).uses_got() {
            r.offset.saturating_sub(3)
        } else {
            r.offset
        }
    });
    let n = (pre.code.len() as u64).min(first_reloc).min(6) as usize;
    if n == 0 {
        return true;
    }
    let mut buf = vec![0u8; n];
    memory.read(address, &mut buf) && buf == pre.code[..n]
}

/// Finds every wanted function (see the module documentation). `bias` is the load bias of
/// the binary in the process (0 for a non-PIE executable).
pub fn locate(image: &Image, bias: u64, wanted: &[Wanted<'_>], memory: &dyn Memory) -> Vec<Found> {
    let mut results: Vec<Option<Found>> = vec![None; wanted.len()];
    let mut multiple: Vec<(usize, Vec<Matched>)> = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let (list, by_name) = candidates(image, bias, w);
        let mut matches = Vec::new();
        let mut first_mismatch = None;
        for &(address, window) in &list {
            if !by_name && !prefix_agrees(&w.pre, address, memory) {
                continue;
            }
            match match_function(w.pre, address, window, memory) {
                Ok(m) if consistent(image, bias, &m) => matches.push(m),
                Ok(_) => {}
                Err(e) => {
                    if first_mismatch.is_none() {
                        first_mismatch = Some(e);
                    }
                }
            }
        }
        results[i] = match matches.len() {
            0 => Some(Found::NotFound {
                mismatch: first_mismatch,
                candidates: list.len(),
            }),
            1 => Some(Found::Located {
                matched: matches.remove(0),
                via: if by_name {
                    Via::Symbol
                } else {
                    Via::FunctionStart
                },
            }),
            _ => {
                multiple.push((i, matches));
                None
            }
        };
    }
    // Disambiguate with addresses learnt from the located functions, until nothing changes.
    loop {
        let mut learnt: HashMap<String, Vec<u64>> = HashMap::new();
        for found in results.iter().flatten() {
            if let Found::Located { matched, .. } = found {
                for l in &matched.learned {
                    if let Learned::Address(a) = l.value {
                        learnt.entry(l.symbol.clone()).or_default().push(a);
                    }
                }
            }
        }
        let mut progress = false;
        for (i, matches) in &mut multiple {
            if results[*i].is_some() {
                continue;
            }
            let Some(addresses) = learnt.get(wanted[*i].name) else {
                continue;
            };
            let hits: Vec<usize> = (0..matches.len())
                .filter(|&k| addresses.contains(&matches[k].address))
                .collect();
            if let [k] = hits.as_slice() {
                results[*i] = Some(Found::Located {
                    matched: matches[*k].clone(),
                    via: Via::Learned,
                });
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    for (i, matches) in multiple {
        if results[i].is_none() {
            results[i] = Some(Found::Ambiguous {
                addresses: matches.iter().map(|m| m.address).collect(),
            });
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or(Found::NotFound {
                mismatch: None,
                candidates: 0,
            })
        })
        .collect()
}
