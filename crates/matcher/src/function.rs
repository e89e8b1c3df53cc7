//! Matching one function: is the code at an address the pre-build code?
//!
//! The comparison is instruction by instruction. Bytes must be equal outside relocation fields
//! (which are wildcards whose run-time values teach where the referenced symbols are), with
//! the rewrites a linker and assembler legitimately make accepted:
//! - GOTPCRELX relaxation: `mov foo@GOTPCREL(%rip),%r` → `lea foo(%rip),%r` (or `mov $foo,%r`
//!   in a non-PIE), `call *foo@GOTPCREL(%rip)` → `addr32 call foo`, `jmp *…` → `jmp foo; nop`;
//! - initial-exec TLS relaxed to local-exec: `mov x@gottpoff(%rip),%r` → `mov $tpoff,%r`;
//! - branch encodings: short or near jumps compared by the *instruction index* of their target,
//!   and calls or jumps to other functions by their target, whatever the encoding;
//! - NOP padding of any length, anywhere.

use std::fmt;

use hotsplice_reloc::{Op, RelocClass};
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, Mnemonic, OpKind,
};

/// Memory of the running program (or a file standing in for it).
pub trait Memory {
    /// Fills `buf` from `address`; false when the range is not readable.
    fn read(&self, address: u64, buf: &mut [u8]) -> bool;
}

/// A relocation of the pre-build code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreReloc {
    /// Offset of the field in the function.
    pub offset: u64,
    /// `R_X86_64_*` type.
    pub r_type: u32,
    /// The symbol it names, when it names one (anonymous targets are wildcards).
    pub symbol: Option<String>,
    /// Addend, relative to the symbol.
    pub addend: i64,
}

/// A function of the pre build.
#[derive(Debug, Clone, Copy)]
pub struct PreCode<'a> {
    /// Its code.
    pub code: &'a [u8],
    /// Its relocations, sorted by offset.
    pub relocs: &'a [PreReloc],
}

/// What a relocation field of the running code says about its symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Learned {
    /// The symbol is at this address (a function, a variable, or a PLT stub).
    Address(u64),
    /// The symbol's address is stored in the GOT slot at this address.
    GotSlot(u64),
    /// The (thread-local) symbol is at this offset from the thread pointer.
    TpOffset(i64),
    /// The TP offset of the (thread-local) symbol is stored in the GOT slot at this address.
    TpOffsetSlot(u64),
}

/// One thing learnt, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learning {
    /// The symbol (pre-build name).
    pub symbol: String,
    /// What was learnt.
    pub value: Learned,
    /// Address of the instruction it was learnt from.
    pub at: u64,
}

/// A successful match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Where the function starts.
    pub address: u64,
    /// Bytes from `address` to the end of the last matched instruction.
    pub len: u64,
    /// What the relocation fields taught.
    pub learned: Vec<Learning>,
    /// Running-code offsets that are branch targets inside the function (for the redirect
    /// check: nothing may jump into the bytes a jump overwrites).
    pub branch_targets: Vec<u64>,
}

/// Why the code at an address is not the pre-build code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset in the pre-build code of the first instruction that differs.
    pub offset: u64,
    /// That instruction.
    pub expected: String,
    /// What the running code has there (address and instruction), or why nothing.
    pub found: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at +{:#x}: expected `{}`, found {}",
            self.offset, self.expected, self.found
        )
    }
}

fn format(instruction: &Instruction) -> String {
    let mut formatter = GasFormatter::new();
    let mut out = String::new();
    formatter.format(instruction, &mut out);
    out
}

fn decode(bytes: &[u8], ip: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut instruction = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        out.push(instruction);
    }
    out
}

fn is_padding(i: &Instruction) -> bool {
    i.mnemonic() == Mnemonic::Nop
}

/// Index of the first non-padding instruction at or after `target`, among `list`.
fn index_of(list: &[Instruction], target: u64) -> Option<usize> {
    let mut index = 0;
    for i in list {
        if i.ip() >= target && !is_padding(i) {
            return (i.ip() == target || is_padding_between(list, target, i.ip())).then_some(index);
        }
        if !is_padding(i) {
            index += 1;
        }
    }
    None
}

/// Whether everything from `from` up to `to` is padding (a jump to a NOP before real code).
fn is_padding_between(list: &[Instruction], from: u64, to: u64) -> bool {
    list.iter()
        .filter(|i| i.ip() >= from && i.ip() < to)
        .all(is_padding)
        && list.iter().any(|i| i.ip() == from)
}

fn is_relative_branch(i: &Instruction) -> bool {
    matches!(
        i.flow_control(),
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
    ) && matches!(
        i.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
}

fn field_width(r_type: u32) -> usize {
    usize::from(RelocClass::of(r_type).width)
}

/// The value of a relocation field of type `r_type` at `at`, sign- or zero-extended as the
/// type reads it.
fn read_field(bytes: &[u8], at: usize, r_type: u32) -> Option<i64> {
    let class = RelocClass::of(r_type);
    let field = bytes.get(at..at + usize::from(class.width))?;
    let mut raw = [0u8; 8];
    raw[..field.len()].copy_from_slice(field);
    let value = i64::from_le_bytes(raw);
    let bits = 8 * u32::from(class.width);
    Some(if class.signed && (1..64).contains(&bits) {
        // Shift the field's sign bit up to bit 63 and back.
        (value << (64 - bits)) >> (64 - bits)
    } else {
        value
    })
}

/// What a field value teaches, for a relocation that was not relaxed.
fn learn_plain(r: &PreReloc, value: i64, field_address: u64) -> Option<Learned> {
    let pc_relative = value
        .wrapping_add(field_address as i64)
        .wrapping_sub(r.addend) as u64;
    let class = RelocClass::of(r.r_type);
    // A field narrower than 4 bytes (`PC16`, `8`) does not hold an address.
    if class.width < 4 {
        return None;
    }
    Some(match class.op {
        Op::PcRel | Op::Plt => Learned::Address(pc_relative),
        Op::Got => Learned::GotSlot(pc_relative),
        Op::GotTp => Learned::TpOffsetSlot(pc_relative),
        Op::TpOff => Learned::TpOffset(value.wrapping_sub(r.addend)),
        // `read_field` zero-extended a `32` field and sign-extended a `32S` one.
        Op::Abs => Learned::Address(value.wrapping_sub(r.addend) as u64),
        Op::None | Op::DynamicTls | Op::Other => return None,
    })
}

/// The relaxed forms a linker may have made of a GOT-relative instruction.
fn learn_relaxed(p: &Instruction, r: &Instruction, reloc: &PreReloc) -> Option<Learned> {
    let immediate = |i: &Instruction| -> Option<i64> {
        match i.op1_kind() {
            OpKind::Immediate32to64 => Some(i.immediate32to64()),
            OpKind::Immediate32 => Some(i.immediate32() as i64),
            _ => None,
        }
    };
    let class = RelocClass::of(reloc.r_type);
    if !class.relaxable {
        return None;
    }
    match class.op {
        // (REX_)GOTPCRELX
        Op::Got => match (p.mnemonic(), r.mnemonic()) {
            (Mnemonic::Mov, Mnemonic::Lea)
                if p.op0_register() == r.op0_register() && r.is_ip_rel_memory_operand() =>
            {
                Some(Learned::Address(r.ip_rel_memory_address()))
            }
            (Mnemonic::Mov, Mnemonic::Mov)
                if p.op0_register() == r.op0_register() && !r.is_ip_rel_memory_operand() =>
            {
                immediate(r).map(|v| Learned::Address(v as u64))
            }
            (Mnemonic::Call, Mnemonic::Call) | (Mnemonic::Jmp, Mnemonic::Jmp)
                if is_relative_branch(r) =>
            {
                Some(Learned::Address(r.near_branch_target()))
            }
            _ => None,
        },
        // GOTTPOFF relaxed to local exec: `mov/add $tpoff, %reg`.
        Op::GotTp => match (p.mnemonic(), r.mnemonic()) {
            (Mnemonic::Mov, Mnemonic::Mov) | (Mnemonic::Add, Mnemonic::Add)
                if p.op0_register() == r.op0_register() && !r.is_ip_rel_memory_operand() =>
            {
                immediate(r).map(Learned::TpOffset)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Proves the code at `address` is `pre` (see the module documentation). `window` is how many
/// bytes to read (the function's FDE length, or a little more than the pre code).
pub fn match_function(
    pre: PreCode<'_>,
    address: u64,
    window: u64,
    memory: &dyn Memory,
) -> Result<Matched, Mismatch> {
    let pre_list = decode(pre.code, 0);
    let decoded_len = pre_list.last().map_or(0, |i| i.next_ip());
    if decoded_len != pre.code.len() as u64 {
        return Err(Mismatch {
            offset: decoded_len,
            expected: "decodable pre-build code".into(),
            found: "the pre-build code itself does not decode".into(),
        });
    }
    let window = window.max(pre.code.len() as u64);
    let mut running = vec![0u8; window as usize];
    if !memory.read(address, &mut running) {
        running.truncate(pre.code.len());
        if !memory.read(address, &mut running) {
            return Err(Mismatch {
                offset: 0,
                expected: "code".into(),
                found: format!("unreadable memory at {address:#x}"),
            });
        }
    }
    let run_list = decode(&running, address);
    let mut learned = Vec::new();
    let mut branch_targets = Vec::new();
    let mut r_iter = run_list.iter().filter(|i| !is_padding(i));
    let mut end = address;

    for p in pre_list.iter().filter(|i| !is_padding(i)) {
        let mismatch = |found: String| Mismatch {
            offset: p.ip(),
            expected: format(p),
            found,
        };
        let Some(r) = r_iter.next() else {
            return Err(mismatch("the end of readable code".into()));
        };
        let found = || format!("`{}` at {:#x}", format(r), r.ip());
        end = r.next_ip();
        let (p_start, p_end) = (p.ip(), p.next_ip());
        let relocs: Vec<&PreReloc> = pre
            .relocs
            .iter()
            .filter(|x| x.offset >= p_start && x.offset < p_end)
            .collect();
        let p_bytes = &pre.code[p_start as usize..p_end as usize];
        let r_offset = (r.ip() - address) as usize;
        let r_bytes = &running[r_offset..r_offset + r.len()];

        if relocs.is_empty() {
            if is_relative_branch(p) && p.near_branch_target() <= pre.code.len() as u64 {
                // An internal branch: same kind, same target instruction.
                if !is_relative_branch(r) || p.mnemonic() != r.mnemonic() {
                    return Err(mismatch(found()));
                }
                let want = index_of(&pre_list, p.near_branch_target());
                let got = index_of(&run_list, r.near_branch_target());
                if want.is_none() || want != got {
                    return Err(mismatch(format!(
                        "{} (branch to a different instruction)",
                        found()
                    )));
                }
                branch_targets.push(r.near_branch_target() - address);
                continue;
            }
            if p_bytes != r_bytes {
                return Err(mismatch(found()));
            }
            continue;
        }

        // A branch to another function: the assembler of a build without
        // -ffunction-sections may have used a short encoding for a nearby target.
        if let [x] = relocs.as_slice()
            && RelocClass::of(x.r_type).is_branch32()
            && is_relative_branch(p)
            && is_relative_branch(r)
            && p.mnemonic() == r.mnemonic()
        {
            if let Some(symbol) = &x.symbol {
                // The field holds S + A - P with P four bytes before the next instruction.
                let target = r.near_branch_target() as i64 - x.addend - 4;
                learned.push(Learning {
                    symbol: symbol.clone(),
                    value: Learned::Address(target as u64),
                    at: r.ip(),
                });
            }
            continue;
        }
        // Same encoding, relocation fields as wildcards.
        let same_shape = p_bytes.len() == r_bytes.len() && {
            let mut masked = vec![false; p_bytes.len()];
            for x in &relocs {
                let at = (x.offset - p_start) as usize;
                for m in masked.iter_mut().skip(at).take(field_width(x.r_type)) {
                    *m = true;
                }
            }
            p_bytes
                .iter()
                .zip(r_bytes)
                .zip(&masked)
                .all(|((a, b), m)| *m || a == b)
        };
        if same_shape {
            for x in &relocs {
                let at = (x.offset - p_start) as usize;
                let Some(value) = read_field(r_bytes, at, x.r_type) else {
                    return Err(mismatch(found()));
                };
                if let (Some(symbol), Some(value)) =
                    (&x.symbol, learn_plain(x, value, r.ip() + at as u64))
                {
                    learned.push(Learning {
                        symbol: symbol.clone(),
                        value,
                        at: r.ip(),
                    });
                }
            }
            continue;
        }
        // A linker relaxation of a single GOT-relative relocation.
        if let [x] = relocs.as_slice()
            && let Some(value) = learn_relaxed(p, r, x)
        {
            if let Some(symbol) = &x.symbol {
                learned.push(Learning {
                    symbol: symbol.clone(),
                    value,
                    at: r.ip(),
                });
            }
            continue;
        }
        return Err(mismatch(found()));
    }
    Ok(Matched {
        address,
        len: end - address,
        learned,
        branch_targets,
    })
}

#[cfg(test)]
mod tests {
    use object::elf::{
        R_X86_64_32, R_X86_64_32S, R_X86_64_64, R_X86_64_GOTPCRELX, R_X86_64_GOTTPOFF,
        R_X86_64_NONE, R_X86_64_PC16, R_X86_64_PC32, R_X86_64_TLSGD, R_X86_64_TPOFF32,
        RelocationType,
    };

    use super::*;

    fn reloc(r_type: RelocationType, addend: i64) -> PreReloc {
        PreReloc {
            offset: 0,
            r_type: r_type.0,
            symbol: Some("x".into()),
            addend,
        }
    }

    #[test]
    fn fields_are_read_as_their_type_reads_them() {
        let bytes = [0xf0, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        // `PC32` and `32S` sign-extend, `32` zero-extends, `64` takes 8 bytes.
        assert_eq!(read_field(&bytes, 0, R_X86_64_PC32.0), Some(-16));
        assert_eq!(read_field(&bytes, 0, R_X86_64_32S.0), Some(-16));
        assert_eq!(read_field(&bytes, 0, R_X86_64_32.0), Some(0xffff_fff0));
        assert_eq!(read_field(&bytes, 0, R_X86_64_64.0), Some(0xffff_fff0));
        assert_eq!(read_field(&bytes, 0, R_X86_64_PC16.0), Some(-16));
        assert_eq!(read_field(&bytes, 4, R_X86_64_64.0), None);
        // `NONE` writes nothing: no bytes are a field.
        assert_eq!(field_width(R_X86_64_NONE.0), 0);
    }

    #[test]
    fn a_field_teaches_what_its_class_says() {
        let at = 0x1000;
        // S + A - P = 0x20 with A = -4: S = 0x1020 + 4.
        assert_eq!(
            learn_plain(&reloc(R_X86_64_PC32, -4), 0x20, at),
            Some(Learned::Address(0x1024))
        );
        assert_eq!(
            learn_plain(&reloc(R_X86_64_GOTPCRELX, -4), 0x20, at),
            Some(Learned::GotSlot(0x1024))
        );
        assert_eq!(
            learn_plain(&reloc(R_X86_64_GOTTPOFF, -4), 0x20, at),
            Some(Learned::TpOffsetSlot(0x1024))
        );
        assert_eq!(
            learn_plain(&reloc(R_X86_64_TPOFF32, 0), -8, at),
            Some(Learned::TpOffset(-8))
        );
        assert_eq!(
            learn_plain(&reloc(R_X86_64_32, 8), 0x40_2000, at),
            Some(Learned::Address(0x40_1ff8))
        );
        // Dynamic TLS and fields narrower than an address teach nothing.
        assert_eq!(learn_plain(&reloc(R_X86_64_TLSGD, -4), 0x20, at), None);
        assert_eq!(learn_plain(&reloc(R_X86_64_PC16, -2), 0x20, at), None);
    }
}
