//! GNU ld link maps (`-Wl,-Map=FILE`): which files and archive members a link really used.
//!
//! Pure: the map's text in, the inputs out. The shim asks every link that writes into the
//! build tree for a map; the builder reads it to know which objects of a static archive
//! reach the target (the linker pulls only the members that resolve a reference, or all of
//! them under `--whole-archive`).

use std::collections::BTreeSet;

/// What a link map says about a link's inputs (paths as the linker printed them, relative
/// to the directory the link ran in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkMap {
    /// Files the linker loaded (`LOAD path`): objects, archives, shared libraries, scripts.
    pub loaded: Vec<String>,
    /// Archive members the link included: (archive, member name).
    pub members: BTreeSet<(String, String)>,
}

/// Parses a map file's text.
pub fn parse(text: &str) -> LinkMap {
    let mut map = LinkMap::default();
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("LOAD ") {
            let path = path.trim();
            if !path.is_empty() && !map.loaded.iter().any(|p| p == path) {
                map.loaded.push(path.to_string());
            }
            continue;
        }
        for token in line.split_whitespace() {
            if let Some(member) = archive_member(token) {
                map.members.insert(member);
            }
        }
    }
    map
}

/// `dir/libx.a(member.o)` → (`dir/libx.a`, `member.o`).
fn archive_member(token: &str) -> Option<(String, String)> {
    let inner = token.strip_suffix(')')?;
    let open = inner.find(".a(")? + 2;
    let archive = &inner[..open];
    let member = &inner[open + 1..];
    if archive.len() <= 2 || member.is_empty() || member.contains('(') {
        return None;
    }
    Some((archive.to_string(), member.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_members() {
        let text = "\
Archive member included to satisfy reference by file (symbol)

./libab.a(a.o)                m.o (a)
openbsd-compat//libopenbsd-compat.a(bsd-misc.o)
                              ./libssh.a(misc.o) (strlcpy)

Discarded input sections

 .text          0x0000000000000000        0x0 m.o

LOAD /usr/lib/gcc/x86_64-linux-gnu/12/crtbeginS.o
LOAD m.o
LOAD ./libab.a
LOAD m.o
 .text.a        0x0000000000001134        0xb ./libab.a(a.o)
 .text.w        0x0000000000001140        0xb libw.a(w.o)
";
        let map = parse(text);
        assert_eq!(
            map.loaded,
            [
                "/usr/lib/gcc/x86_64-linux-gnu/12/crtbeginS.o",
                "m.o",
                "./libab.a"
            ]
        );
        let members: Vec<_> = map.members.iter().cloned().collect();
        assert_eq!(
            members,
            [
                ("./libab.a".to_string(), "a.o".to_string()),
                ("./libssh.a".to_string(), "misc.o".to_string()),
                ("libw.a".to_string(), "w.o".to_string()),
                (
                    "openbsd-compat//libopenbsd-compat.a".to_string(),
                    "bsd-misc.o".to_string()
                ),
            ]
        );
    }
}
