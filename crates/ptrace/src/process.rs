//! A process seen through `/proc`: threads, memory map, memory.

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
            let _dev = fields.next()?;
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
                inode,
                path,
            })
        })
        .collect()
}

/// A running process, identified by its pid, and pinned to its address space: `/proc/PID/mem`
/// is opened once, when the process is opened, and every read and write goes through that
/// handle. A handle refers to the address space it was opened on, so after the program
/// `exec`s (or exits) every access fails — hotsplice can never write into a program other than
/// the one it matched. [`Process::check_same`] tells which happened.
#[derive(Debug, Clone)]
pub struct Process {
    pid: i32,
    mem: Arc<File>,
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
        let state = status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .map(str::trim)
            .unwrap_or("");
        if state.starts_with('Z') || state.starts_with('X') {
            return Err(Error::Zombie { pid });
        }
        // Kernel threads have no memory map and no executable.
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| {
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
            .open(format!("/proc/{pid}/mem"))
            .or_else(|_| File::open(format!("/proc/{pid}/mem")))
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
            mem: Arc::new(mem),
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
        let text = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map_err(|_| Error::NoSuchProcess { pid: self.pid })?;
        Ok(parse_maps(&text))
    }

    /// The executable's path, as the kernel reports it (`/proc/PID/exe`).
    pub fn exe(&self) -> Result<PathBuf, Error> {
        std::fs::read_link(format!("/proc/{}/exe", self.pid))
            .map_err(|_| Error::NoSuchProcess { pid: self.pid })
    }

    /// The process's command name (`/proc/PID/comm`).
    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The bytes of a mapped file, read through `/proc/PID/map_files` (so a file replaced on
    /// disk since the process mapped it is still the one read), else through its path.
    pub fn mapped_file(&self, mapping: &Mapping) -> Result<Vec<u8>, Error> {
        let by_range = format!(
            "/proc/{}/map_files/{:x}-{:x}",
            self.pid, mapping.start, mapping.end
        );
        if let Ok(bytes) = std::fs::read(&by_range) {
            return Ok(bytes);
        }
        let path = mapping.path.clone().unwrap_or_default();
        std::fs::read(&path).map_err(|source| Error::File {
            path: PathBuf::from(path),
            source,
        })
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
                    && Process::status_is_alive(self.pid)
                {
                    Err(Error::Replaced { pid: self.pid })
                } else {
                    Err(Error::NoSuchProcess { pid: self.pid })
                }
            }
            _ => Ok(()),
        }
    }

    fn status_is_alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("State:"))
                .is_some_and(|st| !st.trim().starts_with('Z') && !st.trim().starts_with('X'))
        })
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
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|_| Error::NoSuchProcess { pid: self.pid })?;
        // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        rest.split_whitespace()
            .nth(19)
            .and_then(|v| v.parse().ok())
            .ok_or(Error::NoSuchProcess { pid: self.pid })
    }

    /// Reads process memory.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.mem
            .read_exact_at(buf, address)
            .map_err(|source| self.memory_error(address, buf.len(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_maps;

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
        assert_eq!(maps[0].path.as_deref(), Some("/usr/sbin/my prog"));
        assert_eq!(maps[1].path.as_deref(), Some("[stack]"));
        assert_eq!(maps[2].path, None);
    }
}
