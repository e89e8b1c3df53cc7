//! C++ exceptions through patched code.
//!
//! The unwinder finds how to leave a function through the `.eh_frame` entry covering the
//! return address. Patch code lives in memory the running program's unwind tables know
//! nothing of, and hotsplice apply does not register tables for it yet: an exception thrown
//! while a patched function is on the stack would end the program in `std::terminate`. A
//! function can only be on the stack during a throw if it calls something, so a C++ patch is
//! refused when a function it loads makes a call that may throw ([`may_unwind`]).

use std::collections::BTreeSet;

use hotsplice_bundle::{Link, ObjectPatch, PieceKind};
use iced_x86::{Decoder, DecoderOptions, FlowControl};

/// Functions that never throw (they return or abort).
const NOTHROW: &[&str] = &[
    "__stack_chk_fail",
    "abort",
    "__assert_fail",
    "memcpy",
    "memmove",
    "memset",
    "memcmp",
    "strlen",
    "strcmp",
    "strncmp",
    "__memcpy_chk",
    "__memset_chk",
    "__memmove_chk",
];

/// What a piece of code calls.
enum Callee {
    /// Another piece of the same object patch.
    Piece(usize),
    /// A symbol of the program that may throw.
    Symbol(String),
    /// An indirect call (a virtual or function-pointer call).
    Indirect,
}

fn callees(object: &ObjectPatch, piece: usize) -> Vec<Callee> {
    let p = &object.pieces[piece];
    let mut out = Vec::new();
    let mut decoder = Decoder::with_ip(64, &p.bytes, 0, DecoderOptions::NONE);
    while decoder.can_decode() {
        let instr = decoder.decode();
        match instr.flow_control() {
            FlowControl::IndirectCall => out.push(Callee::Indirect),
            FlowControl::Call => {
                // `call rel32`: the relocation is at the displacement, after the opcode.
                let start = instr.ip();
                let end = start + instr.len() as u64;
                let target = p
                    .relocs
                    .iter()
                    .find(|r| r.offset > start && r.offset < end)
                    .map(|r| &r.target);
                match target {
                    Some(Link::Piece { index }) => out.push(Callee::Piece(*index)),
                    Some(Link::Symbol { symbol }) => {
                        if !NOTHROW.contains(&symbol.name.as_str()) {
                            out.push(Callee::Symbol(symbol.name.clone()));
                        }
                    }
                    _ => out.push(Callee::Indirect),
                }
            }
            _ => {}
        }
    }
    out
}

/// The code pieces of `object` an exception could unwind through, each with what it calls
/// that may throw.
pub fn may_unwind(object: &ObjectPatch) -> Vec<(String, String)> {
    let code: Vec<usize> = (0..object.pieces.len())
        .filter(|&i| object.pieces[i].kind == PieceKind::Code)
        .collect();
    let calls: Vec<(usize, Vec<Callee>)> = code.iter().map(|&i| (i, callees(object, i))).collect();
    // Fixed point: a piece may unwind if it calls a symbol, calls indirectly, or calls a
    // piece that may unwind.
    let mut unwinds: BTreeSet<usize> = BTreeSet::new();
    loop {
        let before = unwinds.len();
        for (i, callees) in &calls {
            if callees.iter().any(|c| match c {
                Callee::Piece(j) => unwinds.contains(j),
                _ => true,
            }) {
                unwinds.insert(*i);
            }
        }
        if unwinds.len() == before {
            break;
        }
    }
    calls
        .iter()
        .filter(|(i, _)| unwinds.contains(i))
        .map(|(i, callees)| {
            let why = callees
                .iter()
                .find_map(|c| match c {
                    Callee::Symbol(name) => Some(format!("calls {name}")),
                    Callee::Indirect => Some("makes an indirect call".to_string()),
                    Callee::Piece(j) if unwinds.contains(j) => {
                        Some(format!("calls {}, which may throw", object.pieces[*j].name))
                    }
                    Callee::Piece(_) => None,
                })
                .unwrap_or_default();
            let name = object.pieces[*i]
                .symbol
                .clone()
                .unwrap_or_else(|| object.pieces[*i].name.clone());
            (name, why)
        })
        .collect()
}
