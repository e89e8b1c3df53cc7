//! Which translation units a changed header reaches: an `#include` graph of the kernel tree.
//!
//! [`parse`] reads the `#include` directives of one file; [`Graph`] resolves them the way
//! kbuild's include path does for x86-64 (`"x.h"` next to the including file first, then
//! `include/`, `arch/x86/include/`, their `uapi/` and `generated/` directories) and answers
//! [`Graph::includers`]: every `.c` file that includes a header directly or through other
//! headers (or through a `.c` file it `#include`s, as `kernel/sched/build_policy.c` does).
//!
//! The scan over-approximates on purpose — an `#include` inside `#ifdef` counts — since a
//! translation unit wrongly taken only costs a compile whose diff is empty, while one missed
//! would leave a caller of a changed `static inline` unpatched. What it cannot see: headers
//! included through a macro (`#include TRACE_INCLUDE(...)`), and those forced on every unit
//! from the command line (`include/linux/kconfig.h`, `compiler_types.h`), which
//! [`FORCED`] names so the build refuses them.
//!
//! Pure: text in, paths out. The tree walk and its cache are in [`crate::kbuild`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// Headers kbuild passes to every compile with `-include`: a change reaches every unit.
pub const FORCED: &[&str] = &[
    "include/linux/kconfig.h",
    "include/linux/compiler_types.h",
    "include/linux/compiler-gcc.h",
    "include/linux/compiler_attributes.h",
];

/// The directories `<...>` includes are looked up in (x86-64).
const SEARCH: &[&str] = &[
    "include",
    "arch/x86/include",
    "arch/x86/include/generated",
    "include/uapi",
    "arch/x86/include/uapi",
    "arch/x86/include/generated/uapi",
    "include/generated/uapi",
];

/// One `#include` directive: the name and whether it was `"quoted"` (else `<angled>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The name between the delimiters.
    pub name: String,
    /// `"x.h"` (searched next to the including file first).
    pub quoted: bool,
}

/// The `#include` directives of a C source or header.
pub fn parse(text: &str) -> Vec<Include> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix("include") else {
            continue;
        };
        let rest = rest.trim_start();
        let (quoted, close) = match rest.chars().next() {
            Some('"') => (true, '"'),
            Some('<') => (false, '>'),
            _ => continue,
        };
        if let Some(end) = rest[1..].find(close) {
            out.push(Include {
                name: rest[1..1 + end].to_string(),
                quoted,
            });
        }
    }
    out
}

/// The include graph of a tree: for each file, the files it includes (tree-relative paths).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Included file → the files including it.
    included_by: HashMap<String, Vec<String>>,
}

/// Normalises `a/b/../c` to `a/c` (no leading `/`).
fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl Graph {
    /// Builds the graph from every file's directives; `exists` says whether a tree-relative
    /// path is a file of the tree.
    pub fn build<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a [Include])>,
        exists: &dyn Fn(&str) -> bool,
    ) -> Graph {
        let mut included_by: HashMap<String, Vec<String>> = HashMap::new();
        for (file, includes) in files {
            let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
            for inc in includes {
                let mut candidates = Vec::new();
                if inc.quoted {
                    candidates.push(normalise(&format!("{dir}/{}", inc.name)));
                }
                candidates.extend(
                    SEARCH
                        .iter()
                        .map(|s| normalise(&format!("{s}/{}", inc.name))),
                );
                if !inc.quoted {
                    // kbuild adds `-I $(src)` for some directories: an angled name may be local.
                    candidates.push(normalise(&format!("{dir}/{}", inc.name)));
                }
                if let Some(target) = candidates.into_iter().find(|c| exists(c)) {
                    included_by
                        .entry(target)
                        .or_default()
                        .push(file.to_string());
                }
            }
        }
        Graph { included_by }
    }

    /// Every `.c` file that includes `header`, directly or through other files.
    pub fn includers(&self, header: &str) -> BTreeSet<String> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([header]);
        let mut units = BTreeSet::new();
        while let Some(file) = queue.pop_front() {
            for by in self.included_by.get(file).into_iter().flatten() {
                if seen.insert(by.as_str()) {
                    if by.ends_with(".c") {
                        units.insert(by.clone());
                    }
                    queue.push_back(by.as_str());
                }
            }
        }
        units
    }

    /// The graph as lines `included<TAB>includer` (for a cache file).
    pub fn to_text(&self) -> String {
        let mut lines: Vec<String> = self
            .included_by
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |by| format!("{k}\t{by}")))
            .collect();
        lines.sort();
        lines.join("\n")
    }

    /// The graph back from [`Graph::to_text`].
    pub fn from_text(text: &str) -> Graph {
        let mut included_by: HashMap<String, Vec<String>> = HashMap::new();
        for line in text.lines() {
            if let Some((k, by)) = line.split_once('\t') {
                included_by
                    .entry(k.to_string())
                    .or_default()
                    .push(by.to_string());
            }
        }
        Graph { included_by }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_and_closure() {
        let files: Vec<(&str, Vec<Include>)> = vec![
            (
                "kernel/events/core.c",
                parse("#include <linux/x.h>\n# include \"internal.h\"\n#define A 1\n"),
            ),
            ("kernel/events/internal.h", parse("#include <linux/y.h>\n")),
            ("kernel/sched/build.c", parse("#include \"fair.c\"\n")),
            ("kernel/sched/fair.c", parse("#include <linux/y.h>\n")),
            (
                "fs/a.c",
                parse("#include \"../kernel/events/internal.h\"\n"),
            ),
        ];
        let known: HashSet<&str> = [
            "kernel/events/core.c",
            "kernel/events/internal.h",
            "include/linux/x.h",
            "include/linux/y.h",
            "kernel/sched/build.c",
            "kernel/sched/fair.c",
            "fs/a.c",
        ]
        .into_iter()
        .collect();
        let graph = Graph::build(files.iter().map(|(f, i)| (*f, i.as_slice())), &|p| {
            known.contains(p)
        });
        let units: Vec<String> = graph
            .includers("kernel/events/internal.h")
            .into_iter()
            .collect();
        assert_eq!(units, ["fs/a.c", "kernel/events/core.c"]);
        let units: Vec<String> = graph.includers("include/linux/y.h").into_iter().collect();
        assert_eq!(
            units,
            [
                "fs/a.c",
                "kernel/events/core.c",
                "kernel/sched/build.c",
                "kernel/sched/fair.c"
            ]
        );
        let again = Graph::from_text(&graph.to_text());
        assert_eq!(again.includers("include/linux/x.h").len(), 1);
    }
}
