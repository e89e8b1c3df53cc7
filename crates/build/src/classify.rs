//! What each file a diff touches is to the build: code to recompile and diff, a generator
//! input, a test, documentation, a file the build never reads, or build configuration.
//!
//! Pure: a path (tree-relative) and what is known of the build's reads in, a [`Role`] out.
//! Only [`Role::Build`] refuses a patch; C/C++ sources and generator inputs are then checked
//! by the builder's accounting (every one recompiled and diffed, or shown not to reach the
//! target); the others are listed as ignored.

use std::path::Path;

/// The role of a file the diff changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// C/C++ source or header, or assembly: compiled (or included), accounted for object by
    /// object.
    Source,
    /// An input the build turns into C (`.y`, `.l`, `.lex`, `.gperf`): the build regenerates
    /// its outputs, which are then accounted for as sources.
    Generator,
    /// Part of a test suite (under `tests/`, `regress/`, ... or a test script or data file):
    /// not part of any installed binary.
    Test,
    /// Documentation, manual pages, change logs.
    Documentation,
    /// A file the build never read (neither before nor after the diff).
    Unread,
    /// Build configuration the build reads (Makefiles, configure inputs, CMake/meson files,
    /// module lists, linker scripts, other files it reads): an incremental rebuild does not
    /// reproduce its effect, and a live patch could not register what it adds.
    Build,
}

impl Role {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Generator => "generator",
            Role::Test => "test",
            Role::Documentation => "documentation",
            Role::Unread => "unread",
            Role::Build => "build",
        }
    }

    /// Whether the file is ignored (listed in the report, never a refusal).
    pub fn ignored(self) -> bool {
        matches!(self, Role::Test | Role::Documentation | Role::Unread)
    }
}

/// Extensions of files compiled or included as C, C++ or assembly.
const SOURCE: &[&str] = &[
    "c", "h", "cc", "cp", "cpp", "cxx", "c++", "hh", "hpp", "hxx", "h++", "inc", "inl", "ipp",
    "tcc", "txx", "s", "sx", "i", "ii",
];
/// Extensions of generator inputs the build turns into C.
const GENERATOR: &[&str] = &["y", "yy", "ypp", "y++", "l", "ll", "lex", "lpp", "gperf"];
/// Directory names of test suites.
const TEST_DIRS: &[&str] = &[
    "test",
    "tests",
    "testing",
    "testsuite",
    "test-suite",
    "testdata",
    "test-data",
    "regress",
    "regression",
    "unittest",
    "unittests",
    "unit-tests",
    "fuzz",
    "fuzzing",
    "oss-fuzz",
];
/// Extensions of documentation.
const DOCS: &[&str] = &[
    "md", "txt", "rst", "html", "htm", "xml", "pod", "texi", "texinfo", "adoc", "sgml", "ms",
    "mdoc", "man", "pdf", "png", "svg", "1", "2", "3", "4", "5", "6", "7", "8", "9", "1in", "5in",
    "8in",
];
/// File names (lower case, prefixes) of documentation.
const DOC_NAMES: &[&str] = &[
    "changes",
    "changelog",
    "news",
    "readme",
    "license",
    "licence",
    "copying",
    "authors",
    "thanks",
    "credits",
    "todo",
    "history",
    "release-notes",
    "releasenotes",
];
/// Directory names of documentation.
const DOC_DIRS: &[&str] = &["doc", "docs", "man", "manual", "documentation"];

fn lower_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether the path's name says it is build configuration (whatever the build reads).
pub fn is_build_file_name(path: &Path) -> bool {
    let name = lower_name(path);
    let ext = extension(path).to_ascii_lowercase();
    name.starts_with("makefile")
        || name == "gnumakefile"
        || name.starts_with("configure")
        || name == "cmakelists.txt"
        || name == "meson.build"
        || name == "meson_options.txt"
        || name == "meson.options"
        || name.starts_with("kconfig")
        || name == "kbuild"
        || name == "sconstruct"
        || name == "sconscript"
        || name == "build"
        || name == "workspace"
        || name == "rules"
        || name == "control"
        || name == "series"
        || matches!(
            ext.as_str(),
            "mk" | "mak"
                | "am"
                | "in"
                | "ac"
                | "m4"
                | "cmake"
                | "pro"
                | "pri"
                | "gyp"
                | "gypi"
                | "bzl"
                | "ninja"
                | "ld"
                | "lds"
                | "vers"
                | "ver"
                | "map"
                | "sym"
                | "def"
                | "pc"
        )
}

/// Whether the path is part of a test suite (by directory or by name).
pub fn is_test_path(path: &Path) -> bool {
    let in_test_dir = path.parent().is_some_and(|dir| {
        dir.components().any(|c| {
            let c = c.as_os_str().to_string_lossy().to_ascii_lowercase();
            TEST_DIRS.contains(&c.as_str())
        })
    }) || path
        .components()
        .next()
        .is_some_and(|c| c.as_os_str() == "t" && path.components().count() > 1);
    if in_test_dir {
        return true;
    }
    let name = lower_name(path);
    let stem = name.split('.').next().unwrap_or("");
    let ext = extension(path).to_ascii_lowercase();
    let code = SOURCE.contains(&ext.as_str());
    // Test scripts and data outside a test directory: `test_foo.py`, `foo_test.tcl`, `x.test`.
    !code
        && (ext == "test"
            || stem.starts_with("test_")
            || stem.starts_with("test-")
            || stem.ends_with("_test")
            || stem.ends_with("-test")
            || stem.ends_with("_tests")
            || stem.ends_with("-tests"))
}

/// Upper-case names read by builds (not documentation, whatever their case).
const UPPER_CASE_INPUTS: &[&str] = &["VERSION", "BUILD", "WORKSPACE", "MANIFEST", "KBUILD"];

/// Whether the path is documentation.
pub fn is_documentation(path: &Path) -> bool {
    let name = lower_name(path);
    let ext = extension(path).to_ascii_lowercase();
    if name == "cmakelists.txt" || name == "meson_options.txt" {
        return false;
    }
    // `PROTOCOL`, `PROTOCOL.agent`, `INSTALL`, `OVERVIEW`: upper-case names at the top of a
    // tree are prose by convention.
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.split('.').next().unwrap_or("");
    let upper_case = stem.len() > 1
        && stem.starts_with(|c: char| c.is_ascii_uppercase())
        && stem
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !UPPER_CASE_INPUTS.contains(&stem);
    if upper_case && !SOURCE.contains(&ext.as_str()) && !is_build_file_name(path) {
        return true;
    }
    DOCS.contains(&ext.as_str())
        || DOC_NAMES.iter().any(|d| name.starts_with(d))
        || path.components().next().is_some_and(|c| {
            DOC_DIRS.contains(
                &c.as_os_str()
                    .to_string_lossy()
                    .to_ascii_lowercase()
                    .as_str(),
            )
        })
}

/// What is known of the build's reads of a file: from access times of the build tree (see
/// [`crate::access`]); `None` when the file system does not record them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// The file existed before the diff and the pre build read it.
    pub by_pre_build: Option<bool>,
    /// The post build read it.
    pub by_post_build: Option<bool>,
}

/// Classifies a changed file (tree-relative path).
pub fn classify(path: &Path, reads: Reads) -> Role {
    let ext = extension(path);
    let ext_lower = ext.to_ascii_lowercase();
    if GENERATOR.contains(&ext_lower.as_str()) && !is_test_path(path) {
        return Role::Generator;
    }
    let makefile = lower_name(path).starts_with("makefile");
    if (SOURCE.contains(&ext_lower.as_str()) || ext == "S" || ext == "C" || ext == "H") && !makefile
    {
        return Role::Source;
    }
    if is_test_path(path) {
        return Role::Test;
    }
    if is_documentation(path) && !is_build_file_name(path) {
        return Role::Documentation;
    }
    let read = match (reads.by_pre_build, reads.by_post_build) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        (None, Some(false)) | (Some(false), None) | (None, None) => None,
    };
    match read {
        Some(false) => Role::Unread,
        _ => Role::Build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNKNOWN: Reads = Reads {
        by_pre_build: None,
        by_post_build: None,
    };
    const UNREAD: Reads = Reads {
        by_pre_build: Some(false),
        by_post_build: Some(false),
    };
    const READ: Reads = Reads {
        by_pre_build: Some(true),
        by_post_build: Some(false),
    };

    fn role(path: &str, reads: Reads) -> Role {
        classify(Path::new(path), reads)
    }

    #[test]
    fn sources_and_generators() {
        assert_eq!(role("src/http/x.c", UNKNOWN), Role::Source);
        assert_eq!(role("lib/x.hpp", UNKNOWN), Role::Source);
        assert_eq!(role("arch/entry.S", UNKNOWN), Role::Source);
        assert_eq!(role("tests/unit/unit1397.c", UNKNOWN), Role::Source);
        assert_eq!(role("src/parse.y", UNKNOWN), Role::Generator);
        assert_eq!(role("src/scan.lex", UNKNOWN), Role::Generator);
        assert_eq!(role("src/scan.l", READ), Role::Generator);
    }

    #[test]
    fn tests_and_documentation_are_ignored_whatever_the_build_reads() {
        for path in [
            "tests/data/Makefile.inc",
            "tests/data/test1474",
            "tests/unit/Makefile.inc",
            "regress/percent.sh",
            "tests/integration/replication.tcl",
            "t/basic.t",
            "scripts/test_parser.py",
            "tests/data/DISABLED",
        ] {
            assert_eq!(role(path, READ), Role::Test, "{path}");
        }
        for path in [
            "docs/libcurl/opts/CURLSHOPT_SHARE.3",
            "ssh_config.5",
            "CHANGES",
            "README.md",
            "doc/manual.texi",
        ] {
            assert_eq!(role(path, READ), Role::Documentation, "{path}");
        }
        assert!(Role::Test.ignored() && Role::Documentation.ignored() && Role::Unread.ignored());
    }

    #[test]
    fn build_files_are_refused_when_read_and_ignored_when_not() {
        for path in [
            "Makefile",
            "Makefile.in",
            "lib/Makefile.am",
            "configure.ac",
            "CMakeLists.txt",
            "meson.build",
            "m4/curl.m4",
            "lib/libcurl.vers.in",
            "auto/modules",
        ] {
            assert_eq!(role(path, READ), Role::Build, "{path}");
            assert_eq!(role(path, UNKNOWN), Role::Build, "{path}");
        }
        assert_eq!(role("contrib/Makefile", UNREAD), Role::Unread);
        assert_eq!(role("PROTOCOL", READ), Role::Documentation);
        assert_eq!(role("PROTOCOL.agent", READ), Role::Documentation);
        assert_eq!(role("VERSION", READ), Role::Build);
        assert_eq!(role("scripts/helper", UNREAD), Role::Unread);
        assert_eq!(role("scripts/helper", UNKNOWN), Role::Build);
        assert_eq!(role("scripts/gen.py", READ), Role::Build);
        let post_only = Reads {
            by_pre_build: None,
            by_post_build: Some(true),
        };
        assert_eq!(role("new-list.txt.gen", post_only), Role::Build);
    }
}
