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
    /// Stopped inside a system call (blocked, or about to restart one): it will not leave a
    /// function by being let run for a moment.
    pub blocked: bool,
    /// Instruction pointer.
    pub rip: u64,
    /// Return addresses found by unwinding, innermost first.
    pub return_addresses: Vec<u64>,
    /// Unwinding reached the outermost frame (no conservative scan was needed).
    pub complete: bool,
    /// The part of its stack unwinding could not account for, scanned word by word.
    pub stack: Vec<u8>,
    /// Address of `stack[0]`.
    pub stack_start: u64,
}

/// How a thread is in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Its instruction pointer is in it.
    Executing,
    /// A return address found by unwinding points into it; `outer` frames lie beyond that one
    /// (a small number on a complete walk means the range is the thread's main function).
    Returning {
        /// Frames outside it.
        outer: usize,
        /// Whether the walk reached the outermost frame.
        complete: bool,
    },
    /// A stack word at this address (scanned conservatively) points into it.
    StackWord(u64),
}

/// Why the check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// The thread.
    pub tid: i32,
    /// The function (or region).
    pub function: String,
    /// How.
    pub how: How,
    /// The thread is blocked in a system call.
    pub blocked: bool,
}

impl Busy {
    /// Whether the range looks like the thread's main function (an event loop, `main`): it
    /// returns into it from one of its outermost frames.
    pub fn main_loop(&self) -> bool {
        matches!(
            self.how,
            How::Returning {
                outer,
                complete: true
            } if outer <= 3
        )
    }
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tid, function) = (self.tid, &self.function);
        match self.how {
            How::Executing => write!(f, "thread {tid} is executing {function}"),
            How::Returning { .. } if self.blocked => write!(
                f,
                "thread {tid} is blocked in a system call called from {function}"
            ),
            How::Returning { .. } => write!(f, "thread {tid} will return into {function}"),
            How::StackWord(at) => write!(
                f,
                "thread {tid} may return into {function} (stack word at {at:#x})"
            ),
        }
    }
}

/// The first thread found busy in one of `ranges`, if any.
pub fn check(threads: &[ThreadView], ranges: &[Range]) -> Option<Busy> {
    let inside = |a: u64| ranges.iter().find(|r| a >= r.start && a < r.end);
    let busy = |t: &ThreadView, r: &Range, how| Busy {
        tid: t.tid,
        function: r.name.clone(),
        how,
        blocked: t.blocked,
    };
    for t in threads {
        if let Some(r) = inside(t.rip) {
            return Some(busy(t, r, How::Executing));
        }
    }
    for t in threads {
        let n = t.return_addresses.len();
        if let Some((i, r)) = t
            .return_addresses
            .iter()
            .enumerate()
            .find_map(|(i, &a)| inside(a).map(|r| (i, r)))
        {
            return Some(busy(
                t,
                r,
                How::Returning {
                    outer: n - 1 - i,
                    complete: t.complete,
                },
            ));
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
                let at = t.stack_start + skip as u64 + 8 * i as u64;
                return Some(busy(t, r, How::StackWord(at)));
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
            blocked: false,
            rip: 0x2000,
            return_addresses: vec![0x2100],
            complete: false,
            stack: 0x3000u64.to_le_bytes().to_vec(),
            stack_start: 0x7000,
        };
        assert_eq!(check(std::slice::from_ref(&idle), &ranges), None);
        let running = ThreadView {
            rip: 0x1050,
            ..idle.clone()
        };
        assert_eq!(check(&[running], &ranges).unwrap().how, How::Executing);
        let mut stack = 0u64.to_le_bytes().to_vec();
        stack.extend(0x10ffu64.to_le_bytes());
        let returning = ThreadView { stack, ..idle };
        assert_eq!(
            check(std::slice::from_ref(&returning), &ranges)
                .unwrap()
                .how,
            How::StackWord(0x7008)
        );
        let unwound = ThreadView {
            return_addresses: vec![0x1010, 0x2000, 0x2100],
            complete: true,
            stack: Vec::new(),
            ..returning
        };
        let busy = check(&[unwound], &ranges).unwrap();
        assert_eq!(
            busy.how,
            How::Returning {
                outer: 2,
                complete: true
            }
        );
        assert!(busy.main_loop());
    }
}
