//! Tables of fixed-size entries that describe code: the Linux kernel's "special sections".
//!
//! The kernel's build (and objtool) records facts about instructions in side tables — an
//! exception-table entry per user access, an ORC unwind entry per stack-layout change, a
//! return site per `jmp __x86_return_thunk`, an alternative per patchable instruction. Every
//! entry belongs to the function its first relocation points into (its *owner*). Such a
//! section holds no symbol, so without this table the diff could not attribute a change in it;
//! with it, entries follow their owner: a patch carries the entries of the functions it
//! carries, and no others.
//!
//! The sizes are those of Linux 6.1 on x86-64 (`struct alt_instr`, `struct bug_entry` with
//! relative pointers and `DEBUG_BUGVERBOSE`, `struct exception_table_entry`,
//! `struct jump_entry`, `struct paravirt_patch_site`, `struct static_call_site`, ORC).

/// One kind of table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableKind {
    /// The section name.
    pub name: &'static str,
    /// Size of one entry in bytes.
    pub entry: u64,
    /// Offset, inside an entry, of the relocated field that points at the owning code.
    pub owner: u64,
    /// A section whose entries are parallel to this one's (same index, this entry size),
    /// without relocations: `.orc_unwind` next to `.orc_unwind_ip`.
    pub parallel: Option<(&'static str, u64)>,
    /// The kernel resolves a key of these entries when the module is loaded, before a
    /// livepatch's own relocations are applied: the key must be an exported symbol.
    pub key_at_load: Option<u64>,
}

const fn table(name: &'static str, entry: u64, owner: u64) -> TableKind {
    TableKind {
        name,
        entry,
        owner,
        parallel: None,
        key_at_load: None,
    }
}

/// The tables known to the diff.
pub const TABLES: &[TableKind] = &[
    table("__ex_table", 12, 0),
    table("__bug_table", 12, 0),
    table(".altinstructions", 12, 0),
    table(".return_sites", 4, 0),
    table(".retpoline_sites", 4, 0),
    table(".call_sites", 4, 0),
    table(".ibt_endbr_seal", 4, 0),
    table(".smp_locks", 4, 0),
    table("__mcount_loc", 8, 0),
    table(".parainstructions", 16, 0),
    TableKind {
        key_at_load: Some(8),
        ..table("__jump_table", 16, 0)
    },
    TableKind {
        key_at_load: Some(4),
        ..table(".static_call_sites", 8, 0)
    },
    TableKind {
        parallel: Some((".orc_unwind", 6)),
        ..table(".orc_unwind_ip", 4, 0)
    },
];

/// The table a section named `name` is, if any.
pub fn table_of(name: &str) -> Option<&'static TableKind> {
    TABLES.iter().find(|t| t.name == name)
}

/// Whether a section named `name` is a table or the parallel part of one.
pub fn is_table_section(name: &str) -> bool {
    TABLES
        .iter()
        .any(|t| t.name == name || t.parallel.is_some_and(|(p, _)| p == name))
}

/// Sections that never reach memory (the linker discards them): `.discard.*`.
pub fn is_discarded(name: &str) -> bool {
    name.starts_with(".discard.") || name == ".discard"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(table_of("__ex_table").map(|t| t.entry), Some(12));
        assert!(is_table_section(".orc_unwind"));
        assert!(is_table_section(".orc_unwind_ip"));
        assert!(!is_table_section(".rodata"));
        assert!(is_discarded(".discard.addressable"));
        assert!(!is_discarded(".discarded"));
    }
}
