//! The patch set extracted from a diffed pair: what is carried, what is linked to the target.

use std::path::Path;

use hotsplice_objdiff::patch_objects;
use hotsplice_objdiff::patchset::{Link, PatchSet, PieceKind, PreTarget, SymbolClass};

fn build(name: &str, pre: &str, post: &str, flags: &[&str]) -> PatchSet {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("patchset")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut objects = Vec::new();
    for (side, source) in [("pre", pre), ("post", post)] {
        let src = dir.join(format!("{side}.c"));
        std::fs::write(&src, source).unwrap();
        let out = dir.join(format!("{side}.o"));
        crate::fixtures::compile(&src, &out, flags);
        objects.push(std::fs::read(out).unwrap());
    }
    let (diff, set) = patch_objects("t.o", Some(&objects[0]), Some(&objects[1])).unwrap();
    assert!(diff.refusals.is_empty(), "{:#?}", diff.refusals);
    set
}

fn piece_named<'s>(
    set: &'s PatchSet,
    symbol: &str,
) -> (usize, &'s hotsplice_objdiff::patchset::Piece) {
    set.pieces
        .iter()
        .enumerate()
        .find(|(_, p)| p.symbol.as_deref() == Some(symbol))
        .unwrap_or_else(|| panic!("no piece for {symbol}: {:#?}", set.pieces))
}

const PRE: &str = r#"
#include <stdio.h>
static int hits;
static __attribute__((noinline)) int helper(int x) { return x * 3 + hits; }
int counter(void) { static int count; return ++count; }
int handle(int x) { hits++; printf("handled %d\n", x); return helper(x); }
"#;

const POST: &str = r#"
#include <stdio.h>
static int hits;
static __attribute__((noinline)) int helper(int x) { return x * 3 + hits; }
static __attribute__((noinline)) int validate(int x) { return x >= 0 && x < 1000; }
int counter(void) { static int count; if (count > 1000000) count = 0; return ++count; }
int handle(int x) { if (!validate(x)) { puts("rejected"); return -1; } hits++; printf("handled %d\n", x); return helper(x); }
"#;

#[test]
fn changed_function_links_existing_symbols_and_carries_new_code_and_strings() {
    let set = build("basic", PRE, POST, &["-O2"]);
    let names: Vec<&str> = set.replacements.iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains(&"handle") && names.contains(&"counter"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"validate"),
        "a new function is not a replacement"
    );

    let (_, handle) = piece_named(&set, "handle");
    assert_eq!(handle.kind, PieceKind::Code);
    let (validate, _) = piece_named(&set, "validate");
    let links: Vec<&Link> = handle.relocs.iter().map(|r| &r.target).collect();
    assert!(
        links.contains(&&Link::Piece(validate)),
        "calls the new function in the patch: {links:?}"
    );
    let symbol = |name: &str| {
        links.iter().find_map(|l| match l {
            Link::Symbol(s) if s.name == name => Some(s.clone()),
            _ => None,
        })
    };
    let helper = symbol("helper").expect("links the unchanged static helper in the target");
    assert!(helper.local);
    assert_eq!(helper.class, SymbolClass::Function);
    assert!(
        symbol("hits")
            .expect("binds the existing static variable")
            .local
    );
    assert!(!symbol("printf").expect("links the library function").local);
    let strings: Vec<&str> = links
        .iter()
        .filter_map(|l| match l {
            Link::Piece(p) => Some(set.pieces[*p].name.as_str()),
            _ => None,
        })
        .filter(|n| n.starts_with("string"))
        .collect();
    assert!(
        strings.iter().any(|s| s.contains("rejected")),
        "carries the new string: {strings:?}"
    );

    // Pre code for run-pre matching: same bytes as the pre object, its references named.
    let replacement = set
        .replacements
        .iter()
        .find(|r| r.name == "handle")
        .unwrap();
    assert!(!replacement.pre_code.is_empty());
    assert!(
        replacement
            .pre_relocs
            .iter()
            .any(|r| matches!(&r.target, PreTarget::Symbol(s) if s.name == "helper"))
    );
    assert!(
        replacement
            .pre_relocs
            .iter()
            .any(|r| matches!(&r.target, PreTarget::Anonymous(_)))
    );
}

#[test]
fn static_local_binds_to_the_pre_instance_name() {
    let set = build("statics", PRE, POST, &["-O2"]);
    let (_, counter) = piece_named(&set, "counter");
    let bound: Vec<String> = counter
        .relocs
        .iter()
        .filter_map(|r| match &r.target {
            Link::Symbol(s) => Some(s.name.clone()),
            _ => None,
        })
        .collect();
    assert!(
        !bound.is_empty() && bound.iter().all(|n| n.starts_with("count.")),
        "{bound:?}"
    );
    assert!(
        set.pieces
            .iter()
            .all(|p| !p.symbol.as_deref().is_some_and(|s| s.starts_with("count."))),
        "the existing static is not copied"
    );
}

#[test]
fn jump_tables_and_private_tables_travel_with_the_function() {
    let pre = "#include <stdio.h>\nint op(int x, int y) { switch (x) { case 0: y += 3; break; case 1: y *= 7; break; case 2: y -= 11; break; case 3: y ^= 5; break; case 4: y /= 3; break; case 5: puts(\"five\"); break; } return y; }\nint w(int k) { switch (k) { case 0: return 4; case 1: return 9; case 2: return 16; case 3: return 22; case 4: return 31; case 5: return 7; } return 0; }\n";
    let post = pre
        .replace("y -= 11", "y -= 12")
        .replace("return 16", "return 17");
    let set = build("tables", pre, &post, &["-O2"]);
    let (op_index, op) = piece_named(&set, "op");
    let table = op
        .relocs
        .iter()
        .find_map(|r| match r.target {
            Link::Piece(p) if set.pieces[p].name.starts_with(".rodata") => Some(p),
            _ => None,
        })
        .expect("the jump table is carried");
    assert!(
        set.pieces[table]
            .relocs
            .iter()
            .all(|r| r.target == Link::Piece(op_index)),
        "jump table entries point into the new code"
    );
    let (_, w) = piece_named(&set, "w");
    assert!(
        w.relocs.iter().any(|r| matches!(r.target, Link::Piece(p) if set.pieces[p].symbol.as_deref().is_some_and(|s| s.starts_with("CSWTCH")))),
        "the CSWTCH table is copied: {:#?}",
        w.relocs
    );
}

#[test]
fn cold_part_is_carried_but_not_redirected() {
    let pre = "#include <stdio.h>\n#include <stdlib.h>\n__attribute__((cold, noinline)) void die(const char *w) { fprintf(stderr, \"fatal: %s\\n\", w); exit(1); }\nint deref(int *p) { if (!p) die(\"null\"); return *p + 1; }\n";
    let post = pre.replace("die(\"null\")", "die(\"null pointer\")");
    let set = build("cold", pre, &post, &["-O2"]);
    assert!(set.replacements.iter().any(|r| r.name == "deref"));
    assert!(set.replacements.iter().all(|r| !r.name.ends_with(".cold")));
    let (cold, _) = piece_named(&set, "deref.cold");
    let (_, deref) = piece_named(&set, "deref");
    assert!(deref.relocs.iter().any(|r| r.target == Link::Piece(cold)));
}

/// Kernel-style tables (`__ex_table`, `.orc_unwind_ip` + `.orc_unwind`) written with inline
/// assembly: entries follow their owning function; a patch carries only the changed one's.
const TABLES: &str = r#"
#define ENTRY(tag) asm volatile("1: nop\n" \
    ".pushsection __ex_table,\"a\"\n .long 1b - .\n .long 1b - .\n .long " #tag "\n .popsection\n" \
    ".pushsection .orc_unwind_ip,\"a\"\n .long 1b - .\n .popsection\n" \
    ".pushsection .orc_unwind,\"a\"\n .byte " #tag ",0,0,0,0,0\n .popsection\n")
int kept(int x) { ENTRY(7); return x + 1; }
int patched(int x) { ENTRY(9); return x * BODY; }
"#;

#[test]
fn tables_carry_the_entries_of_carried_functions_only() {
    let pre = TABLES.replace("BODY", "2");
    let post = TABLES.replace("BODY", "3");
    let set = build("kernel-tables", &pre, &post, &["-O2"]);
    assert_eq!(set.replacements.len(), 1, "{:#?}", set.replacements);
    let (code, _) = piece_named(&set, "patched");
    let table = |name: &str| {
        set.pieces
            .iter()
            .find(|p| p.table.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no {name} piece: {:#?}", set.pieces))
    };
    let ex = table("__ex_table");
    assert_eq!(ex.bytes.len(), 12, "one entry of 12 bytes");
    assert_eq!(ex.bytes[8], 9, "the entry of `patched`, not of `kept`");
    assert_eq!(ex.relocs.len(), 2);
    assert!(ex.relocs.iter().all(|r| r.target == Link::Piece(code)));
    let ip = table(".orc_unwind_ip");
    assert_eq!(ip.bytes.len(), 4);
    assert_eq!(ip.relocs[0].target, Link::Piece(code));
    let orc = table(".orc_unwind");
    assert_eq!(orc.bytes, vec![9, 0, 0, 0, 0, 0], "the parallel entry");
    assert!(orc.relocs.is_empty());
}
