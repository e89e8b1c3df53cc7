//! x86-64 relocation types, classified once for all of hotsplice.
//!
//! The numbers and their names are `object::elf`'s (`R_X86_64_*`); this crate adds what
//! hotsplice needs to know about each type, as a [`RelocClass`]: the operation its value
//! stands for ([`Op`]: absolute, PC-relative, through the GOT, a thread-pointer offset, ...),
//! the width and signedness of the field it writes, whether it is PC-relative, whether a
//! linker may relax the instruction around it, and whether hotsplice's user-space linker
//! resolves it in patch code. The object diff (field masks, refusals), the run-pre matcher
//! (what a field teaches), the user-space linker (what to write) and the kernel backend match
//! on the class, never on numbers; messages print [`name`]s. This follows object's own split of
//! a relocation into `kind`, `encoding` and `size`.
//!
//! ```
//! use hotsplice_reloc::{Op, RelocClass, name};
//! use object::elf::R_X86_64_GOTTPOFF;
//!
//! let class = RelocClass::of(R_X86_64_GOTTPOFF.0);
//! assert_eq!((class.op, class.width, class.relaxable), (Op::GotTp, 4, true));
//! assert_eq!(name(R_X86_64_GOTTPOFF.0), "R_X86_64_GOTTPOFF");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use object::elf::*;

/// What a relocation's value stands for (the psABI's formula, as far as hotsplice needs it).
/// `S` is the symbol's address, `A` the addend, `P` the field's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `R_X86_64_NONE`: writes nothing (objtool leaves it where it turned a call into a NOP).
    None,
    /// `S + A`: `64`, `32` (zero-extended), `32S` (sign-extended), `16`, `8`.
    Abs,
    /// `S + A - P`: `PC64`, `PC32`, `PC16`, `PC8`.
    PcRel,
    /// `L + A - P` (`PLT32`): a call or jump, which a linker may send through a PLT entry or a
    /// stub when the symbol is far.
    Plt,
    /// `G + GOT + A - P`: the PC-relative address of the symbol's GOT slot (`GOTPCREL`,
    /// `GOTPCRELX`, `REX_GOTPCRELX`, ...).
    Got,
    /// The PC-relative address of a GOT slot holding the symbol's offset from the thread
    /// pointer (`GOTTPOFF`: initial-exec TLS).
    GotTp,
    /// `S + A - TP`: the symbol's offset from the thread pointer (`TPOFF32`: local-exec TLS).
    TpOff,
    /// A dynamic TLS access model: general or local dynamic (`TLSGD`, `TLSLD`, `DTPOFF*`,
    /// `DTPMOD64`) or TLS descriptors (`GOTPC32_TLSDESC`, `TLSDESC_CALL`, `TLSDESC`).
    DynamicTls,
    /// Anything else: GOT-base arithmetic (`GOT32`, `GOTOFF64`, `GOTPC32`, ...), sizes, the
    /// dynamic linker's own types, numbers x86-64 does not define.
    Other,
}

/// What hotsplice knows about one relocation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelocClass {
    /// What the value stands for.
    pub op: Op,
    /// Bytes of the field it writes (0: none).
    pub width: u8,
    /// Whether the field is read sign-extended (`32S`, `PC32`) rather than zero-extended (`32`).
    pub signed: bool,
    /// Whether the value is relative to the field's address, so the target of an instruction
    /// operand is `S + A + (end of instruction - field)`.
    pub pc_relative: bool,
    /// Whether a linker may rewrite the instruction around the field: `GOTPCRELX` into a
    /// `lea`, a `mov $imm` or a direct call; `GOTTPOFF` into a `mov`/`add $tpoff`; the dynamic
    /// TLS sequences into initial or local exec.
    pub relaxable: bool,
    /// Whether hotsplice's user-space linker resolves it in patch code (others are refused by
    /// the object diff).
    pub linked: bool,
}

impl RelocClass {
    /// The class of an `R_X86_64_*` type number. Numbers x86-64 does not define are
    /// [`Op::Other`], 4 bytes wide.
    pub fn of(r_type: u32) -> RelocClass {
        let t = RelocationType(r_type);
        let (op, width, signed) = match t {
            R_X86_64_NONE => (Op::None, 0, false),
            R_X86_64_64 => (Op::Abs, 8, false),
            R_X86_64_32 => (Op::Abs, 4, false),
            R_X86_64_32S => (Op::Abs, 4, true),
            R_X86_64_16 => (Op::Abs, 2, false),
            R_X86_64_8 => (Op::Abs, 1, false),
            R_X86_64_PC64 => (Op::PcRel, 8, true),
            R_X86_64_PC32 => (Op::PcRel, 4, true),
            R_X86_64_PC16 => (Op::PcRel, 2, true),
            R_X86_64_PC8 => (Op::PcRel, 1, true),
            R_X86_64_PLT32 => (Op::Plt, 4, true),
            R_X86_64_GOTPCREL
            | R_X86_64_GOTPCRELX
            | R_X86_64_REX_GOTPCRELX
            | R_X86_64_CODE_4_GOTPCRELX
            | R_X86_64_CODE_5_GOTPCRELX
            | R_X86_64_CODE_6_GOTPCRELX => (Op::Got, 4, true),
            R_X86_64_GOTPCREL64 => (Op::Got, 8, true),
            R_X86_64_GOTTPOFF
            | R_X86_64_CODE_4_GOTTPOFF
            | R_X86_64_CODE_5_GOTTPOFF
            | R_X86_64_CODE_6_GOTTPOFF => (Op::GotTp, 4, true),
            R_X86_64_TPOFF32 => (Op::TpOff, 4, true),
            R_X86_64_TPOFF64 => (Op::TpOff, 8, true),
            R_X86_64_TLSGD
            | R_X86_64_TLSLD
            | R_X86_64_DTPOFF32
            | R_X86_64_GOTPC32_TLSDESC
            | R_X86_64_CODE_4_GOTPC32_TLSDESC
            | R_X86_64_CODE_5_GOTPC32_TLSDESC
            | R_X86_64_CODE_6_GOTPC32_TLSDESC => (Op::DynamicTls, 4, true),
            R_X86_64_DTPMOD64 | R_X86_64_DTPOFF64 => (Op::DynamicTls, 8, false),
            R_X86_64_TLSDESC_CALL => (Op::DynamicTls, 0, false),
            R_X86_64_TLSDESC => (Op::DynamicTls, 16, false),
            R_X86_64_GOT32 | R_X86_64_SIZE32 => (Op::Other, 4, false),
            R_X86_64_GOTPC32 => (Op::Other, 4, true),
            R_X86_64_COPY => (Op::Other, 0, false),
            R_X86_64_GLOB_DAT | R_X86_64_JUMP_SLOT | R_X86_64_RELATIVE | R_X86_64_GOTOFF64
            | R_X86_64_GOT64 | R_X86_64_GOTPC64 | R_X86_64_GOTPLT64 | R_X86_64_PLTOFF64
            | R_X86_64_SIZE64 | R_X86_64_IRELATIVE | R_X86_64_RELATIVE64 => (Op::Other, 8, false),
            _ => (Op::Other, 4, false),
        };
        let pc_relative = matches!(op, Op::PcRel | Op::Plt | Op::Got | Op::GotTp)
            || matches!(
                t,
                R_X86_64_TLSGD
                    | R_X86_64_TLSLD
                    | R_X86_64_GOTPC32_TLSDESC
                    | R_X86_64_CODE_4_GOTPC32_TLSDESC
                    | R_X86_64_CODE_5_GOTPC32_TLSDESC
                    | R_X86_64_CODE_6_GOTPC32_TLSDESC
                    | R_X86_64_GOTPC32
                    | R_X86_64_GOTPC64
            );
        let relaxable = matches!(
            t,
            R_X86_64_GOTPCRELX
                | R_X86_64_REX_GOTPCRELX
                | R_X86_64_CODE_4_GOTPCRELX
                | R_X86_64_CODE_5_GOTPCRELX
                | R_X86_64_CODE_6_GOTPCRELX
                | R_X86_64_GOTTPOFF
                | R_X86_64_CODE_4_GOTTPOFF
                | R_X86_64_CODE_5_GOTTPOFF
                | R_X86_64_CODE_6_GOTTPOFF
                | R_X86_64_TLSGD
                | R_X86_64_TLSLD
                | R_X86_64_GOTPC32_TLSDESC
                | R_X86_64_TLSDESC_CALL
        );
        let linked = matches!(
            t,
            R_X86_64_64
                | R_X86_64_PC32
                | R_X86_64_PLT32
                | R_X86_64_GOTPCREL
                | R_X86_64_32
                | R_X86_64_32S
                | R_X86_64_GOTTPOFF
                | R_X86_64_TPOFF32
                | R_X86_64_PC64
                | R_X86_64_GOTPCRELX
                | R_X86_64_REX_GOTPCRELX
        );
        RelocClass {
            op,
            width,
            signed,
            pc_relative,
            relaxable,
            linked,
        }
    }

    /// Whether the field addresses a GOT slot ([`Op::Got`] or [`Op::GotTp`]): a linker may
    /// rewrite the opcode in front of it, and the user-space linker gives the symbol a slot.
    pub fn uses_got(self) -> bool {
        matches!(self.op, Op::Got | Op::GotTp)
    }

    /// Whether the field holds a branch displacement to a symbol (`S + A - P` or `L + A - P`,
    /// 32 bits): what a `call`/`jmp` to another function carries.
    pub fn is_branch32(self) -> bool {
        matches!(self.op, Op::PcRel | Op::Plt) && self.width == 4
    }
}

/// The `R_X86_64_*` name of a type number (`R_X86_64_<N>` for a number x86-64 does not
/// define).
pub fn name(r_type: u32) -> String {
    match NAMES_R_X86_64.name(RelocationType(r_type)) {
        Some(name) => name.to_string(),
        None => format!("R_X86_64_<{r_type}>"),
    }
}

/// Why a type the user-space linker does not resolve is refused, for the report.
pub fn unsupported_reason(r_type: u32) -> &'static str {
    match RelocClass::of(r_type).op {
        Op::DynamicTls => {
            "dynamic TLS access models (general/local dynamic, TLS descriptors) are not linked into live patches yet; build with -ftls-model=initial-exec"
        }
        _ => "this relocation type is not linked into live patches",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_types_gcc_emits_are_classified() {
        let class = |t: RelocationType| RelocClass::of(t.0);
        let pc32 = class(R_X86_64_PC32);
        assert_eq!(
            (pc32.op, pc32.width, pc32.signed, pc32.pc_relative),
            (Op::PcRel, 4, true, true)
        );
        assert_eq!(class(R_X86_64_PLT32).op, Op::Plt);
        assert!(class(R_X86_64_PLT32).is_branch32());
        assert!(!class(R_X86_64_PC64).is_branch32());
        let abs32 = class(R_X86_64_32);
        assert_eq!((abs32.op, abs32.signed), (Op::Abs, false));
        assert!(class(R_X86_64_32S).signed);
        assert_eq!(class(R_X86_64_64).width, 8);
        assert!(class(R_X86_64_REX_GOTPCRELX).relaxable);
        assert!(!class(R_X86_64_GOTPCREL).relaxable);
        assert!(class(R_X86_64_GOTPCREL).uses_got());
        assert!(class(R_X86_64_GOTTPOFF).uses_got());
        assert_eq!(class(R_X86_64_TPOFF32).op, Op::TpOff);
        assert!(!class(R_X86_64_TPOFF32).pc_relative);
        assert_eq!(class(R_X86_64_NONE).width, 0);
        assert_eq!(class(R_X86_64_TLSGD).op, Op::DynamicTls);
        assert_eq!(RelocClass::of(200).op, Op::Other);
        assert_eq!(RelocClass::of(200).width, 4);
    }

    /// The user-space linker computes `S + A` or `S + A - P` into 4 or 8 bytes: every linked
    /// type must be one of those.
    #[test]
    fn linked_types_are_ones_the_linker_can_write() {
        for t in 0..=60 {
            let c = RelocClass::of(t);
            if c.linked {
                assert!(
                    matches!(
                        c.op,
                        Op::Abs | Op::PcRel | Op::Plt | Op::Got | Op::GotTp | Op::TpOff
                    ) && matches!(c.width, 4 | 8),
                    "{}: {c:?}",
                    name(t)
                );
            }
        }
    }

    #[test]
    fn names_come_from_object() {
        assert_eq!(name(R_X86_64_GOTTPOFF.0), "R_X86_64_GOTTPOFF");
        assert_eq!(name(R_X86_64_32S.0), "R_X86_64_32S");
        assert_eq!(name(R_X86_64_NONE.0), "R_X86_64_NONE");
        assert_eq!(name(200), "R_X86_64_<200>");
    }

    #[test]
    fn dynamic_tls_is_refused_with_advice() {
        assert!(unsupported_reason(R_X86_64_TLSGD.0).contains("initial-exec"));
        assert!(!unsupported_reason(R_X86_64_GOTOFF64.0).contains("initial-exec"));
    }
}
