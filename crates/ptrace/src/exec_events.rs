//! New programs as they start: the kernel's process-event connector (netlink,
//! `NETLINK_CONNECTOR`, `CN_IDX_PROC`) reports every `exec` on the system, so `hotsplice watch`
//! can patch a process the moment it starts a program that an installed patch is for. Needs
//! `CAP_NET_ADMIN` (root).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::Error;

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;

/// A subscription to the kernel's exec events.
#[derive(Debug)]
pub struct ExecEvents {
    socket: OwnedFd,
}

fn os_error(what: &'static str) -> Error {
    let errno = nix::errno::Errno::last() as i32;
    // The kernel serves process events to the initial network namespace only.
    let own = std::fs::read_link("/proc/self/ns/net").ok();
    let init = std::fs::read_link("/proc/1/ns/net").ok();
    let hint = if own.is_some() && init.is_some() && own != init {
        "the kernel sends process events to the initial network namespace only, and this \
         hotsplice runs in another one: run watch in the host's network namespace"
    } else {
        "it needs root, and a kernel with CONFIG_PROC_EVENTS"
    };
    Error::Events { what, errno, hint }
}

impl ExecEvents {
    /// Subscribes.
    pub fn open() -> Result<ExecEvents, Error> {
        // SAFETY: socket() takes three integers and returns a new descriptor or -1.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(os_error("opening the process-event connector"));
        }
        // SAFETY: `fd` is a fresh descriptor this function owns from here on.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is a valid value of the C struct.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        address.nl_groups = CN_IDX_PROC;
        address.nl_pid = 0;
        // SAFETY: binds the socket to the address struct owned by this frame, of its size.
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const address).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(os_error("binding the process-event connector"));
        }
        // nlmsghdr + cn_msg + the operation.
        let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
        let mut message = Vec::with_capacity(total);
        message.extend((total as u32).to_ne_bytes());
        message.extend(3u16.to_ne_bytes()); // NLMSG_DONE
        message.extend(0u16.to_ne_bytes());
        message.extend(0u32.to_ne_bytes());
        message.extend(std::process::id().to_ne_bytes());
        message.extend(CN_IDX_PROC.to_ne_bytes());
        message.extend(CN_VAL_PROC.to_ne_bytes());
        message.extend(0u32.to_ne_bytes()); // seq
        message.extend(0u32.to_ne_bytes()); // ack
        message.extend(4u16.to_ne_bytes()); // len
        message.extend(0u16.to_ne_bytes()); // flags
        message.extend(PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: sends the bytes of `message`, which outlives the call.
        let sent = unsafe {
            libc::send(
                socket.as_raw_fd(),
                message.as_ptr().cast::<libc::c_void>(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(os_error("subscribing to exec events"));
        }
        Ok(ExecEvents { socket })
    }

    /// The processes that exec'd since the last call, waiting up to `timeout` for the first.
    pub fn next(&mut self, timeout: Duration) -> Result<Vec<i32>, Error> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Events {
                    hint: "the connection to the kernel's process events broke",
                    what: "waiting for exec events",
                    errno: e as i32,
                });
            }
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            // SAFETY: receives into `buf`, which holds `buf.len()` writable bytes.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            out.extend(parse(&buf[..n as usize]));
        }
        Ok(out)
    }
}

/// The pids of the exec events in one datagram (several netlink messages may be packed).
pub fn parse(mut bytes: &[u8]) -> Vec<i32> {
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let mut out = Vec::new();
    while let Some(len) = word(bytes, 0) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            break;
        }
        let message = &bytes[..len];
        let event = NLMSG_HDRLEN + CN_MSG_LEN;
        if word(message, NLMSG_HDRLEN) == Some(CN_IDX_PROC)
            && word(message, event) == Some(PROC_EVENT_EXEC)
            && let Some(tgid) = word(message, event + 20)
        {
            out.push(tgid as i32);
        }
        let aligned = len.div_ceil(4) * 4;
        bytes = bytes.get(aligned..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_events_are_parsed_from_packed_messages() {
        let message = |what: u32, tgid: u32| {
            let mut m = Vec::new();
            let len = NLMSG_HDRLEN + CN_MSG_LEN + 24;
            m.extend((len as u32).to_ne_bytes());
            m.extend([0u8; 12]);
            m.extend(CN_IDX_PROC.to_ne_bytes());
            m.extend(CN_VAL_PROC.to_ne_bytes());
            m.extend([0u8; 12]);
            m.extend(what.to_ne_bytes());
            m.extend(0u32.to_ne_bytes()); // cpu
            m.extend(0u64.to_ne_bytes()); // timestamp
            m.extend((tgid + 1).to_ne_bytes()); // pid (a thread)
            m.extend(tgid.to_ne_bytes());
            m
        };
        let mut both = message(PROC_EVENT_EXEC, 4242);
        both.extend(message(1, 77)); // a fork: not an exec
        both.extend(message(PROC_EVENT_EXEC, 4343));
        assert_eq!(parse(&both), vec![4242, 4343]);
        assert_eq!(parse(&both[..10]), Vec::<i32>::new());
    }
}
