//! The kernel backend of hotsplice: a live patch for the running Linux kernel, as a standard
//! livepatch module built from the same object diff as user-space patches.
//!
//! - [`kallsyms`] reads the kernel's symbols and computes livepatch's `sympos`.
//! - [`module`] writes the patch object (the changed functions, what they carry, the kernel
//!   tables they own) and the C file that registers it with livepatch.
//! - [`includes`] finds the translation units a changed header reaches.
//! - [`kbuild`] prepares a kernel tree, compiles translation units and links the module.
//! - [`klp`] rewrites the linked module's references to non-exported symbols into
//!   livepatch's relocation format.
//! - [`livepatch`] is the running kernel's side: [`livepatch::check_loadable`] checks a
//!   module file before it is loaded, then `load`, `wait`, `disable`, `unload` and `list` go
//!   through `finit_module`, `/sys/kernel/livepatch` and `delete_module`.
//!
//! ```no_run
//! use hotsplice_kernel::livepatch;
//! let path = std::path::Path::new("fix.ko");
//! let bytes = std::fs::read(path).unwrap();
//! let module = livepatch::check_loadable(path, &bytes, &livepatch::kernel_release()).unwrap();
//! livepatch::load(path).unwrap();
//! let stalled = livepatch::wait(&module.name, false, std::time::Duration::from_secs(60)).unwrap();
//! println!("{} tasks still run the old code", stalled.len());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod build;
pub mod includes;
pub mod kallsyms;
pub mod kbuild;
pub mod klp;
pub mod livepatch;
pub mod module;
pub mod runpre;

/// Why a kernel live patch cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input or output object is malformed.
    #[error("{0}")]
    Malformed(String),
    /// The patch needs something the kernel backend does not do.
    #[error("unsupported: {detail}")]
    Unsupported {
        /// The symbol or section concerned.
        symbol: String,
        /// Why.
        detail: String,
    },
    /// A symbol the patch references is not in the target kernel.
    #[error("symbol {name} (referenced from {object}) is not in the target kernel's symbols")]
    MissingSymbol {
        /// The symbol.
        name: String,
        /// The translation unit referencing it.
        object: String,
    },
    /// Several kernel symbols have the name and nothing says which one is meant.
    #[error(
        "symbol {name} (referenced from {object}) is ambiguous: {count} kernel symbols have that name and run-pre matching did not learn which one the code uses"
    )]
    Ambiguous {
        /// The symbol.
        name: String,
        /// The translation unit referencing it.
        object: String,
        /// How many kernel symbols share the name.
        count: usize,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The object is not built on its own by this configuration.
    #[error("{0} is not built on its own with this configuration")]
    NotBuilt(String),
    /// The diff applies but the patched source does not compile (bad input, not the
    /// environment: the pre build of the same files compiled).
    #[error("the patched source does not compile:\n{output}")]
    DiffDoesNotCompile {
        /// The end of the compiler's output.
        output: String,
    },
    /// A build command failed.
    #[error("{what} failed:\n{output}")]
    Command {
        /// What was being done.
        what: String,
        /// The end of its output.
        output: String,
    },
}
