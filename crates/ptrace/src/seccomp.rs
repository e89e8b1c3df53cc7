//! What a thread's seccomp filters would do with a system call hotsplice is about to run in it.
//!
//! A program may forbid `mmap` (or kill itself on it) with seccomp; a call injected into such a
//! program would kill it or fail obscurely. Before injecting, hotsplice reads the thread's
//! filters (`PTRACE_SECCOMP_GET_FILTER`) and runs them here — a classic-BPF interpreter over the
//! `seccomp_data` of the call — taking the most restrictive action over all filters, as the
//! kernel does. [`evaluate`] is pure; [`filters`] reads them from a stopped thread.

use nix::errno::Errno;

/// One classic-BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// What the filters decide for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed (possibly logged).
    Allow,
    /// The call fails with this error number without running.
    Errno(u16),
    /// The thread or process is killed.
    Kill,
    /// `SIGSYS` is sent to the thread.
    Trap,
    /// A tracer (or a user-space supervisor) would be asked; without one the call fails.
    Delegated,
    /// The filter could not be evaluated here.
    Unknown,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allow => write!(f, "allow"),
            Verdict::Errno(e) => write!(f, "deny with {}", Errno::from_raw(i32::from(*e))),
            Verdict::Kill => write!(f, "kill the process"),
            Verdict::Trap => write!(f, "send SIGSYS"),
            Verdict::Delegated => write!(f, "defer to a supervisor"),
            Verdict::Unknown => write!(f, "do something hotsplice cannot evaluate"),
        }
    }
}

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The `seccomp_data` of a call: number, architecture, instruction pointer (after the
/// `syscall` instruction) and arguments.
pub fn seccomp_data(nr: i64, ip: u64, args: [u64; 6]) -> [u8; 64] {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&(nr as i32).to_le_bytes());
    data[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
    data[8..16].copy_from_slice(&ip.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    data
}

/// Runs one filter over `data`; its return value, or `None` when it does something a
/// seccomp filter cannot (the kernel would not have loaded it).
pub fn run(program: &[Insn], data: &[u8; 64]) -> Option<u32> {
    let mut a: u32 = 0;
    let mut x: u32 = 0;
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let load = |offset: u32| -> Option<u32> {
        let at = offset as usize;
        let word = data.get(at..at.checked_add(4)?)?;
        at.is_multiple_of(4)
            .then(|| u32::from_le_bytes(word.try_into().expect("4 bytes")))
    };
    // Every jump goes forward, so a program ends within its length.
    for _ in 0..=program.len() {
        let insn = *program.get(pc)?;
        pc += 1;
        let src = if insn.code & 0x08 != 0 { x } else { insn.k };
        match insn.code & 0x07 {
            // BPF_LD
            0x00 => match insn.code & 0xe0 {
                0x00 => a = insn.k,        // BPF_IMM
                0x20 => a = load(insn.k)?, // BPF_ABS (words only)
                0x40 => a = load(x.checked_add(insn.k)?)?,
                0x60 => a = *mem.get(insn.k as usize)?,
                0x80 => a = 64, // BPF_LEN
                _ => return None,
            },
            // BPF_LDX
            0x01 => match insn.code & 0xe0 {
                0x00 => x = insn.k,
                0x60 => x = *mem.get(insn.k as usize)?,
                0x80 => x = 64,
                _ => return None,
            },
            0x02 => *mem.get_mut(insn.k as usize)? = a,
            0x03 => *mem.get_mut(insn.k as usize)? = x,
            // BPF_ALU
            0x04 => {
                a = match insn.code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 => a.checked_div(src)?,
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 => a.checked_rem(src)?,
                    0xa0 => a ^ src,
                    _ => return None,
                }
            }
            // BPF_JMP
            0x05 => {
                let taken = match insn.code & 0xf0 {
                    0x00 => {
                        pc = pc.checked_add(insn.k as usize)?;
                        continue;
                    }
                    0x10 => a == src,
                    0x20 => a > src,
                    0x30 => a >= src,
                    0x40 => a & src != 0,
                    _ => return None,
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            // BPF_RET
            0x06 => {
                return match insn.code & 0x18 {
                    0x00 => Some(insn.k),
                    0x10 => Some(a),
                    _ => None,
                };
            }
            // BPF_MISC
            _ => match insn.code & 0xf8 {
                0x00 => x = a,
                0x80 => a = x,
                _ => return None,
            },
        }
    }
    None
}

/// The verdict of a set of filters (the kernel runs them all and keeps the most restrictive
/// action: a lower signed action value wins).
pub fn evaluate(filters: &[Vec<Insn>], data: &[u8; 64]) -> Verdict {
    const ALLOW: u32 = 0x7fff_0000;
    let action = |ret: u32| (ret & 0xffff_0000) as i32;
    let mut ret = ALLOW;
    for filter in filters {
        let Some(cur) = run(filter, data) else {
            return Verdict::Unknown;
        };
        if action(cur) < action(ret) {
            ret = cur;
        }
    }
    match ret & 0xffff_0000 {
        0x7fff_0000 | 0x7ffc_0000 => Verdict::Allow,
        0x0005_0000 => Verdict::Errno((ret & 0xffff) as u16),
        0x0003_0000 => Verdict::Trap,
        0x7ff0_0000 | 0x7fc0_0000 => Verdict::Delegated,
        0x8000_0000 | 0x0000_0000 => Verdict::Kill,
        _ => Verdict::Kill,
    }
}

/// Why a thread's filters could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFailure {
    /// The kernel has no `PTRACE_SECCOMP_GET_FILTER` (`CONFIG_CHECKPOINT_RESTORE` off).
    Unsupported,
    /// hotsplice may not read them (needs `CAP_SYS_ADMIN`, and not itself under seccomp).
    NotPermitted,
    /// Another error.
    Other(Errno),
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// Reads every filter of a ptrace-stopped thread, most recently installed first.
pub fn filters(tid: i32) -> Result<Vec<Vec<Insn>>, ReadFailure> {
    let mut out = Vec::new();
    for index in 0usize.. {
        // SAFETY: with a null buffer, PTRACE_SECCOMP_GET_FILTER only returns the length of
        // filter `index` of the stopped tracee `tid`; nothing is written.
        let len = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as *mut libc::c_void,
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if len < 0 {
            return match Errno::last() {
                Errno::ENOENT | Errno::EMEDIUMTYPE => Ok(out),
                Errno::EINVAL | Errno::EIO => Err(ReadFailure::Unsupported),
                Errno::EACCES | Errno::EPERM => Err(ReadFailure::NotPermitted),
                other => Err(ReadFailure::Other(other)),
            };
        }
        let mut raw = vec![
            libc::sock_filter {
                code: 0,
                jt: 0,
                jf: 0,
                k: 0
            };
            len as usize
        ];
        // SAFETY: the buffer holds exactly `len` `sock_filter`s, the length the kernel just
        // reported for this filter (filters are immutable once installed).
        let got = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as *mut libc::c_void,
                raw.as_mut_ptr().cast::<libc::c_void>(),
            )
        };
        if got < 0 {
            return Err(ReadFailure::Other(Errno::last()));
        }
        raw.truncate(got as usize);
        out.push(
            raw.into_iter()
                .map(|i| Insn {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
        Insn {
            code: 0x15,
            jt,
            jf,
            k,
        }
    }

    /// `if (nr == NR) return ACTION; return ALLOW;` with an architecture check first.
    fn deny(nr: u32, action: u32) -> Vec<Insn> {
        vec![
            stmt(0x20, 4), // ld [arch]
            jeq(AUDIT_ARCH_X86_64, 1, 0),
            stmt(0x06, 0), // ret KILL_THREAD
            stmt(0x20, 0), // ld [nr]
            jeq(nr, 0, 1),
            stmt(0x06, action),
            stmt(0x06, 0x7fff_0000),
        ]
    }

    #[test]
    fn verdicts() {
        let mmap = seccomp_data(9, 0x1000, [0; 6]);
        let write = seccomp_data(1, 0x1000, [0; 6]);
        let eperm = deny(9, 0x0005_0001);
        assert_eq!(
            evaluate(std::slice::from_ref(&eperm), &mmap),
            Verdict::Errno(1)
        );
        assert_eq!(
            evaluate(std::slice::from_ref(&eperm), &write),
            Verdict::Allow
        );
        let kill = deny(9, 0x8000_0000);
        assert_eq!(
            evaluate(&[eperm.clone(), kill.clone()], &mmap),
            Verdict::Kill
        );
        assert_eq!(evaluate(&[kill, eperm], &write), Verdict::Allow);
        assert_eq!(evaluate(&[deny(9, 0x7ff0_0000)], &mmap), Verdict::Delegated);
        assert_eq!(evaluate(&[], &mmap), Verdict::Allow);
        // Arguments are visible: deny mmap with PROT_EXEC (args[2] & 4).
        let prot_exec = vec![
            stmt(0x20, 0),
            jeq(9, 0, 3),
            stmt(0x20, 32), // ld [args[2] low word]
            Insn {
                code: 0x45, // jset #4
                jt: 0,
                jf: 1,
                k: 4,
            },
            stmt(0x06, 0x0005_000d),
            stmt(0x06, 0x7fff_0000),
        ];
        let rx = seccomp_data(9, 0, [0, 4096, 5, 0, 0, 0]);
        let rw = seccomp_data(9, 0, [0, 4096, 3, 0, 0, 0]);
        assert_eq!(
            evaluate(std::slice::from_ref(&prot_exec), &rx),
            Verdict::Errno(13)
        );
        assert_eq!(evaluate(&[prot_exec], &rw), Verdict::Allow);
    }

    #[test]
    fn malformed_programs_are_unknown() {
        let data = seccomp_data(9, 0, [0; 6]);
        // Falls off the end.
        assert_eq!(evaluate(&[vec![stmt(0x20, 0)]], &data), Verdict::Unknown);
        // Reads beyond seccomp_data.
        assert_eq!(
            evaluate(&[vec![stmt(0x20, 64), stmt(0x06, 0x7fff_0000)]], &data),
            Verdict::Unknown
        );
        // Jumps out of the program.
        assert_eq!(evaluate(&[vec![jeq(9, 200, 200)]], &data), Verdict::Unknown);
        // Division by zero.
        assert_eq!(
            evaluate(&[vec![stmt(0x34, 0), stmt(0x06, 0)]], &data),
            Verdict::Unknown
        );
    }
}
