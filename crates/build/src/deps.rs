//! Which files a compile reads: the object's dependencies, from the recorded compile run
//! again with `-M` (preprocessing only) in the build tree.
//!
//! Needed when a diff changes a header (or another file included by C code): the objects that
//! include it must be recompiled even when the build does not track dependencies (autotools'
//! `--disable-dependency-tracking`, sub-makes built once).

use std::path::Path;
use std::process::Command;

use crate::record::Record;
use crate::tree;

/// Options dropped from a compile to turn it into a dependency listing.
fn dropped(arg: &str) -> (bool, bool) {
    // (drop this argument, and the next)
    match arg {
        "-c" | "-MD" | "-MMD" | "-MP" | "-MG" | "-E" | "-S" => (true, false),
        "-o" | "-MF" | "-MT" | "-MQ" => (true, true),
        _ if arg.starts_with("-Wp,-MD")
            || arg.starts_with("-Wp,-MMD")
            || arg.starts_with("-save-temps")
            || arg.starts_with("-flto")
            || arg.starts_with("-fdump")
            || arg.starts_with("-MF")
            || arg.starts_with("-MT")
            || arg.starts_with("-MQ")
            || (arg.starts_with("-o") && arg.len() > 2) =>
        {
            (true, false)
        }
        _ => (false, false),
    }
}

/// The arguments listing the dependencies of a recorded compile on standard output.
pub fn dependency_args(arguments: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for arg in arguments {
        if skip_next {
            skip_next = false;
            continue;
        }
        let (drop, next) = dropped(arg);
        skip_next = next;
        if !drop {
            out.push(arg.clone());
        }
    }
    out.push("-M".to_string());
    out
}

/// Parses make-rule output of `-M`: the prerequisites, unescaped.
pub fn parse_rule(text: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        // The target ends at the first `: ` (or a colon at the end).
        let Some(colon) = line
            .char_indices()
            .find(|&(i, c)| {
                c == ':' && line[i + 1..].chars().next().is_none_or(char::is_whitespace)
            })
            .map(|(i, _)| i)
        else {
            continue;
        };
        let mut current = String::new();
        let mut chars = line[colon + 1..].chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek().is_some_and(|n| *n == ' ' || *n == '#') => {
                    current.push(chars.next().unwrap_or(' '));
                }
                '$' if chars.peek() == Some(&'$') => {
                    chars.next();
                    current.push('$');
                }
                c if c.is_whitespace() => {
                    if !current.is_empty() {
                        out.push(std::mem::take(&mut current));
                    }
                }
                c => current.push(c),
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

/// The files of the tree at `root` that the compile `record` reads (tree-relative, sorted),
/// or what went wrong.
pub fn dependencies(
    record: &Record,
    root: &Path,
    env: &[(String, String)],
) -> Result<Vec<String>, String> {
    let compiler = if record.compiler.is_empty() {
        "gcc"
    } else {
        record.compiler.as_str()
    };
    let out = Command::new(compiler)
        .args(dependency_args(&record.arguments))
        .current_dir(&record.directory)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|e| format!("cannot run {compiler}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n"));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut deps: Vec<String> = parse_rule(&text)
        .iter()
        .filter_map(|d| tree::relative(root, &record.directory, d))
        .collect();
    deps.sort();
    deps.dedup();
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_a_compile_into_a_dependency_listing() {
        let args: Vec<String> =
            "-O2 -MD -MF .deps/a.Tpo -c -o a.o ../src/a.c -Wp,-MD,x.d -ffunction-sections"
                .split_whitespace()
                .map(str::to_string)
                .collect();
        assert_eq!(
            dependency_args(&args).join(" "),
            "-O2 ../src/a.c -ffunction-sections -M"
        );
    }

    #[test]
    fn parses_make_rules() {
        let text = "a.o: ../src/a.c /usr/include/stdio.h \\\n ../src/my\\ header.h inc/x$$.h\n";
        assert_eq!(
            parse_rule(text),
            [
                "../src/a.c",
                "/usr/include/stdio.h",
                "../src/my header.h",
                "inc/x$.h"
            ]
        );
    }
}
