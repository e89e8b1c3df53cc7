//! The target does things while hotsplice works on it: it dies, execs, forks, creates
//! threads, receives signals, is stopped by job control. hotsplice is held at a chosen step
//! (`HOTSPLICE_HOLD=<step>:<dir>`, a test switch) while the test makes that happen; each must
//! end cleanly: patched, or refused with nothing written, and records that tell the truth.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::live::{App, Setup, ok};

/// A `hotsplice` command held at `point` until [`Held::release`].
struct Held {
    dir: PathBuf,
    child: Child,
}

impl Held {
    fn start(setup: &Setup, point: &str, args: &[&str]) -> Held {
        let dir = setup.dir.join(format!("hold-{point}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = crate::hs()
            .args(args)
            .args(["--state-dir", &setup.state, "--json"])
            .env("HOTSPLICE_HOLD", format!("{point}:{}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut held = Held { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !held.dir.join("reached").exists() {
            if let Ok(Some(status)) = held.child.try_wait() {
                let out = held.finish_exited();
                panic!("hotsplice ended ({status}) before reaching {point}: {out:?}");
            }
            assert!(Instant::now() < deadline, "{point} never reached");
            std::thread::sleep(Duration::from_millis(5));
        }
        held
    }

    fn finish_exited(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    fn release(self) -> Output {
        std::fs::write(self.dir.join("release"), b"").unwrap();
        self.child.wait_with_output().unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn list(setup: &Setup, pid: u32) -> Value {
    ok(&crate::hs()
        .args([
            "list",
            "--pid",
            &pid.to_string(),
            "--state-dir",
            &setup.state,
            "--json",
        ])
        .output()
        .unwrap())["processes"][0]
        .clone()
}

fn patch_ids(listed: &Value) -> Vec<String> {
    listed["patches"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn nothing_to_recover(setup: &Setup) {
    let out = crate::hs()
        .args(["recover", "--state-dir", &setup.state])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to recover"),
        "{out:?}"
    );
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// The process state letter from `/proc/PID/stat` (R, S, T, Z...).
fn run_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

fn wait_for_state(pid: u32, want: char) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while run_state(pid) != want {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never reached state {want} (is {})",
            run_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The children of a process (its main thread's).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// A child of `pid` other than `known` (earlier children, now zombies the app never reaps).
fn wait_for_child(pid: u32, known: &[u32]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(&c) = children(pid).iter().find(|c| !known.contains(c)) {
            return c;
        }
        assert!(Instant::now() < deadline, "no child of {pid}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills a process the test does not own as a `Child` (a forked child of the app).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}

#[test]
fn exec_during_apply_is_refused_and_nothing_is_written_to_the_new_program() {
    // PIE (the new image lands elsewhere) and non-PIE (the new image is at the very same
    // addresses — the case a pid-based tool would write into).
    for (name, make) in [
        ("exec-pie", ""),
        ("exec-nopie", "CFLAGS='-O2 -g -fno-pie' LDFLAGS=-no-pie"),
    ] {
        let setup = Setup::new(&format!("lifecycle-{name}"), make);
        let (bundle, id) = setup.bundle("fix.patch", make);
        let bundle = bundle.display().to_string();
        let app = App::start(&setup.app, 2);
        let pid = app.pid();
        let held = Held::start(
            &setup,
            "loaded",
            &["apply", &bundle, "--pid", &pid.to_string()],
        );
        signal(pid, "USR1");
        app.expect("exec");
        app.expect("value 14 hello");
        let out = held.release();
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("replaced its program (exec)"),
            "{name}: {}",
            stderr(&out)
        );
        app.expect("value 14 hello");
        assert!(patch_ids(&list(&setup, pid)).is_empty(), "{name}");
        nothing_to_recover(&setup);

        // The new program takes the patch normally.
        ok(&setup.live("apply", &bundle, pid));
        app.expect("value 15 hello");

        // It execs again after the apply: the record is found stale and dropped.
        signal(pid, "USR1");
        app.expect("exec");
        app.expect("value 14 hello");
        let listed = list(&setup, pid);
        assert!(patch_ids(&listed).is_empty(), "{name}: {listed}");
        assert_eq!(listed["stale_records_dropped"][0], id.as_str(), "{name}");
        let undo = setup.live("undo", &id, pid);
        assert_eq!(undo.status.code(), Some(2), "{name}: {}", stderr(&undo));
    }
}

#[test]
fn fork_children_inherit_live_patches_and_only_live_ones() {
    let setup = Setup::new("lifecycle-fork", "");
    let (bundle, id) = setup.bundle("fix.patch", "");
    let bundle = bundle.display().to_string();
    let app = App::start(&setup.app, 2);
    let pid = app.pid();

    // Forked while the patch is loaded but not yet live: the child keeps the old code, and
    // the patch memory it inherited is reported as unused, never as applied.
    let held = Held::start(
        &setup,
        "loaded",
        &["apply", &bundle, "--pid", &pid.to_string()],
    );
    signal(pid, "USR2");
    let early = KillOnDrop(wait_for_child(pid, &[]));
    let early_pid = early.0;
    ok(&held.release());
    app.expect("value 15 hello");
    app.expect("child value 14 hello");
    let listed = list(&setup, early.0);
    assert!(patch_ids(&listed).is_empty(), "{listed}");
    assert_eq!(listed["unused_patch_memory"][0], id.as_str(), "{listed}");
    drop(early);

    // Forked after the apply: the child runs the patched code, and hotsplice sees it there
    // (from the patch memory it inherited) and can undo it in the child alone.
    signal(pid, "USR2");
    let late = KillOnDrop(wait_for_child(pid, &[early_pid]));
    app.expect("child value 15 hello");
    let listed_late = list(&setup, late.0);
    assert_eq!(
        patch_ids(&listed_late),
        std::slice::from_ref(&id),
        "{listed_late}"
    );
    let again = setup.live("apply", &bundle, late.0);
    assert_eq!(
        again.status.code(),
        Some(1),
        "already applied: {}",
        stderr(&again)
    );
    ok(&setup.live("undo", &id, late.0));
    app.expect("child value 14 hello");
    app.expect("value 15 hello");
    assert!(patch_ids(&list(&setup, late.0)).is_empty());
    assert_eq!(patch_ids(&list(&setup, pid)), std::slice::from_ref(&id));
    ok(&setup.live("undo", &id, pid));
    app.expect("value 14 hello");
}

#[test]
fn target_killed_during_apply_leaves_no_record() {
    let setup = Setup::new("lifecycle-kill", "");
    let (bundle, _) = setup.bundle("fix.patch", "");
    let bundle = bundle.display().to_string();
    // While it runs between the two stops, and while hotsplice holds it stopped.
    for point in ["loaded", "checked"] {
        let mut target = Command::new(&setup.app)
            .arg("2")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let pid = target.id();
        let held = Held::start(
            &setup,
            point,
            &["apply", &bundle, "--pid", &pid.to_string()],
        );
        target.kill().unwrap();
        // Reaped after the release: while hotsplice traces it, only hotsplice may wait for it.
        std::thread::sleep(Duration::from_millis(50));
        let out = held.release();
        target.wait().unwrap();
        assert_eq!(out.status.code(), Some(3), "{point}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("does not exist"),
            "{point}: {}",
            stderr(&out)
        );
        nothing_to_recover(&setup);
        // Only the per-process lock files remain (they are never removed: see state.rs).
        let left: Vec<_> = std::fs::read_dir(&setup.state)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .filter(|n| !n.to_string_lossy().ends_with(".lock"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{point}: state left: {left:?}");
    }
}

#[test]
fn signals_and_job_control_during_apply_are_kept() {
    let setup = Setup::new("lifecycle-signals", "");
    let (bundle, id) = setup.bundle("fix.patch", "");
    let bundle = bundle.display().to_string();
    let app = App::start(&setup.app, 2);
    let pid = app.pid();

    // A signal sent while every thread is stopped is delivered once, after the release.
    let held = Held::start(
        &setup,
        "checked",
        &["apply", &bundle, "--pid", &pid.to_string()],
    );
    signal(pid, "HUP");
    std::thread::sleep(Duration::from_millis(50));
    ok(&held.release());
    app.expect("hups 1");
    app.expect("value 15 hello");
    ok(&setup.live("undo", &id, pid));

    // SIGSTOP sent while stopped: the program is stopped after the release, patched.
    let held = Held::start(
        &setup,
        "checked",
        &["apply", &bundle, "--pid", &pid.to_string()],
    );
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_millis(50));
    ok(&held.release());
    wait_for_state(pid, 'T');
    signal(pid, "CONT");
    app.expect("value 15 hello");
    ok(&setup.live("undo", &id, pid));
    app.expect("value 14 hello");

    // Stopped by job control before hotsplice came: patched, and still stopped after.
    signal(pid, "STOP");
    wait_for_state(pid, 'T');
    let applied = setup.live("apply", &bundle, pid);
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(run_state(pid), 'T', "job-control stop kept");
    signal(pid, "CONT");
    app.expect("value 15 hello");
    signal(pid, "STOP");
    wait_for_state(pid, 'T');
    ok(&setup.live("undo", &id, pid));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(run_state(pid), 'T', "job-control stop kept by undo");
    signal(pid, "CONT");
    app.expect("value 14 hello");
}

#[test]
fn threads_created_during_apply_are_caught() {
    let setup = Setup::new("lifecycle-threads", "");
    let (bundle, id) = setup.bundle("fix.patch", "");
    let bundle = bundle.display().to_string();
    let mut command = Command::new(&setup.app);
    command.args(["2", "churn"]);
    let app = App::spawn(command);
    app.expect("value 14 hello");
    let pid = app.pid();
    for _ in 0..20 {
        ok(&setup.live("apply", &bundle, pid));
        app.expect("value 15 hello");
        ok(&setup.live("undo", &id, pid));
        app.expect("value 14 hello");
    }
    assert!(Path::new(&format!("/proc/{pid}")).exists());
}
