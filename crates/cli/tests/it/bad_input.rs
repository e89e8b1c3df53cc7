//! Bad inputs, tried one by one against the real binary: malformed bundles and objects, wrong
//! programs and architectures, processes that cannot or must not be patched. Each must end
//! with its documented exit status and a clear one-line error — never a panic, never a change
//! to the running program. The table of outcomes goes to the test's scratch directory;
//! `cargo xtask bad-input-table` writes it to `eval/results/bad-input.md`.

use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::hs;
use crate::live::{App, Setup, ok};
use crate::targets::{Fixture, Target};

/// One row of the table.
struct Row {
    input: String,
    command: String,
    expected: i32,
    output: Output,
}

/// Replaces what changes from run to run (pids, paths, addresses, ids) so the table is stable.
fn normalise(text: &str, replacements: &[(String, &str)]) -> String {
    let mut text = text.to_string();
    for (from, to) in replacements {
        if !from.is_empty() {
            text = text.replace(from.as_str(), to);
        }
    }
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let digits = rest[at + 2..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .count();
        if digits >= 6 {
            out.push_str("0x…");
        } else {
            out.push_str(&rest[at..at + 2 + digits]);
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    // State files are named by pid.
    let mut next = String::new();
    let mut rest = out.as_str();
    while let Some(at) = rest.find(".json") {
        let digits = rest[..at]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .count();
        next.push_str(&rest[..at - digits]);
        next.push_str(if digits >= 3 {
            "<pid>"
        } else {
            &rest[at - digits..at]
        });
        next.push_str(".json");
        rest = &rest[at + 5..];
    }
    next.push_str(rest);
    out = next;
    // Hashes (64 hex digits) change with every build of the bundle.
    let mut next = String::new();
    let mut rest = out.as_str();
    while let Some(at) = rest.find(|c: char| c.is_ascii_hexdigit()) {
        next.push_str(&rest[..at]);
        let len = rest[at..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .count();
        next.push_str(if len == 64 {
            "<sha256>"
        } else {
            &rest[at..at + len]
        });
        rest = &rest[at + len..];
    }
    next.push_str(rest);
    out = next;
    // Pids of processes made by the test (pids 0, 1 and 2 are kept).
    for word in ["process ", "thread ", "pid "] {
        let mut next = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(word) {
            next.push_str(&rest[..at + word.len()]);
            let digits = rest[at + word.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .count();
            let number = &rest[at + word.len()..at + word.len() + digits];
            next.push_str(if digits >= 3 { "<pid>" } else { number });
            rest = &rest[at + word.len() + digits..];
        }
        next.push_str(rest);
        out = next;
    }
    let mut final_text = String::new();
    let mut rest = out.as_str();
    while let Some(at) = rest.find("hs-") {
        final_text.push_str(&rest[..at + 3]);
        let digits = rest[at + 3..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .count();
        final_text.push_str(if digits >= 8 {
            "…"
        } else {
            &rest[at + 3..at + 3 + digits]
        });
        rest = &rest[at + 3 + digits..];
    }
    final_text.push_str(rest);
    final_text
}

/// A 32-bit x86 program (assembled with binutils; no multilib needed) that sleeps forever.
/// A program of `fixtures/targets/`, compiled into `dir`.
fn compile_target(name: &str, dir: &Path) -> PathBuf {
    let exe = dir.join(name);
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/targets/{name}.c"));
    assert!(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    exe
}

fn i386_program(dir: &Path) -> PathBuf {
    let source = dir.join("sleeper.s");
    std::fs::write(
        &source,
        ".globl _start\n_start:\n1: movl $162, %eax\n movl $ts, %ebx\n xorl %ecx, %ecx\n \
         int $0x80\n jmp 1b\n.data\nts: .long 1, 0\n",
    )
    .unwrap();
    let object = dir.join("sleeper.o");
    assert!(
        Command::new("as")
            .arg("--32")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap()
            .success()
    );
    // Named like the bundle's target, so only its architecture tells it apart.
    let program = dir.join("i386").join("app");
    std::fs::create_dir_all(program.parent().unwrap()).unwrap();
    assert!(
        Command::new("ld")
            .args(["-m", "elf_i386"])
            .arg(&object)
            .arg("-o")
            .arg(&program)
            .status()
            .unwrap()
            .success()
    );
    program
}

#[test]
fn bad_inputs_are_refused_cleanly_and_tabulated() {
    let setup = Setup::new("bad-input", "");
    let dir = setup.dir.clone();
    let (bundle, _id) = setup.bundle("fix.patch", "");
    let app = App::start(&setup.app, 2);
    let pid = app.pid().to_string();
    let entry_in = |pid: u32| {
        let checked = ok(&setup.live("check", bundle.to_str().unwrap(), pid));
        u64::from_str_radix(
            checked["processes"][0]["functions"][0]["entry"]
                .as_str()
                .unwrap()
                .trim_start_matches("0x"),
            16,
        )
        .unwrap()
    };
    let entry = entry_in(app.pid());
    let code_before = app.bytes(entry, 64);
    let state = setup.state.clone();
    let write = |name: &str, bytes: &[u8]| -> String {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let bundle_bytes = std::fs::read(&bundle).unwrap();
    let work_o = dir.join("run/work.o");
    let object_bytes = std::fs::read(&work_o).unwrap();

    let mut rows: Vec<Row> = Vec::new();
    let mut run_with =
        |input: &str, expected: i32, args: &[&str], user: Option<u32>, envs: &[(&str, String)]| {
            let mut cmd = match user {
                Some(uid) => {
                    let mut c = Command::new("setpriv");
                    c.arg(format!("--reuid={uid}"))
                        .arg(format!("--regid={uid}"))
                        .arg("--clear-groups")
                        .arg(env!("CARGO_BIN_EXE_hotsplice"))
                        .env("HOTSPLICE_TRUST_DIR", &crate::test_keys().1);
                    c
                }
                None => hs(),
            };
            cmd.args(args)
                .env("HOTSPLICE_STATE_DIR", &state)
                .env("HOTSPLICE_AUDIT_LOG", "/dev/null");
            for (k, v) in envs {
                cmd.env(k, v);
            }
            let output = cmd.output().unwrap();
            rows.push(Row {
                input: input.to_string(),
                command: args
                    .iter()
                    .take_while(|a| !a.starts_with('-'))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                expected,
                output,
            });
        };
    let mut run = |input: &str, expected: i32, args: &[&str], user: Option<u32>| {
        run_with(input, expected, args, user, &[]);
    };

    // --- Bundles.
    let text = write("notes.txt", b"not a bundle at all\n");
    run(
        "bundle: a text file",
        2,
        &["apply", &text, "--pid", &pid],
        None,
    );
    let empty = write("empty.hsp", b"");
    run(
        "bundle: empty file",
        2,
        &["apply", &empty, "--pid", &pid],
        None,
    );
    let truncated = write("truncated.hsp", &bundle_bytes[..bundle_bytes.len() / 2]);
    run(
        "bundle: truncated to half",
        2,
        &["apply", &truncated, "--pid", &pid],
        None,
    );
    let mut flipped = bundle_bytes.clone();
    let at = flipped.len() - 20;
    flipped[at] ^= 0x20;
    let flipped = write("flipped.hsp", &flipped);
    run(
        "bundle: one content byte changed",
        2,
        &["apply", &flipped, "--pid", &pid],
        None,
    );
    let newline = bundle_bytes.iter().position(|&b| b == b'\n').unwrap();
    let mut future = b"hotsplice-bundle 99".to_vec();
    future.extend_from_slice(&bundle_bytes[newline..]);
    let future = write("future.hsp", &future);
    run(
        "bundle: unknown format version",
        2,
        &["apply", &future, "--pid", &pid],
        None,
    );
    let app_path = setup.app.display().to_string();
    run(
        "bundle: an ELF executable",
        2,
        &["apply", &app_path, "--pid", &pid],
        None,
    );
    let missing = dir.join("missing.hsp").display().to_string();
    run(
        "bundle: no such file",
        2,
        &["apply", &missing, "--pid", &pid],
        None,
    );
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let garbage = write("garbage.hsp", &garbage);
    run("bundle: random bytes", 2, &["info", &garbage], None);

    // --- Objects for `diff`.
    let pre = work_o.display().to_string();
    run("object: a text file", 2, &["diff", &text, &pre], None);
    let mut arm = object_bytes.clone();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes()); // e_machine = EM_AARCH64
    let arm = write("aarch64.o", &arm);
    run(
        "object: wrong architecture (aarch64)",
        2,
        &["diff", &pre, &arm],
        None,
    );
    let i386 = i386_program(&dir);
    let i386_o = dir.join("sleeper.o").display().to_string();
    run("object: 32-bit x86 ELF", 2, &["diff", &i386_o, &pre], None);
    let cut = write("cut.o", &object_bytes[..object_bytes.len() / 3]);
    run("object: truncated ELF", 2, &["diff", &pre, &cut], None);
    run(
        "object: an executable, not an object",
        2,
        &["diff", &app_path, &app_path],
        None,
    );
    let mut headers = object_bytes.clone();
    headers[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes()); // e_shoff
    let headers = write("bad-shoff.o", &headers);
    run(
        "object: section headers out of range",
        2,
        &["diff", &pre, &headers],
        None,
    );

    // --- Targets.
    let bundle = bundle.display().to_string();
    let mut other = Command::new("sleep")
        .arg("1000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    run(
        "wrong binary: a `sleep` process",
        1,
        &["apply", &bundle, "--pid", &other.id().to_string()],
        None,
    );
    let _ = other.kill();
    let _ = other.wait();

    let rebuilt = Setup::new("bad-input-O1", "CFLAGS='-O1 -g'");
    let o1 = App::start(&rebuilt.app, 1);
    run(
        "wrong build: the same source compiled with -O1",
        1,
        &["apply", &bundle, "--pid", &o1.pid().to_string()],
        None,
    );
    drop(o1);

    let modified = App::start(&setup.app, 1);
    let modified_entry = entry_in(modified.pid());
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{}/mem", modified.pid()))
        .unwrap();
    let mut original = [0u8; 64];
    mem.read_exact_at(&mut original, modified_entry).unwrap();
    // `compute` begins `addl $1, calls(%rip)`: make it `addl $2` (behaviour otherwise intact).
    assert_eq!(&original[..2], &[0x83, 0x05], "{original:02x?}");
    mem.write_all_at(&[2], modified_entry + 6).unwrap();
    run(
        "modified text: one byte of `compute` changed in memory",
        1,
        &["apply", &bundle, "--pid", &modified.pid().to_string()],
        None,
    );
    let mut after = [0u8; 64];
    mem.read_exact_at(&mut after, modified_entry).unwrap();
    assert_eq!(after[6], 2);
    assert_eq!(
        after[7..],
        original[7..],
        "refused apply left the code alone"
    );
    modified.expect("value 14 hello");
    drop(modified);

    let mut sleeper = Command::new(&i386).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    run(
        "wrong architecture: a 32-bit x86 process named like the target",
        2,
        &["apply", &bundle, "--pid", &sleeper.id().to_string()],
        None,
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    run(
        "pid of a kernel thread (kthreadd, pid 2)",
        2,
        &["apply", &bundle, "--pid", "2"],
        None,
    );
    // What pid 1 is depends on the machine (init, a container's entry point); whatever it is,
    // it must not be changed: any refusal or error will do, and the table records which.
    run("pid 1", -1, &["apply", &bundle, "--pid", "1"], None);
    run("pid 0", 2, &["apply", &bundle, "--pid", "0"], None);

    let mut zombie = Command::new("true").spawn().unwrap();
    let zombie_pid = zombie.id().to_string();
    std::thread::sleep(std::time::Duration::from_millis(200));
    run(
        "a zombie process",
        3,
        &["apply", &bundle, "--pid", &zombie_pid],
        None,
    );
    let _ = zombie.wait();
    run(
        "a pid that no longer exists",
        3,
        &["apply", &bundle, "--pid", &zombie_pid],
        None,
    );

    run(
        "permission denied: run as user nobody against root's process",
        3,
        &["apply", &bundle, "--pid", &pid],
        Some(65534),
    );
    run(
        "an executable path no process runs",
        2,
        &["apply", &bundle, "--exe", "/nonexistent/program"],
        None,
    );
    run(
        "undo: a patch never applied",
        2,
        &["undo", "hs-0123456789ab", "--pid", &pid],
        None,
    );
    run(
        "undo: a patch id with a path in it",
        2,
        &["undo", "../../etc/passwd", "--pid", &pid],
        None,
    );

    // --- Hostile conditions (issue 11): each a single invocation, its message tabulated.
    let hostile = Fixture::new("bad-input-hostile", "", &["work"]);
    let work = hostile.bundle("work").to_string();
    for (filter, what) in [
        (
            "seccomp-kill",
            "a target whose seccomp filter kills the process on mmap",
        ),
        (
            "seccomp-eperm",
            "a target whose seccomp filter fails mmap with EPERM",
        ),
    ] {
        let target = Target::start(&hostile.exe, &["2", filter]);
        run_with(
            what,
            1,
            &["apply", &work, "--pid", &target.pid().to_string()],
            None,
            &[],
        );
        drop(target);
    }
    // Bundles built from the plain source, applied to another version of the program whose
    // function the new code calls has another signature.
    let other = Fixture::new(
        "bad-input-callee",
        "CFLAGS='-O2 -g -DHELPER2 -DPEER2'",
        &["helper", "peer"],
    );
    let target = Target::start(&other.exe, &["2"]);
    for (patch, what) in [
        (
            "helper",
            "another version: the new code calls helper() of its own file, which takes two arguments in the running build",
        ),
        (
            "peer",
            "another version: the new code calls peer() of another file, which takes two arguments in the running build",
        ),
    ] {
        run_with(
            what,
            1,
            &[
                "apply",
                other.bundle(patch),
                "--pid",
                &target.pid().to_string(),
            ],
            None,
            &[],
        );
    }
    drop(target);
    let traced = Target::start(&hostile.exe, &["1"]);
    let tracer_exe = compile_target("tracer", &dir);
    let mut tracer = Command::new(&tracer_exe)
        .arg(traced.pid().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(tracer.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "tracing");
    }
    run_with(
        "another tracer (a debugger, strace) holds the target",
        3,
        &["apply", &work, "--pid", &traced.pid().to_string()],
        None,
        &[],
    );
    let _ = tracer.kill();
    let _ = tracer.wait();
    drop(traced);
    let orphaned = Target::start(&hostile.exe, &["2", "exitmain"]);
    run_with(
        "the main thread has called pthread_exit (others run on): patched",
        0,
        &["apply", &work, "--pid", &orphaned.pid().to_string()],
        None,
        &[],
    );
    run_with(
        "the same pid twice: patched once",
        0,
        &[
            "undo",
            hostile.id("work"),
            "--pid",
            &orphaned.pid().to_string(),
            "--pid",
            &orphaned.pid().to_string(),
        ],
        None,
        &[],
    );
    drop(orphaned);
    let plain = Target::start(&hostile.exe, &["1"]);
    let plain_pid = plain.pid().to_string();
    let link = dir.join("state-link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&state, &link).unwrap();
    run_with(
        "state directory: a symbolic link",
        3,
        &["apply", &work, "--pid", &plain_pid],
        None,
        &[("HOTSPLICE_STATE_DIR", link.display().to_string())],
    );
    let open_state = dir.join("state-open");
    std::fs::create_dir_all(&open_state).unwrap();
    std::fs::set_permissions(
        &open_state,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    run_with(
        "state directory: writable by everyone",
        3,
        &["apply", &work, "--pid", &plain_pid],
        None,
        &[("HOTSPLICE_STATE_DIR", open_state.display().to_string())],
    );
    let record = Path::new(&state).join(format!("{plain_pid}.json"));
    std::fs::write(&record, "{ not json").unwrap();
    run_with(
        "state record: corrupt",
        3,
        &["apply", &work, "--pid", &plain_pid],
        None,
        &[],
    );
    std::fs::remove_file(&record).unwrap();
    let applied = hostile.run(&["apply", &work, "--pid", &plain_pid]);
    assert_eq!(applied.status.code(), Some(0), "{applied:?}");
    let text = std::fs::read_to_string(Path::new(&hostile.state).join(format!("{plain_pid}.json")))
        .unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&text).unwrap();
    forged["patches"][0]["functions"][0]["replaced"] = "cccccccccc".into();
    std::fs::write(
        Path::new(&hostile.state).join(format!("{plain_pid}.json")),
        forged.to_string(),
    )
    .unwrap();
    run_with(
        "state record: forged original bytes (undo)",
        1,
        &["undo", hostile.id("work"), "--pid", &plain_pid],
        None,
        &[("HOTSPLICE_STATE_DIR", hostile.state.clone())],
    );
    std::fs::write(
        Path::new(&hostile.state).join(format!("{plain_pid}.json")),
        &text,
    )
    .unwrap();
    assert_eq!(
        hostile
            .run(&["undo", hostile.id("work"), "--pid", &plain_pid])
            .status
            .code(),
        Some(0)
    );
    let keys = dir.join("keys-fifo");
    std::fs::create_dir_all(&keys).unwrap();
    let _ = Command::new("mkfifo").arg(keys.join("evil.pub")).status();
    run_with(
        "trusted keys: a FIFO named like a key",
        1,
        &["check", &work, "--pid", &plain_pid],
        None,
        &[("HOTSPLICE_TRUST_DIR", keys.display().to_string())],
    );
    let huge = dir.join("huge.hsp");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    run_with(
        "bundle: a 3 GiB file",
        2,
        &["apply", &huge.display().to_string(), "--pid", &plain_pid],
        None,
        &[],
    );
    let _ = std::fs::remove_file(&huge);
    let module = dir.join("fake.ko");
    std::fs::write(&module, b"\x7fELF not really a module").unwrap();
    run_with(
        "kernel module: unsigned",
        1,
        &["kernel", "apply", &module.display().to_string()],
        None,
        &[],
    );
    run_with(
        "missing bundle file with --json (prints an error object)",
        2,
        &["apply", "/nonexistent.hsp", "--pid", &plain_pid, "--json"],
        None,
        &[],
    );
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id().to_string();
    let _ = gone.wait();
    run_with(
        "list: one process gone (the others are listed)",
        3,
        &["list", "--pid", &plain_pid, "--pid", &gone_pid],
        None,
        &[],
    );
    drop(plain);

    // Every row: the expected exit status, one clear error, no panic.
    let replacements = [(dir.display().to_string(), "<dir>")];
    let mut table = String::from(
        "# Bad input: what hotsplice does with it\n\n\
         Generated by `cargo xtask bad-input-table` (which runs the test \
         `bad_inputs_are_refused_cleanly_and_tabulated`, crates/cli/tests/it/bad_input.rs): \
         each input is tried against the real binary; the test checks the exit status, that the \
         error is one clear message and not a panic, and that the running program's code is \
         byte-for-byte unchanged afterwards. Exit status: 1 refused, 2 bad input, 3 environment \
         (see `hotsplice --help`). Pids, paths and addresses are normalised.\n\n\
         | input | command | exit | message |\n|---|---|---|---|\n",
    );
    let mut problems = Vec::new();
    for row in &rows {
        let code = row.output.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&row.output.stderr);
        let message = if row.expected == 0 {
            // A case that must succeed: what it printed.
            let stdout = String::from_utf8_lossy(&row.output.stdout);
            format!("ok: {}", stdout.lines().next().unwrap_or(""))
        } else {
            stderr
                .lines()
                .find(|l| l.starts_with("hotsplice: error:"))
                .unwrap_or("")
                .trim_start_matches("hotsplice: error: ")
                .to_string()
        };
        let message = normalise(&message, &replacements);
        if stderr.contains("panicked") {
            problems.push(format!("{}: panic: {stderr}", row.input));
        }
        if message.is_empty() {
            problems.push(format!("{}: no error message: {stderr}", row.input));
        }
        let expected_ok = if row.expected < 0 {
            code > 0
        } else {
            code == row.expected
        };
        if !expected_ok {
            problems.push(format!(
                "{}: exit {code}, expected {}: {stderr}",
                row.input, row.expected
            ));
        }
        let _ = writeln!(
            table,
            "| {} | `{}` | {code} | {} |",
            row.input,
            normalise(&row.command, &replacements),
            message.replace('|', "\\|")
        );
    }
    // `cargo xtask bad-input-table` asks for the table in eval/results; a plain test run
    // leaves the tracked file alone.
    let results = std::env::var_os("HOTSPLICE_BAD_INPUT_TABLE")
        .map_or_else(|| dir.join("bad-input.md"), PathBuf::from);
    std::fs::write(results, &table).unwrap();
    assert!(problems.is_empty(), "{}\n\n{table}", problems.join("\n"));

    // The running program was never changed.
    assert!(
        std::fs::metadata(format!("/proc/{pid}/mem")).is_ok(),
        "the program is still running"
    );
    assert_eq!(app.bytes(entry, 64), code_before);
    app.expect("value 14 hello");
}
