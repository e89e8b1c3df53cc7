//! The hooks-and-shadows runtime of `hotsplice.h`: its state (`__hotsplice_runtime`) is placed
//! by hotsplice in the patch's writable memory, and hotsplice reads it (a hook's veto reason,
//! the shadow counters). The layout here is the C header's `struct hotsplice_runtime`.

/// The symbol the header's code refers to.
pub const SYMBOL: &str = "__hotsplice_runtime";

/// `HOTSPLICE_RUNTIME_MAGIC`, the first word of the state.
pub const MAGIC: u64 = 0x3130_3054_5253_5348;

/// Bytes reserved for the state and its shadow arena (anonymous memory: only the pages the
/// patch touches are ever allocated).
pub const SIZE: u64 = (16 << 20) + (16 << 10);

/// Offset of the counters `used` (bytes of the arena handed out), `live` (shadows allocated
/// and not freed) and `allocations` (every allocation so far), three words in that order.
pub const USED: u64 = 24;
/// Offset and size of `veto` (a pre hook's reason).
pub const VETO: u64 = 48;
/// Size of `veto`.
pub const VETO_LEN: usize = 256;

/// Whether a bundle's code uses the runtime.
pub fn used_by(objects: &[hotsplice_bundle::ObjectPatch]) -> bool {
    objects.iter().any(|o| {
        o.pieces.iter().any(|p| {
            p.relocs.iter().any(|r| {
                matches!(&r.target, hotsplice_bundle::Link::Symbol { symbol } if symbol.name == SYMBOL)
            })
        })
    })
}

/// The text of a NUL-terminated buffer.
pub fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The runtime's counters, read inside a stop.
pub fn stats(stopped: &mut hotsplice_ptrace::Stopped, at: u64) -> Option<crate::ShadowStats> {
    let mut buf = [0u8; 24];
    stopped.read(at + USED, &mut buf).ok()?;
    let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some(crate::ShadowStats {
        arena_used: word(0),
        live: word(1),
        allocations: word(2),
    })
}
