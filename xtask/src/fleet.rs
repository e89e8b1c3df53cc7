//! `cargo xtask fleet [--hosts N]`: the Ansible collection (`ansible/ansible_collections/
//! hotsplice/live`) rolling a live patch out to a fleet of N ≥ 4 hosts, for real, over SSH.
//!
//! Each host is a network namespace on this machine (`ip netns`, a veth pair on one bridge,
//! its own address) with its own sshd on that address (own host key, authorized key and
//! configuration under `target/fleet/hN/ssh/`), its own running server — the demo file server
//! of `examples/server`, whose path-traversal bug `examples/server-fix.patch` fixes — and its
//! own hotsplice directories (state, trusted keys, store, audit log) and `hotsplice watch`.
//! Network namespaces share the process table and the file system with the machine, so each
//! host runs its own copy of the server binary (`target/fleet/hN/srv/server`) and the playbook
//! targets that file (`hotsplice_target_file`): a host patches only its own processes.
//!
//! Scenarios, each checked: check mode changes nothing; the rollout (canary, then batches of 2)
//! patches every host; a second run reports changed=0; a server started after the rollout is
//! patched by `watch` (latency measured); the rollback (state=absent) undoes everything; a
//! bundle signed by an untrusted key stops at the canary; a host whose health check fails
//! after the patch is undone and stops the rollout (max_fail_percentage). A prober on every
//! host sends a request every 0.1 s throughout, and its failures are counted per run.
//!
//! Results: `eval/results/fleet.{md,json}`. Namespaces, processes and the bridge are removed
//! at the end, also on failure (and leftovers of an interrupted run at the start).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::nginx::root;

/// The ansible-core the fleet runs (keep in sync with `scripts/setup`).
pub const ANSIBLE_CORE: &str = "2.19.14";
/// The fleet's network: the bridge has .1, host N has .(10+N).
const SUBNET: &str = "10.213.0";
const BRIDGE: &str = "hsfleet0";
const NETNS_PREFIX: &str = "hsfleet-";
/// The server's port on each host's own loopback.
const PORT: u16 = 18080;
/// The port of the server started after the rollout (the `watch` scenario).
const LATE_PORT: u16 = 18081;
/// The exploit of the demo server's bug: a file outside its document root.
const EXPLOIT: &str = "/../secret.txt";
/// The rigged host serves its health document under a name with `..` in it, which the fix (it
/// refuses every path containing `..`) forbids: a real regression of this patch on that host.
const RIGGED_HEALTH: &str = "/health..txt";
/// The rigged host (1-based): the second host of the second batch.
const RIGGED: usize = 3;
/// The bound the `watch` scenario checks (the sweep interval is 10 s; exec events are the
/// path measured).
const WATCH_BOUND: Duration = Duration::from_secs(5);
/// The health check the inventory gives every host (templated by Ansible on the host).
const HEALTH_CMD: &str = r#"exec 3<>/dev/tcp/127.0.0.1/{{ server_port }} && printf 'GET %s\n' '{{ health_path }}' >&3 && IFS= read -r line <&3 && [ "$line" = '200 ok' ]"#;
/// One request every 0.1 s to the host's server, each outcome logged with its time; bash
/// builtins only (no fork per request). `$1` is a FIFO nobody writes, to sleep on.
const PROBE: &str = r#"exec 9<>"$1"
while :; do
  s=connect
  if exec 3<>/dev/tcp/127.0.0.1/18080; then
    printf 'GET /index.txt\n' >&3
    if IFS= read -r -t 2 line <&3; then s=$line; else s=noreply; fi
    exec 3<&-
  fi 2>/dev/null
  printf '%s %s\n' "$EPOCHREALTIME" "${s// /_}"
  read -r -t 0.1 -u 9 _
done"#;

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// A process's start time (clock ticks since boot), to recognise it later by pid.
fn starttime(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Ends a process of ours: SIGTERM, then SIGKILL after 3 s.
fn end(pid: u32, start: u64) {
    if starttime(pid) != Some(start) {
        return;
    }
    signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(3);
    while starttime(pid) == Some(start) && Instant::now() < deadline {
        // A zombie keeps its stat; its parent (us, or init) reaps it.
        if std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.starts_with(" Z")))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if starttime(pid) == Some(start) {
        signal(pid, "KILL");
    }
}

/// Every live descendant of `pid`, with its start
/// times: sshd's per-connection processes, for example, outlive their listener.
fn descendants(pid: u32) -> Vec<(u32, u64)> {
    let mut table = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(Ok(ppid)), Some(Ok(start))) = (
            f.get(1).map(|v| v.parse::<u32>()),
            f.get(19).map(|v| v.parse::<u64>()),
        ) {
            table.push((p, ppid, start));
        }
    }
    let mut out = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for &(p, ppid, start) in &table {
            if ppid == parent {
                out.push((p, start));
                parents.push(p);
            }
        }
    }
    out
}

/// Ends a process of ours and everything it started.
fn end_tree(pid: u32, start: u64) {
    if starttime(pid) != Some(start) {
        return;
    }
    let below = descendants(pid);
    end(pid, start);
    for (p, s) in below.into_iter().rev() {
        end(p, s);
    }
}

/// Ends what an interrupted earlier run left: the processes in its ledger (pid and start
/// time, so a reused pid is never touched), its namespaces and its bridge.
fn clean_leftovers(work: &Path) {
    let ledger = work.join("pids");
    if let Ok(text) = std::fs::read_to_string(&ledger) {
        let mut ended = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            if let (Some(Ok(pid)), Some(Ok(start))) = (
                f.next().map(str::parse::<u32>),
                f.next().map(str::parse::<u64>),
            ) && starttime(pid) == Some(start)
            {
                end_tree(pid, start);
                ended.push(f.collect::<Vec<_>>().join(" "));
            }
        }
        if !ended.is_empty() {
            eprintln!(
                "fleet: ended what an interrupted run left: {}",
                ended.join(", ")
            );
        }
        let _ = std::fs::remove_file(&ledger);
    }
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(NETNS_PREFIX) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if ip(&["link", "show", BRIDGE]).is_ok() {
        let _ = ip(&["link", "del", BRIDGE]);
    }
}

/// One simulated host.
struct Host {
    n: usize,
    name: String,
    ns: String,
    addr: String,
    dir: PathBuf,
    server_pid: u32,
}

impl Host {
    fn srv(&self) -> PathBuf {
        self.dir.join("srv")
    }
    fn exe(&self) -> PathBuf {
        self.srv().join("server")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("run/hotsplice")
    }
    fn trust(&self) -> PathBuf {
        self.dir.join("etc/trusted-keys")
    }
    fn store(&self) -> PathBuf {
        self.dir.join("var/lib/hotsplice")
    }
    fn audit(&self) -> PathBuf {
        self.dir.join("audit.log")
    }
    /// The batch of the rollout this host is in: the canary alone, then batches of 2.
    fn batch(&self) -> usize {
        if self.n == 1 { 1 } else { 2 + (self.n - 2) / 2 }
    }
}

/// A process the fleet started.
struct Proc {
    child: Child,
    start: u64,
}

/// The simulated fleet; dropping it ends every process it started and removes the network.
struct Fleet {
    root: PathBuf,
    work: PathBuf,
    hs: PathBuf,
    venv: PathBuf,
    hosts: Vec<Host>,
    procs: Vec<Proc>,
    patch: String,
    bundle: PathBuf,
    untrusted: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            if p.child.try_wait().ok().flatten().is_none() {
                end_tree(p.child.id(), p.start);
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = std::fs::remove_file(self.work.join("pids"));
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
        eprintln!("fleet: cleaned up (processes, namespaces, bridge)");
    }
}

/// Whether a task's name is `task` or `task (...)`.
fn named(name: &Value, task: &str) -> bool {
    name.as_str().is_some_and(|n| {
        n == task
            || n.strip_prefix(task)
                .is_some_and(|rest| rest.starts_with(" ("))
    })
}

/// One ansible-playbook run: its exit status, wall time and timeline events.
struct Run {
    name: String,
    /// The load average before and after.
    load: [String; 2],
    rc: i32,
    t0: f64,
    wall: f64,
    events: Vec<Value>,
}

impl Run {
    fn recap(&self, host: &str) -> Option<&Value> {
        self.events
            .iter()
            .find(|e| e["event"] == "recap" && e["host"] == host)
    }
    fn count(&self, host: &str, what: &str) -> i64 {
        self.recap(host).and_then(|r| r[what].as_i64()).unwrap_or(0)
    }
    /// The last result of a task on a host (`task`, or `task (...)`: "Live patch" is named
    /// "Live patch (present)" or "Live patch (absent)").
    fn result(&self, host: &str, task: &str) -> Option<&Value> {
        self.events
            .iter()
            .rev()
            .find(|e| e["event"] == "result" && e["host"] == host && named(&e["task"], task))
    }
    fn start(&self, host: &str, task: &str) -> Option<f64> {
        self.events
            .iter()
            .find(|e| e["event"] == "start" && e["host"] == host && named(&e["task"], task))
            .and_then(|e| e["time"].as_f64())
    }
    fn touched(&self, host: &str) -> bool {
        self.events
            .iter()
            .any(|e| e["event"] == "start" && e["host"] == host)
    }
    /// The pids a hotsplice.live.patch result reports with `result`.
    fn pids(&self, host: &str, task: &str, result: &str) -> Vec<u64> {
        let mut pids: Vec<u64> = self
            .result(host, task)
            .and_then(|r| r["processes"].as_array())
            .map(|a| {
                a.iter()
                    .filter(|p| p["result"] == result)
                    .filter_map(|p| p["pid"].as_u64())
                    .collect()
            })
            .unwrap_or_default();
        pids.sort_unstable();
        pids
    }
    fn rel(&self, t: Option<f64>) -> Value {
        t.map_or(Value::Null, |t| {
            json!(((t - self.t0) * 1000.0).round() / 1000.0)
        })
    }
    /// The per-host view of this run for the results.
    fn host_json(&self, h: &Host) -> Value {
        let name = h.name.as_str();
        let res = |task: &str| -> Value {
            match self.result(name, task) {
                None => Value::Null,
                Some(r) => json!({
                    "started_s": self.rel(self.start(name, task)),
                    "done_s": self.rel(r["time"].as_f64()),
                    "status": r["status"],
                    "processes": r.get("processes").cloned().unwrap_or(Value::Null),
                    "skipped_processes": r.get("skipped_processes").cloned().unwrap_or(Value::Null),
                    "msg": r.get("msg").cloned().unwrap_or(Value::Null),
                    "rc": r.get("rc").cloned().unwrap_or(Value::Null),
                }),
            }
        };
        json!({
            "host": name,
            "batch": h.batch(),
            "touched": self.touched(name),
            "recap": self.recap(name).cloned().unwrap_or(Value::Null),
            "patch": res("Live patch"),
            "health": res("Health check"),
            "undo": res("Undo the patch on this host"),
            "health_after_undo": res("Health check after the undo"),
        })
    }
}

/// The checks of the run, each with what it saw.
#[derive(Default)]
struct Checks(Vec<Value>);

impl Checks {
    fn check(&mut self, scenario: &str, what: &str, pass: bool, seen: impl Into<String>) {
        let seen = seen.into();
        eprintln!(
            "fleet: [{}] {scenario}: {what} ({seen})",
            if pass { "pass" } else { "FAIL" }
        );
        self.0
            .push(json!({"scenario": scenario, "check": what, "pass": pass, "seen": seen}));
    }
    fn passed(&self) -> bool {
        self.0.iter().all(|c| c["pass"] == true)
    }
}

impl Fleet {
    fn ansible_env(&self, cmd: &mut Command) {
        cmd.env("ANSIBLE_CONFIG", self.work.join("ansible.cfg"))
            .env("ANSIBLE_HOME", self.work.join("ansible-home"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env_remove("ANSIBLE_COLLECTIONS_PATH")
            .current_dir(&self.work);
    }

    /// Starts a process and writes it in the ledger.
    fn spawn(&mut self, label: &str, cmd: &mut Command, log: &Path) -> Result<u32> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .spawn()
            .with_context(|| format!("starting {label}: {cmd:?}"))?;
        let pid = child.id();
        let start = self.ledger(pid, label)?;
        self.procs.push(Proc { child, start });
        Ok(pid)
    }

    /// Writes a process in the ledger (`work/pids`: pid, start time, label), which the next
    /// run reads to end what an interrupted run left; returns its start time.
    fn ledger(&self, pid: u32, label: &str) -> Result<u64> {
        use std::io::Write as _;
        let start = starttime(pid).unwrap_or(0);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("pids"))?
            .write_all(format!("{pid} {start} {label}\n").as_bytes())?;
        Ok(start)
    }

    fn hotsplice(&self) -> Command {
        let mut cmd = Command::new(&self.hs);
        cmd.env(
            "HOTSPLICE_AUDIT_LOG",
            self.work.join("controller-audit.log"),
        );
        cmd
    }

    /// The first line of the answer of host `h`'s server on `port` to `GET path` ("" when
    /// it does not answer), asked from inside the host's namespace.
    fn request(&self, h: &Host, port: u16, path: &str) -> String {
        Command::new("ip")
            .args(["netns", "exec", &h.ns, "bash", "-c"])
            .arg(
                "exec 3<>/dev/tcp/127.0.0.1/$1 || exit 1; printf 'GET %s\\n' \"$2\" >&3; \
                 IFS= read -r -t 5 line <&3; printf '%s' \"$line\"",
            )
            .args(["_", &port.to_string(), path])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The patches process `pid` of host `h` has (`hotsplice list`).
    fn patches(&self, h: &Host, pid: u32) -> Vec<String> {
        let out = self
            .hotsplice()
            .args(["list", "--json", "--pid", &pid.to_string(), "--state-dir"])
            .arg(h.state())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let Ok(out) = out else {
            return Vec::new();
        };
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["patches"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["id"].as_str().map(str::to_string))
            .collect()
    }

    /// `hotsplice status --json` of host `h`: the installed patches.
    fn status(&self, h: &Host) -> Value {
        self.hotsplice()
            .args(["status", "--json", "--store"])
            .arg(h.store())
            .arg("--trust-dir")
            .arg(h.trust())
            .arg("--state-dir")
            .arg(h.state())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or(Value::Null)
    }

    fn installed(&self, h: &Host) -> bool {
        self.status(h)["installed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["patch"] == self.patch.as_str()))
    }

    /// What every host's server does now: has the patch, answers the health and exploit
    /// requests how.
    fn observe(&self) -> Vec<Value> {
        self.hosts
            .iter()
            .map(|h| {
                json!({
                    "host": h.name,
                    "pid": h.server_pid,
                    "patched": self.patches(h, h.server_pid).contains(&self.patch),
                    "installed": self.installed(h),
                    "index": self.request(h, PORT, "/index.txt"),
                    "exploit": self.request(h, PORT, EXPLOIT),
                })
            })
            .collect()
    }

    /// Writes the inventory; `rigged` gets the health document the fix forbids.
    fn write_inventory(&self, rigged: Option<usize>) -> Result<()> {
        let mut hosts = serde_json::Map::new();
        for h in &self.hosts {
            let mut v = json!({
                "ansible_host": h.addr,
                "ansible_remote_tmp": h.dir.join("tmp"),
                "hotsplice_target_file": h.exe(),
                "hotsplice_state_dir": h.state(),
                "hotsplice_trust_dir": h.trust(),
                "hotsplice_store": h.store(),
                "hotsplice_bundle_dir": h.dir.join("bundles"),
                "hotsplice_environment": {"HOTSPLICE_AUDIT_LOG": h.audit()},
            });
            if rigged == Some(h.n) {
                v["health_path"] = json!(RIGGED_HEALTH);
            }
            hosts.insert(h.name.clone(), v);
        }
        let inventory = json!({"fleet": {"hosts": hosts, "vars": {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": self.work.join("ssh/id"),
            "ansible_python_interpreter": "/usr/bin/python3",
            "hotsplice_bin": self.hs,
            "hotsplice_health_shell": "/bin/bash",
            "hotsplice_health_cmd": HEALTH_CMD,
            "server_port": PORT,
            "health_path": "/index.txt",
        }}});
        std::fs::write(
            self.work.join("inventory.json"),
            serde_json::to_string_pretty(&inventory)?,
        )?;
        Ok(())
    }

    /// Runs the rollout playbook with extra variables and arguments.
    fn playbook(&self, name: &str, vars: Value, args: &[&str]) -> Result<Run> {
        let runs = self.work.join("runs");
        std::fs::create_dir_all(&runs)?;
        let timeline = runs.join(format!("{name}.jsonl"));
        let _ = std::fs::remove_file(&timeline);
        let vars_file = runs.join(format!("{name}.vars.json"));
        std::fs::write(&vars_file, vars.to_string())?;
        let mut cmd = Command::new(self.venv.join("bin/ansible-playbook"));
        self.ansible_env(&mut cmd);
        cmd.env("HOTSPLICE_TIMELINE", &timeline)
            .arg("hotsplice.live.rollout")
            .arg("-e")
            .arg(format!("@{}", vars_file.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(runs.join(format!("{name}.log")))?)
            .stderr(Stdio::inherit());
        eprintln!("fleet: run {name}: ansible-playbook hotsplice.live.rollout {args:?}");
        let load_before = loadavg();
        let t0 = now_unix();
        let started = Instant::now();
        let mut child = cmd.spawn().context("running ansible-playbook")?;
        self.ledger(child.id(), &format!("ansible-playbook {name}"))?;
        let status = child.wait()?;
        let wall = started.elapsed().as_secs_f64();
        let events = std::fs::read_to_string(&timeline)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(Run {
            name: name.to_string(),
            load: [load_before, loadavg()],
            rc: status.code().unwrap_or(-1),
            t0,
            wall,
            events,
        })
    }

    /// The prober's requests on host `h` between two times: (answered 200, other).
    fn probes(&self, h: &Host, from: f64, to: f64) -> (u64, u64, Vec<String>) {
        let text = std::fs::read_to_string(h.dir.join("probe.log")).unwrap_or_default();
        let (mut ok, mut bad, mut bad_lines) = (0, 0, Vec::new());
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(Ok(t)), Some(s)) = (f.next().map(str::parse::<f64>), f.next()) else {
                continue;
            };
            if t < from || t > to {
                continue;
            }
            if s == "200_ok" {
                ok += 1;
            } else {
                bad += 1;
                if bad_lines.len() < 5 {
                    bad_lines.push(line.to_string());
                }
            }
        }
        (ok, bad, bad_lines)
    }

    fn probe_json(&self, run: &Run) -> Value {
        json!(
            self.hosts
                .iter()
                .map(|h| {
                    let (ok, bad, lines) = self.probes(h, run.t0, run.t0 + run.wall);
                    json!({"host": h.name, "ok": ok, "failed": bad, "failures": lines})
                })
                .collect::<Vec<_>>()
        )
    }
}

/// What [`bundles`] made.
struct Bundles {
    /// The patch id.
    patch: String,
    /// The bundle, signed by `work/keys/fleet.key`.
    fix: PathBuf,
    /// The same fix signed only by `work/keys/untrusted.key`.
    untrusted: PathBuf,
    /// The program the bundle was built for, in the build cache.
    pristine: PathBuf,
}

/// Makes two keys (`fleet`, `untrusted`) in `work/keys` and builds the demo server's fix
/// signed by each (build cache: `work/cache`).
fn bundles(root: &Path, hs: &Path, work: &Path) -> Result<Bundles> {
    let hotsplice = || {
        let mut cmd = Command::new(hs);
        cmd.env("HOTSPLICE_AUDIT_LOG", work.join("controller-audit.log"));
        cmd
    };
    std::fs::create_dir_all(work.join("keys"))?;
    for key in ["fleet", "untrusted"] {
        let _ = std::fs::remove_file(work.join("keys").join(format!("{key}.key")));
        let _ = std::fs::remove_file(work.join("keys").join(format!("{key}.pub")));
        run(hotsplice()
            .args(["key", "generate", "--out"])
            .arg(work.join("keys").join(key)))?;
    }
    for (key, out) in [("fleet", "fix.hsp"), ("untrusted", "fix-untrusted.hsp")] {
        run(hotsplice()
            .args(["build", "--source"])
            .arg(root.join("examples/server"))
            .arg("--diff")
            .arg(root.join("examples/server-fix.patch"))
            .args(["--target", "server", "--cache"])
            .arg(work.join("cache"))
            .arg("--sign")
            .arg(work.join("keys").join(format!("{key}.key")))
            .arg("-o")
            .arg(work.join(out)))?;
    }
    let info: Value = serde_json::from_str(&run(hotsplice()
        .args(["info", "--json"])
        .arg(work.join("fix.hsp")))?)?;
    let patch = info["bundle"]["id"]
        .as_str()
        .context("no patch id")?
        .to_string();
    let sha = info["bundle"]["target"]["sha256"]
        .as_str()
        .context("no target sha256")?
        .to_string();
    // The program to run: the build the bundle was made from (as a package would ship it),
    // found in the build cache by the bundle's record of its SHA-256.
    let mut pristine = None;
    for e in std::fs::read_dir(work.join("cache"))?.flatten() {
        let candidate = e.path().join("pristine/server");
        if candidate.exists() && run(Command::new("sha256sum").arg(&candidate))?.starts_with(&sha) {
            pristine = Some(candidate);
        }
    }
    Ok(Bundles {
        patch,
        fix: work.join("fix.hsp"),
        untrusted: work.join("fix-untrusted.hsp"),
        pristine: pristine.context("the bundle's target build is not in the build cache")?,
    })
}

/// Installs what the fleet needs, builds hotsplice, the bundles and the fleet.
fn provision(root: &Path, n: usize) -> Result<Fleet> {
    let work = root.join("target/fleet");
    clean_leftovers(&work);
    // Keep the build cache; everything else is made afresh.
    if let Ok(entries) = std::fs::read_dir(&work) {
        for e in entries.flatten() {
            if e.file_name() != "cache" {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    std::fs::create_dir_all(&work)?;
    let mut fleet = Fleet {
        root: root.to_path_buf(),
        work: work.clone(),
        hs: root.join("target/release/hotsplice"),
        venv: root.join(".cache/ansible-venv"),
        hosts: Vec::new(),
        procs: Vec::new(),
        patch: String::new(),
        bundle: PathBuf::new(),
        untrusted: PathBuf::new(),
    };

    let made = bundles(root, &fleet.hs, &work)?;
    fleet.patch = made.patch;
    fleet.bundle = made.fix;
    fleet.untrusted = made.untrusted;
    let pristine = made.pristine;

    // The controller's SSH key; /run/sshd is sshd's privilege-separation directory.
    std::fs::create_dir_all(work.join("ssh"))?;
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "fleet-controller",
            "-f",
        ])
        .arg(work.join("ssh/id")))?;
    std::fs::create_dir_all("/run/sshd")?;

    // The network: a bridge with the controller's address, one namespace per host.
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    let mut known_hosts = String::new();
    for i in 1..=n {
        let h = Host {
            n: i,
            name: format!("h{i}"),
            ns: format!("{NETNS_PREFIX}h{i}"),
            addr: format!("{SUBNET}.{}", 10 + i),
            dir: work.join(format!("h{i}")),
            server_pid: 0,
        };
        let (veth, peer) = (format!("hsf{i}"), format!("hsf{i}p"));
        ip(&["netns", "add", &h.ns])?;
        fleet.hosts.push(h);
        let h = fleet.hosts.last().context("host")?;
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &h.ns])?;
        ip(&["-n", &h.ns, "link", "set", &peer, "name", "eth0"])?;
        ip(&[
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{}/24", h.addr),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &h.ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
        ip(&["link", "set", &veth, "master", BRIDGE])?;
        ip(&["link", "set", &veth, "up"])?;

        // The host's files: the server and its documents, hotsplice's directories.
        let d = &h.dir;
        for sub in ["srv/www", "etc/trusted-keys", "ssh", "bundles"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        for sub in ["run/hotsplice", "var/lib/hotsplice", "tmp"] {
            std::fs::create_dir_all(d.join(sub))?;
            run(Command::new("chmod").arg("700").arg(d.join(sub)))?;
        }
        std::fs::copy(&pristine, h.exe())?;
        std::fs::copy(
            root.join("examples/server/www/index.txt"),
            d.join("srv/www/index.txt"),
        )?;
        std::fs::write(
            d.join("srv/secret.txt"),
            format!("secret of {}: outside the document root\n", h.name),
        )?;
        std::fs::copy(work.join("keys/fleet.pub"), h.trust().join("fleet.pub"))?;

        // Its sshd: own host key, authorized key, configuration, address.
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &h.name, "-f"])
            .arg(d.join("ssh/host_ed25519")))?;
        std::fs::copy(work.join("ssh/id.pub"), d.join("ssh/authorized_keys"))?;
        run(Command::new("chmod")
            .arg("600")
            .arg(d.join("ssh/authorized_keys")))?;
        let host_key = std::fs::read_to_string(d.join("ssh/host_ed25519.pub"))?;
        let mut key = host_key.split_whitespace();
        writeln!(
            known_hosts,
            "{} {} {}",
            h.addr,
            key.next().unwrap_or(""),
            key.next().unwrap_or("")
        )?;
        std::fs::write(
            d.join("ssh/sshd_config"),
            format!(
                "ListenAddress {addr}\nPort 22\nHostKey {ssh}/host_ed25519\nPidFile {ssh}/sshd.pid\n\
                 AuthorizedKeysFile {ssh}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 UseDNS no\nMaxStartups 50\nSubsystem sftp /usr/lib/openssh/sftp-server\n\
                 ClientAliveInterval 5\nClientAliveCountMax 2\n",
                addr = h.addr,
                ssh = d.join("ssh").display()
            ),
        )?;
    }
    std::fs::write(work.join("ssh/known_hosts"), known_hosts)?;

    // Start every host: sshd and the server inside its namespace, its `hotsplice watch` (in
    // the initial network namespace: the kernel's process-event connector exists only
    // there), and the prober.
    for i in 0..fleet.hosts.len() {
        let (ns, d, exe, name) = {
            let h = &fleet.hosts[i];
            (h.ns.clone(), h.dir.clone(), h.exe(), h.name.clone())
        };
        fleet.spawn(
            &format!("sshd {name}"),
            Command::new("ip")
                .args(["netns", "exec", &ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(d.join("ssh/sshd_config")),
            &d.join("ssh/sshd.log"),
        )?;
        let pid = fleet.spawn(
            &format!("server {name}"),
            Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(&exe)
                .arg(PORT.to_string())
                .current_dir(d.join("srv")),
            &d.join("srv/server.log"),
        )?;
        fleet.hosts[i].server_pid = pid;
        let watch_log = d.join("watch.log");
        let mut watch = fleet.hotsplice();
        watch
            .args(["watch", "--store"])
            .arg(d.join("var/lib/hotsplice"))
            .arg("--trust-dir")
            .arg(d.join("etc/trusted-keys"))
            .arg("--state-dir")
            .arg(d.join("run/hotsplice"))
            .env("HOTSPLICE_AUDIT_LOG", d.join("audit.log"));
        fleet.spawn(&format!("watch {name}"), &mut watch, &watch_log)?;
        run(Command::new("mkfifo").arg(d.join("probe.fifo")))?;
        fleet.spawn(
            &format!("prober {name}"),
            Command::new("ip")
                .args(["netns", "exec", &ns, "bash", "-c", PROBE, "probe"])
                .arg(d.join("probe.fifo")),
            &d.join("probe.log"),
        )?;
    }
    // Ready: every server serving, every watch watching.
    let deadline = Instant::now() + Duration::from_secs(20);
    for h in &fleet.hosts {
        loop {
            let serving = std::fs::read_to_string(h.srv().join("server.log"))
                .is_ok_and(|l| l.contains("serving"));
            let watching = std::fs::read_to_string(h.dir.join("watch.err"))
                .is_ok_and(|l| l.contains("watching"));
            if serving && watching {
                break;
            }
            if Instant::now() > deadline {
                bail!("{}: server or watch did not start", h.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    std::fs::write(
        work.join("ansible.cfg"),
        format!(
            "[defaults]\ninventory = {w}/inventory.json\ncollections_path = {r}/ansible\n\
             forks = 10\nhost_key_checking = True\ncallbacks_enabled = hotsplice.live.timeline\n\
             local_tmp = {w}/ansible-home/tmp\nretry_files_enabled = False\n\
             interpreter_python = /usr/bin/python3\n\n[ssh_connection]\npipelining = True\n\
             control_path_dir = {w}/cp\nssh_args = -o ControlMaster=auto -o ControlPersist=30s \
             -o UserKnownHostsFile={w}/ssh/known_hosts -o StrictHostKeyChecking=yes \
             -o IdentitiesOnly=yes\n",
            w = work.display(),
            r = root.display()
        ),
    )?;
    fleet.write_inventory(None)?;
    // SSH to every host.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cmd = Command::new(fleet.venv.join("bin/ansible"));
        fleet.ansible_env(&mut cmd);
        let out = cmd
            .args(["fleet", "-m", "ansible.builtin.ping"])
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the hosts do not answer over SSH: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(fleet)
}

/// `cargo xtask fleet [--hosts N]`.
pub fn fleet(args: &[String]) -> Result<()> {
    let mut n = 5usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hosts" => {
                n = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("--hosts N")?
            }
            other => bail!("unknown argument {other} (usage: cargo xtask fleet [--hosts N])"),
        }
    }
    if n < 4 {
        bail!("the fleet needs at least 4 hosts (a canary, a failing batch, a batch it spares)");
    }
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    if uid != "0" {
        bail!("cargo xtask fleet needs root (network namespaces, sshd, ptrace)");
    }
    let root = root().canonicalize()?;
    let setup = Command::new(root.join("scripts/setup"))
        .arg("--fleet")
        .status()?;
    if !setup.success() {
        bail!("scripts/setup --fleet failed");
    }
    let built = Command::new("cargo")
        .args(["build", "--release", "-q", "-p", "hotsplice"])
        .current_dir(&root)
        .status()?;
    if !built.success() {
        bail!("building hotsplice failed");
    }
    let started = now_unix();
    let fleet = provision(&root, n)?;
    eprintln!(
        "fleet: {} hosts up ({})",
        fleet.hosts.len(),
        fleet
            .hosts
            .iter()
            .map(|h| format!("{} {} pid {}", h.name, h.addr, h.server_pid))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut fleet = fleet;
    let results = scenarios(&mut fleet, started)?;
    let out = root.join("eval/results");
    std::fs::write(
        out.join("fleet.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(out.join("fleet.md"), render(&results))?;
    println!("wrote eval/results/fleet.md and fleet.json");
    drop(fleet);
    if results["pass"] != true {
        bail!("some fleet checks failed (see eval/results/fleet.md)");
    }
    Ok(())
}

/// What the servers do, in one line per host, for the checks' "seen".
fn summary(observed: &[Value]) -> String {
    observed
        .iter()
        .map(|o| {
            format!(
                "{}: {}{}, /index.txt {}, exploit {}",
                o["host"].as_str().unwrap_or("?"),
                if o["patched"] == true {
                    "patched"
                } else {
                    "unpatched"
                },
                if o["installed"] == true {
                    " (installed)"
                } else {
                    ""
                },
                o["index"].as_str().unwrap_or("?"),
                o["exploit"].as_str().unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A run in the results: per host, the prober's counts, and what the servers do after it.
fn record(fleet: &Fleet, run: &Run, observed: Vec<Value>) -> Value {
    json!({
        "run": run.name,
        "rc": run.rc,
        "wall_s": (run.wall * 1000.0).round() / 1000.0,
        "loadavg_before_after": run.load,
        "hosts": fleet.hosts.iter().map(|h| run.host_json(h)).collect::<Vec<_>>(),
        "probes": fleet.probe_json(run),
        "after": observed,
    })
}

/// Every server answered every probe during the run.
fn probe_check(fleet: &Fleet, c: &mut Checks, run: &Run) {
    let (mut ok, mut failed) = (0, 0);
    for h in &fleet.hosts {
        let (o, f, _) = fleet.probes(h, run.t0, run.t0 + run.wall);
        ok += o;
        failed += f;
    }
    c.check(
        &run.name,
        "every server kept answering (prober: a request per host every 0.1 s)",
        failed == 0 && ok > 0,
        format!("{ok} answered, {failed} not"),
    );
}

fn scenarios(fleet: &mut Fleet, started: f64) -> Result<Value> {
    let mut c = Checks::default();
    let mut runs = Vec::new();
    let names: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
    let bundle = fleet.bundle.clone();
    let rollout_vars = json!({
        "hotsplice_bundle": bundle,
        "hotsplice_batches": [2],
        "hotsplice_max_fail_percentage": 25,
    });

    // Before anything: every server serves, and leaks the secret.
    let before = fleet.observe();
    c.check(
        "baseline",
        "every server answers /index.txt and leaks /../secret.txt (the bug)",
        before
            .iter()
            .all(|o| o["index"] == "200 ok" && o["exploit"] == "200 ok" && o["patched"] == false),
        summary(&before),
    );

    // A: check mode.
    let run = fleet.playbook("check", rollout_vars.clone(), &["--check", "--diff"])?;
    let after = fleet.observe();
    c.check(
        &run.name,
        "ansible-playbook exit status 0",
        run.rc == 0,
        format!("rc {}", run.rc),
    );
    for h in &fleet.hosts {
        let would = run.pids(&h.name, "Live patch", "would patch");
        c.check(
            &run.name,
            &format!("{}: predicts patching its server, and only it", h.name),
            would == [u64::from(h.server_pid)],
            format!("would patch {would:?}"),
        );
    }
    c.check(
        &run.name,
        "nothing changed: no server has the patch, every one still leaks",
        after
            .iter()
            .all(|o| o["patched"] == false && o["exploit"] == "200 ok"),
        summary(&after),
    );
    probe_check(fleet, &mut c, &run);
    runs.push(record(fleet, &run, after));

    // B: the rollout.
    let run = fleet.playbook("rollout", rollout_vars.clone(), &["--diff"])?;
    let after = fleet.observe();
    c.check(
        &run.name,
        "ansible-playbook exit status 0",
        run.rc == 0,
        format!("rc {}", run.rc),
    );
    for h in &fleet.hosts {
        let patched = run.pids(&h.name, "Live patch", "patched");
        c.check(
            &run.name,
            &format!(
                "{}: patched its server, and only it; health check passed",
                h.name
            ),
            patched == [u64::from(h.server_pid)]
                && run.result(&h.name, "Health check").map(|r| &r["status"]) == Some(&json!("ok"))
                && run.count(&h.name, "failures") == 0,
            format!(
                "patched {patched:?}, health {:?}",
                run.result(&h.name, "Health check").map(|r| &r["status"])
            ),
        );
    }
    c.check(
        &run.name,
        "every server has the patch, is installed for watch, refuses the exploit, serves",
        after.iter().all(|o| {
            o["patched"] == true
                && o["installed"] == true
                && o["exploit"] == "403 forbidden"
                && o["index"] == "200 ok"
        }),
        summary(&after),
    );
    // Order: the canary is done (health checked) before any other host starts; each batch
    // after the previous one.
    let mut order_ok = true;
    let mut order_seen = Vec::new();
    for h in &fleet.hosts {
        for g in &fleet.hosts {
            if g.batch() > h.batch() {
                let done = run
                    .result(&h.name, "Health check")
                    .and_then(|r| r["time"].as_f64());
                let begins = run.start(&g.name, "Live patch");
                if !matches!((done, begins), (Some(d), Some(b)) if d < b) {
                    order_ok = false;
                    order_seen.push(format!(
                        "{} health {done:?} vs {} patch {begins:?}",
                        h.name, g.name
                    ));
                }
            }
        }
    }
    c.check(
        &run.name,
        "canary first, then batches of 2: no host starts before the previous batch's health checks",
        order_ok,
        if order_seen.is_empty() {
            "in order".to_string()
        } else {
            order_seen.join("; ")
        },
    );
    probe_check(fleet, &mut c, &run);
    runs.push(record(fleet, &run, after));

    // C: the same rollout again changes nothing.
    let run = fleet.playbook("rerun", rollout_vars.clone(), &[])?;
    let after = fleet.observe();
    c.check(
        &run.name,
        "ansible-playbook exit status 0",
        run.rc == 0,
        format!("rc {}", run.rc),
    );
    let changed: Vec<String> = names
        .iter()
        .map(|h| format!("{h} changed={}", run.count(h, "changed")))
        .collect();
    c.check(
        &run.name,
        "changed=0 on every host",
        names.iter().all(|h| {
            run.recap(h).is_some() && run.count(h, "changed") == 0 && run.count(h, "failures") == 0
        }),
        changed.join(", "),
    );
    probe_check(fleet, &mut c, &run);
    runs.push(record(fleet, &run, after));

    // D: on every host, a server started after the rollout is patched by that host's watch.
    let mut watch = Vec::new();
    for i in 0..fleet.hosts.len() {
        let w = late_server(fleet, i)?;
        c.check(
            "watch",
            &format!(
                "{}: a server started after the rollout is patched by its watch within {} s, \
                 refuses the exploit, and no other host's watch touched it",
                w["host"].as_str().unwrap_or("?"),
                WATCH_BOUND.as_secs()
            ),
            w["patched_after_ms"]
                .as_f64()
                .is_some_and(|ms| ms <= WATCH_BOUND.as_secs_f64() * 1000.0)
                && w["exploit"] == "403 forbidden"
                && w["other_hosts_watch_lines"] == 0,
            format!(
                "pid {}, patched after {} ms, first refusal after {} ms, other watches: {}",
                w["pid"],
                w["patched_after_ms"],
                w["first_refusal_after_ms"],
                w["other_hosts_watch_lines"]
            ),
        );
        watch.push(w);
    }
    // Every process of a host's server: the first one and the late one.
    let host_pids = |host: &Host| -> Vec<u64> {
        let mut pids = vec![u64::from(host.server_pid)];
        pids.extend(watch[host.n - 1]["pid"].as_u64());
        pids.sort_unstable();
        pids
    };

    // E: rollback.
    let mut vars = rollout_vars.clone();
    vars["hotsplice_state"] = json!("absent");
    let run = fleet.playbook("rollback", vars, &["--diff"])?;
    let after = fleet.observe();
    c.check(
        &run.name,
        "ansible-playbook exit status 0",
        run.rc == 0,
        format!("rc {}", run.rc),
    );
    for host in &fleet.hosts {
        let undone = run.pids(&host.name, "Live patch", "undone");
        let expected = host_pids(host);
        c.check(
            &run.name,
            &format!("{}: undone in every process of its server", host.name),
            undone == expected,
            format!("undone {undone:?}, expected {expected:?}"),
        );
    }
    c.check(
        &run.name,
        "no server has the patch or has it installed; the bug is back",
        after
            .iter()
            .all(|o| o["patched"] == false && o["installed"] == false && o["exploit"] == "200 ok"),
        summary(&after),
    );
    probe_check(fleet, &mut c, &run);
    runs.push(record(fleet, &run, after));

    // F: a bundle signed by a key no host trusts stops at the canary.
    let mut vars = rollout_vars.clone();
    vars["hotsplice_bundle"] = json!(fleet.untrusted);
    let run = fleet.playbook("untrusted", vars, &[])?;
    let after = fleet.observe();
    let canary = &names[0];
    let msg = run
        .result(canary, "Live patch")
        .and_then(|r| r["msg"].as_str())
        .unwrap_or("")
        .to_string();
    c.check(
        &run.name,
        "the canary refuses the bundle (hotsplice: not signed by a trusted key) and the rollout stops there",
        run.rc != 0
            && run.result(canary, "Live patch").map(|r| &r["status"]) == Some(&json!("failed"))
            && run.count(canary, "failures") == 1
            && names[1..].iter().all(|h| !run.touched(h)),
        format!("rc {}, canary: {msg}; hosts touched: {:?}", run.rc, names.iter().filter(|h| run.touched(h)).collect::<Vec<_>>()),
    );
    c.check(
        &run.name,
        "no server was patched",
        after.iter().all(|o| o["patched"] == false),
        summary(&after),
    );
    probe_check(fleet, &mut c, &run);
    runs.push(record(fleet, &run, after));

    // G: a host whose health check fails after the patch is undone and stops the rollout.
    let rig = &fleet.hosts[RIGGED - 1];
    std::fs::write(rig.srv().join("www/health..txt"), "ok\n")?;
    let rig_before = fleet.request(rig, PORT, RIGGED_HEALTH);
    c.check(
        "rigged",
        &format!(
            "{}: its health document {RIGGED_HEALTH} is served before the patch",
            rig.name
        ),
        rig_before == "200 ok",
        rig_before.clone(),
    );
    fleet.write_inventory(Some(RIGGED))?;
    let run = fleet.playbook("rigged", rollout_vars.clone(), &[])?;
    fleet.write_inventory(None)?;
    let after = fleet.observe();
    let rig_after = fleet.request(rig, PORT, RIGGED_HEALTH);
    c.check(
        &run.name,
        "ansible-playbook fails (exit status 2: a host failed)",
        run.rc == 2,
        format!("rc {}", run.rc),
    );
    let health = run
        .result(&rig.name, "Health check")
        .cloned()
        .unwrap_or(Value::Null);
    let undone = run.pids(&rig.name, "Undo the patch on this host", "undone");
    let rig_pids = host_pids(rig);
    c.check(
        &run.name,
        &format!(
            "{}: patched, health check failed, patch undone at once, healthy again",
            rig.name
        ),
        run.pids(&rig.name, "Live patch", "patched") == rig_pids
            && health["status"] == "failed"
            && undone == rig_pids
            && run
                .result(&rig.name, "Health check after the undo")
                .map(|r| &r["rc"])
                == Some(&json!(0))
            && rig_after == "200 ok",
        format!(
            "health {}, undone {undone:?}, health document after: {rig_after}",
            health["status"]
        ),
    );
    let spared: Vec<&Host> = fleet
        .hosts
        .iter()
        .filter(|g| g.batch() > rig.batch())
        .collect();
    c.check(
        &run.name,
        "max_fail_percentage stopped the rollout: later batches untouched, unpatched",
        !spared.is_empty()
            && spared.iter().all(|g| {
                !run.touched(&g.name)
                    && after
                        .iter()
                        .any(|o| o["host"] == g.name.as_str() && o["patched"] == false)
            }),
        format!(
            "untouched: {:?}",
            spared
                .iter()
                .map(|g| (g.name.as_str(), !run.touched(&g.name)))
                .collect::<Vec<_>>()
        ),
    );
    let earlier: Vec<&Host> = fleet
        .hosts
        .iter()
        .filter(|g| g.batch() <= rig.batch() && g.n != rig.n)
        .collect();
    c.check(
        &run.name,
        "the hosts before it (canary, same batch) stay patched and healthy",
        earlier.iter().all(|g| {
            after.iter().any(|o| {
                o["host"] == g.name.as_str()
                    && o["patched"] == true
                    && o["exploit"] == "403 forbidden"
                    && o["index"] == "200 ok"
            })
        }),
        summary(&after),
    );
    probe_check(fleet, &mut c, &run);
    runs.push(record(fleet, &run, after));

    let versions = json!({
        "ansible_core": ANSIBLE_CORE,
        "ansible": run_version(fleet.venv.join("bin/ansible-playbook"), &["--version"]),
        "openssh": run_version(PathBuf::from("ssh"), &["-V"]),
        "hotsplice_commit": run_version(PathBuf::from("git"), &["-C", &fleet.root.display().to_string(), "describe", "--always", "--dirty"]),
    });
    Ok(json!({
        "machine": crate::machine(),
        "started_unix": started,
        "versions": versions,
        "patch": fleet.patch,
        "hosts": fleet.hosts.iter().map(|h| json!({
            "host": h.name, "address": h.addr, "netns": h.ns, "server_pid": h.server_pid,
            "exe": h.exe(), "batch": h.batch(),
        })).collect::<Vec<_>>(),
        "baseline": before,
        "runs": runs,
        "watch": watch,
        "checks": c.0,
        "pass": c.passed(),
    }))
}

fn run_version(program: PathBuf, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Starts a second server on host `i` after the rollout and measures when its watch has
/// patched it (`hotsplice list`, polled every 10 ms) and when it first refuses the exploit.
/// It keeps running: the rollback and the rigged run find it too.
fn late_server(fleet: &mut Fleet, i: usize) -> Result<Value> {
    let (ns, exe, srv, name, dir) = {
        let h = &fleet.hosts[i];
        (
            h.ns.clone(),
            h.exe(),
            h.srv(),
            h.name.clone(),
            h.dir.clone(),
        )
    };
    let t0 = Instant::now();
    let pid = fleet.spawn(
        &format!("late server {name}"),
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&exe)
            .arg(LATE_PORT.to_string())
            .current_dir(&srv),
        &srv.join("late-server.log"),
    )?;
    let h = &fleet.hosts[i];
    let mut patched = None;
    while t0.elapsed() < Duration::from_secs(30) {
        if fleet.patches(h, pid).contains(&fleet.patch) {
            patched = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut refused = None;
    let mut exploit = String::new();
    while t0.elapsed() < Duration::from_secs(35) {
        exploit = fleet.request(h, LATE_PORT, EXPLOIT);
        if exploit == "403 forbidden" {
            refused = Some(t0.elapsed());
            break;
        }
        if !exploit.is_empty() && patched.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let applied = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("watch.err"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("to pid {pid} ")))
            .map(str::to_string)
            .collect()
    };
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
    Ok(json!({
        "host": name,
        "pid": pid,
        "port": LATE_PORT,
        "patched_after_ms": ms(patched),
        "first_refusal_after_ms": ms(refused),
        "exploit": exploit,
        "watch_log": applied(&dir),
        "other_hosts_watch_lines": fleet.hosts.iter().filter(|g| g.n != h.n)
            .map(|g| applied(&g.dir).len()).sum::<usize>(),
    }))
}

fn short(v: &Value, max: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_string(),
        other => other.to_string(),
    };
    let s = s.replace('|', "\\|").replace('\n', " ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

/// The processes of a patch result, as `pid (pause µs)`.
fn procs(v: &Value) -> String {
    let list: Vec<String> = v["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["pause_us"].as_u64() {
            Some(us) => format!(
                "{} {} ({us} µs, {} stop(s))",
                p["result"].as_str().unwrap_or(""),
                p["pid"],
                p["stops"]
            ),
            None => format!("{} {}", p["result"].as_str().unwrap_or(""), p["pid"]),
        })
        .collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

/// What each run is for.
fn describe(run: &str) -> String {
    match run {
        "check" => "`--check --diff`: hotsplice.live.patch runs `hotsplice check` (proves the bundle \
                    against each server's memory, predicts what apply would do) and changes nothing."
            .to_string(),
        "rollout" => "The rollout: bundle copied, applied to the host's server, installed in its \
                      store for `watch`, health check."
            .to_string(),
        "rerun" => "The same command again: nothing to do anywhere.".to_string(),
        "rollback" => "`-e hotsplice_state=absent`: uninstalled and undone everywhere, the same way \
                       (canary, batches, health checks)."
            .to_string(),
        "untrusted" => "The same rollout with a bundle signed by a key no host trusts: hotsplice \
                        refuses it on the canary before touching a process; the canary fails, \
                        and with it (a batch of one) the rollout."
            .to_string(),
        "rigged" => format!(
            "h{RIGGED} is rigged: it serves its health document as `{RIGGED_HEALTH}`, a name the \
             fix forbids (it refuses every path containing `..`), so its health check passes \
             before the patch and fails after it — a real regression of this patch on that host. \
             The playbook undoes the patch there at once (its health check passes again), marks \
             it failed; 1 of 2 hosts of its batch is over max_fail_percentage 25, so Ansible stops: \
             the later batch is never started."
        ),
        _ => String::new(),
    }
}

fn render(r: &Value) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Fleet rollout on Ansible (`cargo xtask fleet`)\n");
    let _ = writeln!(
        md,
        "Machine: {}. ansible-core {} ({}), {}, hotsplice {}. Patch `{}`: \
         `examples/server-fix.patch` (the demo server's path traversal) built with `hotsplice build` \
         and signed by the fleet's key. Overall: **{}**.\n",
        short(&r["machine"], 200),
        short(&r["versions"]["ansible_core"], 20),
        short(&r["versions"]["ansible"], 60),
        short(&r["versions"]["openssh"], 60),
        short(&r["versions"]["hotsplice_commit"], 40),
        short(&r["patch"], 40),
        if r["pass"] == true {
            "every check passed"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    let hosts = r["hosts"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        md,
        "## The fleet\n\n{} hosts, each a network namespace on this machine with a veth pair on one \
         bridge (controller `10.213.0.1`), its own sshd on its own address (own host key, \
         authorized key and configuration under `target/fleet/hN/ssh/`; the controller checks \
         host keys against a known_hosts file it wrote), its own server (the build the bundle \
         was made from, copied to `target/fleet/hN/srv/server`, serving on the host's own \
         loopback `127.0.0.1:{PORT}`), and its own hotsplice state directory, trusted-keys \
         directory (the fleet's public key), store, audit log and `hotsplice watch`. Ansible \
         reaches every host over SSH; the module and the health checks run inside the host's \
         namespace.\n",
        hosts.len()
    );
    let _ = writeln!(
        md,
        "| host | address | batch | server pid |\n|---|---|---|---|"
    );
    for h in &hosts {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            short(&h["host"], 10),
            short(&h["address"], 20),
            h["batch"],
            h["server_pid"]
        );
    }
    let _ = writeln!(
        md,
        "\n**Why each host patches only its own processes.** Network namespaces separate the \
         network only: every host shares this machine's process table and file system, so \
         `hotsplice apply FIX.hsp` without a target on one host would patch every host's server \
         (they all map a file with the bundle's build-id). Each host therefore runs its own copy \
         of the server binary and the inventory gives the playbook that file \
         (`hotsplice_target_file` → `hotsplice apply --file target/fleet/hN/srv/server`, which \
         matches the file's device and inode), plus its own `--state-dir`, `--trust-dir` and \
         `--store`. On a real fleet the defaults (`/run/hotsplice`, `/etc/hotsplice/trusted-keys`, \
         `/var/lib/hotsplice`) and the package's own path serve. `hotsplice watch` runs in the \
         initial network namespace, as a systemd unit would: the kernel's process-event \
         connector exists only there (inside another network namespace the subscription is \
         refused and watch falls back to its sweeps).\n"
    );

    let _ = writeln!(
        md,
        "## Checks\n\n| scenario | check | result | seen |\n|---|---|---|---|"
    );
    for c in r["checks"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            short(&c["scenario"], 30),
            short(&c["check"], 200),
            if c["pass"] == true {
                "pass"
            } else {
                "**FAIL**"
            },
            short(&c["seen"], 160)
        );
    }

    let _ = writeln!(
        md,
        "\n## Runs\n\nTimes are seconds from the start of `ansible-playbook` (its own start-up \
         included), taken by the collection's timeline callback on the controller. \"patch\" is \
         the `hotsplice.live.patch` task (start → result) with the processes it changed and \
         each one's pause as hotsplice reported it; \"health\" the health check's result. The \
         rollout's extra variables: `hotsplice_batches: [2]` (after the canary), \
         `hotsplice_max_fail_percentage: 25`.\n"
    );
    for run in r["runs"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "### {} — exit status {}, {:.1} s (load average {} before, {} after)\n\n{}\n",
            short(&run["run"], 30),
            run["rc"],
            run["wall_s"].as_f64().unwrap_or(0.0),
            short(&run["loadavg_before_after"][0], 20),
            short(&run["loadavg_before_after"][1], 20),
            describe(run["run"].as_str().unwrap_or(""))
        );
        let _ = writeln!(
            md,
            "| host | batch | patch (s) | processes | health (s) | undo | recap ok/changed/failed/rescued | probes ok/failed |\n|---|---|---|---|---|---|---|---|"
        );
        let probes = run["probes"].as_array().cloned().unwrap_or_default();
        for h in run["hosts"].as_array().into_iter().flatten() {
            let name = h["host"].as_str().unwrap_or("");
            let probe = probes
                .iter()
                .find(|p| p["host"] == name)
                .map(|p| format!("{}/{}", p["ok"], p["failed"]))
                .unwrap_or_default();
            if h["touched"] != true {
                let _ = writeln!(
                    md,
                    "| {name} | {} | not run | — | — | — | — | {probe} |",
                    h["batch"]
                );
                continue;
            }
            let p = &h["patch"];
            let health = &h["health"];
            let undo = if h["undo"].is_null() {
                "—".to_string()
            } else {
                format!(
                    "{} at {} s; health after: {}",
                    procs(&h["undo"]),
                    short(&h["undo"]["done_s"], 10),
                    if h["health_after_undo"]["rc"] == 0 {
                        "ok"
                    } else {
                        "failing"
                    }
                )
            };
            let rc = &h["recap"];
            let _ = writeln!(
                md,
                "| {name} | {} | {}→{} {} | {} | {} {} | {} | {}/{}/{}/{} | {probe} |",
                h["batch"],
                short(&p["started_s"], 10),
                short(&p["done_s"], 10),
                short(&p["status"], 10),
                if p["status"] == "failed" {
                    short(&p["msg"], 120)
                } else {
                    procs(p)
                },
                short(&health["done_s"], 10),
                short(&health["status"], 10),
                undo,
                rc["ok"],
                rc["changed"],
                rc["failures"],
                rc["rescued"],
            );
        }
        let _ = writeln!(md);
    }

    let watch = r["watch"].as_array().cloned().unwrap_or_default();
    let mut lat: Vec<f64> = watch
        .iter()
        .filter_map(|w| w["patched_after_ms"].as_f64())
        .collect();
    lat.sort_by(f64::total_cmp);
    let _ = writeln!(
        md,
        "## Processes started after the rollout\n\nAfter the rollout, a second server was started on \
         every host, one host after the other, from the host's server file (port {LATE_PORT}). \
         The host's `hotsplice watch` (exec events from the kernel; a sweep every 10 s) patched \
         it; \"patched\" is the time from the start until `hotsplice list` (polled every 10 ms) \
         shows the patch in the new process, \"refuses\" until its first answer to the exploit \
         was `403 forbidden`. Patched after {} ms at best, {} ms at the median, {} ms at worst \
         ({} starts).\n",
        lat.first().map_or("—".into(), |v| format!("{v:.1}")),
        if lat.is_empty() {
            "—".into()
        } else {
            format!("{:.1}", lat[lat.len() / 2])
        },
        lat.last().map_or("—".into(), |v| format!("{v:.1}")),
        lat.len()
    );
    let _ = writeln!(
        md,
        "| host | pid | patched (ms) | refuses (ms) | watch log | other hosts' watches |\n|---|---|---|---|---|---|"
    );
    for w in &watch {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            short(&w["host"], 10),
            w["pid"],
            short(&w["patched_after_ms"], 12),
            short(&w["first_refusal_after_ms"], 12),
            short(&w["watch_log"][0], 120),
            w["other_hosts_watch_lines"]
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "## Reproduce\n\n`cargo xtask fleet [--hosts N]` (root; installs openssh-server, iproute2 \
         and ansible-core {} in `.cache/ansible-venv` through `scripts/setup --fleet`). Its \
         working files — inventory, ansible.cfg, every run's log and timeline, each host's \
         sshd/server/watch logs and audit log — stay in `target/fleet/`.",
        ANSIBLE_CORE
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two copies of the demo server in a work directory; killed and removed on drop.
    struct Servers(Vec<Child>, PathBuf);

    impl Drop for Servers {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    /// The default suite's test of the Ansible module: `hotsplice.live.patch` run by
    /// `ansible-playbook -c local` on this machine against a server built from the demo's
    /// source (`tests/module_local.yml` asserts check mode, diff, apply, idempotence, the
    /// untrusted-bundle refusal, undo, pids). No network, no namespaces. Needs
    /// `scripts/setup --ansible` (scripts/test runs it) and root; skipped otherwise unless
    /// `HOTSPLICE_REQUIRE_ANSIBLE=1`.
    #[test]
    fn module_is_idempotent_on_a_local_server() {
        let root = root().canonicalize().unwrap();
        let playbook_bin = root.join(".cache/ansible-venv/bin/ansible-playbook");
        let required = std::env::var_os("HOTSPLICE_REQUIRE_ANSIBLE").is_some();
        let is_root = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        if !required && (!playbook_bin.exists() || !is_root) {
            eprintln!(
                "skipped: no ansible-core in .cache/ansible-venv (scripts/setup --ansible) or not root"
            );
            return;
        }
        // Up to date even when only xtask's tests were built (cargo's lock is free while tests run).
        let built = Command::new("cargo")
            .args(["build", "-q", "-p", "hotsplice"])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(built.success(), "building hotsplice failed");
        let hs = root.join("target/debug/hotsplice");
        let work = root.join(format!("target/ansible-module-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let mut servers = Servers(Vec::new(), work.clone());
        let made = bundles(&root, &hs, &work).unwrap();
        for sub in ["trusted", "state", "store"] {
            std::fs::create_dir_all(work.join(sub)).unwrap();
        }
        run(Command::new("chmod")
            .arg("700")
            .arg(work.join("state"))
            .arg(work.join("store")))
        .unwrap();
        std::fs::copy(work.join("keys/fleet.pub"), work.join("trusted/fleet.pub")).unwrap();
        let mut ports = Vec::new();
        for name in ["a", "b"] {
            let dir = work.join(name);
            std::fs::create_dir_all(dir.join("www")).unwrap();
            std::fs::copy(&made.pristine, dir.join("server")).unwrap();
            std::fs::copy(
                root.join("examples/server/www/index.txt"),
                dir.join("www/index.txt"),
            )
            .unwrap();
            std::fs::write(dir.join("secret.txt"), "secret\n").unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            servers.0.push(
                Command::new(dir.join("server"))
                    .arg(port.to_string())
                    .current_dir(&dir)
                    .stdin(Stdio::null())
                    .stdout(std::fs::File::create(dir.join("server.log")).unwrap())
                    .spawn()
                    .unwrap(),
            );
            ports.push(port);
        }
        for name in ["a", "b"] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read_to_string(work.join(name).join("server.log"))
                .is_ok_and(|l| l.contains("serving"))
            {
                assert!(Instant::now() < deadline, "server {name} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let vars = json!({
            "hs_bin": hs,
            "bundle": made.fix,
            "untrusted_bundle": made.untrusted,
            "server_file": work.join("a/server"),
            "server_pid": servers.0[0].id(),
            "server_port": ports[0],
            "other_file": work.join("b/server"),
            "other_pid": servers.0[1].id(),
            "state_dir": work.join("state"),
            "trust_dir": work.join("trusted"),
            "store": work.join("store"),
        });
        std::fs::write(work.join("vars.json"), vars.to_string()).unwrap();
        let out = Command::new(&playbook_bin)
            .arg("-i")
            .arg("localhost,")
            .arg(root.join("ansible/ansible_collections/hotsplice/live/tests/module_local.yml"))
            .arg("-e")
            .arg(format!("@{}", work.join("vars.json").display()))
            .arg("-e")
            .arg("ansible_python_interpreter=/usr/bin/python3")
            .env("ANSIBLE_COLLECTIONS_PATH", root.join("ansible"))
            .env("ANSIBLE_HOME", work.join("ansible-home"))
            .env("ANSIBLE_LOCAL_TEMP", work.join("ansible-home/tmp"))
            .env("ANSIBLE_REMOTE_TEMP", work.join("ansible-home/remote"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("HOTSPLICE_AUDIT_LOG", work.join("audit.log"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the module's playbook failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every assertion task ran (a skipped one would not have failed the playbook).
        let asserted = stdout.matches("TASK [Assert").count();
        assert_eq!(asserted, 11, "{stdout}");
        assert!(stdout.contains("failed=0"), "{stdout}");
        drop(servers);
    }
}
