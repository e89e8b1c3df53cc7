//! Integration tests of hotsplice-matcher: one binary, one module per area.

/// Whole binaries built by gcc: every function located, a changed byte refused.
mod linked;
/// `match_function` over hand-assembled code: one row per rewrite a linker or assembler makes
/// (and per difference that must be refused).
mod relaxations;
