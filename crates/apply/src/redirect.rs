//! The jump written at an old function's entry.

use crate::Error;

/// `endbr64`: kept in place so indirect calls still land on it under IBT.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Where and what to write to send calls of a function to its new version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The function's entry.
    pub entry: u64,
    /// Where the jump goes (the entry, or just after its `endbr64`).
    pub site: u64,
    /// `jmp rel32` to the new version.
    pub jump: [u8; 5],
}

/// Plans the redirect of a function located at `entry` whose running code (`len` bytes,
/// proven equal to `pre_code`) has internal branch targets `branch_targets` (offsets).
pub fn plan(
    name: &str,
    entry: u64,
    pre_code: &[u8],
    len: u64,
    branch_targets: &[u64],
    new_address: u64,
) -> Result<Redirect, Error> {
    let offset = if pre_code.starts_with(&ENDBR64) { 4 } else { 0 };
    if len < offset + 5 {
        return Err(Error::TooShort {
            function: name.to_string(),
            len,
        });
    }
    if let Some(&target) = branch_targets
        .iter()
        .find(|&&t| t > offset && t < offset + 5)
    {
        return Err(Error::BranchIntoEntry {
            function: name.to_string(),
            offset: target,
        });
    }
    let site = entry + offset;
    let rel = new_address as i128 - (site as i128 + 5);
    let Ok(rel) = i32::try_from(rel) else {
        return Err(Error::OutOfRange {
            symbol: name.to_string(),
            address: new_address,
            from: site,
        });
    };
    let mut jump = [0xe9, 0, 0, 0, 0];
    jump[1..].copy_from_slice(&rel.to_le_bytes());
    Ok(Redirect { entry, site, jump })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_encoding_and_endbr() {
        let r = plan(
            "f",
            0x1000,
            &[0x55, 0x48, 0x89, 0xe5, 0x90, 0xc3],
            6,
            &[],
            0x2000,
        )
        .unwrap();
        assert_eq!(r.site, 0x1000);
        assert_eq!(r.jump, [0xe9, 0xfb, 0x0f, 0x00, 0x00]);
        let r = plan(
            "g",
            0x1000,
            &[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0xc3],
            9,
            &[],
            0x1000,
        )
        .unwrap();
        assert_eq!(r.site, 0x1004);
        assert_eq!(r.jump, [0xe9, 0xf7, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            plan("f", 0, &[0xc3], 1, &[], 0x10),
            Err(Error::TooShort { .. })
        ));
        assert!(matches!(
            plan(
                "f",
                0,
                &[0x31, 0xc0, 0xff, 0xc0, 0x75, 0xfc, 0xc3],
                7,
                &[2],
                0x10
            ),
            Err(Error::BranchIntoEntry { offset: 2, .. })
        ));
        assert!(matches!(
            plan("f", 0, &[0x90; 8], 8, &[], 1 << 40),
            Err(Error::OutOfRange { .. })
        ));
    }
}
