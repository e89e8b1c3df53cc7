//! Link-time optimisation: the code of an `-flto` program is made at link time, from the
//! intermediate language in its objects, so the compiled objects have none to diff.
//!
//! The shim links LTO programs with `-save-temps`, which keeps the *ltrans* objects — the
//! relocatable objects the link-time code generator wrote and the linker then linked: exactly
//! the code of the binary. [`keep_temps`] moves them out of the build tree (and removes the
//! other temporaries `-save-temps` leaves); [`merge`] joins a link's ltrans objects into one
//! relocatable object (`ld -r --unique`, every section kept apart), so the pre and post
//! builds' code can be diffed as one object whatever the partitioning. Run-pre matching then
//! proves each replaced function's code equals the running binary's, as for any build.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Moves the ltrans objects a `-save-temps` link of `output` wrote next to it into
/// `dest` (returned in partition order) and removes its other temporaries; only files
/// written since `since` are touched.
pub fn keep_temps(output: &Path, dest: &Path, since: SystemTime) -> io::Result<Vec<PathBuf>> {
    let Some(dir) = output.parent() else {
        return Ok(Vec::new());
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{name}.");
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest)?;
    let mut kept: Vec<(usize, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let temporary = rest.starts_with("ltrans")
            || rest.starts_with("wpa.")
            || rest == "res"
            || rest == "lto_wrapper_args";
        let fresh = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= since);
        if !temporary || !fresh {
            continue;
        }
        // `NAME.ltransN.ltrans.o`: the code of partition N.
        let partition = rest
            .strip_prefix("ltrans")
            .and_then(|r| r.strip_suffix(".ltrans.o"))
            .and_then(|n| n.parse::<usize>().ok());
        match partition {
            Some(n) => {
                let to = dest.join(format!("{n}.o"));
                if std::fs::rename(entry.path(), &to).is_err() {
                    std::fs::copy(entry.path(), &to)?;
                    std::fs::remove_file(entry.path())?;
                }
                kept.push((n, to));
            }
            None => {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    kept.sort();
    Ok(kept.into_iter().map(|(_, p)| p).collect())
}

/// Joins ltrans objects into one relocatable object at `out`, keeping every input section
/// apart (same-named sections of different partitions included).
pub fn merge(ltrans: &[PathBuf], out: &Path) -> io::Result<()> {
    if let [one] = ltrans {
        std::fs::copy(one, out)?;
        return Ok(());
    }
    let result = Command::new("ld")
        .args(["-r", "--unique", "-o"])
        .arg(out)
        .args(ltrans)
        .output()?;
    if result.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ld -r of {} ltrans object(s) failed: {}",
            ltrans.len(),
            String::from_utf8_lossy(&result.stderr).trim()
        )))
    }
}
