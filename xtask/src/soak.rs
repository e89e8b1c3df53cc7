//! `cargo xtask soak [CYCLES] [THREADS]`: many apply/undo cycles on one busy target.
//!
//! The target (`fixtures/bench/spin`, 64 threads by default, each calling the patched
//! function in a loop on 2 cores: the machine is saturated) checks every call's result: the
//! original or the patched value, never anything else. Each cycle runs `hotsplice apply`
//! then `hotsplice undo` through the command line, then checks: the target is alive, its
//! threads made progress, no call returned a wrong value, the jump was in place while
//! applied, and after undo the function's bytes and the process's memory map are exactly as
//! before the first apply. Pauses (hotsplice's own measure, and the largest stop the
//! target's threads saw) are recorded per cycle; `eval/results/soak.{md,json}` get the
//! distribution.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::pause::percentile;

struct Spin {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

/// One report of the target.
struct Report {
    max_stopped_us: f64,
    iterations: u64,
    patched: u64,
    wrong: u64,
}

impl Spin {
    fn start(exe: &Path, threads: u32) -> Result<Spin> {
        let (child, input, output, _) = crate::pause::spawn_ready(exe, threads)?;
        std::thread::sleep(Duration::from_millis(300));
        let mut spin = Spin {
            child,
            input,
            output,
        };
        spin.report()?;
        Ok(spin)
    }

    fn report(&mut self) -> Result<Report> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the target ended: {status}");
        }
        self.input.write_all(b"r\n")?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |name: &str| -> Result<&str> {
            fields
                .iter()
                .position(|f| *f == name)
                .and_then(|i| fields.get(i + 1))
                .copied()
                .with_context(|| format!("no {name} in {line:?} (target gone?)"))
        };
        Ok(Report {
            max_stopped_us: field("max_stopped_us")?.parse()?,
            iterations: field("iterations")?.parse()?,
            patched: field("patched")?.parse()?,
            wrong: field("wrong")?.parse()?,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_mem(pid: u32, address: u64, len: usize) -> Result<Vec<u8>> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; len];
    mem.read_exact_at(&mut buf, address)?;
    Ok(buf)
}

fn maps(pid: u32) -> Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/maps"))?)
}

fn hex_address(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

fn stats(values: &[f64]) -> Value {
    json!({
        "n": values.len(),
        "p50_us": percentile(values, 50.0),
        "p90_us": percentile(values, 90.0),
        "p99_us": percentile(values, 99.0),
        "p99_9_us": percentile(values, 99.9),
        "max_us": percentile(values, 100.0),
    })
}

/// `cargo xtask soak [CYCLES] [THREADS]`.
pub fn soak(cycles: usize, threads: u32) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "hotsplice"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let work = root.join("target/bench/soak");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let tree = work.join("spin");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(root.join("fixtures/bench/spin"))
        .arg(&tree)
        .status()?;
    if !copied.success()
        || !Command::new("make")
            .arg("-s")
            .current_dir(&tree)
            .status()?
            .success()
    {
        bail!("building the target failed");
    }
    let bundle = work.join("work.hsp");
    let state = work.join("state");
    // hotsplice runs at nice -10: with 64 threads spinning on 2 cores a tool at the default
    // priority gets a 65th of the CPU between its stops and a cycle takes seconds. (The stops
    // themselves run at real-time priority either way.)
    let hs = |args: &[&str]| -> Result<(i32, Value, String)> {
        let plain = crate::nginx::hotsplice();
        let mut command = Command::new("nice");
        command.args(["-n", "-10"]).arg(plain.get_program());
        for (key, value) in plain.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        let out = command
            .args(args)
            .args(["--state-dir", state.to_str().unwrap_or_default()])
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    };
    let built = crate::nginx::hotsplice()
        .args(["build", "--source"])
        .arg(root.join("fixtures/bench/spin"))
        .arg("--diff")
        .arg(root.join("fixtures/bench/work.patch"))
        .args(["--target", "spin", "--cache"])
        .arg(work.join("cache"))
        .arg("-o")
        .arg(&bundle)
        .arg("--json")
        .output()?;
    if !built.status.success() {
        bail!("build: {}", String::from_utf8_lossy(&built.stderr));
    }
    let built: Value = serde_json::from_slice(&built.stdout)?;
    let id = built["id"].as_str().context("bundle id")?.to_string();
    let bundle = bundle.to_str().context("path")?.to_string();

    let mut spin = Spin::start(&tree.join("spin"), threads)?;
    let pid = spin.pid();
    let pid_text = pid.to_string();
    let (code, checked, err) = hs(&["check", &bundle, "--pid", &pid_text, "--json"])?;
    if code != 0 {
        bail!("check: {err}");
    }
    let entry = hex_address(&checked["processes"][0]["functions"][0]["entry"])
        .context("entry of work()")?;
    let original = read_mem(pid, entry, 32)?;
    let original_maps = maps(pid)?;

    let started = Instant::now();
    let mut apply_tool = Vec::new();
    let mut undo_tool = Vec::new();
    let mut apply_target = Vec::new();
    let mut undo_target = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut mismatches = 0usize;
    let mut jump_missing = 0usize;
    let mut map_leaks = 0usize;
    let mut stalls = 0usize;
    let mut retries = 0u64;
    let mut last = spin.report()?;
    let first_iterations = last.iterations;
    // Per stretch of cycles between checkpoints: its pauses and the machine's load, so that a
    // stretch that shared the machine with other work shows.
    let mut stretches: Vec<Value> = Vec::new();
    let (mut stretch_from, mut stretch_started) = ((0, 0), Instant::now());
    for cycle in 1..=cycles {
        for verb in ["apply", "undo"] {
            let what = if verb == "apply" { &bundle } else { &id };
            let (code, v, err) = hs(&[verb, what, "--pid", &pid_text, "--json"])?;
            let report = spin.report()?;
            if code != 0 {
                failures.push(format!("cycle {cycle} {verb}: exit {code}: {err}"));
            } else {
                let p = &v["processes"][0];
                let pause = p["pause_us"].as_f64().unwrap_or(0.0);
                retries += p["attempts"].as_u64().unwrap_or(1).saturating_sub(1);
                if verb == "apply" {
                    apply_tool.push(pause);
                    apply_target.push(report.max_stopped_us);
                    if read_mem(pid, entry, 1)?[0] != 0xe9 {
                        jump_missing += 1;
                    }
                } else {
                    undo_tool.push(pause);
                    undo_target.push(report.max_stopped_us);
                    if read_mem(pid, entry, original.len())? != original {
                        mismatches += 1;
                    }
                    if maps(pid)? != original_maps {
                        map_leaks += 1;
                    }
                }
            }
            if report.iterations <= last.iterations {
                stalls += 1;
            }
            last = report;
        }
        if failures.len() > 20 {
            bail!("too many failures: {failures:#?}");
        }
        if cycle % 500 == 0 || cycle == cycles {
            let (a, u) = stretch_from;
            let p = |v: &[f64], q: f64| crate::pause::percentile(v, q);
            stretches.push(json!({
                "cycles": cycle,
                "seconds": stretch_started.elapsed().as_secs_f64(),
                "load_1min": load_average(),
                "apply_hotsplice_p50_us": p(&apply_tool[a..], 50.0),
                "apply_hotsplice_p99_us": p(&apply_tool[a..], 99.0),
                "apply_target_p99_us": p(&apply_target[a..], 99.0),
                "undo_hotsplice_p50_us": p(&undo_tool[u..], 50.0),
                "undo_hotsplice_p99_us": p(&undo_tool[u..], 99.0),
                "undo_target_p99_us": p(&undo_target[u..], 99.0),
            }));
            stretch_from = (apply_tool.len(), undo_tool.len());
            stretch_started = Instant::now();
            checkpoint(
                &root,
                cycle,
                &[&apply_tool, &undo_tool, &apply_target, &undo_target],
                failures.len(),
                mismatches,
                last.wrong,
            );
            eprintln!(
                "soak: {cycle}/{cycles} cycles, {:.0} s, {} failures, {} byte mismatches, {} wrong results",
                started.elapsed().as_secs_f64(),
                failures.len(),
                mismatches,
                last.wrong
            );
        }
    }
    let elapsed = started.elapsed();
    let alive = spin.child.try_wait()?.is_none();
    let final_report = spin.report()?;
    let result = json!({
        "machine": crate::machine(),
        "cycles": cycles,
        "threads": threads,
        "seconds": elapsed.as_secs_f64(),
        "target_alive": alive,
        "target_calls": final_report.iterations - first_iterations,
        "calls_patched": final_report.patched,
        "calls_wrong": final_report.wrong,
        "failed_invocations": failures,
        "byte_mismatches_after_undo": mismatches,
        "jump_missing_after_apply": jump_missing,
        "memory_map_differences_after_undo": map_leaks,
        "cycles_without_progress": stalls,
        "busy_retries": retries,
        "apply_hotsplice": stats(&apply_tool),
        "undo_hotsplice": stats(&undo_tool),
        "apply_target": stats(&apply_target),
        "undo_target": stats(&undo_target),
        "stretches": stretches,
    });
    write(&root, &result)?;
    let clean = alive
        && final_report.wrong == 0
        && result["failed_invocations"]
            .as_array()
            .is_some_and(Vec::is_empty)
        && mismatches == 0
        && jump_missing == 0
        && map_leaks == 0;
    if !clean {
        bail!("the soak found problems: see eval/results/soak.md");
    }
    Ok(())
}

/// Progress on disk, so that a soak cut short still leaves evidence.
fn checkpoint(
    root: &Path,
    cycle: usize,
    pauses: &[&Vec<f64>; 4],
    failures: usize,
    mismatches: usize,
    wrong: u64,
) {
    let text = json!({
        "cycles_done": cycle,
        "failures": failures,
        "byte_mismatches_after_undo": mismatches,
        "calls_wrong": wrong,
        "apply_hotsplice": stats(pauses[0]),
        "undo_hotsplice": stats(pauses[1]),
        "apply_target": stats(pauses[2]),
        "undo_target": stats(pauses[3]),
    });
    let _ = std::fs::write(
        root.join("target/bench/soak/progress.json"),
        text.to_string() + "\n",
    );
}

/// The machine's load average over the last minute (`/proc/loadavg`); 0 when unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn write(root: &Path, r: &Value) -> Result<()> {
    let results = root.join("eval/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(
        results.join("soak.json"),
        serde_json::to_string_pretty(r)? + "\n",
    )?;
    let mut md = String::new();
    let _ = writeln!(md, "# Soak: apply/undo cycles on a busy target\n");
    let _ = writeln!(
        md,
        "`cargo xtask soak {} {}` on {}. The target (`fixtures/bench/spin`) runs {} threads, each \
         calling the patched function `work()` in a loop and checking every result (the \
         original `i + 1` or the patched `i + 2`, nothing else); on 2 cores that saturates the \
         machine. Each cycle is `hotsplice apply` then `hotsplice undo` through the command \
         line (signed bundle, trusted key, hotsplice at nice -10 so that it gets CPU time \
         between its stops), each followed by checks of the target. {:.0} s in all.\n",
        r["cycles"],
        r["threads"],
        r["machine"].as_str().unwrap_or(""),
        r["threads"],
        r["seconds"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(md, "| check | result |\n|---|---|");
    let rows = [
        ("target alive at the end", r["target_alive"].to_string()),
        ("calls of `work()` checked", r["target_calls"].to_string()),
        (
            "calls that ran the patched code",
            r["calls_patched"].to_string(),
        ),
        ("calls with a wrong result", r["calls_wrong"].to_string()),
        (
            "failed hotsplice invocations",
            r["failed_invocations"]
                .as_array()
                .map_or(0, Vec::len)
                .to_string(),
        ),
        (
            "byte mismatches after undo (32 bytes at the entry)",
            r["byte_mismatches_after_undo"].to_string(),
        ),
        (
            "jump missing after apply",
            r["jump_missing_after_apply"].to_string(),
        ),
        (
            "memory map not identical to the original after undo",
            r["memory_map_differences_after_undo"].to_string(),
        ),
        (
            "steps after which the target had made no progress",
            r["cycles_without_progress"].to_string(),
        ),
        (
            "retries because a thread was busy in `work()`",
            r["busy_retries"].to_string(),
        ),
    ];
    for (what, value) in rows {
        let _ = writeln!(md, "| {what} | {value} |");
    }
    if let Some(failed) = r["failed_invocations"].as_array().filter(|f| !f.is_empty()) {
        let _ = writeln!(
            md,
            "\nFailed invocations (a refusal leaves the target as it was; the next cycles go on):\n"
        );
        for f in failed {
            let _ = writeln!(md, "- {}", f.as_str().unwrap_or_default());
        }
    }
    let _ = writeln!(
        md,
        "\nPauses in µs. *hotsplice*: its reported pause — the longest total time one thread was \
         stopped by the invocation, every stop summed (`pause_us`). *target*: the largest gap \
         any of its threads saw between two loop iterations during the invocation, minus \
         run-queue wait (on this saturated machine it also holds whatever else held a thread \
         up during the whole command).\n"
    );
    let _ = writeln!(
        md,
        "| measure | n | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
    );
    for (name, key) in [
        ("apply, hotsplice", "apply_hotsplice"),
        ("apply, target", "apply_target"),
        ("undo, hotsplice", "undo_hotsplice"),
        ("undo, target", "undo_target"),
    ] {
        let s = &r[key];
        let _ = writeln!(
            md,
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s["n"],
            s["p50_us"].as_f64().unwrap_or(0.0),
            s["p90_us"].as_f64().unwrap_or(0.0),
            s["p99_us"].as_f64().unwrap_or(0.0),
            s["p99_9_us"].as_f64().unwrap_or(0.0),
            s["max_us"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(stretches) = r["stretches"].as_array().filter(|s| !s.is_empty()) {
        let _ = writeln!(
            md,
            "\nBy stretch of cycles (µs; *load*: the machine's one-minute load average at its \
             end — the target's busy threads alone hold it near their number, more means other \
             work shared the cores):\n"
        );
        let _ = writeln!(
            md,
            "| up to cycle | seconds | load | apply, hotsplice p50 / p99 | apply, target p99 | undo, hotsplice p50 / p99 | undo, target p99 |\n|---|---|---|---|---|---|---|"
        );
        for x in stretches {
            let f = |k: &str| x[k].as_f64().unwrap_or(0.0);
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.1} | {:.0} / {:.0} | {:.0} | {:.0} / {:.0} | {:.0} |",
                x["cycles"],
                f("seconds"),
                f("load_1min"),
                f("apply_hotsplice_p50_us"),
                f("apply_hotsplice_p99_us"),
                f("apply_target_p99_us"),
                f("undo_hotsplice_p50_us"),
                f("undo_hotsplice_p99_us"),
                f("undo_target_p99_us"),
            );
        }
    }
    std::fs::write(results.join("soak.md"), md)?;
    eprintln!("soak: wrote eval/results/soak.{{md,json}}");
    Ok(())
}
