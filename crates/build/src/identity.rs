//! The identity of a built binary: kind, GNU build-id, SHA-256, size.

use object::LittleEndian;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};

use hotsplice_bundle::{TargetIdentity, TargetKind, sha256_hex};

/// The identity of the binary `bytes` found at `path` (relative to the build tree). `None`
/// when it is not an x86-64 ELF executable or shared library.
pub fn identify(path: &str, bytes: &[u8]) -> Option<TargetIdentity> {
    let header = elf::FileHeader64::<LittleEndian>::parse(bytes).ok()?;
    let endian = LittleEndian;
    if header.e_machine(endian).0 != elf::EM_X86_64.0 {
        return None;
    }
    let kind = match header.e_type(endian).0 {
        t if t == elf::ET_EXEC.0 => TargetKind::Executable,
        t if t == elf::ET_DYN.0 => {
            // A PIE executable has an interpreter; a shared library does not.
            let segments = header.program_headers(endian, bytes).ok()?;
            if segments
                .iter()
                .any(|p| p.p_type(endian).0 == elf::PT_INTERP.0)
            {
                TargetKind::Executable
            } else {
                TargetKind::SharedLibrary
            }
        }
        _ => return None,
    };
    let mut build_id = None;
    if let Ok(sections) = header.sections(endian, bytes) {
        for section in sections.iter() {
            let Ok(Some(mut notes)) = section.notes(endian, bytes) else {
                continue;
            };
            while let Ok(Some(note)) = notes.next() {
                if note.name() == b"GNU" && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                    build_id = Some(hotsplice_bundle::hex::encode(note.desc()));
                }
            }
        }
    }
    Some(TargetIdentity {
        path: path.to_string(),
        kind,
        build_id,
        sha256: Some(sha256_hex(bytes)),
        size: Some(bytes.len() as u64),
    })
}
