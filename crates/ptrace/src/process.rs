//! A process seen through `/proc`: threads, memory map, memory, signal and seccomp state, and
//! the other processes that share its address space.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::Error;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Offset in the mapped file.
    pub offset: u64,
    /// Device of the mapped file (major, minor).
    pub dev: (u32, u32),
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// The mapped file, or a pseudo name (`[stack]`, `[heap]`), if any.
    pub path: Option<String>,
}

/// Parses the text of `/proc/PID/maps`. Lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?.as_bytes();
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let dev = fields.next()?.split_once(':')?;
            let dev = (
                u32::from_str_radix(dev.0, 16).ok()?,
                u32::from_str_radix(dev.1, 16).ok()?,
            );
            let inode = fields.next()?.parse().ok()?;
            let rest: Vec<&str> = fields.collect();
            let path = (!rest.is_empty()).then(|| rest.join(" "));
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                read: perms.first() == Some(&b'r'),
                write: perms.get(1) == Some(&b'w'),
                exec: perms.get(2) == Some(&b'x'),
                offset,
                dev,
                inode,
                path,
            })
        })
        .collect()
}

/// A thread's signal state, from `/proc/PID/task/TID/status` (bit `n - 1` is signal `n`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalState {
    /// Pending for the thread.
    pub pending: u64,
    /// Pending for the whole process.
    pub shared_pending: u64,
    /// Blocked by the thread.
    pub blocked: u64,
    /// Ignored (`SIG_IGN`).
    pub ignored: u64,
    /// Caught (a handler is installed).
    pub caught: u64,
}

impl SignalState {
    /// Parses the `Sig*`/`ShdPnd` lines of a status file.
    pub fn parse(status: &str) -> SignalState {
        let mut state = SignalState::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(mask) = u64::from_str_radix(value.trim(), 16) else {
                continue;
            };
            match key {
                "SigPnd" => state.pending = mask,
                "ShdPnd" => state.shared_pending = mask,
                "SigBlk" => state.blocked = mask,
                "SigIgn" => state.ignored = mask,
                "SigCgt" => state.caught = mask,
                _ => {}
            }
        }
        state
    }

    /// Whether a signal that is pending and not blocked would run a handler or stop the
    /// thread — either of which makes an interrupted `epoll_wait`-like call return `EINTR`
    /// in a run without any tracer.
    pub fn would_interrupt(&self) -> bool {
        let deliverable = (self.pending | self.shared_pending) & !self.blocked;
        (0..64).any(|bit| deliverable & (1 << bit) != 0 && interrupts(bit + 1, self))
    }
}

/// Whether delivering signal `signal` interrupts a blocking call (a handler runs, or the
/// default action stops or kills), given the dispositions in `state`. Ignored signals, and
/// those whose default action is to ignore them, do not.
pub fn interrupts(signal: u32, state: &SignalState) -> bool {
    let bit = 1u64 << (signal - 1);
    if state.caught & bit != 0 {
        return true;
    }
    if state.ignored & bit != 0 {
        return false;
    }
    // Default action "ignore": SIGCHLD (17), SIGCONT (18), SIGURG (23), SIGWINCH (28).
    !matches!(signal, 17 | 18 | 23 | 28)
}

/// A running process, identified by its pid, and pinned to its address space: `/proc/PID/mem`
/// is opened once, when the process is opened, and every read and write goes through that
/// handle. A handle refers to the address space it was opened on, so after the program
/// `exec`s (or exits) every access fails — hotsplice can never write into a program other than
/// the one it matched. [`Process::check_same`] tells which happened.
///
/// A process whose main thread has exited (`pthread_exit` in `main`) while other threads run
/// is opened through one of the live threads (`/proc/PID/task/TID`): the main thread's own
/// entries no longer show the address space.
#[derive(Debug, Clone)]
pub struct Process {
    pid: i32,
    /// `/proc/PID`, or `/proc/PID/task/TID` of a live thread when the main thread has exited.
    base: PathBuf,
    mem: Arc<File>,
}

fn state_letter(status: &str) -> char {
    status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .and_then(|s| s.trim().chars().next())
        .unwrap_or('?')
}

impl Process {
    /// Opens a process, refusing what cannot be live-patched: a pid that does not exist, a
    /// zombie, a kernel thread.
    pub fn new(pid: i32) -> Result<Process, Error> {
        if pid <= 0 {
            return Err(Error::InvalidPid { pid });
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|_| Error::NoSuchProcess { pid })?;
        if status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .is_some_and(|t| t.trim() != pid.to_string())
        {
            return Err(Error::NotAProcess {
                tid: pid,
                pid: status
                    .lines()
                    .find_map(|l| l.strip_prefix("Tgid:"))
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0),
            });
        }
        let mut base = PathBuf::from(format!("/proc/{pid}"));
        if matches!(state_letter(&status), 'Z' | 'X') {
            // The main thread may have exited while others still run.
            match Process::live_thread(pid) {
                Some(tid) => base = PathBuf::from(format!("/proc/{pid}/task/{tid}")),
                None => return Err(Error::Zombie { pid }),
            }
        }
        // Kernel threads have no memory map and no executable.
        let maps = std::fs::read_to_string(base.join("maps")).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                Error::PermissionDenied {
                    pid,
                    what: "read the memory map".into(),
                }
            } else {
                Error::NoSuchProcess { pid }
            }
        })?;
        if maps.trim().is_empty() {
            return Err(Error::KernelThread { pid });
        }
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(base.join("mem"))
            .or_else(|_| File::open(base.join("mem")))
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    Error::PermissionDenied {
                        pid,
                        what: "open the memory".into(),
                    }
                } else {
                    Error::NoSuchProcess { pid }
                }
            })?;
        Ok(Process {
            pid,
            base,
            mem: Arc::new(mem),
        })
    }

    /// A thread of `pid` that has not exited.
    pub(crate) fn live_thread(pid: i32) -> Option<i32> {
        let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut tids: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        tids.into_iter().find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .is_ok_and(|s| !matches!(state_letter(&s), 'Z' | 'X'))
        })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The thread ids, from `/proc/PID/task`.
    pub fn threads(&self) -> Result<Vec<i32>, Error> {
        let dir = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .map_err(|_| Error::NoSuchProcess { pid: self.pid })?;
        let mut tids: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        Ok(tids)
    }

    /// The memory map.
    pub fn maps(&self) -> Result<Vec<Mapping>, Error> {
        let text = std::fs::read_to_string(self.base.join("maps"))
            .map_err(|_| Error::NoSuchProcess { pid: self.pid })?;
        Ok(parse_maps(&text))
    }

    /// The executable's path, as the kernel reports it (`/proc/PID/exe`).
    pub fn exe(&self) -> Result<PathBuf, Error> {
        std::fs::read_link(self.base.join("exe"))
            .map_err(|_| Error::NoSuchProcess { pid: self.pid })
    }

    /// The process's command name (`/proc/PID/comm`).
    pub fn comm(&self) -> String {
        comm_of(self.pid)
    }

    /// The file behind a mapping (through `/proc/PID/map_files`, else its path), read where
    /// `needed` asks: a buffer as long as the file, zero elsewhere. `needed` is shown what has
    /// been read so far and answers the byte ranges it wants; reading ends when it wants nothing
    /// new (or after eight rounds). What is never read costs neither a read nor memory: the
    /// buffer is allocated zeroed, so its untouched pages are never faulted in.
    pub fn mapped_file_parts(
        &self,
        mapping: &Mapping,
        needed: impl Fn(&[u8]) -> Vec<std::ops::Range<usize>>,
    ) -> Result<Vec<u8>, Error> {
        let (file, failed) = self.open_mapped(mapping)?;
        let len = usize::try_from(file.metadata().map_err(&failed)?.len()).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; len];
        let mut read: Vec<std::ops::Range<usize>> = Vec::new();
        for _ in 0..8 {
            let wanted: Vec<_> = needed(&buf)
                .into_iter()
                .map(|r| r.start.min(len)..r.end.min(len))
                .filter(|r| {
                    r.start < r.end && !read.iter().any(|d| d.start <= r.start && r.end <= d.end)
                })
                .collect();
            if wanted.is_empty() {
                break;
            }
            for r in wanted {
                file.read_exact_at(&mut buf[r.clone()], r.start as u64)
                    .map_err(&failed)?;
                read.push(r);
            }
        }
        Ok(buf)
    }

    /// `len` bytes at `offset` of the file behind a mapping (through `/proc/PID/map_files`,
    /// else its path).
    pub fn mapped_file_range(
        &self,
        mapping: &Mapping,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, Error> {
        let (file, failed) = self.open_mapped(mapping)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(failed)?;
        Ok(buf)
    }

    /// The file behind a mapping, through `/proc/PID/map_files` (the file the process mapped,
    /// even if replaced on disk since), else its path; with the error for a failed access to
    /// it.
    fn open_mapped(
        &self,
        mapping: &Mapping,
    ) -> Result<(File, impl Fn(std::io::Error) -> Error + use<>), Error> {
        let by_range = format!(
            "/proc/{}/map_files/{:x}-{:x}",
            self.pid, mapping.start, mapping.end
        );
        let path = PathBuf::from(mapping.path.clone().unwrap_or_default());
        let failed = move |source| Error::File {
            path: path.clone(),
            source,
        };
        let file = File::open(&by_range)
            .or_else(|_| File::open(mapping.path.as_deref().unwrap_or_default()))
            .map_err(&failed)?;
        Ok((file, failed))
    }

    /// Writes process memory while it runs — only for memory the program does not use yet
    /// (fresh patch memory); live code is changed through
    /// [`Stopped::write`](crate::Stopped::write).
    pub fn write(&self, address: u64, data: &[u8]) -> Result<(), Error> {
        self.mem
            .write_all_at(data, address)
            .map_err(|source| self.memory_error(address, data.len(), source))
    }

    /// The pinned memory handle (shared with [`Stopped`](crate::Stopped)).
    pub(crate) fn mem(&self) -> &Arc<File> {
        &self.mem
    }

    /// Whether the address space this process was opened on is still its address space:
    /// `Replaced` after an `exec`, `NoSuchProcess` after an exit.
    pub fn check_same(&self) -> Result<(), Error> {
        // Address 0 is never mapped: a live address space answers EIO; one that is gone (the
        // handle keeps only a dead reference) reads as end-of-file.
        let mut byte = [0u8; 1];
        match self.mem.read_at(&mut byte, 0) {
            Ok(0) => {
                if std::fs::metadata(format!("/proc/{}/task", self.pid)).is_ok()
                    && Process::live_thread(self.pid).is_some()
                {
                    Err(Error::Replaced { pid: self.pid })
                } else {
                    Err(Error::NoSuchProcess { pid: self.pid })
                }
            }
            _ => Ok(()),
        }
    }

    /// The error for a failed access at `address`: the process exec'd or exited, or the
    /// memory is not there.
    pub(crate) fn memory_error(&self, address: u64, len: usize, source: std::io::Error) -> Error {
        match self.check_same() {
            Err(gone) => gone,
            Ok(()) => Error::Memory {
                pid: self.pid,
                address,
                len,
                source,
            },
        }
    }

    /// The process start time (clock ticks after boot, `/proc/PID/stat` field 22): with the
    /// pid, it identifies the process across pid reuse.
    pub fn start_time(&self) -> Result<u64, Error> {
        start_time_of(self.pid).ok_or(Error::NoSuchProcess { pid: self.pid })
    }

    /// Reads process memory.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.mem
            .read_exact_at(buf, address)
            .map_err(|source| self.memory_error(address, buf.len(), source))
    }

    /// The tracer of one of its threads, if another program traces it (a debugger, `strace`):
    /// (its pid, its command name).
    pub fn tracer(&self, tid: i32) -> Option<(i32, String)> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", self.pid)).ok()?;
        let tracer: i32 = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))?
            .trim()
            .parse()
            .ok()?;
        (tracer != 0 && tracer != std::process::id() as i32).then(|| (tracer, comm_of(tracer)))
    }

    /// A thread's seccomp mode: 0 none, 1 strict, 2 filter.
    pub fn seccomp_mode(&self, tid: i32) -> u32 {
        std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Seccomp:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// A thread's signal state.
    pub fn signal_state(&self, tid: i32) -> Option<SignalState> {
        std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", self.pid))
            .ok()
            .map(|s| SignalState::parse(&s))
    }

    /// A thread's scheduling state letter (`R` running, `S` sleeping, `D` uninterruptible,
    /// `T`/`t` stopped, `Z` zombie).
    pub fn thread_state(&self, tid: i32) -> char {
        self.thread_stat(tid).map_or('?', |(state, _)| state)
    }

    /// A thread's state letter (see [`Process::thread_state`]) and the CPU time it has used
    /// (user + system, in clock ticks).
    pub fn thread_stat(&self, tid: i32) -> Option<(char, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", self.pid)).ok()?;
        let (_, rest) = stat.rsplit_once(") ")?;
        let state = rest.chars().next()?;
        let mut fields = rest.split_whitespace().skip(11);
        let mut ticks = || fields.next()?.parse::<u64>().ok();
        let cpu = ticks().unwrap_or(0) + ticks().unwrap_or(0);
        Some((state, cpu))
    }

    /// Whether a thread is waiting in `vfork` (or `clone(CLONE_VFORK)`, as `posix_spawn`
    /// does) for its child to exec or exit: it cannot be stopped until then.
    pub fn vfork_waiter(&self, tid: i32) -> bool {
        if self.thread_state(tid) != 'D' {
            return false;
        }
        std::fs::read_to_string(format!("/proc/{}/task/{tid}/syscall", self.pid))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
            .is_some_and(|nr| matches!(nr, libc::SYS_clone | libc::SYS_vfork | libc::SYS_clone3))
    }

    /// A thread of this process waiting in `vfork`, if any (see [`Process::vfork_waiter`]).
    pub fn vforking(&self) -> Option<i32> {
        self.threads()
            .ok()?
            .into_iter()
            .find(|&tid| self.vfork_waiter(tid))
    }

    /// Every process that shares this process's address space (`clone(CLONE_VM)` without
    /// `CLONE_THREAD`, a `vfork` child before it execs), this one included, in pid order.
    /// Found with `kcmp(KCMP_VM)` over `/proc`; where the kernel has no `kcmp`, only this one.
    pub fn address_space_members(&self) -> Result<Vec<i32>, Error> {
        let mut members = vec![self.pid];
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Ok(members);
        };
        let me = std::process::id() as i32;
        for entry in entries.flatten() {
            let Some(other) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if other == self.pid || other == me {
                continue;
            }
            match crate::kcmp::same_vm(self.pid, other) {
                Some(true) => members.push(other),
                Some(false) => {}
                None if crate::kcmp::unsupported() => break,
                None => {}
            }
        }
        members.sort_unstable();
        Ok(members)
    }
}

/// The namespaces a process lives in, as far as reports need them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// Its PID namespace (the inode of `/proc/PID/ns/pid`).
    pub pid_ns: u64,
    /// Its mount namespace.
    pub mnt_ns: u64,
    /// Its pid inside its own PID namespace.
    pub inner_pid: i32,
}

impl Process {
    /// Its namespaces.
    pub fn namespaces(&self) -> Namespaces {
        namespaces_of(self.pid)
    }
}

/// The namespaces of a process (zeros where they cannot be read).
pub fn namespaces_of(pid: i32) -> Namespaces {
    let read = |path: String| -> Option<u64> {
        let link = std::fs::read_link(path).ok()?;
        let link = link.to_string_lossy().into_owned();
        link.split_once('[')?.1.strip_suffix(']')?.parse().ok()
    };
    // A process whose main thread has exited (`pthread_exit`) has no readable `ns/` of its
    // own: any live thread's is the process's.
    let ns = |kind: &str| {
        read(format!("/proc/{pid}/ns/{kind}"))
            .or_else(|| {
                std::fs::read_dir(format!("/proc/{pid}/task"))
                    .ok()?
                    .flatten()
                    .find_map(|t| {
                        read(format!(
                            "/proc/{pid}/task/{}/ns/{kind}",
                            t.file_name().to_string_lossy()
                        ))
                    })
            })
            .unwrap_or(0)
    };
    let inner_pid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last()?.parse().ok())
        })
        .unwrap_or(pid);
    Namespaces {
        pid_ns: ns("pid"),
        mnt_ns: ns("mnt"),
        inner_pid,
    }
}

/// The namespaces of this process (hotsplice itself).
pub fn own_namespaces() -> Namespaces {
    namespaces_of(std::process::id() as i32)
}

/// Every process id in `/proc` (threads excluded), in order.
pub fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// A process's memory map, without opening the process (for scanning the system).
pub fn maps_of(pid: i32) -> Option<Vec<Mapping>> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()
        .map(|t| parse_maps(&t))
}

/// The first `len` bytes (at most) of the file behind a mapping of process `pid`, read through
/// `/proc/PID/map_files` (the file the process maps, even if deleted or replaced on disk).
pub fn mapped_head(pid: i32, mapping: &Mapping, len: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let path = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    );
    let mut file = File::open(path).ok()?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    Some(buf)
}

/// A process's command name, or an empty string.
pub fn comm_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A process's start time (clock ticks after boot).
pub fn start_time_of(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The most recently created pid on the system (`/proc/loadavg`): unchanged between two
/// reads means no process or thread was created in between. `None` when the file is not the
/// kernel's (a container's `lxcfs` mounts its own over it, updated every few seconds).
pub fn last_pid() -> Option<i32> {
    static KERNELS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let kernels = *KERNELS.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &str| std::fs::metadata(p).map(|m| m.dev()).ok();
        dev("/proc/loadavg").is_some() && dev("/proc/loadavg") == dev("/proc/self/stat")
    });
    if !kernels {
        return None;
    }
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().nth(4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let maps = parse_maps(
            "55d0c0a00000-55d0c0a21000 r-xp 00002000 fd:01 131      /usr/sbin/my prog\n\
             7ffd1c3e0000-7ffd1c401000 rw-p 00000000 00:00 0          [stack]\n\
             7f0000000000-7f0000001000 ---p 00000000 00:00 0 \n",
        );
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].start, 0x55d0c0a00000);
        assert!(maps[0].exec && !maps[0].write);
        assert_eq!(maps[0].offset, 0x2000);
        assert_eq!((maps[0].dev, maps[0].inode), ((0xfd, 1), 131));
        assert_eq!(maps[0].path.as_deref(), Some("/usr/sbin/my prog"));
        assert_eq!(maps[1].path.as_deref(), Some("[stack]"));
        assert_eq!(maps[2].path, None);
    }

    #[test]
    fn signal_dispositions_decide_interruption() {
        let status = "SigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000200\n\
                      SigBlk:\t0000000000000000\nSigIgn:\t0000000000001000\n\
                      SigCgt:\t0000000000000200\n";
        let state = SignalState::parse(status);
        // SIGUSR1 (10) pending for the process, with a handler: interrupts.
        assert!(state.would_interrupt());
        // Blocked: does not.
        let blocked = SignalState {
            blocked: 0x200,
            ..state
        };
        assert!(!blocked.would_interrupt());
        // SIGPIPE (13) ignored, SIGCHLD (17) default-ignored: do not.
        assert!(!interrupts(13, &state));
        assert!(!interrupts(17, &state));
        // SIGTERM (15) with the default action: the process dies, which interrupts too.
        assert!(interrupts(15, &state));
    }
}
