//! The kernel backend's pure pieces on hand-written input: kallsyms text, the include graph,
//! the livepatch registration source (golden: `fixtures/kernel/registration/expected.c`,
//! `UPDATE_EXPECT=1` rewrites it) and a module's `.modinfo`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use hotsplice_kernel::includes::{FORCED, Graph, Include, parse};
use hotsplice_kernel::kallsyms::Kallsyms;
use hotsplice_kernel::klp::modinfo;
use hotsplice_kernel::module::{KlpCallback, KlpFunction, registration_source};
use hotsplice_objdiff::patchset::HookKind;

// --- kallsyms -------------------------------------------------------------------------------

#[test]
fn kallsyms_keeps_vmlinux_symbols_in_order() {
    let k = Kallsyms::parse(
        "ffffffff81000000 T _text\n\
         ffffffff81000100 t show\n\
         ffffffffc0001000 t show\t[ext4]\n\
         ffffffff81000200 t show\n\
         ffffffff81000300 T startup_64\r\n\
         not-hex T broken\n\
         ffffffff81000400\n",
    );
    let names: Vec<(&str, u64)> = k
        .vmlinux
        .iter()
        .map(|s| (s.name.as_str(), s.address))
        .collect();
    assert_eq!(
        names,
        [
            ("_text", 0xffffffff81000000),
            ("show", 0xffffffff81000100),
            ("show", 0xffffffff81000200),
            ("startup_64", 0xffffffff81000300),
        ]
    );
    assert!(k.vmlinux.iter().all(|s| s.module.is_none()));
    assert_eq!(k.vmlinux[3].kind, 'T');
    // sympos counts vmlinux's symbols only: the module's `show` is not one of them.
    assert_eq!(k.sympos("show", 0xffffffff81000200), Some(2));
    assert_eq!(k.sympos("show", 0xffffffffc0001000), None);
    assert_eq!(k.sympos("startup_64", 0xffffffff81000300), Some(0));
    assert_eq!(k.sympos("startup_64", 0xffffffff81000301), None);
    assert_eq!(k.sympos("missing", 0), None);
}

#[test]
fn kallsyms_slide_is_from_a_unique_text() {
    let k = Kallsyms::parse("ffffffff8a000000 T _text\n");
    assert_eq!(k.slide(0xffffffff81000000), Some(0x900_0000));
    assert_eq!(
        Kallsyms::parse("ffffffff81000000 T startup_64\n").slide(0),
        None
    );
    let twice = Kallsyms::parse("ffffffff81000000 T _text\nffffffff81000000 T _text\n");
    assert_eq!(twice.slide(0), None);
}

#[test]
fn kallsyms_read_without_privilege_has_no_addresses() {
    // A reader without CAP_SYSLOG sees every address as 0.
    let k = Kallsyms::parse("0000000000000000 T _text\n0000000000000000 t show\n");
    assert!(!k.has_addresses());
    assert_eq!(k.vmlinux.len(), 2);
    assert!(Kallsyms::parse("ffffffff81000000 T _text\n").has_addresses());
    assert!(!Kallsyms::parse("").has_addresses());
}

// --- includes -------------------------------------------------------------------------------

fn names(text: &str) -> Vec<(String, bool)> {
    parse(text)
        .into_iter()
        .map(|i| (i.name, i.quoted))
        .collect()
}

#[test]
fn include_directives_in_their_spellings() {
    assert_eq!(
        names(
            "#include <linux/mm.h>\n\
             \t#  include \"internal.h\" // trailing comment\n\
             #ifdef CONFIG_X\n#include <asm/x.h>\n#endif\n\
             #include TRACE_INCLUDE(TRACE_INCLUDE_FILE)\n\
             #include \"unterminated.h\n\
             // #include <commented.h>\n\
             #define include <not.h>\n\
             int include;\n"
        ),
        [
            ("linux/mm.h".to_string(), false),
            ("internal.h".to_string(), true),
            ("asm/x.h".to_string(), false),
        ]
    );
}

fn graph(files: &[(&str, &str)], exists: &[&str]) -> Graph {
    let parsed: Vec<(&str, Vec<Include>)> =
        files.iter().map(|(f, text)| (*f, parse(text))).collect();
    let known: HashSet<&str> = exists
        .iter()
        .copied()
        .chain(files.iter().map(|(f, _)| *f))
        .collect();
    Graph::build(parsed.iter().map(|(f, i)| (*f, i.as_slice())), &|p| {
        known.contains(p)
    })
}

fn includers(g: &Graph, header: &str) -> Vec<String> {
    g.includers(header).into_iter().collect()
}

#[test]
fn quoted_names_are_local_first_angled_names_search_the_include_path() {
    let g = graph(
        &[
            ("drivers/x/a.c", "#include \"types.h\"\n"),
            ("drivers/x/b.c", "#include <types.h>\n"),
            ("drivers/x/c.c", "#include <local_only.h>\n"),
            ("drivers/y/d.c", "#include \"../x/types.h\"\n"),
            ("arch/x86/kernel/e.c", "#include <asm/page.h>\n"),
        ],
        &[
            "drivers/x/types.h",
            "include/types.h",
            "drivers/x/local_only.h",
            "arch/x86/include/asm/page.h",
        ],
    );
    assert_eq!(
        includers(&g, "drivers/x/types.h"),
        ["drivers/x/a.c", "drivers/y/d.c"]
    );
    assert_eq!(includers(&g, "include/types.h"), ["drivers/x/b.c"]);
    assert_eq!(includers(&g, "drivers/x/local_only.h"), ["drivers/x/c.c"]);
    assert_eq!(
        includers(&g, "arch/x86/include/asm/page.h"),
        ["arch/x86/kernel/e.c"]
    );
    // A header nobody includes, or that does not exist, reaches no unit.
    assert!(includers(&g, "include/unused.h").is_empty());
}

#[test]
fn include_cycles_end_and_headers_are_not_units() {
    let g = graph(
        &[
            ("include/linux/a.h", "#include <linux/b.h>\n"),
            ("include/linux/b.h", "#include <linux/a.h>\n"),
            ("kernel/x.c", "#include <linux/a.h>\n"),
            ("kernel/y.c", "#include <linux/b.h>\n"),
        ],
        &[],
    );
    assert_eq!(
        includers(&g, "include/linux/a.h"),
        ["kernel/x.c", "kernel/y.c"]
    );
    assert_eq!(
        includers(&g, "include/linux/b.h"),
        ["kernel/x.c", "kernel/y.c"]
    );
    let again = Graph::from_text(&g.to_text());
    assert_eq!(again.to_text(), g.to_text());
    assert_eq!(
        includers(&again, "include/linux/b.h"),
        ["kernel/x.c", "kernel/y.c"]
    );
}

#[test]
fn forced_headers_name_what_kbuild_includes_everywhere() {
    assert!(FORCED.contains(&"include/linux/kconfig.h"));
    assert!(FORCED.iter().all(|h| h.starts_with("include/linux/")));
}

// --- registration source --------------------------------------------------------------------

#[test]
fn registration_source_is_golden() {
    let function = |old: &str, sympos, new: &str, module: Option<&str>| KlpFunction {
        old_name: old.into(),
        sympos,
        new_symbol: new.into(),
        object: "fs/proc/meminfo.o".into(),
        module: module.map(str::to_string),
    };
    let callback = |kind, symbol: &str, module: Option<&str>| KlpCallback {
        kind,
        symbol: symbol.into(),
        module: module.map(str::to_string),
    };
    let source = registration_source(
        &[
            function("meminfo_proc_show", 0, "__hsp_new_0", None),
            function("show", 2, "__hsp_new_1", None),
            function("ext4_fill_super", 0, "__hsp_new_2", Some("ext4")),
        ],
        &[
            callback(HookKind::PreApply, "__hsp_cb_0", None),
            callback(HookKind::PreApply, "__hsp_cb_1", None),
            callback(HookKind::PostUndo, "__hsp_cb_2", Some("ext4")),
        ],
        "hsp_meminfo",
    );
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/kernel/registration/expected.c");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &source).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == source,
        "differs from {}:\n--- expected\n{expected}--- actual\n{source}",
        path.display()
    );
}

// --- .modinfo -------------------------------------------------------------------------------

#[test]
fn modinfo_of_an_object_gcc_wrote() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-modinfo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.c"),
        "__attribute__((section(\".modinfo\"), used)) static const char a[] = \"livepatch=Y\";\n\
         __attribute__((section(\".modinfo\"), used)) static const char b[] = \"vermagic=6.1.0-28-amd64 SMP mod_unload\";\n",
    )
    .unwrap();
    let status = Command::new("gcc")
        .args(["-c", "-O2"])
        .arg(dir.join("m.c"))
        .arg("-o")
        .arg(dir.join("m.o"))
        .status()
        .expect("gcc must be installed (scripts/setup installs it)");
    assert!(status.success());
    let mut info = modinfo(&std::fs::read(dir.join("m.o")).unwrap()).unwrap();
    info.sort(); // gcc lays the strings out in its own order
    assert_eq!(
        info,
        [
            ("livepatch".to_string(), "Y".to_string()),
            (
                "vermagic".to_string(),
                "6.1.0-28-amd64 SMP mod_unload".to_string()
            ),
        ]
    );
    assert!(modinfo(b"garbage").is_err());
}
