//! The object diff of hotsplice: which functions of a pre-patch / post-patch pair of
//! relocatable x86-64 ELF objects really changed, what is new, and what cannot be applied to
//! a running program, and why.
//!
//! The input is two `.o` files of the same translation unit, built by gcc with
//! `-ffunction-sections -fdata-sections` before and after a source patch. The crate is pure:
//! it takes bytes and returns a [`Report`]; it does no IO and never panics on malformed input.
//!
//! - [`diff_objects`] diffs one pair into an [`ObjectDiff`]: a [`FunctionDiff`] per function and
//!   a [`DataDiff`] per variable (each `unchanged`, `changed`, `new` or `removed`),
//!   [`StaticBinding`]s saying which existing function-local static a patched function keeps
//!   using, and [`Refusal`]s naming what cannot be applied live.
//! - [`Report`] gathers the pairs of a whole build tree.
//!
//! How two functions are compared: same size, same bytes outside relocation fields, and the
//! same relocations, where a relocation's target is compared *symbolically* — symbols through a
//! pre↔post correlation that looks through GCC's renumbering (`count.3`, `foo.constprop.1`),
//! section-relative references rewritten to the symbol they land in, string literals and
//! merged constants by content, jump tables recursively.
//!
//! ```no_run
//! let pre = std::fs::read("pre/foo.o").unwrap();
//! let post = std::fs::read("post/foo.o").unwrap();
//! let diff = hotsplice_objdiff::diff_objects("foo.o", Some(&pre), Some(&post)).unwrap();
//! for f in diff.functions.iter().filter(|f| f.status != hotsplice_objdiff::Status::Unchanged) {
//!     println!("{} {}", f.status, f.name);
//! }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod compare;
mod correlate;
mod diff;
mod dwarf;
pub mod elf;
mod error;
mod frames;
mod layout;
pub mod name;
pub mod patchset;
mod reference;
mod report;
pub mod table;

pub use diff::diff_objects;
pub use error::{Error, Side};
pub use name::CloneKind;
pub use patchset::{PatchSet, patch_objects};
pub use report::{
    DataDiff, DataKind, FunctionDiff, ObjectDiff, PostSym, PreSym, Refusal, RefusalKind, Report,
    StaticBinding, Status, UnknownRefusalKind,
};
