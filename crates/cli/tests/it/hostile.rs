//! Hostile conditions (issue 11): concurrent hotsplice invocations on one target, processes
//! sharing an address space, seccomp filters, signals to the target and to hotsplice, forged
//! state, untrusted keys, oversized input, a new callee of another version. The target
//! (`fixtures/hostile/app`) checks every result of the functions being patched: a wrong
//! result, a dead target, leaked patch memory or a stuck record fails the test.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::targets::{Fixture, Target};
use crate::{json, succeeded};

/// The anonymous executable mappings of a process that start with hotsplice's patch header.
fn patch_memory(pid: u32) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 5 || !fields[1].contains('x') || fields[4] != "0" {
            continue;
        }
        let start = u64::from_str_radix(fields[0].split('-').next().unwrap(), 16).unwrap();
        let mut head = [0u8; 18];
        if mem.read_exact_at(&mut head, start).is_ok() && &head == b"HOTSPLICE-PATCH 1\n" {
            out.push(start);
        }
    }
    out
}

fn listed(fixture: &Fixture, pid: u32) -> Vec<String> {
    let out = fixture.run(&["list", "--pid", &pid.to_string()]);
    succeeded(&out);
    json("list", &out)["processes"][0]["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

/// `kill ARGS` (a signal to a process), which must succeed.
fn send<const N: usize>(args: [&str; N]) {
    assert!(
        Command::new("kill").args(args).status().unwrap().success(),
        "kill {args:?}"
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// After an iteration: the record, the code and the memory agree, and nothing is left over.
fn consistent(fixture: &Fixture, target: &mut Target, expect: &[&str], what: &str) {
    let pid = target.pid();
    let mut ids = listed(fixture, pid);
    ids.sort();
    let mut want: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(ids, want, "{what}: recorded patches");
    assert_eq!(
        patch_memory(pid).len(),
        expect.len(),
        "{what}: patch memory (leaked regions?)"
    );
    assert!(fixture.no_journal(), "{what}: a journal was left");
    target.healthy(what);
}

#[test]
fn concurrent_applies_of_two_bundles_serialise() {
    let fixture = Fixture::new("hostile-apply-apply", "", &["work", "aux"]);
    let mut target = Target::start(&fixture.exe, &["2"]);
    let pid = target.pid().to_string();
    let (a, b) = (fixture.bundle("work"), fixture.bundle("aux"));
    let (ida, idb) = (
        fixture.id("work").to_string(),
        fixture.id("aux").to_string(),
    );
    for i in 0..100 {
        let x = fixture.spawn(&["apply", a, "--pid", &pid]);
        let y = fixture.spawn(&["apply", b, "--pid", &pid]);
        let (x, y) = (x.wait_with_output().unwrap(), y.wait_with_output().unwrap());
        assert_eq!(code(&x), Some(0), "{i}: {}", stderr(&x));
        assert_eq!(code(&y), Some(0), "{i}: {}", stderr(&y));
        if i % 10 == 0 {
            consistent(
                &fixture,
                &mut target,
                &[&ida, &idb],
                &format!("{i} applied"),
            );
            assert!(target.work_patched() && target.aux_patched());
        }
        let x = fixture.spawn(&["undo", &ida, "--pid", &pid]);
        let y = fixture.spawn(&["undo", &idb, "--pid", &pid]);
        let (x, y) = (x.wait_with_output().unwrap(), y.wait_with_output().unwrap());
        assert_eq!(code(&x), Some(0), "{i}: {}", stderr(&x));
        assert_eq!(code(&y), Some(0), "{i}: {}", stderr(&y));
        if i % 10 == 0 {
            consistent(&fixture, &mut target, &[], &format!("{i} undone"));
        }
    }
    consistent(&fixture, &mut target, &[], "end");
}

#[test]
fn concurrent_apply_and_undo_and_recover() {
    let fixture = Fixture::new("hostile-apply-undo", "", &["work"]);
    let mut target = Target::start(&fixture.exe, &["2"]);
    let pid = target.pid().to_string();
    let bundle = fixture.bundle("work");
    let id = fixture.id("work").to_string();
    // apply ∥ undo: the undo either finds nothing applied (exit 2) or undoes the apply.
    for i in 0..100 {
        let x = fixture.spawn(&["apply", bundle, "--pid", &pid]);
        let y = fixture.spawn(&["undo", &id, "--pid", &pid]);
        let (x, y) = (x.wait_with_output().unwrap(), y.wait_with_output().unwrap());
        assert_eq!(code(&x), Some(0), "{i}: {}", stderr(&x));
        let applied = match code(&y) {
            Some(0) => false,
            Some(2) => true,
            other => panic!("{i}: undo ended {other:?}: {}", stderr(&y)),
        };
        if i % 10 == 0 {
            let expect: &[&str] = if applied { &[&id] } else { &[] };
            consistent(&fixture, &mut target, expect, &format!("apply∥undo {i}"));
        }
        if applied {
            let out = fixture.run(&["undo", &id, "--pid", &pid]);
            assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        }
    }
    consistent(&fixture, &mut target, &[], "apply∥undo end");
    // recover ∥ apply: recover never touches an operation another hotsplice is running.
    for i in 0..100 {
        let x = fixture.spawn(&["apply", bundle, "--pid", &pid]);
        let y = fixture.spawn(&["recover"]);
        let (x, y) = (x.wait_with_output().unwrap(), y.wait_with_output().unwrap());
        assert_eq!(code(&x), Some(0), "{i}: {}", stderr(&x));
        assert_eq!(code(&y), Some(0), "{i}: recover: {}", stderr(&y));
        let recovered = json("recover", &y);
        assert!(
            recovered["recovered"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["outcome"] != "rolled back"),
            "{i}: recover rolled back a running apply: {recovered}"
        );
        if i % 10 == 0 {
            consistent(&fixture, &mut target, &[&id], &format!("recover∥apply {i}"));
            assert!(target.work_patched(), "{i}");
        }
        let out = fixture.run(&["undo", &id, "--pid", &pid]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
    }
    consistent(&fixture, &mut target, &[], "recover∥apply end");
}

#[test]
fn single_threaded_target_is_stopped_once() {
    let fixture = Fixture::new("hostile-single", "", &["work"]);
    let mut target = Target::start(&fixture.exe, &["0"]);
    let pid = target.pid().to_string();
    let id = fixture.id("work").to_string();
    for i in 0..20 {
        let out = fixture.run(&["apply", fixture.bundle("work"), "--pid", &pid]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        let v = json("live", &out);
        assert_eq!(v["processes"][0]["stops"], 1, "{v}");
        assert_eq!(v["processes"][0]["threads"], 1, "{v}");
        assert!(target.work_patched());
        let out = fixture.run(&["undo", &id, "--pid", &pid]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        assert_eq!(json("live", &out)["processes"][0]["stops"], 1);
        consistent(&fixture, &mut target, &[], &format!("single {i}"));
    }
}

#[test]
fn processes_sharing_memory_are_stopped_and_patched_together() {
    let fixture = Fixture::new("hostile-clonevm", "", &["work"]);
    let mut target = Target::start(&fixture.exe, &["1", "clonevm"]);
    let pid = target.pid().to_string();
    let sibling = target.sibling.expect("sibling pid").to_string();
    let id = fixture.id("work").to_string();
    for i in 0..20 {
        // Either pid names the same memory: one patch, reported with its sharer.
        let out = fixture.run(&[
            "apply",
            fixture.bundle("work"),
            "--pid",
            &pid,
            "--pid",
            &sibling,
        ]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        let v = json("live", &out);
        assert_eq!(v["processes"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["processes"][0]["sharers"][0].to_string(), sibling, "{v}");
        let again = fixture.run(&["apply", fixture.bundle("work"), "--pid", &sibling]);
        assert_eq!(code(&again), Some(1), "{}", stderr(&again));
        assert!(stderr(&again).contains("already applied"));
        let out = fixture.run(&["undo", &id, "--pid", &sibling]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        consistent(&fixture, &mut target, &[], &format!("clonevm {i}"));
        assert!(
            Path::new(&format!("/proc/{sibling}")).exists(),
            "{i}: the sibling died"
        );
    }
}

#[test]
fn threads_that_never_block_do_not_run_a_borrowed_syscall() {
    // No thread is ever blocked in a system call, so none can lend its own `syscall`
    // instruction for the injected mmap and munmap: two bytes of code are borrowed at a
    // stopped thread's instruction pointer — in the loop every other thread runs, so they
    // must be stopped too (they were not: a worker ran the borrowed syscall with whatever
    // its registers held, and computed wrong results or died).
    let fixture = Fixture::new("hostile-busy", "", &["work"]);
    let mut target = Target::start(&fixture.exe, &["3", "busy"]);
    let pid = target.pid().to_string();
    let id = fixture.id("work").to_string();
    for i in 0..10 {
        let out = fixture.run(&["apply", fixture.bundle("work"), "--pid", &pid]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        consistent(&fixture, &mut target, &[&id], &format!("busy apply {i}"));
        let out = fixture.run(&["undo", &id, "--pid", &pid]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        consistent(&fixture, &mut target, &[], &format!("busy undo {i}"));
    }
}

#[test]
fn a_thread_in_a_system_call_lends_it_and_the_others_run_on() {
    // The main thread waits in read(): the mmap before the switch and the munmap after it
    // run on that thread alone — for the munmap, a moment after the switch released it, when
    // it is not back in its call yet behind the busy workers (it is on its way: its registers
    // say so).
    let fixture = Fixture::new("hostile-lend", "", &["work"]);
    let mut target = Target::start(&fixture.exe, &["8", "spin"]);
    let pid = target.pid().to_string();
    let id = fixture.id("work").to_string();
    let windows = |out: &std::process::Output| -> Vec<u64> {
        let v = json("live", out);
        let windows = v["processes"][0]["stop_windows"].as_array().unwrap();
        windows
            .iter()
            .map(|w| w["threads"].as_u64().unwrap())
            .collect()
    };
    for i in 0..10 {
        let out = fixture.run(&["apply", fixture.bundle("work"), "--pid", &pid]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        assert_eq!(windows(&out), [1, 9], "{i}: apply's stops");
        let out = fixture.run(&["undo", &id, "--pid", &pid]);
        assert_eq!(code(&out), Some(0), "{i}: {}", stderr(&out));
        assert_eq!(windows(&out), [9, 1], "{i}: undo's stops");
    }
    consistent(&fixture, &mut target, &[], "lend");
}

#[test]
fn seccomp_filters_are_obeyed_not_tripped() {
    let fixture = Fixture::new("hostile-seccomp", "", &["work"]);
    for (filter, verdict) in [
        ("seccomp-kill", "kill the process"),
        ("seccomp-eperm", "deny with EPERM"),
    ] {
        for threads in ["0", "2"] {
            let mut target = Target::start(&fixture.exe, &[threads, filter]);
            let pid = target.pid().to_string();
            let out = fixture.run(&["apply", fixture.bundle("work"), "--pid", &pid]);
            assert_eq!(code(&out), Some(1), "{filter}/{threads}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains("seccomp") && err.contains(verdict) && err.contains("mmap"),
                "{filter}/{threads}: {err}"
            );
            assert_eq!(json("live", &out)["class"], "refused");
            consistent(&fixture, &mut target, &[], filter);
            assert!(!target.work_patched());
        }
    }
}

#[test]
fn an_undo_whose_munmap_seccomp_denies_changes_nothing() {
    // The filter comes after the apply: the undo finds it (and must not restore the code
    // only to leave the patch memory it cannot unmap), for one thread and for several.
    let fixture = Fixture::new("hostile-seccomp-undo", "", &["work"]);
    let id = fixture.id("work").to_string();
    for threads in ["0", "2"] {
        let mut target = Target::start(&fixture.exe, &[threads]);
        let pid = target.pid().to_string();
        let out = fixture.run(&["apply", fixture.bundle("work"), "--pid", &pid]);
        assert_eq!(code(&out), Some(0), "{threads}: {}", stderr(&out));
        target.send("u");
        target.expect("filtered");
        let out = fixture.run(&["undo", &id, "--pid", &pid]);
        assert_eq!(code(&out), Some(1), "{threads}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("seccomp") && err.contains("deny with EPERM") && err.contains("munmap"),
            "{threads}: {err}"
        );
        consistent(&fixture, &mut target, &[&id], &format!("{threads} threads"));
        assert!(target.work_patched(), "{threads}: still patched");
    }
}

#[test]
fn eintr_is_seen_exactly_when_it_would_be_without_hotsplice() {
    let fixture = Fixture::new("hostile-eintr", "", &["work"]);
    let target = Target::start(&fixture.exe, &["1", "epoll"]);
    let pid = target.pid();
    let id = fixture.id("work").to_string();
    // Without hotsplice: the handler runs and epoll_wait returns EINTR.
    send(["-USR1", &pid.to_string()]);
    assert_eq!(target.expect("epoll "), "epoll ret=-1 errno=4 handled=1");
    // Stops with no signal: epoll_wait never returns (it is re-issued transparently).
    for _ in 0..3 {
        let out = fixture.run(&["apply", fixture.bundle("work"), "--pid", &pid.to_string()]);
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        let out = fixture.run(&["undo", &id, "--pid", &pid.to_string()]);
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    }
    assert_eq!(
        target.next_line(Duration::from_millis(200)),
        None,
        "a stop made epoll_wait return"
    );
    // A signal the thread blocks arrives while hotsplice holds it: it stays pending, and
    // epoll_wait goes on as it would without hotsplice.
    let held = Held::start(
        &fixture,
        "checked",
        &["apply", fixture.bundle("work"), "--pid", &pid.to_string()],
    );
    send(["-USR2", &pid.to_string()]);
    std::thread::sleep(Duration::from_millis(50));
    let out = held.release();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(
        target.next_line(Duration::from_millis(200)),
        None,
        "a blocked signal made epoll_wait return"
    );
    let out = fixture.run(&["undo", &id, "--pid", &pid.to_string()]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    // The signal arrives while hotsplice holds every thread: same as without hotsplice.
    let held = Held::start(
        &fixture,
        "checked",
        &["apply", fixture.bundle("work"), "--pid", &pid.to_string()],
    );
    send(["-USR1", &pid.to_string()]);
    std::thread::sleep(Duration::from_millis(50));
    let out = held.release();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(target.expect("epoll "), "epoll ret=-1 errno=4 handled=2");
}

/// A hotsplice command held at a step (`HOTSPLICE_HOLD`) until released.
struct Held {
    dir: PathBuf,
    child: Child,
}

impl Held {
    /// hotsplice held at `point`, with the signal dispositions of a program started from a
    /// terminal (default), whatever the test run inherited (a background job ignores SIGINT),
    /// in a process group of its own (a job-control stop is discarded in an orphaned group,
    /// which the test run's may be).
    fn start(fixture: &Fixture, point: &str, args: &[&str]) -> Held {
        Held::start_with(fixture, point, args, "--default-signal")
    }

    /// [`Held::start`], with `disposition` (an option of env(1) for INT, TERM, HUP, QUIT, TSTP).
    fn start_with(fixture: &Fixture, point: &str, args: &[&str], disposition: &str) -> Held {
        use std::os::unix::process::CommandExt;
        let dir = fixture.dir.join(format!("hold-{point}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let hs = crate::hs();
        let mut command = Command::new("env");
        for (key, value) in hs.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        let child = command
            .arg(format!("{disposition}=INT,TERM,HUP,QUIT,TSTP"))
            .arg(hs.get_program())
            .args(args)
            .args(["--state-dir", &fixture.state, "--json"])
            .env("HOTSPLICE_HOLD", format!("{point}:{}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let held = Held { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !held.dir.join("reached").exists() {
            assert!(Instant::now() < deadline, "{point} never reached");
            std::thread::sleep(Duration::from_millis(5));
        }
        held
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn release(self) -> Output {
        std::fs::write(self.dir.join("release"), b"").unwrap();
        self.child.wait_with_output().unwrap()
    }
}

fn state_of(pid: u32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ")?.1.chars().next())
        .unwrap_or('?')
}

#[test]
fn signals_to_hotsplice_never_leave_the_target_stopped() {
    let fixture = Fixture::new("hostile-signals", "", &["work"]);
    let mut target = Target::start(&fixture.exe, &["2"]);
    let pid = target.pid().to_string();
    let id = fixture.id("work").to_string();

    // Ctrl-Z while every target thread is stopped: hotsplice finishes, releases the target,
    // and only then stops.
    let held = Held::start(
        &fixture,
        "checked",
        &["apply", fixture.bundle("work"), "--pid", &pid],
    );
    let hs = held.pid();
    send(["-TSTP", &hs.to_string()]);
    std::fs::write(held.dir.join("release"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(hs) != 'T' {
        assert!(Instant::now() < deadline, "hotsplice never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    target.healthy("hotsplice stopped after the apply");
    assert!(target.work_patched(), "the apply completed before the stop");
    send(["-CONT", &hs.to_string()]);
    let out = held.child.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let out = fixture.run(&["undo", &id, "--pid", &pid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    // SIGSTOP, which nothing can block, while every target thread is stopped: the guardian
    // continues hotsplice at once, and the apply completes.
    let held = Held::start(
        &fixture,
        "checked",
        &["apply", fixture.bundle("work"), "--pid", &pid],
    );
    let hs = held.pid();
    send(["-STOP", &hs.to_string()]);
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(
        state_of(hs),
        'T',
        "hotsplice stayed stopped while holding the target"
    );
    let out = held.release();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(target.work_patched());
    let out = fixture.run(&["undo", &id, "--pid", &pid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    // SIGTERM between the mapping and the switch: rolled back, nothing left behind, and
    // hotsplice ends by the signal.
    for signal in ["TERM", "INT", "HUP"] {
        let held = Held::start(
            &fixture,
            "loaded",
            &["apply", fixture.bundle("work"), "--pid", &pid],
        );
        send([&format!("-{signal}"), &held.pid().to_string()]);
        let out = held.release();
        assert!(out.status.signal().is_some(), "{signal}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("nothing was changed")
                || String::from_utf8_lossy(&out.stdout).contains("stopped before changing"),
            "{signal}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        consistent(&fixture, &mut target, &[], signal);
        assert!(!target.work_patched());
    }

    // A signal hotsplice was started ignoring (`nohup`, a background job of a script: SIGINT)
    // is no request to give up: the apply completes.
    let held = Held::start_with(
        &fixture,
        "loaded",
        &["apply", fixture.bundle("work"), "--pid", &pid],
        "--ignore-signal",
    );
    send(["-INT", &held.pid().to_string()]);
    let out = held.release();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(target.work_patched());
    let out = fixture.run(&["undo", &id, "--pid", &pid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
}

#[test]
fn state_directory_and_records_are_not_trusted() {
    let fixture = Fixture::new("hostile-state", "", &["work"]);
    let mut target = Target::start(&fixture.exe, &["2"]);
    let pid = target.pid().to_string();
    let bundle = fixture.bundle("work").to_string();
    let apply = |state: &str| {
        crate::hs()
            .args([
                "apply",
                &bundle,
                "--pid",
                &pid,
                "--json",
                "--state-dir",
                state,
            ])
            .output()
            .unwrap()
    };
    // A symbolic link as the state directory, and a directory others may write to.
    let link = fixture.dir.join("state-link");
    std::os::unix::fs::symlink(&fixture.state, &link).unwrap();
    let out = apply(link.to_str().unwrap());
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    let open = fixture.dir.join("state-open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = apply(open.to_str().unwrap());
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("writable by group or others"));
    assert!(!target.work_patched());
    assert!(patch_memory(target.pid()).is_empty());

    // A forged record: undo must not write the "original" bytes it names.
    let out = apply(&fixture.state);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let entry = u64::from_str_radix(
        json("live", &out)["processes"][0]["functions"][0]["entry"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let record = Path::new(&fixture.state).join(format!("{pid}.json"));
    let text = std::fs::read_to_string(&record).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["patches"][0]["functions"][0]["replaced"] = "cccccccccc".into();
    std::fs::write(&record, serde_json::to_string(&v).unwrap()).unwrap();
    let before = read_mem(target.pid(), entry, 8);
    let id = fixture.id("work").to_string();
    let out = fixture.run(&["undo", &id, "--pid", &pid]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("forged"), "{}", stderr(&out));
    assert_eq!(read_mem(target.pid(), entry, 8), before, "nothing written");
    assert!(target.work_patched());
    // A record that does not parse is an error, never "nothing applied".
    std::fs::write(&record, "{ not json").unwrap();
    let out = fixture.run(&["undo", &id, "--pid", &pid]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
    // The true record back: undo works.
    std::fs::write(&record, text).unwrap();
    let out = fixture.run(&["undo", &id, "--pid", &pid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    consistent(&fixture, &mut target, &[], "after the forgery");
}

fn read_mem(pid: u32, address: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut buf = vec![0u8; len];
    mem.read_exact_at(&mut buf, address).unwrap();
    buf
}

#[test]
fn a_callee_of_another_version_is_refused() {
    // The bundle's new aux() calls helper(int); the running program is another build whose
    // helper takes two arguments. aux() itself is the same in both, so only proving what the
    // new code calls catches it.
    let fixture = Fixture::new("hostile-callee", "CFLAGS='-O2 -g -DHELPER2'", &["helper"]);
    let mut target = Target::start(&fixture.exe, &["2"]);
    let pid = target.pid().to_string();
    let out = fixture.run(&["check", fixture.bundle("helper"), "--pid", &pid]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let out = fixture.run(&["apply", fixture.bundle("helper"), "--pid", &pid]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("helper") && err.contains("another build"),
        "{err}"
    );
    consistent(&fixture, &mut target, &[], "callee");
    // The same bundle on the source's own build applies: built elsewhere (another path in
    // its debug information, so another build-id), but every function the new code calls
    // is proven to be the one it expects.
    let own = Fixture::new("hostile-callee-own", "", &["helper", "peer"]);
    let mut target = Target::start(&own.exe, &["2"]);
    let pid = target.pid().to_string();
    let out = own.run(&["apply", own.bundle("helper"), "--pid", &pid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(json("live", &out)["processes"][0]["same_build"], false);
    assert!(target.aux_patched());
    target.healthy("own build");
    // The same across objects: the new aux() of work.c calls peer() of main.c, which the
    // running build has with another signature. Refused by name; on the source's own build the
    // bundle applies, peer() proven.
    let out = own.run(&["undo", own.id("helper"), "--pid", &pid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let out = own.run(&["apply", own.bundle("peer"), "--pid", &pid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(target.aux_patched());
    target.healthy("own build, another object's callee");
    let other = Fixture::new("hostile-peer", "CFLAGS='-O2 -g -DPEER2'", &["peer"]);
    let mut target = Target::start(&other.exe, &["2"]);
    let pid = target.pid().to_string();
    let out = other.run(&["apply", other.bundle("peer"), "--pid", &pid]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("peer") && err.contains("another build"),
        "{err}"
    );
    consistent(&other, &mut target, &[], "another object's callee");
}

#[test]
fn untrusted_inputs_are_refused_promptly() {
    let fixture = Fixture::new("hostile-inputs", "", &["work"]);
    let target = Target::start(&fixture.exe, &["1"]);
    let pid = target.pid().to_string();
    let bundle = fixture.bundle("work").to_string();
    // A FIFO among the trusted keys: refused at once, never a hang.
    let keys = fixture.dir.join("keys-fifo");
    std::fs::create_dir(&keys).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(keys.join("evil.pub"))
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let out = crate::hs()
        .args(["check", &bundle, "--pid", &pid, "--json"])
        .env("HOTSPLICE_TRUST_DIR", &keys)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(json("live", &out)["ok"], false);
    // A key that is a link into a directory another user owns.
    let elsewhere = fixture.dir.join("nobodys");
    std::fs::create_dir(&elsewhere).unwrap();
    let (_, trusted, _) = crate::test_keys();
    let key = std::fs::read_dir(trusted)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pub"))
        .unwrap();
    std::fs::copy(&key, elsewhere.join("k.pub")).unwrap();
    assert!(
        Command::new("chown")
            .args(["-R", "65534"])
            .arg(&elsewhere)
            .status()
            .unwrap()
            .success()
    );
    let linked = fixture.dir.join("keys-linked");
    std::fs::create_dir(&linked).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("k.pub"), linked.join("k.pub")).unwrap();
    let out = crate::hs()
        .args(["apply", &bundle, "--pid", &pid])
        .env("HOTSPLICE_TRUST_DIR", &linked)
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("65534"), "{}", stderr(&out));
    // A 3 GiB "bundle" is refused before it is read.
    let huge = fixture.dir.join("huge.hsp");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let started = Instant::now();
    let out = fixture.run(&["apply", huge.to_str().unwrap(), "--pid", &pid]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("MiB"), "{}", stderr(&out));
    assert_eq!(json("live", &out)["class"], "bad-input");
    // An unsigned kernel module is never loaded.
    let module = fixture.dir.join("fake.ko");
    std::fs::write(&module, b"\x7fELF not really a module").unwrap();
    let out = crate::hs()
        .args(["kernel", "apply"])
        .arg(&module)
        .args(["--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no signature"), "{}", stderr(&out));
    assert_eq!(json("kernel", &out)["ok"], false);
    assert!(patch_memory(target.pid()).is_empty());
}
