//! Debian nginx: the security-patch evaluation of `hotsplice build`, and the build benchmark.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The Debian build: `debian/rules` configures into `debian/build-bin` (a copy of `src/`) and
/// builds there; the incremental post build only needs `make` in that directory.
pub const BUILD: &str = "debian/rules build-arch";
pub const POST_BUILD: &str = "make -C debian/build-bin";
pub const MIRROR: &str = "debian/build-bin";
pub const TARGET: &str = "debian/build-bin/objs/nginx";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release hotsplice binary, set up as a machine that trusts the evaluation's own key:
/// bundles are signed at build (`target/eval/keys/eval.key`, made on first use) and
/// `check`/`apply` accept that key only; the audit log goes to `target/eval/audit.log`.
pub fn hotsplice() -> Command {
    hotsplice_with(&root().join("target/release/hotsplice"))
}

/// [`hotsplice`] with another hotsplice binary (e.g. an earlier build, for comparisons).
pub fn hotsplice_with(binary: &Path) -> Command {
    let keys = root().join("target/eval/keys");
    let trusted = keys.join("trusted");
    let secret = keys.join("eval.key");
    if !secret.exists() {
        let _ = std::fs::create_dir_all(&trusted);
        let _ = std::fs::remove_file(trusted.join("eval.pub"));
        let _ = std::fs::remove_file(trusted.join("eval.key"));
        let generated = Command::new(binary)
            .args(["key", "generate", "--out"])
            .arg(trusted.join("eval"))
            .output();
        if generated.is_ok_and(|o| o.status.success()) {
            let _ = std::fs::rename(trusted.join("eval.key"), &secret);
        }
    }
    let mut cmd = Command::new(binary);
    cmd.env("HOTSPLICE_SIGNING_KEY", &secret)
        .env("HOTSPLICE_TRUST_DIR", &trusted)
        .env("HOTSPLICE_AUDIT_LOG", root().join("target/eval/audit.log"));
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn setup(extra: &[&str]) -> Result<PathBuf> {
    let root = root();
    run(Command::new(root.join("scripts/setup"))
        .args(["--nginx", "--nginx-build-deps"])
        .args(extra))?;
    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "hotsplice"])
        .current_dir(&root))?;
    let source = std::fs::read_dir(root.join(".cache/nginx"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("debian/patches/series").is_file())
        .context("no nginx source under .cache/nginx")?;
    Ok(source)
}

pub fn version(source: &Path) -> String {
    std::fs::read_to_string(source.join("debian/changelog"))
        .ok()
        .and_then(|c| {
            let first = c.lines().next()?.to_string();
            let start = first.find('(')? + 1;
            let end = first.find(')')?;
            Some(first[start..end].to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

pub fn series(source: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(source.join("debian/patches/series"))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

pub fn is_security(patch: &str) -> bool {
    patch.starts_with("CVE-") || patch.starts_with("FIX-")
}

/// A copy of the source with the series applied up to, not including, `series[index]`.
/// (`apt-get source` unpacks with every patch applied; later ones are reversed.)
pub fn tree_before(source: &Path, series: &[String], index: usize, dest: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest)?;
    run(Command::new("cp").arg("-a").arg(source).arg(dest))?;
    let tree = dest.join(source.file_name().context("source name")?);
    for patch in series[index..].iter().rev() {
        run(Command::new("patch")
            .args(["-R", "-p1", "--batch", "--silent", "-i"])
            .arg(source.join("debian/patches").join(patch))
            .current_dir(&tree))
        .with_context(|| format!("reversing {patch}"))?;
    }
    let _ = std::fs::remove_dir_all(tree.join(".pc"));
    Ok(tree)
}

/// Builds `tree` the way Debian does, no hotsplice involved; returns the seconds it took.
pub fn plain_build(tree: &Path) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", BUILD])
        .current_dir(tree)
        .env("MAKEFLAGS", "-j2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("`{BUILD}` failed in {}: {status}", tree.display());
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn hotsplice_build(
    tree: &Path,
    patch: &Path,
    target: &str,
    cache: &Path,
    output: &Path,
) -> Result<(Value, f64, i32, String)> {
    let started = Instant::now();
    let out = hotsplice()
        .arg("build")
        .arg("--source")
        .arg(tree)
        .args([
            "--build",
            BUILD,
            "--post-build",
            POST_BUILD,
            "--mirror",
            MIRROR,
        ])
        .args(["--target", target, "--json", "-j", "2"])
        .arg("--diff")
        .arg(patch)
        .arg("--cache")
        .arg(cache)
        .arg("-o")
        .arg(output)
        .stdin(Stdio::null())
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((value, seconds, out.status.code().unwrap_or(-1), stderr))
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `cargo xtask eval-nginx-build [PATCH...]`.
pub fn eval_build(only: &[String]) -> Result<()> {
    let source = setup(&[])?;
    let root = root();
    let series = series(&source)?;
    let work = root.join("target/eval/nginx-build");
    std::fs::create_dir_all(work.join("bundles"))?;
    let mut rows = Vec::new();
    for (index, patch) in series.iter().enumerate() {
        if !is_security(patch) || (!only.is_empty() && !only.contains(patch)) {
            continue;
        }
        eprintln!(
            "eval-nginx-build: {patch} ({} of {})",
            index + 1,
            series.len()
        );
        let tree = tree_before(&source, &series, index, &work.join("trees").join(patch))?;
        let diff = source.join("debian/patches").join(patch);
        // The nginx binary first; then every other binary the fix changes (Debian builds the
        // mail and stream modules as dynamic modules, separate .so files).
        let mut targets = vec![TARGET.to_string()];
        let mut done = 0;
        while done < targets.len() {
            let target = targets[done].clone();
            done += 1;
            let name = Path::new(&target)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bundle = work.join("bundles").join(format!("{patch}.{name}.hsp"));
            let (v, seconds, exit, stderr) =
                hotsplice_build(&tree, &diff, &target, &work.join("cache"), &bundle)?;
            let outcome = v["outcome"].as_str().unwrap_or("error").to_string();
            let error = if v.is_null() {
                stderr
                    .lines()
                    .rev()
                    .find(|l| l.contains("error"))
                    .unwrap_or("")
                    .to_string()
            } else {
                String::new()
            };
            let refusals: Vec<Value> = v["refusals"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|r| json!({"kind": r["kind"], "symbol": r["symbol"], "object": r["object"], "detail": r["detail"]}))
                .collect();
            for other in strings(&v["other_targets"]) {
                if !targets.contains(&other) {
                    targets.push(other);
                }
            }
            eprintln!("eval-nginx-build: {patch} [{name}]: {outcome} in {seconds:.1} s");
            rows.push(json!({
                "patch": patch,
                "target": target,
                "outcome": outcome,
                "exit": exit,
                "replaced": strings(&v["replaced"]),
                "new": strings(&v["new"]),
                "rebuilt": strings(&v["rebuilt"]),
                "other_targets": strings(&v["other_targets"]),
                "refusals": refusals,
                "error": error,
                "seconds": {"total": seconds, "steps": v["seconds"]},
            }));
        }
        // Trees are large; keep only the bundles.
        let _ = std::fs::remove_dir_all(work.join("trees").join(patch));
    }
    write_eval(&root, &version(&source), &rows)
}

fn write_eval(root: &Path, version: &str, rows: &[Value]) -> Result<()> {
    let results = root.join("eval/results");
    std::fs::create_dir_all(&results)?;
    let doc = json!({"nginx_source": version, "machine": crate::machine(), "patches": rows});
    std::fs::write(
        results.join("nginx-build.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    let mut md = String::new();
    let count = |o: &str| rows.iter().filter(|r| r["outcome"] == o).count();
    let _ = writeln!(md, "# `hotsplice build` on Debian nginx security patches\n");
    let _ = writeln!(
        md,
        "Source: Debian nginx {version} (`apt-get source`). For each security patch of \
         `debian/patches/series`, the tree is at the state just before it (earlier series \
         patches applied) and built as Debian builds it: `{BUILD}` (debian/rules' configure \
         flags, dpkg-buildflags exported), incremental post build `{POST_BUILD}`, target \
         `{TARGET}`. Reproduce: `cargo xtask eval-nginx-build`.\n"
    );
    let _ = writeln!(
        md,
        "Outcomes over {} (patch, binary) builds: {} bundle(s) written, {} refused, {} nothing to patch, {} errors.\n",
        rows.len(),
        count("written"),
        count("refused"),
        count("nothing-to-patch"),
        count("error"),
    );
    let mut patches: Vec<&str> = rows.iter().filter_map(|r| r["patch"].as_str()).collect();
    patches.dedup();
    let verdict = |patch: &str, outcome: &str| {
        rows.iter()
            .filter(|r| r["patch"] == patch)
            .any(|r| r["outcome"] == outcome)
    };
    let refused = patches
        .iter()
        .filter(|p| verdict(p, "refused") || verdict(p, "error"))
        .count();
    let written = patches
        .iter()
        .filter(|p| !verdict(p, "refused") && !verdict(p, "error") && verdict(p, "written"))
        .count();
    let _ = writeln!(
        md,
        "Per patch: {} patches; {written} give a bundle for every binary they change, {refused} \
         refused or failed, {} change no code of any binary.\n",
        patches.len(),
        patches.len() - written - refused
    );
    let _ = writeln!(
        md,
        "| patch | binary | outcome | replaced functions | new functions | reason | build s (pre / post / total) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for r in rows {
        let reason = if let Some(refusals) = r["refusals"].as_array().filter(|a| !a.is_empty()) {
            refusals
                .iter()
                .map(|x| {
                    format!(
                        "{} `{}`",
                        x["kind"].as_str().unwrap_or(""),
                        x["symbol"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        } else if r["outcome"] == "nothing-to-patch" && !strings(&r["other_targets"]).is_empty() {
            format!("changes only {}", strings(&r["other_targets"]).join(", "))
        } else if r["outcome"] == "nothing-to-patch" {
            "no function of this binary changes".to_string()
        } else {
            r["error"].as_str().unwrap_or("").to_string()
        };
        let steps = &r["seconds"]["steps"];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.1} / {:.1} / {:.1} |",
            r["patch"].as_str().unwrap_or(""),
            Path::new(r["target"].as_str().unwrap_or(""))
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            r["outcome"].as_str().unwrap_or(""),
            strings(&r["replaced"]).join(", "),
            strings(&r["new"]).join(", "),
            reason.replace('|', "\\|"),
            steps["pre_build"].as_f64().unwrap_or(0.0),
            steps["post_build"].as_f64().unwrap_or(0.0),
            r["seconds"]["total"].as_f64().unwrap_or(0.0),
        );
    }
    let _ = writeln!(
        md,
        "\nA pre-build time of 0.0 means the pre build came from hotsplice's cache (an \
         earlier run built the same tree); `cargo xtask bench-build` measures cold and warm \
         builds. Refusal details are in `nginx-build.json`.\n\nMachine: {}.",
        crate::machine()
    );
    std::fs::write(results.join("nginx-build.md"), md)?;
    eprintln!("eval-nginx-build: wrote eval/results/nginx-build.{{json,md}}");
    Ok(())
}

fn timed(cmd: &mut Command) -> Result<f64> {
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    if !out.success() {
        bail!("{cmd:?} failed: {out}");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `cargo xtask bench-build [PATCH]`.
pub fn bench_build(patch: Option<&str>) -> Result<()> {
    let patch = patch.unwrap_or("CVE-2025-23419.patch");
    let source = setup(&[])?;
    let root = root();
    let series = series(&source)?;
    let index = series
        .iter()
        .position(|p| p == patch)
        .context("no such patch in the series")?;
    let work = root.join("target/bench/build");
    let diff = source.join("debian/patches").join(patch);

    // Plain Debian build of the same tree, then the incremental rebuild after the patch.
    eprintln!("bench-build: plain build");
    let plain = tree_before(&source, &series, index, &work.join("plain"))?;
    let plain_full = timed(
        Command::new("sh")
            .args(["-c", BUILD])
            .current_dir(&plain)
            .env("MAKEFLAGS", "-j2"),
    )?;
    run(Command::new("patch")
        .args(["-p1", "--batch", "--silent", "-i"])
        .arg(&diff)
        .current_dir(&plain))?;
    for file in patched_files(&diff)? {
        let copy = plain.join(MIRROR).join(&file);
        if copy.is_file() {
            std::fs::copy(plain.join(&file), &copy)?;
        }
    }
    let plain_incremental = timed(
        Command::new("sh")
            .args(["-c", POST_BUILD])
            .current_dir(&plain)
            .env("MAKEFLAGS", "-j2"),
    )?;

    eprintln!("bench-build: hotsplice build, cold then warm");
    let tree = tree_before(&source, &series, index, &work.join("tree"))?;
    let cache = work.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let (cold_v, cold, cold_exit, cold_err) =
        hotsplice_build(&tree, &diff, TARGET, &cache, &work.join("cold.hsp"))?;
    let (warm_v, warm, warm_exit, warm_err) =
        hotsplice_build(&tree, &diff, TARGET, &cache, &work.join("warm.hsp"))?;
    if cold_exit != 0 || warm_exit != 0 {
        bail!("hotsplice build failed: {cold_err}{warm_err}");
    }
    let _ = std::fs::remove_dir_all(work.join("plain"));

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# `hotsplice build` time vs a plain build (Debian nginx {})\n",
        version(&source)
    );
    let _ = writeln!(
        md,
        "Patch: `{patch}`; tree at the state just before it. Plain = Debian's own build \
         (`{BUILD}`, `MAKEFLAGS=-j2`) of a copy of the same tree, measured in the same run; \
         plain incremental = `{POST_BUILD}` after applying the patch (the changed translation \
         units and the link). Reproduce: `cargo xtask bench-build {patch}`.\n"
    );
    let _ = writeln!(md, "| measurement | seconds | ratio |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(md, "| plain full build | {plain_full:.1} | 1.00 |");
    let _ = writeln!(
        md,
        "| plain incremental rebuild | {plain_incremental:.1} | 1.00 |"
    );
    let _ = writeln!(
        md,
        "| hotsplice build, cold (pre + post + diff) | {cold:.1} | {:.2} × plain full |",
        cold / plain_full
    );
    let _ = writeln!(
        md,
        "| hotsplice build, warm (pre cached) | {warm:.1} | {:.2} × plain incremental ({:+.1} s) |",
        warm / plain_incremental,
        warm - plain_incremental
    );
    let _ = writeln!(
        md,
        "\nCold steps (s): {}; warm steps (s): {}.\n\nMachine: {}.",
        cold_v["seconds"],
        warm_v["seconds"],
        crate::machine()
    );
    std::fs::create_dir_all(root.join("eval/results"))?;
    std::fs::write(root.join("eval/results/build-bench.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn patched_files(diff: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(diff)?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("+++ "))
        .map(|p| p.split('\t').next().unwrap_or(p).trim())
        .filter(|p| *p != "/dev/null")
        .map(|p| Path::new(p).components().skip(1).collect())
        .collect())
}
