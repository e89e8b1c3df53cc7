//! Structural checks a bundle must pass before anything uses it: every index in range, every
//! relocation field inside its piece, sizes consistent. A bundle that passes can be indexed
//! without panicking.

use hotsplice_reloc::RelocClass;

use crate::{Bundle, Error, Link, PieceKind};

/// Bytes of the field a relocation of type `r_type` writes.
fn field_width(r_type: u32) -> u64 {
    u64::from(RelocClass::of(r_type).width)
}

fn invalid(what: String) -> Error {
    Error::Invalid(what)
}

/// Every relocation of pre-build code inside the code.
fn pre_code_relocs(
    code: &[u8],
    relocs: &[crate::PreReloc],
    at: impl Fn() -> String,
) -> Result<(), Error> {
    let size = code.len() as u64;
    for reloc in relocs {
        let end = reloc.offset.checked_add(field_width(reloc.r_type));
        if end.is_none_or(|end| end > size) {
            return Err(invalid(format!(
                "{}: pre-code relocation at {:#x} lies outside the function",
                at(),
                reloc.offset
            )));
        }
    }
    Ok(())
}

/// Checks the structural invariants of a bundle.
pub fn check(bundle: &Bundle) -> Result<(), Error> {
    if !bundle.id.starts_with("hs-") || bundle.id.len() > 64 {
        return Err(invalid(format!(
            "patch id {:?} is not of the form hs-…",
            bundle.id
        )));
    }
    for object in &bundle.objects {
        let pieces = object.pieces.len();
        for (i, piece) in object.pieces.iter().enumerate() {
            let at = || format!("{}: piece {i} ({})", object.object, piece.name);
            if !piece.align.is_power_of_two() || piece.align > 1 << 20 {
                return Err(invalid(format!(
                    "{}: alignment {} is not a power of two",
                    at(),
                    piece.align
                )));
            }
            if piece.size > 1 << 32 {
                return Err(invalid(format!(
                    "{}: size {} is implausible",
                    at(),
                    piece.size
                )));
            }
            let expected = if piece.kind == PieceKind::Bss {
                0
            } else {
                piece.size
            };
            if piece.bytes.len() as u64 != expected {
                return Err(invalid(format!(
                    "{}: {} bytes of contents for size {}",
                    at(),
                    piece.bytes.len(),
                    piece.size
                )));
            }
            if !piece.frames.is_empty() && piece.kind != PieceKind::Code {
                return Err(invalid(format!("{}: frame rows for data", at())));
            }
            let mut previous = None;
            for row in &piece.frames {
                if row.offset >= piece.size || previous.is_some_and(|p| p >= row.offset) {
                    return Err(invalid(format!(
                        "{}: frame row at {:#x} is outside the piece or out of order",
                        at(),
                        row.offset
                    )));
                }
                previous = Some(row.offset);
            }
            for reloc in &piece.relocs {
                let end = reloc.offset.checked_add(field_width(reloc.r_type));
                if end.is_none_or(|end| end > piece.size) {
                    return Err(invalid(format!(
                        "{}: relocation at {:#x} lies outside the piece",
                        at(),
                        reloc.offset
                    )));
                }
                if let Link::Piece { index } = reloc.target
                    && index >= pieces
                {
                    return Err(invalid(format!(
                        "{}: relocation to missing piece {index}",
                        at()
                    )));
                }
            }
        }
        for replacement in &object.replacements {
            let at = || format!("{}: replacement {}", object.object, replacement.name);
            if replacement.piece >= pieces {
                return Err(invalid(format!(
                    "{}: missing piece {}",
                    at(),
                    replacement.piece
                )));
            }
            if object.pieces[replacement.piece].kind != PieceKind::Code {
                return Err(invalid(format!("{}: new version is not code", at())));
            }
            pre_code_relocs(&replacement.pre_code, &replacement.pre_relocs, at)?;
        }
        for hook in &object.hooks {
            if object
                .pieces
                .get(hook.piece)
                .is_none_or(|p| p.kind != PieceKind::Code)
            {
                return Err(invalid(format!(
                    "{}: a hook names piece {}, which is not code",
                    object.object, hook.piece
                )));
            }
        }
        for referenced in &object.referenced {
            let at = || format!("{}: referenced {}", object.object, referenced.name);
            pre_code_relocs(&referenced.pre_code, &referenced.pre_relocs, at)?;
        }
    }
    Ok(())
}
