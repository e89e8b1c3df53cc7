//! Unified diffs for hotsplice's two builders (user space and kernel): one parser, one printer,
//! one reverser, one way to apply a diff to a tree.
//!
//! - [`parse`] reads a unified diff into [`FileDiff`]s of [`Hunk`]s (a typed [`ParseError`]
//!   otherwise); [`render`] writes them back; [`reverse`] gives the diff that undoes them.
//! - [`with_line_directives`] inserts a `#line` directive after each line-shifting hunk of a
//!   patched C file, so `__LINE__` below it keeps its pre-patch value.
//! - [`apply`] runs GNU `patch` in a tree at the one strip-level rule ([`strip_level`]: the
//!   first of `-p1`, `-p0`, `-p2` whose dry run succeeds) and adds the `#line` directives.
//! - [`file_kind`] says what a path of a diff is to a build: source, documentation, or the
//!   build's own configuration.
//!
//! A leaf: it knows nothing of objects, bundles or kernels, and runs nothing but `patch`.
//!
//! ```no_run
//! use std::path::Path;
//! let text = std::fs::read_to_string("fix.patch").unwrap();
//! let files = hotsplice_srcpatch::parse(&text).unwrap();
//! let undo = hotsplice_srcpatch::render(&hotsplice_srcpatch::reverse(&files));
//! let patched = hotsplice_srcpatch::apply(Path::new("tree"), Path::new("fix.patch"), &files).unwrap();
//! println!("{} files patched; the reverse is\n{undo}", patched.len());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod apply;
mod line;
mod reverse;
mod unified;

pub use apply::{ApplyError, STRIP_LEVELS, apply, run_patch, strip_level, stripped};
pub use line::{is_c_like, with_line_directives};
pub use reverse::reverse;
pub use unified::{FileDiff, FileKind, Hunk, ParseError, file_kind, parse, render};
