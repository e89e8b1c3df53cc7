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

/// The upstream part of a Debian version (`1:9.2p1-2+deb12u10` → `1:9.2p1`).
pub fn upstream_version(version: &str) -> &str {
    version.rsplit_once('-').map_or(version, |(u, _)| u)
}

fn series_of(tree: &Path) -> Vec<String> {
    std::fs::read_to_string(tree.join("debian/patches/series"))
        .map(|t| crate::series::parse_series(&t))
        .unwrap_or_default()
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<std::process::Output, Error> {
    let out = cmd.output().map_err(|e| Error::Debian {
        message: format!("{what}: {e}"),
    })?;
    Ok(out)
}

/// Whether two unpacked sources have the same files outside `debian/` (and quilt's `.pc`).
fn same_source(a: &Path, b: &Path) -> bool {
    Command::new("diff")
        .args([
            "-rq",
            "--no-dereference",
            "--exclude=debian",
            "--exclude=.pc",
            "--exclude=.git",
        ])
        .arg(a)
        .arg(b)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The series that takes the source of `old` (as `apt-get source` unpacks it: its patches
/// applied) to `new`, written under `dest` where needed:
///
/// - same upstream version: the patches at the end of `new`'s series that `old`'s does not
///   have are the update, each its own bundle, in series order. They are taken off `new`'s
///   source (`patch -R`); if what is left differs from `old`'s source (the newer version also
///   changed patches both have — Debian often fixes a vulnerability in its own patch), one
///   diff of that difference comes first.
/// - another upstream version (or the added patches cannot be taken off): one diff of the
///   whole source outside `debian/`.
pub fn update_series(old: &Source, new: &Source, dest: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    if same_source(&old.tree, &new.tree) {
        return Err(Error::Debian {
            message: format!(
                "{} {} and {} have the same source: nothing to update",
                new.package, old.version, new.version
            ),
        });
    }
    let parent = old.tree.parent().unwrap_or(Path::new("/")).to_path_buf();
    let scratch = parent.join(format!("new-{}", new.version.replace(':', "_")));
    let _ = crate::tree::remove(&scratch);
    crate::tree::copy(&new.tree, &scratch).map_err(io(&scratch))?;
    let name = |what: &str| {
        format!(
            "{}-{}-to-{}-{what}.diff",
            new.package,
            old.version.replace(':', "_"),
            new.version.replace(':', "_")
        )
    };
    // One diff from `old`'s source to the tree in `scratch`.
    let diff_to_scratch = |file: &str| -> Result<Option<PathBuf>, Error> {
        let out = run_ok(
            Command::new("diff")
                .args([
                    "-ruN",
                    "--exclude=debian",
                    "--exclude=.pc",
                    "--exclude=.git",
                ])
                .arg(old.tree.file_name().unwrap_or_default())
                .arg(scratch.file_name().unwrap_or_default())
                .current_dir(&parent),
            "diff",
        )?;
        match out.status.code() {
            Some(0) => Ok(None),
            Some(1) => {
                let path = dest.join(file);
                std::fs::write(&path, &out.stdout).map_err(io(&path))?;
                Ok(Some(path))
            }
            _ => Err(Error::Debian {
                message: format!(
                    "diff {} {} failed: {}",
                    old.tree.display(),
                    scratch.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }),
        }
    };
    let result = (|| -> Result<Vec<PathBuf>, Error> {
        if upstream_version(&old.version) == upstream_version(&new.version) {
            let old_series = series_of(&old.tree);
            let new_series = series_of(&new.tree);
            let added = new_series
                .iter()
                .rev()
                .take_while(|p| !old_series.contains(p))
                .count();
            let added = &new_series[new_series.len() - added..];
            let mut reversed_all = true;
            for patch in added.iter().rev() {
                let reversed = run_ok(
                    Command::new("patch")
                        .args([
                            "-R",
                            "-p1",
                            "--batch",
                            "--silent",
                            "--no-backup-if-mismatch",
                            "-i",
                        ])
                        .arg(new.tree.join("debian/patches").join(patch))
                        .current_dir(&scratch),
                    "patch -R",
                )?;
                if !reversed.status.success() {
                    reversed_all = false;
                    break;
                }
            }
            if reversed_all {
                let mut out: Vec<PathBuf> = diff_to_scratch(&name("changed-patches"))?
                    .into_iter()
                    .collect();
                out.extend(
                    added
                        .iter()
                        .map(|p| new.tree.join("debian/patches").join(p)),
                );
                if !out.is_empty() {
                    return Ok(out);
                }
            }
            crate::tree::remove(&scratch).map_err(io(&scratch))?;
            crate::tree::copy(&new.tree, &scratch).map_err(io(&scratch))?;
        }
        Ok(diff_to_scratch(&name("source"))?.into_iter().collect())
    })();
    let _ = crate::tree::remove(&scratch);
    result
}

/// Turns `request` into the build of a Debian package: fetches the source of `spec`
/// (`PACKAGE` or `PACKAGE=VERSION`) into `request.cache`, checks its build dependencies, and
/// builds it through `debian/rules build-arch` with `DEB_BUILD_OPTIONS=nocheck
/// parallel=<jobs>`. With `update_to`, the diffs become the update series from that version to
/// `update_to` ([`update_series`]); otherwise `request.diffs` are kept.
pub fn request(
    spec: &str,
    update_to: Option<&str>,
    mut request: crate::Request,
    progress: &mut dyn FnMut(&str),
) -> Result<crate::Request, Error> {
    let source = fetch(spec, &request.cache, progress)?;
    check_build_deps(&source.tree, spec)?;
    progress(&format!(
        "Debian source {} {}: {}",
        source.package,
        source.version,
        source.tree.display()
    ));
    if let Some(version) = update_to {
        let newer = fetch(
            &format!("{}={version}", source.package),
            &request.cache,
            progress,
        )?;
        let dest = request.cache.join("debian").join(format!(
            "update_{}_{}_{}",
            source.package,
            source.version.replace(':', "_"),
            version.replace(':', "_")
        ));
        request.diffs = update_series(&source, &newer, &dest)?;
        progress(&format!(
            "update {} → {}: {} patch(es)",
            source.version,
            version,
            request.diffs.len()
        ));
    }
    request.source = source.tree;
    request.build_command = "debian/rules build-arch".to_string();
    request.env.push((
        "DEB_BUILD_OPTIONS".to_string(),
        format!("nocheck parallel={}", request.jobs.max(1)),
    ));
    request.debian = true;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unpacked source: `a.c` with `patches` applied, `debian/patches` holding them.
    fn source(dir: &Path, name: &str, version: &str, patches: &[(&str, &str)]) -> Source {
        let tree = dir.join(name);
        std::fs::create_dir_all(tree.join("debian/patches")).unwrap();
        std::fs::write(tree.join("a.c"), "int a(void)\n{\n    return 0;\n}\n").unwrap();
        let mut series = String::new();
        for (patch, text) in patches {
            std::fs::write(tree.join("debian/patches").join(patch), text).unwrap();
            series.push_str(patch);
            series.push('\n');
            let status = Command::new("patch")
                .args(["-p1", "--batch", "--silent", "-i"])
                .arg(tree.join("debian/patches").join(patch))
                .current_dir(&tree)
                .status()
                .unwrap();
            assert!(status.success());
        }
        std::fs::write(tree.join("debian/patches/series"), series).unwrap();
        Source {
            package: "pkg".to_string(),
            version: version.to_string(),
            tree,
        }
    }

    fn change(from: &str, to: &str) -> String {
        format!(
            "--- a/a.c\n+++ b/a.c\n@@ -1,4 +1,4 @@\n int a(void)\n {{\n-    return {from};\n+    return {to};\n }}\n"
        )
    }

    fn applied(tree: &Path, patches: &[PathBuf]) -> String {
        for p in patches {
            let status = Command::new("patch")
                .args(["-p1", "--batch", "--silent", "-i"])
                .arg(p)
                .current_dir(tree)
                .status()
                .unwrap();
            assert!(status.success(), "{}", p.display());
        }
        std::fs::read_to_string(tree.join("a.c")).unwrap()
    }

    #[test]
    fn an_update_is_the_patches_the_newer_version_adds() {
        let dir = std::env::temp_dir().join(format!("hs-debian-update-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p1 = change("0", "1");
        let p2 = change("1", "2");
        let p3 = change("2", "3");
        let old = source(&dir.join("old"), "pkg-1.0", "1.0-1", &[("p1.patch", &p1)]);
        let new = source(
            &dir.join("new"),
            "pkg-1.0",
            "1.0-2",
            &[("p1.patch", &p1), ("p2.patch", &p2), ("p3.patch", &p3)],
        );
        let series = update_series(&old, &new, &dir.join("out")).unwrap();
        let names: Vec<_> = series
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["p2.patch", "p3.patch"]);
        assert!(applied(&old.tree, &series).contains("return 3;"));

        // Patch files are compared by what they do: the newer version's p1 has another header.
        let p1_again = format!("Description: the same change, regenerated\n{p1}");
        let old = source(&dir.join("old2"), "pkg-1.0", "1.0-2", &[("p1.patch", &p1)]);
        let new = source(
            &dir.join("new2"),
            "pkg-1.0",
            "1.0-3",
            &[("p1.patch", &p1_again), ("p2.patch", &p2)],
        );
        let series = update_series(&old, &new, &dir.join("out2")).unwrap();
        assert_eq!(series.len(), 1);
        assert!(series[0].ends_with("p2.patch"));
        assert!(applied(&old.tree, &series).contains("return 2;"));

        // The newer version changed a patch the older one has: that change is one diff.
        let p2b = change("1", "20");
        let old = source(
            &dir.join("old3"),
            "pkg-1.0",
            "1.0-2",
            &[("p1.patch", &p1), ("p2.patch", &p2)],
        );
        let new = source(
            &dir.join("new3"),
            "pkg-1.0",
            "1.0-3",
            &[("p1.patch", &p1), ("p2.patch", &p2b)],
        );
        let series = update_series(&old, &new, &dir.join("out3")).unwrap();
        assert_eq!(series.len(), 1);
        assert!(
            series[0]
                .to_string_lossy()
                .ends_with("changed-patches.diff")
        );
        assert!(applied(&old.tree, &series).contains("return 20;"));

        // Both: a changed patch, then the added ones.
        let old = source(&dir.join("old5"), "pkg-1.0", "1.0-2", &[("p1.patch", &p1)]);
        let p1b = change("0", "10");
        let p2c = change("10", "2");
        let new = source(
            &dir.join("new5"),
            "pkg-1.0",
            "1.0-3",
            &[("p1.patch", &p1b), ("p2.patch", &p2c), ("p3.patch", &p3)],
        );
        let series = update_series(&old, &new, &dir.join("out6")).unwrap();
        let names: Vec<_> = series
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "pkg-1.0-2-to-1.0-3-changed-patches.diff",
                "p2.patch",
                "p3.patch"
            ]
        );
        assert!(applied(&old.tree, &series).contains("return 3;"));

        // Another upstream version: one diff of the whole source.
        let old = source(&dir.join("old4"), "pkg-1.0", "1.0-1", &[]);
        let new = source(&dir.join("new4"), "pkg-1.1", "1.1-1", &[("p1.patch", &p1)]);
        let series = update_series(&old, &new, &dir.join("out4")).unwrap();
        assert_eq!(series.len(), 1);
        assert!(applied(&old.tree, &series).contains("return 1;"));
        assert!(update_series(&new, &new, &dir.join("out5")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
