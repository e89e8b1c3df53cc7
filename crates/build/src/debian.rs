//! Debian-native builds: fetch the source of the installed (or named) package version with
//! `apt-get source` (which applies the package's patch series), build it through
//! `debian/rules` as the distribution does, and find the binary a user runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// A package's source, unpacked.
#[derive(Debug, Clone)]
pub struct Source {
    /// The binary package asked for.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The unpacked source tree (series applied).
    pub tree: PathBuf,
}

fn command_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version of an installed binary package.
fn installed_version(package: &str) -> Option<String> {
    command_output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
        .filter(|v| !v.is_empty())
}

/// Fetches (once) the source of `spec` (`PACKAGE` or `PACKAGE=VERSION`) under `cache`.
pub fn fetch(spec: &str, cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<Source, Error> {
    let (package, version) = match spec.split_once('=') {
        Some((p, v)) => (p.to_string(), v.to_string()),
        None => {
            let version = installed_version(spec).ok_or_else(|| Error::Debian {
                message: format!(
                    "{spec} is not installed; name the version to build: --debian {spec}=VERSION"
                ),
            })?;
            (spec.to_string(), version)
        }
    };
    let dir = cache.join("debian").join(format!("{package}_{version}"));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let unpacked = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.join("debian/rules").is_file())
    };
    if let Some(tree) = unpacked(&dir) {
        return Ok(Source {
            package,
            version,
            tree,
        });
    }
    progress(&format!(
        "fetching the Debian source of {package} {version} (apt-get source)"
    ));
    let out = Command::new("apt-get")
        .args(["source", "-qq", &format!("{package}={version}")])
        .current_dir(&dir)
        .output()
        .map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
    let tree = unpacked(&dir).ok_or_else(|| Error::Debian {
        message: format!(
            "apt-get source {package}={version} failed (is there a deb-src entry? scripts/setup adds one): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })?;
    Ok(Source {
        package,
        version,
        tree,
    })
}

/// Checks the package's build dependencies are installed.
pub fn check_build_deps(tree: &Path, spec: &str) -> Result<(), Error> {
    let out = Command::new("dpkg-checkbuilddeps")
        .current_dir(tree)
        .output()
        .map_err(|source| Error::Io {
            path: tree.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Debian {
        message: format!(
            "{}; install them with: apt-get build-dep {spec}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("dpkg-checkbuilddeps: error: ")
        ),
    })
}

/// After the pre build: where the build copied the sources (`debian/build-*` directories with
/// a Makefile, as nginx's packaging does) and the matching incremental post-build command.
pub fn post_build(tree: &Path) -> (String, Vec<String>) {
    let mut dirs: Vec<String> = std::fs::read_dir(tree.join("debian"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with("build")
                && e.path().join("Makefile").is_file()
        })
        .map(|e| format!("debian/{}", e.file_name().to_string_lossy()))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        // Out-of-tree builds without copies (cmake/meson/autotools via dh): rebuild in place.
        return ("dh_auto_build".to_string(), Vec::new());
    }
    let command = dirs
        .iter()
        .map(|d| format!("make -C {d}"))
        .collect::<Vec<_>>()
        .join(" && ");
    (command, dirs)
}

/// The built file for an installed path (`usr/sbin/nginx`): the ELF file of that name in the
/// build tree, preferring the build directories.
pub fn find_target(tree: &Path, installed: &str) -> Result<String, Error> {
    let name = Path::new(installed)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                // Packaging staging trees hold installed (stripped) copies, not build outputs.
                let skip =
                    path.parent() == Some(&tree.join("debian")) && path.join("DEBIAN").exists();
                if !skip && entry.file_name() != ".pc" {
                    stack.push(path);
                }
            } else if kind.is_file() && entry.file_name().to_string_lossy() == name {
                let is_elf = std::fs::read(&path)
                    .map(|b| b.starts_with(b"\x7fELF"))
                    .unwrap_or(false);
                if is_elf && let Ok(rel) = path.strip_prefix(tree) {
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Debian {
            message: format!("the build produced no ELF file named {name} (for {installed})"),
        }),
        many => Err(Error::Debian {
            message: format!(
                "several built files are named {name}: {}; give the build-tree path with --target",
                many.join(", ")
            ),
        }),
    }
}
