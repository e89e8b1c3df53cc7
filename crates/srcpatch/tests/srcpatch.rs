//! `hotsplice-srcpatch` against GNU `patch` and `diff` on real trees: a diff applied then its
//! reverse restores the tree; the strip level is found; `#line` directives go into C files.

use std::path::{Path, PathBuf};
use std::process::Command;

use hotsplice_srcpatch::{ApplyError, apply, parse, render, reverse, run_patch, strip_level};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("hotsplice-srcpatch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// Every file under `root`, relative, with its contents.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// `diff -ruN a b` run in `dir`: a change, a new file, a deleted file, a file without a final
/// newline.
fn make_diff(dir: &Path) -> String {
    let old = [
        (
            "src/x.c",
            "int f(int x)\n{\n    return x;\n}\n\nint g(void)\n{\n    return __LINE__;\n}\n",
        ),
        ("src/gone.c", "int gone;\n"),
        ("README", "hello"),
    ];
    let new = [
        (
            "src/x.c",
            "int f(int x)\n{\n    if (x < 0)\n        return 0;\n    return x + 1;\n}\n\nint g(void)\n{\n    return __LINE__;\n}\n",
        ),
        ("src/new.c", "int fresh = 1;\n"),
        ("README", "hello, world\n"),
    ];
    write_tree(&dir.join("a"), &old);
    write_tree(&dir.join("b"), &new);
    let out = Command::new("diff")
        .args(["-ruN", "a", "b"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "diff: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_diff_then_its_reverse_restores_the_tree() {
    let dir = scratch("round-trip");
    let text = make_diff(&dir);
    let files = parse(&text).unwrap();
    assert_eq!(files.len(), 4, "{text}");
    assert_eq!(reverse(&reverse(&files)), files);
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    Command::new("cp")
        .args(["-a", "a/.", "tree/"])
        .current_dir(&dir)
        .status()
        .unwrap();
    let before = snapshot(&tree);

    let forward = dir.join("fix.patch");
    std::fs::write(&forward, render(&files)).unwrap();
    assert_eq!(run_patch(&tree, &forward).unwrap(), 1);
    assert_eq!(snapshot(&tree), snapshot(&dir.join("b")));

    let backward = dir.join("fix.reverse");
    std::fs::write(&backward, render(&reverse(&files))).unwrap();
    assert_eq!(run_patch(&tree, &backward).unwrap(), 1);
    assert_eq!(snapshot(&tree), before);
    // Applied already: the reverse does not apply twice.
    assert!(matches!(
        strip_level(&tree, &backward),
        Err(ApplyError::DoesNotApply { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn apply_finds_the_level_and_adds_line_directives() {
    let dir = scratch("apply");
    let text = make_diff(&dir);
    // Paths without the a/ b/ prefix: -p0.
    let text = text.replace(" a/", " ").replace(" b/", " ");
    let diff = dir.join("fix.patch");
    std::fs::write(&diff, &text).unwrap();
    let files = parse(&text).unwrap();
    let tree = dir.join("a");
    assert_eq!(strip_level(&tree, &diff).unwrap(), 0);
    let mut patched = apply(&tree, &diff, &files).unwrap();
    patched.sort();
    assert_eq!(
        patched,
        [
            PathBuf::from("README"),
            PathBuf::from("src/new.c"),
            PathBuf::from("src/x.c")
        ]
    );
    let x = std::fs::read_to_string(tree.join("src/x.c")).unwrap();
    // `}` of f was line 4 before the fix: the directive keeps it (and g's __LINE__) there.
    assert!(x.contains("    return x + 1;\n#line 4\n}\n"), "{x}");
    assert!(!tree.join("src/gone.c").exists());
    // A new file gets no directive.
    assert_eq!(
        std::fs::read_to_string(tree.join("src/new.c")).unwrap(),
        "int fresh = 1;\n"
    );

    let other = dir.join("other");
    write_tree(&other, &[("src/x.c", "something else\n")]);
    let e = apply(&other, &diff, &files).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{} does not apply to the source tree",
            diff.display()
        )),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
