//! Run-pre matching: before hotsplice touches a running program, it proves that the code it
//! is about to replace is exactly the code the patch was built against — and, from the
//! relocation fields of that code, learns where the symbols it references live, which is how
//! static functions and variables are found in stripped binaries.
//!
//! - [`Image`] reads a linked binary's symbol tables, `.eh_frame` function starts and TLS
//!   segment.
//! - [`match_function`] compares pre-build code with the code at an address (read through the
//!   [`Memory`] callback: a live process, or a file in tests), instruction by instruction.
//! - [`locate`] finds each [`Wanted`] function (by name, by function start, by learnt
//!   address) and proves it.
//!
//! The crate is pure: it reads memory only through [`Memory`] and does no IO of its own.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod function;
mod image;
mod locate;

pub use function::{
    Learned, Learning, Matched, Memory, Mismatch, PreCode, PreReloc, match_function,
};
pub use image::{EhFrameSection, Fde, Image, ImageSymbol, TlsSegment, build_id, ranges_needed};
pub use locate::{Found, Via, Wanted, locate};

/// Why a binary cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The binary is malformed or not an x86-64 executable or shared library.
    #[error("cannot read the target binary: {0}")]
    Image(String),
}
