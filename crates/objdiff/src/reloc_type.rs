//! x86-64 relocation types: field widths, PC-relativity, names, and which ones hotsplice can
//! resolve when it links a patch into a running process.

/// `R_X86_64_NONE`: no relocation (writes nothing).
pub const R_X86_64_NONE: u32 = 0;
/// `R_X86_64_64`: absolute 64-bit address.
pub const R_X86_64_64: u32 = 1;
/// `R_X86_64_PC32`: 32-bit PC-relative.
pub const R_X86_64_PC32: u32 = 2;
/// `R_X86_64_PLT32`: 32-bit PC-relative call through the PLT.
pub const R_X86_64_PLT32: u32 = 4;
/// `R_X86_64_GOTPCREL`: PC-relative offset of the symbol's GOT slot.
pub const R_X86_64_GOTPCREL: u32 = 9;
/// `R_X86_64_32`: zero-extended absolute 32-bit address.
pub const R_X86_64_32: u32 = 10;
/// `R_X86_64_32S`: sign-extended absolute 32-bit address.
pub const R_X86_64_32S: u32 = 11;
/// `R_X86_64_TLSGD`: general-dynamic TLS (`__tls_get_addr`).
pub const R_X86_64_TLSGD: u32 = 19;
/// `R_X86_64_TLSLD`: local-dynamic TLS.
pub const R_X86_64_TLSLD: u32 = 20;
/// `R_X86_64_DTPOFF32`: offset in the module's TLS block.
pub const R_X86_64_DTPOFF32: u32 = 21;
/// `R_X86_64_GOTTPOFF`: initial-exec TLS: GOT slot holding the TP offset.
pub const R_X86_64_GOTTPOFF: u32 = 22;
/// `R_X86_64_TPOFF32`: local-exec TLS: offset from the thread pointer.
pub const R_X86_64_TPOFF32: u32 = 23;
/// `R_X86_64_PC64`: 64-bit PC-relative.
pub const R_X86_64_PC64: u32 = 24;
/// `R_X86_64_GOTPCRELX`: relaxable `GOTPCREL` (no REX prefix).
pub const R_X86_64_GOTPCRELX: u32 = 41;
/// `R_X86_64_REX_GOTPCRELX`: relaxable `GOTPCREL` with a REX prefix.
pub const R_X86_64_REX_GOTPCRELX: u32 = 42;

/// Width in bytes of the field a relocation patches.
pub fn field_width(r_type: u32) -> u64 {
    match r_type {
        0 | 35 => 0,
        1 | 16 | 17 | 18 | 24 | 25 | 27 | 28 | 29 | 30 | 31 | 33 | 38 => 8,
        12 | 13 => 2,
        14 | 15 => 1,
        _ => 4,
    }
}

/// Whether the relocated value is relative to the address of the field (so the target is
/// `symbol + addend + (end of instruction - field)` for an instruction operand).
pub fn is_pc_relative(r_type: u32) -> bool {
    matches!(
        r_type,
        2 | 4 | 9 | 13 | 15 | 19 | 20 | 22 | 24 | 26 | 34 | 41 | 42
    )
}

/// Whether hotsplice's user-space linker resolves this relocation type in patch code.
pub fn is_supported(r_type: u32) -> bool {
    matches!(
        r_type,
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
    )
}

/// The `R_X86_64_*` name of a relocation type.
pub fn name(r_type: u32) -> String {
    let known = match r_type {
        0 => "NONE",
        1 => "64",
        2 => "PC32",
        3 => "GOT32",
        4 => "PLT32",
        9 => "GOTPCREL",
        10 => "32",
        11 => "32S",
        12 => "16",
        13 => "PC16",
        14 => "8",
        15 => "PC8",
        16 => "DTPMOD64",
        17 => "DTPOFF64",
        18 => "TPOFF64",
        19 => "TLSGD",
        20 => "TLSLD",
        21 => "DTPOFF32",
        22 => "GOTTPOFF",
        23 => "TPOFF32",
        24 => "PC64",
        25 => "GOTOFF64",
        26 => "GOTPC32",
        27 => "GOT64",
        28 => "GOTPCREL64",
        29 => "GOTPC64",
        30 => "GOTPLT64",
        31 => "PLTOFF64",
        32 => "SIZE32",
        33 => "SIZE64",
        34 => "GOTPC32_TLSDESC",
        35 => "TLSDESC_CALL",
        36 => "TLSDESC",
        37 => "IRELATIVE",
        41 => "GOTPCRELX",
        42 => "REX_GOTPCRELX",
        _ => return format!("R_X86_64_<{r_type}>"),
    };
    format!("R_X86_64_{known}")
}

/// Why an unsupported type is refused, for the report.
pub fn unsupported_reason(r_type: u32) -> &'static str {
    match r_type {
        R_X86_64_TLSGD | R_X86_64_TLSLD | R_X86_64_DTPOFF32 | 17 | 34 | 35 | 36 => {
            "dynamic TLS access models (general/local dynamic, TLS descriptors) are not linked into live patches yet; build with -ftls-model=initial-exec"
        }
        _ => "this relocation type is not linked into live patches",
    }
}
