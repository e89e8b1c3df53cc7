//! Real processes stopped, inspected, changed and released.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hotsplice_ptrace::{
    AddressSpace, Error, PROT_EXEC, PROT_READ, Process, Realtime, Stopped, monotonic_ns,
};

/// `fixtures/targets/NAME.c` built into a file of this call's own: two tests building the same
/// fixture at once would run a file gcc is still writing.
fn fixture(name: &str) -> PathBuf {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ptrace");
    std::fs::create_dir_all(&out).unwrap();
    let exe = out.join(format!("{name}-{}", CALLS.fetch_add(1, Ordering::Relaxed)));
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/targets/{name}.c"));
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-pthread"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(status.success());
    exe
}

/// A page-aligned address 64 MiB below where `process` maps `exe`: free, for a test mapping.
fn below_executable(process: &Process, exe: &Path) -> u64 {
    let exe_map = process
        .maps()
        .unwrap()
        .into_iter()
        .find(|m| m.path.as_deref() == Some(exe.to_str().unwrap()))
        .unwrap();
    (exe_map.start - (64 << 20)) & !0xfff
}

struct Target {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Target {
    fn start(exe: &Path) -> Target {
        let mut child = Command::new(exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "{line}");
        // Let every thread reach its blocking call.
        std::thread::sleep(Duration::from_millis(300));
        Target { child, out }
    }

    fn finish(mut self) -> String {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"finish\n")
            .unwrap();
        let mut rest = String::new();
        for line in self.out.lines() {
            rest.push_str(&line.unwrap());
            rest.push('\n');
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "target failed: {rest}");
        rest
    }
}

#[test]
fn stop_inject_write_release_keeps_blocking_calls_intact() {
    let exe = fixture("blocking");
    let target = Target::start(&exe);
    let pid = target.child.id() as i32;
    let process = Process::new(pid).unwrap();
    assert_eq!(process.threads().unwrap().len(), 7);
    let mut space = AddressSpace::open(pid).unwrap();
    assert_eq!(space.pids(), [pid]);

    for _round in 0..5 {
        let rt = Realtime::raise();
        let before_stop = monotonic_ns();
        let mut stopped = Stopped::stop(&mut space, Duration::from_secs(2)).unwrap();
        assert_eq!(stopped.threads().len(), 7);
        assert!(
            stopped.threads().iter().filter(|t| t.in_syscall()).count() >= 5,
            "the blocked threads are seen inside their system calls"
        );
        // A system call inside the target: map a page near the executable and unmap it.
        let hint = below_executable(&process, &exe);
        let addr = stopped.mmap(hint, 4096, PROT_READ | PROT_EXEC).unwrap();
        assert_eq!(addr, hint);
        // Memory writes into a read-only executable mapping go through /proc/PID/mem.
        stopped.write(hint, &[0xc3, 0x90, 0x90, 0x90]).unwrap();
        let mut back = [0u8; 4];
        stopped.read(hint, &mut back).unwrap();
        assert_eq!(back, [0xc3, 0x90, 0x90, 0x90]);
        stopped.munmap(hint, 4096).unwrap();
        let blocked: Vec<i32> = stopped
            .threads()
            .iter()
            .filter(|t| !t.was_running())
            .map(|t| t.tid)
            .collect();
        let mut pause = stopped.release();
        let after_release = monotonic_ns();
        assert_eq!(pause.threads, 7);
        assert_eq!(pause.per_thread.len(), 7);
        assert!(pause.per_thread.iter().all(|&(_, d)| d <= pause.longest));
        // The stop's window lies between the clock read before the stop and after release.
        let (start, end) = pause.window.expect("a window");
        assert!(before_stop <= start && start <= end && end <= after_release);
        // Settling counts a running thread until it ran again: never less than until its
        // release; a blocked thread stays counted until its release.
        let released = pause.per_thread.clone();
        drop(rt);
        pause.settle(Duration::from_millis(50));
        for (&(tid, until_release), &(same, settled)) in released.iter().zip(&pause.per_thread) {
            assert_eq!(tid, same);
            if blocked.contains(&tid) {
                assert_eq!(settled, until_release, "blocked thread {tid}");
            } else {
                assert!(settled >= until_release, "running thread {tid}");
            }
        }
        assert_eq!(
            pause.longest,
            pause.per_thread.iter().map(|&(_, d)| d).max().unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = target.finish();
    assert!(report.contains("finished errors=0 spins=yes"), "{report}");
}

#[test]
fn a_thread_let_run_is_seen_anew_and_not_charged_for_its_run() {
    let exe = fixture("blocking");
    let target = Target::start(&exe);
    let pid = target.child.id() as i32;
    let mut space = AddressSpace::open(pid).unwrap();
    let mut stopped = Stopped::stop(&mut space, Duration::from_secs(2)).unwrap();
    let spinner = stopped
        .threads()
        .iter()
        .find(|t| !t.in_syscall())
        .map(|t| t.tid)
        .expect("the spinning thread");
    let blocked = stopped
        .threads()
        .iter()
        .find(|t| t.in_syscall() && t.tid != pid)
        .map(|t| t.tid)
        .expect("a blocked thread");
    let slice = Duration::from_millis(50);
    let top = |stopped: &Stopped| {
        stopped
            .threads()
            .iter()
            .find(|t| t.tid == spinner)
            .map(|t| (t.regs.rsp, t.stack_top.clone()))
            .unwrap()
    };
    for round in 0..3u64 {
        // Change a word of an outer frame (the spinner never returns there, so nothing reads
        // it meanwhile): the stack top seen after the run must hold the new value.
        let (rsp, before) = top(&stopped);
        assert!(before.len() >= 16);
        let at = rsp + before.len() as u64 - 8;
        let original: [u8; 8] = before[before.len() - 8..].try_into().unwrap();
        let marked = (u64::from_le_bytes(original) ^ (0x5a5a_0000 + round)).to_le_bytes();
        stopped.write(at, &marked).unwrap();
        assert!(stopped.let_run(spinner, slice).unwrap());
        let (rsp, after) = top(&stopped);
        let mut now = vec![0u8; after.len()];
        stopped.read(rsp, &mut now).unwrap();
        assert_eq!(after, now, "the stack top is read again after the run");
        let offset = at.checked_sub(rsp).expect("the spinner's frame stays") as usize;
        assert_eq!(after.get(offset..offset + 8), Some(&marked[..]));
        stopped.write(at, &original).unwrap();
    }
    let pause = stopped.release();
    let charged = |tid| {
        pause
            .per_thread
            .iter()
            .find(|&&(t, _)| t == tid)
            .map(|&(_, d)| d)
            .unwrap()
    };
    // Both were stopped over the same stretch; the spinner ran for three slices of it.
    assert!(
        charged(spinner) + slice * 2 < charged(blocked),
        "spinner {:?}, blocked {:?}",
        charged(spinner),
        charged(blocked)
    );
    let report = target.finish();
    assert!(report.contains("finished errors=0 spins=yes"), "{report}");
}

#[test]
fn refuses_what_cannot_be_patched() {
    assert!(matches!(Process::new(0), Err(Error::InvalidPid { pid: 0 })));
    assert!(matches!(
        Process::new(i32::MAX),
        Err(Error::NoSuchProcess { .. })
    ));
    // kthreadd is pid 2 on Linux.
    assert!(matches!(
        Process::new(2),
        Err(Error::KernelThread { pid: 2 })
    ));

    let mut zombie = Command::new("true").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = zombie.id() as i32;
    assert!(matches!(Process::new(pid), Err(Error::Zombie { .. })));
    zombie.wait().unwrap();
}

/// Kills the processes listed when dropped, so that a failing test leaves none behind.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn a_sharer_that_execs_after_being_listed_runs_no_system_call_for_us() {
    let exe = fixture("sharer_exec");
    // Without address randomisation (kept across exec), `sleep` maps libc where the main
    // process has it: a system call started at the sharer's instruction pointer would find
    // the same `syscall` bytes in the main process's memory, and run in the wrong process
    // without an error.
    let mut child = Command::new("setarch")
        .args(["x86_64", "-R"])
        .arg(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut cleanup = KillOnDrop(vec![pid]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let sharer: i32 = line
        .strip_prefix("ready ")
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    cleanup.0.push(sharer);
    let space = AddressSpace::open(pid).unwrap();
    assert_eq!(space.pids(), [pid, sharer], "the sharer is listed");

    // The sharer execs `sleep`: from now on it blocks in a system call, in memory of its own,
    // while the main process's only thread spins outside any.
    child.stdin.as_mut().unwrap().write_all(b"x\n").unwrap();
    let sharer_process = Process::new(sharer).unwrap();
    let waited = std::time::Instant::now();
    while sharer_process.exe().ok().as_deref() != Some(Path::new("/usr/bin/sleep"))
        || sharer_process.thread_state(sharer) != 'S'
    {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the sharer never exec'd"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut stopped = Stopped::stop_one(&space, Duration::from_secs(2)).unwrap();
    let hint = below_executable(&Process::new(pid).unwrap(), &exe);
    let addr = stopped.mmap(hint, 4096, PROT_READ).unwrap();
    assert_eq!(addr, hint);
    let has_page = |pid: i32| {
        hotsplice_ptrace::maps_of(pid)
            .unwrap_or_default()
            .iter()
            .any(|m| m.start == hint)
    };
    assert!(
        has_page(pid),
        "the page is mapped in the process it was asked for"
    );
    assert!(
        !has_page(sharer),
        "the page is not mapped in the process that exec'd"
    );
    stopped.munmap(hint, 4096).unwrap();
    stopped.release();
    drop(cleanup);
    let _ = child.wait();
}
