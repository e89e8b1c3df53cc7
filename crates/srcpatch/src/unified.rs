//! Unified diffs as data: [`parse`] text into [`FileDiff`]s, [`render`] them back, and
//! [`file_kind`] of the paths they touch.

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
    /// The old file ends inside this hunk without a newline (`\ No newline at end of file`
    /// after its last `' '` or `'-'` line).
    pub old_no_newline: bool,
    /// The new file ends inside this hunk without a newline (the marker after its last `' '`
    /// or `'+'` line).
    pub new_no_newline: bool,
}

/// The diff of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// Path in the `---` line (without any timestamp).
    pub old_path: String,
    /// Path in the `+++` line.
    pub new_path: String,
    /// What follows the `---` path after a tab (`diff`'s timestamp), kept so [`render`]
    /// writes it again: `patch` takes an epoch timestamp for a file that does not exist.
    pub old_stamp: Option<String>,
    /// What follows the `+++` path after a tab.
    pub new_stamp: Option<String>,
    /// Its hunks, in order.
    pub hunks: Vec<Hunk>,
}

impl FileDiff {
    /// Whether the diff creates the file: its old side is `/dev/null`, or has the epoch for a
    /// timestamp (`diff -N`), as `patch` reads it.
    pub fn creates(&self) -> bool {
        self.old_path == "/dev/null" || self.old_stamp.as_deref().is_some_and(is_epoch)
    }

    /// Whether the diff deletes the file (its new side, likewise).
    pub fn deletes(&self) -> bool {
        self.new_path == "/dev/null" || self.new_stamp.as_deref().is_some_and(is_epoch)
    }
}

/// Whether a header's timestamp (`1970-01-01 01:00:00.000000000 +0100`) is the Unix epoch,
/// which `diff -N` writes for a file that does not exist.
fn is_epoch(stamp: &str) -> bool {
    let mut fields = stamp.split_whitespace();
    let (Some(date), Some(time), Some(zone)) = (fields.next(), fields.next(), fields.next()) else {
        return false;
    };
    let day: i64 = match date {
        "1970-01-01" => 0,
        "1969-12-31" => -1,
        _ => return false,
    };
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    if fraction.chars().any(|c| c != '0') {
        return false;
    }
    let hms: Vec<i64> = clock.split(':').filter_map(|f| f.parse().ok()).collect();
    let [h, m, sec] = hms[..] else {
        return false;
    };
    let (sign, digits) = match zone.split_at_checked(1) {
        Some(("+", d)) => (1, d),
        Some(("-", d)) => (-1, d),
        _ => return false,
    };
    let (Some(zh), Some(zm)) = (
        digits.get(..2).and_then(|d| d.parse::<i64>().ok()),
        digits.get(2..4).and_then(|d| d.parse::<i64>().ok()),
    ) else {
        return false;
    };
    day * 86400 + h * 3600 + m * 60 + sec - sign * (zh * 3600 + zm * 60) == 0
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

/// `+++ b/src/x.c\t2024-01-01 ...` → (`b/src/x.c`, `2024-01-01 ...`).
fn path_of(header: &str) -> (String, Option<String>) {
    match header.split_once('\t') {
        Some((path, stamp)) => (path.trim_end().to_string(), Some(stamp.to_string())),
        None => (header.trim_end().to_string(), None),
    }
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

/// Why a text is not a usable unified diff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A `@@` line before any `---`/`+++` pair.
    #[error("line {line}: hunk before any file header")]
    HunkBeforeHeader {
        /// Its line number (1-based).
        line: usize,
    },
    /// A `@@` line whose ranges do not parse.
    #[error("line {line}: malformed hunk header {text:?}")]
    HunkHeader {
        /// Its line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A line inside a hunk that is neither context, removal, addition nor a `\` marker.
    #[error("line {line}: unexpected line in hunk {text:?}")]
    UnexpectedLine {
        /// Its line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// The text ends before a hunk has all the lines its header counts.
    #[error("hunk at line {old_start} of {path} ends early")]
    HunkEndsEarly {
        /// The hunk's first old line.
        old_start: usize,
        /// The file's `+++` path.
        path: String,
    },
    /// No `---`/`+++` pair at all.
    #[error("no file diffs found (expected `---`/`+++` headers)")]
    NoFiles,
}

/// Parses a unified diff. Lines outside file diffs (mail headers, `diff --git`, `index`, a
/// hunk header's function context) are ignored; `\ No newline at end of file` markers are
/// kept in [`Hunk::old_no_newline`] and [`Hunk::new_no_newline`].
pub fn parse(text: &str) -> Result<Vec<FileDiff>, ParseError> {
    let mut files: Vec<FileDiff> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(old) = line.strip_prefix("--- ")
            && let Some(new) = lines.get(i + 1).and_then(|l| l.strip_prefix("+++ "))
        {
            let ((old_path, old_stamp), (new_path, new_stamp)) = (path_of(old), path_of(new));
            files.push(FileDiff {
                old_path,
                new_path,
                old_stamp,
                new_stamp,
                hunks: Vec::new(),
            });
            i += 2;
            continue;
        }
        if let Some(header) = line.strip_prefix("@@ ") {
            let Some(file) = files.last_mut() else {
                return Err(ParseError::HunkBeforeHeader { line: i + 1 });
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
                return Err(ParseError::HunkHeader {
                    line: i + 1,
                    text: line.to_string(),
                });
            };
            let mut hunk = Hunk {
                old_start,
                old_count,
                new_start,
                new_count,
                lines: Vec::new(),
                old_no_newline: false,
                new_no_newline: false,
            };
            let (mut old_left, mut new_left) = (old_count, new_count);
            i += 1;
            loop {
                // "\ No newline at end of file": about the line before it. It may follow the
                // hunk's last line, so it is looked for before the counts end the hunk.
                if lines.get(i).is_some_and(|l| l.starts_with('\\')) {
                    match hunk.lines.last().map(|(kind, _)| *kind) {
                        Some('-') => hunk.old_no_newline = true,
                        Some('+') => hunk.new_no_newline = true,
                        Some(_) => (hunk.old_no_newline, hunk.new_no_newline) = (true, true),
                        None => {}
                    }
                    i += 1;
                    continue;
                }
                if (old_left == 0 && new_left == 0) || i >= lines.len() {
                    break;
                }
                let body = lines[i];
                let (kind, rest) = match body.chars().next() {
                    Some(c @ (' ' | '-' | '+')) => (c, &body[1..]),
                    None => (' ', ""), // an empty context line whose space was stripped
                    Some(_) => {
                        return Err(ParseError::UnexpectedLine {
                            line: i + 1,
                            text: body.to_string(),
                        });
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
                return Err(ParseError::HunkEndsEarly {
                    old_start,
                    path: file.new_path.clone(),
                });
            }
            file.hunks.push(hunk);
            continue;
        }
        i += 1;
    }
    if files.is_empty() {
        return Err(ParseError::NoFiles);
    }
    Ok(files)
}

/// The text of `files` as a unified diff that [`parse`] reads back equal and `patch` applies:
/// hunk headers without function context, every range with its count.
pub fn render(files: &[FileDiff]) -> String {
    let mut out = String::new();
    for file in files {
        let header = |path: &str, stamp: &Option<String>| match stamp {
            Some(stamp) => format!("{path}\t{stamp}"),
            None => path.to_string(),
        };
        out.push_str(&format!(
            "--- {}\n+++ {}\n",
            header(&file.old_path, &file.old_stamp),
            header(&file.new_path, &file.new_stamp)
        ));
        for hunk in &file.hunks {
            out.push_str(&format!(
                "@@ -{},{} +{},{} @@\n",
                hunk.old_start, hunk.old_count, hunk.new_start, hunk.new_count
            ));
            let last_old = hunk.lines.iter().rposition(|(k, _)| *k != '+');
            let last_new = hunk.lines.iter().rposition(|(k, _)| *k != '-');
            for (index, (kind, text)) in hunk.lines.iter().enumerate() {
                out.push(*kind);
                out.push_str(text);
                out.push('\n');
                if (hunk.old_no_newline && last_old == Some(index))
                    || (hunk.new_no_newline && last_new == Some(index))
                {
                    out.push_str("\\ No newline at end of file\n");
                }
            }
        }
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
    fn malformed_diffs_say_where() {
        let e = |text: &str| parse(text).unwrap_err().to_string();
        assert_eq!(
            e("nothing here"),
            "no file diffs found (expected `---`/`+++` headers)"
        );
        assert_eq!(
            e("--- a\n+++ b\n@@ -1,3 +1,3 @@\n x\n"),
            "hunk at line 1 of b ends early"
        );
        assert_eq!(
            e("@@ -1 +1 @@\n-a\n+b\n"),
            "line 1: hunk before any file header"
        );
        assert_eq!(
            e("--- a\n+++ b\n@@ -x +1 @@\n"),
            "line 3: malformed hunk header \"@@ -x +1 @@\""
        );
        assert_eq!(
            e("--- a\n+++ b\n@@ -1,2 +1,2 @@\n a\n*b\n"),
            "line 5: unexpected line in hunk \"*b\""
        );
    }

    #[test]
    fn keeps_missing_newline_markers_and_skips_mail_headers() {
        let text = "From: someone\nSubject: [PATCH] fix\n\ndiff --git a/x b/x\nindex 1..2 100644\n\
                    --- a/x\n+++ b/x\n@@ -1,2 +1,2 @@ ctx\n a\n-b\n\\ No newline at end of file\n+c\n\
                    -- \n2.39.2\n";
        let files = parse(text).unwrap();
        assert_eq!(files.len(), 1);
        let h = &files[0].hunks[0];
        assert!(h.old_no_newline && !h.new_no_newline);
        assert_eq!(
            h.lines,
            [(' ', "a".into()), ('-', "b".into()), ('+', "c".into())]
        );
        assert_eq!(
            render(&files),
            "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n"
        );
        // A final context line without a newline: both files end there.
        let both =
            parse("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n+A\n z\n\\ No newline at end of file\n")
                .unwrap();
        assert!(both[0].hunks[0].old_no_newline && both[0].hunks[0].new_no_newline);
        assert!(render(&both).ends_with(" z\n\\ No newline at end of file\n"));
    }

    #[test]
    fn an_epoch_timestamp_creates_or_deletes() {
        let text = "--- a/old.c\t2026-01-02 10:00:00.000000000 +0000\n\
                    +++ b/old.c\t1970-01-01 01:00:00.000000000 +0100\n@@ -1,1 +0,0 @@\n-x\n\
                    --- a/new.c\t1969-12-31 19:00:00.000000000 -0500\n\
                    +++ b/new.c\t2026-01-02 10:00:00.000000000 +0000\n@@ -0,0 +1,1 @@\n+y\n";
        let files = parse(text).unwrap();
        assert!(files[0].deletes() && !files[0].creates());
        assert!(files[1].creates() && !files[1].deletes());
        assert_eq!(
            files[0].new_stamp.as_deref(),
            Some("1970-01-01 01:00:00.000000000 +0100")
        );
        assert_eq!(render(&files), text);
        assert!(!is_epoch("1970-01-01 00:00:01.000000000 +0000"));
        assert!(!is_epoch("1970-01-01 00:00:00.5 +0000"));
        assert!(!is_epoch("2026-01-02 10:00:00"));
    }
}
