//! `cargo xtask bench-pause`: how long targets are stopped by `hotsplice apply` and `undo`.
//!
//! The target (`fixtures/bench/spin`) runs N busy threads that each measure the largest
//! *stopped* time between two loop iterations (the gap minus run-queue wait from
//! `/proc/thread-self/schedstat`, so CPU contention is not counted). For each of ≥ 100 apply
//! and undo cycles, the window around one hotsplice invocation is read from the target, and
//! hotsplice's own measurement (first interrupt to last release) from its `--json` output.
//! Baseline windows without hotsplice show the noise floor of the machine.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Target {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

/// Starts a busy target (`fixtures/bench/spin`) with `threads` threads and waits for its
/// `ready` line; returns it with its request and answer pipes.
pub(crate) fn spawn_ready(
    exe: &Path,
    threads: u32,
) -> Result<(Child, ChildStdin, BufReader<ChildStdout>)> {
    let mut child = Command::new(exe)
        .arg(threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let input = child.stdin.take().context("stdin")?;
    let mut output = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    output.read_line(&mut line)?;
    if !line.starts_with("ready") {
        bail!("target said {line:?}");
    }
    Ok((child, input, output))
}

impl Target {
    fn start(exe: &Path, threads: u32) -> Result<Target> {
        let (child, input, output) = spawn_ready(exe, threads)?;
        let mut target = Target {
            child,
            input,
            output,
        };
        std::thread::sleep(Duration::from_millis(300));
        target.window()?; // discard start-up
        Ok(target)
    }

    /// The largest stopped time (µs) since the last call.
    fn window(&mut self) -> Result<f64> {
        self.input.write_all(b"r\n")?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad report {line:?}"))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_json(args: &[&str]) -> Result<Value> {
    let out = crate::nginx::hotsplice().args(args).output()?;
    if !out.status.success() {
        bail!(
            "hotsplice {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(values: &[f64]) -> Value {
    json!({
        "n": values.len(),
        "p50_us": percentile(values, 50.0),
        "p99_us": percentile(values, 99.0),
        "max_us": percentile(values, 100.0),
    })
}

/// `cargo xtask bench-pause [CYCLES]`.
pub fn bench_pause(cycles: usize) -> Result<()> {
    let root = root();
    let status = Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "hotsplice"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let work = root.join("target/bench/pause");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let tree = work.join("spin");
    Command::new("cp")
        .arg("-r")
        .arg(root.join("fixtures/bench/spin"))
        .arg(&tree)
        .status()?;
    if !Command::new("make")
        .arg("-s")
        .current_dir(&tree)
        .status()?
        .success()
    {
        bail!("make failed");
    }
    let bundle = work.join("work.hsp");
    let built = run_json(&[
        "build",
        "--source",
        root.join("fixtures/bench/spin").to_str().unwrap(),
        "--diff",
        root.join("fixtures/bench/work.patch").to_str().unwrap(),
        "--target",
        "spin",
        "--cache",
        work.join("cache").to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        "--json",
    ])?;
    let id = built["id"].as_str().context("bundle id")?.to_string();
    let state = work.join("state");
    let mut rows = Vec::new();
    for threads in [1u32, 8, 64] {
        eprintln!("bench-pause: {threads} thread(s), {cycles} cycles");
        let mut target = Target::start(&tree.join("spin"), threads)?;
        let pid = target.child.id().to_string();
        // Baseline: as many windows as measured ones, about as long as a hotsplice run.
        let mut baseline = Vec::new();
        for _ in 0..cycles {
            target.window()?;
            std::thread::sleep(Duration::from_millis(60));
            baseline.push(target.window()?);
        }
        let (mut apply_target, mut apply_tool, mut undo_target, mut undo_tool) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut realtime = true;
        for _ in 0..cycles {
            for (verb, what, targets, tools) in [
                (
                    "apply",
                    bundle.to_str().unwrap(),
                    &mut apply_target,
                    &mut apply_tool,
                ),
                ("undo", id.as_str(), &mut undo_target, &mut undo_tool),
            ] {
                target.window()?;
                let v = run_json(&[
                    verb,
                    what,
                    "--pid",
                    &pid,
                    "--state-dir",
                    state.to_str().unwrap(),
                    "--json",
                ])?;
                targets.push(target.window()?);
                let p = &v["processes"][0];
                tools.push(p["pause_us"].as_f64().unwrap_or(0.0));
                realtime &= p["realtime"].as_bool().unwrap_or(false);
            }
        }
        rows.push(json!({
            "threads": threads,
            "cycles": cycles,
            "realtime": realtime,
            "baseline_target": stats(&baseline),
            "apply_target": stats(&apply_target),
            "apply_hotsplice": stats(&apply_tool),
            "undo_target": stats(&undo_target),
            "undo_hotsplice": stats(&undo_tool),
        }));
    }
    write(&root, &rows)
}

fn write(root: &Path, rows: &[Value]) -> Result<()> {
    let results = root.join("eval/results");
    std::fs::create_dir_all(&results)?;
    let machine = crate::machine();
    std::fs::write(
        results.join("pause.json"),
        serde_json::to_string_pretty(&json!({"machine": machine, "rows": rows}))? + "\n",
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Pause: how long `hotsplice apply` and `undo` stop a target\n"
    );
    let _ = writeln!(
        md,
        "Target: `fixtures/bench/spin` with N busy threads calling `work()` (the patched function). \
         *Target-measured*: the largest time any thread was stopped between two loop iterations \
         in the window around one hotsplice invocation (gap minus run-queue wait from \
         `/proc/thread-self/schedstat`). *hotsplice-measured*: first `PTRACE_INTERRUPT` to last \
         release, the longest of the stops (apply stops twice: `mmap`, then check + jumps). \
         *Baseline*: the same target-measured figure over as many 60 ms windows with no \
         hotsplice at all — the machine's noise floor (interrupts, page faults, the hypervisor \
         descheduling a vCPU, which the guest cannot see as run-queue wait). \
         Reproduce: `cargo xtask bench-pause`.\n"
    );
    let _ = writeln!(
        md,
        "| threads | cycles | real-time | measured by | apply p50 / p99 / max (µs) | undo p50 / p99 / max (µs) | baseline p50 / p99 / max (µs) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let cell = |v: &Value| {
        format!(
            "{:.0} / {:.0} / {:.0}",
            v["p50_us"].as_f64().unwrap_or(0.0),
            v["p99_us"].as_f64().unwrap_or(0.0),
            v["max_us"].as_f64().unwrap_or(0.0)
        )
    };
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | target | {} | {} | {} |",
            r["threads"],
            r["cycles"],
            r["realtime"],
            cell(&r["apply_target"]),
            cell(&r["undo_target"]),
            cell(&r["baseline_target"])
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | hotsplice | {} | {} | — |",
            r["threads"],
            r["cycles"],
            r["realtime"],
            cell(&r["apply_hotsplice"]),
            cell(&r["undo_hotsplice"])
        );
    }
    let _ = writeln!(
        md,
        "\nGoals (BRIEF §3): p99 ≤ 500 µs up to 8 threads, ≤ 1000 µs at 64 threads. \
         Machine: {machine}."
    );
    std::fs::write(results.join("pause.md"), &md)?;
    print!("{md}");
    Ok(())
}
