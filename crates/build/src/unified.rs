//! Unified diffs: parsing them, and keeping `__LINE__` stable below each hunk.
//!
//! A hunk that adds or removes lines shifts the line numbers of everything below it, so an
//! `assert` (or any `__LINE__`) in an unrelated function further down would change that
//! function's code. Like upstream klp-build, hotsplice inserts a `#line N` directive after the
//! last changed line of each hunk, so the code below keeps its pre-patch line numbers.

/// One hunk of a file's diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// First line in the old file (1-based).
    pub old_start: usize,
    /// Lines of the old file covered.
    pub old_count: usize,
    /// First line in the new file (1-based).
    pub new_start: usize,
    /// Lines of the new file covered.
    pub new_count: usize,
    /// The hunk's lines: `' '`, `'-'` or `'+'`, and the text.
    pub lines: Vec<(char, String)>,
}

/// The diff of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// Path in the `---` line (without any timestamp).
    pub old_path: String,
    /// Path in the `+++` line.
    pub new_path: String,
    /// Its hunks, in order.
    pub hunks: Vec<Hunk>,
}

impl FileDiff {
    /// Whether the diff creates the file.
    pub fn creates(&self) -> bool {
        self.old_path == "/dev/null"
    }

    /// Whether the diff deletes the file.
    pub fn deletes(&self) -> bool {
        self.new_path == "/dev/null"
    }
}

/// What kind of file a diff touches, for deciding whether an incremental rebuild can stand
/// for the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// C/C++ source or header, or assembly: compiled, and tracked by the build's dependencies.
    Source,
    /// Documentation and change logs: no effect on the binary.
    Documentation,
    /// Anything else (configure scripts, Makefiles, module lists, build tooling): the build
    /// configuration itself.
    Build,
}

/// Classifies a file by its (tree-relative) path.
pub fn file_kind(path: &std::path::Path) -> FileKind {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    const SOURCE: &[&str] = &["c", "h", "cc", "cpp", "cxx", "hh", "hpp", "hxx", "inc", "s"];
    const DOCS: &[&str] = &[
        "md", "txt", "rst", "html", "xml", "pod", "texi", "1", "5", "8",
    ];
    if name == "cmakelists.txt" || name.starts_with("makefile") || name.starts_with("configure") {
        FileKind::Build
    } else if SOURCE.contains(&ext.as_str()) {
        FileKind::Source
    } else if DOCS.contains(&ext.as_str())
        || [
            "changes",
            "changelog",
            "news",
            "readme",
            "license",
            "authors",
        ]
        .iter()
        .any(|d| name.starts_with(d))
        || path.starts_with("man")
        || path.starts_with("doc")
    {
        FileKind::Documentation
    } else {
        FileKind::Build
    }
}

fn path_of(header: &str) -> String {
    // `+++ b/src/x.c\t2024-01-01 ...` → `b/src/x.c`
    header
        .split('\t')
        .next()
        .unwrap_or(header)
        .trim_end()
        .to_string()
}

fn range(text: &str) -> Option<(usize, usize)> {
    let mut parts = text.splitn(2, ',');
    let start = parts.next()?.parse().ok()?;
    let count = match parts.next() {
        Some(c) => c.parse().ok()?,
        None => 1,
    };
    Some((start, count))
}

/// Parses a unified diff. Lines outside file diffs (mail headers, `diff --git`, `index`)
/// are ignored. Returns an error message for a malformed hunk.
pub fn parse(text: &str) -> Result<Vec<FileDiff>, String> {
    let mut files: Vec<FileDiff> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(old) = line.strip_prefix("--- ")
            && let Some(new) = lines.get(i + 1).and_then(|l| l.strip_prefix("+++ "))
        {
            files.push(FileDiff {
                old_path: path_of(old),
                new_path: path_of(new),
                hunks: Vec::new(),
            });
            i += 2;
            continue;
        }
        if let Some(header) = line.strip_prefix("@@ ") {
            let Some(file) = files.last_mut() else {
                return Err(format!("line {}: hunk before any file header", i + 1));
            };
            let mut fields = header.split_whitespace();
            let old = fields
                .next()
                .and_then(|f| f.strip_prefix('-'))
                .and_then(range);
            let new = fields
                .next()
                .and_then(|f| f.strip_prefix('+'))
                .and_then(range);
            let (Some((old_start, old_count)), Some((new_start, new_count))) = (old, new) else {
                return Err(format!("line {}: malformed hunk header {line:?}", i + 1));
            };
            let mut hunk = Hunk {
                old_start,
                old_count,
                new_start,
                new_count,
                lines: Vec::new(),
            };
            let (mut old_left, mut new_left) = (old_count, new_count);
            i += 1;
            while (old_left > 0 || new_left > 0) && i < lines.len() {
                let body = lines[i];
                let (kind, rest) = match body.chars().next() {
                    Some(c @ (' ' | '-' | '+')) => (c, &body[1..]),
                    None => (' ', ""), // an empty context line whose space was stripped
                    Some('\\') => {
                        i += 1; // "\ No newline at end of file"
                        continue;
                    }
                    Some(_) => {
                        return Err(format!("line {}: unexpected line in hunk {body:?}", i + 1));
                    }
                };
                match kind {
                    ' ' => {
                        old_left = old_left.saturating_sub(1);
                        new_left = new_left.saturating_sub(1);
                    }
                    '-' => old_left = old_left.saturating_sub(1),
                    _ => new_left = new_left.saturating_sub(1),
                }
                hunk.lines.push((kind, rest.to_string()));
                i += 1;
            }
            if old_left > 0 || new_left > 0 {
                return Err(format!(
                    "hunk at line {old_start} of {} ends early",
                    file.new_path
                ));
            }
            file.hunks.push(hunk);
            continue;
        }
        i += 1;
    }
    if files.is_empty() {
        return Err("no file diffs found (expected `---`/`+++` headers)".to_string());
    }
    Ok(files)
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
    fn classifies_files() {
        use std::path::Path;
        assert_eq!(file_kind(Path::new("src/http/x.c")), FileKind::Source);
        assert_eq!(file_kind(Path::new("src/http/x.hh")), FileKind::Source);
        assert_eq!(file_kind(Path::new("auto/modules")), FileKind::Build);
        assert_eq!(file_kind(Path::new("Makefile")), FileKind::Build);
        assert_eq!(file_kind(Path::new("CMakeLists.txt")), FileKind::Build);
        assert_eq!(file_kind(Path::new("CHANGES.ru")), FileKind::Documentation);
        assert_eq!(
            file_kind(Path::new("docs/index.md")),
            FileKind::Documentation
        );
    }

    #[test]
    fn parses_files_and_hunks() {
        let files = parse(DIFF).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].new_path, "b/src/x.c");
        let h = &files[0].hunks[0];
        assert_eq!(
            (h.old_start, h.old_count, h.new_start, h.new_count),
            (2, 4, 2, 6)
        );
        assert_eq!(h.lines.len(), 7);
        assert!(parse("nothing here").is_err());
        assert!(parse("--- a\n+++ b\n@@ -1,3 +1,3 @@\n x\n").is_err());
    }

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
}
