//! Patch series: the diffs of a quilt series (`debian/patches`), a series file, or a list.

use std::path::{Path, PathBuf};

use crate::Error;

/// The patches named by a quilt `series` file's text, in order (comments, blank lines and
/// patch options dropped).
pub fn parse_series(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The diffs of a series given as a directory (holding a `series` file, as `debian/patches`
/// does, or else every `*.patch`/`*.diff` in name order) or as a series file (its patches
/// are relative to its directory).
pub fn resolve(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let (dir, names) = if path.is_dir() {
        let series = path.join("series");
        if series.is_file() {
            let text = std::fs::read_to_string(&series).map_err(io)?;
            (path.to_path_buf(), parse_series(&text))
        } else {
            let mut names: Vec<String> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".patch") || n.ends_with(".diff"))
                .collect();
            names.sort();
            (path.to_path_buf(), names)
        }
    } else {
        let text = std::fs::read_to_string(path).map_err(io)?;
        (
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            parse_series(&text),
        )
    };
    if names.is_empty() {
        return Err(Error::DiffParse {
            path: path.to_path_buf(),
            message: "the series names no patch".to_string(),
        });
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quilt_series() {
        let text = "# packaging\n01-a.patch\n\n02-b.patch -p1 # comment\n  #03-c.patch\n";
        assert_eq!(parse_series(text), ["01-a.patch", "02-b.patch"]);
    }
}
