//! Is any thread running in, or due to return into, code about to be replaced (or unmapped)?
//!
//! Ksplice's conservative check: no thread's instruction pointer inside a range, and no word of
//! any thread's stack pointing into one. A word that merely looks like such an address makes
//! the check fail safe (retry later), never unsafe.

/// A code range that must be idle, with a name for messages.
#[derive(Debug, Clone)]
pub struct Range {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// The function (or region) it is.
    pub name: String,
}

/// One thread as the check sees it.
#[derive(Debug, Clone)]
pub struct ThreadView {
    /// Thread id.
    pub tid: i32,
    /// Instruction pointer.
    pub rip: u64,
    /// Return addresses found by unwinding.
    pub return_addresses: Vec<u64>,
    /// The part of its stack unwinding could not account for, scanned word by word.
    pub stack: Vec<u8>,
    /// Address of `stack[0]`.
    pub stack_start: u64,
}

/// Why the check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// The thread.
    pub tid: i32,
    /// The function (or region).
    pub function: String,
    /// `None`: the thread is executing it; `Some(0)`: a return address found by unwinding
    /// points into it; `Some(a)`: a stack word at `a` (scanned conservatively) does.
    pub stack_word_at: Option<u64>,
}

/// The first thread found busy in one of `ranges`, if any.
pub fn check(threads: &[ThreadView], ranges: &[Range]) -> Option<Busy> {
    let inside = |a: u64| ranges.iter().find(|r| a >= r.start && a < r.end);
    for t in threads {
        if let Some(r) = inside(t.rip) {
            return Some(Busy {
                tid: t.tid,
                function: r.name.clone(),
                stack_word_at: None,
            });
        }
    }
    for t in threads {
        if let Some(r) = t.return_addresses.iter().find_map(|&a| inside(a)) {
            return Some(Busy {
                tid: t.tid,
                function: r.name.clone(),
                stack_word_at: Some(0),
            });
        }
    }
    for t in threads {
        let skip = (8 - (t.stack_start % 8) as usize) % 8;
        for (i, word) in t
            .stack
            .get(skip..)
            .unwrap_or(&[])
            .chunks_exact(8)
            .enumerate()
        {
            let value = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if let Some(r) = inside(value) {
                return Some(Busy {
                    tid: t.tid,
                    function: r.name.clone(),
                    stack_word_at: Some(t.stack_start + skip as u64 + 8 * i as u64),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ip_and_stack_words() {
        let ranges = [Range {
            start: 0x1000,
            end: 0x1100,
            name: "f".into(),
        }];
        let idle = ThreadView {
            tid: 1,
            rip: 0x2000,
            return_addresses: vec![0x2100],
            stack: 0x3000u64.to_le_bytes().to_vec(),
            stack_start: 0x7000,
        };
        assert_eq!(check(std::slice::from_ref(&idle), &ranges), None);
        let running = ThreadView {
            rip: 0x1050,
            ..idle.clone()
        };
        assert_eq!(check(&[running], &ranges).unwrap().stack_word_at, None);
        let mut stack = 0u64.to_le_bytes().to_vec();
        stack.extend(0x10ffu64.to_le_bytes());
        let returning = ThreadView { stack, ..idle };
        assert_eq!(
            check(std::slice::from_ref(&returning), &ranges)
                .unwrap()
                .stack_word_at,
            Some(0x7008)
        );
        let unwound = ThreadView {
            return_addresses: vec![0x1010],
            stack: Vec::new(),
            ..returning
        };
        assert!(check(&[unwound], &ranges).is_some());
    }
}
