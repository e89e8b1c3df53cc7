//! hotsplice developer tasks (`cargo xtask <task>`): evaluations on real code and benchmarks.
//! Each writes its results under `eval/results/`.
//!
//! - `eval-nginx-build`: for every security patch in Debian nginx's `debian/patches/series`,
//!   with the tree at the state just before it, run `hotsplice build` the way Debian builds
//!   nginx and record the outcome (`eval/results/nginx-build.{json,md}`).
//! - `bench-build`: cold and warm `hotsplice build` of one nginx CVE against a plain build of
//!   the same tree (`eval/results/build-bench.md`).
//! - `bench-pause`: how long apply and undo stop targets with 1, 8 and 64 busy threads
//!   (`eval/results/pause.{md,json}`).
//! - `kernel-test`, `bench-kernel`: the kernel backend in QEMU (`eval/results/kernel*.md`).
//! - `soak`: apply/undo cycles on a 64-thread busy target, checked after every step
//!   (`eval/results/soak.{md,json}`).
//! - `eval-debian openssh|curl`: a Debian package's security patch series built with
//!   `hotsplice build --series`, each outcome against the expected one, every bundle applied
//!   live in order and undone (`eval/results/{openssh,curl}.{md,json}`).

mod debian;
mod kernel;
mod live;
mod nginx;
mod pause;
mod soak;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  eval-nginx-build [PATCH...]   hotsplice build for each nginx security patch (default: all)
  eval-nginx-live [PATCH...]    each nginx security patch applied to a running nginx under load
  eval-nginx-stock [PATCH...]   the reverse of each patch applied to the stock Debian binary under load
  bench-nginx-throughput [PATCH] nginx req/s with the patch applied vs not (default CVE-2026-1642)
  render-nginx [NAME]           rewrite eval/results/NAME.md (nginx, nginx-stock) from its JSON
  bench-build [PATCH]           cold/warm build vs a plain Debian build (default CVE-2025-23419)
  bench-pause [CYCLES]          apply/undo pause on 1, 8, 64 busy threads (default 100 cycles)
  soak [CYCLES] [THREADS]       apply/undo cycles on a busy target, checked each step (default 10000, 64)
  kernel-test [CASE...]         kernel live patches built and applied in the stock Debian kernel under QEMU
  bench-kernel [BOOTS]          kernel build times (cold/warm tree) and apply/undo transition times
  eval-debian openssh|curl [--update-from VERSION]
                                a Debian package's patch series built as a series, applied live in order, undone
                                (--update-from: the update from VERSION as `build --debian --update-to` builds it)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("eval-nginx-build") => nginx::eval_build(&args[1..]),
        Some("eval-nginx-live") => live::eval_live(&args[1..]),
        Some("eval-nginx-stock") => live::eval_stock(&args[1..]),
        Some("bench-nginx-throughput") => live::bench_throughput(args.get(1).map(String::as_str)),
        Some("render-nginx") => live::render(args.get(1).map_or("nginx", String::as_str)),
        Some("bench-build") => nginx::bench_build(args.get(1).map(String::as_str)),
        Some("bench-pause") => {
            pause::bench_pause(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100))
        }
        Some("soak") => soak::soak(
            args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10_000),
            args.get(2).and_then(|n| n.parse().ok()).unwrap_or(64),
        ),
        Some("kernel-test") => kernel::kernel_test(&args[1..]),
        Some("eval-debian") => debian::eval_debian(&args[1..]),
        Some("bench-kernel") => {
            kernel::bench_kernel(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(5))
        }
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
