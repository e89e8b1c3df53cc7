//! Table-driven `match_function` checks: pre-build code and its relocations against the bytes a
//! linked program holds at an address, each case with the expected verdict as text. The code
//! is hand-assembled (the encodings are spelled out beside the bytes), so every rewrite the
//! matcher accepts — and every difference it must refuse — is one row.

use hotsplice_matcher::{Learned, Memory, PreCode, PreReloc, match_function};
use object::elf::{
    R_X86_64_GOTPCRELX, R_X86_64_GOTTPOFF, R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_REX_GOTPCRELX,
    RelocationType,
};

/// Where the "running" code is.
const AT: u64 = 0x40_1000;

/// Bytes at [`AT`], then `int3` filler (the next function's padding) up to [`READABLE`];
/// nothing else readable.
struct Code<'a>(&'a [u8]);

/// How many bytes from [`AT`] are readable.
const READABLE: u64 = 64;

impl Memory for Code<'_> {
    fn read(&self, address: u64, buf: &mut [u8]) -> bool {
        let Some(start) = address.checked_sub(AT) else {
            return false;
        };
        if start + buf.len() as u64 > READABLE {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = *self.0.get(start as usize + i).unwrap_or(&0xcc);
        }
        true
    }
}

/// A relocation with the usual `-4` addend of a field that ends its instruction.
fn reloc(offset: u64, r_type: RelocationType, symbol: Option<&str>) -> PreReloc {
    PreReloc {
        offset,
        r_type: r_type.0,
        symbol: symbol.map(str::to_string),
        addend: -4,
    }
}

fn show(value: Learned) -> String {
    match value {
        Learned::Address(a) => format!("address {a:#x}"),
        Learned::GotSlot(a) => format!("got slot {a:#x}"),
        Learned::TpOffset(t) => format!("tp offset {t}"),
        Learned::TpOffsetSlot(a) => format!("tp offset slot {a:#x}"),
    }
}

/// The verdict as one line: `ok <len>` and what was learnt, or `mismatch +<offset>`.
fn check(pre: &[u8], relocs: &[PreReloc], live: &[u8]) -> String {
    let pre = PreCode { code: pre, relocs };
    match match_function(pre, AT, live.len() as u64, &Code(live)) {
        Ok(m) => {
            assert_eq!(m.address, AT);
            let mut out = format!("ok {}", m.len);
            for l in &m.learned {
                out += &format!("; {} = {} (from {:#x})", l.symbol, show(l.value), l.at);
            }
            for t in &m.branch_targets {
                out += &format!("; branch target +{t}");
            }
            out
        }
        Err(e) => format!("mismatch +{} `{}`", e.offset, e.expected),
    }
}

/// One `#[test]` per row: the verdict of `check(pre, relocs, live)` must be `expect`.
macro_rules! cases {
    ($($(#[$doc:meta])* $name:ident {
        pre: $pre:expr,
        relocs: $relocs:expr,
        live: $live:expr,
        expect: $expect:expr,
    })*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                let relocs: &[PreReloc] = &$relocs;
                assert_eq!(check($pre, relocs, $live), $expect);
            }
        )*
    };
}

cases! {
    // --- GOT-relative loads and their relaxations ---------------------------------------
    /// REX_GOTPCRELX load relaxed to lea (PIE).
    rex_gotpcrelx_load_relaxed_to_lea_pie {
        // mov foo@GOTPCREL(%rip),%rax; ret
        pre: &[0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(3, R_X86_64_REX_GOTPCRELX, Some("foo"))],
        // lea 0xff9(%rip),%rax  (→ 0x402000); ret
        live: &[0x48, 0x8d, 0x05, 0xf9, 0x0f, 0, 0, 0xc3],
        expect: "ok 8; foo = address 0x402000 (from 0x401000)",
    }
    /// REX_GOTPCRELX load relaxed to mov-immediate (non-PIE).
    rex_gotpcrelx_load_relaxed_to_mov_immediate_non_pie {
        pre: &[0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(3, R_X86_64_REX_GOTPCRELX, Some("foo"))],
        // mov $0x402000,%rax (REX.W c7 /0); ret
        live: &[0x48, 0xc7, 0xc0, 0x00, 0x20, 0x40, 0x00, 0xc3],
        expect: "ok 8; foo = address 0x402000 (from 0x401000)",
    }
    /// REX_GOTPCRELX load left alone teaches the GOT slot.
    rex_gotpcrelx_load_left_alone_teaches_the_got_slot {
        pre: &[0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(3, R_X86_64_REX_GOTPCRELX, Some("foo"))],
        live: &[0x48, 0x8b, 0x05, 0xf9, 0x0f, 0, 0, 0xc3],
        expect: "ok 8; foo = got slot 0x402000 (from 0x401000)",
    }
    /// REX_GOTPCRELX relaxed into another register is refused.
    rex_gotpcrelx_relaxed_into_another_register_is_refused {
        pre: &[0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(3, R_X86_64_REX_GOTPCRELX, Some("foo"))],
        // lea 0xff9(%rip),%rcx
        live: &[0x48, 0x8d, 0x0d, 0xf9, 0x0f, 0, 0, 0xc3],
        expect: "mismatch +0 `mov 7,%rax`",
    }
    /// GOTPCRELX 32-bit load (no REX) relaxed to lea.
    gotpcrelx_32_bit_load_no_rex_relaxed_to_lea {
        // mov foo@GOTPCREL(%rip),%eax; ret
        pre: &[0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(2, R_X86_64_GOTPCRELX, Some("foo"))],
        // lea 0xffa(%rip),%eax  (→ 0x402000)
        live: &[0x8d, 0x05, 0xfa, 0x0f, 0, 0, 0xc3],
        expect: "ok 7; foo = address 0x402000 (from 0x401000)",
    }
    /// GOTPCRELX indirect call relaxed to addr32 call.
    gotpcrelx_indirect_call_relaxed_to_addr32_call {
        // call *foo@GOTPCREL(%rip); ret
        pre: &[0xff, 0x15, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(2, R_X86_64_GOTPCRELX, Some("foo"))],
        // addr32 call 0x402000; ret
        live: &[0x67, 0xe8, 0xfa, 0x0f, 0, 0, 0xc3],
        expect: "ok 7; foo = address 0x402000 (from 0x401000)",
    }
    /// GOTPCRELX indirect jump relaxed to jmp + nop.
    gotpcrelx_indirect_jump_relaxed_to_jmp_nop {
        // jmp *foo@GOTPCREL(%rip)
        pre: &[0xff, 0x25, 0, 0, 0, 0],
        relocs: [reloc(2, R_X86_64_GOTPCRELX, Some("foo"))],
        // jmp 0x402000; nop
        live: &[0xe9, 0xfb, 0x0f, 0, 0, 0x90],
        expect: "ok 5; foo = address 0x402000 (from 0x401000)",
    }
    /// initial-exec TLS (GOTTPOFF) relaxed to local-exec mov-immediate.
    initial_exec_tls_gottpoff_relaxed_to_local_exec_mov_immediate {
        // mov tls@GOTTPOFF(%rip),%rax; ret
        pre: &[0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(3, R_X86_64_GOTTPOFF, Some("tls"))],
        // mov $-16,%rax; ret
        live: &[0x48, 0xc7, 0xc0, 0xf0, 0xff, 0xff, 0xff, 0xc3],
        expect: "ok 8; tls = tp offset -16 (from 0x401000)",
    }
    /// GOTTPOFF left alone teaches the slot of the TP offset.
    gottpoff_left_alone_teaches_the_slot_of_the_tp_offset {
        pre: &[0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(3, R_X86_64_GOTTPOFF, Some("tls"))],
        live: &[0x48, 0x8b, 0x05, 0xf9, 0x0f, 0, 0, 0xc3],
        expect: "ok 8; tls = tp offset slot 0x402000 (from 0x401000)",
    }
    // --- relocation fields are wildcards ------------------------------------------------
    /// a call's PLT32 field is a wildcard that teaches the callee.
    a_call_s_plt32_field_is_a_wildcard_that_teaches_the_callee {
        // call bar; ret
        pre: &[0xe8, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(1, R_X86_64_PLT32, Some("bar"))],
        live: &[0xe8, 0xfb, 0x0f, 0, 0, 0xc3],
        expect: "ok 6; bar = address 0x402000 (from 0x401000)",
    }
    /// a PC32 data reference is a wildcard that teaches the variable.
    a_pc32_data_reference_is_a_wildcard_that_teaches_the_variable {
        // mov counter(%rip),%eax; ret
        pre: &[0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(2, R_X86_64_PC32, Some("counter"))],
        live: &[0x8b, 0x05, 0xfa, 0x0f, 0, 0, 0xc3],
        expect: "ok 7; counter = address 0x402000 (from 0x401000)",
    }
    /// an anonymous target (a string) is a wildcard that teaches nothing.
    an_anonymous_target_a_string_is_a_wildcard_that_teaches_nothing {
        // lea .LC0(%rip),%rdi; ret
        pre: &[0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(3, R_X86_64_PC32, None)],
        live: &[0x48, 0x8d, 0x3d, 0x12, 0x34, 0x56, 0x00, 0xc3],
        expect: "ok 8",
    }
    /// bytes outside the relocation field still count.
    bytes_outside_the_relocation_field_still_count {
        pre: &[0x8b, 0x05, 0, 0, 0, 0, 0xc3],
        relocs: [reloc(2, R_X86_64_PC32, Some("counter"))],
        // mov counter(%rip),%ecx: another register
        live: &[0x8b, 0x0d, 0xfa, 0x0f, 0, 0, 0xc3],
        expect: "mismatch +0 `mov 6,%eax`",
    }
    // --- branch encodings ---------------------------------------------------------------
    /// short and near internal branches match by target instruction.
    short_and_near_internal_branches_match_by_target_instruction {
        // test %edi,%edi; je +6 (→ xor); mov $1,%eax; ret; xor %eax,%eax; ret
        pre: &[
            0x85, 0xff, 0x74, 0x06, 0xb8, 1, 0, 0, 0, 0xc3, 0x31, 0xc0, 0xc3,
        ],
        relocs: [],
        // the same with a near je (0f 84 rel32)
        live: &[
            0x85, 0xff, 0x0f, 0x84, 0x06, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0xc3, 0x31, 0xc0, 0xc3,
        ],
        expect: "ok 17; branch target +14",
    }
    /// an internal branch to another instruction is refused.
    an_internal_branch_to_another_instruction_is_refused {
        pre: &[
            0x85, 0xff, 0x74, 0x06, 0xb8, 1, 0, 0, 0, 0xc3, 0x31, 0xc0, 0xc3,
        ],
        relocs: [],
        // je near to the first ret instead of the xor
        live: &[
            0x85, 0xff, 0x0f, 0x84, 0x05, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0xc3, 0x31, 0xc0, 0xc3,
        ],
        expect: "mismatch +2 `je 0x000000000000000A`",
    }
    /// a near jump to another function may be assembled short.
    a_near_jump_to_another_function_may_be_assembled_short {
        // jmp other (e9 rel32, PLT32)
        pre: &[0xe9, 0, 0, 0, 0],
        relocs: [reloc(1, R_X86_64_PLT32, Some("other"))],
        // jmp short 0x401012
        live: &[0xeb, 0x10],
        expect: "ok 2; other = address 0x401012 (from 0x401000)",
    }
    /// a call is not a jump.
    a_call_is_not_a_jump {
        pre: &[0xe9, 0, 0, 0, 0],
        relocs: [reloc(1, R_X86_64_PLT32, Some("other"))],
        live: &[0xe8, 0x0b, 0x10, 0, 0],
        expect: "mismatch +0 `jmp 5`",
    }
    // --- padding ------------------------------------------------------------------------
    /// NOP padding of any length, anywhere.
    nop_padding_of_any_length_anywhere {
        // mov $1,%eax; nop; ret
        pre: &[0xb8, 1, 0, 0, 0, 0x90, 0xc3],
        relocs: [],
        // mov $1,%eax; nopl 0(%rax,%rax,1); xchg %ax,%ax; ret
        live: &[0xb8, 1, 0, 0, 0, 0x0f, 0x1f, 0x44, 0, 0, 0x66, 0x90, 0xc3],
        expect: "ok 13",
    }
    // --- real differences ---------------------------------------------------------------
    /// a changed immediate is a mismatch naming the instruction.
    a_changed_immediate_is_a_mismatch_naming_the_instruction {
        pre: &[0xb8, 1, 0, 0, 0, 0xc3],
        relocs: [],
        live: &[0xb8, 2, 0, 0, 0, 0xc3],
        expect: "mismatch +0 `mov $1,%eax`",
    }
    /// running code that ends early (into padding) is a mismatch.
    running_code_that_ends_early_into_padding_is_a_mismatch {
        pre: &[0xb8, 1, 0, 0, 0, 0xc3],
        relocs: [],
        live: &[0xb8, 1, 0, 0, 0],
        expect: "mismatch +5 `ret`",
    }
}
