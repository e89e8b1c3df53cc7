//! The hostile fixture (`fixtures/hostile/app`): a target that checks every result of the
//! functions being patched, built in a scratch copy with its bundles, and run with its output
//! collected. Used by the hostile suite and the bad-input table.

#![cfg_attr(not(feature = "fault-injection"), allow(dead_code))]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::scratch;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hostile")
}

/// The target program, built in a scratch copy, and its bundles.
pub struct Fixture {
    pub dir: PathBuf,
    pub exe: PathBuf,
    pub state: String,
    bundles: HashMap<&'static str, (String, String)>,
}

impl Fixture {
    /// Builds the target with `make MAKE_ARGS` and a bundle for each patch (built from the
    /// unchanged fixture source, with plain `make`).
    pub fn new(name: &str, make_args: &str, patches: &[&'static str]) -> Fixture {
        let dir = scratch(name);
        let tree = dir.join("run");
        assert!(
            Command::new("cp")
                .arg("-r")
                .arg(fixture_dir().join("app"))
                .arg(&tree)
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("make -s {make_args}"))
                .current_dir(&tree)
                .status()
                .unwrap()
                .success()
        );
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut fixture = Fixture {
            exe: tree.join("target"),
            state: state.display().to_string(),
            dir,
            bundles: HashMap::new(),
        };
        for &patch in patches {
            let out = fixture.dir.join(format!("{patch}.hsp"));
            let id = crate::build_bundle(
                &fixture_dir().join("app"),
                &fixture_dir().join("patches").join(format!("{patch}.patch")),
                "target",
                &[],
                &fixture.dir,
                &out,
            );
            fixture
                .bundles
                .insert(patch, (out.display().to_string(), id));
        }
        fixture
    }

    pub fn bundle(&self, patch: &str) -> &str {
        &self.bundles[patch].0
    }

    pub fn id(&self, patch: &str) -> &str {
        &self.bundles[patch].1
    }

    /// `hotsplice ARGS --state-dir STATE --json`, not waited for.
    pub fn spawn(&self, args: &[&str]) -> Child {
        crate::hs()
            .args(args)
            .args(["--state-dir", &self.state, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.spawn(args).wait_with_output().unwrap()
    }

    /// No journal left in the state directory.
    pub fn no_journal(&self) -> bool {
        std::fs::read_dir(&self.state).unwrap().all(|e| {
            !e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".journal.json")
        })
    }
}

/// A running target whose stdout lines are collected in the background.
pub struct Target {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub sibling: Option<u32>,
}

impl Target {
    pub fn start(exe: &Path, args: &[&str]) -> Target {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut target = Target {
            child,
            stdin,
            lines,
            sibling: None,
        };
        loop {
            let line = target.next_line(Duration::from_secs(10)).expect("ready");
            if let Some(pid) = line.strip_prefix("sibling ") {
                target.sibling = pid.parse().ok();
            }
            if line == "ready" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        target
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next line starting with `prefix` (others are skipped).
    pub fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(line) = self.next_line(Duration::from_millis(100))
                && line.starts_with(prefix)
            {
                return line;
            }
        }
        panic!("no line starting with {prefix:?}");
    }

    /// Sends a command line (see `fixtures/hostile/app/main.c`).
    pub fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .unwrap();
    }

    /// (iterations, wrong, patched work() results, patched aux() results).
    pub fn report(&mut self) -> [u64; 4] {
        self.stdin.write_all(b"r\n").unwrap();
        let line = self.expect("report ");
        let mut out = [0u64; 4];
        for (i, field) in line.split_whitespace().skip(1).enumerate().take(4) {
            out[i] = field.split('=').nth(1).unwrap().parse().unwrap();
        }
        out
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Alive, no wrong result so far, and still making progress.
    pub fn healthy(&mut self, what: &str) -> [u64; 4] {
        assert!(self.alive(), "{what}: the target died");
        let before = self.report();
        std::thread::sleep(Duration::from_millis(20));
        let after = self.report();
        assert_eq!(after[1], 0, "{what}: wrong results");
        assert!(after[0] > before[0], "{what}: the target makes no progress");
        after
    }

    /// Whether the next calls return the patched work() result.
    pub fn work_patched(&mut self) -> bool {
        let a = self.report();
        std::thread::sleep(Duration::from_millis(30));
        let b = self.report();
        b[2] > a[2]
    }

    pub fn aux_patched(&mut self) -> bool {
        let a = self.report();
        std::thread::sleep(Duration::from_millis(30));
        let b = self.report();
        b[3] > a[3]
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.sibling {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}
