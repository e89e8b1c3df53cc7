//! `cargo xtask eval-nginx-live`: Debian nginx's security patches applied to a running nginx
//! under a saturating load.
//!
//! For each security patch of the series, at the tree state just before it: a plain Debian
//! build of nginx (no hotsplice involved) is started — master and two workers, static files
//! and a location proxied to a local upstream — and loaded with `wrk`. Meanwhile the patch is
//! built with `hotsplice build`, checked, applied to every nginx process, undone, and applied
//! again, each step followed by a check that nginx still serves correctly. The load runs the
//! whole time; requests completed and failed are counted per second.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::nginx::{self, BUILD, TARGET};

pub const WRK_SCRIPT: &str = r#"
local counter = 0
local paths = { "/index.html", "/proxy/hello" }
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter % 2) + 1])
end
buckets = {}
bad = {}
response = function(status, headers, body)
  local t = os.time()
  buckets[t] = (buckets[t] or 0) + 1
  if status < 200 or status > 299 then bad[t] = (bad[t] or 0) + 1 end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local all, allbad = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("buckets")) do all[k] = (all[k] or 0) + v end
    for k, v in pairs(t:get("bad")) do allbad[k] = (allbad[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format("SUMMARY %d %d %d %d %d %d\n", summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout))
  for k, v in pairs(all) do io.write(string.format("SECOND %d %d %d\n", k, v, allbad[k] or 0)) end
end
"#;

const INDEX: &str = "hotsplice live evaluation: static file\n";
const UPSTREAM: &str = "upstream ok\n";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Whether nginx answers both the static file and the proxied location correctly.
pub fn serves_correctly(port: u16) -> bool {
    matches!(http_get(port, "/index.html"), Ok((200, body)) if body == INDEX)
        && matches!(http_get(port, "/proxy/hello"), Ok((200, body)) if body == UPSTREAM)
}

/// An nginx (master + 2 workers) running from a build tree or a stock binary.
pub struct Nginx {
    master: Child,
    pub port: u16,
}

impl Nginx {
    pub fn start(binary: &Path, modules: &Path, dir: &Path, port: u16) -> Result<Nginx> {
        Nginx::start_with(binary, modules, dir, port, "", &[])
    }

    /// [`Nginx::start`] with more `http` configuration (`extra`, e.g. another server) and
    /// environment variables for nginx.
    pub fn start_with(
        binary: &Path,
        modules: &Path,
        dir: &Path,
        port: u16,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Result<Nginx> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::write(dir.join("www/index.html"), INDEX)?;
        let mut load = String::new();
        for module in ["ngx_mail_module.so", "ngx_stream_module.so"] {
            if modules.join(module).is_file() {
                let _ = writeln!(load, "load_module {};", modules.join(module).display());
            }
        }
        let d = dir.display();
        let conf = format!(
            "{load}worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream backend {{ server 127.0.0.1:{}; keepalive 32; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n    location / {{ }}\n\
                 location /proxy/ {{ proxy_pass http://backend/; proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\"; }}\n  }}\n\
               server {{\n    listen 127.0.0.1:{};\n    location / {{ return 200 \"{}\"; }}\n  }}\n{extra}}}\n",
            port + 1,
            port + 1,
            UPSTREAM.replace('\n', "\\n")
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            bail!("port {port} is already in use (a stray nginx from an earlier run?)");
        }
        let master = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut nginx = Nginx { master, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = nginx.master.try_wait() {
                bail!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            if serves_correctly(port) && nginx.pids().len() == 3 {
                return Ok(nginx);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "nginx did not come up: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        )
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.master.id();
        let mut pids = vec![master];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, r)| r.split_whitespace().collect())
                    .unwrap_or_default();
                let ppid = fields.get(1).and_then(|p| p.parse::<u32>().ok());
                let zombie = fields.first() == Some(&"Z");
                if ppid == Some(master) && !zombie {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown, which also stops the workers.
        let workers = self.pids();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.master.id().to_string())
            .status();
        let _ = self.master.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && workers
                .iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Per second: (requests completed, non-2xx responses).
pub type PerSecond = BTreeMap<i64, (u64, u64)>;

/// A `wrk` run in the background.
pub struct Load {
    child: Child,
    started: f64,
}

impl Load {
    pub fn start(port: u16, seconds: u64, script: &Path) -> Result<Load> {
        let child = Command::new("wrk")
            .args(["-t", "2", "-c", "64", "-d", &format!("{seconds}s"), "-s"])
            .arg(script)
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wrk (scripts/setup --eval installs it)")?;
        Ok(Load {
            child,
            started: now(),
        })
    }

    /// Waits for the end; returns (per-second (completed, non-2xx), socket errors, total).
    pub fn finish(self) -> Result<(PerSecond, u64, u64)> {
        let out = self.child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut seconds = BTreeMap::new();
        let (mut socket_errors, mut total) = (0, 0);
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.first() {
                Some(&"SECOND") if f.len() == 4 => {
                    seconds.insert(
                        f[1].parse().unwrap_or(0),
                        (f[2].parse().unwrap_or(0), f[3].parse().unwrap_or(0)),
                    );
                }
                Some(&"SUMMARY") if f.len() == 7 => {
                    total = f[1].parse().unwrap_or(0);
                    // connect + read + write + timeout (status errors are counted per second)
                    socket_errors = [2, 3, 4, 6]
                        .iter()
                        .map(|&i| f[i].parse::<u64>().unwrap_or(0))
                        .sum();
                }
                _ => {}
            }
        }
        Ok((seconds, socket_errors, total))
    }
}

fn hs(args: &[&str]) -> (i32, Value, String) {
    let out = nginx::hotsplice()
        .args(args)
        .output()
        .expect("run hotsplice");
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        value,
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// One patch, one binary, under load: the phases and their timings.
fn run_live(
    nginx: &Nginx,
    bundle: &Path,
    id: &str,
    state: &Path,
    script: &Path,
    control: bool,
) -> Result<Value> {
    const PHASE: f64 = 5.0;
    let pids: Vec<String> = nginx.pids().iter().map(|p| p.to_string()).collect();
    let mut pid_args: Vec<&str> = Vec::new();
    for p in &pids {
        pid_args.push("--pid");
        pid_args.push(p);
    }
    let state = state.display().to_string();
    let load = Load::start(nginx.port, (PHASE * 5.0) as u64 + 1, script)?;
    let t0 = load.started;
    let wait_until = |t: f64| {
        let left = t0 + t - now();
        if left > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(left));
        }
    };
    let mut steps = Vec::new();
    let mut step = |name: &str, args: Vec<&str>| -> Value {
        let at = now() - t0;
        let (code, v, err) = hs(&args);
        let serving = serves_correctly(nginx.port);
        let pause = v["processes"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["pause_us"].as_u64())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let s = json!({"step": name, "at_s": at, "exit": code, "pause_us": pause,
                       "serving": serving, "error": if code == 0 { String::new() } else { err }});
        steps.push(s.clone());
        s
    };
    let mut base = vec![bundle.to_str().unwrap()];
    base.extend(&pid_args);
    base.extend(["--state-dir", &state, "--json"]);
    wait_until(PHASE);
    let mut applied_ok = false;
    if control {
        // The same load and timing with no hotsplice at all, to compare against.
        wait_until(5.0 * PHASE);
    } else if step("check", [vec!["check"], base.clone()].concat())["exit"] == 0 {
        let applied = step("apply", [vec!["apply"], base.clone()].concat());
        applied_ok = applied["exit"] == 0;
        if applied_ok {
            wait_until(3.0 * PHASE);
            let mut undo = vec!["undo", id];
            undo.extend(&pid_args);
            undo.extend(["--state-dir", &state, "--json"]);
            step("undo", undo.clone());
            wait_until(4.0 * PHASE);
            step("reapply", [vec!["apply"], base.clone()].concat());
        }
    }
    let (seconds, socket_errors, total) = load.finish()?;
    // Leave nothing applied for the next patch.
    let mut undo = vec!["undo", id];
    undo.extend(&pid_args);
    undo.extend(["--state-dir", &state]);
    let _ = hs(&undo);

    let start = t0.floor() as i64;
    let series: Vec<Value> = seconds
        .iter()
        .map(|(s, (n, bad))| json!({"t": s - start, "completed": n, "non_2xx": bad}))
        .collect();
    let phase = |from: f64, to: f64| {
        let (mut n, mut bad, mut secs) = (0u64, 0u64, 0u64);
        for (s, (c, b)) in &seconds {
            let rel = (s - start) as f64;
            if rel >= from && rel < to {
                n += c;
                bad += b;
                secs += 1;
            }
        }
        json!({"completed": n, "non_2xx": bad, "per_second": n.checked_div(secs).unwrap_or(0)})
    };
    Ok(json!({
        "applied": applied_ok,
        "steps": steps,
        "requests": total,
        "socket_errors": socket_errors,
        "phases": {
            "before": phase(1.0, PHASE),
            "apply": phase(PHASE, 2.0 * PHASE),
            "after_apply": phase(2.0 * PHASE, 3.0 * PHASE),
            "after_undo": phase(3.0 * PHASE, 4.0 * PHASE),
            "after_reapply": phase(4.0 * PHASE, 5.0 * PHASE),
        },
        "series": series,
    }))
}

/// `cargo xtask eval-nginx-live [PATCH...]`.
pub fn eval_live(only: &[String]) -> Result<()> {
    let source = nginx::setup(&["--eval"])?;
    let root = nginx::root();
    let series = nginx::series(&source)?;
    let work = root.join("target/eval/nginx-live");
    std::fs::create_dir_all(&work)?;
    let script = work.join("load.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let mut rows = Vec::new();
    let mut run = LiveRun {
        work: work.clone(),
        script,
        cache: root.join("target/eval/nginx-build/cache"),
        control: None,
    };
    for (index, patch) in series.iter().enumerate() {
        if !nginx::is_security(patch) || (!only.is_empty() && !only.contains(patch)) {
            continue;
        }
        eprintln!("eval-nginx-live: {patch}");
        // The running nginx: a plain Debian build of the tree, no hotsplice involved.
        let plain = nginx::tree_before(&source, &series, index, &work.join("plain"))?;
        let plain_build_s =
            nginx::plain_build(&plain).with_context(|| format!("plain build before {patch}"))?;
        let tree = nginx::tree_before(&source, &series, index, &work.join("tree"))?;
        let diff = source.join("debian/patches").join(patch);
        let mut targets = vec![TARGET.to_string()];
        let mut done = 0;
        while done < targets.len() {
            let target = targets[done].clone();
            done += 1;
            let (row, others) = live_row(
                &mut run,
                patch,
                &diff,
                &target,
                &tree,
                &plain,
                plain_build_s,
            )?;
            for other in others {
                if !targets.contains(&other) {
                    targets.push(other);
                }
            }
            rows.push(row);
        }
        // A refused patch rewritten to apply live (eval/patches/nginx/<name>-shadow.patch): the
        // same tree, the same running build.
        let rewrite = rewrite_of(patch);
        if rewrite.is_file() {
            let (mut row, _) = live_row(
                &mut run,
                patch,
                &rewrite,
                TARGET,
                &tree,
                &plain,
                plain_build_s,
            )?;
            row["rewrite"] = json!(rewrite.file_name().map(|n| n.to_string_lossy()));
            rows.push(row);
        }
        let _ = std::fs::remove_dir_all(work.join("plain"));
        let _ = std::fs::remove_dir_all(work.join("tree"));
    }
    let (rows, control) = merge_with_previous(&root, "nginx", &series, only, rows, run.control);
    write_results(
        &root,
        "nginx",
        &nginx::version(&source),
        &rows,
        control.as_ref(),
        "Debian nginx built from its source with `debian/rules build-arch` at the tree state before each patch (its own build, no hotsplice)",
    )
}

/// The rewritten form of a series patch that applies live, if the repository has one.
pub fn rewrite_of(patch: &str) -> PathBuf {
    nginx::root().join("eval/patches/nginx").join(format!(
        "{}-shadow.patch",
        patch.strip_suffix(".patch").unwrap_or(patch)
    ))
}

/// What the rows of one `eval-nginx-live` run share.
struct LiveRun {
    work: PathBuf,
    script: PathBuf,
    cache: PathBuf,
    /// The control run (no hotsplice), made once, before the first live row.
    control: Option<Value>,
}

/// One (patch, binary) row: `hotsplice build` of `diff` for `target`, and when it gives a
/// bundle, the live run on the plain build. Returns the row and the other targets the build
/// says the diff changes.
fn live_row(
    run: &mut LiveRun,
    patch: &str,
    diff: &Path,
    target: &str,
    tree: &Path,
    plain: &Path,
    plain_build_s: f64,
) -> Result<(Value, Vec<String>)> {
    let name = Path::new(target)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let form = diff.file_name().unwrap_or_default().to_string_lossy();
    let bundle = run.work.join(format!("{form}.{name}.hsp"));
    let (built, build_s, _, err) = nginx::hotsplice_build(tree, diff, target, &run.cache, &bundle)?;
    let outcome = built["outcome"].as_str().unwrap_or("error").to_string();
    let mut row = json!({
        "patch": patch, "binary": name, "outcome": outcome,
        "replaced": built["replaced"], "new": built["new"],
        "refusals": built["refusals"], "build_s": build_s,
        "plain_build_s": plain_build_s,
        "error": if built.is_null() { err } else { String::new() },
    });
    if outcome == "written" {
        let nginx_bin = plain.join(TARGET);
        let modules = plain.join("debian/build-bin/objs");
        let id = built["id"].as_str().unwrap_or_default().to_string();
        let state = run.work.join("state");
        if run.control.is_none() {
            let nginx = Nginx::start(&nginx_bin, &modules, &run.work.join("run"), 18080)?;
            run.control = Some(run_live(&nginx, &bundle, &id, &state, &run.script, true)?);
        }
        let nginx = Nginx::start(&nginx_bin, &modules, &run.work.join("run"), 18080)?;
        row["live"] = run_live(&nginx, &bundle, &id, &state, &run.script, false)?;
    }
    eprintln!(
        "eval-nginx-live: {patch} [{name}, {form}]: {}",
        summary_of(&row)
    );
    Ok((row, nginx::strings(&built["other_targets"])))
}

fn summary_of(row: &Value) -> String {
    let live = &row["live"];
    if live.is_null() {
        return row["outcome"].as_str().unwrap_or("").to_string();
    }
    format!(
        "applied={} requests={} socket_errors={} non_2xx={}",
        live["applied"],
        live["requests"],
        live["socket_errors"],
        live["phases"]
            .as_object()
            .map(|p| p
                .values()
                .filter_map(|v| v["non_2xx"].as_u64())
                .sum::<u64>())
            .unwrap_or(0)
    )
}

/// With a patch filter, the rows of an earlier full run are kept for the other patches (in
/// series order), and a new control run only replaces the old one when there is none.
fn merge_with_previous(
    root: &Path,
    name: &str,
    series: &[String],
    only: &[String],
    rows: Vec<Value>,
    control: Option<Value>,
) -> (Vec<Value>, Option<Value>) {
    if only.is_empty() {
        return (rows, control);
    }
    let path = root.join("eval/results").join(format!("{name}.json"));
    let Ok(previous) = std::fs::read_to_string(&path)
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(serde_json::from_str::<Value>(&t)?))
    else {
        return (rows, control);
    };
    let mut merged: Vec<Value> = previous["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !only.iter().any(|p| r["patch"] == p.as_str()))
        .collect();
    merged.extend(rows);
    let position = |r: &Value| {
        series
            .iter()
            .position(|p| r["patch"] == p.as_str())
            .unwrap_or(usize::MAX)
    };
    merged.sort_by_key(position);
    let control = previous
        .get("control")
        .filter(|c| !c.is_null())
        .cloned()
        .or(control);
    (merged, control)
}

/// Writes `eval/results/<name>.{json,md}` and a throughput plot for the first applied patch.
pub fn write_results(
    root: &Path,
    name: &str,
    version: &str,
    rows: &[Value],
    control: Option<&Value>,
    what: &str,
) -> Result<()> {
    let results = root.join("eval/results");
    std::fs::create_dir_all(&results)?;
    let doc = json!({"nginx": version, "machine": crate::machine(), "what": what,
                     "control": control, "rows": rows});
    let json_path = results.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")?;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Live patching Debian nginx {version} under load ({name})\n"
    );
    let _ = writeln!(
        md,
        "{what}. nginx runs with a master and 2 workers on 127.0.0.1, serving a static file and \
         a location proxied to a local upstream, under `wrk -t2 -c64` (alternating the two). \
         For each patch and binary: `hotsplice build`, then under load: `check`, `apply` to \
         every nginx process (t = 5 s), `undo` (t = 15 s), `apply` again (t = 20 s), each \
         followed by a request to both locations. Phases are 5 s windows. Reproduce: \
         `cargo xtask eval-{name}-live` (see README).\n"
    );
    let applied = rows.iter().filter(|r| r["live"]["applied"] == true).count();
    let bundles = rows.iter().filter(|r| r["outcome"] == "written").count();
    let failed: u64 = rows
        .iter()
        .map(|r| {
            r["live"]["socket_errors"].as_u64().unwrap_or(0)
                + r["live"]["phases"]
                    .as_object()
                    .map(|p| {
                        p.values()
                            .filter_map(|v| v["non_2xx"].as_u64())
                            .sum::<u64>()
                    })
                    .unwrap_or(0)
        })
        .sum();
    let ratio = |live: &Value| {
        let before = live["phases"]["before"]["per_second"]
            .as_f64()
            .unwrap_or(0.0);
        let after = live["phases"]["after_apply"]["per_second"]
            .as_f64()
            .unwrap_or(0.0);
        (before > 0.0).then(|| after / before)
    };
    let mut ratios: Vec<f64> = rows.iter().filter_map(|r| ratio(&r["live"])).collect();
    ratios.sort_by(|a, b| a.total_cmp(b));
    let median = ratios.get(ratios.len() / 2).copied();
    let control_ratio = control.and_then(ratio);
    let _ = writeln!(
        md,
        "{} (patch, binary) builds; {bundles} bundles; {applied} applied live; failed requests \
         over all runs: {failed}. Throughput after apply relative to before (same run): median \
         {}; the control run without hotsplice: {} (load noise between 5 s phases on this VM).\n",
        rows.len(),
        median.map_or("–".to_string(), |m| format!("{:.1} %", m * 100.0)),
        control_ratio.map_or("–".to_string(), |m| format!("{:.1} %", m * 100.0)),
    );
    let _ = writeln!(
        md,
        "| patch | binary | outcome | functions | pause µs (apply / undo / reapply) | requests | failed | req/s before / apply / after / undo / reapply | serving after each step | reason |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let live = &r["live"];
        let steps = live["steps"].as_array().cloned().unwrap_or_default();
        let pause = |step: &str| {
            steps
                .iter()
                .find(|s| s["step"] == step)
                .map(|s| s["pause_us"].to_string())
                .unwrap_or_else(|| "–".into())
        };
        let serving = steps.iter().all(|s| s["serving"] == true) && !steps.is_empty();
        let rate = |p: &str| {
            live["phases"][p]["per_second"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "–".into())
        };
        let failed = live["socket_errors"].as_u64().unwrap_or(0)
            + live["phases"]
                .as_object()
                .map(|p| {
                    p.values()
                        .filter_map(|v| v["non_2xx"].as_u64())
                        .sum::<u64>()
                })
                .unwrap_or(0);
        let reason = r["refusals"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.iter()
                    .map(|x| {
                        format!(
                            "{} `{}`",
                            x["kind"].as_str().unwrap_or(""),
                            x["symbol"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .or_else(|| {
                steps
                    .iter()
                    .find(|s| s["exit"] != 0)
                    .map(|s| s["error"].as_str().unwrap_or("").to_string())
            })
            .unwrap_or_default();
        let functions = nginx::strings(&r["replaced"]).join(", ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} / {} / {} | {} | {} | {} / {} / {} / {} / {} | {} | {} |",
            match r["rewrite"].as_str() {
                Some(file) => format!(
                    "{} rewritten with shadow data ([{file}](../patches/nginx/{file}))",
                    r["patch"].as_str().unwrap_or("")
                ),
                None => r["patch"].as_str().unwrap_or("").to_string(),
            },
            r["binary"].as_str().unwrap_or(""),
            if r["live"]["applied"] == true {
                "applied"
            } else {
                r["outcome"].as_str().unwrap_or("")
            },
            functions,
            pause("apply"),
            pause("undo"),
            pause("reapply"),
            live["requests"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "–".into()),
            if live.is_null() {
                "–".to_string()
            } else {
                failed.to_string()
            },
            rate("before"),
            rate("apply"),
            rate("after_apply"),
            rate("after_undo"),
            rate("after_reapply"),
            if live.is_null() {
                "–"
            } else if serving {
                "yes"
            } else {
                "NO"
            },
            reason.replace('|', "\\|")
        );
    }
    if let Some(c) = control {
        let rate = |p: &str| c["phases"][p]["per_second"].as_u64().unwrap_or(0);
        let _ = writeln!(
            md,
            "\nControl (the same nginx, load and timing, no hotsplice): req/s {} / {} / {} / {} / {} \
             over the same five phases; {} requests, {} socket errors.",
            rate("before"),
            rate("apply"),
            rate("after_apply"),
            rate("after_undo"),
            rate("after_reapply"),
            c["requests"],
            c["socket_errors"]
        );
    }
    let _ = writeln!(md, "\nMachine: {}.", crate::machine());
    // Plot the first applied patch.
    if let Some(r) = rows.iter().find(|r| r["live"]["applied"] == true) {
        let png = results.join(format!("{name}-throughput.png"));
        let status = Command::new("/usr/bin/python3")
            .arg(root.join("eval/plot_throughput.py"))
            .arg(&json_path)
            .arg(r["patch"].as_str().unwrap_or(""))
            .arg(r["binary"].as_str().unwrap_or(""))
            .arg(&png)
            .status();
        if status.is_ok_and(|s| s.success()) {
            let _ = writeln!(
                md,
                "\n![throughput of {} under load, apply/undo marked]({name}-throughput.png)",
                r["patch"].as_str().unwrap_or("")
            );
        }
    }
    std::fs::write(results.join(format!("{name}.md")), md)?;
    eprintln!("wrote eval/results/{name}.{{json,md}}");
    Ok(())
}

fn stock_binaries(root: &Path, version: &str) -> Result<PathBuf> {
    let dir = root.join(".cache/nginx-stock").join(version);
    if dir.join("usr/sbin/nginx").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    for package in ["nginx", "libnginx-mod-mail", "libnginx-mod-stream"] {
        let status = Command::new("apt-get")
            .args(["download", "-qq", &format!("{package}={version}")])
            .current_dir(&dir)
            .status()?;
        if !status.success() {
            bail!("apt-get download {package}={version} failed");
        }
    }
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let status = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&path)
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("dpkg-deb -x {} failed", path.display());
            }
        }
    }
    Ok(dir)
}

/// `cargo xtask eval-nginx-stock [PATCH...]`: the stock, stripped Debian binary of the same
/// version, patched live with the reverse of each security patch (same shape and functions
/// as the fix; the stock build already contains every fix).
pub fn eval_stock(only: &[String]) -> Result<()> {
    let source = nginx::setup(&["--eval"])?;
    let root = nginx::root();
    let version = nginx::version(&source);
    let stock = stock_binaries(&root, &version)?;
    let series = nginx::series(&source)?;
    let work = root.join("target/eval/nginx-stock");
    std::fs::create_dir_all(&work)?;
    let script = work.join("load.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let cache = root.join("target/eval/nginx-stock-cache");
    let mut rows = Vec::new();
    let mut control = None;
    for patch in series.iter().filter(|p| nginx::is_security(p)) {
        if !only.is_empty() && !only.contains(patch) {
            continue;
        }
        eprintln!("eval-nginx-stock: {patch}");
        let text = std::fs::read_to_string(source.join("debian/patches").join(patch))?;
        let reverse = work.join(format!("{patch}.reverse"));
        let files = hotsplice_srcpatch::parse(&text).with_context(|| patch.to_string())?;
        std::fs::write(
            &reverse,
            hotsplice_srcpatch::render(&hotsplice_srcpatch::reverse(&files)),
        )?;
        let mut targets = vec!["usr/sbin/nginx".to_string()];
        let mut done = 0;
        while done < targets.len() {
            let target = targets[done].clone();
            done += 1;
            let name = Path::new(&target)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bundle = work.join(format!("{patch}.{name}.hsp"));
            let started = Instant::now();
            let out = nginx::hotsplice()
                .args([
                    "build",
                    "--debian",
                    &format!("nginx={version}"),
                    "--target",
                    &target,
                    "--json",
                    "-j",
                    "2",
                ])
                .arg("--diff")
                .arg(&reverse)
                .arg("--cache")
                .arg(&cache)
                .arg("-o")
                .arg(&bundle)
                .stdin(Stdio::null())
                .output()?;
            let build_s = started.elapsed().as_secs_f64();
            let built: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            for other in nginx::strings(&built["other_targets"]) {
                // A module of the build: its installed path.
                let module = Path::new(&other)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let installed = format!("usr/lib/nginx/modules/{module}");
                if !targets.contains(&installed) {
                    targets.push(installed);
                }
            }
            let outcome = built["outcome"].as_str().unwrap_or("error").to_string();
            let err = String::from_utf8_lossy(&out.stderr);
            let mut row = json!({
                "patch": patch, "binary": name, "outcome": outcome,
                "replaced": built["replaced"], "new": built["new"],
                "refusals": built["refusals"], "build_s": build_s,
                "error": if built.is_null() {
                    err.lines().rev().find(|l| l.contains("error")).unwrap_or("").to_string()
                } else { String::new() },
            });
            if outcome == "written" {
                let binary = stock.join("usr/sbin/nginx");
                let modules = stock.join("usr/lib/nginx/modules");
                let id = built["id"].as_str().unwrap_or_default().to_string();
                if control.is_none() {
                    let run = Nginx::start(&binary, &modules, &work.join("run"), 18090)?;
                    control = Some(run_live(
                        &run,
                        &bundle,
                        &id,
                        &work.join("state"),
                        &script,
                        true,
                    )?);
                }
                let run = Nginx::start(&binary, &modules, &work.join("run"), 18090)?;
                row["live"] = run_live(&run, &bundle, &id, &work.join("state"), &script, false)?;
            }
            eprintln!("eval-nginx-stock: {patch} [{name}]: {}", summary_of(&row));
            rows.push(row);
        }
    }
    let (rows, control) = merge_with_previous(&root, "nginx-stock", &series, only, rows, control);
    write_results(
        &root,
        "nginx-stock",
        &version,
        &rows,
        control.as_ref(),
        "The stock, stripped `/usr/sbin/nginx` (and mail/stream modules) from Debian's packages of this version, which already contain every fix; each patch's *reverse* is the diff (`hotsplice build --debian`), so the live patch has the same shape and functions as the fix. A reverse that does not apply to the final tree (a later patch of the series changes the same lines: CVE-2026-42946.1 is followed by .2) is a limit of this method, reported as an error",
    )
}

/// `cargo xtask render-nginx NAME`: rewrites `eval/results/NAME.md` and its plot from
/// `eval/results/NAME.json` (after a change to the report's layout; no measurement).
pub fn render(name: &str) -> Result<()> {
    let root = nginx::root();
    let path = root.join("eval/results").join(format!("{name}.json"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let rows = doc["rows"].as_array().cloned().unwrap_or_default();
    let control = doc.get("control").filter(|c| !c.is_null()).cloned();
    write_results(
        &root,
        name,
        doc["nginx"].as_str().unwrap_or(""),
        &rows,
        control.as_ref(),
        doc["what"].as_str().unwrap_or(""),
    )
}

/// `cargo xtask bench-nginx-throughput [PATCH]`: steady-state throughput of nginx with the
/// patch applied against without, in alternating 10 s wrk runs (the order alternates too), so
/// the machine's drift cancels out. The patch should be on the request path: the default,
/// CVE-2026-1642, replaces `ngx_http_upstream_process_header`, which every proxied request
/// (half of the load) runs.
pub fn bench_throughput(patch: Option<&str>) -> Result<()> {
    let patch = patch.unwrap_or("CVE-2026-1642.patch");
    let source = nginx::setup(&["--eval"])?;
    let root = nginx::root();
    let series = nginx::series(&source)?;
    let index = series
        .iter()
        .position(|p| p == patch)
        .context("no such patch")?;
    let work = root.join("target/bench/nginx-throughput");
    std::fs::create_dir_all(&work)?;
    let script = work.join("load.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let plain = nginx::tree_before(&source, &series, index, &work.join("plain"))?;
    let ok = Command::new("sh")
        .args(["-c", BUILD])
        .current_dir(&plain)
        .env("MAKEFLAGS", "-j2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("plain build failed");
    }
    let tree = nginx::tree_before(&source, &series, index, &work.join("tree"))?;
    let bundle = work.join("patch.hsp");
    let (built, _, _, err) = nginx::hotsplice_build(
        &tree,
        &source.join("debian/patches").join(patch),
        TARGET,
        &root.join("target/eval/nginx-build/cache"),
        &bundle,
    )?;
    let id = built["id"]
        .as_str()
        .with_context(|| format!("no bundle: {err}"))?
        .to_string();
    let run = Nginx::start(
        &plain.join(TARGET),
        &plain.join("debian/build-bin/objs"),
        &work.join("run"),
        18100,
    )?;
    let pids: Vec<String> = run.pids().iter().map(|p| p.to_string()).collect();
    let state = work.join("state").display().to_string();
    let args = |verb: &str, what: &str| {
        let mut a = vec![verb.to_string(), what.to_string()];
        for p in &pids {
            a.push("--pid".into());
            a.push(p.clone());
        }
        a.extend(["--state-dir".into(), state.clone()]);
        a
    };
    let measure = || -> Result<f64> {
        let load = Load::start(run.port, 10, &script)?;
        let (seconds, errors, total) = load.finish()?;
        let bad: u64 = seconds.values().map(|(_, b)| b).sum();
        if errors + bad > 0 {
            bail!("{errors} socket errors, {bad} non-2xx during a throughput run");
        }
        Ok(total as f64 / 10.0)
    };
    let (mut patched, mut unpatched) = (Vec::new(), Vec::new());
    for round in 0..6 {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_patch in order {
            if with_patch {
                let a = args("apply", bundle.to_str().unwrap());
                let (code, _, e) = hs(&a.iter().map(String::as_str).collect::<Vec<_>>());
                if code != 0 {
                    bail!("apply failed: {e}");
                }
                patched.push(measure()?);
                let u = args("undo", &id);
                let (code, _, e) = hs(&u.iter().map(String::as_str).collect::<Vec<_>>());
                if code != 0 {
                    bail!("undo failed: {e}");
                }
            } else {
                unpatched.push(measure()?);
            }
            eprintln!("bench-nginx-throughput: round {round} patched={with_patch}");
        }
    }
    drop(run);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let ratios: Vec<f64> = patched.iter().zip(&unpatched).map(|(p, u)| p / u).collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# nginx throughput with a live patch applied vs without\n"
    );
    let _ = writeln!(
        md,
        "Patch `{patch}` ({}), Debian nginx {} built with `debian/rules build-arch`, master + 2 \
         workers, `wrk -t2 -c64` for 10 s per run over a static file and a keepalive-proxied \
         location (every proxied request runs the replaced function). Six rounds, each one run \
         with the patch applied and one without, in alternating order. Reproduce: \
         `cargo xtask bench-nginx-throughput {patch}`.\n",
        nginx::strings(&built["replaced"]).join(", "),
        nginx::version(&source)
    );
    let _ = writeln!(
        md,
        "| round | without (req/s) | with (req/s) | with / without |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for (i, ((p, u), r)) in patched.iter().zip(&unpatched).zip(&ratios).enumerate() {
        let _ = writeln!(md, "| {} | {u:.0} | {p:.0} | {:.1} % |", i + 1, r * 100.0);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0;
    let _ = writeln!(
        md,
        "| mean | {:.0} | {:.0} | {:.1} % |\n| median of the rounds | | | {:.1} % |\n\n\
         No failed requests in any run. Machine: {}.",
        mean(&unpatched),
        mean(&patched),
        mean(&patched) / mean(&unpatched) * 100.0,
        median * 100.0,
        crate::machine()
    );
    std::fs::create_dir_all(root.join("eval/results"))?;
    std::fs::write(root.join("eval/results/nginx-throughput.md"), &md)?;
    print!("{md}");
    Ok(())
}
