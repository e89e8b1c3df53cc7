//! The errors of the object diff.

use std::fmt;

/// Which build an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The build before the patch.
    Pre,
    /// The build after the patch.
    Post,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Pre => "pre-patch object",
            Side::Post => "post-patch object",
        })
    }
}

/// Why an object could not be diffed. Malformed input is an error, never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not start with the ELF magic.
    #[error("not an ELF file")]
    NotElf,
    /// An ELF file for another machine or class.
    #[error("wrong architecture: {0}; hotsplice handles x86-64 only")]
    WrongArch(String),
    /// Not a relocatable object (`ET_REL`), e.g. a linked executable.
    #[error("not a relocatable object (e_type {0}); give the .o files of the build")]
    NotRelocatable(u16),
    /// A structural defect: bad offsets, indices out of range, truncated tables.
    #[error("malformed ELF: {0}")]
    Malformed(String),
    /// Well-formed but outside what hotsplice handles.
    #[error("unsupported object: {0}")]
    Unsupported(String),
    /// An error in one of the two objects of a pair.
    #[error("in the {side}")]
    InBuild {
        /// Which object.
        side: Side,
        /// What is wrong with it.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Attaches the build side to an error.
    pub fn in_build(self, side: Side) -> Error {
        Error::InBuild {
            side,
            source: Box::new(self),
        }
    }
}
