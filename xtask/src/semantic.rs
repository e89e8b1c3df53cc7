//! `cargo xtask eval-nginx-semantic`: a fix that changes a data structure, applied live to
//! nginx through its shadow-data rewrite, with the bug shown before, gone after, back after
//! undo; and the pause of patches with hooks, on the semantic fixture.
//!
//! nginx CVE-2026-40701: when a client connection is closed while nginx resolves the OCSP
//! responder of the client's certificate, the OCSP context is freed but the resolve is not;
//! its completion (or timeout) then runs on freed memory. Debian's fix adds a member to
//! `struct ngx_ssl_ocsp_ctx_s` and is refused as `layout-changed`;
//! `eval/patches/nginx/CVE-2026-40701-shadow.patch` keeps the layout and the member as
//! shadow data.
//!
//! The bug is made visible the way a memory checker would: nginx runs with
//! `MALLOC_PERTURB_`, so freed memory is overwritten at once and the use after free crashes
//! the worker ("exited on signal 11" in the error log) instead of reading stale data. The
//! trigger: TLS clients with a certificate to be checked by OCSP, against a resolver that
//! never answers, gone (handshake timeout, 1 s) before the resolve times out (2 s).

use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::live::{Load, Nginx, WRK_SCRIPT, rewrite_of, serves_correctly};
use crate::nginx::{self, TARGET};

const PATCH: &str = "CVE-2026-40701.patch";
const HTTP_PORT: u16 = 18180;
const TLS_PORT: u16 = 18443;
const DNS_PORT: u16 = 18053;
/// `resolver_timeout` in the configuration: when the resolve of a freed context completes.
const RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshakes started by one trigger.
const CLIENTS: usize = 4;

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A test CA, a server certificate and a client certificate, made with `openssl`.
fn make_certs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args([
            "-subj",
            "/CN=hotsplice eval CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])
        .current_dir(dir))?;
    for name in ["server", "client"] {
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
            .arg(format!("/CN={name}"))
            .args([
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])
            .current_dir(dir))?;
        run(Command::new("openssl")
            .args([
                "x509", "-req", "-days", "30", "-CA", "ca.pem", "-CAkey", "ca.key",
            ])
            .args(["-CAcreateserial", "-in", &format!("{name}.csr")])
            .args(["-out", &format!("{name}.pem")])
            .current_dir(dir))?;
    }
    Ok(())
}

/// The TLS server: client certificates checked by OCSP, the responder's name resolved by a
/// resolver that never answers.
fn tls_server(certs: &Path) -> String {
    let c = certs.display();
    format!(
        "  server {{\n    listen 127.0.0.1:{TLS_PORT} ssl;\n\
         \x20   ssl_certificate {c}/server.pem;\n    ssl_certificate_key {c}/server.key;\n\
         \x20   ssl_client_certificate {c}/ca.pem;\n    ssl_verify_client on;\n\
         \x20   ssl_ocsp on;\n    ssl_ocsp_responder http://localhost:18999/;\n\
         \x20   resolver 127.0.0.1:{DNS_PORT} ipv6=off;\n    resolver_timeout {}s;\n\
         \x20   client_header_timeout 1s;\n    location / {{ return 200 \"tls ok\\n\"; }}\n  }}\n",
        RESOLVER_TIMEOUT.as_secs()
    )
}

/// Worker crashes the master has logged so far.
fn crashes(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("error.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("exited on signal 11"))
        .count()
}

/// Starts [`CLIENTS`] TLS clients that nginx times out while it resolves the OCSP responder,
/// waits until the resolves have timed out too, and returns the worker crashes that caused.
fn trigger(dir: &Path, certs: &Path) -> Result<usize> {
    let before = crashes(dir);
    let clients: Vec<Child> = (0..CLIENTS)
        .map(|_| {
            Command::new("curl")
                .args(["-sk", "-m", "4", "-o", "/dev/null", "--cert"])
                .arg(certs.join("client.pem"))
                .arg("--key")
                .arg(certs.join("client.key"))
                .arg(format!("https://127.0.0.1:{TLS_PORT}/"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("running curl")
        })
        .collect::<Result<_>>()?;
    for mut c in clients {
        let _ = c.wait();
    }
    std::thread::sleep(RESOLVER_TIMEOUT + Duration::from_millis(1500));
    Ok(crashes(dir) - before)
}

fn hs(args: &[&str]) -> Result<(i32, Value, String)> {
    let out = nginx::hotsplice().args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

fn pid_args(nginx: &Nginx) -> Vec<String> {
    nginx
        .pids()
        .iter()
        .flat_map(|p| ["--pid".to_string(), p.to_string()])
        .collect()
}

/// Runs `hotsplice ARGS --pid ... --state-dir STATE --json`; fails unless it succeeds.
fn live_step(verb: &[&str], nginx: &Nginx, state: &Path) -> Result<Value> {
    let pids = pid_args(nginx);
    let mut args: Vec<&str> = verb.to_vec();
    args.extend(pids.iter().map(String::as_str));
    let state = state.display().to_string();
    args.extend(["--state-dir", &state, "--json"]);
    let (code, v, err) = hs(&args)?;
    if code != 0 {
        bail!("hotsplice {} failed ({code}): {err}", verb.join(" "));
    }
    Ok(v)
}

fn max_of(v: &Value, key: &str) -> u64 {
    v["processes"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p[key].as_u64()).max().unwrap_or(0))
        .unwrap_or(0)
}

fn shadows(v: &Value) -> Value {
    let sum = |key: &str| -> u64 {
        v["processes"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["shadows"][key].as_u64()).sum())
            .unwrap_or(0)
    };
    json!({"live": sum("live"), "allocations": sum("allocations"), "arena_used": sum("arena_used")})
}

/// The nginx part: refusal of the original, build of the rewrite, the bug before, apply under
/// load, the bug gone, undo, the bug back.
fn eval_nginx(work: &Path) -> Result<Value> {
    let source = nginx::setup(&["--eval"])?;
    let series = nginx::series(&source)?;
    let index = series
        .iter()
        .position(|p| p == PATCH)
        .with_context(|| format!("{PATCH} is not in nginx's debian/patches/series"))?;
    eprintln!("eval-nginx-semantic: plain build of nginx before {PATCH}");
    let plain = nginx::tree_before(&source, &series, index, &work.join("plain"))?;
    nginx::plain_build(&plain)?;
    let tree = nginx::tree_before(&source, &series, index, &work.join("tree"))?;
    let cache = nginx::root().join("target/eval/nginx-build/cache");

    eprintln!("eval-nginx-semantic: hotsplice build of {PATCH} as Debian ships it");
    let original = source.join("debian/patches").join(PATCH);
    let (refused, ..) =
        nginx::hotsplice_build(&tree, &original, TARGET, &cache, &work.join("original.hsp"))?;
    eprintln!("eval-nginx-semantic: hotsplice build of the shadow-data rewrite");
    let rewrite = rewrite_of(PATCH);
    let bundle = work.join("rewrite.hsp");
    let (built, build_s, _, err) =
        nginx::hotsplice_build(&tree, &rewrite, TARGET, &cache, &bundle)?;
    if built["outcome"] != "written" {
        bail!("the rewrite did not build: {built} {err}");
    }
    let id = built["id"].as_str().unwrap_or_default().to_string();

    let certs = work.join("certs");
    make_certs(&certs)?;
    // The resolver: a socket that receives queries and never answers.
    let _dns = UdpSocket::bind(("127.0.0.1", DNS_PORT)).context("binding the silent resolver")?;
    let dir = work.join("run");
    let nginx = Nginx::start_with(
        &plain.join(TARGET),
        &plain.join("debian/build-bin/objs"),
        &dir,
        HTTP_PORT,
        &tls_server(&certs),
        &[("MALLOC_PERTURB_", "165")],
    )?;
    let state = work.join("state");

    eprintln!("eval-nginx-semantic: the bug, before the patch");
    let before = trigger(&dir, &certs)?;

    let script = work.join("load.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    const SECONDS: u64 = 20;
    let load = Load::start(HTTP_PORT, SECONDS, &script)?;
    let t0 = Instant::now();
    let at = |s: u64| {
        if let Some(left) = Duration::from_secs(s).checked_sub(t0.elapsed()) {
            std::thread::sleep(left);
        }
    };
    at(4);
    eprintln!("eval-nginx-semantic: check and apply under load");
    let checked = live_step(
        &["check", bundle.to_str().unwrap_or_default()],
        &nginx,
        &state,
    )?;
    let applied = live_step(
        &["apply", bundle.to_str().unwrap_or_default()],
        &nginx,
        &state,
    )?;
    let applied_at = t0.elapsed().as_secs_f64();
    let serving_after_apply = serves_correctly(HTTP_PORT);
    eprintln!("eval-nginx-semantic: the bug, with the patch (under load)");
    let with_patch = trigger(&dir, &certs)?;
    at(14);
    eprintln!("eval-nginx-semantic: undo under load");
    let undone = live_step(&["undo", &id], &nginx, &state)?;
    let undone_at = t0.elapsed().as_secs_f64();
    let serving_after_undo = serves_correctly(HTTP_PORT);
    let (seconds, socket_errors, requests) = load.finish()?;
    let non_2xx: u64 = seconds.values().map(|(_, bad)| bad).sum();
    eprintln!("eval-nginx-semantic: the bug, after undo");
    let after_undo = trigger(&dir, &certs)?;
    drop(nginx);

    let refusal = refused["refusals"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["kind"] == "layout-changed"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(json!({
        "patch": PATCH,
        "rewrite": rewrite.file_name().map(|n| n.to_string_lossy()),
        "original_outcome": refused["outcome"],
        "original_refusal": refusal,
        "build_s": build_s,
        "replaced": built["replaced"],
        "new": built["new"],
        "clients_per_trigger": CLIENTS,
        "crashes": {"before": before, "with_patch": with_patch, "after_undo": after_undo},
        "processes": applied["processes"].as_array().map_or(0, Vec::len),
        "checked": checked["processes"].as_array().map_or(0, Vec::len),
        "apply": {"at_s": applied_at, "pause_us": max_of(&applied, "pause_us"),
                   "serving": serving_after_apply},
        "undo": {"at_s": undone_at, "pause_us": max_of(&undone, "pause_us"),
                  "serving": serving_after_undo, "shadows": shadows(&undone)},
        "load": {"seconds": SECONDS, "requests": requests, "socket_errors": socket_errors,
                  "non_2xx": non_2xx},
    }))
}

/// The fixture part: the budget patch (a pre-apply hook attaching shadows to 64 live
/// connections) applied and undone `cycles` times on the 8-thread fixture server.
fn eval_hooks(work: &Path, cycles: usize) -> Result<Value> {
    let fixtures = nginx::root().join("fixtures/semantic");
    let app = work.join("app");
    let _ = std::fs::remove_dir_all(&app);
    run(Command::new("cp")
        .arg("-r")
        .arg(fixtures.join("app"))
        .arg(&app))?;
    run(Command::new("make").arg("-s").current_dir(&app))?;
    let bundle = work.join("budget.hsp");
    let out = nginx::hotsplice()
        .args(["build", "--source"])
        .arg(fixtures.join("app"))
        .arg("--diff")
        .arg(fixtures.join("patches/budget.patch"))
        .args(["--target", "server", "--build", "make", "--json", "--cache"])
        .arg(work.join("cache"))
        .arg("-o")
        .arg(&bundle)
        .output()?;
    let built: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if built["outcome"] != "written" {
        bail!(
            "the budget fixture did not build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let id = built["id"].as_str().unwrap_or_default().to_string();
    let mut server = Command::new(app.join("server"))
        .arg("8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    // The server says "ready" once its threads and connections are up.
    let mut ready = String::new();
    if let Some(out) = server.stdout.take() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready)?;
    }
    if ready.trim() != "ready" {
        let _ = server.kill();
        bail!("the fixture server did not start");
    }
    let pid = server.id().to_string();
    let state = work.join("hook-state").display().to_string();
    let (mut pauses, mut hooks, mut walls) = (Vec::new(), Vec::new(), Vec::new());
    let mut result = Ok(());
    for _ in 0..cycles {
        let b = bundle.display().to_string();
        let (code, applied, err) =
            hs(&["apply", &b, "--pid", &pid, "--state-dir", &state, "--json"])?;
        if code != 0 {
            result = Err(anyhow::anyhow!("apply failed: {err}"));
            break;
        }
        let p = &applied["processes"][0];
        pauses.push(p["pause_us"].as_u64().unwrap_or(0));
        hooks.push(p["hooks"][0]["took_us"].as_u64().unwrap_or(0));
        walls.push(applied["wall_us"].as_u64().unwrap_or(0));
        let (code, _, err) = hs(&["undo", &id, "--pid", &pid, "--state-dir", &state, "--json"])?;
        if code != 0 {
            result = Err(anyhow::anyhow!("undo failed: {err}"));
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    result?;
    let stats = |mut v: Vec<u64>| {
        v.sort_unstable();
        json!({"p50": v[v.len() / 2], "p90": v[v.len() * 9 / 10], "max": v[v.len() - 1]})
    };
    Ok(json!({
        "cycles": cycles, "threads": 8, "connections": 64,
        "pause_us": stats(pauses), "hook_us": stats(hooks), "apply_wall_us": stats(walls),
    }))
}

fn write(root: &Path, nginx: &Value, hooks: &Value) -> Result<()> {
    let results = root.join("eval/results");
    let doc = json!({"machine": crate::machine(), "nginx": nginx, "hooks": hooks});
    std::fs::write(
        results.join("nginx-semantic.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    let n = nginx;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# A layout-changing fix applied live: nginx {PATCH} with shadow data\n\n\
         Reproduce: `cargo xtask eval-nginx-semantic` (see README). The bug: a client \
         connection closed while nginx resolves the OCSP responder of the client's certificate \
         frees the OCSP context but not the resolve, whose completion then uses the freed \
         context. nginx (master + 2 workers, a plain Debian build of the tree before the patch) \
         runs with `MALLOC_PERTURB_=165`, so the use after free crashes the worker instead of \
         reading stale memory; {CLIENTS} TLS clients with a certificate checked by OCSP are \
         timed out by nginx (1 s) before the resolve times out ({} s).\n",
        RESOLVER_TIMEOUT.as_secs()
    );
    let _ = writeln!(
        md,
        "- Debian's patch as shipped: **{}** — {}\n\
         - The rewrite ([{}](../patches/nginx/{})): built in {:.1} s, replaces {}.\n",
        n["original_outcome"].as_str().unwrap_or("?"),
        n["original_refusal"]["detail"]
            .as_str()
            .unwrap_or("no layout-changed refusal"),
        n["rewrite"].as_str().unwrap_or(""),
        n["rewrite"].as_str().unwrap_or(""),
        n["build_s"].as_f64().unwrap_or(0.0),
        nginx::strings(&n["replaced"]).join(", "),
    );
    let c = &n["crashes"];
    let _ = writeln!(
        md,
        "| phase | worker crashes from {CLIENTS} timed-out clients |\n|---|---|\n\
         | before the patch | {} |\n| patch applied (under load) | {} |\n| after undo | {} |\n",
        c["before"], c["with_patch"], c["after_undo"]
    );
    let l = &n["load"];
    let _ = writeln!(
        md,
        "Under `wrk -t2 -c64` for {} s on the HTTP server of the same nginx: `apply` to {} \
         processes at t = {:.1} s (longest pause {} µs), `undo` at t = {:.1} s (longest pause \
         {} µs); {} requests, {} socket errors, {} non-2xx responses; nginx served correctly \
         after each step: {}. At undo the shadow data held {} live entries ({} allocated while \
         the patch was in; all freed with the patch memory).\n",
        l["seconds"],
        n["processes"],
        n["apply"]["at_s"].as_f64().unwrap_or(0.0),
        n["apply"]["pause_us"],
        n["undo"]["at_s"].as_f64().unwrap_or(0.0),
        n["undo"]["pause_us"],
        l["requests"],
        l["socket_errors"],
        l["non_2xx"],
        if n["apply"]["serving"] == true && n["undo"]["serving"] == true {
            "yes"
        } else {
            "NO"
        },
        n["undo"]["shadows"]["live"],
        n["undo"]["shadows"]["allocations"],
    );
    let h = hooks;
    let _ = writeln!(
        md,
        "## The pause with a hook\n\n\
         `fixtures/semantic` (8 threads serving 64 connections), `patches/budget.patch`: its \
         pre-apply hook walks the 64 live connections and attaches a shadow budget to each, \
         inside the stop. {} apply/undo cycles: pause p50 {} µs, p90 {} µs, max {} µs, of which \
         the hook p50 {} µs, p90 {} µs, max {} µs; apply wall time p50 {} µs.\n",
        h["cycles"],
        h["pause_us"]["p50"],
        h["pause_us"]["p90"],
        h["pause_us"]["max"],
        h["hook_us"]["p50"],
        h["hook_us"]["p90"],
        h["hook_us"]["max"],
        h["apply_wall_us"]["p50"],
    );
    let _ = writeln!(md, "Machine: {}.", crate::machine());
    std::fs::write(results.join("nginx-semantic.md"), md)?;
    eprintln!("wrote eval/results/nginx-semantic.{{json,md}}");
    Ok(())
}

/// `cargo xtask eval-nginx-semantic`.
pub fn eval() -> Result<()> {
    let root = nginx::root();
    let work: PathBuf = root.join("target/eval/nginx-semantic");
    std::fs::create_dir_all(&work)?;
    let nginx = eval_nginx(&work)?;
    eprintln!("eval-nginx-semantic: nginx: {nginx}");
    let hooks = eval_hooks(&work, 50)?;
    write(&root, &nginx, &hooks)?;
    let c = &nginx["crashes"];
    let shown = c["before"].as_u64() > Some(0)
        && c["with_patch"] == 0
        && c["after_undo"].as_u64() > Some(0);
    let clean = nginx["load"]["socket_errors"] == 0 && nginx["load"]["non_2xx"] == 0;
    if !shown || !clean {
        bail!("the fix was not demonstrated cleanly: {nginx}");
    }
    Ok(())
}
