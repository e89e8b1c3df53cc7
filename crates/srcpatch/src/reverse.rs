//! The reverse of a diff: what undoes it, as `patch -R` would apply it.

use crate::{FileDiff, Hunk};

/// The diffs that undo `files`: old and new swapped in every header, range and line. Within
/// each run of changed lines the removals come first, as `diff` writes them, so reversing a
/// diff `diff` wrote twice gives it back unchanged.
pub fn reverse(files: &[FileDiff]) -> Vec<FileDiff> {
    files
        .iter()
        .map(|file| FileDiff {
            old_path: file.new_path.clone(),
            new_path: file.old_path.clone(),
            old_stamp: file.new_stamp.clone(),
            new_stamp: file.old_stamp.clone(),
            hunks: file.hunks.iter().map(reverse_hunk).collect(),
        })
        .collect()
}

fn reverse_hunk(hunk: &Hunk) -> Hunk {
    let mut lines = Vec::with_capacity(hunk.lines.len());
    // A run of changed lines, collected until the next context line.
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for (kind, text) in &hunk.lines {
        match kind {
            '+' => removed.push(('-', text.clone())),
            '-' => added.push(('+', text.clone())),
            _ => {
                lines.append(&mut removed);
                lines.append(&mut added);
                lines.push((*kind, text.clone()));
            }
        }
    }
    lines.append(&mut removed);
    lines.append(&mut added);
    Hunk {
        old_start: hunk.new_start,
        old_count: hunk.new_count,
        new_start: hunk.old_start,
        new_count: hunk.old_count,
        lines,
        old_no_newline: hunk.new_no_newline,
        new_no_newline: hunk.old_no_newline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, render};

    #[test]
    fn swaps_sides() {
        let d = "--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,4 @@ f\n a\n-b\n+c\n+d\n e\n";
        let r = render(&reverse(&parse(d).unwrap()));
        assert_eq!(
            r,
            "--- b/x.c\n+++ a/x.c\n@@ -1,4 +1,3 @@\n a\n-c\n-d\n+b\n e\n"
        );
    }

    #[test]
    fn a_created_file_is_deleted_by_the_reverse() {
        let d = "--- /dev/null\n+++ b/new.c\n@@ -0,0 +1,2 @@\n+int x;\n+int y;\n";
        let r = reverse(&parse(d).unwrap());
        assert!(r[0].deletes() && !r[0].creates());
        assert_eq!(r[0].old_path, "b/new.c");
        assert_eq!(
            render(&r),
            "--- b/new.c\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-int x;\n-int y;\n"
        );
    }

    #[test]
    fn reversing_twice_gives_the_diff_back() {
        let d = "\
--- a/src/x.c
+++ b/src/x.c
@@ -2,5 +2,6 @@
 {
-    return x;
-    /* old */
+    if (x < 0)
+        return 0;
+    return x + 1;
 }
 
@@ -20,2 +21,2 @@
 int g(void)
-{ return 1; }
+{ return 2; }
\\ No newline at end of file
--- a/README
+++ b/README
@@ -1,1 +1,1 @@
-old
\\ No newline at end of file
+new
";
        let files = parse(d).unwrap();
        assert_eq!(render(&files), d);
        let once = reverse(&files);
        assert_ne!(once, files);
        assert!(once[1].hunks[0].new_no_newline && !once[1].hunks[0].old_no_newline);
        assert_eq!(reverse(&once), files);
        assert_eq!(render(&reverse(&once)), d);
    }
}
