//! Keeping `__LINE__` stable below each hunk.
//!
//! A hunk that adds or removes lines shifts the line numbers of everything below it, so an
//! `assert` (or any `__LINE__`) in an unrelated function further down would change that
//! function's code. Like upstream klp-build, hotsplice inserts a `#line N` directive after the
//! last changed line of each hunk, so the code below keeps its pre-patch line numbers.

use std::path::Path;

use crate::Hunk;

/// Whether `path` is C or C++ (source or header), where `#line` directives may be inserted.
pub fn is_c_like(path: &Path) -> bool {
    [
        "c", "h", "cc", "cpp", "cxx", "hh", "hpp", "hxx", "inc", "inl", "ipp",
    ]
    .iter()
    .any(|e| path.extension().is_some_and(|x| x == *e))
        || path.extension().is_some_and(|x| x == "C" || x == "H")
}

/// Whether a `#line` directive may follow `line` (the previous line of the file).
fn boundary_after(line: &str) -> bool {
    let t = line.trim_end();
    if t.ends_with('\\') {
        return false;
    }
    let t = t.trim_start();
    t.is_empty()
        || t.starts_with('#')
        || t.ends_with(';')
        || t.ends_with('{')
        || t.ends_with('}')
        || t.ends_with("*/")
        || (t.ends_with(':') && !t.contains('?'))
}

/// The post-patch file `content` with a `#line` directive after each line-shifting hunk, so
/// the lines below keep their pre-patch numbers. `hunks` are the file's hunks from [`parse`].
pub fn with_line_directives(content: &str, hunks: &[Hunk]) -> String {
    let mut lines: Vec<String> = content.lines().map(str::to_string).collect();
    let trailing_newline = content.ends_with('\n');
    // Insertion points: (index in the new file before which to insert, old line number of
    // the line at that index). Computed per hunk, applied bottom-up.
    let mut inserts: Vec<(usize, usize)> = Vec::new();
    for hunk in hunks {
        if hunk.new_count == hunk.old_count {
            continue;
        }
        // Walk the hunk to the line after its last change.
        let (mut old_line, mut new_line) = (hunk.old_start, hunk.new_start);
        let (mut after_old, mut after_new) = (old_line, new_line);
        for (kind, _) in &hunk.lines {
            match kind {
                ' ' => {
                    old_line += 1;
                    new_line += 1;
                }
                '-' => {
                    old_line += 1;
                    (after_old, after_new) = (old_line, new_line);
                }
                _ => {
                    new_line += 1;
                    (after_old, after_new) = (old_line, new_line);
                }
            }
        }
        // `after_new` is the 1-based new line number of the first line after the last change,
        // `after_old` its old number. Move down to a safe boundary (at most 60 lines).
        let (mut at_new, mut at_old) = (after_new, after_old);
        let mut placed = false;
        for _ in 0..60 {
            if at_new < 2 || at_new > lines.len() + 1 {
                break;
            }
            if boundary_after(&lines[at_new - 2]) {
                placed = true;
                break;
            }
            at_new += 1;
            at_old += 1;
        }
        if placed && at_new <= lines.len() {
            inserts.push((at_new - 1, at_old));
        }
    }
    for (index, old_number) in inserts.into_iter().rev() {
        lines.insert(index, format!("#line {old_number}"));
    }
    let mut out = lines.join("\n");
    if trailing_newline {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    const DIFF: &str = "\
--- a/src/x.c\t2024-01-01
+++ b/src/x.c\t2024-01-02
@@ -2,4 +2,6 @@ int f(int x)
 {
-    return x;
+    if (x < 0)
+        return 0;
+    return x + 1;
 }
 
 int g(void)
";

    #[test]
    fn line_directive_restores_numbering_below_the_hunk() {
        let post = "int f(int x)\n{\n    if (x < 0)\n        return 0;\n    return x + 1;\n}\n\nint g(void)\n{\n    return __LINE__;\n}\n";
        let files = parse(DIFF).unwrap();
        let out = with_line_directives(post, &files[0].hunks);
        // The old file had `}` of f at line 4: the next line after the change keeps it.
        let lines: Vec<&str> = out.lines().collect();
        let directive = lines.iter().position(|l| l.starts_with("#line")).unwrap();
        assert_eq!(lines[directive], "#line 4");
        assert_eq!(lines[directive - 1], "    return x + 1;");
        assert_eq!(lines[directive + 1], "}");
    }

    #[test]
    fn c_and_cpp_files_take_directives() {
        assert!(is_c_like(Path::new("src/x.c")));
        assert!(is_c_like(Path::new("include/x.hpp")));
        assert!(is_c_like(Path::new("X.C")));
        assert!(!is_c_like(Path::new("arch/x86/entry.S")));
        assert!(!is_c_like(Path::new("Makefile")));
    }
}
