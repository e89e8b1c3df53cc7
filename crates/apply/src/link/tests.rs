//! Golden tests of the linker over `fixtures/link/<case>/`: `pre.c` and `post.c` are compiled
//! by gcc at test time (`-O2 -ffunction-sections -fdata-sections`, plus the case's `flags`),
//! their patch set becomes the bundle's object patch, and `plan` + `link` lay it out and
//! relocate it for the addresses in `placement`:
//!
//! ```text
//! code 0x555555600000        the code region's base
//! data 0x555555700000        the data region's base
//! symbol NAME 0x...          NAME resolves to this address
//! tls NAME -16               NAME is thread-local at this offset from the thread pointer
//! far NAME                   `plan` is told NAME may be beyond rel32 reach (a call stub)
//! ```
//!
//! The result — the layout and every write, with each relocation field's value — is compared
//! with `expected`. `UPDATE_EXPECT=1 cargo test -p hotsplice-apply --lib link::tests` rewrites
//! the goldens; review the diff before committing it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use hotsplice_bundle::convert;
use hotsplice_bundle::{Piece, Reloc, SymbolClass};
use hotsplice_objdiff::patch_objects;
use object::elf::{
    R_X86_64_32, R_X86_64_32S, R_X86_64_64, R_X86_64_DTPOFF64, R_X86_64_PC32, R_X86_64_PC64,
    R_X86_64_PLT32,
};

use super::*;

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/link")
}

fn compile(source: &Path, out: &Path, flags: &[&str]) {
    let output = Command::new("gcc")
        .args(["-c", "-O2", "-ffunction-sections", "-fdata-sections"])
        .args(flags)
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .expect("gcc must be installed (scripts/setup installs it)");
    assert!(
        output.status.success(),
        "gcc failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A case's `placement` file.
#[derive(Default)]
struct Placement {
    code: u64,
    data: u64,
    symbols: HashMap<String, Resolved>,
    far: Vec<String>,
}

fn number(text: &str) -> i64 {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {text}")) as i64;
    if negative { -value } else { value }
}

fn placement(text: &str) -> Placement {
    let mut p = Placement::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [comment, ..] if comment.starts_with('#') => {}
            ["code", a] => p.code = number(a) as u64,
            ["data", a] => p.data = number(a) as u64,
            ["symbol", name, a] => {
                p.symbols
                    .insert(name.to_string(), Resolved::Address(number(a) as u64));
            }
            ["tls", name, t] => {
                p.symbols
                    .insert(name.to_string(), Resolved::TpOffset(number(t)));
            }
            ["far", name] => p.far.push(name.to_string()),
            _ => panic!("bad placement line: {line}"),
        }
    }
    p
}

fn hex_lines(out: &mut String, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(out, "    {:04x}: {}", i * 16, hex.join(" "));
    }
}

/// The golden form: the layout, then each write in address order, named, with the value of
/// every relocation field it holds.
fn render(objects: &[ObjectPatch], p: &Placement) -> String {
    let far = |_: usize, s: &SymbolRef| p.far.contains(&s.name);
    let layout = plan(objects, &far);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "layout: code {:#x} bytes, data {:#x} bytes",
        layout.code_size, layout.data_size
    );
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut relocs: HashMap<u64, &[hotsplice_bundle::Reloc]> = HashMap::new();
    for (o, object) in objects.iter().enumerate() {
        for (i, piece) in object.pieces.iter().enumerate() {
            let at = piece_address(&layout, o, i, p.code, p.data);
            let _ = writeln!(
                out,
                "piece {o}.{i} {:?} {} at {at:#x}, {} bytes",
                piece.kind, piece.name, piece.size
            );
            names.insert(at, format!("piece {o}.{i} {}", piece.name));
            relocs.insert(at, &piece.relocs);
        }
    }
    let mut slots: Vec<_> = layout.slots.iter().collect();
    slots.sort_by_key(|(_, offset)| **offset);
    for (((_, name), tp), offset) in slots {
        let what = if *tp { "TP-offset slot" } else { "slot" };
        names.insert(p.code + offset, format!("{what} {name}"));
    }
    for ((_, name), offset) in &layout.stubs {
        names.insert(p.code + offset, format!("stub {name}"));
    }
    let resolve = |_: usize, s: &SymbolRef| p.symbols.get(&s.name).copied();
    let mut writes = match link(1, objects, &layout, p.code, p.data, &resolve) {
        Ok(writes) => writes,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            return out;
        }
    };
    writes.sort_by_key(|w| w.address);
    for w in &writes {
        let name = names.get(&w.address).map_or("?", String::as_str);
        let _ = writeln!(
            out,
            "write {:#x} {name}, {} bytes",
            w.address,
            w.bytes.len()
        );
        for r in relocs.get(&w.address).copied().unwrap_or_default() {
            let width = if hotsplice_reloc::RelocClass::of(r.r_type).width == 8 {
                8
            } else {
                4
            };
            let at = r.offset as usize;
            let mut field = [0u8; 8];
            field[..width].copy_from_slice(&w.bytes[at..at + width]);
            let value = match width {
                8 => i64::from_le_bytes(field),
                _ => i32::from_le_bytes(field[..4].try_into().unwrap()) as i64,
            };
            let target = match &r.target {
                hotsplice_bundle::Link::Piece { index } => format!("piece {index}"),
                hotsplice_bundle::Link::Symbol { symbol } => symbol.name.clone(),
                hotsplice_bundle::Link::Nothing => "nothing".into(),
            };
            let sign = if value < 0 { "-" } else { "" };
            let _ = writeln!(
                out,
                "  +{:#x} {} {target}{:+} = {sign}{:#x}",
                r.offset,
                hotsplice_reloc::name(r.r_type),
                r.addend,
                value.unsigned_abs()
            );
        }
        hex_lines(&mut out, &w.bytes);
    }
    out
}

fn run_case(case: &Path) -> Option<String> {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    // Unit tests have no CARGO_TARGET_TMPDIR: a directory of this run's own, removed after.
    let dir = std::env::temp_dir().join(format!("hotsplice-link-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flags = std::fs::read_to_string(case.join("flags")).unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    compile(&case.join("pre.c"), &dir.join("pre.o"), &flags);
    compile(&case.join("post.c"), &dir.join("post.o"), &flags);
    let pre = std::fs::read(dir.join("pre.o")).unwrap();
    let post = std::fs::read(dir.join("post.o")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let (diff, set) = patch_objects(&format!("{name}.o"), Some(&pre), Some(&post))
        .unwrap_or_else(|e| panic!("{name}: diff failed: {e}"));
    assert!(diff.refusals.is_empty(), "{name}: {:?}", diff.refusals);
    let objects = [convert::object_patch(&diff, &set)];
    let placement = placement(&std::fs::read_to_string(case.join("placement")).unwrap());
    let out = render(&objects, &placement);
    let expected_path = case.join("expected");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&expected_path, &out).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    (expected != out).then(|| {
        format!(
            "{name} differs from {}:\n--- expected\n{expected}--- actual\n{out}",
            expected_path.display()
        )
    })
}

#[test]
fn fixtures() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("fixtures/link exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("post.c").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "fixtures/link has its cases");
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// --- hand-built pieces: the relocation types and limits the C fixtures do not reach ---------

const CODE: u64 = 0x5555_5560_0000;
const DATA: u64 = 0x5555_5570_0000;

/// One object with one code piece of `size` zero bytes holding `relocs` (each to `sym`).
fn one_piece(size: usize, relocs: &[(u64, u32)]) -> Vec<ObjectPatch> {
    vec![ObjectPatch {
        object: "t.o".into(),
        source_file: None,
        pieces: vec![Piece {
            name: "f".into(),
            symbol: Some("f".into()),
            kind: PieceKind::Code,
            align: 16,
            size: size as u64,
            bytes: vec![0; size],
            relocs: relocs
                .iter()
                .map(|&(offset, r_type)| Reloc {
                    offset,
                    r_type,
                    target: Link::Symbol {
                        symbol: SymbolRef {
                            name: "sym".into(),
                            class: SymbolClass::Data,
                            local: false,
                        },
                    },
                    addend: 0,
                })
                .collect(),
            frames: Vec::new(),
        }],
        replacements: Vec::new(),
        referenced: Vec::new(),
        hooks: Vec::new(),
        bindings: Vec::new(),
        functions: Vec::new(),
    }]
}

/// The piece's bytes after linking with `sym` at `address`, or the error.
fn link_one(size: usize, relocs: &[(u64, u32)], address: u64) -> Result<Vec<u8>, String> {
    let objects = one_piece(size, relocs);
    let layout = plan(&objects, &|_, _| false);
    let resolve = |_: usize, _: &SymbolRef| Some(Resolved::Address(address));
    let writes = link(7, &objects, &layout, CODE, DATA, &resolve).map_err(|e| e.to_string())?;
    let at = piece_address(&layout, 0, 0, CODE, DATA);
    Ok(writes.into_iter().find(|w| w.address == at).unwrap().bytes)
}

#[test]
fn absolute_32_is_zero_extended_and_must_fit() {
    assert_eq!(
        link_one(4, &[(0, R_X86_64_32.0)], 0xffff_fff0),
        Ok(vec![0xf0, 0xff, 0xff, 0xff])
    );
    let err = link_one(4, &[(0, R_X86_64_32.0)], 0x1_0000_0000).unwrap_err();
    assert!(
        err.contains("sym at 0x100000000 is out of 32-bit reach"),
        "{err}"
    );
}

#[test]
fn absolute_32s_must_fit_a_positive_i32_in_user_space() {
    assert_eq!(
        link_one(4, &[(0, R_X86_64_32S.0)], 0x7fff_ffff),
        Ok(vec![0xff, 0xff, 0xff, 0x7f])
    );
    assert!(link_one(4, &[(0, R_X86_64_32S.0)], 0x8000_0000).is_err());
    // Addresses are taken as unsigned: the kernel's upper half (which a sign-extended field
    // could reach) is never a user-space address, and is refused.
    assert!(link_one(4, &[(0, R_X86_64_32S.0)], 0xffff_ffff_8000_0000).is_err());
}

#[test]
fn absolute_64_and_pc64_fill_eight_bytes() {
    let bytes = link_one(
        16,
        &[(0, R_X86_64_64.0), (8, R_X86_64_PC64.0)],
        0x1122_3344_5566_7788,
    )
    .unwrap();
    assert_eq!(bytes[..8], 0x1122_3344_5566_7788u64.to_le_bytes());
    let place = CODE + HEADER_SIZE + 8;
    assert_eq!(
        bytes[8..],
        (0x1122_3344_5566_7788u64.wrapping_sub(place)).to_le_bytes()
    );
}

#[test]
fn pc32_reaches_two_gib_either_way_and_no_further() {
    let place = CODE + HEADER_SIZE + 1;
    // S - P = i32::MAX fits; one more does not.
    let top = place + i32::MAX as u64;
    assert_eq!(
        link_one(5, &[(1, R_X86_64_PC32.0)], top),
        Ok(vec![0, 0xff, 0xff, 0xff, 0x7f])
    );
    assert!(link_one(5, &[(1, R_X86_64_PC32.0)], top + 1).is_err());
    let bottom = place - (1 << 31);
    assert_eq!(
        link_one(5, &[(1, R_X86_64_PLT32.0)], bottom),
        Ok(vec![0, 0, 0, 0, 0x80])
    );
    assert!(link_one(5, &[(1, R_X86_64_PLT32.0)], bottom - 1).is_err());
}

#[test]
fn an_unsupported_relocation_names_its_piece() {
    let err = link_one(8, &[(0, R_X86_64_DTPOFF64.0)], 0x1000).unwrap_err();
    assert!(err.contains("in f"), "{err}");
}

/// Messages name relocation types; numbers mean nothing to a user.
#[test]
fn an_unsupported_relocation_is_named() {
    let error = crate::Error::UnsupportedRelocation {
        r_type: object::elf::R_X86_64_TLSGD.0,
        piece: "handle".into(),
    };
    assert_eq!(
        error.to_string(),
        "relocation type R_X86_64_TLSGD in handle is not supported"
    );
}
