//! `hotsplice check | apply | undo | list` on real processes: `fixtures/live/app` (a
//! multi-threaded program printing `value <compute(7)> <greeting()>` every 20 ms) built with
//! its own Makefile, patched live with bundles from `hotsplice build`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{json, json_any, scratch, succeeded};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/live")
}

fn hotsplice(args: &[&str]) -> Output {
    crate::hs().args(args).output().expect("run hotsplice")
}

/// Builds the app with `make MAKEARGS` in a copy, as a user would, and the bundle for `patch`
/// with the same build command.
pub struct Setup {
    /// The fixture under `fixtures/live/`.
    fixture: &'static str,
    pub dir: PathBuf,
    pub app: PathBuf,
    pub state: String,
}

impl Setup {
    pub fn new(name: &str, make_args: &str) -> Setup {
        Setup::of("app", name, make_args)
    }

    /// [`Setup::new`] for another fixture (its program is `app` too).
    pub fn of(fixture: &'static str, name: &str, make_args: &str) -> Setup {
        let dir = scratch(name);
        let tree = dir.join("run");
        let status = Command::new("cp")
            .arg("-r")
            .arg(fixtures().join(fixture))
            .arg(&tree)
            .status()
            .unwrap();
        assert!(status.success());
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("make -s {make_args}"))
            .current_dir(&tree)
            .status()
            .unwrap();
        assert!(status.success());
        let state = dir.join("state").display().to_string();
        Setup {
            fixture,
            app: tree.join("app"),
            dir,
            state,
        }
    }

    /// The bundle for `patch` built from the fixture's source with `earlier` already applied
    /// (a fix on top of a fix), and its id.
    pub fn bundle_on_top(&self, earlier: &str, patch: &str) -> (PathBuf, String) {
        let source = self.dir.join(format!("{earlier}-source"));
        patched_copy(self.fixture, earlier, &source);
        let out = self.dir.join(format!("{patch}.on-top.hsp"));
        let diff = fixtures().join("patches").join(patch);
        let id = crate::build_bundle(&source, &diff, "app", &[], &self.dir, &out);
        (out, id)
    }

    pub fn bundle(&self, patch: &str, make_args: &str) -> (PathBuf, String) {
        let out = self.dir.join(format!("{patch}.hsp"));
        let build = format!("make {make_args}");
        let id = crate::build_bundle(
            &fixtures().join(self.fixture),
            &fixtures().join("patches").join(patch),
            "app",
            &["--build", &build],
            &self.dir,
            &out,
        );
        (out, id)
    }

    pub fn live(&self, verb: &str, what: &str, pid: u32) -> Output {
        self.live_with(verb, what, pid, &[])
    }

    /// [`Setup::live`] with more options.
    pub fn live_with(&self, verb: &str, what: &str, pid: u32, options: &[&str]) -> Output {
        let pid = pid.to_string();
        let mut args = vec![
            verb,
            what,
            "--pid",
            &pid,
            "--state-dir",
            &self.state,
            "--json",
        ];
        args.extend(options);
        hotsplice(&args)
    }
}

/// Builds `fixtures/live/<fixture>` with make in a copy, and the bundle for `patch` against
/// `target`: (the built tree, the bundle).
fn build_fixture(dir: &Path, fixture: &str, patch: &str, target: &str) -> (PathBuf, PathBuf) {
    let tree = dir.join("run");
    crate::built_copy(&fixtures().join(fixture), &tree);
    let bundle = dir.join(format!("{fixture}.hsp"));
    let out = crate::hs()
        .arg("build")
        .arg("--source")
        .arg(fixtures().join(fixture))
        .arg("--diff")
        .arg(fixtures().join("patches").join(patch))
        .args(["--target", target, "--cache"])
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (tree, bundle)
}

pub struct App {
    child: Child,
    lines: Receiver<String>,
}

impl App {
    /// Starts a program whose stdout lines are collected in the background.
    pub fn spawn(mut command: Command) -> App {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        App { child, lines }
    }

    pub fn start(path: &Path, threads: u32) -> App {
        let mut command = Command::new(path);
        command.arg(threads.to_string());
        let app = App::spawn(command);
        app.expect("value 14 hello");
        app
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 3 s) for a line equal to `want`; panics with the last line otherwise.
    pub fn expect(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line == want => return,
                Ok(line) => last = line,
                Err(_) => {}
            }
        }
        panic!("expected {want:?}, last line {last:?}");
    }

    /// The bytes at `address` in the running program.
    pub fn bytes(&self, address: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mem = std::fs::File::open(format!("/proc/{}/mem", self.pid())).unwrap();
        let mut buf = vec![0u8; len];
        mem.read_exact_at(&mut buf, address).unwrap();
        buf
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ok(out: &Output) -> Value {
    succeeded(out);
    json_any(out)
}

fn entry_of(v: &Value, function: &str) -> u64 {
    let f = v["processes"][0]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == function)
        .unwrap();
    u64::from_str_radix(f["entry"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn apply_changes_behaviour_and_undo_restores_every_byte() {
    let setup = Setup::new("live-basic", "");
    let (bundle, id) = setup.bundle("fix.patch", "");
    let app = App::start(&setup.app, 4);
    let pid = app.pid();

    let checked = ok(&setup.live("check", bundle.to_str().unwrap(), pid));
    let entry = entry_of(&checked, "compute");
    let before = app.bytes(entry, 32);

    let applied = ok(&setup.live("apply", bundle.to_str().unwrap(), pid));
    assert_eq!(applied["patch"], id.as_str());
    let process = &applied["processes"][0];
    // 4 workers, the main thread, the parked thread (and the warm-up thread while it lives).
    assert!(process["threads"].as_u64().unwrap() >= 6, "{process}");
    assert!(process["pause_us"].as_u64().unwrap() > 0);
    app.expect("value 15 hello");
    assert_ne!(app.bytes(entry, 32), before, "a jump is at the old entry");

    let listed = ok(&hotsplice(&[
        "list",
        "--pid",
        &pid.to_string(),
        "--state-dir",
        &setup.state,
        "--json",
    ]));
    assert_eq!(listed["processes"][0]["patches"][0]["id"], id.as_str());

    // Applying twice is refused.
    let again = setup.live("apply", bundle.to_str().unwrap(), pid);
    assert_eq!(again.status.code(), Some(1));

    ok(&setup.live("undo", &id, pid));
    app.expect("value 14 hello");
    assert_eq!(app.bytes(entry, 32), before, "undo restores every byte");
    let listed = ok(&hotsplice(&[
        "list",
        "--pid",
        &pid.to_string(),
        "--state-dir",
        &setup.state,
        "--json",
    ]));
    assert_eq!(
        listed["processes"][0]["patches"].as_array().unwrap().len(),
        0
    );

    // Repeated cycles leave the program healthy.
    for _ in 0..5 {
        ok(&setup.live("apply", bundle.to_str().unwrap(), pid));
        app.expect("value 15 hello");
        ok(&setup.live("undo", &id, pid));
        app.expect("value 14 hello");
    }
    let undo_again = setup.live("undo", &id, pid);
    assert_eq!(
        undo_again.status.code(),
        Some(2),
        "nothing to undo is bad input"
    );
}

#[test]
fn stripped_binary_is_patched_through_its_function_starts() {
    let setup = Setup::new("live-stripped", "");
    let status = Command::new("strip").arg(&setup.app).status().unwrap();
    assert!(status.success());
    let (bundle, _) = setup.bundle("fix.patch", "");
    let app = App::start(&setup.app, 2);
    let applied = ok(&setup.live("apply", bundle.to_str().unwrap(), app.pid()));
    let via = applied["processes"][0]["functions"][0]["found_by"]
        .as_str()
        .unwrap();
    assert!(via.contains("eh_frame") || via.contains("learnt"), "{via}");
    app.expect("value 15 hello");
}

/// The new code calls two helpers whose code is the same but for the variable each reads; in
/// the stripped binary of another build each one's code matches both copies. What the replaced
/// function learned (the variables' addresses) tells them apart, and the patch applies.
#[test]
fn identical_copies_of_a_called_function_are_told_apart() {
    let setup = Setup::of("twins", "live-twins", "");
    let status = Command::new("strip").arg(&setup.app).status().unwrap();
    assert!(status.success());
    let (bundle, _) = setup.bundle("twins.patch", "");
    let app = App::spawn(Command::new(&setup.app));
    app.expect("value 27");
    let applied = ok(&setup.live("apply", bundle.to_str().unwrap(), app.pid()));
    assert_eq!(
        applied["processes"].as_array().unwrap().len(),
        1,
        "{applied}"
    );
    app.expect("value 127");
}

#[test]
fn non_pie_binary() {
    let args = "CFLAGS='-O2 -g -fno-pie' LDFLAGS=-no-pie";
    let setup = Setup::new("live-nopie", args);
    let (bundle, _) = setup.bundle("fix.patch", args);
    let app = App::start(&setup.app, 2);
    ok(&setup.live("apply", bundle.to_str().unwrap(), app.pid()));
    app.expect("value 15 hello");
}

#[test]
fn new_function_and_new_string_and_independent_stacking() {
    let setup = Setup::new("live-stack", "");
    let (fix, fix_id) = setup.bundle("fix.patch", "");
    let (greeting, greeting_id) = setup.bundle("greeting.patch", "");
    let app = App::start(&setup.app, 2);
    let pid = app.pid();
    ok(&setup.live("apply", fix.to_str().unwrap(), pid));
    app.expect("value 15 hello");
    // greeting.patch adds a static function and a string literal, and calls the new function
    // with a static variable of the file.
    ok(&setup.live("apply", greeting.to_str().unwrap(), pid));
    app.expect("value 15 hello, patched");
    // Undo in the other order than applied.
    ok(&setup.live("undo", &fix_id, pid));
    app.expect("value 14 hello, patched");
    ok(&setup.live("undo", &greeting_id, pid));
    app.expect("value 14 hello");
}

#[test]
fn never_returning_function_is_refused_with_that_reason() {
    let setup = Setup::new("live-park", "");
    let (bundle, _) = setup.bundle("park.patch", "");
    let app = App::start(&setup.app, 1);
    let pid = app.pid();
    // `check` predicts what apply will do: refuse (exit 1), naming the thread's main loop.
    let out = setup.live("check", bundle.to_str().unwrap(), pid);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let checked = json("live", &out);
    let prediction = &checked["processes"][0]["prediction"];
    assert_eq!(prediction["action"], "refuse", "{checked}");
    assert!(
        prediction["detail"].as_str().unwrap().contains("park"),
        "{checked}"
    );
    let entry = entry_of(&checked, "park");
    let before = app.bytes(entry, 16);
    let out = hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--pid",
        &pid.to_string(),
        "--state-dir",
        &setup.state,
        "--retries",
        "2",
        "--retry-delay",
        "50",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("park") && err.contains("never return"),
        "{err}"
    );
    assert_eq!(app.bytes(entry, 16), before, "the target is untouched");
    app.expect("value 14 hello");
}

#[test]
fn code_from_another_build_is_refused_before_any_write() {
    // The running program is built with -O1; the bundle's pre code comes from -O2.
    let setup = Setup::new("live-mismatch", "CFLAGS='-O1 -g'");
    let (bundle, _) = setup.bundle("fix.patch", "");
    let app = App::start(&setup.app, 1);
    let pid = app.pid();
    let maps_before = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let out = hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--pid",
        &pid.to_string(),
        "--state-dir",
        &setup.state,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compute") && err.contains("expected"), "{err}");
    let maps_after = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert_eq!(maps_before, maps_after, "no memory was mapped");
    app.expect("value 14 hello");
}

#[test]
fn every_process_of_an_executable_is_patched() {
    let setup = Setup::new("live-exe", "");
    let (bundle, id) = setup.bundle("fix.patch", "");
    let first = App::start(&setup.app, 1);
    let second = App::start(&setup.app, 1);
    let out = hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--exe",
        setup.app.to_str().unwrap(),
        "--state-dir",
        &setup.state,
        "--json",
    ]);
    let v = ok(&out);
    assert_eq!(v["processes"].as_array().unwrap().len(), 2);
    first.expect("value 15 hello");
    second.expect("value 15 hello");
    let out = hotsplice(&[
        "undo",
        &id,
        "--exe",
        setup.app.to_str().unwrap(),
        "--state-dir",
        &setup.state,
    ]);
    assert_eq!(out.status.code(), Some(0));
    first.expect("value 14 hello");
    second.expect("value 14 hello");
}

#[test]
fn busy_function_is_retried_until_idle() {
    let setup = Setup::new("live-busy", "");
    let (bundle, _) = setup.bundle("warm_up.patch", "");
    // warm_up() sleeps in a loop for 1.2 s after start-up, then returns for good.
    let app = App::start(&setup.app, 1);
    let out = hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--pid",
        &app.pid().to_string(),
        "--state-dir",
        &setup.state,
        "--retries",
        "30",
        "--retry-delay",
        "100",
        "--json",
    ]);
    let v = ok(&out);
    let attempts = v["processes"][0]["attempts"].as_u64().unwrap();
    assert!(
        attempts > 1,
        "warm_up was busy at first: {attempts} attempt(s)"
    );
}

#[test]
fn shared_library_code_is_patched() {
    let dir = scratch("live-lib");
    let (tree, bundle) = build_fixture(&dir, "lib", "lib.patch", "libgreet.so");
    let app = App::spawn(Command::new(tree.join("app")));
    app.expect("lib 101 hello");
    let state = dir.join("state").display().to_string();
    let applied = ok(&hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--pid",
        &app.pid().to_string(),
        "--state-dir",
        &state,
        "--json",
    ]));
    assert!(
        applied["processes"][0]["module"]
            .as_str()
            .unwrap()
            .ends_with("libgreet.so")
    );
    app.expect("lib 201 hello");
}

#[test]
fn list_recovers_patches_from_the_process_when_the_record_is_lost() {
    let setup = Setup::new("live-list", "");
    let (bundle, id) = setup.bundle("fix.patch", "");
    let app = App::start(&setup.app, 1);
    let pid = app.pid().to_string();
    ok(&setup.live("apply", bundle.to_str().unwrap(), app.pid()));
    std::fs::remove_dir_all(&setup.state).unwrap();
    let listed = ok(&hotsplice(&[
        "list",
        "--pid",
        &pid,
        "--state-dir",
        &setup.state,
        "--json",
    ]));
    assert_eq!(listed["processes"][0]["patches"][0]["id"], id.as_str());
    assert_eq!(
        listed["processes"][0]["patches"][0]["functions"][0]["name"],
        "compute"
    );
}

#[test]
fn thread_local_variables_keep_their_values() {
    // bump() adds to a __thread counter (R_X86_64_TPOFF32); the patch adds 1000 instead of 1
    // to the same, existing per-thread variable.
    let dir = scratch("live-tls");
    let (tree, bundle) = build_fixture(&dir, "tls", "tls.patch", "app");
    let app = App::spawn(Command::new(tree.join("app")));
    app.expect("tls 3");
    let state = dir.join("state").display().to_string();
    ok(&hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--pid",
        &app.pid().to_string(),
        "--state-dir",
        &state,
        "--json",
    ]));
    // Every later value is 1000 more than the one before: the existing counter is updated.
    let value = |line: String| line.trim_start_matches("tls ").parse::<i64>().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut previous = value(app.lines.recv_timeout(Duration::from_secs(1)).unwrap());
    let mut jumps = 0;
    while Instant::now() < deadline && jumps < 3 {
        let next = value(app.lines.recv_timeout(Duration::from_secs(1)).unwrap());
        if next - previous == 1000 {
            jumps += 1;
        } else {
            assert_eq!(next - previous, 1, "only the old or the new code runs");
        }
        previous = next;
    }
    assert_eq!(
        jumps, 3,
        "the patched code updates the existing per-thread counter"
    );
}

#[test]
fn stacking_on_the_same_function() {
    let setup = Setup::new("live-restack", "");
    let (fix, fix_id) = setup.bundle("fix.patch", "");
    let (other, _) = setup.bundle("other-fix.patch", "");
    // A second fix built on top of the first: its source is the app with fix.patch applied.
    let (on_top, on_top_id) = setup.bundle_on_top("fix.patch", "fix-on-fix.patch");

    let app = App::start(&setup.app, 2);
    let pid = app.pid();
    ok(&setup.live("apply", fix.to_str().unwrap(), pid));
    app.expect("value 15 hello");
    // Built against the unpatched code: it would silently drop the first fix.
    let refused = setup.live("apply", other.to_str().unwrap(), pid);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stdout).contains(&fix_id));
    app.expect("value 15 hello");
    // Built on top of the first fix: replaces its version.
    let applied = ok(&setup.live("apply", on_top.to_str().unwrap(), pid));
    assert_eq!(
        applied["processes"][0]["functions"][0]["replaces_patch"],
        fix_id.as_str()
    );
    app.expect("value 16 hello");
    let refused = setup.live("undo", &fix_id, pid);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "the later patch must go first"
    );
    ok(&setup.live("undo", &on_top_id, pid));
    app.expect("value 15 hello");
    ok(&setup.live("undo", &fix_id, pid));
    app.expect("value 14 hello");
}

#[test]
fn threads_are_unwound_through_patch_code() {
    // The bundle carries the call-frame rows of the code it loads, so the safety check walks
    // a thread's stack through patch code instead of scanning the rest of it word by word.
    // The napper thread keeps a pointer to spare() in its frame, below nap(); a scan takes
    // it for a return address into spare().
    let setup = Setup::new("live-unwind-patch", "");
    let (nap, nap_id) = setup.bundle("nap.patch", "");
    let (spare, _) = setup.bundle("spare.patch", "");
    let mut command = Command::new(&setup.app);
    command.args(["1", "nap"]);
    let app = App::spawn(command);
    app.expect("value 14 hello");
    let pid = app.pid();
    // The napper does not nap yet: nothing runs nap(), and the apply goes in at once.
    ok(&setup.live("apply", nap.to_str().unwrap(), pid));
    let winch = || {
        assert!(
            Command::new("kill")
                .args(["-WINCH", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        )
    };
    winch();
    std::thread::sleep(Duration::from_millis(300));
    let once = |verb: &str, what: &str| setup.live_with(verb, what, pid, &["--retries", "0"]);
    // Now asleep in usleep() called from the new nap(): spare() is nowhere on its stack, and
    // its patch goes in at the first attempt.
    ok(&once("apply", spare.to_str().unwrap()));
    // The undo of nap.patch must wait: the thread will return into its code.
    let refused = once("undo", &nap_id);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let error = json_any(&refused)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&format!(
            "is blocked in a system call called from the code of {nap_id}"
        )),
        "{error}"
    );
    // Undone once the napper stops napping.
    winch();
    std::thread::sleep(Duration::from_millis(300));
    ok(&setup.live("undo", &nap_id, pid));
    app.expect("value 14 hello");
}

/// A copy of the fixture `fixture` at `dest` with `patches/<patch>` applied.
fn patched_copy(fixture: &str, patch: &str, dest: &Path) {
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(fixtures().join(fixture))
            .arg(dest)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("patch")
            .args(["-p1", "-s", "-i"])
            .arg(fixtures().join("patches").join(patch))
            .current_dir(dest)
            .status()
            .unwrap()
            .success()
    );
}

/// The GNU build-id of a file, from `readelf -n`.
fn build_id_of(path: &Path) -> Option<String> {
    let out = Command::new("readelf").arg("-n").arg(path).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
}

/// Every file named `name` below `dir`.
fn find_files(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => find_files(&path, name, out),
            Ok(t) if t.is_file() && path.file_name().is_some_and(|n| n == name) => out.push(path),
            _ => {}
        }
    }
}

/// The pid of the process running `exe` (a path, also once deleted).
fn pid_running(exe: &Path) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let deleted = format!("{} (deleted)", exe.display());
    while Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(link) = std::fs::read_link(format!("/proc/{pid}/exe"))
                && (link == exe || link.to_string_lossy() == deleted)
            {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The lib fixture built, and its bundle; the tree's library replaced by the one the bundle
/// was built from (its pre build, same build-id), as an installed package's library would be.
fn installed_library(dir: &Path) -> (PathBuf, PathBuf) {
    let (tree, bundle) = build_fixture(dir, "lib", "lib.patch", "libgreet.so");
    let info = json(
        "info",
        &hotsplice(&["info", bundle.to_str().unwrap(), "--json"]),
    );
    let want = info["bundle"]["target"]["build_id"]
        .as_str()
        .expect("bundle build-id")
        .to_string();
    let mut libs = Vec::new();
    find_files(&dir.join("cache"), "libgreet.so", &mut libs);
    let built = libs
        .into_iter()
        .find(|l| build_id_of(l).as_deref() == Some(want.as_str()))
        .expect("the pre build's library in the cache");
    std::fs::copy(&built, tree.join("libgreet.so")).unwrap();
    (tree, bundle)
}

#[test]
fn a_library_is_patched_in_every_process_that_maps_it() {
    let dir = scratch("live-lib-everywhere");
    let (tree, bundle) = installed_library(&dir);
    // Three programs: one as built, one whose executable is deleted after it starts, one in
    // a PID namespace of its own.
    for name in ["app2", "app3"] {
        std::fs::copy(tree.join("app"), tree.join(name)).unwrap();
    }
    let plain = App::spawn(Command::new(tree.join("app")));
    let orphan = App::spawn(Command::new(tree.join("app2")));
    orphan.expect("lib 101 hello");
    std::fs::remove_file(tree.join("app2")).unwrap();
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--kill-child"])
        .arg(tree.join("app3"));
    let contained = App::spawn(unshare);
    let contained_pid = pid_running(&tree.join("app3")).expect("app3 runs");
    for app in [&plain, &orphan, &contained] {
        app.expect("lib 101 hello");
    }
    let state = dir.join("state").display().to_string();
    let applied = ok(&hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--state-dir",
        &state,
        "--json",
    ]));
    let mut pids: Vec<u64> = applied["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    pids.sort_unstable();
    let mut want_pids = vec![
        u64::from(plain.pid()),
        u64::from(orphan.pid()),
        u64::from(contained_pid),
    ];
    want_pids.sort_unstable();
    assert_eq!(pids, want_pids, "{applied}");
    let namespaced = applied["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(contained_pid)))
        .unwrap();
    assert_eq!(namespaced["namespace"]["pid_inside"], 1, "{applied}");
    for app in [&plain, &orphan, &contained] {
        app.expect("lib 201 hello");
    }
    // A second run changes nothing: every process already has it.
    let again = ok(&hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--state-dir",
        &state,
        "--json",
    ]));
    assert_eq!(again["processes"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["skipped"].as_array().unwrap().len(), 3, "{again}");
    let id = applied["patch"].as_str().unwrap();
    let undone = ok(&hotsplice(&["undo", id, "--state-dir", &state, "--json"]));
    assert_eq!(undone["processes"].as_array().unwrap().len(), 3, "{undone}");
    for app in [&plain, &orphan, &contained] {
        app.expect("lib 101 hello");
    }
    // By file, each on its own: the library named on disk finds the same three.
    let each = ok(&hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--file",
        tree.join("libgreet.so").to_str().unwrap(),
        "--each",
        "--state-dir",
        &state,
        "--json",
    ]));
    assert_eq!(each["processes"].as_array().unwrap().len(), 3, "{each}");
    ok(&hotsplice(&["undo", id, "--state-dir", &state, "--json"]));
}

#[test]
fn installed_patches_reach_processes_started_later() {
    let dir = scratch("live-watch");
    let (tree, bundle) = installed_library(&dir);
    let store = dir.join("store").display().to_string();
    let state = dir.join("state").display().to_string();
    let before = App::spawn(Command::new(tree.join("app")));
    before.expect("lib 101 hello");
    // Installed: kept in the store and applied at once to the running program.
    let installed = ok(&hotsplice(&[
        "install",
        bundle.to_str().unwrap(),
        "--store",
        &store,
        "--state-dir",
        &state,
        "--json",
    ]));
    assert_eq!(
        installed["patched"],
        serde_json::json!([before.pid()]),
        "{installed}"
    );
    before.expect("lib 201 hello");
    // `watch` patches a program started afterwards.
    let mut watch = crate::hs()
        .args([
            "watch",
            "--interval",
            "30",
            "--store",
            &store,
            "--state-dir",
            &state,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let later = App::spawn(Command::new(tree.join("app")));
    later.expect("lib 201 hello");
    eprintln!(
        "watch: a new process was patched within {:?}",
        started.elapsed()
    );
    // `status` sees both patched, and says so to Prometheus.
    let prom = dir.join("hotsplice.prom");
    let status = ok(&hotsplice(&[
        "status",
        "--store",
        &store,
        "--state-dir",
        &state,
        "--prometheus",
        prom.to_str().unwrap(),
        "--json",
    ]));
    let states: Vec<&str> = status["installed"][0]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["patched", "patched"], "{status}");
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(metrics.contains("state=\"patched\"} 2"), "{metrics}");
    // SIGTERM ends the watcher cleanly.
    assert!(
        Command::new("kill")
            .args(["-TERM", &watch.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let ended = watch.wait().unwrap();
    assert!(ended.success(), "watch ended {ended}");
    // Uninstalled: undone everywhere.
    let id = installed["installed"].as_str().unwrap();
    let gone = ok(&hotsplice(&[
        "uninstall",
        id,
        "--store",
        &store,
        "--state-dir",
        &state,
        "--json",
    ]));
    assert_eq!(gone["undone"].as_array().unwrap().len(), 2, "{gone}");
    before.expect("lib 101 hello");
    later.expect("lib 101 hello");
}

/// A bundle installed for a file of another build (built elsewhere from the same source, as
/// an administrator builds a fix for a distribution's binary): the processes that map the
/// file as it was at install are patched (run-pre matching proves their code); after an
/// upgrade replaces the file with the fixed build, a process of the new build is left alone.
#[test]
fn install_for_a_file_of_another_build_until_it_is_upgraded() {
    let dir = scratch("live-install-other-build");
    let (tree, bundle) = build_fixture(&dir, "lib", "lib.patch", "libgreet.so");
    let lib = tree.join("libgreet.so");
    let info = json(
        "info",
        &hotsplice(&["info", bundle.to_str().unwrap(), "--json"]),
    );
    let built_from = info["bundle"]["target"]["build_id"].as_str().unwrap();
    let on_disk = build_id_of(&lib).expect("the library's build-id");
    assert_ne!(on_disk, built_from, "the test needs two builds");
    let old = App::spawn(Command::new(tree.join("app")));
    old.expect("lib 101 hello");
    let store = dir.join("store").display().to_string();
    let state = dir.join("state").display().to_string();
    let installed = ok(&hotsplice(&[
        "install",
        bundle.to_str().unwrap(),
        "--file",
        lib.to_str().unwrap(),
        "--store",
        &store,
        "--state-dir",
        &state,
        "--json",
    ]));
    assert_eq!(
        installed["patched"],
        serde_json::json!([old.pid()]),
        "{installed}"
    );
    old.expect("lib 201 hello");
    // The upgrade: the fixed library is built and renamed over the old one.
    let fixed = dir.join("fixed");
    patched_copy("lib", "lib.patch", &fixed);
    crate::make(&fixed);
    std::fs::copy(fixed.join("libgreet.so"), tree.join("libgreet.so.new")).unwrap();
    std::fs::rename(tree.join("libgreet.so.new"), &lib).unwrap();
    let new = App::spawn(Command::new(tree.join("app")));
    new.expect("lib 201 hello");
    let status = json(
        "status",
        &hotsplice(&["status", "--store", &store, "--state-dir", &state, "--json"]),
    );
    let mut states: Vec<(u64, String)> = status["installed"][0]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().unwrap(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    let mut want = vec![
        (u64::from(old.pid()), "patched".to_string()),
        (u64::from(new.pid()), "other-build".to_string()),
    ];
    want.sort();
    assert_eq!(states, want, "{status}");
    let id = installed["installed"].as_str().unwrap();
    let gone = ok(&hotsplice(&[
        "uninstall",
        id,
        "--store",
        &store,
        "--state-dir",
        &state,
        "--json",
    ]));
    assert_eq!(gone["undone"], serde_json::json!([old.pid()]), "{gone}");
    old.expect("lib 101 hello");
    new.expect("lib 201 hello");
}

#[test]
fn uninstall_and_undo_by_file_touch_only_that_file() {
    let dir = scratch("live-uninstall-scope");
    let (tree, bundle) = installed_library(&dir);
    // A second copy of the program and its library (same build-id) elsewhere: another
    // installation, patched separately.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    for name in ["app", "libgreet.so"] {
        std::fs::copy(tree.join(name), other.join(name)).unwrap();
    }
    let mine = App::spawn(Command::new(tree.join("app")));
    let theirs = App::spawn(Command::new(other.join("app")));
    mine.expect("lib 101 hello");
    theirs.expect("lib 101 hello");
    let store = dir.join("store").display().to_string();
    let state = dir.join("state").display().to_string();
    let installed = ok(&hotsplice(&[
        "install",
        bundle.to_str().unwrap(),
        "--file",
        tree.join("libgreet.so").to_str().unwrap(),
        "--store",
        &store,
        "--state-dir",
        &state,
        "--json",
    ]));
    assert_eq!(installed["patched"], serde_json::json!([mine.pid()]));
    ok(&hotsplice(&[
        "apply",
        bundle.to_str().unwrap(),
        "--file",
        other.join("libgreet.so").to_str().unwrap(),
        "--state-dir",
        &state,
        "--json",
    ]));
    mine.expect("lib 201 hello");
    theirs.expect("lib 201 hello");
    // Uninstalling waits for whoever holds the store (a watch sweep), then undoes the
    // installed file's processes only.
    let released = dir.join("released");
    let lock = dir.join("store/installed/dir.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c"])
        .arg(format!("sleep 1; touch {}", released.display()))
        .spawn()
        .unwrap();
    let held = || {
        Command::new("flock")
            .arg("-n")
            .arg(&lock)
            .arg("true")
            .status()
            .is_ok_and(|s| !s.success())
    };
    while !held() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let id = installed["installed"].as_str().unwrap();
    let gone = ok(&hotsplice(&[
        "uninstall",
        id,
        "--store",
        &store,
        "--state-dir",
        &state,
        "--json",
    ]));
    assert!(released.exists(), "uninstall ran while the store was held");
    holder.wait().unwrap();
    assert_eq!(gone["undone"], serde_json::json!([mine.pid()]), "{gone}");
    mine.expect("lib 101 hello");
    theirs.expect("lib 201 hello");
    // `undo --file` finds a file by device and inode, like `apply --file`: a hard link names
    // the same library.
    let link = other.join("link.so");
    std::fs::hard_link(other.join("libgreet.so"), &link).unwrap();
    let undone = ok(&hotsplice(&[
        "undo",
        id,
        "--file",
        link.to_str().unwrap(),
        "--state-dir",
        &state,
        "--json",
    ]));
    let pids: Vec<u64> = undone["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids, [u64::from(theirs.pid())], "{undone}");
    theirs.expect("lib 101 hello");
}

#[test]
fn a_later_patch_calls_a_function_new_in_an_earlier_one() {
    let setup = Setup::new("live-uses-new", "");
    let (greeting, greeting_id) = setup.bundle("greeting.patch", "");
    // Built on top of greeting.patch: compute() now calls polite(), which exists only in the
    // first patch's memory in a running program.
    let (later, later_id) = setup.bundle_on_top("greeting.patch", "uses-new.patch");

    let app = App::start(&setup.app, 2);
    let pid = app.pid();
    app.expect("value 14 hello");
    // Without the first patch, polite() is nowhere: refused, nothing changed.
    let refused = setup.live("apply", later.to_str().unwrap(), pid);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("polite"),
        "{refused:?}"
    );
    app.expect("value 14 hello");
    ok(&setup.live("apply", greeting.to_str().unwrap(), pid));
    app.expect("value 14 hello, patched");
    ok(&setup.live("apply", later.to_str().unwrap(), pid));
    app.expect("value 16 hello, patched");
    // The first patch cannot go while the later one calls into it.
    let refused = setup.live("undo", &greeting_id, pid);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("undo {later_id} first")),
        "{refused:?}"
    );
    app.expect("value 16 hello, patched");
    ok(&setup.live("undo", &later_id, pid));
    app.expect("value 14 hello, patched");
    ok(&setup.live("undo", &greeting_id, pid));
    app.expect("value 14 hello");
}
