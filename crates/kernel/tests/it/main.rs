//! Integration tests of hotsplice-kernel that need no kernel, no QEMU and no root: one binary,
//! one module per area.

/// The pure pieces on hand-written input: kallsyms, the include graph, the registration source.
mod pieces;
/// Run-pre matching on a stand-in vmlinux that gcc compiles and links at a kernel address.
mod runpre;
