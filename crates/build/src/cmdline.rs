//! Compiler command lines: what a `gcc`/`g++` invocation compiles, links and writes.
//!
//! Pure: arguments in, a [`CommandLine`] out. The shim uses it to decide whether a call
//! compiles (and must be recorded with its object), links (record its inputs), does both at
//! once (split into one compile per source, objects kept, then the link), or neither
//! (preprocessing, `--version`, probes writing to `/dev/null`).
//!
//! Handled: `-c`/`-S`/`-E`/`-M*`, `-o FILE`/`-oFILE`/`-o -`, several sources in one call,
//! `-x LANG` (positional, up to `-x none`), `@response` files (expanded by
//! [`expand_response_files`] before parsing), `-r` (relocatable link), `-flto`.

use std::path::Path;

/// What an invocation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-c`: each source becomes an object.
    Compile,
    /// No `-c`/`-S`/`-E` and at least one source: compile every source, then link.
    CompileAndLink,
    /// Only objects, archives and libraries as inputs: a link (or a partial link with `-r`).
    Link,
    /// Anything else: preprocessing, assembly output (`-S`), dependency generation only,
    /// `-fsyntax-only`, `--version`, `-print-*`, no inputs.
    Other,
}

/// One source file of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its position in the (expanded) arguments.
    pub index: usize,
    /// The path as given (`-` is standard input).
    pub path: String,
    /// The language forced with `-x LANG` before it, if any.
    pub language: Option<String>,
}

/// A parsed compiler command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The arguments (response files expanded).
    pub args: Vec<String>,
    /// What the invocation does.
    pub mode: Mode,
    /// Source files, in order.
    pub sources: Vec<Source>,
    /// Other input files (objects, archives, shared libraries, linker scripts), as given.
    pub inputs: Vec<String>,
    /// The `-o` argument, if any.
    pub output: Option<String>,
    /// A relocatable (partial) link: `-r`.
    pub relocatable: bool,
    /// Link-time optimisation requested (`-flto`, `-flto=N`, `-flto=auto`).
    pub lto: bool,
}

/// Options whose value is the next argument (when not attached).
const TAKES_VALUE: &[&str] = &[
    "-o",
    "-x",
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-isystem",
    "-idirafter",
    "-iquote",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-isysroot",
    "-imultilib",
    "-MF",
    "-MT",
    "-MQ",
    "-L",
    "-l",
    "-Xlinker",
    "-Xassembler",
    "-Xpreprocessor",
    "-aux-info",
    "-T",
    "-u",
    "-z",
    "-e",
    "--param",
    "-wrapper",
    "-dumpbase",
    "-dumpbase-ext",
    "-dumpdir",
    "-B",
    "-A",
    "-G",
];

/// Options that only matter to a link: dropped when a compile+link call is split.
fn link_only(arg: &str) -> bool {
    matches!(
        arg,
        "-shared"
            | "-static"
            | "-static-pie"
            | "-static-libgcc"
            | "-static-libstdc++"
            | "-shared-libgcc"
            | "-rdynamic"
            | "-s"
            | "-nostdlib"
            | "-nostartfiles"
            | "-nodefaultlibs"
            | "-nolibc"
            | "-pie"
            | "-no-pie"
            | "-r"
            | "-pthread-link-only"
    ) || arg.starts_with("-Wl,")
        || (arg.starts_with("-l") && arg.len() > 2)
        || (arg.starts_with("-L") && arg.len() > 2)
        || arg.starts_with("-T") && arg.len() > 2
        || arg.starts_with("-flinker-output=")
        || arg.starts_with("-fuse-ld=")
}

/// Options with a separate value that only matter to a link.
fn link_only_with_value(arg: &str) -> bool {
    matches!(arg, "-l" | "-L" | "-Xlinker" | "-T" | "-u" | "-z" | "-e")
}

/// The language gcc infers from a file name, for files it compiles (`None`: a linker input).
pub fn language_of(path: &str) -> Option<&'static str> {
    let ext = Path::new(path).extension()?.to_str()?;
    Some(match ext {
        "c" => "c",
        "i" => "cpp-output",
        "cc" | "cp" | "cxx" | "cpp" | "CPP" | "c++" | "C" => "c++",
        "ii" => "c++-cpp-output",
        "s" => "assembler",
        "S" | "sx" => "assembler-with-cpp",
        _ => return None,
    })
}

/// Whether a language is C++ (`-x c++`, `.cc`...).
pub fn is_cxx_language(language: &str) -> bool {
    language.starts_with("c++")
}

/// Parses an argument list (after [`expand_response_files`]).
pub fn parse(args: &[String]) -> CommandLine {
    let mut compile_only = false; // -c
    let mut no_object = false; // -S, -E, -M, -MM, -fsyntax-only
    let mut info_only = false;
    let mut output = None;
    let mut sources = Vec::new();
    let mut inputs = Vec::new();
    let mut language: Option<String> = None;
    let mut relocatable = false;
    let mut lto = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "-c" => compile_only = true,
            "-S" | "-E" | "-M" | "-MM" | "-fsyntax-only" => no_object = true,
            "-r" => relocatable = true,
            "-v" if args.len() == 1 => info_only = true,
            "--version" | "-dumpversion" | "-dumpfullversion" | "-dumpmachine" | "-dumpspecs"
            | "--help" | "--target-help" | "-###" => info_only = true,
            _ if arg.starts_with("-print-") || arg.starts_with("--help=") => info_only = true,
            "-flto" => lto = true,
            _ if arg.starts_with("-flto=") => lto = true,
            "-fno-lto" => lto = false,
            "-x" => {
                let value = args.get(i + 1).cloned().unwrap_or_default();
                language = (value != "none").then_some(value);
                i += 1;
            }
            _ if arg.starts_with("-x") && arg.len() > 2 => {
                let value = &arg[2..];
                language = (value != "none").then(|| value.to_string());
            }
            "-o" => {
                output = args.get(i + 1).cloned();
                i += 1;
            }
            _ if arg.starts_with("-o") && arg.len() > 2 => output = Some(arg[2..].to_string()),
            _ if TAKES_VALUE.contains(&arg) => i += 1,
            "-" => sources.push(Source {
                index: i,
                path: arg.to_string(),
                language: language.clone(),
            }),
            _ if arg.starts_with('-') => {}
            _ => {
                if language.is_some() || language_of(arg).is_some() {
                    sources.push(Source {
                        index: i,
                        path: arg.to_string(),
                        language: language.clone(),
                    });
                } else {
                    inputs.push(arg.to_string());
                }
            }
        }
        i += 1;
    }
    let mode = if info_only || no_object {
        Mode::Other
    } else if compile_only {
        if sources.is_empty() {
            Mode::Other
        } else {
            Mode::Compile
        }
    } else if !sources.is_empty() {
        Mode::CompileAndLink
    } else if !inputs.is_empty() {
        Mode::Link
    } else {
        Mode::Other
    };
    CommandLine {
        args: args.to_vec(),
        mode,
        sources,
        inputs,
        output,
        relocatable,
        lto,
    }
}

impl CommandLine {
    /// The object a `-c` compile writes for `source` (`None`: standard output or an output
    /// hotsplice does not follow, e.g. several sources with one `-o`).
    pub fn compile_output(&self, source: &Source) -> Option<String> {
        match &self.output {
            Some(o) if self.sources.len() == 1 => Some(o.clone()),
            Some(_) => None,
            None => {
                if source.path == "-" {
                    return None;
                }
                let stem = Path::new(&source.path).file_stem()?.to_string_lossy();
                Some(format!("{stem}.o"))
            }
        }
    }

    /// The file a link writes (`a.out` by default).
    pub fn link_output(&self) -> String {
        self.output.clone().unwrap_or_else(|| "a.out".to_string())
    }

    /// The arguments that compile `source` alone into `object`: every option of the call
    /// except outputs, other inputs and link-only options, the source's `-x` language, then
    /// `-c SOURCE -o OBJECT` and `extra` flags.
    pub fn compile_args(&self, source: &Source, object: &str, extra: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let source_indices: Vec<usize> = self.sources.iter().map(|s| s.index).collect();
        let mut i = 0;
        while i < self.args.len() {
            let arg = self.args[i].as_str();
            if source_indices.contains(&i) {
                i += 1;
                continue;
            }
            match arg {
                "-c" => {}
                "-o" | "-x" => i += 1,
                _ if arg.starts_with("-o") && arg.len() > 2 => {}
                _ if arg.starts_with("-x") && arg.len() > 2 => {}
                _ if link_only_with_value(arg) => i += 1,
                _ if link_only(arg) => {}
                _ if TAKES_VALUE.contains(&arg) => {
                    out.push(arg.to_string());
                    if let Some(v) = self.args.get(i + 1) {
                        out.push(v.clone());
                    }
                    i += 1;
                }
                _ if arg.starts_with('-') => out.push(arg.to_string()),
                // Another input file (object, archive): not part of this compile.
                _ => {}
            }
            i += 1;
        }
        for flag in extra {
            if !out.iter().any(|a| a == flag) {
                out.push((*flag).to_string());
            }
        }
        if let Some(language) = &source.language {
            out.push("-x".to_string());
            out.push(language.clone());
        }
        out.push("-c".to_string());
        out.push(source.path.clone());
        if source.language.is_some() {
            out.push("-x".to_string());
            out.push("none".to_string());
        }
        out.push("-o".to_string());
        out.push(object.to_string());
        out
    }

    /// The arguments of the link half of a compile+link call: the original arguments with
    /// each source replaced by its compiled object (`objects[k]` for `sources[k]`) and the
    /// `-x` options dropped (they applied to the sources only).
    pub fn link_args(&self, objects: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.args.len() {
            let arg = self.args[i].as_str();
            if let Some(k) = self.sources.iter().position(|s| s.index == i) {
                if let Some(object) = objects.get(k) {
                    out.push(object.clone());
                }
            } else if arg == "-x" {
                i += 1;
            } else if arg.starts_with("-x") && arg.len() > 2 {
            } else if TAKES_VALUE.contains(&arg) {
                out.push(arg.to_string());
                if let Some(v) = self.args.get(i + 1) {
                    out.push(v.clone());
                }
                i += 1;
            } else {
                out.push(arg.to_string());
            }
            i += 1;
        }
        out
    }
}

/// Splits the text of a response file into arguments as gcc does: whitespace separates,
/// single and double quotes group, a backslash escapes the next character.
pub fn split_response(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(current);
    }
    out
}

/// Replaces each `@FILE` argument by the arguments in FILE (read relative to `cwd`,
/// recursively, up to a depth of 10); an unreadable `@FILE` stays as it is, as with gcc.
pub fn expand_response_files(args: &[String], cwd: &Path) -> Vec<String> {
    fn expand(args: &[String], cwd: &Path, depth: usize, out: &mut Vec<String>) {
        for arg in args {
            if let Some(file) = arg.strip_prefix('@')
                && depth < 10
                && !file.is_empty()
                && let Ok(text) = std::fs::read_to_string(cwd.join(file))
            {
                expand(&split_response(&text), cwd, depth + 1, out);
            } else {
                out.push(arg.clone());
            }
        }
    }
    let mut out = Vec::new();
    expand(args, cwd, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn modes() {
        let c = parse(&args("-c -O2 -I src -o objs/a.o src/a.c"));
        assert_eq!(c.mode, Mode::Compile);
        assert_eq!(c.sources[0].path, "src/a.c");
        assert_eq!(c.compile_output(&c.sources[0]).as_deref(), Some("objs/a.o"));

        let c = parse(&args("-c src/b.c src/c.c"));
        assert_eq!(c.mode, Mode::Compile);
        let outs: Vec<_> = c.sources.iter().map(|s| c.compile_output(s)).collect();
        assert_eq!(outs, [Some("b.o".into()), Some("c.o".into())]);

        assert_eq!(parse(&args("-o prog a.o b.o -lm")).mode, Mode::Link);
        assert_eq!(
            parse(&args("-O2 -o prog prog.c util.o")).mode,
            Mode::CompileAndLink
        );
        assert_eq!(parse(&args("-E x.c")).mode, Mode::Other);
        assert_eq!(parse(&args("-S x.c -o -")).mode, Mode::Other);
        assert_eq!(parse(&args("-MM -MF deps x.c")).mode, Mode::Other);
        assert_eq!(parse(&args("--version")).mode, Mode::Other);
        assert_eq!(parse(&args("-print-file-name=libc.so")).mode, Mode::Other);
        assert_eq!(parse(&args("-v")).mode, Mode::Other);
        let r = parse(&args("-r -o big.o a.o b.o"));
        assert_eq!((r.mode, r.relocatable), (Mode::Link, true));
        assert!(parse(&args("-flto=auto -c a.c")).lto);
    }

    #[test]
    fn forced_language_makes_any_file_a_source() {
        let c = parse(&args("-x c -c conf.in -o conf.o"));
        assert_eq!(c.mode, Mode::Compile);
        assert_eq!(c.sources[0].language.as_deref(), Some("c"));
        let c = parse(&args("-x c - -x none x.o -o prog"));
        assert_eq!(c.mode, Mode::CompileAndLink);
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.inputs, ["x.o"]);
        let c = parse(&args("-xc++ -c a.inl"));
        assert_eq!(c.sources[0].language.as_deref(), Some("c++"));
    }

    #[test]
    fn splits_compile_and_link() {
        let c = parse(&args(
            "-O2 -g -DX=1 -I inc -o prog main.c -x c gen.in -x none util.o -lm -Wl,--as-needed -L lib",
        ));
        assert_eq!(c.mode, Mode::CompileAndLink);
        let compile = c.compile_args(&c.sources[0], "k/main.o", &["-ffunction-sections"]);
        assert_eq!(
            compile.join(" "),
            "-O2 -g -DX=1 -I inc -ffunction-sections -c main.c -o k/main.o"
        );
        let compile = c.compile_args(&c.sources[1], "k/gen.o", &[]);
        assert_eq!(
            compile.join(" "),
            "-O2 -g -DX=1 -I inc -x c -c gen.in -x none -o k/gen.o"
        );
        let link = c.link_args(&["k/main.o".into(), "k/gen.o".into()]);
        assert_eq!(
            link.join(" "),
            "-O2 -g -DX=1 -I inc -o prog k/main.o k/gen.o util.o -lm -Wl,--as-needed -L lib"
        );
    }

    #[test]
    fn response_files() {
        assert_eq!(
            split_response("-DA='x y' \"-DB=1\"\n-I\\ dir  a.c"),
            ["-DA=x y", "-DB=1", "-I dir", "a.c"]
        );
        let dir = std::env::temp_dir().join(format!("hs-rsp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("outer.rsp"), "-c @inner.rsp").unwrap();
        std::fs::write(dir.join("inner.rsp"), "a.c -o a.o").unwrap();
        let expanded = expand_response_files(&args("-O2 @outer.rsp @missing.rsp"), dir.as_path());
        assert_eq!(expanded, args("-O2 -c a.c -o a.o @missing.rsp"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
