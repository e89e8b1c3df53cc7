//! Records are not trusted: before hotsplice writes bytes a record (state file, journal, or
//! patch-memory header) names back into a process, or unmaps memory a record names, it checks
//! them against the process itself. Original code must equal the bytes of the file the process
//! maps at that address; a jump must be a `jmp rel32` into patch memory that hotsplice made for
//! that patch (its header names the patch); a region to unmap must be exactly an anonymous
//! mapping that carries the patch's header or data tag. So a forged or corrupt record can at
//! worst be refused — never make hotsplice write foreign code into a process.

use hotsplice_ptrace::{Mapping, Process};

use crate::Error;
use crate::mapped;
use crate::state::{self, AppliedPatch, Region};

/// Why bytes or a region of a record were refused.
fn forged(pid: i32, patch: &str, detail: String) -> Error {
    Error::Forged {
        pid,
        patch: patch.to_string(),
        detail,
    }
}

/// Whether `region` is exactly one anonymous mapping of the process.
fn anonymous_exactly(maps: &[Mapping], region: &Region) -> bool {
    maps.iter().any(|m| {
        m.start == region.address && m.end == region.end() && m.inode == 0 && m.path.is_none()
    })
}

/// Checks that the regions of a patch are patch memory hotsplice made for it.
pub fn regions(process: &Process, maps: &[Mapping], patch: &AppliedPatch) -> Result<(), Error> {
    let pid = process.pid();
    for (i, region) in patch.regions.iter().enumerate() {
        if !anonymous_exactly(maps, region) {
            return Err(forged(
                pid,
                &patch.id,
                format!(
                    "{:#x}..{:#x} is not an anonymous mapping of its own",
                    region.address,
                    region.end()
                ),
            ));
        }
        let ok = if i == 0 {
            let mut head = vec![0u8; 4096.min(region.size as usize)];
            process.read(region.address, &mut head).is_ok()
                && state::header_id(&head).as_deref() == Some(patch.id.as_str())
        } else {
            let tag = state::data_tag(&patch.id);
            let mut head = vec![0u8; tag.len()];
            process.read(region.address, &mut head).is_ok() && head == tag
        };
        if !ok {
            return Err(forged(
                pid,
                &patch.id,
                format!(
                    "the memory at {:#x} does not carry {}'s header",
                    region.address, patch.id
                ),
            ));
        }
    }
    Ok(())
}

/// Where a `jmp rel32` at `site` lands, if `bytes` is one.
pub fn jump_target(site: u64, bytes: &[u8; 5]) -> Option<u64> {
    (bytes[0] == 0xe9).then(|| {
        let rel = i32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes"));
        (site as i64 + 5 + i64::from(rel)) as u64
    })
}

/// Checks the jump a record wants at `site`: into the code region of `patch`.
pub fn jump(pid: i32, patch: &AppliedPatch, site: u64, bytes: &[u8; 5]) -> Result<(), Error> {
    let code = patch.regions.first();
    match (jump_target(site, bytes), code) {
        (Some(to), Some(code))
            if to >= code.address + crate::link::HEADER_SIZE && to < code.end() =>
        {
            Ok(())
        }
        _ => Err(forged(
            pid,
            &patch.id,
            format!("the jump recorded for {site:#x} does not lead into its code"),
        )),
    }
}

/// Checks what a record says `site` held before `patch`: the bytes of the file mapped there,
/// or the jump of an earlier live patch (`below`), whose memory is checked too.
pub fn original(
    process: &Process,
    maps: &[Mapping],
    patch: &AppliedPatch,
    site: u64,
    bytes: &[u8; 5],
    below: &[AppliedPatch],
) -> Result<(), Error> {
    let pid = process.pid();
    if mapped::file_bytes(process, maps, site, 5).is_some_and(|file| file == bytes) {
        return Ok(());
    }
    for earlier in below {
        if earlier
            .functions
            .iter()
            .any(|f| f.site == site && f.jump.0 == *bytes)
            && jump(pid, earlier, site, bytes).is_ok()
            && regions(process, maps, earlier).is_ok()
        {
            return Ok(());
        }
    }
    Err(forged(
        pid,
        &patch.id,
        format!(
            "the bytes recorded as the original code at {site:#x} are neither the program's own nor an earlier patch's jump"
        ),
    ))
}

/// Checks that a record's hooks and runtime lie in the patch's own memory (a hook is called in
/// the target: it must be code hotsplice loaded for this patch).
pub fn hooks(pid: i32, patch: &AppliedPatch) -> Result<(), Error> {
    let inside = |a: u64, r: Option<&Region>| r.is_some_and(|r| a >= r.address && a < r.end());
    let code = patch.regions.first();
    if let Some(h) = patch.hooks.iter().find(|h| {
        !inside(h.address, code)
            || h.address < code.map_or(0, |c| c.address + crate::link::HEADER_SIZE)
    }) {
        return Err(forged(
            pid,
            &patch.id,
            format!("its hook at {:#x} is not in its code", h.address),
        ));
    }
    if let Some(rt) = patch.runtime
        && !patch.regions.iter().any(|r| inside(rt, Some(r)))
    {
        return Err(forged(
            pid,
            &patch.id,
            format!("its runtime state at {rt:#x} is not in its memory"),
        ));
    }
    Ok(())
}
