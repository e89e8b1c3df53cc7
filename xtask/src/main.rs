//! hotsplice developer tasks (`cargo xtask <task>`): evaluations on real code and benchmarks.
//! Each writes its results under `eval/results/`.
//!
//! - `eval-nginx-build`: for every security patch in Debian nginx's `debian/patches/series`,
//!   with the tree at the state just before it, run `hotsplice build` the way Debian builds
//!   nginx and record the outcome (`eval/results/nginx-build.{json,md}`).
//! - `eval-nginx-semantic`: nginx CVE-2026-40701 (refused as written: it changes a struct)
//!   rewritten with shadow data, applied under load, the use after free shown before, gone with
//!   the patch, back after undo; and the pause of a patch with a hook
//!   (`eval/results/nginx-semantic.{json,md}`).
//! - `bench-build`: cold and warm `hotsplice build` of one nginx CVE against a plain build of
//!   the same tree (`eval/results/build-bench.md`).
//! - `bench-pause`: how long apply and undo stop targets with 1, 8 and 64 busy threads
//!   (`eval/results/pause.{md,json}`).
//! - `kernel-test`, `bench-kernel`: the kernel backend in QEMU (`eval/results/kernel*.md`).
//! - `soak`: apply/undo cycles on a 64-thread busy target, checked after every step
//!   (`eval/results/soak.{md,json}`).
//! - `bad-input-table`: every bad or hostile input of the CLI test suite, with the message a
//!   user sees (`eval/results/bad-input.md`).
//! - `eval-debian openssh|curl`: a Debian package's security patch series built with
//!   `hotsplice build --series`, each outcome against the expected one, every bundle applied
//!   live in order and undone (`eval/results/{openssh,curl}.{md,json}`).
//! - `fleet`: the Ansible collection rolling a live patch out over SSH to N hosts made of
//!   network namespaces — canary, batches, health checks, undo, watch
//!   (`eval/results/fleet.{md,json}`).
//! - `check-structure`: no module cycles, no bare relocation numbers (also run by the unit
//!   tests of `structure.rs`).

mod debian;
mod fleet;
mod kernel;
mod live;
mod nginx;
mod pause;
mod qemu;
mod semantic;
mod soak;
mod structure;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  eval-nginx-build [PATCH...]   hotsplice build for each nginx security patch (default: all)
  eval-nginx-live [PATCH...]    each nginx security patch applied to a running nginx under load
  eval-nginx-stock [PATCH...]   the reverse of each patch applied to the stock Debian binary under load
  eval-nginx-semantic           CVE-2026-40701 rewritten with shadow data: bug before, gone after, back after undo
  bench-nginx-throughput [PATCH] nginx req/s with the patch applied vs not (default CVE-2026-1642)
  render-nginx [NAME]           rewrite eval/results/NAME.md (nginx, nginx-stock) from its JSON
  bench-build [PATCH]           cold/warm build vs a plain Debian build (default CVE-2025-23419)
  bench-pause [--cycles N] [--threads 1,8,64] [--mode idle|loaded|both] [--compare LABEL=BINARY]
                                apply/undo pause on busy threads, idle and under CPU load
  soak [CYCLES] [THREADS]       apply/undo cycles on a busy target, checked each step (default 10000, 64)
  bad-input-table               eval/results/bad-input.md from the bad-input test (real binary, real processes)
  kernel-test [CASE...]         kernel live patches built and applied in the stock Debian kernel under QEMU
  bench-kernel [BOOTS]          kernel build times (cold/warm tree) and apply/undo transition times
  eval-debian openssh|curl [--update-from VERSION]
                                a Debian package's patch series built as a series, applied live in order, undone
                                (--update-from: the update from VERSION as `build --debian --update-to` builds it)
  fleet [--hosts N]             the Ansible rollout over SSH to N (default 5) network-namespace hosts
  check-structure [ROOT]        no module cycles in any crate, no bare relocation numbers";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("eval-nginx-build") => nginx::eval_build(&args[1..]),
        Some("eval-nginx-live") => live::eval_live(&args[1..]),
        Some("eval-nginx-stock") => live::eval_stock(&args[1..]),
        Some("eval-nginx-semantic") => semantic::eval(),
        Some("bench-nginx-throughput") => live::bench_throughput(args.get(1).map(String::as_str)),
        Some("render-nginx") => live::render(args.get(1).map_or("nginx", String::as_str)),
        Some("bench-build") => nginx::bench_build(args.get(1).map(String::as_str)),
        Some("bench-pause") => pause::Args::parse(&args[1..]).and_then(|a| pause::bench_pause(&a)),
        Some("soak") => number(&args, 1, "CYCLES", 10_000)
            .and_then(|cycles| Ok((cycles, number(&args, 2, "THREADS", 64)?)))
            .and_then(|(cycles, threads)| soak::soak(cycles, threads)),
        Some("kernel-test") => kernel::kernel_test(&args[1..]),
        Some("bad-input-table") => bad_input_table(),
        Some("eval-debian") => debian::eval_debian(&args[1..]),
        Some("fleet") => fleet::fleet(&args[1..]),
        Some("check-structure") => structure::check_structure(args.get(1).map(String::as_str)),
        Some("bench-kernel") => number(&args, 1, "BOOTS", 5).and_then(kernel::bench_kernel),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask bad-input-table`: runs the bad-input test, asking it to write its table into
/// `eval/results/bad-input.md` (a plain test run writes it under `target/`).
fn bad_input_table() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let table = root.join("eval/results/bad-input.md");
    let status = std::process::Command::new("cargo")
        .args([
            "test",
            "-p",
            "hotsplice",
            "--features",
            "fault-injection",
            "--test",
            "it",
            "--",
            "--exact",
            "bad_input::bad_inputs_are_refused_cleanly_and_tabulated",
        ])
        .env("HOTSPLICE_BAD_INPUT_TABLE", &table)
        .current_dir(&root)
        .status()?;
    if !status.success() {
        anyhow::bail!("the bad-input test failed");
    }
    println!("wrote {}", table.display());
    Ok(())
}

/// The machine, for results files: cores, CPU model, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, kernel {}", kernel.trim())
}

/// The positional number `args[index]` (named `what` in the error), or `default` when absent;
/// a value that is not a number is an error, not the default.
fn number<T: std::str::FromStr>(
    args: &[String],
    index: usize,
    what: &str,
    default: T,
) -> anyhow::Result<T> {
    match args.get(index) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| anyhow::anyhow!("{what} must be a number, not {text:?}")),
    }
}
