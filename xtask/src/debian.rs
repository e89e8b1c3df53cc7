//! `cargo xtask eval-debian openssh|curl`: a Debian package's security patch series built
//! with `hotsplice build --series` (one full build, then one incremental build and one
//! bundle per patch), each outcome set against the one expected (and why), every bundle
//! applied live — in order, each on top of the previous — to a running program of the state
//! before the series, checked to still serve, and undone. The whole series' build time is set
//! against one plain Debian build of the same tree, measured in the same run.
//!
//! Results: `eval/results/{openssh,curl}.{md,json}`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::nginx::{hotsplice, root, strings};

/// What a patch should get, and why.
struct Expected {
    patch: &'static str,
    outcome: &'static str,
    reason: &'static str,
}

const APPLY: &str = "APPLY";
const REFUSE: &str = "REFUSE";
const NOTHING: &str = "NOTHING-TO-PATCH";

/// How the live check runs the program.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Live {
    /// sshd accepting logins under a connection loop.
    Sshd,
    /// A long-running libcurl client against a local HTTP server.
    Curl,
}

/// One Debian package of the evaluation.
struct Corpus {
    name: &'static str,
    package: &'static str,
    version: &'static str,
    /// The first patch of `debian/patches/series` in the evaluated series; the patches
    /// before it make the base.
    first: &'static str,
    /// Patches of the series kept in the base though they come later (curl's packaging
    /// applies the GnuTLS/NSS variants last and pops them during its build).
    kept: &'static [&'static str],
    target: &'static str,
    post_build: &'static str,
    mirrors: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    live: Live,
    expected: &'static [Expected],
}

const OPENSSH: Corpus = Corpus {
    name: "openssh",
    package: "openssh",
    version: "1:9.2p1-2+deb12u10",
    first: "CVE-2023-38408-1.patch",
    kept: &[],
    target: "debian/build-deb/sshd",
    // debian/rules passes ASKPASS_PROGRAM to make; without it the incremental build would
    // compile readpass.c with another default (hotsplice notices and recompiles with the
    // recorded arguments, but the post build should match the build).
    post_build: "make -C debian/build-deb ASKPASS_PROGRAM=/usr/bin/ssh-askpass",
    mirrors: &[],
    env: &[("DEB_BUILD_PROFILES", "noudeb")],
    live: Live::Sshd,
    expected: &[
        Expected {
            patch: "CVE-2023-38408-1.patch",
            outcome: NOTHING,
            reason: "ssh-pkcs11.c is linked into ssh, ssh-keygen and ssh-pkcs11-helper, not sshd",
        },
        Expected {
            patch: "CVE-2023-38408-2.patch",
            outcome: NOTHING,
            reason: "ssh-agent.c (and its manual page) only",
        },
        Expected {
            patch: "CVE-2023-38408-3.patch",
            outcome: NOTHING,
            reason: "for sshd, misc.c only gains lib_contains_symbol(), which no sshd code calls; the callers are in ssh-pkcs11.c and ssh-sk.c (other binaries)",
        },
        Expected {
            patch: "CVE-2023-28531.patch",
            outcome: APPLY,
            reason: "authfd.c's ssh_update_card() is code only; authfd.o is in libssh.a and sshd links it",
        },
        Expected {
            patch: "CVE-2023-48795.patch",
            outcome: REFUSE,
            reason: "Terrapin: adds members to struct kex (strict KEX state) used by running connections: layout change",
        },
        Expected {
            patch: "CVE-2023-51384.patch",
            outcome: NOTHING,
            reason: "ssh-agent.c only",
        },
        Expected {
            patch: "CVE-2023-51385.patch",
            outcome: NOTHING,
            reason: "ssh.c only (client)",
        },
        Expected {
            patch: "Disable-async-signal-unsafe-code-from-the-sshsigdie-.patch",
            outcome: APPLY,
            reason: "regreSSHion mitigation: sshsigdie() in log.c, code only",
        },
        Expected {
            patch: "sntrup761x25519-sha512.patch",
            outcome: REFUSE,
            reason: "adds a key exchange method: the kexalgs table (existing data) changes",
        },
        Expected {
            patch: "CVE-2025-26465.patch",
            outcome: NOTHING,
            reason: "sshconnect2.c only (client)",
        },
        Expected {
            patch: "incorrect-return-values.patch",
            outcome: APPLY,
            reason: "return values in krl.c and ssh-sk-client.c, both linked into sshd; the other files belong to other binaries",
        },
        Expected {
            patch: "fix-disable-forwarding.patch",
            outcome: APPLY,
            reason: "session.c: DisableForwarding checks, code only",
        },
        Expected {
            patch: "CVE-2025-61984.patch",
            outcome: NOTHING,
            reason: "ssh.c only (client)",
        },
        Expected {
            patch: "CVE-2025-61985.patch",
            outcome: APPLY,
            reason: "urldecode() in misc.c, linked into sshd",
        },
        Expected {
            patch: "CVE-2025-61984-tests.patch",
            outcome: NOTHING,
            reason: "regression test only (regress/percent.sh)",
        },
        Expected {
            patch: "CVE-2026-35388.patch",
            outcome: NOTHING,
            reason: "mux.c only (client multiplexing)",
        },
        Expected {
            patch: "CVE-2026-35385.patch",
            outcome: NOTHING,
            reason: "scp.c only",
        },
        Expected {
            patch: "CVE-2026-35387.patch",
            outcome: APPLY,
            reason: "auth2-hostbased.c and auth2-pubkey.c (sshd), code only; sshconnect2.c is the client's",
        },
        Expected {
            patch: "CVE-2026-35414.patch",
            outcome: APPLY,
            reason: "auth2-pubkeyfile.c, code only",
        },
        Expected {
            patch: "prohibit-comma-in-hostnames.patch",
            outcome: NOTHING,
            reason: "ssh.c only (client)",
        },
        Expected {
            patch: "CVE-2026-35386-1.patch",
            outcome: NOTHING,
            reason: "readconf.c/h and ssh.c: client configuration, not linked into sshd",
        },
        Expected {
            patch: "CVE-2026-35386-2.patch",
            outcome: NOTHING,
            reason: "ssh.c only (client)",
        },
        Expected {
            patch: "CVE-2026-35386-3.patch",
            outcome: NOTHING,
            reason: "regression test only",
        },
    ],
};

const CURL: Corpus = Corpus {
    name: "curl",
    package: "curl",
    version: "7.88.1-10+deb12u15",
    first: "CVE-2023-27533.patch",
    kept: &["90_gnutls.patch", "99_nss.patch"],
    target: "debian/build/lib/.libs/libcurl.so.4.8.0",
    post_build: "make -C debian/build",
    mirrors: &["debian/build"],
    // The OpenSSL flavour only: libcurl4, what `curl` and most programs load.
    env: &[("DEB_BUILD_PROFILES", "pkg.curl.openssl-only")],
    live: Live::Curl,
    expected: &[
        Expected {
            patch: "CVE-2023-27533.patch",
            outcome: APPLY,
            reason: "telnet option checks in telnet.c, code only",
        },
        Expected {
            patch: "CVE-2023-27534.patch",
            outcome: APPLY,
            reason: "SFTP path handling in curl_path.c, code only",
        },
        Expected {
            patch: "CVE-2023-27538.patch",
            outcome: APPLY,
            reason: "connection reuse check in url.c, code only",
        },
        Expected {
            patch: "CVE-2023-27535.patch",
            outcome: REFUSE,
            reason: "adds FTP connection-matching members to struct ftp_conn / UserDefined in urldata.h: layout change",
        },
        Expected {
            patch: "CVE-2023-27536.patch",
            outcome: REFUSE,
            reason: "adds gssapi_delegation to struct connectdata: layout change",
        },
        Expected {
            patch: "CVE-2023-27537.patch",
            outcome: NOTHING,
            reason: "documentation only",
        },
        Expected {
            patch: "CVE-2023-28319.patch",
            outcome: APPLY,
            reason: "libssh2.c fingerprint check, code only",
        },
        Expected {
            patch: "CVE-2023-28320.patch",
            outcome: NOTHING,
            reason: "the alarm()-based resolver timeout code; Debian builds the threaded resolver, so it is compiled out",
        },
        Expected {
            patch: "CVE-2023-28320-1.patch",
            outcome: NOTHING,
            reason: "follow-up to the same compiled-out code",
        },
        Expected {
            patch: "CVE-2023-28321.patch",
            outcome: APPLY,
            reason: "IDN wildcard matching in vtls/hostcheck.c (plus a test), code only",
        },
        Expected {
            patch: "CVE-2023-28322.patch",
            outcome: REFUSE,
            reason: "moves upload state between structs (UrlState, UserDefined) in urldata.h: layout change",
        },
        Expected {
            patch: "CVE-2023-32001.patch",
            outcome: APPLY,
            reason: "fopen.c, code only",
        },
        Expected {
            patch: "Use-OpenLDAP-specific-functionality.patch",
            outcome: REFUSE,
            reason: "changes configure.ac: build configuration",
        },
        Expected {
            patch: "CVE-2023-38039.patch",
            outcome: REFUSE,
            reason: "header size limit: new members in struct SingleRequest / Curl_easy: layout change",
        },
        Expected {
            patch: "CVE-2023-38545.patch",
            outcome: APPLY,
            reason: "SOCKS5 heap overflow in socks.c (plus tests), code only",
        },
        Expected {
            patch: "CVE-2023-38546.patch",
            outcome: REFUSE,
            reason: "cookie engine: struct Cookie / CookieInfo change: layout change",
        },
        Expected {
            patch: "CVE-2023-46218.patch",
            outcome: APPLY,
            reason: "cookie domain check in cookie.c, code only",
        },
        Expected {
            patch: "CVE-2023-46219.patch",
            outcome: APPLY,
            reason: "fopen.c, code only",
        },
        Expected {
            patch: "CVE-2024-2004.patch",
            outcome: APPLY,
            reason: "protocol selection in setopt.c (plus tests), code only",
        },
        Expected {
            patch: "CVE-2024-2398.patch",
            outcome: APPLY,
            reason: "HTTP/2 push headers leak in http2.c, code only",
        },
        Expected {
            patch: "CVE-2024-7264-0.patch",
            outcome: NOTHING,
            reason: "vtls/x509asn1.c is compiled only for the GnuTLS, wolfSSL, Schannel and Secure Transport backends; this is the OpenSSL build",
        },
        Expected {
            patch: "CVE-2024-7264-1.patch",
            outcome: NOTHING,
            reason: "same file (and tests)",
        },
        Expected {
            patch: "CVE-2024-8096.patch",
            outcome: NOTHING,
            reason: "vtls/gtls.c: the GnuTLS backend",
        },
        Expected {
            patch: "CVE-2024-9681-0.patch",
            outcome: APPLY,
            reason: "HSTS subdomain handling in hsts.c, code only",
        },
        Expected {
            patch: "CVE-2024-9681-1.patch",
            outcome: NOTHING,
            reason: "tests only",
        },
        Expected {
            patch: "url-use-same-credentials-on-redirect.patch",
            outcome: REFUSE,
            reason: "adds members to struct UrlState (credentials of the first host): layout change",
        },
        Expected {
            patch: "CVE-2024-11053.patch",
            outcome: REFUSE,
            reason: "applies only on top of url-use-same-credentials-on-redirect.patch (refused): depends on it",
        },
        Expected {
            patch: "CVE-2025-0167.patch",
            outcome: REFUSE,
            reason: "applies only on top of CVE-2024-11053.patch (refused): depends on it",
        },
        Expected {
            patch: "CVE-2025-10148.patch",
            outcome: NOTHING,
            reason: "WebSocket code (ws.c) is not enabled in 7.88.1 builds",
        },
        Expected {
            patch: "CVE-2025-14524.patch",
            outcome: APPLY,
            reason: "SASL in curl_sasl.c, code only",
        },
        Expected {
            patch: "CVE-2025-14819.patch",
            outcome: REFUSE,
            reason: "adds no_partialchain to struct multi_ssl_backend_data (cached X509 store): layout change",
        },
        Expected {
            patch: "CVE-2026-3783.patch",
            outcome: APPLY,
            reason: "http.c, code only",
        },
        Expected {
            patch: "CVE-2026-3784.patch",
            outcome: APPLY,
            reason: "url.c, code only",
        },
        Expected {
            patch: "CVE-2026-5773.patch",
            outcome: APPLY,
            reason: "smb.c, code only",
        },
        Expected {
            patch: "CVE-2026-7168.patch",
            outcome: APPLY,
            reason: "new static setproxy() in setopt.c; vauth.h only gains a macro for disabled digest auth",
        },
        Expected {
            patch: "runtests.pl-Increase-variance-of-random-seed-used-for-tes.patch",
            outcome: NOTHING,
            reason: "test harness only",
        },
        Expected {
            patch: "fix-CVE-2023-27534-regression-1.patch",
            outcome: APPLY,
            reason: "curl_path.c, code only, on top of CVE-2023-27534",
        },
        Expected {
            patch: "fix-CVE-2023-27534-regression-2.patch",
            outcome: APPLY,
            reason: "curl_path.c, code only, on top of the previous",
        },
        Expected {
            patch: "0001-http_chunks-reset-the-trailer-to-avoid-memory-leak.patch",
            outcome: APPLY,
            reason: "http_chunks.c, code only",
        },
    ],
};

fn corpus(name: &str) -> Result<&'static Corpus> {
    match name {
        "openssh" => Ok(&OPENSSH),
        "curl" => Ok(&CURL),
        other => bail!("unknown corpus {other} (openssh, curl)"),
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The package's source under `.cache/debian` (fetched once) with its build dependencies.
fn setup(c: &Corpus) -> Result<PathBuf> {
    let root = root();
    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "hotsplice"])
        .current_dir(&root))?;
    let dir = root.join(".cache/debian");
    std::fs::create_dir_all(&dir)?;
    let find = || -> Option<PathBuf> {
        let upstream = c.version.split(':').next_back()?.split('-').next()?;
        let path = dir.join(format!("{}-{upstream}", c.package));
        let changelog = std::fs::read_to_string(path.join("debian/changelog")).ok()?;
        changelog
            .lines()
            .next()?
            .contains(&format!("({})", c.version))
            .then_some(path)
    };
    if find().is_none() {
        eprintln!("eval-debian: apt-get source {}={}", c.package, c.version);
        run(Command::new("apt-get")
            .args(["source", "-qq", &format!("{}={}", c.package, c.version)])
            .current_dir(&dir))?;
    }
    let source = find().context("the source did not unpack where expected")?;
    let deps = Command::new("dpkg-checkbuilddeps")
        .current_dir(&source)
        .output()?;
    if !deps.status.success() {
        eprintln!("eval-debian: apt-get build-dep {}", c.package);
        run(Command::new("apt-get")
            .args(["build-dep", "-y", "-qq"])
            .arg(&source)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(source)
}

fn series_of(source: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(source.join("debian/patches/series"))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The base: the package with the patches before `first` (and the kept ones) applied, as
/// quilt sees it (`debian/patches/series` lists exactly those), so `debian/rules` works.
fn base_tree(c: &Corpus, source: &Path, dest: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let series = series_of(source)?;
    let first = series
        .iter()
        .position(|p| p == c.first)
        .with_context(|| format!("{} is not in the series", c.first))?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest)?;
    run(Command::new("cp").arg("-a").arg(source).arg(dest))?;
    let tree = dest.join(source.file_name().context("source name")?);
    let quilt = |args: &[&str]| {
        run(Command::new("quilt")
            .args(args)
            .current_dir(&tree)
            .env("QUILT_PATCHES", "debian/patches"))
    };
    quilt(&["pop", "-a", "-q"])?;
    let mut base: Vec<&str> = series[..first].iter().map(String::as_str).collect();
    base.extend(c.kept);
    std::fs::write(tree.join("debian/patches/series"), base.join("\n") + "\n")?;
    quilt(&["push", "-a", "-q"])?;
    let patches = series[first..]
        .iter()
        .filter(|p| !c.kept.contains(&p.as_str()))
        .map(|p| source.join("debian/patches").join(p))
        .collect();
    Ok((tree, patches))
}

/// `cargo xtask eval-debian openssh|curl`.
pub fn eval_debian(args: &[String]) -> Result<()> {
    let Some(name) = args.first() else {
        bail!("usage: cargo xtask eval-debian openssh|curl [--update-from VERSION]");
    };
    let c = corpus(name)?;
    if let (Some("--update-from"), Some(from)) = (args.get(1).map(String::as_str), args.get(2)) {
        return eval_update(c, from);
    }
    let source = setup(c)?;
    let work = root().join("target/eval/debian").join(c.name);
    std::fs::create_dir_all(&work)?;
    let (base, patches) = base_tree(c, &source, &work.join("base"))?;
    let list = work.join("series");
    std::fs::write(
        &list,
        patches
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )?;

    // One plain Debian build of the base: the time to compare with, and the running program.
    // (Measured again after the series: the machine is shared, one number could mislead.)
    let plain_build = |name: &str| -> Result<(PathBuf, f64, f64)> {
        eprintln!("eval-debian: plain build of the base ({name})");
        let parent = work.join(name);
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent)?;
        run(Command::new("cp").arg("-a").arg(&base).arg(&parent))?;
        let plain = parent.join(base.file_name().context("base name")?);
        let started = Instant::now();
        let cpu0 = children_cpu_s();
        let out = Command::new("sh")
            .args(["-c", "debian/rules build-arch"])
            .current_dir(&plain)
            .envs(c.env.iter().copied())
            .env("DEB_BUILD_OPTIONS", "nocheck parallel=2")
            .env("MAKEFLAGS", "-j2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !out.success() {
            bail!("the plain build failed in {}", plain.display());
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = children_cpu_s() - cpu0;
        eprintln!("eval-debian: plain build {seconds:.1} s ({cpu:.1} s CPU)");
        Ok((plain, seconds, cpu))
    };
    let (plain, plain_before, plain_cpu_before) = plain_build("plain")?;

    // The whole series, from a cold cache.
    let cache = work.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let bundles = work.join("bundles");
    let _ = std::fs::remove_dir_all(&bundles);
    eprintln!(
        "eval-debian: hotsplice build --series ({} patches)",
        patches.len()
    );
    let mut cmd = hotsplice();
    cmd.arg("build")
        .arg("--source")
        .arg(&base)
        .arg("--series")
        .arg(&list)
        .args(["--target", c.target, "--build", "debian/rules build-arch"])
        .args(["--post-build", c.post_build, "--json", "-j", "2"])
        .arg("--env")
        .arg("DEB_BUILD_OPTIONS=nocheck parallel=2");
    for (k, v) in c.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    for m in c.mirrors {
        cmd.args(["--mirror", m]);
    }
    cmd.arg("--cache").arg(&cache).arg("-o").arg(&bundles);
    let started = Instant::now();
    let cpu0 = children_cpu_s();
    let out = cmd.stdin(Stdio::null()).output()?;
    let series_s = started.elapsed().as_secs_f64();
    let series_cpu = children_cpu_s() - cpu0;
    std::fs::write(work.join("build.log"), &out.stderr)?;
    let built: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "hotsplice build printed no JSON (exit {:?}); see {}",
            out.status.code(),
            work.join("build.log").display()
        )
    })?;
    eprintln!(
        "eval-debian: series built in {series_s:.1} s (exit {:?})",
        out.status.code()
    );
    let rows = built["patches"].as_array().cloned().unwrap_or_default();
    let (again, plain_after, plain_cpu_after) = plain_build("plain-again")?;
    // What a plain user pays for the same series: after the full build, each patch applied
    // (copied into the mirrors) and the incremental build run, with no hotsplice.
    eprintln!("eval-debian: plain incremental builds of the series");
    let started = Instant::now();
    let cpu0 = children_cpu_s();
    for patch in &patches {
        let applied = Command::new("patch")
            .args(["-p1", "--batch", "--silent", "--forward", "-i"])
            .arg(patch)
            .current_dir(&again)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !applied.success() {
            continue;
        }
        let text = std::fs::read_to_string(patch).unwrap_or_default();
        for file in text
            .lines()
            .filter_map(|l| l.strip_prefix("+++ "))
            .map(|p| p.split('\t').next().unwrap_or(p).trim())
            .filter(|p| *p != "/dev/null")
            .map(|p| p.split_once('/').map_or(p, |(_, rest)| rest))
        {
            for mirror in c.mirrors {
                let copy = again.join(mirror).join(file);
                if copy.is_file() {
                    std::fs::copy(again.join(file), &copy)?;
                }
            }
        }
        let _ = Command::new("sh")
            .args(["-c", c.post_build])
            .current_dir(&again)
            .envs(c.env.iter().copied())
            .env("MAKEFLAGS", "-j2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
    }
    let plain_incremental = started.elapsed().as_secs_f64();
    let plain_incremental_cpu = children_cpu_s() - cpu0;
    let _ = std::fs::remove_dir_all(again.parent().unwrap_or(&again));
    let plain_s = (plain_before + plain_after) / 2.0;
    let plain_cpu = (plain_cpu_before + plain_cpu_after) / 2.0;

    // Every bundle, live, in order, on the plain build's program.
    let program = plain.join(c.target);
    let live = match c.live {
        Live::Sshd => live_sshd(&work, &program, &rows)?,
        Live::Curl => live_curl(&work, &plain, &program, &rows)?,
    };
    let everywhere = match c.live {
        Live::Sshd => Value::Null,
        Live::Curl => everywhere_curl(&work, &program, &rows)?,
    };

    let mut table = Vec::new();
    for (k, row) in rows.iter().enumerate() {
        let patch = Path::new(row["diff"].as_str().unwrap_or(""))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expected = c.expected.iter().find(|e| e.patch == patch);
        let got = match row["outcome"].as_str().unwrap_or("error") {
            "written" => APPLY,
            "refused" => REFUSE,
            "nothing-to-patch" => NOTHING,
            _ => "ERROR",
        };
        table.push(json!({
            "index": k + 1,
            "patch": patch,
            "expected": expected.map(|e| e.outcome),
            "expected_reason": expected.map(|e| e.reason),
            "got": got,
            "as_expected": expected.is_some_and(|e| e.outcome == got),
            "outcome": row["outcome"],
            "replaced": row["replaced"],
            "new": row["new"],
            "refusals": row["refusals"].as_array().map(|a| a.iter().map(|r| json!({"kind": r["kind"], "symbol": r["symbol"], "detail": r["detail"]})).collect::<Vec<_>>()),
            "files": row["files"],
            "recompiled": row["recompiled"],
            "other_targets": row["other_targets"],
            "stacks_on": row["stacks_on"],
            "id": row["id"],
            "error": row["error"],
            "seconds": row["seconds"],
            "live": live.get(k).cloned().unwrap_or(Value::Null),
        }));
    }
    let doc = json!({
        "package": c.package,
        "version": c.version,
        "target": c.target,
        "machine": crate::machine(),
        "plain_build_s": plain_s,
        "plain_build_runs_s": [plain_before, plain_after],
        "plain_build_cpu_s": plain_cpu,
        "plain_build_runs_cpu_s": [plain_cpu_before, plain_cpu_after],
        "series_build_cpu_s": series_cpu,
        "plain_incremental_s": plain_incremental,
        "plain_incremental_cpu_s": plain_incremental_cpu,
        "series_build_s": series_s,
        "series_exit": out.status.code(),
        "base_build_s": built["seconds"]["pre_build"],
        "patches": table,
        "everywhere": everywhere,
    });
    let results = root().join("eval/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(
        results.join(format!("{}.json", c.name)),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    std::fs::write(results.join(format!("{}.md", c.name)), render(c, &doc))?;
    eprintln!("eval-debian: wrote eval/results/{}.{{md,json}}", c.name);
    Ok(())
}

fn render(c: &Corpus, doc: &Value) -> String {
    let mut md = String::new();
    let patches = doc["patches"].as_array().cloned().unwrap_or_default();
    let count = |k: &str| patches.iter().filter(|p| p["got"] == k).count();
    let matched = patches.iter().filter(|p| p["as_expected"] == true).count();
    let live_ok = patches
        .iter()
        .filter(|p| p["live"]["applied"] == true && p["live"]["served_after_apply"] == true)
        .count();
    let undone = patches
        .iter()
        .filter(|p| p["live"]["undone"] == true)
        .count();
    let plain = doc["plain_build_s"].as_f64().unwrap_or(0.0);
    let series = doc["series_build_s"].as_f64().unwrap_or(0.0);
    let plain_cpu = doc["plain_build_cpu_s"].as_f64().unwrap_or(0.0);
    let series_cpu = doc["series_build_cpu_s"].as_f64().unwrap_or(0.0);
    let incremental = doc["plain_incremental_s"].as_f64().unwrap_or(0.0);
    let incremental_cpu = doc["plain_incremental_cpu_s"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        md,
        "# `hotsplice build --series` on Debian {} {}\n",
        c.package, c.version
    );
    let _ = writeln!(
        md,
        "Source: `apt-get source {}={}`. Base: the package with the patches of \
         `debian/patches/series` before `{}` applied{} (quilt state rewritten to match, so \
         `debian/rules` runs unchanged); the series is every later patch, in order. Built as \
         Debian builds it (`debian/rules build-arch`, {}, `DEB_BUILD_OPTIONS=nocheck \
         parallel=2`), incremental post build `{}`, target `{}`. Reproduce: `cargo xtask \
         eval-debian {}`.\n",
        c.package,
        c.version,
        c.first,
        if c.kept.is_empty() {
            String::new()
        } else {
            format!(
                " (and {}, which the packaging applies last)",
                c.kept.join(", ")
            )
        },
        c.env
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect::<Vec<_>>()
            .join(", "),
        c.post_build,
        c.target,
        c.name
    );
    let _ = writeln!(
        md,
        "**{} patches: {} bundles, {} refused, {} nothing to patch, {} errors; {matched} of {} \
         as expected.** Every bundle applied live in order on a running program of the base: \
         {live_ok} applied with the program serving after it, {undone} undone.\n",
        patches.len(),
        count(APPLY),
        count(REFUSE),
        count(NOTHING),
        count("ERROR"),
        patches.len()
    );
    let _ = writeln!(
        md,
        "**Build time:** the whole series (one full build with hotsplice's shims, then one \
         incremental build and object diff per patch) took {series:.0} s; one plain Debian \
         build of the base took {plain:.0} s in the same run (mean of one build before and \
         one after the series: {}): **{:.2}× one plain build**. (The full build inside the \
         series: {:.0} s.) In CPU time (user + system of every process, which other work on \
         the machine does not inflate): series {series_cpu:.0} s, plain build {plain_cpu:.0} s \
         (mean of the two), **{:.2}×**. For comparison, a plain user applying the same \
         patches one after the other to a built tree and running `{}` after each spends \
         {incremental:.0} s ({incremental_cpu:.0} s CPU) on top of the full build: hotsplice's \
         series is **{:.2}× (CPU {:.2}×) one plain build plus those incremental builds**.\n",
        doc["plain_build_runs_s"]
            .as_array()
            .map(|a| a
                .iter()
                .map(|v| format!("{:.0} s", v.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        series / plain.max(1.0),
        doc["base_build_s"].as_f64().unwrap_or(0.0),
        series_cpu / plain_cpu.max(1.0),
        c.post_build,
        series / (plain + incremental).max(1.0),
        series_cpu / (plain_cpu + incremental_cpu).max(1.0)
    );
    let _ = writeln!(md, "{}\n", live_setup(c.live));
    let _ = writeln!(
        md,
        "| # | patch | expected (why) | hotsplice | replaced | reason / files | live: apply → serving → undo | build s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for p in &patches {
        let refusals: Vec<String> = p["refusals"]
            .as_array()
            .map(|a| {
                let mut kinds: Vec<String> = a
                    .iter()
                    .map(|r| {
                        format!(
                            "{} `{}`",
                            r["kind"].as_str().unwrap_or(""),
                            r["symbol"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                kinds.dedup();
                kinds
            })
            .unwrap_or_default();
        let files: Vec<String> = p["files"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|f| f["status"] != "rebuilt")
                    .map(|f| {
                        format!(
                            "{}: {}",
                            f["path"].as_str().unwrap_or(""),
                            f["status"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut reason = refusals.join("; ");
        if p["got"] == NOTHING && !strings(&p["other_targets"]).is_empty() {
            reason = format!(
                "changes only {}",
                strings(&p["other_targets"])
                    .iter()
                    .map(|t| Path::new(t)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(e) = p["error"].as_str().filter(|e| !e.is_empty()) {
            reason = e.lines().next().unwrap_or("").to_string();
        }
        if !files.is_empty() {
            if !reason.is_empty() {
                reason.push_str("; ");
            }
            reason.push_str(&files.join(", "));
        }
        let replaced = strings(&p["replaced"]);
        let replaced = if replaced.len() > 6 {
            format!(
                "{} and {} more",
                replaced[..6].join(", "),
                replaced.len() - 6
            )
        } else {
            replaced.join(", ")
        };
        let live = &p["live"];
        let live_cell = if live.is_null() {
            String::new()
        } else if live["applied"] == true {
            format!(
                "applied ({} µs max pause) → {} → {}",
                live["pause_us"].as_u64().unwrap_or(0),
                if live["served_after_apply"] == true {
                    "serving"
                } else {
                    "NOT SERVING"
                },
                if live["undone"] == true {
                    "undone, serving".to_string()
                } else {
                    format!("undo: {}", live["undo_error"].as_str().unwrap_or("failed"))
                }
            )
        } else {
            format!(
                "not applied: {}",
                live["error"].as_str().unwrap_or("").replace('|', "\\|")
            )
        };
        let s = &p["seconds"];
        let _ = writeln!(
            md,
            "| {} | {} | {}{} ({}) | {} | {} | {} | {} | {:.1} |",
            p["index"],
            p["patch"].as_str().unwrap_or(""),
            p["expected"].as_str().unwrap_or("?"),
            if p["as_expected"] == true { "" } else { " ✗" },
            p["expected_reason"].as_str().unwrap_or(""),
            p["got"].as_str().unwrap_or(""),
            replaced,
            reason.replace('|', "\\|"),
            live_cell,
            s["post_build"].as_f64().unwrap_or(0.0) + s["diff"].as_f64().unwrap_or(0.0),
        );
    }
    let e = &doc["everywhere"];
    if !e.is_null() {
        let _ = writeln!(
            md,
            "\n## Every process that maps the library\n\n\
             Bundle {} of the series (`{}`) installed with `hotsplice install --file` for the \
             plain build's `libcurl.so` (another build of the same source than the series' \
             own, so another build-id: `install` records the file's build and run-pre matching \
             proves each process's code), with {} clients fetching every 20 ms — one as built, \
             one whose executable was deleted after it started, one in a PID namespace of its \
             own: patched {} of {} (all: {}); every client kept fetching: {}. `hotsplice watch` \
             patched a client started afterwards in {} (it kept fetching: {}). `status`: {}. \
             `uninstall` undid {} processes; all kept fetching: {}. Transfers: {} ok, {} failed.",
            e["bundle_index"],
            e["patch"].as_str().unwrap_or(""),
            e["processes"].as_array().map_or(0, Vec::len),
            e["installed_patched"],
            e["processes"],
            e["all_patched"],
            e["serving_after_install"],
            e["watch_patched_ms"]
                .as_f64()
                .map_or("— (not seen within 20 s)".to_string(), |ms| format!(
                    "{ms:.0} ms"
                )),
            e["later_serves"],
            e["status_states"],
            e["uninstall_undone"],
            e["serving_after_uninstall"],
            e["transfers_ok"],
            e["transfers_failed"],
        );
    }
    let _ = writeln!(
        md,
        "\nBuild s = incremental post build (with hotsplice's own recompiles) + object diff \
         for that patch. Details (every file's role and status, recompiled objects, the \
         apply/undo output) are in `{}.json`.\n\nMachine: {}.",
        c.name,
        doc["machine"].as_str().unwrap_or("")
    );
    md
}

fn live_setup(live: Live) -> &'static str {
    match live {
        Live::Sshd => {
            "**Live check:** the plain build's `sshd` runs (`-D -r`: no re-exec, so the \
             per-connection processes are forks of the patched listener and run the patched \
             code), privilege separation on, public-key login as root. A client logs in and \
             runs `echo ok` in a loop the whole time, and one session stays open. Each bundle \
             is applied in order (`hotsplice apply --pid` the listener and the open session's \
             processes), logins are checked to succeed after it, and after the last one every \
             applied bundle is undone in reverse order, logins checked after each undo."
        }
        Live::Curl => {
            "**Live check:** a client program linked against the plain build's \
             `libcurl.so.4` fetches `http://127.0.0.1:PORT/` from a local HTTP server every \
             20 ms with one easy handle (connection reuse) and reports each result. Each \
             bundle is applied in order (`hotsplice apply --pid` the client), transfers are \
             checked to succeed after it, and after the last one every applied bundle is \
             undone in reverse order, transfers checked after each undo."
        }
    }
}

/// A counter of successes and failures of the program's service, checked between steps.
#[derive(Default)]
struct Service {
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<String>,
}

impl Service {
    /// Waits until `want` more successes happen (up to `timeout`); true if they did with no
    /// failure in between.
    fn serves(&self, want: u64, timeout: Duration) -> bool {
        let ok0 = self.ok.load(Ordering::SeqCst);
        let failed0 = self.failed.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.failed.load(Ordering::SeqCst) > failed0 {
                return false;
            }
            if self.ok.load(Ordering::SeqCst) >= ok0 + want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

fn hs(args: &[&str]) -> (i32, Value, String) {
    let out = hotsplice().args(args).stdin(Stdio::null()).output();
    match out {
        Ok(o) => (
            o.status.code().unwrap_or(-1),
            serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        ),
        Err(e) => (-1, Value::Null, e.to_string()),
    }
}

/// Applies every written bundle in order to `pids`, checking service after each; then undoes
/// them in reverse. One result per row (Null for rows without a bundle).
fn apply_series(
    rows: &[Value],
    pids: &dyn Fn() -> Vec<u32>,
    service: &Service,
    state: &Path,
    want: u64,
) -> Vec<Value> {
    let mut results: Vec<Value> = vec![Value::Null; rows.len()];
    let state = state.display().to_string();
    let mut applied: Vec<(usize, String)> = Vec::new();
    for (k, row) in rows.iter().enumerate() {
        let Some(bundle) = row["bundle"]
            .as_str()
            .filter(|_| row["outcome"] == "written")
        else {
            continue;
        };
        let pid_list: Vec<String> = pids().iter().map(u32::to_string).collect();
        let mut args = vec!["apply", bundle];
        for p in &pid_list {
            args.extend(["--pid", p.as_str()]);
        }
        args.extend(["--state-dir", &state, "--json"]);
        let (code, v, err) = hs(&args);
        if code != 0 {
            results[k] = json!({
                "applied": false,
                "exit": code,
                "error": v["error"].as_str().map(str::to_string).unwrap_or(err),
            });
            eprintln!(
                "eval-debian: {} not applied: {}",
                k + 1,
                results[k]["error"]
            );
            continue;
        }
        let pause = v["processes"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["pause_us"].as_u64())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let served = service.serves(want, Duration::from_secs(20));
        eprintln!(
            "eval-debian: {} applied to {} process(es), serving: {served}",
            k + 1,
            pid_list.len()
        );
        let id = v["patch"].as_str().unwrap_or_default().to_string();
        results[k] = json!({
            "applied": true,
            "processes": pid_list.len(),
            "pause_us": pause,
            "served_after_apply": served,
            "last_error": service.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        });
        applied.push((k, id));
    }
    for (k, id) in applied.iter().rev() {
        let pid_list: Vec<String> = pids().iter().map(u32::to_string).collect();
        let mut args = vec!["undo", id.as_str()];
        for p in &pid_list {
            args.extend(["--pid", p.as_str()]);
        }
        args.extend(["--state-dir", &state, "--json"]);
        let (code, v, err) = hs(&args);
        let served = code == 0 && service.serves(want, Duration::from_secs(20));
        results[*k]["undone"] = json!(code == 0 && served);
        if code != 0 {
            results[*k]["undo_error"] =
                json!(v["error"].as_str().map(str::to_string).unwrap_or(err));
        }
        eprintln!("eval-debian: {} undone: {code}, serving: {served}", k + 1);
    }
    results
}

/// The direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn live_sshd(work: &Path, sshd: &Path, rows: &[Value]) -> Result<Vec<Value>> {
    let dir = work.join("live");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all("/run/sshd")?;
    for key in ["hostkey", "id"] {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(key)))?;
    }
    std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys"))?;
    let port = 22_000 + (std::process::id() % 1000) as u16;
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/hostkey\nPidFile {0}/sshd.pid\n\
         AuthorizedKeysFile {0}/authorized_keys\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
         StrictModes no\nLogLevel ERROR\nMaxStartups 100\n",
        dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config)?;
    let master = Killed(
        Command::new(sshd)
            .args(["-D", "-r", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", sshd.display()))?,
    );
    let master_pid = master.0.id();
    let ssh = {
        let dir = dir.clone();
        move |command: &str| {
            let mut cmd = Command::new("ssh");
            cmd.arg("-i")
                .arg(dir.join("id"))
                .args(["-p", &port.to_string()])
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "LogLevel=ERROR",
                    "-o",
                    "ConnectTimeout=10",
                    "root@127.0.0.1",
                    command,
                ])
                .stdin(Stdio::null());
            cmd
        }
    };
    // sshd listening?
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ssh("echo ok").output()?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "sshd does not accept logins: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // One session stays open the whole time.
    let session = Killed(ssh("sleep 100000").stdout(Stdio::null()).spawn()?);
    std::thread::sleep(Duration::from_secs(2));
    // The open session's sshd processes (its monitor and its unprivileged child; not the
    // shell and `sleep` they run).
    let sshd_path = sshd.canonicalize()?;
    let mut session_pids = Vec::new();
    let mut stack = children(master_pid);
    while let Some(p) = stack.pop() {
        if std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == sshd_path) {
            session_pids.push(p);
        }
        stack.extend(children(p));
    }
    let pids = move || {
        let mut v = vec![master_pid];
        v.extend(
            session_pids
                .iter()
                .copied()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists()),
        );
        v
    };
    let service = Arc::new(Service::default());
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let service = service.clone();
        let stop = stop.clone();
        let ssh = ssh.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match ssh("echo ok").output() {
                    Ok(o)
                        if o.status.success()
                            && String::from_utf8_lossy(&o.stdout).trim() == "ok" =>
                    {
                        service.ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(o) => {
                        service.failed.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut e) = service.last_error.lock() {
                            *e = String::from_utf8_lossy(&o.stderr).trim().to_string();
                        }
                    }
                    Err(e) => {
                        service.failed.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut last) = service.last_error.lock() {
                            *last = e.to_string();
                        }
                    }
                }
            }
        })
    };
    if !service.serves(3, Duration::from_secs(20)) {
        bail!("the login loop does not work");
    }
    let results = apply_series(rows, &pids, &service, &dir.join("state"), 3);
    stop.store(true, Ordering::SeqCst);
    let _ = looper.join();
    let total_ok = service.ok.load(Ordering::SeqCst);
    let total_failed = service.failed.load(Ordering::SeqCst);
    eprintln!("eval-debian: logins ok {total_ok}, failed {total_failed}");
    drop(session);
    drop(master);
    Ok(results
        .into_iter()
        .map(|mut r| {
            if !r.is_null() {
                r["logins_total_ok"] = json!(total_ok);
                r["logins_total_failed"] = json!(total_failed);
            }
            r
        })
        .collect())
}

const CURL_CLIENT: &str = r#"/* Fetches URL every 20 ms with one easy handle; prints "ok N" or "fail N: error". */
#include <stdio.h>
#include <unistd.h>
#include <curl/curl.h>

static size_t sink(char *data, size_t size, size_t n, void *user)
{
    (void)data;
    *(size_t *)user += size * n;
    return size * n;
}

int main(int argc, char **argv)
{
    CURL *curl;
    size_t got;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    curl = curl_easy_init();
    curl_easy_setopt(curl, CURLOPT_URL, argv[1]);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &got);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
    for (unsigned long i = 0; argc > 1; i++) {
        got = 0;
        CURLcode rc = curl_easy_perform(curl);
        long status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (rc == CURLE_OK && status == 200 && got == 5)
            printf("ok %lu\n", i);
        else
            printf("fail %lu: %s (status %ld, %zu bytes)\n", i, curl_easy_strerror(rc), status, got);
        fflush(stdout);
        usleep(20000);
    }
    return 0;
}
"#;

/// A minimal HTTP/1.1 server answering `hello` to every request (keep-alive).
fn http_server() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    Ok(port)
}

fn serve(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        buf.drain(..end);
        let reply =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
        if stream.write_all(reply).is_err() {
            return;
        }
    }
}

fn live_curl(work: &Path, plain: &Path, library: &Path, rows: &[Value]) -> Result<Vec<Value>> {
    let dir = work.join("live");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let libs = library.parent().context("library directory")?.to_path_buf();
    std::fs::write(dir.join("client.c"), CURL_CLIENT)?;
    run(Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(dir.join("client"))
        .arg(dir.join("client.c"))
        .arg("-I")
        .arg(plain.join("include"))
        .arg("-L")
        .arg(&libs)
        .arg("-lcurl"))?;
    let port = http_server()?;
    let mut command = Command::new(dir.join("client"));
    command.arg(format!("http://127.0.0.1:{port}/"));
    let (child, service) = spawn_client(command, &libs)?;
    let pid = child.0.id();
    if !service.serves(10, Duration::from_secs(20)) {
        bail!("the libcurl client does not work");
    }
    // The client must run the built library, not the system's.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let canonical = library.canonicalize()?;
    if !maps.contains(&canonical.display().to_string()) {
        bail!("the client does not map {}", canonical.display());
    }
    let results = apply_series(rows, &|| vec![pid], &service, &dir.join("state"), 10);
    let total_ok = service.ok.load(Ordering::SeqCst);
    let total_failed = service.failed.load(Ordering::SeqCst);
    eprintln!("eval-debian: transfers ok {total_ok}, failed {total_failed}");
    drop(child);
    Ok(results
        .into_iter()
        .map(|mut r| {
            if !r.is_null() {
                r["transfers_total_ok"] = json!(total_ok);
                r["transfers_total_failed"] = json!(total_failed);
            }
            r
        })
        .collect())
}

/// Starts a libcurl client (`command`, with `libs` as its library path) whose "ok N" / "fail
/// N" lines are counted by the returned service.
fn spawn_client(mut command: Command, libs: &Path) -> Result<(Killed, Arc<Service>)> {
    let mut child = Killed(
        command
            .env("LD_LIBRARY_PATH", libs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let service = Arc::new(Service::default());
    let counted = service.clone();
    let out = BufReader::new(child.0.stdout.take().context("client stdout")?);
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if line.starts_with("ok ") {
                counted.ok.fetch_add(1, Ordering::SeqCst);
            } else {
                counted.failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut e) = counted.last_error.lock() {
                    *e = line;
                }
            }
        }
    });
    Ok((child, service))
}

/// The pid of the child of `parent` running `exe` (or its deleted copy), waiting up to 5 s.
fn pid_running(exe: &Path, parent: u32) -> Option<u32> {
    // `/proc/PID/exe` is canonical; the evaluation's paths go through `xtask/..`.
    let dir = exe.parent()?.canonicalize().ok()?;
    let exe = dir.join(exe.file_name()?);
    let exe = exe.as_path();
    let deleted = format!("{} (deleted)", exe.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let child_of_parent = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("PPid:"))
                        .and_then(|v| v.trim().parse::<u32>().ok())
                })
                == Some(parent);
            if let Ok(link) = std::fs::read_link(format!("/proc/{pid}/exe"))
                && (link == exe || link.to_string_lossy() == deleted)
                && child_of_parent
            {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Issue 12's library case on Debian's libcurl: the first bundle of the series installed for
/// the built `libcurl.so` (`install --file`) patches every process that maps it — a client
/// as built, one whose executable was deleted after it started, one in a PID namespace of its
/// own — while each keeps fetching; `hotsplice watch` then patches a client started later;
/// `status` sees them all; `uninstall` undoes them all.
fn everywhere_curl(work: &Path, library: &Path, rows: &[Value]) -> Result<Value> {
    let Some(row) = rows.iter().find(|r| r["outcome"] == "written") else {
        return Ok(Value::Null);
    };
    let bundle = row["bundle"].as_str().unwrap_or_default().to_string();
    let id = row["id"].as_str().unwrap_or_default().to_string();
    let dir = work.join("everywhere");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let libs = library.parent().context("library directory")?.to_path_buf();
    let client = work.join("live/client");
    for name in ["client-a", "client-b", "client-c", "client-d"] {
        std::fs::copy(&client, dir.join(name))?;
    }
    let port = http_server()?;
    let url = format!("http://127.0.0.1:{port}/");
    let mut clients = Vec::new();
    for name in ["client-a", "client-b"] {
        let mut command = Command::new(dir.join(name));
        command.arg(&url);
        clients.push(spawn_client(command, &libs)?);
    }
    // The second one's executable goes away, as after a package upgrade.
    std::fs::remove_file(dir.join("client-b"))?;
    let mut contained = Command::new("unshare");
    contained
        .args(["--pid", "--fork", "--kill-child"])
        .arg(dir.join("client-c"))
        .arg(&url);
    clients.push(spawn_client(contained, &libs)?);
    let contained_pid = pid_running(&dir.join("client-c"), clients[2].0.0.id())
        .context("the client in a PID namespace")?;
    let mut pids: Vec<u32> = vec![clients[0].0.0.id(), clients[1].0.0.id(), contained_pid];
    for (_, service) in &clients {
        if !service.serves(10, Duration::from_secs(20)) {
            bail!("a libcurl client does not work");
        }
    }
    let store = dir.join("store").display().to_string();
    let state = dir.join("state").display().to_string();
    let lib = library.display().to_string();
    let (code, installed, err) = hs(&[
        "install",
        &bundle,
        "--file",
        &lib,
        "--store",
        &store,
        "--state-dir",
        &state,
        "--json",
    ]);
    if code != 0 {
        bail!("install failed ({code}): {err} {installed}");
    }
    let mut patched: Vec<u32> = installed["patched"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_u64())
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default();
    patched.sort_unstable();
    pids.sort_unstable();
    let serving_after_install = clients
        .iter()
        .all(|(_, s)| s.serves(10, Duration::from_secs(20)));
    // A client started after the install: `watch` patches it.
    let watch = Killed(
        hotsplice()
            .args([
                "watch",
                "--interval",
                "30",
                "--store",
                &store,
                "--state-dir",
                &state,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut command = Command::new(dir.join("client-d"));
    command.arg(&url);
    clients.push(spawn_client(command, &libs)?);
    let later = clients[3].0.0.id();
    let mut watch_ms = None;
    while started.elapsed() < Duration::from_secs(20) {
        let (_, listed, _) = hs(&[
            "list",
            "--pid",
            &later.to_string(),
            "--state-dir",
            &state,
            "--json",
        ]);
        if listed.to_string().contains(&id) {
            watch_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let later_serves = clients[3].1.serves(10, Duration::from_secs(20));
    drop(watch);
    let (_, status, _) = hs(&["status", "--store", &store, "--state-dir", &state, "--json"]);
    let states: Vec<String> = status["installed"][0]["processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["state"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let (code, gone, err) = hs(&[
        "uninstall",
        &id,
        "--store",
        &store,
        "--state-dir",
        &state,
        "--json",
    ]);
    if code != 0 {
        bail!("uninstall failed ({code}): {err}");
    }
    let serving_after_uninstall = clients
        .iter()
        .all(|(_, s)| s.serves(10, Duration::from_secs(20)));
    let ok: u64 = clients
        .iter()
        .map(|(_, s)| s.ok.load(Ordering::SeqCst))
        .sum();
    let failed: u64 = clients
        .iter()
        .map(|(_, s)| s.failed.load(Ordering::SeqCst))
        .sum();
    Ok(json!({
        "bundle_index": rows.iter().position(|r| r["outcome"] == "written").map(|k| k + 1),
        "patch": id,
        "processes": pids,
        "installed_patched": patched,
        "all_patched": patched == pids,
        "serving_after_install": serving_after_install,
        "watch_patched_ms": watch_ms,
        "later_serves": later_serves,
        "status_states": states,
        "uninstall_undone": gone["undone"].as_array().map_or(0, Vec::len),
        "serving_after_uninstall": serving_after_uninstall,
        "transfers_ok": ok,
        "transfers_failed": failed,
    }))
}

/// CPU time (user + system, seconds) of this process's waited-for children so far, from
/// `/proc/self/stat` (clock ticks of 1/100 s): unlike wall time, it does not grow when other
/// work shares the machine.
fn children_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17: indices 13 and 14 after the state field.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(13) + ticks(14)) / 100.0
}

/// The binary package whose installed path names the target (`--debian` resolves it).
fn installed(c: &Corpus) -> (&'static str, &'static str) {
    match c.live {
        Live::Sshd => ("openssh-server", "usr/sbin/sshd"),
        Live::Curl => ("libcurl4", "usr/lib/x86_64-linux-gnu/libcurl.so.4.8.0"),
    }
}

/// `cargo xtask eval-debian NAME --update-from VERSION`: the Debian-update form, from an
/// older version of the package to the corpus' version, as `hotsplice build --debian
/// PKG=OLD --update-to NEW` does it (sources fetched, the delta of `debian/patches` as the
/// series). Writes `eval/results/NAME-update.{md,json}`.
fn eval_update(c: &Corpus, from: &str) -> Result<()> {
    setup(c)?;
    let (package, path) = installed(c);
    let work = root()
        .join("target/eval/debian")
        .join(format!("{}-update", c.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut cmd = hotsplice();
    cmd.arg("build")
        .arg("--debian")
        .arg(format!("{package}={from}"))
        .args([
            "--update-to",
            c.version,
            "--target",
            path,
            "--json",
            "-j",
            "2",
        ]);
    for (k, v) in c.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg("--cache")
        .arg(work.join("cache"))
        .arg("-o")
        .arg(work.join("bundles"));
    eprintln!("eval-debian: {package} {from} → {}", c.version);
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output()?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(work.join("build.log"), &out.stderr)?;
    let built: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "hotsplice build printed no JSON (exit {:?}); see {}",
            out.status.code(),
            work.join("build.log").display()
        )
    })?;
    let rows: Vec<Value> = built["patches"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|row| {
            let patch = Path::new(row["diff"].as_str().unwrap_or(""))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let expected = c.expected.iter().find(|e| e.patch == patch);
            json!({
                "patch": patch,
                "outcome": row["outcome"],
                "expected": expected.map(|e| e.outcome),
                "replaced": row["replaced"],
                "refusals": row["refusals"].as_array().map(|a| a.iter().map(|r| json!({"kind": r["kind"], "symbol": r["symbol"]})).collect::<Vec<_>>()),
                "other_targets": row["other_targets"],
                "warnings": row["warnings"],
                "seconds": row["seconds"],
            })
        })
        .collect();
    let doc = json!({
        "package": package,
        "from": from,
        "to": c.version,
        "target": path,
        "exit": out.status.code(),
        "seconds": seconds,
        "build": built["seconds"],
        "written": built["written"],
        "machine": crate::machine(),
        "patches": rows,
    });
    let results = root().join("eval/results");
    std::fs::write(
        results.join(format!("{}-update.json", c.name)),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Debian update {package} {from} → {} as a series\n\n`hotsplice build --debian \
         {package}={from} --update-to {} --target {path}{}`: both sources fetched with \
         `apt-get source`, the older one built as Debian builds it (`debian/rules build-arch`; \
         the incremental post build found in `debian/build-*`), and the patches the newer \
         version's `debian/patches/series` adds built in order on top of it, one bundle each. \
         Reproduce: `cargo xtask eval-debian {} --update-from {from}`.\n",
        c.version,
        c.version,
        c.env
            .iter()
            .map(|(k, v)| format!(" --env {k}={v}"))
            .collect::<String>(),
        c.name
    );
    let _ = writeln!(
        md,
        "{} patches, {} bundles; exit {:?}; {seconds:.0} s in all (the full build of {from}: \
         {:.0} s).\n",
        rows.len(),
        built["written"],
        out.status.code(),
        built["seconds"]["pre_build"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        md,
        "| patch | hotsplice | as in the full series | replaced | reason |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in &rows {
        let reason = r["refusals"]
            .as_array()
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
            .unwrap_or_default();
        let got = match r["outcome"].as_str().unwrap_or("") {
            "written" => APPLY,
            "refused" => REFUSE,
            "nothing-to-patch" => NOTHING,
            _ => "ERROR",
        };
        let _ = writeln!(
            md,
            "| {} | {got} | {} | {} | {} |",
            r["patch"].as_str().unwrap_or(""),
            r["expected"].as_str().unwrap_or("?"),
            strings(&r["replaced"]).join(", "),
            reason
        );
    }
    let _ = writeln!(md, "\nMachine: {}.", crate::machine());
    std::fs::write(results.join(format!("{}-update.md", c.name)), md)?;
    eprintln!(
        "eval-debian: wrote eval/results/{}-update.{{md,json}}",
        c.name
    );
    Ok(())
}
