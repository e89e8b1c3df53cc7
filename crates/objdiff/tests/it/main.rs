//! Integration tests of hotsplice-objdiff: one binary, one module per area.

/// Golden fixture cases compiled by gcc at test time.
mod fixtures;
/// Malformed and foreign input: errors, never panics.
mod malformed;
/// No false positives on a real code base (Debian's nginx built twice).
mod nginx;
/// Patch sets: what is carried and what is linked.
mod patchset;
