//! Conversion from the object diff's in-memory patch sets to the on-disk format.

use hotsplice_objdiff::patchset as ps;
use hotsplice_objdiff::{ObjectDiff, Status};

use crate::model::{
    Binding, CfaRegister, FrameRow, FrameRule, FunctionStatus, Hook, HookKind, Link, ObjectPatch,
    Piece, PieceKind, PreReloc, PreTarget, Referenced, Refusal, Reloc, Replacement, SymbolClass,
    SymbolRef,
};

fn symbol(s: &ps::SymbolRef) -> SymbolRef {
    SymbolRef {
        name: s.name.clone(),
        class: match s.class {
            ps::SymbolClass::Function => SymbolClass::Function,
            ps::SymbolClass::Data => SymbolClass::Data,
            ps::SymbolClass::Tls => SymbolClass::Tls,
            ps::SymbolClass::Unknown => SymbolClass::Unknown,
        },
        local: s.local,
    }
}

fn piece(p: &ps::Piece) -> Piece {
    Piece {
        name: p.name.clone(),
        symbol: p.symbol.clone(),
        kind: match p.kind {
            ps::PieceKind::Code => PieceKind::Code,
            ps::PieceKind::ReadOnly => PieceKind::ReadOnly,
            ps::PieceKind::Data => PieceKind::Data,
            ps::PieceKind::Bss => PieceKind::Bss,
        },
        align: p.align,
        size: p.size,
        bytes: p.bytes.clone(),
        relocs: p
            .relocs
            .iter()
            .map(|r| Reloc {
                offset: r.offset,
                r_type: r.r_type,
                target: match &r.target {
                    ps::Link::Piece(index) => Link::Piece { index: *index },
                    ps::Link::Symbol(s) => Link::Symbol { symbol: symbol(s) },
                    ps::Link::Nothing => Link::Nothing,
                },
                addend: r.addend,
            })
            .collect(),
        frames: p
            .frames
            .iter()
            .map(|f| FrameRow {
                offset: f.offset,
                rule: f.rule.map(|r| FrameRule {
                    cfa: if r.cfa_from_rbp {
                        CfaRegister::Rbp
                    } else {
                        CfaRegister::Rsp
                    },
                    cfa_offset: r.cfa_offset,
                    ra: r.ra,
                    rbp: r.rbp,
                }),
            })
            .collect(),
    }
}

fn pre_relocs(relocs: &[ps::PreReloc]) -> Vec<PreReloc> {
    relocs
        .iter()
        .map(|p| PreReloc {
            offset: p.offset,
            r_type: p.r_type,
            target: match &p.target {
                ps::PreTarget::Symbol(s) => PreTarget::Symbol { symbol: symbol(s) },
                ps::PreTarget::Anonymous(what) => PreTarget::Anonymous { what: what.clone() },
            },
            addend: p.addend,
        })
        .collect()
}

fn replacement(r: &ps::Replacement) -> Replacement {
    Replacement {
        name: r.name.clone(),
        post_name: r.post_name.clone(),
        local: r.local,
        piece: r.piece,
        pre_code: r.pre_code.clone(),
        pre_relocs: pre_relocs(&r.pre_relocs),
    }
}

/// The on-disk form of a function the new code uses.
pub fn referenced(r: &ps::Referenced) -> Referenced {
    Referenced {
        name: r.name.clone(),
        local: r.local,
        pre_code: r.pre_code.clone(),
        pre_relocs: pre_relocs(&r.pre_relocs),
    }
}

/// The on-disk form of one object's diff and patch set.
pub fn object_patch(diff: &ObjectDiff, set: &ps::PatchSet) -> ObjectPatch {
    ObjectPatch {
        object: set.object.clone(),
        source_file: set.source_file.clone(),
        pieces: set.pieces.iter().map(piece).collect(),
        replacements: set.replacements.iter().map(replacement).collect(),
        referenced: set.referenced.iter().map(referenced).collect(),
        hooks: set
            .hooks
            .iter()
            .map(|h| Hook {
                kind: match h.kind {
                    ps::HookKind::PreApply => HookKind::PreApply,
                    ps::HookKind::PostApply => HookKind::PostApply,
                    ps::HookKind::PreUndo => HookKind::PreUndo,
                    ps::HookKind::PostUndo => HookKind::PostUndo,
                },
                piece: h.piece,
            })
            .collect(),
        bindings: diff
            .bindings
            .iter()
            .map(|b| Binding {
                function: b.function.clone(),
                symbol: b.symbol.clone(),
                binds_to: b.existing.clone(),
                compiler_private: b.compiler_private,
            })
            .collect(),
        functions: diff
            .functions
            .iter()
            .filter(|f| f.status != Status::Unchanged)
            .map(|f| FunctionStatus {
                name: f.name.clone(),
                status: f.status.as_str().to_string(),
                reasons: f.reasons.clone(),
            })
            .collect(),
    }
}

/// The on-disk form of an object's refusals.
pub fn refusals(diff: &ObjectDiff) -> Vec<Refusal> {
    diff.refusals
        .iter()
        .map(|r| Refusal {
            kind: r.kind,
            symbol: r.symbol.clone(),
            object: diff.object.clone(),
            detail: r.detail.clone(),
            functions: r.functions.clone(),
        })
        .collect()
}
